//! The daemon: opens the engine's state, serves the engine's gRPC services on the local
//! socket, and stops serving on shutdown while containers keep running under their shims.

mod containers;
mod images;
mod upload;
mod volumes;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use shoal_api::engine::containers_server::ContainersServer;
use shoal_api::engine::images_server::ImagesServer;
use shoal_api::engine::volumes_server::VolumesServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

pub use self::containers::{EXIT_CODE_KEY, status};
use crate::engine::{Engine, EngineConfig};
use crate::image::ImageStore;
use crate::runtime::Runtime;

/// How `shoal daemon` was asked to run.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// Persistent state: images, container records, layers (`/var/lib/shoal`).
    pub data_root: PathBuf,
    /// Volatile state: the socket, shim state, netns files (`/run/shoal`).
    pub run_root: PathBuf,
    /// `builtin`, or the name or path of an OCI runtime binary such as `runc` or `crun`.
    pub runtime: String,
    /// The cgroup under which every container's cgroup is made (`shoal`).
    pub cgroup_parent: String,
    /// Registries (HOST:PORT) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Where volume plugins are looked for (empty: shoal's own and Docker's directories).
    pub plugin_dirs: Vec<PathBuf>,
    /// How long a volume plugin's call may take.
    pub plugin_timeout: std::time::Duration,
}

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The options were rejected before anything started.
    #[error("{0}")]
    Config(String),
    /// The daemon failed while running.
    #[error("{0}")]
    Run(String),
}

/// The path of the local socket under a run root.
pub fn socket_path(run_root: &Path) -> PathBuf {
    run_root.join("shoal.sock")
}

/// Runs the daemon until `shutdown` resolves. `extend` adds services of its own (the
/// manager's, which this crate does not know) once the engine is open.
pub async fn run<F, Fut>(
    opts: DaemonOptions,
    shutdown: impl std::future::Future<Output = ()> + Send,
    extend: F,
) -> Result<(), DaemonError>
where
    F: FnOnce(Arc<Engine>) -> Fut,
    Fut: std::future::Future<Output = Result<Option<tonic::service::Routes>, DaemonError>>,
{
    let config = check(&opts)?;
    // One TLS provider for the whole process (registries now, the cluster later).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let socket = socket_path(&opts.run_root);
    let _lock = lock_data_root(&opts.data_root)?;
    if tokio::net::UnixStream::connect(&socket).await.is_ok() {
        return Err(DaemonError::Config(format!(
            "another shoal daemon is already serving {}: stop it first, or give this one another --run-root and --data-root",
            socket.display()
        )));
    }
    let _ = std::fs::remove_file(&socket);

    let images = Arc::new(
        ImageStore::open(&opts.data_root.join("image"))
            .map_err(|e| DaemonError::Config(format!("opening the image store: {e}")))?,
    );
    let network = Arc::new(
        shoal_netoverlay::bridge::BridgeNetwork::open(&opts.run_root.join("net"))
            .await
            .map_err(|e| DaemonError::Config(format!("opening the bridge network: {e}")))?,
    );
    let engine = Engine::open(config, images.clone(), network)
        .await
        .map_err(|e| DaemonError::Config(e.to_string()))?;

    let listener = UnixListener::bind(&socket)
        .map_err(|e| DaemonError::Config(format!("listening on {}: {e}", socket.display())))?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660));
    tracing::info!(socket = %socket.display(), runtime = %opts.runtime, "shoal daemon ready");

    let extra = extend(engine.clone()).await?;
    let mut builder = tonic::transport::Server::builder();
    let router = match extra {
        Some(routes) => builder.add_routes(routes),
        None => builder.add_routes(tonic::service::Routes::default()),
    };
    // Long-lived streams (an agent's session, `logs -f`) would hold a graceful stop
    // forever: after the signal, connections get a moment to finish, then the daemon goes.
    let (stopping_tx, mut stopping_rx) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stopping_tx.send(true);
    };
    let serve = router
        .add_service(
            ContainersServer::new(containers::ContainersService {
                engine: engine.clone(),
            })
            .max_decoding_message_size(shoal_api::MAX_MESSAGE)
            .max_encoding_message_size(shoal_api::MAX_MESSAGE),
        )
        .add_service(
            ImagesServer::new(images::ImagesService {
                engine: engine.clone(),
                insecure_registries: opts.insecure_registries.clone(),
                certs_dirs: vec![
                    opts.data_root.join("certs.d"),
                    PathBuf::from("/etc/shoal/certs.d"),
                ],
            })
            .max_decoding_message_size(shoal_api::MAX_MESSAGE)
            .max_encoding_message_size(shoal_api::MAX_MESSAGE),
        )
        .add_service(VolumesServer::new(volumes::VolumesService {
            engine: engine.clone(),
        }))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown);
    let grace = async move {
        let _ = stopping_rx.wait_for(|s| *s).await;
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    };
    let result = tokio::select! {
        r = serve => r,
        _ = grace => Ok(()),
    };
    let _ = std::fs::remove_file(&socket);
    tracing::info!("shoal daemon stopped; containers keep running under their shims");
    result.map_err(|e| DaemonError::Run(format!("serving the API: {e}")))
}

/// Validates the options and makes the directories.
fn check(opts: &DaemonOptions) -> Result<EngineConfig, DaemonError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(DaemonError::Config(
            "shoal daemon needs root (namespaces, mounts, cgroups, network): run it with sudo"
                .into(),
        ));
    }
    for (flag, dir) in [
        ("--data-root", &opts.data_root),
        ("--run-root", &opts.run_root),
    ] {
        if !dir.is_absolute() {
            return Err(DaemonError::Config(format!(
                "{flag} {} is not an absolute path: give a full path such as /var/lib/shoal",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir).map_err(|e| {
            DaemonError::Config(format!("{flag} {}: cannot create it: {e}", dir.display()))
        })?;
    }
    let runtime =
        Runtime::resolve(&opts.runtime).map_err(|e| DaemonError::Config(e.to_string()))?;
    if opts.cgroup_parent.is_empty()
        || opts.cgroup_parent.starts_with('/')
        || opts
            .cgroup_parent
            .split('/')
            .any(|p| p.is_empty() || p == "..")
    {
        return Err(DaemonError::Config(format!(
            "invalid --cgroup-parent \"{}\": use a relative path such as shoal or lab/host1",
            opts.cgroup_parent
        )));
    }
    let self_exe = std::env::current_exe()
        .map_err(|e| DaemonError::Config(format!("finding the shoal binary: {e}")))?;
    Ok(EngineConfig {
        data_root: opts.data_root.clone(),
        run_root: opts.run_root.clone(),
        runtime,
        cgroup_parent: opts.cgroup_parent.clone(),
        self_exe,
        plugin_dirs: if opts.plugin_dirs.is_empty() {
            crate::volume::VolumesConfig::default_plugin_dirs(&opts.run_root)
        } else {
            opts.plugin_dirs.clone()
        },
        plugin_timeout: opts.plugin_timeout,
    })
}

/// Takes an exclusive lock on the data root, so two daemons never share one.
fn lock_data_root(data_root: &Path) -> Result<std::fs::File, DaemonError> {
    let path = data_root.join("shoal.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| DaemonError::Config(format!("opening {}: {e}", path.display())))?;
    // SAFETY: flock on a descriptor this function owns; the lock lives as long as the file.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    if rc != 0 {
        return Err(DaemonError::Config(format!(
            "--data-root {} is in use by another shoal daemon: stop it, or give this one another data root",
            data_root.display()
        )));
    }
    Ok(file)
}
