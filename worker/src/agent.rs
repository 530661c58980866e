//! The node agent: one session with a manager's dispatcher, the node's tasks in, their
//! status out, run on the local engine. Containers carry their task's id as a label, so a
//! restarted agent adopts what its shims still run instead of starting tasks twice.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use shoal_api::dispatcher as pd;
use shoal_api::dispatcher::dispatcher_client::DispatcherClient;
use shoal_api::engine as pb;
use shoal_api::types::{
    AttachmentSpec, Network, NetworkView, PortProtocol, PublishMode, Task, TaskState,
};
use tokio::sync::Mutex;
use tonic::transport::Channel;

use crate::engine::{Engine, EngineError, State};

/// The label that ties a container to its task.
pub const TASK_LABEL: &str = "com.shoal.task.id";
/// The label naming the container's service.
pub const SERVICE_LABEL: &str = "com.shoal.service.id";

/// Makes a channel to a manager: to the given address (the leader, as a manager that does
/// not lead said), or, with none, to the next manager to try.
pub type Dialer = Arc<dyn Fn(Option<&str>) -> Channel + Send + Sync>;

/// What the managers tell the agent about its node, for the daemon to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum News {
    /// The role the cluster wants the node in (`manager` or `worker`), with each
    /// heartbeat.
    Role(String),
    /// The node was removed from the cluster.
    Removed,
}

/// Where the agent sends [`News`].
pub type Newsroom = Arc<dyn Fn(News) + Send + Sync>;

/// How the engine reaches the managers for standalone containers' network attachments:
/// through the agent's session (weakly: the engine outlives agents).
struct Link(std::sync::Weak<Agent>);

impl crate::engine::ClusterAttacher for Link {
    fn attach(
        &self,
        network: String,
        container_id: String,
        name: String,
    ) -> futures::future::BoxFuture<'static, Result<AttachmentSpec, String>> {
        let agent = self.0.upgrade();
        Box::pin(async move {
            let agent = agent.ok_or("this node's agent stopped: try again")?;
            let request = pd::AttachRequest {
                node_id: agent.session.node_id.clone(),
                network,
                container_id,
                container_name: name,
            };
            let mut last = String::new();
            for _ in 0..3 {
                match DispatcherClient::new(agent.channel())
                    .attach_network(request.clone())
                    .await
                {
                    Ok(r) => {
                        return serde_json::from_str(&r.into_inner().attachment_json)
                            .map_err(|e| format!("the managers' attachment is malformed: {e}"));
                    }
                    Err(e) if e.metadata().get(shoal_api::LEADER_METADATA).is_some() => {
                        agent.redial(&e);
                        last = e.message().to_string();
                    }
                    Err(e) => return Err(e.message().to_string()),
                }
            }
            Err(last)
        })
    }

    fn detach(&self, container_id: String) -> futures::future::BoxFuture<'static, ()> {
        let agent = self.0.upgrade();
        Box::pin(async move {
            let Some(agent) = agent else { return };
            let request = pd::DetachRequest {
                node_id: agent.session.node_id.clone(),
                container_id,
            };
            for _ in 0..3 {
                match DispatcherClient::new(agent.channel())
                    .detach_network(request.clone())
                    .await
                {
                    Ok(_) => return,
                    Err(e) => {
                        tracing::debug!("giving a network attachment back: {e}");
                        agent.redial(&e);
                    }
                }
            }
        })
    }
}

/// The agent of one node.
pub struct Agent {
    engine: Arc<Engine>,
    dial: Dialer,
    news: Newsroom,
    /// Set when the agent stops: every task it spawned ends.
    stop: tokio::sync::watch::Sender<bool>,
    channel: std::sync::RwLock<Channel>,
    session: pd::SessionRequest,
    /// Tasks this agent stopped on purpose: their exit is no failure.
    stopping: Mutex<HashSet<String>>,
    /// Tasks being started.
    starting: Mutex<HashSet<String>>,
    /// How many containers start at once.
    start_slots: tokio::sync::Semaphore,
    /// Tasks whose health check runs.
    checked: Mutex<HashSet<String>>,
    /// Status waiting to go to the dispatcher, sent in batches.
    outbox: tokio::sync::mpsc::UnboundedSender<pd::StatusUpdate>,
    outbox_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<pd::StatusUpdate>>>,
    /// The networks the managers last told of, by id (a task's attachments name them).
    networks: std::sync::RwLock<HashMap<String, Network>>,
}

fn update(task_id: &str, state: TaskState, message: impl Into<String>) -> pd::StatusUpdate {
    pd::StatusUpdate {
        task_id: task_id.to_string(),
        state: serde_json::to_value(state)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        message: message.into(),
        ..Default::default()
    }
}

impl Agent {
    /// An agent for `session`'s node, talking to the dispatcher of the managers `dial`
    /// reaches.
    pub fn new(
        engine: Arc<Engine>,
        dial: Dialer,
        session: pd::SessionRequest,
        news: Newsroom,
    ) -> Arc<Agent> {
        let (outbox, rx) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(Agent {
            engine,
            channel: std::sync::RwLock::new(dial(None)),
            dial,
            news,
            stop: tokio::sync::watch::channel(false).0,
            session,
            stopping: Mutex::new(HashSet::new()),
            starting: Mutex::new(HashSet::new()),
            start_slots: tokio::sync::Semaphore::new(8),
            checked: Mutex::new(HashSet::new()),
            outbox,
            outbox_rx: Mutex::new(Some(rx)),
            networks: Default::default(),
        })
    }

    /// Runs sessions until [`Agent::stop`], reconnecting after failures; heartbeats and
    /// sends status batches alongside.
    pub async fn run(self: Arc<Self>) {
        self.engine
            .set_attacher(Some(Arc::new(Link(Arc::downgrade(&self)))));
        if let Some(rx) = self.outbox_rx.lock().await.take() {
            self.spawn(self.clone().send_status(rx));
        }
        self.spawn(self.clone().heartbeats());
        self.adopt();
        let agent = self.clone();
        self.spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match agent.clone().session().await {
                    Ok(()) => backoff = Duration::from_millis(100),
                    Err(e) => {
                        tracing::debug!("agent session: {e}");
                        agent.redial(&e);
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        let _ = self.stop.subscribe().wait_for(|s| *s).await;
    }

    /// Runs `work` until the agent stops.
    fn spawn(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut stopped = self.stop.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                _ = work => {}
                _ = stopped.wait_for(|s| *s) => {}
            }
        });
    }

    /// Stops the agent: its sessions, heartbeats, watches and checks end. With
    /// `remove_tasks` (the node leaves the cluster) the containers of its tasks are stopped,
    /// each with its grace period, and removed.
    pub async fn stop(&self, remove_tasks: bool) {
        let _ = self.stop.send(true);
        self.engine.set_attacher(None);
        if remove_tasks {
            remove_task_containers(&self.engine).await;
            self.engine.leave_cluster_networks().await;
        }
    }

    /// Follows the containers of tasks this node already runs (after a daemon restart),
    /// so their exits are reported.
    fn adopt(self: &Arc<Self>) {
        for r in self.engine.list(false) {
            if let Some(task) = r.spec.labels.get(TASK_LABEL) {
                self.watch(task.clone(), r.id.clone());
            }
        }
    }

    fn channel(&self) -> Channel {
        self.channel
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// After a failed session: to the leader, if the manager named it, else to the next
    /// manager.
    fn redial(&self, e: &tonic::Status) {
        let leader = e
            .metadata()
            .get(shoal_api::LEADER_METADATA)
            .and_then(|v| v.to_str().ok());
        let channel = (self.dial)(leader);
        *self.channel.write().unwrap_or_else(|e| e.into_inner()) = channel;
    }

    async fn session(self: Arc<Self>) -> Result<(), tonic::Status> {
        let mut client = DispatcherClient::new(self.channel())
            .max_decoding_message_size(shoal_api::MAX_MESSAGE)
            .max_encoding_message_size(shoal_api::MAX_MESSAGE);
        let mut stream = client.assignments(self.session.clone()).await?.into_inner();
        while let Some(set) = stream.message().await? {
            // The networks first: a task starting below joins them.
            let views: Vec<NetworkView> = if set.networks_json.is_empty() {
                Vec::new()
            } else {
                serde_json::from_str(&set.networks_json).unwrap_or_else(|e| {
                    tracing::warn!("the managers' network views are malformed: {e}");
                    Vec::new()
                })
            };
            {
                let mut known = self.networks.write().unwrap_or_else(|e| e.into_inner());
                for v in &views {
                    known.insert(v.network.id.clone(), v.network.clone());
                }
            }
            self.engine
                .set_network_views(&self.session.node_id, views)
                .await;
            let tasks: Vec<Task> = set
                .tasks
                .iter()
                .filter_map(|a| serde_json::from_str(&a.json).ok())
                .collect();
            let updates = self.reconcile(&tasks).await;
            if !updates.is_empty() {
                client
                    .update_status(pd::StatusBatch {
                        node_id: self.session.node_id.clone(),
                        updates,
                    })
                    .await?;
            }
        }
        Ok(())
    }

    /// Queues status for the dispatcher.
    fn report(&self, updates: Vec<pd::StatusUpdate>) {
        for u in updates {
            let _ = self.outbox.send(u);
        }
    }

    /// Sends queued status in batches: what queued up while the last batch was on its way
    /// goes in the next one. A batch that fails is sent again (the manager may be
    /// restarting), so no exit goes unreported.
    async fn send_status(
        self: Arc<Self>,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<pd::StatusUpdate>,
    ) {
        while let Some(first) = rx.recv().await {
            let mut updates = vec![first];
            // Let the starts of one assignment set land in one batch.
            tokio::time::sleep(Duration::from_millis(5)).await;
            while updates.len() < 512 {
                match rx.try_recv() {
                    Ok(u) => updates.push(u),
                    Err(_) => break,
                }
            }
            let batch = pd::StatusBatch {
                node_id: self.session.node_id.clone(),
                updates,
            };
            let mut backoff = Duration::from_millis(100);
            while let Err(e) = DispatcherClient::new(self.channel())
                .max_decoding_message_size(shoal_api::MAX_MESSAGE)
                .max_encoding_message_size(shoal_api::MAX_MESSAGE)
                .update_status(batch.clone())
                .await
            {
                tracing::debug!("sending task status: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }

    /// Heartbeats at the period the manager asks for.
    async fn heartbeats(self: Arc<Self>) {
        loop {
            let period = match DispatcherClient::new(self.channel())
                .max_decoding_message_size(shoal_api::MAX_MESSAGE)
                .max_encoding_message_size(shoal_api::MAX_MESSAGE)
                .heartbeat(pd::HeartbeatRequest {
                    node_id: self.session.node_id.clone(),
                })
                .await
            {
                Ok(r) => {
                    let r = r.into_inner();
                    if !r.role.is_empty() {
                        (self.news)(News::Role(r.role));
                    }
                    Duration::from_millis(r.period_ms.clamp(50, 60_000))
                }
                Err(e) if e.metadata().get(shoal_api::REMOVED_METADATA).is_some() => {
                    tracing::warn!("this node was removed from the cluster: {}", e.message());
                    (self.news)(News::Removed);
                    Duration::from_secs(1)
                }
                Err(e) => {
                    tracing::debug!("heartbeat: {e}");
                    if e.metadata().get(shoal_api::LEADER_METADATA).is_some() {
                        self.redial(&e);
                    }
                    Duration::from_millis(200)
                }
            };
            tokio::time::sleep(period).await;
        }
    }

    /// Brings the engine in line with the assigned tasks; returns status to report.
    async fn reconcile(self: &Arc<Self>, tasks: &[Task]) -> Vec<pd::StatusUpdate> {
        let mut updates = Vec::new();
        let assigned: HashSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        // Starts in flight, read before what the engine holds: only reconcile starts
        // tasks, so a task not in flight now has no start racing with the decisions below
        // (a start that ends while this runs would otherwise look like none, or like a
        // leftover, and be made twice).
        let in_flight: HashSet<String> = self.starting.lock().await.clone();
        // What the engine holds for tasks, running or exited (kept for logs until the
        // task leaves this node's set).
        let records: HashMap<String, crate::engine::ContainerRecord> = self
            .engine
            .list(true)
            .into_iter()
            .filter_map(|r| r.spec.labels.get(TASK_LABEL).cloned().map(|t| (t, r)))
            .collect();
        let held: HashMap<String, (String, bool)> = records
            .iter()
            .map(|(t, r)| (t.clone(), (r.id.clone(), r.is_running())))
            .collect();
        for t in tasks {
            let container = held.get(&t.id);
            if t.desired_state > TaskState::Running {
                match container {
                    // Stops run side by side; each reports when its container is gone.
                    Some((c, true)) if self.stopping.lock().await.insert(t.id.clone()) => {
                        let (agent, c, id) = (self.clone(), c.clone(), t.id.clone());
                        self.spawn(async move {
                            let _ = agent.engine.stop(&c, None).await;
                            agent.report(vec![update(&id, TaskState::Shutdown, "shut down")]);
                        });
                    }
                    Some((_, true)) => {}
                    _ if !t.status.state.is_terminal() => {
                        updates.push(update(&t.id, TaskState::Shutdown, "shut down"));
                    }
                    _ => {}
                }
                continue;
            }
            if let Some((c, true)) = container
                && let Some(h) = &t.spec.healthcheck
                && t.status.state == TaskState::Running
            {
                // After a restart the check of an adopted task runs again.
                self.check_health(t.id.clone(), c.clone(), h.clone());
            }
            if t.status.state.is_terminal()
                && let Some((c, true)) = container
                && self.stopping.lock().await.insert(t.id.clone())
            {
                // The managers recorded its end (a report that raced with a restart,
                // say) while its container still runs: it must not run on beside its
                // replacement.
                let (agent, c) = (self.clone(), c.clone());
                self.spawn(async move {
                    let _ = agent.engine.stop(&c, None).await;
                });
                continue;
            }
            if t.status.state.is_terminal() || in_flight.contains(&t.id) {
                continue;
            }
            // What the engine holds may be ahead of what the managers heard: a status lost
            // with a leader that died, or an exit while this daemon was down. Tell them
            // again; a start cut short (the daemon died between create and start) begins
            // anew.
            match records.get(&t.id).map(|r| (r, &r.state)) {
                Some((r, State::Running { .. })) => {
                    if t.status.state < TaskState::Running {
                        let mut u = update(&t.id, TaskState::Running, "started");
                        u.container_id = r.id.clone();
                        updates.push(u);
                    }
                    continue;
                }
                Some((r, State::Exited { .. })) => {
                    updates.push(exit_update(&t.id, r));
                    continue;
                }
                Some((r, State::Created)) => {
                    let _ = self.engine.remove(&r.id, true).await;
                }
                None => {}
            }
            // Starts run side by side (bounded), each reporting on its own.
            if !self.starting.lock().await.insert(t.id.clone()) {
                continue;
            }
            let (agent, t) = (self.clone(), t.clone());
            self.spawn(async move {
                let permit = agent.start_slots.acquire().await;
                let u = match agent.start(&t).await {
                    Ok(id) => {
                        let mut u = update(&t.id, TaskState::Running, "started");
                        u.container_id = id.clone();
                        agent.watch(t.id.clone(), id.clone());
                        if let Some(h) = t.spec.healthcheck.clone() {
                            agent.check_health(t.id.clone(), id, h);
                        }
                        u
                    }
                    Err(e) => {
                        let state = if matches!(e, EngineError::NotFound(_)) {
                            TaskState::Rejected
                        } else {
                            TaskState::Failed
                        };
                        update(&t.id, state, e.to_string())
                    }
                };
                drop(permit);
                agent.report(vec![u]);
                agent.starting.lock().await.remove(&t.id);
            });
        }
        // Containers of tasks no longer assigned here go.
        for (task, (c, _)) in &held {
            if !assigned.contains(task.as_str()) {
                self.stopping.lock().await.insert(task.clone());
                let _ = self.engine.remove(c, true).await;
            }
        }
        updates
    }

    async fn start(&self, t: &Task) -> Result<String, EngineError> {
        let spec = &t.spec;
        let mut labels = std::collections::HashMap::new();
        labels.insert(TASK_LABEL.to_string(), t.id.clone());
        labels.insert(SERVICE_LABEL.to_string(), t.service_id.clone());
        let short: String = t.id.chars().take(12).collect();
        let name = if t.slot > 0 {
            format!("{}.{}.{short}", spec.name, t.slot)
        } else {
            format!(
                "{}.{}.{short}",
                spec.name,
                t.node_id.chars().take(12).collect::<String>()
            )
        };
        let attachments = {
            let known = self.networks.read().unwrap_or_else(|e| e.into_inner());
            t.networks
                .iter()
                .map(|a| {
                    let network = known.get(&a.network_id).cloned().ok_or_else(|| {
                        EngineError::Invalid(format!(
                            "network {} is not known on this node yet: the managers have not told of it",
                            a.network_id
                        ))
                    })?;
                    Ok(serde_json::to_string(&AttachmentSpec {
                        network,
                        addr: a.addr.clone(),
                    })
                    .unwrap_or_default())
                })
                .collect::<Result<Vec<String>, EngineError>>()?
        };
        let record = self
            .engine
            .create(pb::ContainerSpec {
                image: spec.image.clone(),
                name,
                cmd: spec.command.clone(),
                env: spec.env.clone(),
                network: "bridge".into(),
                resources: Some(pb::Resources {
                    memory_bytes: spec.limits.memory_bytes,
                    nano_cpus: spec.limits.nano_cpus,
                    pids_limit: spec.pids_limit,
                }),
                stop_signal: spec.stop_signal.clone(),
                stop_timeout_secs: spec
                    .stop_grace_period_ms
                    .map(|ms| ms.div_ceil(1000) as i64)
                    .unwrap_or(-1),
                // Ports published in ingress mode are the routing mesh's, on every node.
                ports: t
                    .ports
                    .iter()
                    .filter(|p| p.mode == PublishMode::Host)
                    .map(|p| pb::PortMapping {
                        host_ip: String::new(),
                        host_port: p.published.into(),
                        container_port: p.target.into(),
                        protocol: match p.protocol {
                            PortProtocol::Tcp => "tcp".into(),
                            PortProtocol::Udp => "udp".into(),
                        },
                    })
                    .collect(),
                attachments,
                labels,
                ..Default::default()
            })
            .await?;
        if let Err(e) = self.engine_start(&record.id).await {
            let _ = self.engine.remove(&record.id, true).await;
            return Err(e);
        }
        Ok(record.id)
    }

    async fn engine_start(&self, id: &str) -> Result<(), EngineError> {
        // Engine::start takes an Arc; the agent holds one.
        self.engine.clone().start_arc(id).await
    }

    /// Runs the health check in the container until it exits; after `retries` failures
    /// in a row the task is reported failed ("unhealthy") and its container stopped, so the
    /// orchestrator replaces it.
    fn check_health(
        self: &Arc<Self>,
        task_id: String,
        container: String,
        h: shoal_api::types::HealthCheck,
    ) {
        let agent = self.clone();
        self.spawn(async move {
            if !agent.checked.lock().await.insert(task_id.clone()) {
                return; // already checked
            }
            agent.run_health_check(&task_id, &container, &h).await;
            agent.checked.lock().await.remove(&task_id);
        });
    }

    async fn run_health_check(
        self: &Arc<Self>,
        task_id: &str,
        container: &str,
        h: &shoal_api::types::HealthCheck,
    ) {
        let agent = self;
        {
            let started = tokio::time::Instant::now();
            let mut failures = 0u32;
            let mut told_healthy = false;
            loop {
                tokio::time::sleep(Duration::from_millis(h.interval_ms)).await;
                let running = agent
                    .engine
                    .inspect(container)
                    .map(|r| r.is_running())
                    .unwrap_or(false);
                if !running {
                    return;
                }
                let opts = crate::engine::ExecOptions {
                    cmd: vec!["sh".into(), "-c".into(), h.command.clone()],
                    ..Default::default()
                };
                let healthy = match agent.engine.exec(container, opts).await {
                    Ok(mut rx) => {
                        let run = async {
                            let mut code = 1;
                            while let Some(chunk) = rx.recv().await {
                                if let crate::engine::ExecChunk::Exit(c) = chunk {
                                    code = c;
                                }
                            }
                            code
                        };
                        matches!(
                            tokio::time::timeout(Duration::from_millis(h.timeout_ms), run).await,
                            Ok(0)
                        )
                    }
                    Err(_) => false,
                };
                if healthy {
                    failures = 0;
                    if !told_healthy {
                        // From now on the task gets traffic (VIPs, DNS, the mesh).
                        told_healthy = true;
                        let mut u = update(task_id, TaskState::Running, "healthy");
                        u.health = "healthy".into();
                        agent.report(vec![u]);
                    }
                    continue;
                }
                if started.elapsed() < Duration::from_millis(h.start_period_ms) {
                    continue;
                }
                failures += 1;
                if failures >= h.retries {
                    agent.stopping.lock().await.insert(task_id.to_string());
                    agent.report(vec![update(
                        task_id,
                        TaskState::Failed,
                        format!(
                            "unhealthy: \"{}\" failed {failures} times in a row",
                            h.command
                        ),
                    )]);
                    let _ = agent.engine.stop(container, None).await;
                    return;
                }
            }
        }
    }

    /// Reports the container's exit when it comes.
    fn watch(self: &Arc<Self>, task_id: String, container: String) {
        let agent = self.clone();
        self.spawn(async move {
            if agent.engine.wait(&container).await.is_err() {
                return;
            }
            // A container stopped on purpose is reported as shut down by reconcile.
            if agent.stopping.lock().await.remove(&task_id) {
                return;
            }
            if let Ok(record) = agent.engine.inspect(&container) {
                agent.report(vec![exit_update(&task_id, &record)]);
            }
        });
    }
}

/// The status of a task whose container has ended: complete on exit code 0, failed
/// otherwise (with the code, the OOM killer, or the engine's error).
fn exit_update(task_id: &str, record: &crate::engine::ContainerRecord) -> pd::StatusUpdate {
    let (code, oom, error) = match &record.state {
        State::Exited {
            exit_code,
            oom_killed,
            error,
            ..
        } => (*exit_code, *oom_killed, error.as_str()),
        _ => (-1, false, ""),
    };
    let (state, message) = if code == 0 {
        (TaskState::Complete, "finished".to_string())
    } else if oom {
        (
            TaskState::Failed,
            format!("exit code {code} (out of memory)"),
        )
    } else if !error.is_empty() {
        (TaskState::Failed, format!("exit code {code}: {error}"))
    } else {
        (TaskState::Failed, format!("exit code {code}"))
    };
    let mut u = update(task_id, state, message);
    u.exited = true;
    u.exit_code = code;
    u
}

/// Stops (each with its grace period) and removes every container of a task on this
/// node: what leaving the cluster leaves behind.
pub async fn remove_task_containers(engine: &Engine) {
    let tasks: Vec<String> = engine
        .list(true)
        .into_iter()
        .filter(|r| r.spec.labels.contains_key(TASK_LABEL))
        .map(|r| r.id)
        .collect();
    futures::future::join_all(tasks.iter().map(|id| async move {
        let _ = engine.stop(id, None).await;
        if let Err(e) = engine.remove(id, true).await {
            tracing::warn!("removing container {id}: {e}");
        }
    }))
    .await;
}
