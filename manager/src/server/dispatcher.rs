//! The dispatcher, on the leader: agents' sessions (the node's tasks and network views,
//! then the set again whenever it changes), heartbeats (a node that stops is marked
//! down), batched task status, and standalone containers' network attachments.

use std::sync::Arc;
use std::time::Duration;

use shoal_api::cluster::raft_id;
use shoal_api::dispatcher as pd;
use shoal_api::dispatcher::dispatcher_server::Dispatcher;
use shoal_api::types::{
    Attachment, Network, Node, NodeAvailability, PublishMode, ResourceAmounts, Service, Task,
    TaskState,
};
use tonic::{Request, Response, Status};

use super::auth::same_node;
use super::{BoxStream, Manager, ManagerService, internal, networks, volumes};
use crate::ca::Role;
use crate::cluster::ClusterError;
use crate::store::{CommandResult, Snapshot, Versioned, Write};

impl Manager {
    /// Records a node's session: its description, and that it is ready. A manager also
    /// records its own node when it starts leading (`from_agent` false): created not
    /// ready, so that no task goes there before its agent reports in, and otherwise left
    /// as its agent last described it.
    pub(super) async fn register(
        &self,
        session: &pd::SessionRequest,
        from_agent: bool,
    ) -> Result<(), ClusterError> {
        // A concurrent write to the record (the other kind of registration, a node update)
        // makes this one read and try again.
        for _ in 0..10 {
            let existing = self.store.get::<Node>(&session.node_id)?;
            if existing.is_some() && !from_agent {
                return Ok(());
            }
            let (mut node, expected) = match &existing {
                Some(v) => (v.value.clone(), v.version),
                None => (
                    new_node(&session.node_id, session.node_id == self.node.id),
                    0,
                ),
            };
            let before = node.clone();
            node.hostname = session.hostname.clone();
            node.os = session.os.clone();
            node.arch = session.arch.clone();
            node.resources = ResourceAmounts {
                nano_cpus: session.nano_cpus,
                memory_bytes: session.memory_bytes,
            };
            if !session.data_addr.is_empty() {
                node.data_addr = session.data_addr.clone();
            }
            if from_agent {
                node.volume_drivers = session.volume_drivers.clone();
            }
            node.manager = node.id == self.node.id
                || self
                    .store
                    .member_addrs()
                    .iter()
                    .any(|(id, _)| *id == raft_id(&node.id));
            if from_agent {
                node.ready = true;
                node.status_message.clear();
                self.deadlines_mut().insert(
                    node.id.clone(),
                    tokio::time::Instant::now() + self.options.heartbeat_timeout(),
                );
            }
            if node == before && existing.is_some() {
                return Ok(());
            }
            let written = self.store.apply(Write::update(node, expected)).await?;
            if !matches!(written, CommandResult::Conflict { .. }) {
                return Ok(());
            }
        }
        Err(ClusterError::Raft(format!(
            "node {} changed ten times while it was being recorded",
            session.node_id
        )))
    }

    /// Marks down every ready node whose heartbeat is overdue.
    pub(super) async fn mark_silent_nodes_down(&self) {
        let now = tokio::time::Instant::now();
        let overdue: Vec<String> = self
            .deadlines_mut()
            .iter()
            .filter(|(_, due)| **due <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in overdue {
            self.deadlines_mut().remove(&id);
            let message = format!(
                "heartbeat failure: no heartbeat for {} ms",
                self.options.heartbeat_timeout().as_millis()
            );
            if let Err(e) = self.set_ready(&id, false, &message).await {
                tracing::warn!("marking node {id} down: {e}");
            }
        }
    }

    async fn set_ready(&self, id: &str, ready: bool, message: &str) -> Result<(), ClusterError> {
        let Some(Versioned {
            version,
            value: mut node,
        }) = self.store.get::<Node>(id)?
        else {
            return Ok(());
        };
        if node.ready == ready {
            return Ok(());
        }
        node.ready = ready;
        node.status_message = message.to_string();
        if !ready {
            tracing::warn!("node {} ({}) is down: {message}", node.hostname, node.id);
        }
        self.store.apply(Write::update(node, version)).await?;
        Ok(())
    }

    /// Records where other nodes reach node `id`.
    pub(super) async fn set_node_addr(&self, id: &str, addr: &str) -> Result<(), ClusterError> {
        self.edit_node(id, |n| n.addr = addr.to_string()).await?;
        Ok(())
    }

    /// A heartbeat from `node_id`: due again within the timeout.
    /// Records the volume drivers a node says it now has.
    pub(super) async fn record_volume_drivers(
        &self,
        node_id: &str,
        drivers: Vec<String>,
    ) -> Result<(), ClusterError> {
        for _ in 0..10 {
            let Some(Versioned {
                version,
                value: mut node,
            }) = self.store.get::<Node>(node_id)?
            else {
                return Ok(());
            };
            if node.volume_drivers == drivers {
                return Ok(());
            }
            node.volume_drivers = drivers.clone();
            let written = self.store.apply(Write::update(node, version)).await?;
            if !matches!(written, CommandResult::Conflict { .. }) {
                return Ok(());
            }
        }
        Err(ClusterError::Raft(format!(
            "node {node_id} changed ten times while its volume drivers were being recorded"
        )))
    }

    pub(super) async fn heartbeat(&self, node_id: &str) -> Result<bool, ClusterError> {
        if self.store.get::<Node>(node_id)?.is_none() {
            return Ok(false);
        }
        let was_silent = self
            .deadlines_mut()
            .insert(
                node_id.to_string(),
                tokio::time::Instant::now() + self.options.heartbeat_timeout(),
            )
            .is_none();
        if was_silent {
            self.set_ready(node_id, true, "").await?;
        }
        Ok(true)
    }
}

/// A node's first record: not ready until its agent reports in.
fn new_node(id: &str, manager: bool) -> Node {
    Node {
        id: id.to_string(),
        hostname: String::new(),
        manager,
        ready: false,
        status_message: String::new(),
        availability: NodeAvailability::Active,
        labels: Default::default(),
        os: String::new(),
        arch: String::new(),
        resources: ResourceAmounts::default(),
        addr: String::new(),
        desired_role: None,
        certs_since: 0,
        data_addr: String::new(),
        ingress_addr: String::new(),
        volume_drivers: Vec::new(),
    }
}

/// The write that applies one status update to the task as stored now (None: nothing to
/// change, or the task is gone).
fn status_write(m: &Manager, u: &pd::StatusUpdate) -> Result<Option<Write>, Status> {
    let Some(Versioned {
        version,
        value: mut t,
    }) = m.store.get::<Task>(&u.task_id).map_err(internal)?
    else {
        return Ok(None);
    };
    let state = u
        .task_state()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    if !t.status.state.can_move_to(state) {
        // States only move forward; a late report changes nothing, but a running task's
        // health check passing is news.
        if state != t.status.state || u.health.is_empty() || u.health == t.status.health {
            return Ok(None);
        }
        t.status.health = u.health.clone();
        return Ok(Some(Write::update(t, version)));
    }
    if !u.health.is_empty() {
        t.status.health = u.health.clone();
    }
    t.status.state = state;
    t.status.message = u.message.clone();
    t.status.timestamp_ms = shoal_api::clock::now_ms();
    t.status.exit_code = u.exited.then_some(u.exit_code);
    if !u.container_id.is_empty() {
        t.status.container_id = u.container_id.clone();
    }
    Ok(Some(Write::update(t, version)))
}

/// Node `node_id`'s tasks in `snap`: those past NEW.
fn node_tasks<'a>(snap: &'a Snapshot, node_id: &str) -> Vec<Versioned<&'a Task>> {
    snap.list::<Task>()
        .filter(|v| v.value.node_id == node_id && v.value.status.state != TaskState::New)
        .collect()
}

/// The encoded views of the networks node `node_id`'s tasks (and its standalone
/// containers) join (see [`crate::netview`]).
fn network_views(snap: &Snapshot, node_id: &str) -> Result<String, ClusterError> {
    // Services are few, tasks many: without a service on a network, and without an
    // attachment, no task is on one.
    let networked = snap.list::<Service>().any(|v| {
        let s = &v.value.spec;
        !s.networks.is_empty() || s.ports.iter().any(|p| p.mode == PublishMode::Ingress)
    }) || snap.count::<Attachment>() > 0;
    if !networked || snap.count::<Network>() == 0 {
        return Ok(String::new());
    }
    let views = crate::netview::node_views(
        node_id,
        &snap.values::<Network>(),
        &snap.values::<Service>(),
        &snap.values::<Task>(),
        &snap.values::<Node>(),
        &snap.values::<Attachment>(),
    );
    pd::AssignmentSet::encode_networks(&views).map_err(|e| ClusterError::Read(e.to_string()))
}

#[tonic::async_trait]
impl Dispatcher for ManagerService {
    type AssignmentsStream = BoxStream<pd::AssignmentSet>;

    async fn assignments(
        &self,
        r: Request<pd::SessionRequest>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        let me = self.caller(&r, &[Role::Manager, Role::Worker], "a session")?;
        let m = self.leading().await?;
        let peer = r.remote_addr().map(|a| a.ip().to_string());
        let mut session = r.into_inner();
        same_node(&me, &session.node_id)?;
        // The node's underlay address: what it says, else where its session comes from,
        // else (this manager's own agent, over the local socket) this manager's address.
        if session.data_addr.is_empty() {
            session.data_addr = peer.unwrap_or_else(|| m.own_ip());
        }
        if session.node_id.is_empty() {
            return Err(Status::invalid_argument("a session needs the node's id"));
        }
        m.register(&session, true).await.map_err(internal)?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(stream_assignments(m, session.node_id, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn heartbeat(
        &self,
        r: Request<pd::HeartbeatRequest>,
    ) -> Result<Response<pd::HeartbeatReply>, Status> {
        let me = self.caller_checked(&r, &[Role::Manager, Role::Worker], "a heartbeat", false)?;
        let m = self.leading().await?;
        let pd::HeartbeatRequest {
            node_id,
            volume_drivers,
        } = r.into_inner();
        same_node(&me, &node_id)?;
        // A demoted manager whose certificate still says manager: that certificate stops
        // counting (the node renews it as a worker on hearing its role).
        if let Some(id) = &me
            && id.role == Role::Manager
            && m.wanted_role(&node_id) == Role::Worker
            && m.check_revoked(id, true).is_ok()
        {
            m.revoke_manager_certificate(&node_id)
                .await
                .map_err(internal)?;
        }
        if !m.heartbeat(&node_id).await.map_err(internal)? {
            return Err(Status::not_found(format!(
                "node {node_id} is not part of this cluster: open a session first (or join again)"
            )));
        }
        if !volume_drivers.is_empty() {
            m.record_volume_drivers(&node_id, volume_drivers)
                .await
                .map_err(internal)?;
        }
        Ok(Response::new(pd::HeartbeatReply {
            period_ms: m.options.heartbeat_period.as_millis() as u64,
            role: m.wanted_role(&node_id).as_str().into(),
        }))
    }

    async fn attach_network(
        &self,
        r: Request<pd::AttachRequest>,
    ) -> Result<Response<pd::AttachReply>, Status> {
        let me = self.caller(&r, &[Role::Manager, Role::Worker], "a network attachment")?;
        let m = self.leading().await?;
        let req = r.into_inner();
        same_node(&me, &req.node_id)?;
        let spec = networks::attach_container(
            &m,
            &req.node_id,
            &req.network,
            &req.container_id,
            &req.container_name,
        )
        .await?;
        pd::AttachReply::new(&spec)
            .map(Response::new)
            .map_err(|e| Status::internal(e.to_string()))
    }

    async fn detach_network(
        &self,
        r: Request<pd::DetachRequest>,
    ) -> Result<Response<pd::DetachReply>, Status> {
        let me = self.caller(&r, &[Role::Manager, Role::Worker], "a network attachment")?;
        let m = self.leading().await?;
        let req = r.into_inner();
        same_node(&me, &req.node_id)?;
        networks::detach_container(&m, &req.node_id, &req.container_id).await?;
        Ok(Response::new(pd::DetachReply {}))
    }

    async fn record_volume(
        &self,
        r: Request<pd::RecordVolumeRequest>,
    ) -> Result<Response<pd::RecordVolumeReply>, Status> {
        let me = self.caller(&r, &[Role::Manager, Role::Worker], "a volume record")?;
        let m = self.leading().await?;
        let req = r.into_inner();
        same_node(&me, &req.node_id)?;
        volumes::record(&m, &req).await?;
        Ok(Response::new(pd::RecordVolumeReply {}))
    }

    async fn release_volume(
        &self,
        r: Request<pd::ReleaseVolumeRequest>,
    ) -> Result<Response<pd::ReleaseVolumeReply>, Status> {
        let me = self.caller(&r, &[Role::Manager, Role::Worker], "a volume release")?;
        let m = self.leading().await?;
        let req = r.into_inner();
        same_node(&me, &req.node_id)?;
        volumes::release(&m, &req.node_id, &req.name).await?;
        Ok(Response::new(pd::ReleaseVolumeReply {}))
    }

    async fn update_status(
        &self,
        r: Request<pd::StatusBatch>,
    ) -> Result<Response<pd::StatusReply>, Status> {
        let me = self.caller(&r, &[Role::Manager, Role::Worker], "task status")?;
        let m = self.leading().await?;
        let batch = r.into_inner();
        same_node(&me, &batch.node_id)?;
        let updates = batch.updates;
        let mut writes = Vec::new();
        for u in &updates {
            if let Some(w) = status_write(&m, u)? {
                writes.push(w);
            }
        }
        // One Raft entry for the batch. If a task moved meanwhile (a manager wrote its
        // desired state), each update is read and applied again on its own.
        let conflict = !writes.is_empty()
            && matches!(
                m.store.apply_all(&writes).await.map_err(internal)?,
                CommandResult::Conflict { .. }
            );
        if conflict {
            for u in &updates {
                for _ in 0..5 {
                    let Some(w) = status_write(&m, u)? else {
                        break;
                    };
                    let r = m.store.apply(w).await.map_err(internal)?;
                    if !matches!(r, CommandResult::Conflict { .. }) {
                        break;
                    }
                }
            }
        }
        Ok(Response::new(pd::StatusReply {}))
    }
}

/// Sends node `node_id` its assignment set, then the set again whenever it changed,
/// until the session closes or this manager stops leading. The node is not marked down
/// when it ends: its heartbeats tell (a session can end for a reconnect to another
/// manager).
async fn stream_assignments(
    m: Arc<Manager>,
    node_id: String,
    tx: tokio::sync::mpsc::Sender<Result<pd::AssignmentSet, Status>>,
) {
    let mut events = m.store.subscribe();
    let mut leads = m.store.leadership();
    // What was sent last: the tasks' ids and versions, and the views.
    let mut last: Option<(Vec<(String, u64)>, String)> = None;
    loop {
        crate::cluster::skip_changes(&mut events);
        let sent = match m.store.snapshot() {
            Ok(snap) => send_if_changed(&snap, &node_id, &mut last, &tx).await,
            Err(e) => {
                tracing::warn!(node = %node_id, "assignment set: {e}");
                true
            }
        };
        if !sent {
            return;
        }
        if !*leads.borrow_and_update() {
            let _ = tx
                .send(Err(Status::unavailable(
                    "this manager stopped leading: open the session again with the leader",
                )))
                .await;
            return;
        }
        tokio::select! {
            open = crate::cluster::next_changes(&mut events, Duration::from_millis(2)) => if !open { return },
            _ = leads.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tx.closed() => return,
        }
    }
}

/// Sends node `node_id`'s set if it differs from `last`; false once the session closed.
async fn send_if_changed(
    snap: &Snapshot,
    node_id: &str,
    last: &mut Option<(Vec<(String, u64)>, String)>,
    tx: &tokio::sync::mpsc::Sender<Result<pd::AssignmentSet, Status>>,
) -> bool {
    let tasks = node_tasks(snap, node_id);
    let key: Vec<(String, u64)> = tasks
        .iter()
        .map(|v| (v.value.id.clone(), v.version))
        .collect();
    let views = match network_views(snap, node_id) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(node = %node_id, "network views: {e}");
            return true;
        }
    };
    if last.as_ref() == Some(&(key.clone(), views.clone())) {
        return true;
    }
    let tasks = match tasks
        .iter()
        .map(|v| pd::Assignment::new(v.value, v.version))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(node = %node_id, "assignment set: {e}");
            return true;
        }
    };
    *last = Some((key, views.clone()));
    tx.send(Ok(pd::AssignmentSet {
        tasks,
        networks_json: views,
    }))
    .await
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Timings;
    use crate::server::{ManagerOptions, SelfNode, Start};

    fn ready(m: &Manager, id: &str) -> (bool, String) {
        let n = m.store.get::<Node>(id).unwrap().unwrap().value;
        (n.ready, n.status_message)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_that_stops_heartbeating_is_marked_down_and_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let options = ManagerOptions {
            heartbeat_period: Duration::from_millis(50),
            heartbeat_misses: 3,
            raft: Timings::default(),
        };
        let me = SelfNode {
            id: "m1".into(),
            hostname: "m1".into(),
            resources: ResourceAmounts::default(),
        };
        let m = Manager::start(dir.path().to_path_buf(), me, options, Start::Init("local"))
            .await
            .unwrap();
        let session = pd::SessionRequest {
            node_id: "w1".into(),
            hostname: "worker-1".into(),
            os: "linux".into(),
            arch: "x86_64".into(),
            nano_cpus: 1_000_000_000,
            memory_bytes: 1 << 30,
            data_addr: String::new(),
            volume_drivers: Vec::new(),
        };
        m.register(&session, true).await.unwrap();
        for _ in 0..6 {
            assert!(m.heartbeat("w1").await.unwrap());
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        assert_eq!(
            ready(&m, "w1"),
            (true, String::new()),
            "heartbeating: ready"
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while ready(&m, "w1").0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (is_ready, why) = ready(&m, "w1");
        assert!(!is_ready, "silent: down");
        assert!(why.contains("heartbeat failure"), "{why}");
        assert!(m.heartbeat("w1").await.unwrap());
        assert_eq!(ready(&m, "w1"), (true, String::new()), "back");
        assert!(
            !m.heartbeat("stranger").await.unwrap(),
            "unknown nodes are told"
        );
        m.stop().await;
    }
}
