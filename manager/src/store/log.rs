//! The Raft log and vote in redb: table `log` (index → entry), table `log_meta` (vote,
//! committed, last purged). Every append is one durable transaction, reported flushed
//! only after it commits.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, LogId, LogState, OptionalSend, RaftLogId, RaftLogReader, StorageError, StorageIOError,
    Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::TypeConfig;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("log_meta");

type Result<T> = std::result::Result<T, StorageError<u64>>;

fn r<E: std::error::Error + 'static>(e: E) -> StorageError<u64> {
    StorageIOError::read_logs(&e).into()
}

fn w<E: std::error::Error + 'static>(e: E) -> StorageError<u64> {
    StorageIOError::write_logs(&e).into()
}

/// The log store; cheap to clone (clones share the database).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    /// Opens (or creates) the log at `path`.
    pub fn open(path: &Path) -> std::result::Result<LogStore, redb::Error> {
        let db = Database::create(path)?;
        let tx = db.begin_write()?;
        tx.open_table(LOG)?;
        tx.open_table(META)?;
        tx.commit()?;
        Ok(LogStore { db: Arc::new(db) })
    }

    fn meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let tx = self.db.begin_read().map_err(r)?;
        let t = tx.open_table(META).map_err(r)?;
        match t.get(key).map_err(r)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(r)?)),
            None => Ok(None),
        }
    }

    fn set_meta<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let raw = serde_json::to_vec(value).map_err(w)?;
        let tx = self.db.begin_write().map_err(w)?;
        {
            let mut t = tx.open_table(META).map_err(w)?;
            t.insert(key, raw.as_slice()).map_err(w)?;
        }
        tx.commit().map_err(w)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => Some(*e),
            Bound::Excluded(0) => return Ok(Vec::new()),
            Bound::Excluded(e) => Some(e - 1),
            Bound::Unbounded => None,
        };
        let tx = self.db.begin_read().map_err(r)?;
        let t = tx.open_table(LOG).map_err(r)?;
        let iter = match end {
            Some(e) if e < start => return Ok(Vec::new()),
            Some(e) => t.range(start..=e).map_err(r)?,
            None => t.range(start..).map_err(r)?,
        };
        let mut out = Vec::new();
        for item in iter {
            let (_, v) = item.map_err(r)?;
            out.push(serde_json::from_slice(v.value()).map_err(r)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let last_purged: Option<LogId<u64>> = self.meta("last_purged")?;
        let tx = self.db.begin_read().map_err(r)?;
        let t = tx.open_table(LOG).map_err(r)?;
        let last = match t.last().map_err(r)? {
            Some((_, v)) => {
                let e: Entry<TypeConfig> = serde_json::from_slice(v.value()).map_err(r)?;
                Some(*e.get_log_id())
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<()> {
        self.set_meta("vote", vote)
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>> {
        self.meta("vote")
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let tx = self.db.begin_write().map_err(w)?;
        {
            let mut t = tx.open_table(LOG).map_err(w)?;
            for e in entries {
                let raw = serde_json::to_vec(&e).map_err(w)?;
                t.insert(e.get_log_id().index, raw.as_slice()).map_err(w)?;
            }
        }
        let result = tx.commit();
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(w(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<()> {
        let tx = self.db.begin_write().map_err(w)?;
        {
            let mut t = tx.open_table(LOG).map_err(w)?;
            t.retain_in(log_id.index.., |_, _| false).map_err(w)?;
        }
        tx.commit().map_err(w)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<()> {
        let raw = serde_json::to_vec(&log_id).map_err(w)?;
        let tx = self.db.begin_write().map_err(w)?;
        {
            let mut m = tx.open_table(META).map_err(w)?;
            m.insert("last_purged", raw.as_slice()).map_err(w)?;
            let mut t = tx.open_table(LOG).map_err(w)?;
            t.retain_in(..=log_id.index, |_, _| false).map_err(w)?;
        }
        tx.commit().map_err(w)
    }
}
