//! The engine's gRPC service on the local socket, and the daemon's main loop.

use std::path::PathBuf;

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

/// Runs the daemon until `shutdown` resolves.
pub async fn run(
    opts: DaemonOptions,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), DaemonError> {
    let _ = (opts, shutdown);
    Err(DaemonError::Run("not built yet".into()))
}
