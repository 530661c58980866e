//! Several managers and workers in one process: three managers joined by the in-memory
//! Raft network, and fake agents that run whatever they are assigned (no containers), so
//! that elections, failover and reconciliation run in seconds.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use shoal_api::control as pc;
use shoal_api::control::control_server::Control;
use shoal_api::dispatcher as pd;
use shoal_api::dispatcher::dispatcher_server::Dispatcher;
use shoal_api::types::{ResourceAmounts, Service, ServiceSpec, Task, TaskState};
use shoal_manager::cluster::memnet::MemNet;
use shoal_manager::cluster::{ClusterStore, Timings};
use shoal_manager::server::{Manager, ManagerOptions, ManagerService, SelfNode};
use tonic::Request;

/// What each fake worker runs now: worker → task id → (service, slot).
type Running = Arc<Mutex<HashMap<String, BTreeMap<String, (String, u64)>>>>;

const OPTIONS: ManagerOptions = ManagerOptions {
    heartbeat_period: Duration::from_millis(100),
    heartbeat_misses: 3,
    raft: Timings {
        heartbeat: Duration::from_millis(50),
        election_min: Duration::from_millis(150),
        election_max: Duration::from_millis(300),
    },
};

struct Member {
    id: u64,
    store: Arc<ClusterStore>,
    manager: Arc<Manager>,
    api: ManagerService,
}

/// A cluster of managers in one process, and the fake workers that talk to them.
struct Cluster {
    _dirs: Vec<tempfile::TempDir>,
    net: MemNet,
    /// None while a manager is being restarted.
    members: Vec<Option<Member>>,
    /// Which managers are up (fake workers only call those).
    up: Arc<Mutex<BTreeSet<usize>>>,
    apis: Vec<ManagerService>,
    running: Running,
    workers: HashMap<String, tokio::task::JoinHandle<()>>,
}

fn self_node(id: &str) -> SelfNode {
    SelfNode {
        id: id.into(),
        hostname: id.into(),
        resources: ResourceAmounts {
            nano_cpus: 4_000_000_000,
            memory_bytes: 8 << 30,
        },
    }
}

impl Cluster {
    fn m(&self, i: usize) -> &Member {
        self.members[i].as_ref().expect("manager being restarted")
    }

    async fn start(managers: u64) -> Cluster {
        let net = MemNet::new();
        let timings = Timings::default();
        let mut dirs = Vec::new();
        let mut members = Vec::new();
        for id in 1..=managers {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(
                ClusterStore::open_with(dir.path(), id, &timings, net.endpoint(id))
                    .await
                    .unwrap(),
            );
            net.plug(id, store.raft().clone());
            dirs.push(dir);
            members.push(store);
        }
        members[0].bootstrap("m1").await.unwrap();
        for id in 2..=managers {
            members[0].add_learner(id, &format!("m{id}")).await.unwrap();
        }
        members[0]
            .set_voters((1..=managers).collect())
            .await
            .unwrap();
        let members: Vec<Option<Member>> = members
            .into_iter()
            .enumerate()
            .map(|(i, store)| {
                let id = i as u64 + 1;
                let manager = Manager::run(store.clone(), self_node(&format!("m{id}")), OPTIONS);
                let api = ManagerService::serving(manager.clone());
                Some(Member {
                    id,
                    store,
                    manager,
                    api,
                })
            })
            .collect();
        let apis = members.iter().flatten().map(|m| m.api.clone()).collect();
        Cluster {
            _dirs: dirs,
            net,
            up: Arc::new(Mutex::new((0..members.len()).collect())),
            members,
            apis,
            running: Default::default(),
            workers: HashMap::new(),
        }
    }

    /// The index of the leading manager among those up, once one leads.
    async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up = self.up.lock().unwrap().clone();
            if let Some(i) = up.iter().find(|i| self.m(**i).store.is_leader()) {
                return *i;
            }
            assert!(Instant::now() < deadline, "no manager leads after 10 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops manager `i` as `kill -9` would: it answers nobody from now on.
    async fn kill(&self, i: usize) {
        self.up.lock().unwrap().remove(&i);
        self.net.unplug(self.m(i).id);
        self.m(i).manager.stop().await;
    }

    /// Starts manager `i` again on its state, as a restarted daemon would.
    async fn restart(&mut self, i: usize) {
        let id = self.m(i).id;
        let dir = self._dirs[i].path().to_path_buf();
        // Let go of every handle on the old one (its files stay locked while any lives).
        self.members[i] = None;
        self.apis.clear();
        let deadline = Instant::now() + Duration::from_secs(10);
        // openraft lets go of the files a moment after it stops.
        let store = loop {
            match ClusterStore::open_with(&dir, id, &OPTIONS.raft, self.net.endpoint(id)).await {
                Ok(s) => break Arc::new(s),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("reopening manager {id}: {e}"),
            }
        };
        self.net.plug(id, store.raft().clone());
        let manager = Manager::run(store.clone(), self_node(&format!("m{id}")), OPTIONS);
        let api = ManagerService::serving(manager.clone());
        self.members[i] = Some(Member {
            id,
            store,
            manager,
            api,
        });
        self.apis = self
            .members
            .iter()
            .flatten()
            .map(|m| m.api.clone())
            .collect();
        self.up.lock().unwrap().insert(i);
    }

    fn start_worker(&mut self, name: &str) {
        let name = name.to_string();
        self.running
            .lock()
            .unwrap()
            .entry(name.clone())
            .or_default();
        let worker = fake_worker(
            name.clone(),
            self.apis.clone(),
            self.up.clone(),
            self.running.clone(),
        );
        self.workers.insert(name, tokio::spawn(worker));
    }

    /// Stops a worker's agent: no more heartbeats or status (what it runs, runs on).
    fn stop_worker(&mut self, name: &str) {
        if let Some(w) = self.workers.remove(name) {
            w.abort();
        }
    }

    async fn control(&self) -> &ManagerService {
        &self.m(self.leader().await).api
    }

    async fn tasks(&self, service: &str) -> Vec<Task> {
        let reply = self
            .control()
            .await
            .list_tasks(Request::new(pc::ListTasksRequest {
                service: service.into(),
            }))
            .await
            .unwrap()
            .into_inner();
        reply
            .objects
            .iter()
            .map(|o| serde_json::from_str(&o.json).unwrap())
            .collect()
    }

    /// Waits until `workers` together run `total` tasks of `service`, every slot once and
    /// spread evenly (no worker more than one task above another); returns how long that
    /// took. Other workers (cut off, say) are not counted.
    async fn converged(&self, service: &str, workers: &[&str], total: u64) -> Duration {
        let started = Instant::now();
        loop {
            let (counts, slots) = {
                let running = self.running.lock().unwrap();
                let mut counts = BTreeMap::new();
                let mut slots = Vec::new();
                for w in workers {
                    let mine: Vec<u64> = running
                        .get(*w)
                        .map(|tasks| {
                            tasks
                                .values()
                                .filter(|(s, _)| s == service)
                                .map(|(_, slot)| *slot)
                                .collect()
                        })
                        .unwrap_or_default();
                    counts.insert(w.to_string(), mine.len());
                    slots.extend(mine);
                }
                slots.sort();
                (counts, slots)
            };
            let even =
                counts.values().max().unwrap_or(&0) - counts.values().min().unwrap_or(&0) <= 1;
            if even && slots == (1..=total).collect::<Vec<u64>>() {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "not converged after 20 s: running {counts:?} in slots {slots:?}, want {total}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A worker's agent without an engine: it opens a session with the leader (trying every
/// manager that is up), heartbeats, runs whatever it is assigned at once, stops what it is
/// asked to stop, and reconnects when the session ends.
async fn fake_worker(
    name: String,
    apis: Vec<ManagerService>,
    up: Arc<Mutex<BTreeSet<usize>>>,
    running: Running,
) {
    let session = pd::SessionRequest {
        node_id: name.clone(),
        hostname: name.clone(),
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        nano_cpus: 4_000_000_000,
        memory_bytes: 8 << 30,
        data_addr: String::new(),
        ..Default::default()
    };
    loop {
        let candidates: Vec<usize> = up.lock().unwrap().iter().copied().collect();
        let mut stream = None;
        for i in candidates {
            if let Ok(s) = apis[i].assignments(Request::new(session.clone())).await {
                stream = Some((i, s.into_inner()));
                break;
            }
        }
        let Some((i, mut stream)) = stream else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let api = &apis[i];
        let mut beat = tokio::time::interval(OPTIONS.heartbeat_period);
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    let alive = up.lock().unwrap().contains(&i);
                    let hb = pd::HeartbeatRequest {
                        node_id: name.clone(),
                        volume_drivers: Vec::new(),
                    };
                    if !alive || api.heartbeat(Request::new(hb)).await.is_err() {
                        break;
                    }
                }
                set = stream.next() => {
                    let Some(Ok(set)) = set else { break };
                    if !up.lock().unwrap().contains(&i) {
                        break;
                    }
                    let updates = run_assignments(&name, &set, &running);
                    let batch = pd::StatusBatch { node_id: name.clone(), updates };
                    if api.update_status(Request::new(batch)).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
}

/// Applies an assignment set to what the fake worker runs; returns the status to report.
fn run_assignments(
    name: &str,
    set: &pd::AssignmentSet,
    running: &Running,
) -> Vec<pd::StatusUpdate> {
    let mut running = running.lock().unwrap();
    let mine = running.entry(name.to_string()).or_default();
    let mut updates = Vec::new();
    let mut assigned = BTreeSet::new();
    for a in &set.tasks {
        let t: Task = serde_json::from_str(&a.json).unwrap();
        assigned.insert(t.id.clone());
        let report = |state: TaskState| pd::StatusUpdate {
            task_id: t.id.clone(),
            state: serde_json::to_value(state)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string(),
            message: String::new(),
            exit_code: 0,
            exited: false,
            container_id: format!("fake-{}", t.id),
            health: String::new(),
        };
        if t.desired_state >= TaskState::Shutdown {
            if mine.remove(&t.id).is_some() || !t.status.state.is_terminal() {
                updates.push(report(TaskState::Shutdown));
            }
        } else if !t.status.state.is_terminal() {
            mine.insert(t.id.clone(), (t.service_id.clone(), t.slot));
            if t.status.state < TaskState::Running {
                updates.push(report(TaskState::Running));
            }
        }
    }
    // A task no longer assigned at all (removed from the store) stops too.
    mine.retain(|id, _| assigned.contains(id));
    updates
}

async fn create_service(c: &Cluster, name: &str, replicas: u64) -> String {
    let spec = ServiceSpec {
        name: name.into(),
        image: "busybox".into(),
        replicas,
        ..Default::default()
    };
    let reply = c
        .control()
        .await
        .create_service(Request::new(pc::CreateServiceRequest {
            spec_json: serde_json::to_string(&spec).unwrap(),
        }))
        .await
        .unwrap()
        .into_inner();
    reply.object.unwrap().id
}

async fn scale(c: &Cluster, service: &str, replicas: u64) {
    let api = c.control().await;
    let got = api
        .get_service(Request::new(pc::GetRequest { id: service.into() }))
        .await
        .unwrap()
        .into_inner()
        .object
        .unwrap();
    let mut s: Service = serde_json::from_str(&got.json).unwrap();
    s.spec.replicas = replicas;
    api.update_service(Request::new(pc::UpdateServiceRequest {
        service: service.into(),
        spec_json: serde_json::to_string(&s.spec).unwrap(),
        version: got.version,
        rollback: false,
    }))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_managers_keep_services_converged_through_leader_and_worker_loss() {
    let mut c = Cluster::start(3).await;
    for w in ["w1", "w2", "w3"] {
        c.start_worker(w);
    }
    let first = c.leader().await;
    let (voters, learners) = c.m(first).store.members();
    assert_eq!(voters, BTreeSet::from([1, 2, 3]));
    assert!(learners.is_empty());

    let web = create_service(&c, "web", 6).await;
    c.converged(&web, &["w1", "w2", "w3"], 6).await;

    // Followers refuse writes and name the leader; they still answer reads.
    let follower = (0..3).find(|i| *i != first).unwrap();
    let err = c
        .m(follower)
        .api
        .create_service(Request::new(pc::CreateServiceRequest {
            spec_json: serde_json::to_string(&ServiceSpec {
                name: "other".into(),
                image: "busybox".into(),
                replicas: 1,
                ..Default::default()
            })
            .unwrap(),
        }))
        .await
        .unwrap_err();
    assert!(
        err.message()
            .contains(&format!("manager {} at m{} is", first + 1, first + 1)),
        "{}",
        err.message()
    );
    let read = c
        .m(follower)
        .api
        .list_services(Request::new(pc::ListRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.objects.len(), 1);

    // The leader dies: another takes over, the workers find it, and writes work again.
    let killed_at = Instant::now();
    c.kill(first).await;
    let second = c.leader().await;
    assert_ne!(second, first);
    let api = c.control().await;
    while api
        .list_services(Request::new(pc::ListRequest {}))
        .await
        .is_err()
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    scale(&c, &web, 9).await;
    eprintln!(
        "leader killed → scaled through the new leader in {:?}",
        killed_at.elapsed()
    );
    c.converged(&web, &["w1", "w2", "w3"], 9).await;

    // A worker goes silent: it is marked down and its tasks run on the others.
    c.stop_worker("w3");
    let moved = c.converged(&web, &["w1", "w2"], 9).await;
    eprintln!("worker lost → its tasks running elsewhere in {moved:?}");
    let down = c.tasks(&web).await;
    assert!(
        down.iter()
            .any(|t| t.node_id == "w3" && t.status.state == TaskState::Orphaned),
        "the lost worker's tasks are orphaned: {down:#?}"
    );

    // It comes back still running its old tasks: they are shut down, the slots stay
    // where they went.
    let stale = c.running.lock().unwrap()["w3"].len();
    assert_eq!(stale, 3);
    c.start_worker("w3");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.running.lock().unwrap()["w3"].is_empty() {
        assert!(Instant::now() < deadline, "w3 still runs its stale tasks");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let per_node: BTreeMap<String, usize> = {
        let running = c.running.lock().unwrap();
        running.iter().map(|(w, t)| (w.clone(), t.len())).collect()
    };
    assert_eq!(per_node.values().sum::<usize>(), 9, "{per_node:?}");

    // The slots never ran twice at once at the end, and the store agrees with the workers.
    let tasks = c.tasks(&web).await;
    let mut live: Vec<u64> = tasks
        .iter()
        .filter(|t| t.desired_state == TaskState::Running)
        .map(|t| t.slot)
        .collect();
    live.sort();
    assert_eq!(live, (1..=9).collect::<Vec<u64>>());

    let up = c.up.lock().unwrap().clone();
    for i in up {
        c.m(i).manager.stop().await;
    }
    for (_, w) in c.workers.drain() {
        w.abort();
    }
}

/// Writes through whichever manager leads while leaders are killed and restarted, again
/// and again: every write that was acknowledged is on every manager at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_repeated_leader_kills() {
    use shoal_manager::store::{Command, CommandResult};
    let mut c = Cluster::start(3).await;
    let mut acknowledged = Vec::new();
    let mut n = 0u64;
    for round in 0..6 {
        // Write until a few are in, then kill the leader with writes in flight.
        let leader = c.leader().await;
        let mut writers = Vec::new();
        for w in 0..4 {
            let store = c.m(leader).store.clone();
            writers.push(tokio::spawn(async move {
                let mut done = Vec::new();
                for k in 0..500u64 {
                    let id = format!("r{round}-w{w}-{k}");
                    let cmd = Command::Put {
                        kind: "probe".into(),
                        id: id.clone(),
                        value: serde_json::json!({ "k": k }),
                        expected_version: None,
                    };
                    match store.write(cmd).await {
                        Ok(CommandResult::Applied(_)) => done.push(id),
                        _ => break,
                    }
                }
                done
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.kill(leader).await;
        for w in writers {
            let done = w.await.unwrap();
            n += done.len() as u64;
            acknowledged.extend(done);
        }
        let next = c.leader().await;
        assert_ne!(next, leader, "round {round}");
        c.restart(leader).await;
    }
    assert!(n > 0, "no write was acknowledged at all");
    // Every manager catches up and holds every acknowledged write.
    let deadline = Instant::now() + Duration::from_secs(20);
    for m in c.members.iter().flatten() {
        loop {
            let have: BTreeSet<String> = m
                .store
                .list_stored("probe")
                .unwrap()
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            let missing: Vec<&String> = acknowledged
                .iter()
                .filter(|id| !have.contains(*id))
                .collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "manager {} lacks {} of {} acknowledged writes, such as {:?}",
                m.id,
                missing.len(),
                acknowledged.len(),
                missing.first()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!("{n} acknowledged writes across 6 leader kills, all on every manager");
    let up = c.up.lock().unwrap().clone();
    for i in up {
        c.m(i).manager.stop().await;
    }
}

async fn create_network(c: &Cluster, spec: serde_json::Value) -> Result<String, tonic::Status> {
    c.control()
        .await
        .create_network(Request::new(pc::CreateNetworkRequest {
            spec_json: spec.to_string(),
        }))
        .await
        .map(|r| r.into_inner().object.unwrap().id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn networks_get_subnets_and_tasks_addresses_that_come_free() {
    let mut c = Cluster::start(1).await;
    c.leader().await;
    c.start_worker("w1");
    let front = create_network(
        &c,
        serde_json::json!({"name": "front", "driver": "overlay"}),
    )
    .await
    .unwrap();
    let e = create_network(
        &c,
        serde_json::json!({"name": "front", "driver": "overlay"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
    let e = create_network(
        &c,
        serde_json::json!({"name": "wide", "driver": "overlay", "subnet": "10.0.0.0/16"}),
    )
    .await
    .unwrap_err();
    assert!(
        e.message().contains("overlaps") && e.message().contains("front"),
        "{e:?}"
    );
    let got = c
        .control()
        .await
        .get_network(Request::new(pc::GetRequest { id: "front".into() }))
        .await
        .unwrap()
        .into_inner()
        .object
        .unwrap();
    let net: shoal_api::types::Network = serde_json::from_str(&got.json).unwrap();
    assert_eq!((net.subnet.as_str(), net.vni), ("10.0.0.0/24", 4096));

    // A service on it: its tasks and its VIP get distinct addresses of the subnet.
    let spec = ServiceSpec {
        name: "web".into(),
        image: "busybox".into(),
        replicas: 3,
        networks: vec!["front".into()],
        ..Default::default()
    };
    let web = c
        .control()
        .await
        .create_service(Request::new(pc::CreateServiceRequest {
            spec_json: serde_json::to_string(&spec).unwrap(),
        }))
        .await
        .unwrap()
        .into_inner()
        .object
        .unwrap()
        .id;
    c.converged(&web, &["w1"], 3).await;
    let addrs = |tasks: &[Task]| -> BTreeSet<String> {
        tasks
            .iter()
            .filter(|t| !t.status.state.is_terminal())
            .flat_map(|t| t.networks.iter().map(|a| a.addr.clone()))
            .collect()
    };
    let tasks = c.tasks(&web).await;
    assert!(
        tasks
            .iter()
            .all(|t| t.networks.len() == 1 && t.networks[0].network_id == front)
    );
    let first = addrs(&tasks);
    assert_eq!(first.len(), 3, "{first:?}");
    let svc: Service = serde_json::from_str(
        &c.control()
            .await
            .get_service(Request::new(pc::GetRequest { id: web.clone() }))
            .await
            .unwrap()
            .into_inner()
            .object
            .unwrap()
            .json,
    )
    .unwrap();
    assert_eq!(
        svc.spec.networks,
        std::slice::from_ref(&front),
        "names become ids"
    );
    assert_eq!(svc.vips.len(), 1);
    assert!(!first.contains(&svc.vips[0].addr));
    let all: BTreeSet<String> = first
        .iter()
        .cloned()
        .chain([svc.vips[0].addr.clone()])
        .collect();
    let expected: BTreeSet<String> = (2..=5).map(|i| format!("10.0.0.{i}/24")).collect();
    assert_eq!(all, expected, "the lowest free addresses");

    // The node is told of the network: every endpoint, the service and its VIP.
    let mut stream = c
        .control()
        .await
        .assignments(Request::new(pd::SessionRequest {
            node_id: "w1".into(),
            hostname: "w1".into(),
            data_addr: "192.168.0.9".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let set = stream.next().await.unwrap().unwrap();
    let views: Vec<shoal_api::types::NetworkView> =
        serde_json::from_str(&set.networks_json).unwrap();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].endpoints.len(), 3);
    assert!(
        views[0]
            .endpoints
            .iter()
            .all(|e| e.node_addr == "192.168.0.9")
    );
    assert_eq!(views[0].services[0].vip, svc.vips[0].addr);
    drop(stream);

    // In use: removal is refused, naming the user.
    let e = c
        .control()
        .await
        .remove_network(Request::new(pc::RemoveRequest { id: "front".into() }))
        .await
        .unwrap_err();
    assert!(e.message().contains("service web"), "{e:?}");

    // Scaled down and up again: the freed addresses are handed out again.
    scale(&c, &web, 1).await;
    c.converged(&web, &["w1"], 1).await;
    scale(&c, &web, 3).await;
    c.converged(&web, &["w1"], 3).await;
    let again = addrs(&c.tasks(&web).await);
    assert!(again.is_subset(&expected), "{again:?}");

    // Gone with its service, the network can go; nothing is left allocated.
    c.control()
        .await
        .remove_service(Request::new(pc::RemoveRequest { id: web.clone() }))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c
            .control()
            .await
            .remove_network(Request::new(pc::RemoveRequest { id: "front".into() }))
            .await;
        match r {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                assert!(e.message().contains("in use"), "{e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("network still in use after its service went: {e:?}"),
        }
    }
    let again = create_network(&c, serde_json::json!({"name": "back", "driver": "overlay"}))
        .await
        .unwrap();
    let got = c
        .control()
        .await
        .get_network(Request::new(pc::GetRequest { id: again }))
        .await
        .unwrap()
        .into_inner()
        .object
        .unwrap();
    let net: shoal_api::types::Network = serde_json::from_str(&got.json).unwrap();
    assert_eq!(
        (net.subnet.as_str(), net.vni),
        ("10.0.0.0/24", 4096),
        "subnet and VNI reused"
    );
    c.stop_worker("w1");
}

/// The allocator keeps nothing of its own: a new leader hands out what the old one had not,
/// and nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_leader_allocates_without_duplicates() {
    let mut c = Cluster::start(3).await;
    for w in ["w1", "w2"] {
        c.start_worker(w);
    }
    let first = c.leader().await;
    create_network(&c, serde_json::json!({"name": "a", "driver": "overlay"}))
        .await
        .unwrap();
    let spec = ServiceSpec {
        name: "web".into(),
        image: "busybox".into(),
        replicas: 4,
        networks: vec!["a".into()],
        ..Default::default()
    };
    let web = c
        .control()
        .await
        .create_service(Request::new(pc::CreateServiceRequest {
            spec_json: serde_json::to_string(&spec).unwrap(),
        }))
        .await
        .unwrap()
        .into_inner()
        .object
        .unwrap()
        .id;
    c.converged(&web, &["w1", "w2"], 4).await;

    c.kill(first).await;
    let second = c.leader().await;
    assert_ne!(first, second);
    create_network(&c, serde_json::json!({"name": "b", "driver": "overlay"}))
        .await
        .unwrap();
    scale(&c, &web, 8).await;
    c.converged(&web, &["w1", "w2"], 8).await;

    let nets: Vec<shoal_api::types::Network> = c
        .control()
        .await
        .list_networks(Request::new(pc::ListRequest {}))
        .await
        .unwrap()
        .into_inner()
        .objects
        .iter()
        .map(|o| serde_json::from_str(&o.json).unwrap())
        .collect();
    let subnets: BTreeSet<&str> = nets.iter().map(|n| n.subnet.as_str()).collect();
    let vnis: BTreeSet<u32> = nets.iter().map(|n| n.vni).collect();
    assert_eq!((subnets.len(), vnis.len()), (2, 2), "{nets:?}");
    let live: Vec<String> = c
        .tasks(&web)
        .await
        .iter()
        .filter(|t| !t.status.state.is_terminal())
        .flat_map(|t| t.networks.iter().map(|a| a.addr.clone()))
        .collect();
    let unique: BTreeSet<&String> = live.iter().collect();
    assert_eq!(live.len(), 8);
    assert_eq!(unique.len(), 8, "an address handed out twice: {live:?}");
    c.stop_worker("w1");
    c.stop_worker("w2");
}
