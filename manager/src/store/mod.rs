//! The cluster store: a state machine of versioned objects replicated with openraft and
//! persisted in redb. openraft stays behind this module's own types (`Command`,
//! `CommandResult`, `ObjectEvent`), so moving to openraft 0.10 is a local change.
//!
//! Above the log's JSON commands sits the typed layer everything else uses: [`Object`]
//! kinds, [`Versioned`] values, [`Write`]s and one [`Snapshot`] per pipeline pass.
//!
//! Every object carries `version` = the Raft index of its last write; a write may name the
//! version it read and fails if the object moved (optimistic concurrency). Applied changes
//! go out on a broadcast channel, so components follow the store instead of polling it.

// openraft's traits fix the error type (`StorageError`, over 200 bytes); our helpers
// return the same type so `?` works throughout.
#![allow(clippy::result_large_err)]

mod log;
mod object;
mod snapshot;
mod state_machine;
mod watch;

use std::io::Cursor;

use serde::{Deserialize, Serialize};

pub use self::log::LogStore;
pub use self::object::{AnyObject, Kind, Object, ObjectError, Versioned, Write};
pub use self::snapshot::{PENDING, Snapshot, coalesce};
pub use self::state_machine::{Held, StateMachine};
pub use self::watch::{Change, Watch};

openraft::declare_raft_types!(
    /// shoal's Raft types.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

/// One write to the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Creates or replaces an object. With `expected_version`, only if the object is at
    /// that version (0: only if it does not exist).
    Put {
        /// Object kind: `service`, `task`, `node`, ...
        kind: String,
        /// Object id.
        id: String,
        /// The object.
        value: serde_json::Value,
        /// The version the writer read.
        expected_version: Option<u64>,
    },
    /// Deletes an object; with `expected_version`, only at that version.
    Delete {
        /// Object kind.
        kind: String,
        /// Object id.
        id: String,
        /// The version the writer read.
        expected_version: Option<u64>,
    },
    /// Several writes, all or none.
    Batch {
        /// The writes, in order.
        commands: Vec<Command>,
    },
}

/// The outcome of a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum CommandResult {
    /// Applied; the new version of each object written, in order.
    Applied(Vec<u64>),
    /// Refused: an object was not at the version the writer read.
    Conflict {
        /// Object kind.
        kind: String,
        /// Object id.
        id: String,
        /// The version named.
        expected: u64,
        /// The version found (0: absent).
        actual: u64,
    },
    /// A membership change or a leader's blank entry.
    #[default]
    None,
}

/// An object as the log and redb keep it: its encoding, with its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// The Raft index of its last write.
    pub version: u64,
    /// The object.
    pub value: serde_json::Value,
}

/// A change applied to the store.
#[derive(Debug, Clone)]
pub enum ObjectEvent {
    /// Created or updated.
    Put {
        /// Object kind.
        kind: String,
        /// Object id.
        id: String,
        /// The Raft index of the write.
        version: u64,
        /// The object as written (decoded, for registered kinds).
        object: Held,
    },
    /// Deleted.
    Deleted {
        /// Object kind.
        kind: String,
        /// Object id.
        id: String,
        /// The Raft index of the deletion.
        version: u64,
    },
    /// The whole state was replaced by a snapshot: watchers must reload.
    Reset,
}

#[cfg(test)]
mod tests;
