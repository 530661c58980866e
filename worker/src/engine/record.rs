//! What the engine remembers about a container, persisted in `containers.redb` under the
//! data root so that a restarted daemon knows every container and re-attaches to the ones
//! its shims still run.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use shoal_api::types::ContainerSpec;

use super::EngineError;
use crate::runtime::Runtime;

const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");

/// Where a container is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// Created, never started.
    Created,
    /// Its program runs under a shim.
    Running {
        /// The container's init on the host.
        pid: i32,
        /// Its shim.
        shim_pid: i32,
        /// When it started.
        started_unix_nanos: i64,
    },
    /// It ran and ended, or failed to start.
    Exited {
        /// The exit code (128 + signal when killed).
        exit_code: i32,
        /// When it started, if it did.
        started_unix_nanos: i64,
        /// When it ended.
        finished_unix_nanos: i64,
        /// Whether the OOM killer ended it.
        oom_killed: bool,
        /// Why it failed to start or was lost.
        error: String,
    },
}

/// One container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// 64 hex digits.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// The image as the user named it.
    pub image: String,
    /// The image's id.
    pub image_id: String,
    /// What the user asked for.
    pub spec: ContainerSpec,
    /// The program and its arguments.
    pub command: Vec<String>,
    /// The runtime that runs it.
    pub runtime: Runtime,
    /// When it was created.
    pub created_unix_nanos: i64,
    /// Its state.
    pub state: State,
    /// The address on its network, if any.
    pub ip_address: String,
    /// Set while `rm` is under way.
    #[serde(default)]
    pub removing: bool,
    /// The volumes made for it without a name (`rm -v` removes them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anonymous_volumes: Vec<String>,
}

impl ContainerRecord {
    /// Whether the program runs.
    pub fn is_running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }

    /// The exit code, when it has ended.
    pub fn exit_code(&self) -> Option<i32> {
        match self.state {
            State::Exited { exit_code, .. } => Some(exit_code),
            _ => None,
        }
    }
}

/// The persistent table of containers.
pub struct RecordStore {
    db: Database,
}

impl RecordStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, EngineError> {
        let db = Database::create(path).map_err(|e| EngineError::Store(e.to_string()))?;
        let tx = db
            .begin_write()
            .map_err(|e| EngineError::Store(e.to_string()))?;
        tx.open_table(CONTAINERS)
            .map_err(|e| EngineError::Store(e.to_string()))?;
        tx.commit().map_err(|e| EngineError::Store(e.to_string()))?;
        Ok(RecordStore { db })
    }

    /// Every container.
    pub fn load_all(&self) -> Result<Vec<ContainerRecord>, EngineError> {
        let err = |e: &dyn std::fmt::Display| EngineError::Store(e.to_string());
        let tx = self.db.begin_read().map_err(|e| err(&e))?;
        let table = tx.open_table(CONTAINERS).map_err(|e| err(&e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| err(&e))? {
            let (_, v) = entry.map_err(|e| err(&e))?;
            match serde_json::from_slice::<ContainerRecord>(v.value()) {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!("skipping unreadable container record: {e}"),
            }
        }
        Ok(out)
    }

    /// Writes a container.
    pub fn put(&self, record: &ContainerRecord) -> Result<(), EngineError> {
        let err = |e: &dyn std::fmt::Display| EngineError::Store(e.to_string());
        let raw = serde_json::to_vec(record).map_err(|e| err(&e))?;
        let tx = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut table = tx.open_table(CONTAINERS).map_err(|e| err(&e))?;
            table
                .insert(record.id.as_str(), raw.as_slice())
                .map_err(|e| err(&e))?;
        }
        tx.commit().map_err(|e| err(&e))
    }

    /// Forgets a container.
    pub fn delete(&self, id: &str) -> Result<(), EngineError> {
        let err = |e: &dyn std::fmt::Display| EngineError::Store(e.to_string());
        let tx = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut table = tx.open_table(CONTAINERS).map_err(|e| err(&e))?;
            table.remove(id).map_err(|e| err(&e))?;
        }
        tx.commit().map_err(|e| err(&e))
    }
}

/// The directories and files of one container.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `<data-root>/containers/<id>`: bundle, upper and work dirs, log.
    pub dir: PathBuf,
    /// `<run-root>/containers/<id>`: shim config, state, exit record, /etc files.
    pub state_dir: PathBuf,
}

impl Paths {
    /// The paths of container `id`.
    pub fn new(data_root: &Path, run_root: &Path, id: &str) -> Self {
        Paths {
            dir: data_root.join("containers").join(id),
            state_dir: run_root.join("containers").join(id),
        }
    }

    /// The overlay mount point, which is the bundle's root.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// The overlay's upper (writable) layer.
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }

    /// The overlay's work directory.
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }

    /// The log file.
    pub fn log(&self) -> PathBuf {
        self.dir.join("container.log")
    }
}
