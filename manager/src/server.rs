//! The manager's gRPC services: the control API (init, services, tasks, nodes) and the
//! dispatcher (agent sessions and task status). Until `shoal init` the node is no manager
//! and the control calls but `Init` and `Info` say so.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

mod join;
mod networks;
mod nodes;
mod peers;

pub use peers::{LEADER_KEY, client_tls};

use futures::Stream;
use shoal_api::control as pc;
use shoal_api::control::control_server::Control;
use shoal_api::dispatcher as pd;
use shoal_api::dispatcher::dispatcher_server::Dispatcher;
use shoal_api::types::{
    Network, Node, NodeAvailability, PublishMode, ResourceAmounts, Service, ServiceMode,
    ServiceSpec, Task, TaskState, UpdateFailureAction, UpdateState, UpdateStatus,
};
use tokio::sync::RwLock;
use tonic::{Request, Response, Status};

use crate::ca::{Ca, JoinToken, Role};
use crate::cluster::grpcnet::GrpcNet;
use crate::cluster::{ClusterError, ClusterStore, Timings};
use crate::pipeline::{Pipeline, kinds, now_ms};
use crate::port::{NodeTls, PortConfig};
use crate::store::{Command, CommandResult, Versioned};
use shoal_api::control::control_server::ControlServer;
use shoal_api::dispatcher::dispatcher_server::DispatcherServer;

/// This node, as it describes itself.
#[derive(Debug, Clone)]
pub struct SelfNode {
    /// Stable id (kept under the data root).
    pub id: String,
    /// Hostname.
    pub hostname: String,
    /// What it offers tasks.
    pub resources: ResourceAmounts,
}

/// How a manager watches its nodes.
#[derive(Debug, Clone, Copy)]
pub struct ManagerOptions {
    /// How often agents heartbeat.
    pub heartbeat_period: Duration,
    /// Heartbeats a node may miss before it is marked down (and its tasks run elsewhere).
    pub heartbeat_misses: u32,
    /// Raft's timings between managers.
    pub raft: Timings,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        ManagerOptions {
            heartbeat_period: Duration::from_millis(1000),
            heartbeat_misses: 3,
            raft: Timings::default(),
        }
    }
}

impl ManagerOptions {
    /// How long a node may stay silent.
    pub fn heartbeat_timeout(&self) -> Duration {
        self.heartbeat_period * self.heartbeat_misses.max(1)
    }
}

/// A running manager.
pub struct Manager {
    store: Arc<ClusterStore>,
    /// The Raft links to other managers (their TLS set once this node has a certificate).
    net: GrpcNet,
    node: SelfNode,
    options: ManagerOptions,
    stop: tokio::sync::watch::Sender<bool>,
    /// When each node's next heartbeat is due at the latest (kept in memory only, as
    /// writing every heartbeat through Raft would cost more than it tells).
    deadlines: std::sync::Mutex<HashMap<String, tokio::time::Instant>>,
}

impl Manager {
    /// Opens the manager state under `dir`, leads a one-manager cluster (or takes part in
    /// the election of the cluster it belongs to), and runs the leader's work whenever it
    /// leads.
    pub async fn start(
        dir: PathBuf,
        node: SelfNode,
        options: ManagerOptions,
        how: Start<'_>,
    ) -> Result<Arc<Manager>, ClusterError> {
        let net = GrpcNet::new();
        let id = raft_id(&node.id);
        let store = Arc::new(ClusterStore::open_with(&dir, id, &options.raft, net.clone()).await?);
        match how {
            Start::Init(addr) if !dir.join(JOINED_MARK).exists() => store.bootstrap(addr).await?,
            _ => {}
        }
        Ok(Manager::run_on(store, net, node, options))
    }

    /// Before a read: brings this manager's state up to every write acknowledged before
    /// the read began (the leader's read index, then waiting to apply it), so that a
    /// follower, or a manager just restarted, answers what a write through any manager
    /// has already said. Without a quorum (or a leader) the read answers from the state
    /// this manager has at once: reads still answer. A manager that cannot catch up with
    /// a leader that answers says so rather than answer from old state.
    pub async fn fresh(&self) -> Result<(), Status> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        let index = loop {
            let asked = if self.store.is_leader() {
                self.store
                    .read_index()
                    .await
                    .map_err(|e| (!matches!(e, ClusterError::NoQuorum { .. }), e.to_string()))
            } else if let Some((_, addr)) = self.store.leader() {
                self.net.read_index(&addr).await
            } else {
                Err((false, "no leader known".to_string()))
            };
            match asked {
                Ok(index) => break index,
                Err((again, e)) if !again || tokio::time::Instant::now() >= deadline => {
                    tracing::debug!("a read answers from this manager's state as it is: {e}");
                    return Ok(());
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let wait = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(Duration::from_secs(2));
        self.store.wait_applied(index, wait).await.map_err(|_| {
            Status::unavailable(format!(
                "this manager has not caught up with the leader's log (entry {index}) yet: \
                 try again in a moment, or ask another manager"
            ))
        })
    }

    /// A manager over an open store: while it leads, it runs the leader pipeline and
    /// watches the nodes' heartbeats; when it stops leading, both stop.
    pub fn run(store: Arc<ClusterStore>, node: SelfNode, options: ManagerOptions) -> Arc<Manager> {
        Manager::run_on(store, GrpcNet::new(), node, options)
    }

    fn run_on(
        store: Arc<ClusterStore>,
        net: GrpcNet,
        node: SelfNode,
        options: ManagerOptions,
    ) -> Arc<Manager> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let m = Arc::new(Manager {
            store,
            net,
            node,
            options,
            stop,
            deadlines: Default::default(),
        });
        let leader = m.clone();
        tokio::spawn(async move { leader.follow_leadership(stopped).await });
        m
    }

    /// Runs the leader's work in each term this manager leads.
    async fn follow_leadership(self: Arc<Self>, mut stopped: tokio::sync::watch::Receiver<bool>) {
        let mut leads = self.store.leadership();
        loop {
            if *leads.borrow_and_update() {
                let (end, ended) = tokio::sync::watch::channel(false);
                let term = self.clone();
                let work = tokio::spawn(async move { term.lead(ended).await });
                let quit = tokio::select! {
                    _ = stopped.wait_for(|s| *s) => true,
                    _ = leads.wait_for(|l| !*l) => false,
                };
                if quit {
                    let _ = end.send(true);
                    let _ = work.await;
                    return;
                }
                let _ = end.send(true);
                let _ = work.await;
                tracing::info!("this manager no longer leads");
            }
            tokio::select! {
                _ = stopped.wait_for(|s| *s) => return,
                changed = leads.changed() => if changed.is_err() { return },
            }
        }
    }

    /// One term as the leader: the pipeline and the heartbeat watch, until `ended`.
    async fn lead(self: Arc<Self>, ended: tokio::sync::watch::Receiver<bool>) {
        tracing::info!("this manager leads the cluster");
        let me = pd::SessionRequest {
            node_id: self.node.id.clone(),
            hostname: self.node.hostname.clone(),
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            nano_cpus: self.node.resources.nano_cpus,
            memory_bytes: self.node.resources.memory_bytes,
            data_addr: String::new(),
        };
        if let Err(e) = self.register(&me, false).await {
            tracing::warn!("recording this manager's node: {e}");
        }
        // Every known node gets a full timeout from now to show up again (a new leader
        // does not know when they last spoke).
        let grace = tokio::time::Instant::now() + self.options.heartbeat_timeout();
        match self.store.list(kinds::NODE) {
            Ok(nodes) => {
                let mut deadlines = self.deadlines_mut();
                for (id, _) in nodes {
                    deadlines.entry(id).or_insert(grace);
                }
            }
            Err(e) => tracing::warn!("reading the nodes: {e}"),
        }
        let pipeline = Pipeline::new(self.store.clone(), self.store.id());
        let mut end1 = ended.clone();
        let mut end2 = ended;
        let run = pipeline.run(Duration::from_millis(500), async move {
            let _ = end1.wait_for(|s| *s).await;
        });
        let watch = async {
            let mut tick = tokio::time::interval(self.options.heartbeat_period / 4);
            loop {
                tokio::select! {
                    _ = async { let _ = end2.wait_for(|s| *s).await; } => return,
                    _ = tick.tick() => self.mark_silent_nodes_down().await,
                }
            }
        };
        tokio::join!(run, watch);
        self.deadlines_mut().clear();
    }

    /// Stops the pipeline and the Raft node.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        self.store.shutdown().await;
    }

    fn deadlines_mut(&self) -> std::sync::MutexGuard<'_, HashMap<String, tokio::time::Instant>> {
        self.deadlines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a node's session: its description, and that it is ready. A manager also
    /// records its own node when it starts leading (`from_agent` false): created not
    /// ready, so that no task goes there before its agent reports in, and otherwise left
    /// as its agent last described it.
    async fn register(
        &self,
        session: &pd::SessionRequest,
        from_agent: bool,
    ) -> Result<(), ClusterError> {
        // A concurrent write to the record (the other kind of registration, a node update)
        // makes this one read and try again.
        for _ in 0..10 {
            let existing = self.store.get(kinds::NODE, &session.node_id)?;
            if existing.is_some() && !from_agent {
                return Ok(());
            }
            let (mut node, expected) = match &existing {
                Some(v) => (
                    serde_json::from_value::<Node>(v.value.clone())
                        .map_err(|e| ClusterError::Read(e.to_string()))?,
                    v.version,
                ),
                None => (
                    Node {
                        id: session.node_id.clone(),
                        hostname: String::new(),
                        manager: session.node_id == self.node.id,
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
                    },
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
            let written = self
                .store
                .write(Command::Put {
                    kind: kinds::NODE.into(),
                    id: node.id.clone(),
                    value: serde_json::to_value(&node).unwrap_or_default(),
                    expected_version: Some(expected),
                })
                .await?;
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
    async fn mark_silent_nodes_down(&self) {
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
        let Some(v) = self.store.get(kinds::NODE, id)? else {
            return Ok(());
        };
        let mut node: Node =
            serde_json::from_value(v.value).map_err(|e| ClusterError::Read(e.to_string()))?;
        if node.ready == ready {
            return Ok(());
        }
        node.ready = ready;
        node.status_message = message.to_string();
        if !ready {
            tracing::warn!("node {} ({}) is down: {message}", node.hostname, node.id);
        }
        self.store
            .write(Command::Put {
                kind: kinds::NODE.into(),
                id: node.id.clone(),
                value: serde_json::to_value(&node).unwrap_or_default(),
                expected_version: Some(v.version),
            })
            .await?;
        Ok(())
    }

    /// The cluster's CA and token secrets, made on first use.
    pub async fn cluster_record(&self) -> Result<ClusterRecord, ClusterError> {
        for _ in 0..5 {
            if let Some(v) = self.store.get(kinds::CLUSTER, CLUSTER_ID)? {
                return serde_json::from_value(v.value)
                    .map_err(|e| ClusterError::Read(e.to_string()));
            }
            let ca = Ca::generate().map_err(ca_err)?;
            let fp = ca.fingerprint().map_err(ca_err)?;
            let record = ClusterRecord {
                worker_secret: JoinToken::generate(&fp).map_err(ca_err)?.secret,
                manager_secret: JoinToken::generate(&fp).map_err(ca_err)?.secret,
                ca,
            };
            self.store
                .write(Command::Put {
                    kind: kinds::CLUSTER.into(),
                    id: CLUSTER_ID.into(),
                    value: serde_json::to_value(&record).unwrap_or_default(),
                    expected_version: Some(0),
                })
                .await?;
        }
        Err(ClusterError::Raft(
            "the cluster record keeps changing".into(),
        ))
    }

    /// The IP of this manager's cluster address.
    fn own_ip(&self) -> String {
        let me = raft_id(&self.node.id);
        self.store
            .member_addrs()
            .into_iter()
            .find(|(id, _)| *id == me)
            .and_then(|(_, a)| a.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.ip().to_string())
            .unwrap_or_default()
    }

    /// Records where other nodes reach node `id`.
    async fn set_node_addr(&self, id: &str, addr: &str) -> Result<(), ClusterError> {
        self.edit_node(id, |n| n.addr = addr.to_string()).await?;
        Ok(())
    }

    /// Whether the node is known and ready.
    fn node_ready(&self, id: &str) -> bool {
        matches!(self.store.get(kinds::NODE, id), Ok(Some(v)) if v.value["ready"] == true)
    }

    /// A heartbeat from `node_id`: due again within the timeout.
    async fn heartbeat(&self, node_id: &str) -> Result<bool, ClusterError> {
        let known = self.store.get(kinds::NODE, node_id)?.is_some();
        if !known {
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

fn port_err(e: crate::port::PortError) -> ClusterError {
    ClusterError::Raft(e.to_string())
}

fn ca_err(e: crate::ca::CaError) -> ClusterError {
    ClusterError::Raft(e.to_string())
}

/// A node speaks for itself only.
fn same_node(caller: &Option<crate::ca::Identity>, node_id: &str) -> Result<(), Status> {
    match caller {
        Some(id) if id.node_id != node_id => Err(Status::permission_denied(format!(
            "node {} cannot speak for node {node_id}",
            id.node_id
        ))),
        _ => Ok(()),
    }
}

fn internal(e: ClusterError) -> Status {
    if let ClusterError::NotLeader {
        leader: Some(id),
        addr,
    } = &e
    {
        return peers::not_leader(Some((*id, addr.clone().unwrap_or_default())));
    }
    if let ClusterError::NoQuorum { .. } = e {
        return Status::failed_precondition(e.to_string());
    }
    Status::unavailable(e.to_string())
}

fn object(id: &str, v: &Versioned) -> pc::Object {
    pc::Object {
        id: id.to_string(),
        version: v.version,
        json: v.value.to_string(),
    }
}

/// The control and dispatcher services of one node.
#[derive(Clone)]
pub struct ManagerService {
    dir: PathBuf,
    node: SelfNode,
    options: ManagerOptions,
    manager: Arc<RwLock<Option<Arc<Manager>>>>,
    /// Runs and stops this node's agent.
    agent: AgentControl,
    /// Held while the node changes role or leaves: one change at a time.
    transition: Arc<tokio::sync::Mutex<()>>,
    /// Callers of this instance come over the cluster port and must show a certificate
    /// (the local socket's callers are root on this host).
    remote: bool,
    /// The daemon's `--listen-addr` and `--advertise-addr`, for an `init` without them.
    port_defaults: PortDefaults,
    /// The cluster port, once open: its settings, and what stops it.
    port: Arc<std::sync::Mutex<Option<OpenPort>>>,
}

/// What the daemon is told to do with the node's agent.
#[derive(Debug, Clone)]
pub enum AgentOrder {
    /// Run against these managers (a running agent is replaced: new role, new
    /// certificate).
    Run(AgentTarget),
    /// Stop, and stop and remove the containers of its tasks (the node leaves).
    Stop,
}

/// Carries out [`AgentOrder`]s; the future ends when the order is done.
pub type AgentControl =
    Arc<dyn Fn(AgentOrder) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// Where this node's agent finds the managers.
#[derive(Debug, Clone, Default)]
pub struct AgentTarget {
    /// This node is a manager: its agent talks to it over the local socket first.
    pub local: bool,
    /// The managers' cluster addresses.
    pub managers: Vec<String>,
    /// The node's certificate, for the cluster port.
    pub tls: Option<NodeTls>,
    /// Where the managers' addresses are kept up to date (read again at each dial).
    pub managers_file: Option<PathBuf>,
}

/// How a manager starts.
#[derive(Debug, Clone, Copy)]
pub enum Start<'a> {
    /// As the first manager of a new cluster (unless it belongs to one), advertised at
    /// this address.
    Init(&'a str),
    /// As a manager that joined (or is joining) an existing cluster: it waits for the
    /// leader to add it.
    Joined,
}

/// Marks a manager directory whose node joined a cluster (it never bootstraps its own).
const JOINED_MARK: &str = "joined";

/// A manager's Raft id: from its node id, so that it is the same on every manager and
/// across restarts without being handed out.
pub fn raft_id(node_id: &str) -> u64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(node_id.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    (u64::from_be_bytes(b) >> 1).max(1)
}

/// An open cluster port.
struct OpenPort {
    /// Where it listens and what it advertises.
    config: PortConfig,
    /// Stops it.
    stop: tokio::sync::watch::Sender<bool>,
    /// The certificate it presents.
    certs: crate::port::PortCerts,
}

/// Where the cluster port listens unless `init` says otherwise.
#[derive(Debug, Clone, Copy)]
pub struct PortDefaults {
    /// `--listen-addr`.
    pub listen: std::net::SocketAddr,
    /// `--advertise-addr`, if given.
    pub advertise: Option<std::net::SocketAddr>,
}

impl Default for PortDefaults {
    fn default() -> Self {
        PortDefaults {
            listen: std::net::SocketAddr::from(([0, 0, 0, 0], crate::port::DEFAULT_PORT)),
            advertise: None,
        }
    }
}

/// The cluster-wide secrets, replicated with the rest of the state: the CA (so that any
/// manager can issue certificates) and the join tokens' secrets.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ClusterRecord {
    /// The cluster CA.
    pub ca: Ca,
    /// The secret of worker join tokens.
    pub worker_secret: String,
    /// The secret of manager join tokens.
    pub manager_secret: String,
}

const CLUSTER_ID: &str = "cluster";

/// Who may use the control API over the cluster port: managers (forwarding) and the
/// holders of client certificates (`shoal client-cert`).
const CONTROL_CALLERS: &[Role] = &[Role::Manager, Role::Client];

impl ManagerService {
    /// The services for a node whose manager state lives under `dir`. If the node is a
    /// manager already (the state exists), it starts now. `agent` runs and stops the
    /// node's agent (the daemon's side).
    pub async fn new(
        dir: PathBuf,
        node: SelfNode,
        options: ManagerOptions,
        port_defaults: PortDefaults,
        agent: AgentControl,
    ) -> Result<ManagerService, ClusterError> {
        let svc = ManagerService {
            dir,
            node,
            options,
            manager: Arc::new(RwLock::new(None)),
            agent,
            transition: Default::default(),
            remote: false,
            port_defaults,
            port: Default::default(),
        };
        if svc.dir.join("raft-log.redb").exists() && !svc.manager_at_start().await {
            if svc.tls_dir().join("node.crt").exists() {
                (svc.agent)(AgentOrder::Run(svc.agent_target(false)?)).await;
            }
        } else if svc.dir.join("raft-log.redb").exists() {
            let m = Manager::start(
                svc.dir.clone(),
                svc.node.clone(),
                svc.options,
                Start::Init("local"),
            )
            .await?;
            *svc.manager.write().await = Some(m);
            if let Some(config) = crate::port::load_config(&svc.dir).map_err(port_err)? {
                svc.open_port(config.listen, Some(config.advertise)).await?;
            }
            (svc.agent)(AgentOrder::Run(svc.agent_target(true)?)).await;
        } else if svc.tls_dir().join("node.crt").exists() {
            // A worker that joined: its agent dials the managers again.
            (svc.agent)(AgentOrder::Run(svc.agent_target(false)?)).await;
        }
        Ok(svc)
    }

    fn agent_target(&self, local: bool) -> Result<AgentTarget, ClusterError> {
        Ok(AgentTarget {
            local,
            managers: join::load_managers(&self.tls_dir()),
            tls: NodeTls::load(&self.tls_dir()).map_err(port_err)?,
            managers_file: Some(join::managers_path(&self.tls_dir())),
        })
    }

    /// (Re)starts the agent with the certificate and managers on disk now.
    async fn run_agent(&self, local: bool) -> Result<(), Status> {
        let target = self.agent_target(local).map_err(internal)?;
        (self.agent)(AgentOrder::Run(target)).await;
        Ok(())
    }

    /// A client of the leader's control API when this manager does not lead (writes go
    /// there); None when it leads. During an election it waits (up to 5 s) for the new
    /// leader rather than failing at once.
    async fn forward(
        &self,
        m: &Manager,
    ) -> Result<
        Option<shoal_api::control::control_client::ControlClient<tonic::transport::Channel>>,
        Status,
    > {
        let tls = NodeTls::load(&self.tls_dir()).map_err(|e| Status::internal(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut last = None;
        loop {
            if m.store.is_leader() {
                return Ok(None);
            }
            let leader = m.store.leader();
            if let (Some((_, addr)), Some(tls)) = (&leader, &tls) {
                let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
                    .map_err(|e| Status::internal(e.to_string()))?
                    .tls_config(client_tls(tls))
                    .map_err(|e| Status::internal(e.to_string()))?
                    .connect_timeout(Duration::from_millis(500));
                match endpoint.connect().await {
                    Ok(channel) => {
                        return Ok(Some(
                            shoal_api::control::control_client::ControlClient::new(channel)
                                .max_decoding_message_size(shoal_api::MAX_MESSAGE)
                                .max_encoding_message_size(shoal_api::MAX_MESSAGE),
                        ));
                    }
                    Err(e) => last = Some(format!("the leader at {addr} is unreachable ({e})")),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let why = last.unwrap_or_else(|| peers::not_leader(leader).message().to_string());
                return Err(Status::unavailable(format!(
                    "{why}: no manager took over within 5 s; without a quorum of managers the \
                     cluster takes no writes (reads still answer)"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The running manager, if this node is one.
    pub async fn manager(&self) -> Option<Arc<Manager>> {
        self.manager.read().await.clone()
    }

    /// Where the cluster port listens and what it advertises, once open.
    pub fn port_config(&self) -> Option<PortConfig> {
        self.port
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|p| p.config.clone())
    }

    /// Where this node keeps its certificate, key and the CA's certificate.
    fn tls_dir(&self) -> PathBuf {
        self.dir.with_file_name("tls")
    }

    /// The same services for callers over the cluster port.
    fn for_remote(&self) -> ManagerService {
        ManagerService {
            remote: true,
            ..self.clone()
        }
    }

    /// Makes sure the cluster has a CA and join tokens, that this manager has a
    /// certificate, and opens the cluster port. Returns where it listens and what it
    /// advertises.
    async fn open_port(
        &self,
        listen: std::net::SocketAddr,
        advertise: Option<std::net::SocketAddr>,
    ) -> Result<PortConfig, ClusterError> {
        let m = self
            .active()
            .await
            .map_err(|e| ClusterError::Raft(e.message().into()))?;
        let tls_dir = self.tls_dir();
        let tls = match NodeTls::load(&tls_dir).map_err(port_err)? {
            Some(t) => t,
            None => {
                let record = m.cluster_record().await?;
                let (key_pem, csr) =
                    crate::ca::node_key_and_request(&self.node.id).map_err(ca_err)?;
                let cert_pem = record
                    .ca
                    .issue(&csr, &self.node.id, Role::Manager)
                    .map_err(ca_err)?;
                let t = NodeTls {
                    ca_pem: record.ca.cert_pem.clone(),
                    cert_pem,
                    key_pem,
                };
                t.save(&tls_dir).map_err(port_err)?;
                t
            }
        };
        m.net.set_tls(client_tls(&tls));
        let remote = self.for_remote();
        let routes = tonic::service::Routes::new(
            ControlServer::new(remote.clone())
                .max_decoding_message_size(shoal_api::MAX_MESSAGE)
                .max_encoding_message_size(shoal_api::MAX_MESSAGE),
        )
        .add_service(
            DispatcherServer::new(remote.clone())
                .max_decoding_message_size(shoal_api::MAX_MESSAGE)
                .max_encoding_message_size(shoal_api::MAX_MESSAGE),
        )
        .add_service(
            shoal_api::raft::raft_server::RaftServer::new(remote.clone())
                .max_decoding_message_size(shoal_api::MAX_MESSAGE)
                .max_encoding_message_size(shoal_api::MAX_MESSAGE),
        )
        .add_service(
            shoal_api::raft::join_server::JoinServer::new(remote)
                .max_decoding_message_size(shoal_api::MAX_MESSAGE)
                .max_encoding_message_size(shoal_api::MAX_MESSAGE),
        );
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let (bound, certs) = crate::port::open(listen, &tls, routes, async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
        .await
        .map_err(port_err)?;
        let advertise = match advertise {
            Some(a) if a.port() == 0 => std::net::SocketAddr::new(a.ip(), bound.port()),
            Some(a) => a,
            None => crate::port::default_advertise(bound),
        };
        let config = PortConfig {
            listen: bound,
            advertise,
        };
        crate::port::save_config(&self.dir, &config).map_err(port_err)?;
        // Recorded by the leader only; a follower's record keeps the address it joined with.
        if m.store.is_leader()
            && let Err(e) = m.set_node_addr(&self.node.id, &advertise.to_string()).await
        {
            tracing::warn!("recording this node's address: {e}");
        }
        *self.port.lock().unwrap_or_else(|e| e.into_inner()) = Some(OpenPort {
            config: config.clone(),
            stop,
            certs,
        });
        Ok(config)
    }

    /// Who calls: nobody to check on the local socket; over the cluster port, the node its
    /// certificate names, which must have one of the `roles`, and whose certificate was
    /// not revoked (the node removed, or its role changed since it was issued).
    fn caller<T>(
        &self,
        r: &Request<T>,
        roles: &[Role],
        what: &str,
    ) -> Result<Option<crate::ca::Identity>, Status> {
        self.caller_checked(r, roles, what, true)
    }

    /// [`ManagerService::caller`]; not `strict`: a certificate replaced by a role change
    /// still counts (heartbeats, renewal and Raft, which membership governs).
    fn caller_checked<T>(
        &self,
        r: &Request<T>,
        roles: &[Role],
        what: &str,
        strict: bool,
    ) -> Result<Option<crate::ca::Identity>, Status> {
        if !self.remote {
            return Ok(None);
        }
        let certs = r.peer_certs().ok_or_else(|| {
            Status::unauthenticated(format!(
                "{what} needs a node certificate of this cluster: join the cluster first (shoal join)"
            ))
        })?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no certificate presented"))?;
        let id =
            crate::ca::identity_der(leaf).map_err(|e| Status::unauthenticated(e.to_string()))?;
        if !roles.contains(&id.role) {
            let allowed = roles
                .iter()
                .map(|r| format!("{}s", r.as_str()))
                .collect::<Vec<_>>()
                .join(" and ");
            let who = match id.role {
                Role::Client => format!("client {} holds a client certificate", id.node_id),
                role => format!("node {} is a {}", id.node_id, role.as_str()),
            };
            return Err(Status::permission_denied(format!(
                "{what} is for {allowed}; {who}"
            )));
        }
        // The manager is only written while it starts or stops (init, join, leave): a
        // caller then finds no record to be refused by anyway.
        if let Ok(guard) = self.manager.try_read()
            && let Some(m) = guard.as_ref()
        {
            m.check_revoked(&id, strict)?;
        }
        Ok(Some(id))
    }

    /// The services of a manager that runs already (in-process clusters).
    pub fn serving(m: Arc<Manager>) -> ManagerService {
        ManagerService {
            dir: PathBuf::new(),
            node: m.node.clone(),
            options: m.options,
            manager: Arc::new(RwLock::new(Some(m))),
            agent: Arc::new(|_| Box::pin(async {})),
            transition: Default::default(),
            remote: false,
            port_defaults: PortDefaults::default(),
            port: Default::default(),
        }
    }

    /// The manager, if it leads: agents' sessions, heartbeats and status go to the leader,
    /// which alone knows every node's deadline.
    async fn leading(&self) -> Result<Arc<Manager>, Status> {
        let m = self.active().await?;
        if !m.store.is_leader() {
            return Err(peers::not_leader(m.store.leader()));
        }
        Ok(m)
    }

    async fn active(&self) -> Result<Arc<Manager>, Status> {
        if let Some(m) = self.manager.read().await.clone() {
            return Ok(m);
        }
        if self.tls_dir().join("node.crt").exists() {
            let managers = join::load_managers(&self.tls_dir());
            let hint = if managers.is_empty() {
                String::new()
            } else {
                format!(" (managers: {})", managers.join(", "))
            };
            return Err(Status::failed_precondition(format!(
                "this node is a worker: workers run tasks but do not hold the cluster's state; \
                 run this on a manager{hint}, or promote this node with `shoal node promote` \
                 on a manager"
            )));
        }
        Err(Status::failed_precondition(
            "this node is not in a cluster: run \"shoal init\" to start one, \"shoal join\" \
             to join one, or \"shoal dev\" for a one-node cluster in the foreground",
        ))
    }

    /// Stops the manager, if running.
    pub async fn stop(&self) {
        if let Some(port) = self.port.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = port.stop.send(true);
        }
        if let Some(m) = self.manager.write().await.take() {
            m.stop().await;
        }
    }
}

async fn find_service(m: &Manager, key: &str) -> Result<(Service, u64), Status> {
    if let Some(v) = m.store.get(kinds::SERVICE, key).map_err(internal)? {
        let s: Service =
            serde_json::from_value(v.value).map_err(|e| Status::internal(e.to_string()))?;
        return Ok((s, v.version));
    }
    for (_, v) in m.store.list(kinds::SERVICE).map_err(internal)? {
        let s: Service =
            serde_json::from_value(v.value.clone()).map_err(|e| Status::internal(e.to_string()))?;
        if s.spec.name == key || (key.len() >= 4 && s.id.starts_with(key)) {
            return Ok((s, v.version));
        }
    }
    Err(Status::not_found(format!(
        "service {key} not found (see \"shoal service ls\")"
    )))
}

fn check_spec(spec: &ServiceSpec) -> Result<(), Status> {
    let bad = |m: String| Err(Status::invalid_argument(m));
    if spec.name.is_empty()
        || !spec
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return bad(format!(
            "invalid service name \"{}\": use letters, digits, '-' and '_'",
            spec.name
        ));
    }
    if spec.image.is_empty() {
        return bad("no image given: name one, for example busybox".into());
    }
    for c in &spec.constraints {
        crate::scheduler::Constraint::parse(c)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
    }
    let mut published = std::collections::HashSet::new();
    for p in &spec.ports {
        if p.target == 0 {
            return bad("a published port needs a target port (the container's), 1-65535".into());
        }
        if p.published != 0 && !published.insert((p.protocol, p.published)) {
            return bad(format!(
                "port {} is published twice: give each published port once",
                p.published
            ));
        }
    }
    if matches!(
        spec.mode,
        ServiceMode::ReplicatedJob | ServiceMode::GlobalJob
    ) && spec.update.failure_action == UpdateFailureAction::Rollback
    {
        return bad("jobs do not roll back: use --update-failure-action pause or continue".into());
    }
    if spec.rollback.failure_action == UpdateFailureAction::Rollback {
        return bad(
            "a rollback cannot roll back: use --rollback-failure-action pause or continue".into(),
        );
    }
    Ok(())
}

/// The write that applies one status update to the task as stored now (None: nothing to
/// change, or the task is gone).
fn status_command(m: &Manager, u: &pd::StatusUpdate) -> Result<Option<Command>, Status> {
    let Some(v) = m.store.get(kinds::TASK, &u.task_id).map_err(internal)? else {
        return Ok(None);
    };
    let mut t: Task =
        serde_json::from_value(v.value).map_err(|e| Status::internal(e.to_string()))?;
    let state: TaskState = serde_json::from_value(serde_json::Value::String(u.state.clone()))
        .map_err(|_| Status::invalid_argument(format!("unknown task state {}", u.state)))?;
    if !t.status.state.can_move_to(state) {
        // States only move forward; a late report changes nothing, but a running task's
        // health check passing is news.
        if state != t.status.state || u.health.is_empty() || u.health == t.status.health {
            return Ok(None);
        }
        t.status.health = u.health.clone();
        return Ok(Some(Command::Put {
            kind: kinds::TASK.into(),
            id: t.id.clone(),
            value: serde_json::to_value(&t).unwrap_or_default(),
            expected_version: Some(v.version),
        }));
    }
    if !u.health.is_empty() {
        t.status.health = u.health.clone();
    }
    t.status.state = state;
    t.status.message = u.message.clone();
    t.status.timestamp_ms = now_ms();
    t.status.exit_code = u.exited.then_some(u.exit_code);
    if !u.container_id.is_empty() {
        t.status.container_id = u.container_id.clone();
    }
    Ok(Some(Command::Put {
        kind: kinds::TASK.into(),
        id: t.id.clone(),
        value: serde_json::to_value(&t).unwrap_or_default(),
        expected_version: Some(v.version),
    }))
}

/// The JSON of the network views of `node_id` (see [`crate::netview`]).
fn network_views(m: &Manager, node_id: &str) -> Result<String, ClusterError> {
    fn all<T: serde::de::DeserializeOwned>(
        m: &Manager,
        kind: &str,
    ) -> Result<Vec<T>, ClusterError> {
        Ok(m.store
            .list(kind)?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_value(v.value).ok())
            .collect())
    }
    let networks: Vec<Network> = all(m, kinds::NETWORK)?;
    if networks.is_empty() {
        return Ok(String::new());
    }
    // Services are few, tasks many: without a service on a network, no task is on one.
    let services: Vec<Service> = all(m, kinds::SERVICE)?;
    let networked = services.iter().any(|s| {
        !s.spec.networks.is_empty() || s.spec.ports.iter().any(|p| p.mode == PublishMode::Ingress)
    });
    if !networked {
        return Ok(String::new());
    }
    let views = crate::netview::node_views(
        node_id,
        &networks,
        &services,
        &all::<Task>(m, kinds::TASK)?,
        &all::<Node>(m, kinds::NODE)?,
    );
    Ok(serde_json::to_string(&views).unwrap_or_default())
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Control for ManagerService {
    async fn init(&self, r: Request<pc::InitRequest>) -> Result<Response<pc::InitReply>, Status> {
        self.caller(&r, &[Role::Manager], "init")?;
        let req = r.into_inner();
        let bad = |e: crate::port::PortError| Status::invalid_argument(e.to_string());
        let listen = match req.listen_addr.as_str() {
            "" => self.port_defaults.listen,
            a => crate::port::parse_addr("--listen-addr", a).map_err(bad)?,
        };
        let advertise = match req.advertise_addr.as_str() {
            "" => self.port_defaults.advertise,
            a => Some(crate::port::parse_addr("--advertise-addr", a).map_err(bad)?),
        };
        if req.force_new_cluster {
            return self.force_new_cluster().await.map(Response::new);
        }
        let pool = crate::allocator::AddrPool::parse(
            &req.default_addr_pool,
            req.default_addr_pool_mask_len,
        )
        .map_err(Status::invalid_argument)?;
        let mut guard = self.manager.write().await;
        if guard.is_some() {
            return Err(Status::already_exists(
                "this node is already part of a cluster: \"shoal info\" shows it",
            ));
        }
        // Refuse a port that cannot be opened before anything is written; a port left to
        // the kernel is chosen now, as the Raft membership records the address.
        let listen = std::net::TcpListener::bind(listen)
            .and_then(|l| l.local_addr())
            .map_err(|e| {
                Status::failed_precondition(format!(
                    "cannot open the cluster port {listen}: {e}; choose another with --listen-addr IP:PORT"
                ))
            })?;
        let advertise = advertise.map(|a| match a.port() {
            0 => std::net::SocketAddr::new(a.ip(), listen.port()),
            _ => a,
        });
        let addr = advertise
            .filter(|a| a.port() != 0)
            .unwrap_or_else(|| crate::port::default_advertise(listen));
        let m = Manager::start(
            self.dir.clone(),
            self.node.clone(),
            self.options,
            Start::Init(&addr.to_string()),
        )
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        *guard = Some(m.clone());
        drop(guard);
        if let Err(e) = self.open_port(listen, advertise).await {
            // Leave no half-made cluster behind: the next init starts clean.
            self.stop().await;
            let _ = std::fs::remove_dir_all(&self.dir);
            let _ = std::fs::remove_dir_all(self.tls_dir());
            return Err(Status::failed_precondition(e.to_string()));
        }
        (self.agent)(AgentOrder::Run(self.agent_target(true).map_err(internal)?)).await;
        // The cluster is ready for services once this node's agent has reported in.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !m.node_ready(&self.node.id) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        m.store
            .write(Command::Put {
                kind: kinds::CLUSTER.into(),
                id: crate::pipeline::ADDR_POOL_ID.into(),
                value: serde_json::to_value(&pool).unwrap_or_default(),
                expected_version: None,
            })
            .await
            .map_err(internal)?;
        networks::ensure_ingress(&m).await?;
        Ok(Response::new(pc::InitReply {
            node_id: self.node.id.clone(),
            cluster_id: self.node.id.clone(),
        }))
    }

    async fn join_cluster(
        &self,
        r: Request<pc::JoinClusterRequest>,
    ) -> Result<Response<pc::JoinClusterReply>, Status> {
        if self.remote {
            return Err(Status::permission_denied(
                "joining is asked of a node on its own socket: run \"shoal join\" on the node",
            ));
        }
        ManagerService::join_cluster(self, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn leave_cluster(
        &self,
        r: Request<pc::LeaveRequest>,
    ) -> Result<Response<pc::LeaveReply>, Status> {
        if self.remote {
            return Err(Status::permission_denied(
                "leaving is asked of a node on its own socket: run \"shoal leave\" on the node",
            ));
        }
        self.leave(r.into_inner().force).await.map(Response::new)
    }

    async fn remove_node(
        &self,
        r: Request<pc::RemoveNodeRequest>,
    ) -> Result<Response<pc::RemoveReply>, Status> {
        self.caller(&r, CONTROL_CALLERS, "node rm")?;
        let m = self.active().await?;
        if let Some(mut leader) = self.forward(&m).await? {
            return leader.remove_node(r.into_inner()).await;
        }
        let req = r.into_inner();
        m.remove_node(&req.node, req.force).await?;
        Ok(Response::new(pc::RemoveReply {}))
    }

    async fn join_token(
        &self,
        r: Request<pc::JoinTokenRequest>,
    ) -> Result<Response<pc::JoinTokenReply>, Status> {
        self.caller(&r, CONTROL_CALLERS, "join-token")?;
        let m = self.active().await?;
        let req = r.into_inner();
        let role: Role = req
            .role
            .parse()
            .map_err(|e: crate::ca::CaError| Status::invalid_argument(e.to_string()))?;
        if role == Role::Client {
            return Err(Status::invalid_argument(
                "join tokens are for workers and managers; a remote user of the control API \
                 gets a client certificate instead: shoal client-cert",
            ));
        }
        let mut record = m.cluster_record().await.map_err(internal)?;
        let fingerprint = record
            .ca
            .fingerprint()
            .map_err(|e| Status::internal(e.to_string()))?;
        if req.rotate {
            let secret = JoinToken::generate(&fingerprint)
                .map_err(|e| Status::internal(e.to_string()))?
                .secret;
            match role {
                Role::Manager => record.manager_secret = secret,
                Role::Worker | Role::Client => record.worker_secret = secret,
            }
            m.store
                .write(Command::Put {
                    kind: kinds::CLUSTER.into(),
                    id: CLUSTER_ID.into(),
                    value: serde_json::to_value(&record).unwrap_or_default(),
                    expected_version: None,
                })
                .await
                .map_err(internal)?;
        }
        let secret = match role {
            Role::Manager => record.manager_secret,
            Role::Worker | Role::Client => record.worker_secret,
        };
        let manager_addr = self
            .port
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|p| p.config.advertise.to_string())
            .unwrap_or_default();
        Ok(Response::new(pc::JoinTokenReply {
            token: JoinToken {
                fingerprint,
                secret,
            }
            .to_string(),
            manager_addr,
        }))
    }

    async fn info(&self, r: Request<pc::InfoRequest>) -> Result<Response<pc::InfoReply>, Status> {
        self.caller(&r, CONTROL_CALLERS, "info")?;
        let Some(m) = self.manager.read().await.clone() else {
            // A worker that joined is part of a cluster, without its state.
            let joined = self.tls_dir().join("node.crt").exists();
            return Ok(Response::new(pc::InfoReply {
                node_id: self.node.id.clone(),
                swarm_active: joined,
                ..Default::default()
            }));
        };
        m.fresh().await?;
        let nodes = m.store.list(kinds::NODE).map_err(internal)?;
        let managers = m.store.member_addrs().len();
        let tasks = m.store.list(kinds::TASK).map_err(internal)?;
        let port = self
            .port
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|p| p.config.clone());
        Ok(Response::new(pc::InfoReply {
            swarm_active: true,
            node_id: self.node.id.clone(),
            manager: true,
            leader: m.store.leader().map(|(id, _)| id).unwrap_or(0),
            managers: managers as u32,
            nodes: nodes.len() as u32,
            services: m.store.list(kinds::SERVICE).map_err(internal)?.len() as u32,
            tasks_running: tasks
                .iter()
                .filter(|(_, v)| v.value["status"]["state"] == "running")
                .count() as u32,
            advertise_addr: port
                .as_ref()
                .map(|c| c.advertise.to_string())
                .unwrap_or_default(),
            listen_addr: port
                .as_ref()
                .map(|c| c.listen.to_string())
                .unwrap_or_default(),
            ca_fingerprint: m
                .store
                .get(kinds::CLUSTER, CLUSTER_ID)
                .ok()
                .flatten()
                .and_then(|v| serde_json::from_value::<ClusterRecord>(v.value).ok())
                .and_then(|r| r.ca.fingerprint().ok())
                .unwrap_or_default(),
        }))
    }

    async fn create_service(
        &self,
        r: Request<pc::CreateServiceRequest>,
    ) -> Result<Response<pc::ObjectReply>, Status> {
        self.caller(&r, CONTROL_CALLERS, "create service")?;
        let m = self.active().await?;
        if let Some(mut leader) = self.forward(&m).await? {
            return leader.create_service(r.into_inner()).await;
        }
        let mut spec: ServiceSpec = serde_json::from_str(&r.into_inner().spec_json)
            .map_err(|e| Status::invalid_argument(format!("malformed service spec: {e}")))?;
        check_spec(&spec)?;
        networks::resolve_service_networks(&m, &mut spec)?;
        networks::check_ingress_ports(&m, &spec, "")?;
        for (_, v) in m.store.list(kinds::SERVICE).map_err(internal)? {
            if v.value["spec"]["name"] == spec.name.as_str() {
                return Err(Status::already_exists(format!(
                    "a service named {} exists already: update it, or remove it first",
                    spec.name
                )));
            }
        }
        let mut buf = [0u8; 12];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
            .map_err(|e| Status::internal(format!("making a service id: {e}")))?;
        let id: String = buf.iter().map(|b| format!("{b:02x}")).collect();
        let service = Service {
            id: id.clone(),
            spec,
            previous_spec: None,
            update_status: None,
            vips: Vec::new(),
            ports: Vec::new(),
        };
        let r = m
            .store
            .write(Command::Put {
                kind: kinds::SERVICE.into(),
                id: id.clone(),
                value: serde_json::to_value(&service).unwrap_or_default(),
                expected_version: Some(0),
            })
            .await
            .map_err(internal)?;
        let version = match r {
            CommandResult::Applied(v) => v.first().copied().unwrap_or(0),
            other => return Err(Status::aborted(format!("{other:?}"))),
        };
        Ok(Response::new(pc::ObjectReply {
            object: Some(pc::Object {
                id,
                version,
                json: serde_json::to_string(&service).unwrap_or_default(),
            }),
        }))
    }

    async fn update_service(
        &self,
        r: Request<pc::UpdateServiceRequest>,
    ) -> Result<Response<pc::ObjectReply>, Status> {
        self.caller(&r, CONTROL_CALLERS, "update service")?;
        let m = self.active().await?;
        if let Some(mut leader) = self.forward(&m).await? {
            return leader.update_service(r.into_inner()).await;
        }
        let r = r.into_inner();
        let (mut service, version) = find_service(&m, &r.service).await?;
        if r.version != 0 && r.version != version {
            return Err(Status::aborted(format!(
                "service {} changed since it was read (version {} now, {} read): read it again and retry",
                service.spec.name, version, r.version
            )));
        }
        let mut new_spec = if r.rollback {
            service.previous_spec.clone().ok_or_else(|| {
                Status::failed_precondition(format!(
                    "service {} has no previous spec to roll back to",
                    service.spec.name
                ))
            })?
        } else {
            serde_json::from_str(&r.spec_json)
                .map_err(|e| Status::invalid_argument(format!("malformed service spec: {e}")))?
        };
        check_spec(&new_spec)?;
        networks::resolve_service_networks(&m, &mut new_spec)?;
        networks::check_ingress_ports(&m, &new_spec, &service.id)?;
        if new_spec.mode != service.spec.mode {
            return Err(Status::invalid_argument(format!(
                "service {} cannot change its mode: remove it and create it again",
                service.spec.name
            )));
        }
        // A change of the task template is an update (or a rollback) that rolls out; a
        // scale, or a change of the update settings, is not.
        if r.rollback || !new_spec.same_task_template(&service.spec) {
            service.update_status = Some(UpdateStatus {
                state: if r.rollback {
                    UpdateState::RollbackStarted
                } else {
                    UpdateState::Updating
                },
                started_ms: now_ms(),
                completed_ms: 0,
                message: if r.rollback {
                    "rollback asked for".into()
                } else {
                    String::new()
                },
            });
        }
        service.previous_spec = Some(std::mem::replace(&mut service.spec, new_spec));
        let res = m
            .store
            .write(Command::Put {
                kind: kinds::SERVICE.into(),
                id: service.id.clone(),
                value: serde_json::to_value(&service).unwrap_or_default(),
                expected_version: Some(version),
            })
            .await
            .map_err(internal)?;
        match res {
            CommandResult::Applied(v) => Ok(Response::new(pc::ObjectReply {
                object: Some(pc::Object {
                    id: service.id.clone(),
                    version: v.first().copied().unwrap_or(0),
                    json: serde_json::to_string(&service).unwrap_or_default(),
                }),
            })),
            _ => Err(Status::aborted(
                "the service changed while updating it: retry",
            )),
        }
    }

    async fn remove_service(
        &self,
        r: Request<pc::RemoveRequest>,
    ) -> Result<Response<pc::RemoveReply>, Status> {
        self.caller(&r, CONTROL_CALLERS, "remove service")?;
        let m = self.active().await?;
        if let Some(mut leader) = self.forward(&m).await? {
            return leader.remove_service(r.into_inner()).await;
        }
        let (service, version) = find_service(&m, &r.into_inner().id).await?;
        m.store
            .write(Command::Delete {
                kind: kinds::SERVICE.into(),
                id: service.id,
                expected_version: Some(version),
            })
            .await
            .map_err(internal)?;
        Ok(Response::new(pc::RemoveReply {}))
    }

    async fn get_service(
        &self,
        r: Request<pc::GetRequest>,
    ) -> Result<Response<pc::ObjectReply>, Status> {
        self.caller(&r, CONTROL_CALLERS, "get service")?;
        let m = self.active().await?;
        m.fresh().await?;
        let (s, version) = find_service(&m, &r.into_inner().id).await?;
        Ok(Response::new(pc::ObjectReply {
            object: Some(pc::Object {
                id: s.id.clone(),
                version,
                json: serde_json::to_string(&s).unwrap_or_default(),
            }),
        }))
    }

    async fn list_services(
        &self,
        r: Request<pc::ListRequest>,
    ) -> Result<Response<pc::ListReply>, Status> {
        self.caller(&r, CONTROL_CALLERS, "list services")?;
        let m = self.active().await?;
        m.fresh().await?;
        let objects = m
            .store
            .list(kinds::SERVICE)
            .map_err(internal)?
            .iter()
            .map(|(id, v)| object(id, v))
            .collect();
        Ok(Response::new(pc::ListReply { objects }))
    }

    async fn list_tasks(
        &self,
        r: Request<pc::ListTasksRequest>,
    ) -> Result<Response<pc::ListReply>, Status> {
        self.caller(&r, CONTROL_CALLERS, "list tasks")?;
        let m = self.active().await?;
        m.fresh().await?;
        let filter = r.into_inner().service;
        let service_id = if filter.is_empty() {
            None
        } else {
            Some(find_service(&m, &filter).await?.0.id)
        };
        let objects = m
            .store
            .list(kinds::TASK)
            .map_err(internal)?
            .iter()
            .filter(|(_, v)| {
                service_id
                    .as_deref()
                    .is_none_or(|s| v.value["service_id"] == s)
            })
            .map(|(id, v)| object(id, v))
            .collect();
        Ok(Response::new(pc::ListReply { objects }))
    }

    async fn list_nodes(
        &self,
        r: Request<pc::ListRequest>,
    ) -> Result<Response<pc::ListReply>, Status> {
        self.caller(&r, CONTROL_CALLERS, "list nodes")?;
        let m = self.active().await?;
        m.fresh().await?;
        let objects = m
            .store
            .list(kinds::NODE)
            .map_err(internal)?
            .iter()
            .map(|(id, v)| object(id, v))
            .collect();
        Ok(Response::new(pc::ListReply { objects }))
    }

    async fn update_node(
        &self,
        r: Request<pc::UpdateNodeRequest>,
    ) -> Result<Response<pc::ObjectReply>, Status> {
        self.caller(&r, CONTROL_CALLERS, "update node")?;
        let m = self.active().await?;
        if let Some(mut leader) = self.forward(&m).await? {
            return leader.update_node(r.into_inner()).await;
        }
        let r = r.into_inner();
        let id = m.find_node(&r.node)?.id;
        if !r.role.is_empty() {
            let role: Role = r
                .role
                .parse()
                .map_err(|e: crate::ca::CaError| Status::invalid_argument(e.to_string()))?;
            let node = m.find_node(&id)?;
            m.change_role(&node, role).await?;
        }
        let v = m
            .store
            .get(kinds::NODE, &id)
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("node {} is gone", r.node)))?;
        if r.availability.is_empty() && r.label_add.is_empty() && r.label_rm.is_empty() {
            return Ok(Response::new(pc::ObjectReply {
                object: Some(object(&id, &v)),
            }));
        }
        let mut node: Node =
            serde_json::from_value(v.value).map_err(|e| Status::internal(e.to_string()))?;
        match r.availability.as_str() {
            "" => {}
            "active" => node.availability = NodeAvailability::Active,
            "pause" => node.availability = NodeAvailability::Pause,
            "drain" => node.availability = NodeAvailability::Drain,
            other => {
                return Err(Status::invalid_argument(format!(
                    "invalid availability \"{other}\": use active, pause or drain"
                )));
            }
        }
        for l in &r.label_add {
            let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
            node.labels.insert(k.to_string(), v.to_string());
        }
        for k in &r.label_rm {
            node.labels.remove(k);
        }
        let res = m
            .store
            .write(Command::Put {
                kind: kinds::NODE.into(),
                id: id.clone(),
                value: serde_json::to_value(&node).unwrap_or_default(),
                expected_version: Some(v.version),
            })
            .await
            .map_err(internal)?;
        let version = match res {
            CommandResult::Applied(v) => v.first().copied().unwrap_or(0),
            _ => return Err(Status::aborted("the node changed while updating it: retry")),
        };
        Ok(Response::new(pc::ObjectReply {
            object: Some(pc::Object {
                id,
                version,
                json: serde_json::to_string(&node).unwrap_or_default(),
            }),
        }))
    }

    async fn issue_client_cert(
        &self,
        r: Request<pc::ClientCertRequest>,
    ) -> Result<Response<pc::ClientCertReply>, Status> {
        self.caller(&r, &[Role::Manager], "issuing client certificates")?;
        let m = self.active().await?;
        let req = r.into_inner();
        let name = req.name.trim();
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
        if !valid {
            return Err(Status::invalid_argument(format!(
                "invalid client name \"{name}\": use 1-64 letters, digits, '-', '_', '.' or '@'"
            )));
        }
        let record = m.cluster_record().await.map_err(internal)?;
        let cert_pem = record
            .ca
            .issue_since(&req.csr_pem, name, Role::Client, 0)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let expires_unix = crate::ca::identity_pem(&cert_pem)
            .ok()
            .and_then(|id| id.not_after.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or(0);
        tracing::info!(client = name, "client certificate issued");
        Ok(Response::new(pc::ClientCertReply {
            cert_pem,
            ca_pem: record.ca.cert_pem,
            managers: m.store.member_addrs().into_iter().map(|(_, a)| a).collect(),
            expires_unix,
        }))
    }

    async fn create_network(
        &self,
        r: Request<pc::CreateNetworkRequest>,
    ) -> Result<Response<pc::ObjectReply>, Status> {
        self.caller(&r, CONTROL_CALLERS, "create network")?;
        let m = self.active().await?;
        if let Some(mut leader) = self.forward(&m).await? {
            return leader.create_network(r.into_inner()).await;
        }
        let spec: shoal_api::types::NetworkSpec =
            serde_json::from_str(&r.into_inner().spec_json)
                .map_err(|e| Status::invalid_argument(format!("malformed network spec: {e}")))?;
        let object = networks::create(&m, spec).await?;
        Ok(Response::new(pc::ObjectReply {
            object: Some(object),
        }))
    }

    async fn remove_network(
        &self,
        r: Request<pc::RemoveRequest>,
    ) -> Result<Response<pc::RemoveReply>, Status> {
        self.caller(&r, CONTROL_CALLERS, "remove network")?;
        let m = self.active().await?;
        if let Some(mut leader) = self.forward(&m).await? {
            return leader.remove_network(r.into_inner()).await;
        }
        networks::remove(&m, &r.into_inner().id).await?;
        Ok(Response::new(pc::RemoveReply {}))
    }

    async fn get_network(
        &self,
        r: Request<pc::GetRequest>,
    ) -> Result<Response<pc::ObjectReply>, Status> {
        self.caller(&r, CONTROL_CALLERS, "get network")?;
        let m = self.active().await?;
        m.fresh().await?;
        let n = networks::find_network(&m, &r.into_inner().id)?;
        let version = m
            .store
            .get(kinds::NETWORK, &n.id)
            .map_err(internal)?
            .map(|v| v.version)
            .unwrap_or(0);
        Ok(Response::new(pc::ObjectReply {
            object: Some(pc::Object {
                id: n.id.clone(),
                version,
                json: serde_json::to_string(&n).unwrap_or_default(),
            }),
        }))
    }

    async fn list_networks(
        &self,
        r: Request<pc::ListRequest>,
    ) -> Result<Response<pc::ListReply>, Status> {
        self.caller(&r, CONTROL_CALLERS, "list networks")?;
        let m = self.active().await?;
        m.fresh().await?;
        Ok(Response::new(pc::ListReply {
            objects: networks::list(&m)?,
        }))
    }
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
        let node_id = session.node_id;
        let mut events = m.store.subscribe();
        let mut leads = m.store.leadership();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut last: Vec<(String, u64)> = Vec::new();
            let mut last_views = String::new();
            loop {
                crate::cluster::skip_changes(&mut events);
                let Ok(tasks) = m.store.list(kinds::TASK) else {
                    break;
                };
                let mine: Vec<(String, Versioned)> = tasks
                    .into_iter()
                    .filter(|(_, v)| {
                        v.value["node_id"] == node_id.as_str()
                            && v.value["status"]["state"] != "new"
                            // A standalone container's attachment: nothing to run.
                            && v.value["service_id"] != ""
                    })
                    .collect();
                let key: Vec<(String, u64)> =
                    mine.iter().map(|(id, v)| (id.clone(), v.version)).collect();
                let views = match network_views(&m, &node_id) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(node = %node_id, "network views: {e}");
                        last_views.clone()
                    }
                };
                if key != last || views != last_views {
                    last = key;
                    last_views = views.clone();
                    let set = pd::AssignmentSet {
                        networks_json: views,
                        tasks: mine
                            .iter()
                            .map(|(_, v)| pd::Assignment {
                                json: v.value.to_string(),
                                version: v.version,
                            })
                            .collect(),
                    };
                    if tx.send(Ok(set)).await.is_err() {
                        break;
                    }
                }
                if !*leads.borrow_and_update() {
                    let _ = tx
                        .send(Err(Status::unavailable(
                            "this manager stopped leading: open the session again with the leader",
                        )))
                        .await;
                    break;
                }
                tokio::select! {
                    open = crate::cluster::next_changes(&mut events, Duration::from_millis(2)) => if !open { break },
                    _ = leads.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = tx.closed() => break,
                }
            }
            // The node is not marked down here: its heartbeats tell (a session can end
            // for a reconnect to another manager).
        });
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
        let node_id = r.into_inner().node_id;
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
        Ok(Response::new(pd::AttachReply {
            attachment_json: serde_json::to_string(&spec).unwrap_or_default(),
        }))
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

    async fn update_status(
        &self,
        r: Request<pd::StatusBatch>,
    ) -> Result<Response<pd::StatusReply>, Status> {
        let me = self.caller(&r, &[Role::Manager, Role::Worker], "task status")?;
        let m = self.leading().await?;
        let batch = r.into_inner();
        same_node(&me, &batch.node_id)?;
        let updates = batch.updates;
        let mut commands = Vec::new();
        for u in &updates {
            if let Some(c) = status_command(&m, u)? {
                commands.push(c);
            }
        }
        // One Raft entry for the batch. If a task moved meanwhile (a manager wrote its
        // desired state), each update is read and applied again on its own.
        let conflict = match commands.len() {
            0 => false,
            _ => matches!(
                m.store
                    .write(Command::Batch { commands })
                    .await
                    .map_err(internal)?,
                CommandResult::Conflict { .. }
            ),
        };
        if conflict {
            for u in &updates {
                for _ in 0..5 {
                    let Some(c) = status_command(&m, u)? else {
                        break;
                    };
                    let r = m.store.write(c).await.map_err(internal)?;
                    if !matches!(r, CommandResult::Conflict { .. }) {
                        break;
                    }
                }
            }
        }
        Ok(Response::new(pd::StatusReply {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(m: &Manager, id: &str) -> (bool, String) {
        let v = m.store.get(kinds::NODE, id).unwrap().unwrap();
        let n: Node = serde_json::from_value(v.value).unwrap();
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
