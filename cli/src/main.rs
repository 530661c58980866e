//! `shoal`: the node daemon and the command-line client in one binary.

mod args;
mod client;
mod cluster_cmd;
mod container_cmd;
mod container_logs;
mod container_run;
mod dev_cmd;
mod image_cmd;
mod network_cmd;
mod node_cmd;
mod output;
mod progress;
mod service;
mod service_flags;
mod volume_cmd;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::args::UsageError;
use crate::client::Host;

/// The exit code of a command that failed on the daemon's side.
const EXIT_FAILURE: i32 = 1;
/// The exit code of a usage error (sysexits' EX_USAGE).
const EXIT_USAGE: i32 = 64;

/// Ends the process with a given code, after printing nothing more (the container's own
/// exit code of a foreground run, for example).
#[derive(Debug)]
pub struct ExitCode(pub i32);

impl std::fmt::Display for ExitCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {}", self.0)
    }
}

impl std::error::Error for ExitCode {}

/// An error with its own exit code (125, 126, 127 for a failed `run`).
#[derive(Debug)]
pub struct CodedError(pub i32, pub String);

impl std::fmt::Display for CodedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for CodedError {}

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "A cluster orchestrator: node daemon and client in one binary"
)]
struct Cli {
    /// The daemon to talk to: a socket path, unix:///PATH or tcp://HOST:PORT.
    #[arg(short = 'H', long = "host", global = true, env = "SHOAL_HOST", default_value = client::DEFAULT_SOCKET)]
    host: String,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process; the size of `run`'s flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the node daemon.
    Daemon(DaemonArgs),
    /// Run a one-node cluster in the foreground with a demo service; Ctrl-C cleans up.
    Dev(dev_cmd::DevArgs),
    /// Manage images.
    #[command(subcommand)]
    Image(image_cmd::ImageCommand),
    /// Manage containers.
    #[command(subcommand)]
    Container(container_cmd::ContainerCommand),
    /// Make this node the first manager of a new cluster.
    Init {
        /// Where the cluster port listens: IP, IP:PORT or :PORT (default: the daemon's
        /// --listen-addr, 0.0.0.0:4242).
        #[arg(long)]
        listen_addr: Option<String>,
        /// The address other nodes reach this one at (default: the listening address, or
        /// this host's first non-loopback IPv4 address).
        #[arg(long)]
        advertise_addr: Option<String>,
        /// On a manager of a cluster that lost its quorum: make a new one-manager cluster
        /// of this manager's state (the other managers come back as workers).
        #[arg(long)]
        force_new_cluster: bool,
        /// Where network subnets come from, as a CIDR (repeat for more; default
        /// 10.0.0.0/8).
        #[arg(long = "default-addr-pool")]
        default_addr_pool: Vec<String>,
        /// The prefix length of each network's subnet from the pool (default 24).
        #[arg(long = "default-addr-pool-mask-length")]
        default_addr_pool_mask_length: Option<u32>,
    },
    /// Join this node to a cluster, as a worker or a manager (the token says which).
    Join {
        /// The token from "shoal join-token worker" (or manager) on a manager.
        #[arg(long)]
        token: String,
        /// A manager's cluster address, HOST:PORT.
        manager: String,
        /// Managers: where this node's cluster port listens (IP, IP:PORT or :PORT).
        #[arg(long)]
        listen_addr: Option<String>,
        /// Managers: the address the others reach this node at.
        #[arg(long)]
        advertise_addr: Option<String>,
    },
    /// Leave the cluster: this node's tasks stop, its certificate (and a manager's Raft
    /// state) is deleted. A manager whose leaving would cost the cluster its quorum refuses.
    Leave {
        /// Leave even so: the last manager (the cluster's state is erased), a manager
        /// without whom Raft loses its quorum, or a node the managers cannot be told about.
        #[arg(short, long)]
        force: bool,
    },
    /// Print the token a node joins the cluster with.
    JoinToken {
        /// `worker` or `manager`.
        #[arg(value_parser = ["worker", "manager"])]
        role: String,
        /// Make a new token; the old one stops working.
        #[arg(long)]
        rotate: bool,
        /// Print the token only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Certify a key for managing the cluster from elsewhere: `shoal -H tcp://MANAGER:4242`
    /// with the files it writes (run on a manager).
    ClientCert {
        /// Who the certificate is for, as the managers' logs show it (default: USER@HOST).
        #[arg(long)]
        name: Option<String>,
        /// Where to write ca.pem, cert.pem and key.pem (default: $SHOAL_CERT_PATH, or
        /// ~/.shoal).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Show the cluster and this node's part in it.
    Info {
        /// `text` (default) or `json`.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        format: String,
    },
    /// Manage services.
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Manage nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Manage networks.
    #[command(subcommand)]
    Network(network_cmd::NetworkCommand),
    /// Manage this node's volumes.
    #[command(subcommand)]
    Volume(volume_cmd::VolumeCommand),
    /// The volume plugins this node found.
    #[command(subcommand)]
    Plugin(volume_cmd::PluginCommand),
    /// Run a container (shoal container run).
    Run(container_cmd::RunArgs),
    /// Create a container (shoal container create).
    Create(container_cmd::RunArgs),
    /// Start containers (shoal container start).
    Start {
        /// Containers by id or name.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Wait for containers to exit (shoal container wait).
    Wait {
        /// Containers by id or name.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Show containers in detail (shoal container inspect).
    Inspect {
        /// Containers by id or name.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// List containers (shoal container ls).
    Ps(container_cmd::LsArgs),
    /// Show a container's logs (shoal container logs).
    Logs(container_cmd::LogsArgs),
    /// Run a command in a running container (shoal container exec).
    Exec(container_cmd::ExecArgs),
    /// Stop containers (shoal container stop).
    Stop(container_cmd::StopArgs),
    /// Signal containers (shoal container kill).
    Kill(container_cmd::KillArgs),
    /// Remove containers (shoal container rm).
    Rm(container_cmd::RmArgs),
    /// List images (shoal image ls).
    Images(image_cmd::LsArgs),
    /// Pull an image (shoal image pull).
    Pull(image_cmd::PullArgs),
    /// Push an image (shoal image push).
    Push(image_cmd::PushArgs),
}

#[derive(Subcommand)]
enum NodeCommand {
    /// List nodes.
    #[command(alias = "list")]
    Ls {
        /// `table` (default) or `json`.
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
    },
    /// Show nodes in detail, as JSON.
    Inspect {
        /// Nodes by id or hostname.
        #[arg(required = true)]
        nodes: Vec<String>,
        /// `json` (the only format).
        #[arg(long, default_value = "json", value_parser = ["json"])]
        format: String,
    },
    /// Change a node's availability or labels.
    Update {
        /// active, pause or drain.
        #[arg(long)]
        availability: Option<String>,
        /// Add a label K=V.
        #[arg(long = "label-add")]
        label_add: Vec<String>,
        /// Remove a label.
        #[arg(long = "label-rm")]
        label_rm: Vec<String>,
        /// The node (id or hostname).
        node: String,
    },
    /// Make nodes managers (they join Raft, as learners first, then voters).
    Promote {
        /// Nodes by id or hostname.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make managers workers (refused when it would cost the cluster its quorum).
    Demote {
        /// Nodes by id or hostname.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove nodes from the cluster: their certificates stop working, their tasks run
    /// elsewhere.
    #[command(alias = "remove")]
    Rm {
        /// Remove a node that is up, too (it stops its tasks and leaves).
        #[arg(short, long)]
        force: bool,
        /// Nodes by id or hostname.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

#[derive(clap::Args)]
struct DaemonArgs {
    /// Persistent state: images, containers, layers.
    #[arg(long, default_value = "/var/lib/shoal")]
    data_root: PathBuf,
    /// Volatile state: the socket, shims, network namespaces.
    #[arg(long, default_value = "/run/shoal")]
    run_root: PathBuf,
    /// `builtin`, or an OCI runtime binary: runc, crun, or a path.
    #[arg(long, default_value = "builtin")]
    runtime: String,
    /// The cgroup every container's cgroup goes under.
    #[arg(long, default_value = "shoal")]
    cgroup_parent: String,
    /// A registry (HOST:PORT) to reach over plain HTTP; repeatable.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// A directory volume plugins are found in (NAME.sock, NAME.spec, NAME.json);
    /// repeatable (default: <run-root>/plugins, /run/docker/plugins, /etc/docker/plugins,
    /// /usr/lib/docker/plugins).
    #[arg(long = "plugin-dir")]
    plugin_dirs: Vec<PathBuf>,
    /// How long a volume plugin's call may take (Docker allows 2 minutes).
    #[arg(long, default_value = "2m")]
    plugin_timeout: String,
    /// Log level: error, warn, info, debug, trace.
    #[arg(
        long,
        default_value = "info,openraft=warn,openraft::replication=off,openraft::engine::handler::replication_handler=off,openraft::raft::responder=error"
    )]
    log_level: String,
    /// Where a manager's cluster port listens: IP, IP:PORT or :PORT.
    #[arg(long, default_value = "0.0.0.0:4242")]
    listen_addr: String,
    /// The address other nodes reach this one at (default: the listening address, or this
    /// host's first non-loopback IPv4 address).
    #[arg(long)]
    advertise_addr: Option<String>,
    /// The name this node goes by in the cluster (default: the host's name).
    #[arg(long)]
    hostname: Option<String>,
    /// Managers: the shortest Raft election timeout (the longest is twice that, leader
    /// heartbeats come three times as often); a killed leader is replaced after about 3×.
    #[arg(long, default_value = "100ms")]
    election_timeout: String,
    /// Managers: how often agents heartbeat.
    #[arg(long, default_value = "1s")]
    node_heartbeat: String,
    /// Managers: heartbeats a node may miss before it is marked down and its tasks run
    /// elsewhere.
    #[arg(long, default_value_t = 3)]
    node_heartbeat_misses: u32,
}

fn main() {
    if let Some(code) = shoal_worker::reexec::dispatch() {
        std::process::exit(code);
    }
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(()) => 0,
        Err(e) => report(e),
    };
    std::process::exit(code);
}

/// Prints an error once and picks the exit code.
fn report(e: anyhow::Error) -> i32 {
    if let Some(ExitCode(c)) = e.downcast_ref::<ExitCode>() {
        return *c;
    }
    eprintln!("error: {e}");
    if e.downcast_ref::<UsageError>().is_some() {
        return EXIT_USAGE;
    }
    if let Some(CodedError(c, _)) = e.downcast_ref::<CodedError>() {
        return *c;
    }
    EXIT_FAILURE
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Daemon(a) => runtime.block_on(daemon(a)),
        Command::Dev(a) => runtime.block_on(dev(a)),
        command => {
            let host = Host::parse(&cli.host)?;
            // A client piped into `head` should end quietly when the pipe closes, as Unix
            // tools do, not panic on the failed print. The daemon keeps ignoring SIGPIPE.
            // SAFETY: restoring the default disposition of a signal is async-signal-safe
            // and touches no memory; no other thread runs yet besides the idle runtime's.
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
            // The one TLS provider (remote clients speak TLS to a manager's cluster port).
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            runtime.block_on(client_command(host, command))
        }
    }
}

async fn client_command(host: Host, command: Command) -> anyhow::Result<()> {
    use container_cmd::ContainerCommand as C;
    use image_cmd::ImageCommand as I;
    match command {
        Command::Daemon(_) | Command::Dev(_) => unreachable!("handled before"),
        Command::Image(c) => image_cmd::run(&host, c).await,
        Command::Container(c) => container_cmd::run(&host, c).await,
        Command::Init {
            listen_addr,
            advertise_addr,
            force_new_cluster,
            default_addr_pool,
            default_addr_pool_mask_length,
        } => {
            let pool = cluster_cmd::AddrPoolArgs {
                pools: default_addr_pool,
                mask_len: default_addr_pool_mask_length,
            };
            cluster_cmd::init(&host, listen_addr, advertise_addr, force_new_cluster, pool).await
        }
        Command::Join {
            token,
            manager,
            listen_addr,
            advertise_addr,
        } => cluster_cmd::join(&host, token, manager, listen_addr, advertise_addr).await,
        Command::Leave { force } => cluster_cmd::leave(&host, force).await,
        Command::JoinToken {
            role,
            rotate,
            quiet,
        } => cluster_cmd::join_token(&host, &role, rotate, quiet).await,
        Command::ClientCert { name, out } => cluster_cmd::client_cert(&host, name, out).await,
        Command::Info { format } => cluster_cmd::info(&host, format == "json").await,
        Command::Service(c) => service::run(&host, c).await,
        Command::Network(c) => network_cmd::run(&host, c).await,
        Command::Volume(c) => volume_cmd::run(&host, c).await,
        Command::Plugin(c) => volume_cmd::run_plugin(&host, c).await,
        Command::Node(NodeCommand::Ls { format }) => {
            node_cmd::node_ls(&host, format == "json").await
        }
        Command::Node(NodeCommand::Inspect { nodes, .. }) => {
            node_cmd::node_inspect(&host, nodes).await
        }
        Command::Node(NodeCommand::Update {
            availability,
            label_add,
            label_rm,
            node,
        }) => node_cmd::node_update(&host, node, availability, label_add, label_rm).await,
        Command::Node(NodeCommand::Promote { nodes }) => {
            node_cmd::node_role(&host, nodes, "manager").await
        }
        Command::Node(NodeCommand::Demote { nodes }) => {
            node_cmd::node_role(&host, nodes, "worker").await
        }
        Command::Node(NodeCommand::Rm { force, nodes }) => {
            node_cmd::node_rm(&host, nodes, force).await
        }
        Command::Run(a) => container_cmd::run(&host, C::Run(a)).await,
        Command::Create(a) => container_cmd::run(&host, C::Create(a)).await,
        Command::Start { containers } => container_cmd::run(&host, C::Start { containers }).await,
        Command::Wait { containers } => container_cmd::run(&host, C::Wait { containers }).await,
        Command::Inspect { containers } => {
            container_cmd::run(&host, C::Inspect { containers }).await
        }
        Command::Ps(a) => container_cmd::run(&host, C::Ls(a)).await,
        Command::Logs(a) => container_cmd::run(&host, C::Logs(a)).await,
        Command::Exec(a) => container_cmd::run(&host, C::Exec(a)).await,
        Command::Stop(a) => container_cmd::run(&host, C::Stop(a)).await,
        Command::Kill(a) => container_cmd::run(&host, C::Kill(a)).await,
        Command::Rm(a) => container_cmd::run(&host, C::Rm(a)).await,
        Command::Images(a) => image_cmd::run(&host, I::Ls(a)).await,
        Command::Pull(a) => image_cmd::run(&host, I::Pull(a)).await,
        Command::Push(a) => image_cmd::run(&host, I::Push(a)).await,
    }
}

async fn dev(a: dev_cmd::DevArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let temporary = a.data_root.is_none();
    let data_root = match &a.data_root {
        Some(d) => d.clone(),
        None => {
            let tag = shoal_api::id::random_hex(4)
                .map_err(|e| anyhow::anyhow!("making a temporary data root: {e}"))?;
            std::env::temp_dir().join(format!("shoal-dev-{tag}"))
        }
    };
    let host = client::Host::Unix(shoal_worker::daemon::socket_path(&a.run_root));
    let args = DaemonArgs {
        data_root: data_root.clone(),
        run_root: a.run_root.clone(),
        runtime: a.runtime.clone(),
        cgroup_parent: "shoal-dev".into(),
        insecure_registries: Vec::new(),
        plugin_dirs: Vec::new(),
        plugin_timeout: "2m".into(),
        log_level: "warn".into(),
        // A one-node cluster nobody joins: the cluster port on loopback, any free port.
        listen_addr: "127.0.0.1:0".into(),
        advertise_addr: None,
        hostname: None,
        election_timeout: "100ms".into(),
        node_heartbeat: "1s".into(),
        node_heartbeat_misses: 3,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(run_daemon(args, async move {
        let _ = stop_rx.await;
    }));
    let driven = dev_cmd::drive(host, started, a.exit_after).await;
    let _ = stop_tx.send(());
    let stopped = daemon
        .await
        .map_err(|e| anyhow::anyhow!("daemon task: {e}"))?;
    // The containers' cgroups are gone with them; the parent made for dev goes too.
    if let Ok(roots) = std::fs::read_dir("/sys/fs/cgroup") {
        for root in roots.flatten() {
            let _ = std::fs::remove_dir(root.path().join("shoal-dev"));
        }
    }
    if temporary {
        let _ = std::fs::remove_dir_all(&data_root);
    }
    driven.and(stopped)
}

async fn daemon(a: DaemonArgs) -> anyhow::Result<()> {
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    run_daemon(a, shutdown).await
}

async fn run_daemon(
    a: DaemonArgs,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&a.log_level).map_err(|_| {
        UsageError(format!(
            "invalid --log-level \"{}\": use error, warn, info, debug or trace",
            a.log_level
        ))
    })?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let plugin_timeout = service_flags::millis("--plugin-timeout", &a.plugin_timeout)
        .ok()
        .filter(|ms| (100..=3_600_000).contains(ms))
        .map(std::time::Duration::from_millis)
        .ok_or_else(|| {
            UsageError(format!(
                "invalid --plugin-timeout \"{}\": give a duration from 100ms to 1h, such as 30s",
                a.plugin_timeout
            ))
        })?;
    let opts = shoal_worker::daemon::DaemonOptions {
        data_root: a.data_root,
        run_root: a.run_root,
        runtime: a.runtime,
        cgroup_parent: a.cgroup_parent,
        insecure_registries: a.insecure_registries,
        plugin_dirs: a.plugin_dirs,
        plugin_timeout,
    };
    let usage = |e: shoal_api::cluster::ClusterInputError| UsageError(e.to_string());
    let port_defaults = shoal_manager::server::PortDefaults {
        listen: shoal_api::cluster::parse_addr("--listen-addr", &a.listen_addr).map_err(usage)?,
        advertise: a
            .advertise_addr
            .as_deref()
            .map(|v| shoal_api::cluster::parse_addr("--advertise-addr", v))
            .transpose()
            .map_err(usage)?,
    };
    if let Some(h) = &a.hostname
        && (h.is_empty()
            || h.len() > 63
            || !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
    {
        return Err(UsageError(format!(
            "invalid --hostname \"{h}\": letters, digits, '-' and '.', at most 63"
        ))
        .into());
    }
    let duration = |flag: &str, v: &str, min: u64, max: u64| {
        service_flags::millis(flag, v)
            .ok()
            .filter(|ms| (min..=max).contains(ms))
            .map(std::time::Duration::from_millis)
            .ok_or_else(|| {
                UsageError(format!(
                    "invalid {flag} \"{v}\": give a duration between {min} ms and {max} ms, such as 100ms or 2s"
                ))
            })
    };
    if a.node_heartbeat_misses == 0 || a.node_heartbeat_misses > 100 {
        return Err(UsageError(format!(
            "invalid --node-heartbeat-misses {}: give 1 to 100",
            a.node_heartbeat_misses
        ))
        .into());
    }
    let manager_options = shoal_manager::server::ManagerOptions {
        heartbeat_period: duration("--node-heartbeat", &a.node_heartbeat, 50, 60_000)?,
        heartbeat_misses: a.node_heartbeat_misses,
        raft: shoal_manager::cluster::Timings::from_election(duration(
            "--election-timeout",
            &a.election_timeout,
            30,
            60_000,
        )?),
    };
    let node = cluster_cmd::self_node(&opts.data_root, a.hostname.as_deref())?;
    let run_root = opts.run_root.clone();
    let manager_dir = opts.data_root.join("manager");
    let extend = move |engine| {
        cluster_cmd::manager_routes(
            engine,
            node,
            manager_dir,
            run_root,
            port_defaults,
            manager_options,
        )
    };
    shoal_worker::daemon::run(opts, shutdown, extend)
        .await
        .map_err(|e| match e {
            shoal_worker::daemon::DaemonError::Config(m) => {
                anyhow::Error::new(CodedError(EXIT_USAGE, m))
            }
            other => anyhow::anyhow!(other),
        })
}
