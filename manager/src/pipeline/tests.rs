//! The pipeline in process: one manager, fake nodes, and a fake agent that reports what
//! an engine would.

use std::sync::Arc;

use shoal_api::types::{NodeAvailability, PublishMode, Service, ServiceSpec};

use super::*;
use crate::cluster::Timings;
use crate::store::{Command, Object};
use crate::testing::node;
/// The kinds' names, as the tests wrote them before the store was typed.
mod kinds {
    pub const SERVICE: &str = "service";
    pub const TASK: &str = "task";
    pub const NODE: &str = "node";
}

async fn store() -> (tempfile::TempDir, Arc<ClusterStore>) {
    let dir = tempfile::tempdir().unwrap();
    let s = ClusterStore::open(dir.path(), 1, &Timings::default())
        .await
        .unwrap();
    s.bootstrap("127.0.0.1:4242").await.unwrap();
    (dir, Arc::new(s))
}

async fn put<T: Object>(s: &ClusterStore, kind: &str, id: &str, value: &T) {
    assert_eq!((kind, id), (T::KIND, value.id()));
    let r = s.apply(Write::overwrite(value.clone())).await.unwrap();
    assert!(matches!(r, CommandResult::Applied(_)));
}

fn load<T: Object>(s: &ClusterStore, kind: &str) -> Result<Vec<(T, u64)>, ClusterError> {
    assert_eq!(kind, T::KIND);
    Ok(s.list::<T>()?
        .into_iter()
        .map(|v| (v.value, v.version))
        .collect())
}

fn put_task(t: &Task, version: u64) -> Command {
    Write::update(t.clone(), version).encode().unwrap()
}

fn service(replicas: u64) -> Service {
    Service {
        id: "svc1".into(),
        spec: ServiceSpec {
            name: "web".into(),
            image: "busybox".into(),
            replicas,
            ..Default::default()
        },
        previous_spec: None,
        update_status: None,
        vips: Vec::new(),
        ports: Vec::new(),
    }
}

/// What an agent would report: assigned tasks run, tasks asked to stop stop.
async fn fake_agent(s: &ClusterStore, fail: &[&str]) {
    for (mut t, v) in load::<Task>(s, kinds::TASK).unwrap() {
        let next = if t.desired_state == TaskState::Shutdown && !t.status.state.is_terminal() {
            TaskState::Shutdown
        } else if t.status.state == TaskState::Assigned {
            if fail.contains(&t.node_id.as_str()) {
                TaskState::Failed
            } else {
                TaskState::Running
            }
        } else {
            continue;
        };
        t.status.state = next;
        s.write(put_task(&t, v)).await.unwrap();
    }
}

async fn converge(p: &Pipeline, s: &ClusterStore, now: i64, fail: &[&str]) {
    for _ in 0..10 {
        let r = p.reconcile(now).await.unwrap();
        fake_agent(s, fail).await;
        if !r.changed() {
            return;
        }
    }
}

fn running_per_node(s: &ClusterStore) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (t, _) in load::<Task>(s, kinds::TASK).unwrap() {
        if t.status.state == TaskState::Running {
            *out.entry(t.node_id).or_default() += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_runs_spreads_scales_and_is_removed() {
    let (_d, s) = store().await;
    put(&s, kinds::NODE, "n1", &node("n1")).await;
    put(&s, kinds::NODE, "n2", &node("n2")).await;
    put(&s, kinds::SERVICE, "svc1", &service(3)).await;
    let p = Pipeline::new(s.clone(), 1);
    converge(&p, &s, 1_000, &[]).await;
    let per_node = running_per_node(&s);
    assert_eq!(per_node.values().sum::<usize>(), 3);
    assert!(
        per_node.values().all(|n| *n == 1 || *n == 2),
        "{per_node:?}"
    );
    // Slots are 1..=3, each once.
    let mut slots: Vec<u64> = load::<Task>(&s, kinds::TASK)
        .unwrap()
        .iter()
        .map(|(t, _)| t.slot)
        .collect();
    slots.sort();
    assert_eq!(slots, vec![1, 2, 3]);

    put(&s, kinds::SERVICE, "svc1", &service(1)).await;
    converge(&p, &s, 2_000, &[]).await;
    assert_eq!(running_per_node(&s).values().sum::<usize>(), 1);

    // Draining the node that runs it moves the task to the other node.
    let on = running_per_node(&s).keys().next().cloned().unwrap();
    let other = if on == "n1" { "n2" } else { "n1" };
    let mut drained = node(&on);
    drained.availability = NodeAvailability::Drain;
    put(&s, kinds::NODE, &on, &drained).await;
    converge(&p, &s, 2_500, &[]).await;
    assert_eq!(
        running_per_node(&s),
        BTreeMap::from([(other.to_string(), 1)])
    );

    s.write(Command::Delete {
        kind: kinds::SERVICE.into(),
        id: "svc1".into(),
        expected_version: None,
    })
    .await
    .unwrap();
    converge(&p, &s, 3_000, &[]).await;
    assert!(running_per_node(&s).is_empty());
    converge(&p, &s, 4_000, &[]).await;
    assert!(
        load::<Task>(&s, kinds::TASK).unwrap().is_empty(),
        "stopped tasks of a removed service are forgotten"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_to_completion() {
    let (_d, s) = store().await;
    put(&s, kinds::NODE, "n1", &node("n1")).await;
    let mut job = service(3);
    job.spec.mode = shoal_api::types::ServiceMode::ReplicatedJob;
    job.spec.max_concurrent = 1;
    put(&s, kinds::SERVICE, "svc1", &job).await;
    let p = Pipeline::new(s.clone(), 1);
    for round in 0..10 {
        p.reconcile(1_000 + round).await.unwrap();
        // The fake engine: every running task completes.
        for (mut t, v) in load::<Task>(&s, kinds::TASK).unwrap() {
            if t.status.state == TaskState::Assigned {
                t.status.state = TaskState::Complete;
                s.write(put_task(&t, v)).await.unwrap();
            }
        }
    }
    let c = census(&s).unwrap();
    assert_eq!(c.get(&("svc1".into(), TaskState::Complete)), Some(&3));
    assert_eq!(c.len(), 1, "nothing else: {c:?}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tasks_are_replaced_after_the_delay_and_unplaceable_ones_say_why() {
    let (_d, s) = store().await;
    put(&s, kinds::NODE, "bad", &node("bad")).await;
    let mut svc = service(1);
    svc.spec.restart.delay_ms = 5_000;
    put(&s, kinds::SERVICE, "svc1", &svc).await;
    let p = Pipeline::new(s.clone(), 1);
    converge(&p, &s, 1_000, &["bad"]).await;
    let census1 = census(&s).unwrap();
    assert_eq!(census1.get(&("svc1".into(), TaskState::Failed)), Some(&1));
    // Before the delay nothing new; after it, a replacement.
    p.reconcile(2_000).await.unwrap();
    assert_eq!(load::<Task>(&s, kinds::TASK).unwrap().len(), 1);
    converge(&p, &s, 10_000, &[]).await;
    assert_eq!(
        census(&s)
            .unwrap()
            .get(&("svc1".into(), TaskState::Running)),
        Some(&1)
    );

    // A service that wants more memory than any node has: pending, with the reason.
    let mut big = service(1);
    big.id = "big".into();
    big.spec.reservations.memory_bytes = 64 << 30;
    put(&s, kinds::SERVICE, "big", &big).await;
    converge(&p, &s, 20_000, &[]).await;
    let pending: Vec<Task> = load::<Task>(&s, kinds::TASK)
        .unwrap()
        .into_iter()
        .map(|(t, _)| t)
        .filter(|t| t.service_id == "big")
        .collect();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].status.state, TaskState::Pending);
    assert_eq!(
        pending[0].status.message,
        "no suitable node (1 node: insufficient memory)"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_of_a_lost_node_run_elsewhere_and_host_ports_are_allocated() {
    let (_d, s) = store().await;
    put(&s, kinds::NODE, "n1", &node("n1")).await;
    put(&s, kinds::NODE, "n2", &node("n2")).await;
    let mut svc = service(2);
    svc.spec.ports = vec![shoal_api::types::PortConfig {
        target: 80,
        published: 0,
        protocol: shoal_api::types::PortProtocol::Tcp,
        mode: PublishMode::Host,
    }];
    svc.spec.max_replicas_per_node = 1;
    put(&s, kinds::SERVICE, "svc1", &svc).await;
    let p = Pipeline::new(s.clone(), 1);
    converge(&p, &s, 1_000, &[]).await;
    let tasks: Vec<Task> = load::<Task>(&s, kinds::TASK)
        .unwrap()
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    let mut ports: Vec<u16> = tasks.iter().map(|t| t.ports[0].published).collect();
    ports.sort();
    assert_eq!(
        ports,
        vec![30000, 30001],
        "each task got its own dynamic port"
    );
    assert_eq!(running_per_node(&s).len(), 2);

    // n2 stops heartbeating: its task is orphaned, and runs again on n1 once the
    // per-node limit is lifted.
    let mut down = node("n2");
    down.ready = false;
    down.status_message = "heartbeat failure".into();
    put(&s, kinds::NODE, "n2", &down).await;
    converge(&p, &s, 2_000, &[]).await;
    let orphaned: Vec<Task> = load::<Task>(&s, kinds::TASK)
        .unwrap()
        .into_iter()
        .map(|(t, _)| t)
        .filter(|t| t.status.state == TaskState::Orphaned)
        .collect();
    assert_eq!(orphaned.len(), 1);
    assert!(
        orphaned[0].status.message.contains("heartbeat failure"),
        "{:?}",
        orphaned[0].status
    );
    assert_eq!(orphaned[0].desired_state, TaskState::Shutdown);
    let mut unlimited = svc.clone();
    unlimited.spec.max_replicas_per_node = 0;
    put(&s, kinds::SERVICE, "svc1", &unlimited).await;
    converge(&p, &s, 3_000, &[]).await;
    assert_eq!(
        running_per_node(&s),
        BTreeMap::from([("n1".to_string(), 2)])
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_update_rolls_back_and_completes() {
    use shoal_api::types::{UpdateFailureAction, UpdateState, UpdateStatus};
    let (_d, s) = store().await;
    put(&s, kinds::NODE, "n1", &node("n1")).await;
    put(&s, kinds::NODE, "bad", &node("bad")).await;
    let mut svc = service(2);
    svc.spec.constraints = vec!["node.hostname==n1".into()];
    put(&s, kinds::SERVICE, "svc1", &svc).await;
    let p = Pipeline::new(s.clone(), 1);
    converge(&p, &s, 1_000, &[]).await;
    // The update can only run on the failing node.
    let mut updated = svc.clone();
    updated.previous_spec = Some(svc.spec.clone());
    updated.spec.constraints = vec!["node.hostname==bad".into()];
    updated.spec.update.failure_action = UpdateFailureAction::Rollback;
    updated.update_status = Some(UpdateStatus {
        state: UpdateState::Updating,
        started_ms: 1_500,
        completed_ms: 0,
        message: String::new(),
    });
    put(&s, kinds::SERVICE, "svc1", &updated).await;
    for round in 0..12 {
        converge(&p, &s, 2_000 + round, &["bad"]).await;
    }
    let (now, _) = load::<Service>(&s, kinds::SERVICE).unwrap().remove(0);
    assert_eq!(now.spec.constraints, svc.spec.constraints, "rolled back");
    let st = now.update_status.unwrap();
    assert_eq!(st.state, UpdateState::RollbackCompleted, "{st:?}");
    assert!(st.message.contains("update rolled back"), "{st:?}");
    assert_eq!(
        running_per_node(&s),
        BTreeMap::from([("n1".to_string(), 2)])
    );
    s.shutdown().await;
}
