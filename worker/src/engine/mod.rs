//! The local container engine: container lifecycle on one node, tying together the image
//! store, the network driver, the runtime bundle and the shim. One file per lifecycle verb
//! (`container_create.rs`, `container_start.rs`, ...), each a single `impl Engine` block.
//!
//! State lives in three places: the persistent record (redb, under the data root), the
//! shim's files (under the run root), and the kernel (mounts, cgroups, links). The record
//! is the source of truth for what exists; a restarted daemon re-attaches to running shims
//! and finishes the bookkeeping of containers that ended while it was away.

mod container_create;
mod container_delete;
mod container_exec;
mod container_logs;
mod container_start;
mod container_stop;
mod names;
pub mod record;
mod restore;
mod rootfs;
mod volumes;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use shoal_netoverlay::bridge::BridgeNetwork;
use tokio::sync::watch;

pub use self::container_exec::{ExecChunk, ExecOptions};
pub use self::container_logs::LogsOptions;
pub use self::record::{ContainerRecord, State};
pub use self::volumes::VolumeUse;
use crate::image::ImageStore;
use crate::runtime::{Runtime, RuntimeError};

/// Errors of the engine, each meant to be read by a user.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No such container or image.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with the current state (name taken, container running).
    #[error("{0}")]
    Conflict(String),
    /// The container's program could not be started.
    #[error("{message}")]
    StartFailed {
        /// What went wrong.
        message: String,
        /// Docker's exit code for it: 125 (daemon), 126 (cannot run), 127 (not found).
        exit_code: i32,
    },
    /// The persistent store failed.
    #[error("container store: {0}")]
    Store(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl From<RuntimeError> for EngineError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Start { message, exit_code } => {
                EngineError::StartFailed { message, exit_code }
            }
            RuntimeError::User(m) => EngineError::StartFailed {
                message: m,
                exit_code: 125,
            },
            RuntimeError::NotFound(_) => EngineError::Invalid(e.to_string()),
            other => EngineError::Internal(other.to_string()),
        }
    }
}

/// How the engine was set up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Persistent state.
    pub data_root: PathBuf,
    /// Volatile state.
    pub run_root: PathBuf,
    /// The runtime new containers use.
    pub runtime: Runtime,
    /// Parent of every container's cgroup.
    pub cgroup_parent: String,
    /// The `shoal` binary, re-executed as shim and exec helper.
    pub self_exe: PathBuf,
    /// Where volume plugins are looked for.
    pub plugin_dirs: Vec<PathBuf>,
    /// How long a volume plugin's call may take.
    pub plugin_timeout: std::time::Duration,
}

/// One container as the engine holds it in memory: its record and a channel that ticks
/// whenever the record changes (for `wait` and `logs -f`).
pub(crate) struct Entry {
    pub(crate) record: Mutex<ContainerRecord>,
    pub(crate) changed: watch::Sender<u64>,
    /// Serialises lifecycle verbs on one container (start, stop, rm).
    pub(crate) op: tokio::sync::Mutex<()>,
}

impl Entry {
    pub(crate) fn snapshot(&self) -> ContainerRecord {
        self.record.lock().expect("record lock poisoned").clone()
    }
}

/// The engine.
pub struct Engine {
    pub(crate) config: EngineConfig,
    pub(crate) images: Arc<ImageStore>,
    pub(crate) network: Arc<BridgeNetwork>,
    /// Overlay and macvlan networks, service discovery and load balancing.
    pub(crate) cluster: Arc<shoal_netoverlay::cluster::ClusterNetworks>,
    pub(crate) store: record::RecordStore,
    /// The node's volumes.
    pub(crate) volumes: crate::volume::Volumes,
    pub(crate) containers: Mutex<HashMap<String, Arc<Entry>>>,
    /// Exit codes of containers removed in the last few minutes, so a `wait` that races
    /// with `--rm` still gets its answer: (id, name, exit code, removed at).
    pub(crate) removed: Mutex<Vec<(String, String, i32, std::time::Instant)>>,
    /// Set while the node is in a cluster.
    link: std::sync::RwLock<Option<Arc<dyn ClusterLink>>>,
    /// The volumes of cluster-wide scope this daemon has told the managers of.
    pub(crate) recorded_volumes: Mutex<std::collections::HashSet<String>>,
}

/// How the engine reaches the managers while the node is in a cluster (the node's agent
/// answers, over its session): for a standalone container's place on an attachable
/// cluster network, and for volumes of cluster-wide scope.
pub trait ClusterLink: Send + Sync {
    /// Joins container `container_id` (named `name`) to `network`: its address there.
    fn attach(
        &self,
        network: String,
        container_id: String,
        name: String,
    ) -> futures::future::BoxFuture<'static, Result<shoal_api::types::AttachmentSpec, String>>;
    /// The container left its cluster networks.
    fn detach(&self, container_id: String) -> futures::future::BoxFuture<'static, ()>;
    /// This node made (or found) `volume`, of cluster-wide scope.
    fn record_volume(
        &self,
        volume: shoal_api::types::Volume,
    ) -> futures::future::BoxFuture<'static, Result<(), String>>;
    /// This node is about to remove volume `name`, of cluster-wide scope: an error (the
    /// managers' refusal) says why it must not.
    fn release_volume(
        &self,
        name: String,
    ) -> futures::future::BoxFuture<'static, Result<(), String>>;
}

/// How long a removed container's exit code stays known to `wait`.
const TOMBSTONE_TTL: std::time::Duration = std::time::Duration::from_secs(300);

impl Engine {
    /// Opens the engine's state and re-attaches to running containers.
    pub async fn open(
        config: EngineConfig,
        images: Arc<ImageStore>,
        network: Arc<BridgeNetwork>,
    ) -> Result<Arc<Self>, EngineError> {
        for dir in [
            config.data_root.join("containers"),
            config.run_root.join("containers"),
            config.run_root.join("netns"),
            config.run_root.join("runtime"),
        ] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| EngineError::Internal(format!("creating {}: {e}", dir.display())))?;
        }
        let store = record::RecordStore::open(&config.data_root.join("containers.redb"))?;
        let volumes = crate::volume::Volumes::open(crate::volume::VolumesConfig {
            root: config.data_root.join("volumes"),
            plugin_dirs: config.plugin_dirs.clone(),
            plugin_timeout: config.plugin_timeout,
        })
        .map_err(|e| EngineError::Store(e.to_string()))?;
        let cluster = Arc::new(
            shoal_netoverlay::cluster::ClusterNetworks::open(
                &config.run_root.join("net").join("cluster"),
            )
            .await
            .map_err(|e| EngineError::Internal(format!("opening the cluster networks: {e}")))?,
        );
        let engine = Arc::new(Engine {
            config,
            images,
            network,
            cluster,
            store,
            volumes,
            containers: Mutex::new(HashMap::new()),
            removed: Mutex::new(Vec::new()),
            link: std::sync::RwLock::new(None),
            recorded_volumes: Mutex::new(Default::default()),
        });
        engine.restore().await?;
        Ok(engine)
    }

    /// Takes the managers' latest views of the networks node `node_id`'s tasks join.
    pub async fn set_network_views(
        &self,
        node_id: &str,
        views: Vec<shoal_api::types::NetworkView>,
    ) {
        self.cluster.set_views(node_id, views).await;
    }

    /// Sets (or, with None, clears) how standalone containers join cluster networks.
    pub fn set_cluster_link(&self, link: Option<Arc<dyn ClusterLink>>) {
        *self.link.write().unwrap_or_else(|e| e.into_inner()) = link;
        // A new cluster (or none) has heard of none of this node's volumes.
        self.recorded_volumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub(crate) fn cluster_link(&self) -> Option<Arc<dyn ClusterLink>> {
        self.link.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Removes every cluster network of this node (it leaves its cluster).
    pub async fn leave_cluster_networks(&self) {
        self.cluster.remove_all().await;
    }

    /// The images this engine runs.
    pub fn images(&self) -> &Arc<ImageStore> {
        &self.images
    }

    /// Every container (running only unless `all`), newest first.
    pub fn list(&self, all: bool) -> Vec<ContainerRecord> {
        let mut out: Vec<_> = self
            .containers
            .lock()
            .expect("containers lock poisoned")
            .values()
            .map(|e| e.snapshot())
            .filter(|r| all || r.is_running())
            .collect();
        out.sort_by_key(|r| std::cmp::Reverse(r.created_unix_nanos));
        out
    }

    /// Finds a container by id, unambiguous id prefix, or name.
    pub(crate) fn find(&self, key: &str) -> Result<Arc<Entry>, EngineError> {
        let key = key.trim_start_matches('/');
        if key.is_empty() {
            return Err(EngineError::Invalid(
                "no container given: name one by its id or name (see \"shoal container ls -a\")"
                    .into(),
            ));
        }
        let map = self.containers.lock().expect("containers lock poisoned");
        if let Some(e) = map.get(key) {
            return Ok(e.clone());
        }
        if let Some(e) = map
            .values()
            .find(|e| e.record.lock().expect("record lock poisoned").name == key)
        {
            return Ok(e.clone());
        }
        let matches: Vec<_> = map
            .iter()
            .filter(|(id, _)| id.starts_with(key))
            .map(|(_, e)| e.clone())
            .collect();
        match matches.len() {
            1 => Ok(matches[0].clone()),
            0 => Err(EngineError::NotFound(format!(
                "no such container: {key} (see \"shoal container ls -a\")"
            ))),
            n => Err(EngineError::Invalid(format!(
                "\"{key}\" matches {n} containers: give more of the id, or the name"
            ))),
        }
    }

    /// A container's current record.
    pub fn inspect(&self, key: &str) -> Result<ContainerRecord, EngineError> {
        Ok(self.find(key)?.snapshot())
    }

    /// The files of container `id`.
    pub(crate) fn paths(&self, id: &str) -> record::Paths {
        record::Paths::new(&self.config.data_root, &self.config.run_root, id)
    }

    /// Changes a container's record, persists it and wakes its watchers.
    pub(crate) fn update(
        &self,
        entry: &Entry,
        f: impl FnOnce(&mut ContainerRecord),
    ) -> Result<ContainerRecord, EngineError> {
        let snapshot = {
            let mut r = entry.record.lock().expect("record lock poisoned");
            f(&mut r);
            r.clone()
        };
        self.store.put(&snapshot)?;
        entry.changed.send_modify(|v| *v += 1);
        Ok(snapshot)
    }

    /// Whether a container uses the image `image_id` (images in use are not removed).
    pub fn image_in_use(&self, image_id: &str) -> bool {
        self.containers
            .lock()
            .expect("containers lock poisoned")
            .values()
            .any(|e| e.record.lock().expect("record lock poisoned").image_id == image_id)
    }

    /// Waits until the container has exited and returns its exit code.
    pub async fn wait(&self, key: &str) -> Result<i32, EngineError> {
        let entry = match self.find(key) {
            Ok(e) => e,
            Err(e) => return self.removed_exit_code(key).ok_or(e),
        };
        let mut rx = entry.changed.subscribe();
        loop {
            let r = entry.snapshot();
            if let Some(code) = r.exit_code() {
                return Ok(code);
            }
            if rx.changed().await.is_err() {
                return Err(EngineError::NotFound(format!(
                    "container {} was removed while waiting",
                    r.name
                )));
            }
        }
    }
}

impl Engine {
    /// Remembers the exit code of a container being removed.
    pub(crate) fn bury(&self, record: &ContainerRecord) {
        let mut removed = self.removed.lock().expect("tombstones lock poisoned");
        removed.retain(|t| t.3.elapsed() < TOMBSTONE_TTL);
        removed.push((
            record.id.clone(),
            record.name.clone(),
            record.exit_code().unwrap_or(137),
            std::time::Instant::now(),
        ));
    }

    fn removed_exit_code(&self, key: &str) -> Option<i32> {
        let removed = self.removed.lock().expect("tombstones lock poisoned");
        removed
            .iter()
            .rev()
            .find(|t| {
                t.3.elapsed() < TOMBSTONE_TTL
                    && (t.1 == key || (key.len() >= 4 && t.0.starts_with(key)))
            })
            .map(|t| t.2)
    }
}

/// Nanoseconds since the Unix epoch.
pub(crate) fn now_nanos() -> i64 {
    crate::shim::now_nanos()
}
