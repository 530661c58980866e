//! The node agent against a fake dispatcher, on a real engine: a task the agent cannot read
//! is reported rejected with the reason, and no container is touched for it — not its
//! own, not another task's.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_api::dispatcher as pd;
use shoal_api::dispatcher::dispatcher_server::{Dispatcher, DispatcherServer};
use shoal_api::types::{ServiceSpec, Task, TaskState, TaskStatus};
use shoal_tests::{Daemon, require_kernel, shoal_bin};
use shoal_worker::agent::{Agent, Dialer, TASK_LABEL};
use shoal_worker::engine::{Engine, EngineConfig};
use shoal_worker::image::ImageStore;
use shoal_worker::runtime::Runtime;
use tonic::{Request, Response, Status};

/// A dispatcher that hands out whatever set the test puts in, and keeps what it is told.
#[derive(Clone, Default)]
struct FakeDispatcher {
    sets: Arc<Mutex<Option<tokio::sync::watch::Sender<pd::AssignmentSet>>>>,
    statuses: Arc<Mutex<Vec<pd::StatusUpdate>>>,
}

impl FakeDispatcher {
    fn last(&self, task: &str) -> Option<pd::StatusUpdate> {
        let all = self.statuses.lock().expect("statuses");
        all.iter().rev().find(|u| u.task_id == task).cloned()
    }

    fn send(&self, set: pd::AssignmentSet) {
        if let Some(tx) = self.sets.lock().expect("sets").as_ref() {
            tx.send_replace(set);
        }
    }
}

type SetStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pd::AssignmentSet, Status>> + Send>>;

#[tonic::async_trait]
impl Dispatcher for FakeDispatcher {
    type AssignmentsStream = SetStream;

    async fn assignments(
        &self,
        _r: Request<pd::SessionRequest>,
    ) -> Result<Response<SetStream>, Status> {
        let (tx, rx) = tokio::sync::watch::channel(pd::AssignmentSet::default());
        *self.sets.lock().expect("sets") = Some(tx);
        let stream = tokio_stream::wrappers::WatchStream::new(rx);
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(
            stream, Ok,
        ))))
    }

    async fn update_status(
        &self,
        r: Request<pd::StatusBatch>,
    ) -> Result<Response<pd::StatusReply>, Status> {
        self.statuses
            .lock()
            .expect("statuses")
            .extend(r.into_inner().updates);
        Ok(Response::new(pd::StatusReply {}))
    }

    async fn heartbeat(
        &self,
        _r: Request<pd::HeartbeatRequest>,
    ) -> Result<Response<pd::HeartbeatReply>, Status> {
        Ok(Response::new(pd::HeartbeatReply {
            period_ms: 500,
            role: "worker".into(),
        }))
    }

    async fn attach_network(
        &self,
        _r: Request<pd::AttachRequest>,
    ) -> Result<Response<pd::AttachReply>, Status> {
        Err(Status::unimplemented("no cluster networks here"))
    }

    async fn detach_network(
        &self,
        _r: Request<pd::DetachRequest>,
    ) -> Result<Response<pd::DetachReply>, Status> {
        Ok(Response::new(pd::DetachReply {}))
    }

    async fn record_volume(
        &self,
        _r: Request<pd::RecordVolumeRequest>,
    ) -> Result<Response<pd::RecordVolumeReply>, Status> {
        Ok(Response::new(pd::RecordVolumeReply {}))
    }

    async fn release_volume(
        &self,
        _r: Request<pd::ReleaseVolumeRequest>,
    ) -> Result<Response<pd::ReleaseVolumeReply>, Status> {
        Ok(Response::new(pd::ReleaseVolumeReply {}))
    }
}

fn task(id: &str) -> Task {
    Task {
        id: id.into(),
        service_id: "svc".into(),
        slot: 1,
        node_id: "n1".into(),
        spec: ServiceSpec {
            name: id.into(),
            image: "busybox".into(),
            command: vec!["sleep".into(), "1000".into()],
            ..Default::default()
        },
        created_ms: 0,
        ports: Vec::new(),
        networks: Vec::new(),
        desired_state: TaskState::Running,
        status: TaskStatus {
            state: TaskState::Assigned,
            timestamp_ms: 0,
            message: String::new(),
            exit_code: None,
            container_id: String::new(),
            health: String::new(),
        },
    }
}

/// Waits (up to 30 s) for `f` to hold.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The running containers of the engine, by task.
fn running(engine: &Engine) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = engine
        .list(false)
        .into_iter()
        .filter_map(|r| Some((r.spec.labels.get(TASK_LABEL)?.clone(), r.id)))
        .collect();
    out.sort();
    out
}

async fn body(d: &Daemon) {
    let images = Arc::new(ImageStore::open(&d.data_root.join("image")).expect("images"));
    let network = Arc::new(
        shoal_netoverlay::bridge::BridgeNetwork::open(&d.run_root.join("net"))
            .await
            .expect("bridge"),
    );
    let config = EngineConfig {
        data_root: d.data_root.clone(),
        run_root: d.run_root.clone(),
        runtime: Runtime::Builtin,
        cgroup_parent: d.cgroup_parent.clone(),
        self_exe: shoal_bin(),
        plugin_dirs: Vec::new(),
        plugin_timeout: Duration::from_secs(5),
    };
    let engine = Engine::open(config, images, network).await.expect("engine");

    let fake = FakeDispatcher::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = fake.clone();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(DispatcherServer::new(server))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    let dial: Dialer = Arc::new(move |_| {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_lazy()
    });
    let session = pd::SessionRequest {
        node_id: "n1".into(),
        hostname: "n1".into(),
        ..Default::default()
    };
    let agent = Agent::new(engine.clone(), dial, session, Arc::new(|_| {}));
    tokio::spawn(agent.clone().run());
    until("the session", || fake.sets.lock().expect("sets").is_some()).await;

    let assignment = |t: &Task| pd::Assignment::new(t, 7).expect("encodes");
    fake.send(pd::AssignmentSet {
        tasks: vec![assignment(&task("t-good")), assignment(&task("t-victim"))],
        networks_json: String::new(),
    });
    let is_running = |id: &str| {
        fake.last(id)
            .is_some_and(|u| u.state == TaskState::Running.as_str())
    };
    until("both tasks running", || {
        is_running("t-good") && is_running("t-victim")
    })
    .await;
    let before = running(&engine);
    assert_eq!(before.len(), 2, "{before:?}");

    // The victim's assignment now carries something this agent cannot read.
    fake.send(pd::AssignmentSet {
        tasks: vec![
            assignment(&task("t-good")),
            pd::Assignment {
                id: "t-victim".into(),
                version: 9,
                json: "{\"id\": 5, \"spec\": \"from the future\"}".into(),
            },
        ],
        networks_json: String::new(),
    });
    until("the victim rejected", || {
        fake.last("t-victim")
            .is_some_and(|u| u.state == TaskState::Rejected.as_str())
    })
    .await;
    let rejected = fake.last("t-victim").expect("a status");
    assert!(
        rejected.message.contains("cannot read the task"),
        "the reason is given: {}",
        rejected.message
    );
    // The set was reconciled before its status went out: every container is as it was.
    assert_eq!(running(&engine), before, "no container was touched");
    assert!(
        is_running("t-good"),
        "the other task was not reported otherwise"
    );

    // Leaving removes the task containers (the unreadable task's too: the node goes).
    agent.stop(true).await;
    assert!(running(&engine).is_empty());
}

#[test]
fn an_unreadable_task_is_rejected_and_no_container_is_touched() {
    require_kernel!();
    let mut d = Daemon::start("builtin");
    d.import_busybox("busybox");
    // The engine runs in this process from here on, on the daemon's roots; the daemon
    // comes back when `d` drops, to remove what is left.
    d.kill9();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(body(&d));
}
