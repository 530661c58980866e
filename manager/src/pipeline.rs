//! The leader's pipeline around the pure cores: read the store, let the orchestrators,
//! the allocator step and the scheduler propose, and write their proposals through Raft
//! with the versions that were read (a write that lost a race is simply proposed again
//! on the next pass). Every pass reconciles the whole store, so a new leader that missed
//! events catches up on its first pass.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shoal_api::types::{
    EndpointMode, Network, NetworkAttachment, Node, PortConfig, PublishMode, Service, ServiceMode,
    ServiceSpec, Task, TaskState, UpdateState, UpdateStatus, Vip,
};

use crate::allocator::{Addresses, INGRESS};
use crate::cluster::{ClusterError, ClusterStore};
use crate::orchestrator::{self, Proposal};
use crate::scheduler::{self, Constraint, Decision, NodeInfo, Resources, Scheduler, TaskRequest};
use crate::store::{Command, Versioned};

/// Object kinds in the store.
pub mod kinds {
    /// Services.
    pub const SERVICE: &str = "service";
    /// Tasks.
    pub const TASK: &str = "task";
    /// Nodes.
    pub const NODE: &str = "node";
    /// The cluster's record (its CA and join-token secrets): one object.
    pub const CLUSTER: &str = "cluster";
    /// Removed nodes (their certificates are refused).
    pub const REMOVED_NODE: &str = "removed_node";
    /// Networks.
    pub const NETWORK: &str = "network";
}

/// The id, under [`kinds::CLUSTER`], of the cluster's address pool
/// ([`crate::allocator::AddrPool`]; absent: the default).
pub const ADDR_POOL_ID: &str = "addr_pool";

fn load<T: serde::de::DeserializeOwned>(
    store: &ClusterStore,
    kind: &str,
) -> Result<Vec<(T, u64)>, ClusterError> {
    store
        .list(kind)?
        .into_iter()
        .map(|(_, v): (String, Versioned)| {
            serde_json::from_value(v.value)
                .map(|t| (t, v.version))
                .map_err(|e| ClusterError::Read(format!("a stored {kind} is malformed: {e}")))
        })
        .collect()
}

/// The most commands one Raft entry carries: an entry is replicated whole, and a few
/// hundred tasks' JSON is already hundreds of kilobytes.
const BATCH: usize = 100;

fn put_service(service: &Service, expected: u64) -> Command {
    Command::Put {
        kind: kinds::SERVICE.into(),
        id: service.id.clone(),
        value: serde_json::to_value(service).unwrap_or_default(),
        expected_version: Some(expected),
    }
}

fn put_node(node: &Node, expected: u64) -> Command {
    Command::Put {
        kind: kinds::NODE.into(),
        id: node.id.clone(),
        value: serde_json::to_value(node).unwrap_or_default(),
        expected_version: Some(expected),
    }
}

/// The networks a task of `spec` joins: the spec's, then the ingress network when it
/// publishes a port in ingress mode.
pub fn task_networks<'a>(
    spec: &'a ServiceSpec,
    ports: &[PortConfig],
    ingress: Option<&'a Network>,
) -> Vec<&'a str> {
    let mut out: Vec<&str> = spec.networks.iter().map(String::as_str).collect();
    if let Some(ing) = ingress
        && ports.iter().any(|p| p.mode == PublishMode::Ingress)
        && !out.contains(&ing.id.as_str())
    {
        out.push(&ing.id);
    }
    out
}

fn put_task(task: &Task, expected: u64) -> Command {
    Command::Put {
        kind: kinds::TASK.into(),
        id: task.id.clone(),
        value: serde_json::to_value(task).unwrap_or_default(),
        expected_version: Some(expected),
    }
}

/// What one pass wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    /// Tasks created.
    pub created: usize,
    /// Tasks asked to shut down.
    pub shut_down: usize,
    /// Tasks forgotten.
    pub deleted: usize,
    /// Tasks moved to PENDING.
    pub allocated: usize,
    /// Tasks placed on a node.
    pub assigned: usize,
    /// Tasks that no node could take this pass.
    pub unschedulable: usize,
    /// Services whose failed update went back to the previous spec.
    pub rolled_back: usize,
    /// Services whose update paused or completed.
    pub update_status: usize,
}

impl PassReport {
    /// Whether the pass changed anything.
    pub fn changed(&self) -> bool {
        self.created
            + self.shut_down
            + self.deleted
            + self.allocated
            + self.assigned
            + self.rolled_back
            + self.update_status
            > 0
    }
}

/// The pipeline of a leading manager.
pub struct Pipeline {
    store: Arc<ClusterStore>,
    node_id: u64,
    counter: AtomicU64,
}

impl Pipeline {
    /// A pipeline writing through `store`; `node_id` keeps task ids unique across managers.
    pub fn new(store: Arc<ClusterStore>, node_id: u64) -> Pipeline {
        Pipeline {
            store,
            node_id,
            counter: AtomicU64::new(0),
        }
    }

    /// A new task id: random, so that short prefixes tell tasks apart; the manager's id and
    /// a counter keep it unique even if the random source fails.
    fn next_id(&self, now_ms: i64) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 10];
        let random = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
            .is_ok();
        if random {
            let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
            format!("{hex}{:x}{n:x}", self.node_id)
        } else {
            format!("{n:08x}{now_ms:x}{:x}", self.node_id)
        }
    }

    /// One pass over the whole store at time `now_ms`.
    pub async fn reconcile(&self, now_ms: i64) -> Result<PassReport, ClusterError> {
        let mut report = PassReport::default();
        self.orchestrate(now_ms, &mut report).await?;
        self.allocate(&mut report).await?;
        self.schedule(now_ms, &mut report).await?;
        Ok(report)
    }

    async fn orchestrate(&self, now_ms: i64, report: &mut PassReport) -> Result<(), ClusterError> {
        let services: Vec<(Service, u64)> = load(&self.store, kinds::SERVICE)?;
        let tasks: Vec<(Task, u64)> = load(&self.store, kinds::TASK)?;
        let nodes: Vec<Node> = load::<Node>(&self.store, kinds::NODE)?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let versions: HashMap<&str, u64> = tasks.iter().map(|(t, v)| (t.id.as_str(), *v)).collect();
        let by_id: HashMap<&str, &Task> = tasks.iter().map(|(t, _)| (t.id.as_str(), t)).collect();
        let all: Vec<Task> = tasks.iter().map(|(t, _)| t.clone()).collect();
        let mut commands = Vec::new();
        let mut next = || self.next_id(now_ms);
        let known: std::collections::HashSet<&str> =
            services.iter().map(|(s, _)| s.id.as_str()).collect();
        // Tasks on drained nodes stop; their slots are filled elsewhere on the next pass.
        let drained: std::collections::HashSet<&str> = nodes
            .iter()
            .filter(|n| n.availability == shoal_api::types::NodeAvailability::Drain)
            .map(|n| n.id.as_str())
            .collect();
        let mut draining: std::collections::HashSet<String> = Default::default();
        // Tasks on nodes that are down (or gone) are lost: they stop counting, and run
        // again elsewhere; if the node comes back, its agent stops them.
        let down: HashMap<&str, &str> = nodes
            .iter()
            .filter(|n| !n.ready)
            .map(|n| (n.id.as_str(), n.status_message.as_str()))
            .collect();
        let known_nodes: std::collections::HashSet<&str> =
            nodes.iter().map(|n| n.id.as_str()).collect();
        for (t, v) in &tasks {
            let lost = !t.node_id.is_empty()
                && t.status.state >= TaskState::Assigned
                && !t.status.state.is_terminal()
                && (down.contains_key(t.node_id.as_str())
                    || !known_nodes.contains(t.node_id.as_str()));
            if lost {
                let mut t = t.clone();
                let why = down.get(t.node_id.as_str()).copied().unwrap_or("removed");
                t.desired_state = TaskState::Shutdown;
                t.status.state = TaskState::Orphaned;
                t.status.timestamp_ms = now_ms;
                t.status.message = format!(
                    "node {} is down ({why})",
                    t.node_id.chars().take(12).collect::<String>()
                );
                commands.push(put_task(&t, *v));
                draining.insert(t.id.clone());
                report.shut_down += 1;
            }
        }
        for (t, v) in &tasks {
            if draining.contains(&t.id) {
                continue;
            }
            if orchestrator::is_live(t) && drained.contains(t.node_id.as_str()) {
                let mut t = t.clone();
                t.desired_state = TaskState::Shutdown;
                commands.push(put_task(&t, *v));
                draining.insert(t.id.clone());
                report.shut_down += 1;
            }
        }
        for (service, _) in &services {
            let proposals = match service.spec.mode {
                ServiceMode::Global | ServiceMode::GlobalJob => {
                    orchestrator::global::reconcile(service, &all, &nodes, now_ms, &mut next)
                }
                ServiceMode::ReplicatedJob => {
                    orchestrator::replicated::reconcile_job(service, &all, now_ms, &mut next)
                }
                _ => orchestrator::replicated::reconcile(service, &all, now_ms, &mut next),
            };
            for p in proposals {
                match p {
                    Proposal::Create {
                        task,
                        not_before_ms,
                    } => {
                        if not_before_ms <= now_ms {
                            commands.push(put_task(&task, 0));
                            report.created += 1;
                        }
                    }
                    Proposal::Shutdown { task_id } => {
                        if draining.contains(&task_id) {
                            continue;
                        }
                        if let Some(t) = by_id.get(task_id.as_str()) {
                            let mut t = (*t).clone();
                            t.desired_state = TaskState::Shutdown;
                            commands.push(put_task(&t, versions[task_id.as_str()]));
                            report.shut_down += 1;
                        }
                    }
                    Proposal::Delete { task_id } => {
                        commands.push(Command::Delete {
                            kind: kinds::TASK.into(),
                            id: task_id.clone(),
                            expected_version: versions.get(task_id.as_str()).copied(),
                        });
                        report.deleted += 1;
                    }
                    Proposal::Rollback {
                        service_id,
                        message,
                    } => {
                        if let Some((s, v)) = services.iter().find(|(s, _)| s.id == service_id)
                            && let Some(previous) = s.previous_spec.clone()
                        {
                            // Back to the previous spec, rolled out with the rollback
                            // settings; its failure action never rolls back again.
                            let rolled = Service {
                                id: s.id.clone(),
                                spec: previous,
                                previous_spec: Some(s.spec.clone()),
                                update_status: Some(UpdateStatus {
                                    state: UpdateState::RollbackStarted,
                                    started_ms: now_ms,
                                    completed_ms: 0,
                                    message,
                                }),
                                vips: s.vips.clone(),
                                ports: s.ports.clone(),
                            };
                            commands.push(put_service(&rolled, *v));
                            report.rolled_back += 1;
                        }
                    }
                    Proposal::UpdateStatus { service_id, status } => {
                        if let Some((s, v)) = services.iter().find(|(s, _)| s.id == service_id) {
                            let mut s = s.clone();
                            s.update_status = Some(status);
                            commands.push(put_service(&s, *v));
                            report.update_status += 1;
                        }
                    }
                }
            }
        }
        // Tasks of removed services: stop the live ones, forget the stopped ones.
        // (Standalone containers' attachments have no service.)
        for (t, v) in &tasks {
            if known.contains(t.service_id.as_str()) || t.service_id.is_empty() {
                continue;
            }
            if orchestrator::is_live(t) {
                let mut t = t.clone();
                t.desired_state = TaskState::Shutdown;
                commands.push(put_task(&t, *v));
                report.shut_down += 1;
            } else if t.status.state.is_terminal() {
                commands.push(Command::Delete {
                    kind: kinds::TASK.into(),
                    id: t.id.clone(),
                    expected_version: Some(*v),
                });
                report.deleted += 1;
            }
        }
        self.write_batch(commands).await
    }

    /// The allocator step: services get a VIP on each of their networks, nodes an
    /// address on the ingress network, and NEW tasks their resources before they become
    /// PENDING: an address on each network they join, and a number for each port
    /// published in host mode without one (from the dynamic range, one no live task
    /// holds). What is taken is read from the stored objects on every pass. Tasks asked to
    /// stop before they reached a node stop here (no agent will ever report on them).
    async fn allocate(&self, report: &mut PassReport) -> Result<(), ClusterError> {
        let tasks: Vec<(Task, u64)> = load(&self.store, kinds::TASK)?;
        let services: Vec<(Service, u64)> = load(&self.store, kinds::SERVICE)?;
        let nodes: Vec<(Node, u64)> = load(&self.store, kinds::NODE)?;
        let networks: Vec<Network> = load::<Network>(&self.store, kinds::NETWORK)?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let ingress = networks.iter().find(|n| n.spec.ingress);
        let names: HashMap<&str, &str> = networks
            .iter()
            .map(|n| (n.id.as_str(), n.spec.name.as_str()))
            .collect();
        let mut addrs = Addresses::new(&networks);
        for (t, _) in &tasks {
            if !t.status.state.is_terminal() {
                for a in &t.networks {
                    addrs.reserve(&a.network_id, &a.addr);
                }
            }
        }
        for (s, _) in &services {
            for v in &s.vips {
                addrs.reserve(&v.network_id, &v.addr);
            }
        }
        let mut commands = Vec::new();
        // Nodes' ingress endpoints: a node keeps its address unless another took it first.
        if let Some(ing) = ingress {
            let mut lacking = Vec::new();
            for (n, v) in &nodes {
                if n.ingress_addr.is_empty() || !addrs.reserve(&ing.id, &n.ingress_addr) {
                    lacking.push((n, *v));
                }
            }
            for (n, v) in lacking {
                if let Ok(addr) = addrs.allocate(&ing.id, INGRESS) {
                    let mut n = n.clone();
                    n.ingress_addr = addr;
                    commands.push(put_node(&n, v));
                    report.allocated += 1;
                }
            }
        }
        let mut in_use: std::collections::HashSet<(shoal_api::types::PortProtocol, u16)> = tasks
            .iter()
            .filter(|(t, _)| orchestrator::is_live(t) && t.status.state > TaskState::New)
            .flat_map(|(t, _)| t.ports.iter().map(|p| (p.protocol, p.published)))
            .chain(services.iter().flat_map(|(s, _)| {
                s.ports
                    .iter()
                    .chain(
                        s.spec
                            .ports
                            .iter()
                            .filter(|p| p.mode == PublishMode::Ingress),
                    )
                    .filter(|p| p.published != 0)
                    .map(|p| (p.protocol, p.published))
            }))
            .collect();
        // Service VIPs, one per network the tasks join in vip mode, and the numbers of
        // ports published in ingress mode without one.
        let mut mesh_ports: HashMap<&str, Vec<PortConfig>> = HashMap::new();
        for (s, v) in &services {
            let ports = service_ports(s, &mut in_use);
            mesh_ports.insert(s.id.as_str(), ports.clone());
            let wanted: Vec<&str> = if s.spec.endpoint_mode == EndpointMode::Vip {
                task_networks(&s.spec, &s.spec.ports, ingress)
            } else {
                Vec::new()
            };
            let mut vips: Vec<Vip> = s
                .vips
                .iter()
                .filter(|vip| wanted.contains(&vip.network_id.as_str()))
                .cloned()
                .collect();
            for gone in s.vips.iter().filter(|vip| !vips.contains(vip)) {
                addrs.release(&gone.network_id, &gone.addr);
            }
            for net in &wanted {
                if vips.iter().any(|vip| vip.network_id == *net) || !addrs.knows(net) {
                    continue;
                }
                if let Ok(addr) = addrs.allocate(net, names.get(net).copied().unwrap_or(net)) {
                    vips.push(Vip {
                        network_id: net.to_string(),
                        addr,
                    });
                }
            }
            if vips != s.vips || ports != s.ports {
                let mut s = s.clone();
                s.vips = vips;
                s.ports = ports;
                commands.push(put_service(&s, *v));
                report.allocated += 1;
            }
        }
        for (mut t, v) in tasks {
            if t.status.state < TaskState::Assigned && t.desired_state > TaskState::Running {
                t.status.state = TaskState::Shutdown;
                t.status.message = "shut down before it was placed".into();
                commands.push(put_task(&t, v));
                report.shut_down += 1;
                continue;
            }
            if t.status.state != TaskState::New {
                continue;
            }
            // A port published in ingress mode has the service's number.
            if let Some(ports) = mesh_ports.get(t.service_id.as_str()) {
                for p in t
                    .ports
                    .iter_mut()
                    .filter(|p| p.mode == PublishMode::Ingress)
                {
                    if let Some(q) = ports
                        .iter()
                        .find(|q| q.target == p.target && q.protocol == p.protocol)
                    {
                        p.published = q.published;
                    }
                }
            }
            let result = allocate_ports(&t.ports, &mut in_use).and_then(|ports| {
                let mut attachments = Vec::new();
                for net in task_networks(&t.spec, &ports, ingress) {
                    let name = names.get(net).copied().unwrap_or(net);
                    match addrs.allocate(net, name) {
                        Ok(addr) => attachments.push(NetworkAttachment {
                            network_id: net.to_string(),
                            addr,
                        }),
                        Err(e) => {
                            for a in &attachments {
                                addrs.release(&a.network_id, &a.addr);
                            }
                            return Err(e);
                        }
                    }
                }
                Ok((ports, attachments))
            });
            match result {
                Ok((ports, attachments)) if t.service_id.is_empty() => {
                    // A standalone container's attachment: it runs already.
                    t.ports = ports;
                    t.networks = attachments;
                    t.status.state = TaskState::Running;
                }
                Ok((ports, attachments)) => {
                    t.ports = ports;
                    t.networks = attachments;
                    t.status.state = TaskState::Pending;
                    t.status.message = "pending".into();
                }
                Err(message) => {
                    if t.status.message == message {
                        continue;
                    }
                    t.status.message = message;
                }
            }
            commands.push(put_task(&t, v));
            report.allocated += 1;
        }
        self.write_batch(commands).await
    }

    async fn schedule(&self, now_ms: i64, report: &mut PassReport) -> Result<(), ClusterError> {
        let tasks: Vec<(Task, u64)> = load(&self.store, kinds::TASK)?;
        let nodes: Vec<Node> = load::<Node>(&self.store, kinds::NODE)?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let mut sched = Scheduler::new(nodes.iter().map(node_info).collect());
        for (t, _) in &tasks {
            if !t.node_id.is_empty()
                && orchestrator::is_live(t)
                && t.status.state >= TaskState::Assigned
            {
                sched.add_existing(&t.node_id, &t.service_id, reservations(t), &host_ports(t));
            }
            if t.status.state == TaskState::Failed && !t.node_id.is_empty() {
                sched.record_failure(&t.node_id, &t.service_id);
            }
        }
        let pending: Vec<&(Task, u64)> = tasks
            .iter()
            .filter(|(t, _)| {
                t.status.state == TaskState::Pending && t.desired_state <= TaskState::Running
            })
            .collect();
        // Group by service so tasks that place alike are scheduled together.
        let mut ordered: Vec<&(Task, u64)> = pending.clone();
        ordered.sort_by(|a, b| {
            (&a.0.service_id, a.0.slot, &a.0.id).cmp(&(&b.0.service_id, b.0.slot, &b.0.id))
        });
        let mut requests = Vec::new();
        let mut pinned = Vec::new();
        for (t, v) in ordered.iter().map(|x| (&x.0, x.1)) {
            if t.node_id.is_empty() {
                requests.push((request(t), t, v));
            } else {
                pinned.push((t, v)); // global tasks name their node already
            }
        }
        let decisions = sched.schedule(
            &requests
                .iter()
                .map(|(r, _, _)| r.clone())
                .collect::<Vec<_>>(),
        );
        let mut commands = Vec::new();
        for (decision, (_, t, v)) in decisions.iter().zip(&requests) {
            let mut t = (*t).clone();
            match decision {
                Decision::Assigned { node_id, .. } => {
                    t.node_id = node_id.clone();
                    t.status.state = TaskState::Assigned;
                    t.status.message = format!("assigned to {node_id}");
                    t.status.timestamp_ms = now_ms;
                    report.assigned += 1;
                }
                Decision::Unschedulable { reason, .. } => {
                    report.unschedulable += 1;
                    if t.status.message == *reason {
                        continue;
                    }
                    t.status.message = reason.clone();
                }
            }
            commands.push(put_task(&t, *v));
        }
        for (t, v) in pinned {
            let mut t = t.clone();
            t.status.state = TaskState::Assigned;
            t.status.message = format!("assigned to {}", t.node_id);
            t.status.timestamp_ms = now_ms;
            commands.push(put_task(&t, v));
            report.assigned += 1;
        }
        self.write_batch(commands).await
    }

    /// Writes commands one by one: a conflict only skips that write (the next pass sees
    /// the newer object and proposes again).
    async fn write_each(&self, commands: Vec<Command>) -> Result<(), ClusterError> {
        for c in commands {
            self.store.write(c).await?;
        }
        Ok(())
    }

    /// Writes commands as Raft entries of up to [`BATCH`] commands each; if one of an
    /// entry's commands lost a race, the others of that entry are written one by one.
    async fn write_batch(&self, commands: Vec<Command>) -> Result<(), ClusterError> {
        if commands.len() > BATCH {
            for chunk in commands.chunks(BATCH) {
                Box::pin(self.write_batch(chunk.to_vec())).await?;
            }
            return Ok(());
        }
        if commands.len() < 2 {
            return self.write_each(commands).await;
        }
        match self
            .store
            .write(Command::Batch {
                commands: commands.clone(),
            })
            .await?
        {
            crate::store::CommandResult::Conflict { .. } => self.write_each(commands).await,
            _ => Ok(()),
        }
    }

    /// Runs passes whenever the store changes, and at least every `tick` (restart delays),
    /// until `stop` resolves.
    pub async fn run(&self, tick: Duration, stop: impl std::future::Future<Output = ()>) {
        let mut events = self.store.subscribe();
        tokio::pin!(stop);
        loop {
            // The pass reads the whole store: what is queued now, it sees.
            crate::cluster::skip_changes(&mut events);
            let now_ms = now_ms();
            match self.reconcile(now_ms).await {
                Ok(r) if r.changed() => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!("reconcile pass failed: {e}"),
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = crate::cluster::next_changes(&mut events, Duration::from_millis(2)) => {}
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }
}

/// The current Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn node_info(n: &Node) -> NodeInfo {
    NodeInfo {
        id: n.id.clone(),
        hostname: n.hostname.clone(),
        manager: n.manager,
        ready: n.ready,
        availability: match n.availability {
            shoal_api::types::NodeAvailability::Active => scheduler::Availability::Active,
            shoal_api::types::NodeAvailability::Pause => scheduler::Availability::Pause,
            shoal_api::types::NodeAvailability::Drain => scheduler::Availability::Drain,
        },
        labels: n.labels.clone(),
        os: n.os.clone(),
        arch: n.arch.clone(),
        capacity: Resources {
            nano_cpus: n.resources.nano_cpus,
            memory_bytes: n.resources.memory_bytes,
        },
    }
}

fn reservations(t: &Task) -> Resources {
    Resources {
        nano_cpus: t.spec.reservations.nano_cpus,
        memory_bytes: t.spec.reservations.memory_bytes,
    }
}

fn host_ports(t: &Task) -> Vec<u16> {
    t.ports
        .iter()
        .filter(|p| p.mode == PublishMode::Host)
        .map(|p| p.published)
        .collect()
}

fn request(t: &Task) -> TaskRequest {
    TaskRequest {
        task_id: t.id.clone(),
        service_id: t.service_id.clone(),
        reservations: reservations(t),
        constraints: t
            .spec
            .constraints
            .iter()
            .filter_map(|c| Constraint::parse(c).ok())
            .collect(),
        spread_over: t.spec.spread_over.clone(),
        max_replicas_per_node: t.spec.max_replicas_per_node,
        host_ports: host_ports(t),
        platforms: Vec::new(),
    }
}

/// A service's ports published in ingress mode, each with a number: the spec's, the one
/// it was given before, or a free one of the dynamic range (marked taken in `in_use`).
fn service_ports(
    s: &Service,
    in_use: &mut std::collections::HashSet<(shoal_api::types::PortProtocol, u16)>,
) -> Vec<PortConfig> {
    let mut out = Vec::new();
    for p in s
        .spec
        .ports
        .iter()
        .filter(|p| p.mode == PublishMode::Ingress)
    {
        let mut p = *p;
        if p.published == 0 {
            let before = s
                .ports
                .iter()
                .find(|q| q.target == p.target && q.protocol == p.protocol && q.published != 0)
                .map(|q| q.published);
            p.published = match before.or_else(|| {
                DYNAMIC_PORTS
                    .clone()
                    .find(|n| !in_use.contains(&(p.protocol, *n)))
            }) {
                Some(n) => n,
                None => continue,
            };
            in_use.insert((p.protocol, p.published));
        }
        out.push(p);
    }
    out
}

/// Where published ports without a number come from (as Swarm's dynamic range).
pub const DYNAMIC_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// Gives each port published without a number one from the dynamic range that is not in
/// `in_use`, and marks the ports taken.
fn allocate_ports(
    ports: &[PortConfig],
    in_use: &mut std::collections::HashSet<(shoal_api::types::PortProtocol, u16)>,
) -> Result<Vec<PortConfig>, String> {
    let mut out = Vec::with_capacity(ports.len());
    for p in ports {
        let mut p = *p;
        // (An ingress port without a number waits for its service's.)
        if p.published == 0 && p.mode == PublishMode::Host {
            p.published = DYNAMIC_PORTS
                .clone()
                .find(|n| !in_use.contains(&(p.protocol, *n)))
                .ok_or_else(|| {
                    format!(
                        "no free port left in {}-{} for target port {}",
                        DYNAMIC_PORTS.start(),
                        DYNAMIC_PORTS.end(),
                        p.target
                    )
                })?;
        }
        in_use.insert((p.protocol, p.published));
        out.push(p);
    }
    Ok(out)
}

/// Counts tasks by (service, state) — for tests and `service ls`.
pub fn census(store: &ClusterStore) -> Result<BTreeMap<(String, TaskState), usize>, ClusterError> {
    let mut out = BTreeMap::new();
    for (t, _) in load::<Task>(store, kinds::TASK)? {
        *out.entry((t.service_id, t.status.state)).or_default() += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
