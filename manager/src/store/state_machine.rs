//! The state machine: versioned objects in redb (table `objects`, key `kind/id`), with the
//! last applied log id and the membership beside them, and the current snapshot kept whole.
//! Every object is also kept in memory decoded as its registered type
//! ([`crate::objects::KINDS`]), so that reads (the leader takes a snapshot of the whole
//! store on every pass) parse no JSON and share the values.

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::object::{AnyObject, ObjectError};
use super::snapshot::Snapshot as StoreSnapshot;
use super::{Command, CommandResult, Object, ObjectEvent, Stored, TypeConfig, Versioned};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

type Result<T> = std::result::Result<T, StorageError<u64>>;
type Membership = StoredMembership<u64, openraft::BasicNode>;

fn rs<E: std::error::Error + 'static>(e: E) -> StorageError<u64> {
    StorageIOError::read_state_machine(&e).into()
}

fn ws<E: std::error::Error + 'static>(e: E) -> StorageError<u64> {
    StorageIOError::write_state_machine(&e).into()
}

/// What a snapshot holds.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    last_applied: Option<LogId<u64>>,
    membership: Membership,
    objects: Vec<(String, Stored)>,
}

/// An object as the state machine holds it in memory.
#[derive(Debug, Clone)]
pub enum Held {
    /// Decoded as its kind's type.
    Typed(Arc<dyn AnyObject>),
    /// Of a kind no type is registered for: kept as written.
    Raw(Arc<serde_json::Value>),
    /// Of a registered kind, but it does not decode as its type.
    Malformed {
        /// As written.
        raw: Arc<serde_json::Value>,
        /// The decoder's complaint.
        error: String,
    },
}

impl Held {
    /// Decodes a stored value of `kind`.
    fn decode(kind: &str, value: serde_json::Value) -> Held {
        match crate::objects::KINDS.iter().find(|k| k.name == kind) {
            None => Held::Raw(Arc::new(value)),
            Some(k) => match k.decode(value.clone()) {
                Ok(object) => Held::Typed(object),
                Err(error) => Held::Malformed {
                    raw: Arc::new(value),
                    error,
                },
            },
        }
    }

    /// The stored encoding.
    fn raw(&self) -> std::result::Result<serde_json::Value, ObjectError> {
        match self {
            Held::Typed(o) => o.encode(),
            Held::Raw(v) | Held::Malformed { raw: v, .. } => Ok(v.as_ref().clone()),
        }
    }

    /// The value as a `T` (an object of `T`'s kind that does not decode is an error).
    fn typed<T: Object>(&self, id: &str) -> std::result::Result<T, ObjectError> {
        let malformed = |message: String| ObjectError::Malformed {
            kind: T::KIND.to_string(),
            id: id.to_string(),
            message,
        };
        match self {
            Held::Typed(o) => o
                .as_any()
                .downcast_ref::<T>()
                .cloned()
                .ok_or_else(|| malformed(format!("it is a {}", o.kind()))),
            Held::Malformed { error, .. } => Err(malformed(error.clone())),
            Held::Raw(_) => Err(malformed(format!("{} is not a registered kind", T::KIND))),
        }
    }
}

/// One object in memory.
#[derive(Debug, Clone)]
struct CacheEntry {
    version: u64,
    held: Held,
}

/// The objects in memory: kind, then id.
type Cache = HashMap<String, BTreeMap<String, CacheEntry>>;

/// The state machine; clones share the database and the event channel.
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    events: broadcast::Sender<ObjectEvent>,
    snapshots: Arc<AtomicU64>,
    /// The objects table, decoded.
    cache: Arc<RwLock<Cache>>,
}

fn key(kind: &str, id: &str) -> String {
    format!("{kind}/{id}")
}

/// Fills `cache` from `objects` (key `kind/id`).
fn load_cache(objects: impl IntoIterator<Item = (String, Stored)>) -> Cache {
    let mut cache = Cache::new();
    for (k, v) in objects {
        let Some((kind, id)) = k.split_once('/') else {
            continue;
        };
        let held = Held::decode(kind, v.value);
        cache.entry(kind.to_string()).or_default().insert(
            id.to_string(),
            CacheEntry {
                version: v.version,
                held,
            },
        );
    }
    cache
}

impl StateMachine {
    /// Opens (or creates) the state machine at `path`.
    pub fn open(path: &Path) -> std::result::Result<StateMachine, redb::Error> {
        let db = Database::create(path)?;
        let tx = db.begin_write()?;
        tx.open_table(OBJECTS)?;
        tx.open_table(SM_META)?;
        tx.open_table(SNAPSHOT)?;
        tx.commit()?;
        let mut stored = Vec::new();
        {
            let tx = db.begin_read()?;
            let t = tx.open_table(OBJECTS)?;
            for item in t.iter()? {
                let (k, v) = item?;
                let object: Stored = serde_json::from_slice(v.value())
                    .map_err(|e| redb::Error::Corrupted(format!("object {}: {e}", k.value())))?;
                stored.push((k.value().to_string(), object));
            }
        }
        let cache = load_cache(stored);
        Ok(StateMachine {
            db: Arc::new(db),
            events: broadcast::channel(4096).0,
            snapshots: Arc::new(AtomicU64::new(0)),
            cache: Arc::new(RwLock::new(cache)),
        })
    }

    fn cache(&self) -> RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(|e| e.into_inner())
    }

    fn cache_mut(&self) -> RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Follows applied changes.
    pub fn subscribe(&self) -> broadcast::Receiver<ObjectEvent> {
        self.events.subscribe()
    }

    /// Reads one object as stored.
    pub fn get(&self, kind: &str, id: &str) -> std::result::Result<Option<Stored>, ObjectError> {
        let cache = self.cache();
        let Some(e) = cache.get(kind).and_then(|m| m.get(id)) else {
            return Ok(None);
        };
        Ok(Some(Stored {
            version: e.version,
            value: e.held.raw()?,
        }))
    }

    /// Every object of a kind as stored, by id.
    pub fn list(&self, kind: &str) -> std::result::Result<Vec<(String, Stored)>, ObjectError> {
        let cache = self.cache();
        let Some(m) = cache.get(kind) else {
            return Ok(Vec::new());
        };
        m.iter()
            .map(|(id, e)| {
                Ok((
                    id.clone(),
                    Stored {
                        version: e.version,
                        value: e.held.raw()?,
                    },
                ))
            })
            .collect()
    }

    /// Reads one object of kind `T`.
    pub fn get_typed<T: Object>(
        &self,
        id: &str,
    ) -> std::result::Result<Option<Versioned<T>>, ObjectError> {
        let cache = self.cache();
        let Some(e) = cache.get(T::KIND).and_then(|m| m.get(id)) else {
            return Ok(None);
        };
        Ok(Some(Versioned {
            version: e.version,
            value: e.held.typed(id)?,
        }))
    }

    /// Every object of kind `T`, by id.
    pub fn list_typed<T: Object>(&self) -> std::result::Result<Vec<Versioned<T>>, ObjectError> {
        let cache = self.cache();
        let Some(m) = cache.get(T::KIND) else {
            return Ok(Vec::new());
        };
        m.iter()
            .map(|(id, e)| {
                Ok(Versioned {
                    version: e.version,
                    value: e.held.typed(id)?,
                })
            })
            .collect()
    }

    /// Every object of the registered kinds, shared with the cache: what the pipeline
    /// reads in one pass. An object that does not decode fails the snapshot.
    pub fn snapshot(&self) -> std::result::Result<StoreSnapshot, ObjectError> {
        let cache = self.cache();
        let mut snap = StoreSnapshot::default();
        for kind in crate::objects::KINDS {
            let Some(m) = cache.get(kind.name) else {
                continue;
            };
            for (id, e) in m {
                match &e.held {
                    Held::Typed(o) => snap.insert_shared(o.clone(), e.version),
                    Held::Malformed { error, .. } => {
                        return Err(ObjectError::Malformed {
                            kind: kind.name.to_string(),
                            id: id.clone(),
                            message: error.clone(),
                        });
                    }
                    Held::Raw(_) => {}
                }
            }
        }
        Ok(snap)
    }

    /// Every object as stored: (kind, id, object).
    pub fn all(&self) -> std::result::Result<Vec<(String, String, Stored)>, ObjectError> {
        let cache = self.cache();
        let mut out = Vec::new();
        for (kind, m) in cache.iter() {
            for (id, e) in m {
                out.push((
                    kind.clone(),
                    id.clone(),
                    Stored {
                        version: e.version,
                        value: e.held.raw()?,
                    },
                ));
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        Ok(out)
    }

    fn meta<T: serde::de::DeserializeOwned>(&self, k: &str) -> Result<Option<T>> {
        let tx = self.db.begin_read().map_err(rs)?;
        let t = tx.open_table(SM_META).map_err(rs)?;
        match t.get(k).map_err(rs)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(rs)?)),
            None => Ok(None),
        }
    }

    /// Applies one command inside `tx`; returns its result and the events it makes.
    fn apply_command(
        tx: &WriteTransaction,
        index: u64,
        cmd: &Command,
        events: &mut Vec<ObjectEvent>,
    ) -> Result<CommandResult> {
        let mut t = tx.open_table(OBJECTS).map_err(ws)?;
        // Check every expected version first, so a batch is all or nothing.
        let mut flat = Vec::new();
        flatten(cmd, &mut flat);
        for c in &flat {
            let (kind, id, expected) = match c {
                Command::Put {
                    kind,
                    id,
                    expected_version,
                    ..
                }
                | Command::Delete {
                    kind,
                    id,
                    expected_version,
                } => (kind, id, expected_version),
                Command::Batch { .. } => continue,
            };
            if let Some(expected) = expected {
                let actual = match t.get(key(kind, id).as_str()).map_err(ws)? {
                    Some(v) => {
                        serde_json::from_slice::<Stored>(v.value())
                            .map_err(ws)?
                            .version
                    }
                    None => 0,
                };
                if actual != *expected {
                    return Ok(CommandResult::Conflict {
                        kind: kind.clone(),
                        id: id.clone(),
                        expected: *expected,
                        actual,
                    });
                }
            }
        }
        let mut versions = Vec::new();
        for c in flat {
            match c {
                Command::Put {
                    kind, id, value, ..
                } => {
                    let object = Stored {
                        version: index,
                        value: value.clone(),
                    };
                    let raw = serde_json::to_vec(&object).map_err(ws)?;
                    t.insert(key(kind, id).as_str(), raw.as_slice())
                        .map_err(ws)?;
                    versions.push(index);
                    events.push(ObjectEvent::Put {
                        kind: kind.clone(),
                        id: id.clone(),
                        version: index,
                        object: Held::decode(kind, object.value),
                    });
                }
                Command::Delete { kind, id, .. } => {
                    t.remove(key(kind, id).as_str()).map_err(ws)?;
                    versions.push(index);
                    events.push(ObjectEvent::Deleted {
                        kind: kind.clone(),
                        id: id.clone(),
                        version: index,
                    });
                }
                Command::Batch { .. } => {}
            }
        }
        Ok(CommandResult::Applied(versions))
    }

    fn snapshot_data(&self) -> Result<SnapshotData> {
        let tx = self.db.begin_read().map_err(rs)?;
        let t = tx.open_table(OBJECTS).map_err(rs)?;
        let mut objects = Vec::new();
        for item in t.iter().map_err(rs)? {
            let (k, v) = item.map_err(rs)?;
            objects.push((
                k.value().to_string(),
                serde_json::from_slice(v.value()).map_err(rs)?,
            ));
        }
        drop(t);
        drop(tx);
        Ok(SnapshotData {
            last_applied: self.meta::<Option<LogId<u64>>>("last_applied")?.flatten(),
            membership: self.meta("membership")?.unwrap_or_default(),
            objects,
        })
    }

    fn save_snapshot(
        &self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        data: &[u8],
    ) -> Result<()> {
        let raw_meta = serde_json::to_vec(meta).map_err(ws)?;
        let tx = self.db.begin_write().map_err(ws)?;
        {
            let mut t = tx.open_table(SNAPSHOT).map_err(ws)?;
            t.insert("meta", raw_meta.as_slice()).map_err(ws)?;
            t.insert("data", data).map_err(ws)?;
        }
        tx.commit().map_err(ws)
    }
}

fn flatten<'a>(cmd: &'a Command, out: &mut Vec<&'a Command>) {
    match cmd {
        Command::Batch { commands: cs } => cs.iter().for_each(|c| flatten(c, out)),
        other => out.push(other),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let data = self.snapshot_data()?;
        let raw = serde_json::to_vec(&data).map_err(rs)?;
        let n = self.snapshots.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot_id = match &data.last_applied {
            Some(l) => format!("{}-{}-{n}", l.leader_id, l.index),
            None => format!("--{n}"),
        };
        let meta = SnapshotMeta {
            last_log_id: data.last_applied,
            last_membership: data.membership,
            snapshot_id,
        };
        self.save_snapshot(&meta, &raw)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(raw)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId<u64>>, Membership)> {
        Ok((
            self.meta::<Option<LogId<u64>>>("last_applied")?.flatten(),
            self.meta("membership")?.unwrap_or_default(),
        ))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        let mut events = Vec::new();
        let mut tx = self.db.begin_write().map_err(ws)?;
        // The log is durable; the state it produces need not be synced on every apply. A
        // crash rolls the state and its last-applied id back together, and openraft applies
        // the missing entries again. Snapshots commit durably, which syncs all before them.
        tx.set_durability(redb::Durability::None).map_err(ws)?;
        {
            for entry in entries {
                let log_id = entry.log_id;
                let result = match &entry.payload {
                    EntryPayload::Blank => CommandResult::None,
                    EntryPayload::Normal(cmd) => {
                        Self::apply_command(&tx, log_id.index, cmd, &mut events)?
                    }
                    EntryPayload::Membership(m) => {
                        let stored = StoredMembership::new(Some(log_id), m.clone());
                        let raw = serde_json::to_vec(&stored).map_err(ws)?;
                        tx.open_table(SM_META)
                            .map_err(ws)?
                            .insert("membership", raw.as_slice())
                            .map_err(ws)?;
                        CommandResult::None
                    }
                };
                let raw = serde_json::to_vec(&Some(log_id)).map_err(ws)?;
                tx.open_table(SM_META)
                    .map_err(ws)?
                    .insert("last_applied", raw.as_slice())
                    .map_err(ws)?;
                results.push(result);
            }
        }
        tx.commit().map_err(ws)?;
        {
            let mut cache = self.cache_mut();
            for e in &events {
                match e {
                    ObjectEvent::Put {
                        kind,
                        id,
                        version,
                        object,
                    } => {
                        cache.entry(kind.clone()).or_default().insert(
                            id.clone(),
                            CacheEntry {
                                version: *version,
                                held: object.clone(),
                            },
                        );
                    }
                    ObjectEvent::Deleted { kind, id, .. } => {
                        if let Some(m) = cache.get_mut(kind) {
                            m.remove(id);
                        }
                    }
                    ObjectEvent::Reset => {}
                }
            }
        }
        for e in events {
            // Nobody listening is fine.
            let _ = self.events.send(e);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        let raw = snapshot.into_inner();
        let data: SnapshotData = serde_json::from_slice(&raw).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), &e))
        })?;
        let tx = self.db.begin_write().map_err(ws)?;
        {
            let mut t = tx.open_table(OBJECTS).map_err(ws)?;
            t.retain(|_, _| false).map_err(ws)?;
            for (k, v) in &data.objects {
                let raw = serde_json::to_vec(v).map_err(ws)?;
                t.insert(k.as_str(), raw.as_slice()).map_err(ws)?;
            }
            let mut m = tx.open_table(SM_META).map_err(ws)?;
            let la = serde_json::to_vec(&meta.last_log_id).map_err(ws)?;
            m.insert("last_applied", la.as_slice()).map_err(ws)?;
            let mem = serde_json::to_vec(&meta.last_membership).map_err(ws)?;
            m.insert("membership", mem.as_slice()).map_err(ws)?;
        }
        tx.commit().map_err(ws)?;
        *self.cache_mut() = load_cache(data.objects);
        self.save_snapshot(meta, &raw)?;
        let _ = self.events.send(ObjectEvent::Reset);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        let tx = self.db.begin_read().map_err(rs)?;
        let t = tx.open_table(SNAPSHOT).map_err(rs)?;
        let (Some(meta), Some(data)) = (t.get("meta").map_err(rs)?, t.get("data").map_err(rs)?)
        else {
            return Ok(None);
        };
        let meta: SnapshotMeta<u64, openraft::BasicNode> =
            serde_json::from_slice(meta.value()).map_err(rs)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data.value().to_vec())),
        }))
    }
}
