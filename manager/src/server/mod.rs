//! The manager's gRPC services on one node: the control API (init, services, tasks,
//! nodes, networks) and the dispatcher (agent sessions and task status), with Raft and
//! joining between managers. Until `shoal init` the node is no manager and the control
//! calls but `Init` and `Info` say so.
//!
//! - [`leadership`]: a manager's life, elections, the leader's work, fresh reads;
//! - [`auth`]: who calls, and forwarding writes to the leader;
//! - [`control`]: the control API's routing, to [`cluster_info`], [`services`], [`nodes`],
//!   [`networks`];
//! - [`dispatcher`]: agents' sessions, heartbeats and status;
//! - [`roles`]: promotion, demotion, leaving and forced new clusters, on the node;
//! - [`join`], [`peers`]: joining, and the calls between managers.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

mod auth;
mod calls;
mod cluster_info;
mod control;
mod dispatcher;
mod join;
mod leadership;
mod networks;
mod nodes;
mod peers;
mod roles;
mod services;
mod volumes;

pub use leadership::{Manager, ManagerOptions, SelfNode};
pub use peers::{LEADER_KEY, client_tls};

use futures::Stream;
use shoal_api::control as pc;
use tokio::sync::RwLock;
use tonic::Status;

use crate::cluster::ClusterError;
use crate::port::{NodeTls, PortConfig};

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
pub(super) const JOINED_MARK: &str = "joined";

/// An open cluster port.
pub(super) struct OpenPort {
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

    pub(super) fn agent_target(&self, local: bool) -> Result<AgentTarget, ClusterError> {
        Ok(AgentTarget {
            local,
            managers: join::load_managers(&self.tls_dir()),
            tls: NodeTls::load(&self.tls_dir()).map_err(port_err)?,
            managers_file: Some(join::managers_path(&self.tls_dir())),
        })
    }

    /// (Re)starts the agent with the certificate and managers on disk now.
    pub(super) async fn run_agent(&self, local: bool) -> Result<(), Status> {
        let target = self.agent_target(local).map_err(internal)?;
        (self.agent)(AgentOrder::Run(target)).await;
        Ok(())
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
    pub(super) fn tls_dir(&self) -> PathBuf {
        self.dir.with_file_name("tls")
    }

    /// The same services for callers over the cluster port.
    fn for_remote(&self) -> ManagerService {
        ManagerService {
            remote: true,
            ..self.clone()
        }
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
    pub(super) async fn leading(&self) -> Result<Arc<Manager>, Status> {
        let m = self.active().await?;
        if !m.store.is_leader() {
            return Err(peers::not_leader(m.store.leader()));
        }
        Ok(m)
    }

    pub(super) async fn active(&self) -> Result<Arc<Manager>, Status> {
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

fn port_err(e: crate::port::PortError) -> ClusterError {
    ClusterError::Raft(e.to_string())
}

fn ca_err(e: crate::ca::CaError) -> ClusterError {
    ClusterError::Raft(e.to_string())
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

/// A listing of stored objects for a reply.
fn listing<T: crate::store::Object>(
    items: &[crate::store::Versioned<T>],
) -> Result<pc::ListReply, Status> {
    let objects = items
        .iter()
        .map(|v| object(v.value.id(), v.version, &v.value))
        .collect::<Result<_, _>>()?;
    Ok(pc::ListReply { objects })
}

/// An object of the store for a reply.
fn object<T: serde::Serialize>(id: &str, version: u64, value: &T) -> Result<pc::Object, Status> {
    pc::Object::of(id, version, value).map_err(|e| Status::internal(e.to_string()))
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;
