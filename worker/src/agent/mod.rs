//! The node agent: one session with a manager's dispatcher, the node's tasks in, their
//! status out, each task run by the [`crate::executor`]. Containers carry their task's id
//! as a label, so a restarted agent adopts what its shims still run instead of starting
//! tasks twice. A task the agent cannot read is reported rejected with the reason, and
//! whatever container it has is left alone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use shoal_api::dispatcher as pd;
use shoal_api::dispatcher::dispatcher_client::DispatcherClient;
use shoal_api::types::{Network, Task, TaskState};
use tokio::sync::Mutex;
use tonic::transport::Channel;

use crate::engine::{Engine, EngineError, State};
use crate::executor::{Executor, health};
pub use crate::executor::{SERVICE_LABEL, TASK_LABEL, remove_task_containers};

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

mod attach;
use attach::Link;

/// The agent of one node.
pub struct Agent {
    engine: Arc<Engine>,
    executor: Executor,
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
    /// Assignments this agent could not read and has reported rejected, at their versions.
    unreadable: Mutex<HashMap<String, u64>>,
    /// The volume drivers the managers last heard of from this node.
    told_drivers: std::sync::Mutex<Vec<String>>,
}

fn update(task_id: &str, state: TaskState, message: impl Into<String>) -> pd::StatusUpdate {
    pd::StatusUpdate::new(task_id, state, message)
}

/// An assignment set read: the tasks, and the ids of those that could not be read, with
/// why.
struct Assigned {
    tasks: Vec<Task>,
    unreadable: Vec<(String, u64, String)>,
}

fn read_assignments(set: &pd::AssignmentSet) -> Assigned {
    let mut out = Assigned {
        tasks: Vec::new(),
        unreadable: Vec::new(),
    };
    for a in &set.tasks {
        match a.task() {
            Ok(t) if t.id == a.id || a.id.is_empty() => out.tasks.push(t),
            Ok(t) => out.unreadable.push((
                a.id.clone(),
                a.version,
                format!(
                    "the assignment names task {} but carries task {}",
                    a.id, t.id
                ),
            )),
            Err(e) => out.unreadable.push((
                a.id.clone(),
                a.version,
                format!("this node cannot read the task ({e}): is it running an older shoal?"),
            )),
        }
    }
    out
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
            executor: Executor::new(engine.clone()),
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
            unreadable: Default::default(),
            told_drivers: Default::default(),
        })
    }

    /// Runs sessions until [`Agent::stop`], reconnecting after failures; heartbeats and
    /// sends status batches alongside.
    pub async fn run(self: Arc<Self>) {
        self.engine
            .set_cluster_link(Some(Arc::new(Link(Arc::downgrade(&self)))));
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
        self.engine.set_cluster_link(None);
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
        let mut session = self.session.clone();
        session.volume_drivers = self.engine.volume_drivers();
        let drivers = session.volume_drivers.clone();
        let mut stream = client.assignments(session).await?.into_inner();
        *self.told_drivers.lock().unwrap_or_else(|e| e.into_inner()) = drivers;
        while let Some(set) = stream.message().await? {
            // The networks first: a task starting below joins them. Views that cannot be
            // read leave the networks as they are (tearing them down would cut tasks off).
            match set.networks() {
                Ok(views) => {
                    {
                        let mut known = self.networks.write().unwrap_or_else(|e| e.into_inner());
                        for v in &views {
                            known.insert(v.network.id.clone(), v.network.clone());
                        }
                    }
                    self.engine
                        .set_network_views(&self.session.node_id, views)
                        .await;
                }
                Err(e) => {
                    tracing::error!("the managers' network views: {e}; networks left as they are")
                }
            }
            let assigned = read_assignments(&set);
            let mut updates = self.reject_unreadable(&assigned.unreadable).await;
            let keep: HashSet<&str> = assigned
                .unreadable
                .iter()
                .map(|(id, _, _)| id.as_str())
                .collect();
            updates.extend(self.reconcile(&assigned.tasks, &keep).await);
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

    /// Heartbeats at the period the manager asks for. A heartbeat carries the node's
    /// volume drivers when they changed (a plugin started or stopped), so the scheduler
    /// learns of them within a period.
    async fn heartbeats(self: Arc<Self>) {
        loop {
            let drivers = self.engine.volume_drivers();
            let changed = {
                let told = self.told_drivers.lock().unwrap_or_else(|e| e.into_inner());
                !told.is_empty() && *told != drivers
            };
            let period = match DispatcherClient::new(self.channel())
                .max_decoding_message_size(shoal_api::MAX_MESSAGE)
                .max_encoding_message_size(shoal_api::MAX_MESSAGE)
                .heartbeat(pd::HeartbeatRequest {
                    node_id: self.session.node_id.clone(),
                    volume_drivers: if changed { drivers.clone() } else { Vec::new() },
                })
                .await
            {
                Ok(r) => {
                    if changed {
                        *self.told_drivers.lock().unwrap_or_else(|e| e.into_inner()) = drivers;
                    }
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

    /// Reports each unreadable assignment rejected, once per version.
    async fn reject_unreadable(
        &self,
        unreadable: &[(String, u64, String)],
    ) -> Vec<pd::StatusUpdate> {
        let mut told = self.unreadable.lock().await;
        told.retain(|id, _| unreadable.iter().any(|(u, _, _)| u == id));
        let mut out = Vec::new();
        for (id, version, why) in unreadable {
            if id.is_empty() || told.get(id) == Some(version) {
                continue;
            }
            tracing::error!(task = %id, "rejecting an assignment: {why}");
            told.insert(id.clone(), *version);
            out.push(update(id, TaskState::Rejected, why.clone()));
        }
        out
    }

    /// Brings the engine in line with the assigned tasks; returns status to report. The
    /// containers of tasks in `keep` (assigned, but unreadable) are left alone.
    async fn reconcile(
        self: &Arc<Self>,
        tasks: &[Task],
        keep: &HashSet<&str>,
    ) -> Vec<pd::StatusUpdate> {
        let mut updates = Vec::new();
        let assigned: HashSet<&str> = tasks
            .iter()
            .map(|t| t.id.as_str())
            .chain(keep.iter().copied())
            .collect();
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
                            let _ = agent.executor.shutdown(&c).await;
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
                    let _ = agent.executor.shutdown(&c).await;
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
                    updates.push(exit_update(&t.id, &crate::executor::exit_of(r)));
                    continue;
                }
                Some((r, State::Created)) => {
                    let _ = self.executor.remove(&r.id).await;
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
                let _ = self.executor.remove(c).await;
            }
        }
        updates
    }

    /// Prepares and starts `t`'s container; returns its id.
    async fn start(&self, t: &Task) -> Result<String, EngineError> {
        let spec = {
            let known = self.networks.read().unwrap_or_else(|e| e.into_inner());
            self.executor
                .prepare(t, &known, &self.session.hostname)
                .map_err(|e| EngineError::Invalid(e.to_string()))?
        };
        self.executor.start(spec).await
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
            let healthy = || {
                // From now on the task gets traffic (VIPs, DNS, the mesh).
                let mut u = update(&task_id, TaskState::Running, "healthy");
                u.health = "healthy".into();
                agent.report(vec![u]);
            };
            let verdict = health::watch(&agent.engine, &container, &h, healthy).await;
            if let health::Verdict::Unhealthy(message) = verdict {
                agent.stopping.lock().await.insert(task_id.clone());
                agent.report(vec![update(&task_id, TaskState::Failed, message)]);
                let _ = agent.executor.shutdown(&container).await;
            }
            agent.checked.lock().await.remove(&task_id);
        });
    }

    /// Reports the container's exit when it comes.
    fn watch(self: &Arc<Self>, task_id: String, container: String) {
        let agent = self.clone();
        self.spawn(async move {
            let Some(exit) = agent.executor.wait(&container).await else {
                return;
            };
            // A container stopped on purpose is reported as shut down by reconcile.
            if agent.stopping.lock().await.remove(&task_id) {
                return;
            }
            agent.report(vec![exit_update(&task_id, &exit)]);
        });
    }
}

/// The status of a task whose container has ended.
fn exit_update(task_id: &str, exit: &crate::executor::Exit) -> pd::StatusUpdate {
    let mut u = update(task_id, exit.state, exit.message.clone());
    u.exited = true;
    u.exit_code = exit.code;
    u
}
