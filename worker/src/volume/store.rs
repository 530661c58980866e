//! The node's volumes on disk (`<data-root>/volumes.redb`): each volume's record, and the
//! mount each volume has while containers use it (the driver's mount id, where the data
//! is, and which containers hold it). Kept across daemon restarts, so a restarted daemon
//! neither mounts a volume twice nor unmounts one its live containers still use.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use shoal_api::types::Volume;

use super::VolumeError;

const VOLUMES: TableDefinition<&str, &[u8]> = TableDefinition::new("volumes");
const MOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("mounts");

/// A volume's mount on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountState {
    /// The id the driver was given.
    pub id: String,
    /// The host path the driver gave.
    pub path: PathBuf,
    /// The containers that hold it.
    pub users: BTreeSet<String>,
}

/// The persistent tables.
pub struct Store {
    db: Database,
}

fn err(e: impl std::fmt::Display) -> VolumeError {
    VolumeError::Store(e.to_string())
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Store, VolumeError> {
        let db = Database::create(path).map_err(err)?;
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(VOLUMES).map_err(err)?;
        tx.open_table(MOUNTS).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Store { db })
    }

    fn get<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, VolumeError> {
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(table).map_err(err)?;
        match t.get(key).map_err(err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(|e| {
                VolumeError::Store(format!("the record of volume {key} is damaged: {e}"))
            })?)),
            None => Ok(None),
        }
    }

    fn put<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: Option<&T>,
    ) -> Result<(), VolumeError> {
        let raw = value.map(serde_json::to_vec).transpose().map_err(err)?;
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut t = tx.open_table(table).map_err(err)?;
            match &raw {
                Some(r) => {
                    t.insert(key, r.as_slice()).map_err(err)?;
                }
                None => {
                    t.remove(key).map_err(err)?;
                }
            }
        }
        tx.commit().map_err(err)
    }

    /// The volume `name`.
    pub fn volume(&self, name: &str) -> Result<Option<Volume>, VolumeError> {
        self.get(VOLUMES, name)
    }

    /// Every volume, by name.
    pub fn volumes(&self) -> Result<Vec<Volume>, VolumeError> {
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(VOLUMES).map_err(err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(err)? {
            let (k, v) = item.map_err(err)?;
            out.push(serde_json::from_slice(v.value()).map_err(|e| {
                VolumeError::Store(format!(
                    "the record of volume {} is damaged: {e}",
                    k.value()
                ))
            })?);
        }
        Ok(out)
    }

    /// Writes (or, with None, forgets) a volume.
    pub fn set_volume(&self, name: &str, v: Option<&Volume>) -> Result<(), VolumeError> {
        self.put(VOLUMES, name, v)
    }

    /// The mount of volume `name`, if it has one.
    pub fn mount(&self, name: &str) -> Result<Option<MountState>, VolumeError> {
        self.get(MOUNTS, name)
    }

    /// Writes (or, with None, forgets) the mount of volume `name`.
    pub fn set_mount(&self, name: &str, m: Option<&MountState>) -> Result<(), VolumeError> {
        self.put(MOUNTS, name, m)
    }
}
