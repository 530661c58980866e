//! The cluster side of the binary: wiring the manager's services and the node's agent
//! into the daemon, and the `init`, `join`, `leave`, `join-token`, `client-cert` and
//! `info` commands (`node` is in [`crate::node_cmd`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use shoal_api::control as pc;
use shoal_api::control::control_client::ControlClient;
use shoal_api::control::control_server::ControlServer;
use shoal_api::dispatcher::SessionRequest;
use shoal_api::dispatcher::dispatcher_server::DispatcherServer;
use shoal_api::types::ResourceAmounts;
use shoal_manager::server::{
    AgentControl, AgentOrder, AgentTarget, ManagerOptions, ManagerService, PortDefaults, SelfNode,
    client_tls,
};
use shoal_worker::agent::{Agent, Dialer, News, Newsroom};
use shoal_worker::daemon::DaemonError;
use shoal_worker::engine::Engine;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::UsageError;
use crate::client::{Host, connect};
use crate::image_cmd::status;

/// This node's identity, kept under the data root so it survives restarts.
pub fn self_node(data_root: &Path, hostname: Option<&str>) -> anyhow::Result<SelfNode> {
    std::fs::create_dir_all(data_root)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", data_root.display()))?;
    let file = data_root.join("node-id");
    let id = match std::fs::read_to_string(&file) {
        Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
        _ => {
            let id = shoal_api::id::random_hex(12)
                .map_err(|e| anyhow::anyhow!("making a node id: {e}"))?;
            std::fs::write(&file, &id)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", file.display()))?;
            id
        }
    };
    let hostname = match hostname {
        Some(h) => h.to_string(),
        None => nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "localhost".into()),
    };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as i64)
        .unwrap_or(1);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    Ok(SelfNode {
        id,
        hostname,
        resources: ResourceAmounts {
            nano_cpus: cpus * 1_000_000_000,
            memory_bytes: memory,
        },
    })
}

/// The manager's services, and the agent started once the node is a manager.
pub async fn manager_routes(
    engine: Arc<Engine>,
    node: SelfNode,
    dir: PathBuf,
    run_root: PathBuf,
    port_defaults: PortDefaults,
    options: ManagerOptions,
) -> Result<Option<tonic::service::Routes>, DaemonError> {
    let socket = shoal_worker::daemon::socket_path(&run_root);
    let session = SessionRequest {
        node_id: node.id.clone(),
        hostname: node.hostname.clone(),
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        nano_cpus: node.resources.nano_cpus,
        memory_bytes: node.resources.memory_bytes,
        data_addr: String::new(),
        // The agent says which at each session (plugins come and go).
        volume_drivers: Vec::new(),
    };
    // The agent hears the cluster's word on this node (its role, its removal) with its
    // heartbeats; the manager's services act on it. They exist only after the agent
    // control below is handed to them, hence the cell.
    let services: Arc<std::sync::OnceLock<ManagerService>> = Default::default();
    let cell = services.clone();
    let news: Newsroom = Arc::new(move |n| {
        let Some(svc) = cell.get().cloned() else {
            return;
        };
        tokio::spawn(async move {
            match n {
                News::Role(role) => svc.role_wanted(&role).await,
                News::Removed => svc.removed().await,
            }
        });
    });
    let current: Arc<tokio::sync::Mutex<Option<Arc<Agent>>>> = Default::default();
    let agent: AgentControl = Arc::new(move |order| {
        let (engine, socket, session, news, current) = (
            engine.clone(),
            socket.clone(),
            session.clone(),
            news.clone(),
            current.clone(),
        );
        Box::pin(async move {
            let mut current = current.lock().await;
            let old = current.take();
            match order {
                AgentOrder::Run(target) => {
                    if let Some(old) = old {
                        old.stop(false).await;
                    }
                    let a = Agent::new(engine, dialer(socket, target), session, news);
                    tokio::spawn(a.clone().run());
                    *current = Some(a);
                }
                AgentOrder::Stop => match old {
                    Some(old) => old.stop(true).await,
                    None => shoal_worker::agent::remove_task_containers(&engine).await,
                },
            }
        })
    });
    let svc = ManagerService::new(dir, node, options, port_defaults, agent)
        .await
        .map_err(|e| DaemonError::Config(format!("starting the manager: {e}")))?;
    let _ = services.set(svc.clone());
    Ok(Some(
        tonic::service::Routes::new(
            ControlServer::new(svc.clone())
                .max_decoding_message_size(shoal_api::MAX_MESSAGE)
                .max_encoding_message_size(shoal_api::MAX_MESSAGE),
        )
        .add_service(
            DispatcherServer::new(svc)
                .max_decoding_message_size(shoal_api::MAX_MESSAGE)
                .max_encoding_message_size(shoal_api::MAX_MESSAGE),
        ),
    ))
}

/// How the agent reaches the managers: a manager's agent its own daemon first (over the
/// local socket), then whichever manager leads; a worker's agent the managers in turn, or
/// the leader one of them named.
fn dialer(socket: PathBuf, target: AgentTarget) -> Dialer {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tls = target.tls.as_ref().map(client_tls);
    Arc::new(move |leader: Option<&str>| {
        let remote = |addr: &str| -> Option<Channel> {
            let endpoint = Endpoint::from_shared(format!("https://{addr}")).ok()?;
            let endpoint = endpoint
                .tls_config(tls.clone()?)
                .ok()?
                .connect_timeout(std::time::Duration::from_secs(2))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(std::time::Duration::from_secs(5));
            Some(endpoint.connect_lazy())
        };
        if let Some(channel) = leader.and_then(remote) {
            return channel;
        }
        // The managers as last written down (they change with promotions and demotions).
        let saved: Option<Vec<String>> = target
            .managers_file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|raw| match serde_json::from_slice(&raw) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!(
                        "the saved managers are damaged ({e}): using the ones joined with"
                    );
                    None
                }
            })
            .filter(|m: &Vec<String>| !m.is_empty());
        let managers = saved.as_ref().unwrap_or(&target.managers);
        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let candidates = managers.len() + usize::from(target.local);
        let pick = n % candidates.max(1);
        if target.local && pick == 0 || managers.is_empty() {
            let socket = socket.clone();
            return Endpoint::from_static("http://[::]:50051").connect_with_connector_lazy(
                tower::service_fn(move |_: Uri| {
                    let socket = socket.clone();
                    async move {
                        let s = tokio::net::UnixStream::connect(socket).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(s))
                    }
                }),
            );
        }
        let addr = &managers[(pick - usize::from(target.local)) % managers.len()];
        remote(addr).unwrap_or_else(|| Endpoint::from_static("http://[::]:1").connect_lazy())
    })
}

/// Bad `--listen-addr`/`--advertise-addr` values are usage errors, found before the
/// daemon is asked.
fn check_addrs(listen: &Option<String>, advertise: &Option<String>) -> anyhow::Result<()> {
    for (flag, value) in [("--listen-addr", listen), ("--advertise-addr", advertise)] {
        if let Some(v) = value {
            shoal_api::cluster::parse_addr(flag, v).map_err(|e| UsageError(e.to_string()))?;
        }
    }
    Ok(())
}

/// `shoal join`.
pub async fn join(
    host: &Host,
    token: String,
    remote: String,
    listen_addr: Option<String>,
    advertise_addr: Option<String>,
) -> anyhow::Result<()> {
    // Bad input is found before the daemon is asked.
    shoal_api::cluster::JoinToken::parse(&token).map_err(|e| UsageError(e.to_string()))?;
    shoal_api::cluster::parse_addr("the manager address", &remote)
        .map_err(|e| UsageError(e.to_string()))?;
    check_addrs(&listen_addr, &advertise_addr)?;
    let mut c = ControlClient::new(connect(host).await?)
        .max_decoding_message_size(shoal_api::MAX_MESSAGE)
        .max_encoding_message_size(shoal_api::MAX_MESSAGE);
    let r = c
        .join_cluster(pc::JoinClusterRequest {
            token,
            remote_addr: remote,
            listen_addr: listen_addr.unwrap_or_default(),
            advertise_addr: advertise_addr.unwrap_or_default(),
        })
        .await
        .map_err(status)?
        .into_inner();
    println!(
        "This node ({}) joined the cluster as a {}.",
        r.node_id, r.role
    );
    Ok(())
}

/// `shoal init --default-addr-pool CIDR... --default-addr-pool-mask-length N`.
#[derive(Debug, Default)]
pub struct AddrPoolArgs {
    /// The pools.
    pub pools: Vec<String>,
    /// The subnet size.
    pub mask_len: Option<u32>,
}

/// `shoal init`.
pub async fn init(
    host: &Host,
    listen_addr: Option<String>,
    advertise_addr: Option<String>,
    force_new_cluster: bool,
    pool: AddrPoolArgs,
) -> anyhow::Result<()> {
    check_addrs(&listen_addr, &advertise_addr)?;
    shoal_api::cluster::AddrPool::parse(&pool.pools, pool.mask_len.unwrap_or(0))
        .map_err(|e| UsageError(e.to_string()))?;
    if force_new_cluster && (!pool.pools.is_empty() || pool.mask_len.is_some()) {
        return Err(UsageError(
            "--force-new-cluster keeps the cluster's address pool: drop --default-addr-pool".into(),
        )
        .into());
    }
    if force_new_cluster && (listen_addr.is_some() || advertise_addr.is_some()) {
        return Err(UsageError(
            "--force-new-cluster keeps this manager's cluster port: drop --listen-addr and \
             --advertise-addr"
                .into(),
        )
        .into());
    }
    let mut c = ControlClient::new(connect(host).await?)
        .max_decoding_message_size(shoal_api::MAX_MESSAGE)
        .max_encoding_message_size(shoal_api::MAX_MESSAGE);
    let r = c
        .init(pc::InitRequest {
            listen_addr: listen_addr.unwrap_or_default(),
            advertise_addr: advertise_addr.unwrap_or_default(),
            force_new_cluster,
            default_addr_pool: pool.pools,
            default_addr_pool_mask_len: pool.mask_len.unwrap_or(0),
        })
        .await
        .map_err(status)?
        .into_inner();
    if force_new_cluster {
        println!(
            "This node ({}) is now the only manager of the cluster, with its services, nodes \
             and secrets. The other managers become workers when they come back: promote \
             nodes to restore fault tolerance (shoal node promote NODE).",
            r.node_id
        );
        return Ok(());
    }
    println!(
        "Cluster initialized: this node ({}) is now its manager.",
        r.node_id
    );
    let t = c
        .join_token(pc::JoinTokenRequest {
            role: "worker".into(),
            rotate: false,
        })
        .await
        .map_err(status)?
        .into_inner();
    println!(
        "To add a worker, run on it:\n    shoal join --token {} {}",
        t.token, t.manager_addr
    );
    println!("To add a manager: \"shoal join-token manager\" prints the command.");
    println!("Create a service with: shoal service create --name web busybox sleep 1000");
    Ok(())
}

/// `shoal join-token worker|manager`.
pub async fn join_token(host: &Host, role: &str, rotate: bool, quiet: bool) -> anyhow::Result<()> {
    let mut c = ControlClient::new(connect(host).await?)
        .max_decoding_message_size(shoal_api::MAX_MESSAGE)
        .max_encoding_message_size(shoal_api::MAX_MESSAGE);
    let t = c
        .join_token(pc::JoinTokenRequest {
            role: role.into(),
            rotate,
        })
        .await
        .map_err(status)?
        .into_inner();
    if quiet {
        println!("{}", t.token);
        return Ok(());
    }
    if rotate {
        println!("The {role} join token was rotated: the old one no longer works.");
    }
    println!(
        "To add a {role} to this cluster, run on it:\n    shoal join --token {} {}",
        t.token, t.manager_addr
    );
    Ok(())
}

/// `shoal client-cert`: a key made here, certified by the manager, written with the
/// cluster CA to `out` for `shoal -H tcp://MANAGER:4242`.
pub async fn client_cert(
    host: &Host,
    name: Option<String>,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    let name = name.unwrap_or_else(|| {
        let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into());
        format!("{user}@{host}")
    });
    let dir = out.unwrap_or_else(crate::client::cert_dir);
    let (key_pem, csr_pem) = shoal_manager::ca::node_key_and_request(&name)
        .map_err(|e| anyhow::anyhow!("making a key: {e}"))?;
    let mut c = ControlClient::new(connect(host).await?)
        .max_decoding_message_size(shoal_api::MAX_MESSAGE)
        .max_encoding_message_size(shoal_api::MAX_MESSAGE);
    let r = c
        .issue_client_cert(pc::ClientCertRequest {
            name: name.clone(),
            csr_pem,
        })
        .await
        .map_err(status)?
        .into_inner();
    write_private_dir(
        &dir,
        &[
            ("ca.pem", r.ca_pem.as_str()),
            ("cert.pem", r.cert_pem.as_str()),
            ("key.pem", key_pem.as_str()),
        ],
    )
    .map_err(|e| anyhow::anyhow!("writing the certificate to {}: {e}", dir.display()))?;
    let until = time::OffsetDateTime::from_unix_timestamp(r.expires_unix as i64)
        .map(|t| t.date().to_string())
        .unwrap_or_default();
    let manager = r
        .managers
        .first()
        .cloned()
        .unwrap_or_else(|| "MANAGER:4242".into());
    println!(
        "Client certificate for {name} in {} (valid until {until}).\nOn the machine to manage \
         the cluster from, put these files in ~/.shoal (or point SHOAL_CERT_PATH at them), then:\n    \
         shoal -H tcp://{manager} service ls",
        dir.display()
    );
    Ok(())
}

/// Writes files into `dir` (made if missing) readable by their owner only.
fn write_private_dir(dir: &Path, files: &[(&str, &str)]) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    for (name, text) in files {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(())
}

/// `shoal info`.
pub async fn info(host: &Host, json: bool) -> anyhow::Result<()> {
    let mut c = ControlClient::new(connect(host).await?)
        .max_decoding_message_size(shoal_api::MAX_MESSAGE)
        .max_encoding_message_size(shoal_api::MAX_MESSAGE);
    let r = c
        .info(pc::InfoRequest {})
        .await
        .map_err(status)?
        .into_inner();
    if json {
        let v = serde_json::json!({
            "node_id": r.node_id,
            "cluster": if r.swarm_active { "active" } else { "inactive" },
            "role": if !r.swarm_active { "none" } else if r.manager { "manager" } else { "worker" },
            "managers": r.managers,
            "nodes": r.nodes,
            "services": r.services,
            "tasks_running": r.tasks_running,
            "advertise_addr": r.advertise_addr,
            "listen_addr": r.listen_addr,
            "ca_fingerprint": r.ca_fingerprint,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("Node ID: {}", r.node_id);
    if !r.swarm_active {
        println!("Cluster: inactive (run \"shoal init\" to start one)");
        return Ok(());
    }
    println!("Cluster: active");
    println!(" Role: {}", if r.manager { "manager" } else { "worker" });
    if r.manager {
        // A worker holds none of the cluster's state: the counts are a manager's to tell.
        println!(" Managers: {}", r.managers);
        println!(" Nodes: {}", r.nodes);
        println!(" Services: {}", r.services);
        println!(" Tasks running: {}", r.tasks_running);
    }
    if !r.advertise_addr.is_empty() {
        println!(
            " Cluster port: {} (listening on {})",
            r.advertise_addr, r.listen_addr
        );
    }
    if !r.ca_fingerprint.is_empty() {
        println!(" CA fingerprint: sha256:{}", r.ca_fingerprint);
    }
    Ok(())
}

/// `shoal leave`.
pub async fn leave(host: &Host, force: bool) -> anyhow::Result<()> {
    let mut c = ControlClient::new(connect(host).await?)
        .max_decoding_message_size(shoal_api::MAX_MESSAGE)
        .max_encoding_message_size(shoal_api::MAX_MESSAGE);
    let r = c
        .leave_cluster(pc::LeaveRequest { force })
        .await
        .map_err(status)?
        .into_inner();
    println!("{}", r.message);
    Ok(())
}
