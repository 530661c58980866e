//! The cluster as a whole: `init` (the first manager, its cluster port and ingress
//! network), `info`, join tokens, client certificates, and the cluster's record (its CA,
//! token secrets and address pool), made on first use.

use std::time::Duration;

use shoal_api::cluster::{AddrPool, JoinToken, raft_id};
use shoal_api::control as pc;
use shoal_api::types::{Node, Service, Task, TaskState};
use tonic::{Request, Response, Status};

use super::auth::CONTROL_CALLERS;
use super::{
    AgentOrder, Manager, ManagerService, OpenPort, Start, ca_err, client_tls, internal, networks,
    port_err,
};
use crate::ca::{Ca, Role};
use crate::cluster::ClusterError;
use crate::objects::{CLUSTER_ID, ClusterRecord};
use crate::port::{NodeTls, PortConfig};
use crate::store::{CommandResult, Write};
use shoal_api::control::control_server::ControlServer;
use shoal_api::dispatcher::dispatcher_server::DispatcherServer;

impl Manager {
    /// The cluster's record (CA, token secrets, address pool), made on first use.
    pub async fn cluster_record(&self) -> Result<ClusterRecord, ClusterError> {
        Ok(self.cluster_record_versioned().await?.value)
    }

    async fn cluster_record_versioned(
        &self,
    ) -> Result<crate::store::Versioned<ClusterRecord>, ClusterError> {
        for _ in 0..5 {
            if let Some(v) = self.store.get::<ClusterRecord>(CLUSTER_ID)? {
                return Ok(v);
            }
            let ca = Ca::generate().map_err(ca_err)?;
            let record = ClusterRecord {
                worker_secret: crate::ca::new_join_secret().map_err(ca_err)?,
                manager_secret: crate::ca::new_join_secret().map_err(ca_err)?,
                ca,
                addr_pool: AddrPool::default(),
                network_changes: 0,
            };
            self.store.apply(Write::create(record)).await?;
        }
        Err(ClusterError::Raft(
            "the cluster record keeps changing".into(),
        ))
    }

    /// Changes the cluster's record with `f`, again on a concurrent write; returns it as
    /// written.
    pub(super) async fn edit_cluster(
        &self,
        f: impl Fn(&mut ClusterRecord),
    ) -> Result<ClusterRecord, ClusterError> {
        for _ in 0..10 {
            let v = self.cluster_record_versioned().await?;
            let mut record = v.value;
            f(&mut record);
            let r = self
                .store
                .apply(Write::update(record.clone(), v.version))
                .await?;
            if !matches!(r, CommandResult::Conflict { .. }) {
                return Ok(record);
            }
        }
        Err(ClusterError::Raft(
            "the cluster record keeps changing".into(),
        ))
    }

    /// The IP of this manager's cluster address.
    pub(super) fn own_ip(&self) -> String {
        let me = raft_id(&self.node.id);
        self.store
            .member_addrs()
            .into_iter()
            .find(|(id, _)| *id == me)
            .and_then(|(_, a)| a.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.ip().to_string())
            .unwrap_or_default()
    }
}

impl ManagerService {
    /// Makes sure the cluster has a CA and join tokens, that this manager has a
    /// certificate, and opens the cluster port. Returns where it listens and what it
    /// advertises.
    pub(super) async fn open_port(
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
}

pub(super) async fn init(
    s: &ManagerService,
    r: Request<pc::InitRequest>,
) -> Result<Response<pc::InitReply>, Status> {
    s.caller(&r, &[Role::Manager], "init")?;
    let req = r.into_inner();
    let bad = |e: shoal_api::cluster::ClusterInputError| Status::invalid_argument(e.to_string());
    let listen = match req.listen_addr.as_str() {
        "" => s.port_defaults.listen,
        a => shoal_api::cluster::parse_addr("--listen-addr", a).map_err(bad)?,
    };
    let advertise = match req.advertise_addr.as_str() {
        "" => s.port_defaults.advertise,
        a => Some(shoal_api::cluster::parse_addr("--advertise-addr", a).map_err(bad)?),
    };
    if req.force_new_cluster {
        return s.force_new_cluster().await.map(Response::new);
    }
    let pool = AddrPool::parse(&req.default_addr_pool, req.default_addr_pool_mask_len)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let mut guard = s.manager.write().await;
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
        s.dir.clone(),
        s.node.clone(),
        s.options,
        Start::Init(&addr.to_string()),
    )
    .await
    .map_err(|e| Status::internal(e.to_string()))?;
    *guard = Some(m.clone());
    drop(guard);
    if let Err(e) = s.open_port(listen, advertise).await {
        // Leave no half-made cluster behind: the next init starts clean.
        s.stop().await;
        let _ = std::fs::remove_dir_all(&s.dir);
        let _ = std::fs::remove_dir_all(s.tls_dir());
        return Err(Status::failed_precondition(e.to_string()));
    }
    (s.agent)(AgentOrder::Run(s.agent_target(true).map_err(internal)?)).await;
    // The cluster is ready for services once this node's agent has reported in.
    let me = s.node.id.clone();
    m.store
        .watch::<Node>()
        .until(
            Duration::from_secs(10),
            || m.store.get::<Node>(&me).ok().flatten().map(|v| v.value),
            |n| n.id == me && n.ready,
        )
        .await;
    m.edit_cluster(|c| c.addr_pool = pool.clone())
        .await
        .map_err(internal)?;
    networks::ensure_ingress(&m).await?;
    Ok(Response::new(pc::InitReply {
        node_id: s.node.id.clone(),
        cluster_id: s.node.id.clone(),
    }))
}

pub(super) async fn info(
    s: &ManagerService,
    r: Request<pc::InfoRequest>,
) -> Result<Response<pc::InfoReply>, Status> {
    s.caller(&r, CONTROL_CALLERS, "info")?;
    let Some(m) = s.manager.read().await.clone() else {
        // A worker that joined is part of a cluster, without its state.
        let joined = s.tls_dir().join("node.crt").exists();
        return Ok(Response::new(pc::InfoReply {
            node_id: s.node.id.clone(),
            swarm_active: joined,
            ..Default::default()
        }));
    };
    m.fresh().await?;
    let snap = m.store.snapshot().map_err(internal)?;
    let managers = m.store.member_addrs().len();
    let port = s
        .port
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|p| p.config.clone());
    Ok(Response::new(pc::InfoReply {
        swarm_active: true,
        node_id: s.node.id.clone(),
        manager: true,
        leader: m.store.leader().map(|(id, _)| id).unwrap_or(0),
        managers: managers as u32,
        nodes: snap.count::<Node>() as u32,
        services: snap.count::<Service>() as u32,
        tasks_running: snap
            .list::<Task>()
            .filter(|v| v.value.status.state == TaskState::Running)
            .count() as u32,
        advertise_addr: port
            .as_ref()
            .map(|c| c.advertise.to_string())
            .unwrap_or_default(),
        listen_addr: port
            .as_ref()
            .map(|c| c.listen.to_string())
            .unwrap_or_default(),
        ca_fingerprint: snap
            .get::<ClusterRecord>(CLUSTER_ID)
            .map(|r| r.value.ca.fingerprint())
            .transpose()
            .map_err(|e| Status::internal(e.to_string()))?
            .unwrap_or_default(),
    }))
}

pub(super) async fn join_token(
    s: &ManagerService,
    r: Request<pc::JoinTokenRequest>,
) -> Result<Response<pc::JoinTokenReply>, Status> {
    s.caller(&r, CONTROL_CALLERS, "join-token")?;
    let m = s.active().await?;
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
        let secret = crate::ca::new_join_secret().map_err(|e| Status::internal(e.to_string()))?;
        record = m
            .edit_cluster(|c| match role {
                Role::Manager => c.manager_secret = secret.clone(),
                Role::Worker | Role::Client => c.worker_secret = secret.clone(),
            })
            .await
            .map_err(internal)?;
    }
    let secret = match role {
        Role::Manager => record.manager_secret,
        Role::Worker | Role::Client => record.worker_secret,
    };
    let manager_addr = s
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

pub(super) async fn issue_client_cert(
    s: &ManagerService,
    r: Request<pc::ClientCertRequest>,
) -> Result<Response<pc::ClientCertReply>, Status> {
    s.caller(&r, &[Role::Manager], "issuing client certificates")?;
    let m = s.active().await?;
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
