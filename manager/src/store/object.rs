//! Typed objects over the store. Each kind of object is one type implementing [`Object`]
//! and one line in [`crate::objects::KINDS`]; the state machine decodes what it applies
//! once, keeps the typed value, and hands it out without parsing again. JSON is the
//! encoding in the Raft log, the snapshots and redb, and never leaves this module and the
//! state machine: a value that does not encode is an error, never an empty object.

use std::any::Any;
use std::fmt::Debug;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Command;

/// A kind of object the store keeps.
pub trait Object:
    Serialize + DeserializeOwned + Clone + PartialEq + Debug + Send + Sync + 'static
{
    /// The kind's name in the store (`service`, `task`, ...).
    const KIND: &'static str;

    /// Its id, unique within the kind.
    fn id(&self) -> &str;
}

/// An object of any registered kind, as the store holds it.
pub trait AnyObject: Any + Send + Sync + Debug {
    /// For downcasting to the kind's type.
    fn as_any(&self) -> &dyn Any;
    /// The kind's name.
    fn kind(&self) -> &'static str;
    /// Its id.
    fn object_id(&self) -> &str;
    /// Its stored encoding.
    fn encode(&self) -> Result<serde_json::Value, ObjectError>;
    /// Whether `other` is the same value.
    fn same(&self, other: &dyn AnyObject) -> bool;
}

impl<T: Object> AnyObject for T {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn kind(&self) -> &'static str {
        T::KIND
    }

    fn object_id(&self) -> &str {
        self.id()
    }

    fn encode(&self) -> Result<serde_json::Value, ObjectError> {
        serde_json::to_value(self).map_err(|e| ObjectError::Encode {
            kind: T::KIND,
            id: self.id().to_string(),
            message: e.to_string(),
        })
    }

    fn same(&self, other: &dyn AnyObject) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }
}

/// An object that could not be encoded for the store or read back from it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    /// Encoding failed: nothing was written.
    #[error("encoding {kind} {id} for the store: {message}")]
    Encode {
        /// The kind.
        kind: &'static str,
        /// The object's id.
        id: String,
        /// The encoder's complaint.
        message: String,
    },
    /// A stored object does not decode as its kind (written by another version of shoal,
    /// or damaged).
    #[error("the stored {kind} {id} is malformed: {message}")]
    Malformed {
        /// The kind.
        kind: String,
        /// The object's id.
        id: String,
        /// The decoder's complaint.
        message: String,
    },
}

/// An object with its version: the Raft index of its last write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The Raft index of its last write.
    pub version: u64,
    /// The object.
    pub value: T,
}

/// How the state machine reads one kind back from its encoding.
#[derive(Clone, Copy)]
pub struct Kind {
    /// The kind's name.
    pub name: &'static str,
    decode: fn(serde_json::Value) -> Result<Arc<dyn AnyObject>, String>,
}

impl Kind {
    /// The registration of `T`.
    pub const fn of<T: Object>() -> Kind {
        Kind {
            name: T::KIND,
            decode: decode_as::<T>,
        }
    }

    /// Decodes a stored value of this kind.
    pub fn decode(&self, value: serde_json::Value) -> Result<Arc<dyn AnyObject>, String> {
        (self.decode)(value)
    }
}

fn decode_as<T: Object>(value: serde_json::Value) -> Result<Arc<dyn AnyObject>, String> {
    serde_json::from_value::<T>(value)
        .map(|t| Arc::new(t) as Arc<dyn AnyObject>)
        .map_err(|e| e.to_string())
}

/// One typed write: what the pipeline's stages and the control API's handlers propose.
/// It becomes a [`Command`] (the log's encoding) only when it is written.
#[derive(Debug, Clone)]
pub enum Write {
    /// Creates or replaces an object; with `expected`, only at that version (0: only if
    /// it does not exist).
    Put {
        /// The object.
        object: Arc<dyn AnyObject>,
        /// The version the writer read.
        expected: Option<u64>,
    },
    /// Deletes an object; with `expected`, only at that version.
    Delete {
        /// The kind.
        kind: &'static str,
        /// The object's id.
        id: String,
        /// The version the writer read.
        expected: Option<u64>,
    },
}

impl Write {
    /// Makes `object`, which must not exist yet.
    pub fn create<T: Object>(object: T) -> Write {
        Write::put(object, Some(0))
    }

    /// Replaces `object`, read at `version`.
    pub fn update<T: Object>(object: T, version: u64) -> Write {
        Write::put(object, Some(version))
    }

    /// Writes `object` whatever its version.
    pub fn overwrite<T: Object>(object: T) -> Write {
        Write::put(object, None)
    }

    /// Writes `object`, if `expected`, only at that version.
    pub fn put<T: Object>(object: T, expected: Option<u64>) -> Write {
        Write::Put {
            object: Arc::new(object),
            expected,
        }
    }

    /// Deletes object `id` of kind `T`, if `expected`, only at that version.
    pub fn delete<T: Object>(id: &str, expected: Option<u64>) -> Write {
        Write::Delete {
            kind: T::KIND,
            id: id.to_string(),
            expected,
        }
    }

    /// The kind written.
    pub fn kind(&self) -> &'static str {
        match self {
            Write::Put { object, .. } => object.kind(),
            Write::Delete { kind, .. } => kind,
        }
    }

    /// The id of the object written.
    pub fn id(&self) -> &str {
        match self {
            Write::Put { object, .. } => object.object_id(),
            Write::Delete { id, .. } => id,
        }
    }

    /// The version the writer read.
    pub fn expected(&self) -> Option<u64> {
        match self {
            Write::Put { expected, .. } | Write::Delete { expected, .. } => *expected,
        }
    }

    /// The object put, if it is a `T`.
    pub fn object<T: Object>(&self) -> Option<&T> {
        match self {
            Write::Put { object, .. } => object.as_any().downcast_ref(),
            Write::Delete { .. } => None,
        }
    }

    /// The log's encoding of this write.
    pub fn encode(&self) -> Result<Command, ObjectError> {
        Ok(match self {
            Write::Put { object, expected } => Command::Put {
                kind: object.kind().to_string(),
                id: object.object_id().to_string(),
                value: object.encode()?,
                expected_version: *expected,
            },
            Write::Delete { kind, id, expected } => Command::Delete {
                kind: kind.to_string(),
                id: id.clone(),
                expected_version: *expected,
            },
        })
    }

    /// Several writes as one all-or-none command.
    pub fn encode_batch(writes: &[Write]) -> Result<Command, ObjectError> {
        Ok(Command::Batch {
            commands: writes.iter().map(Write::encode).collect::<Result<_, _>>()?,
        })
    }
}

impl PartialEq for Write {
    fn eq(&self, other: &Write) -> bool {
        match (self, other) {
            (
                Write::Put { object, expected },
                Write::Put {
                    object: o,
                    expected: e,
                },
            ) => expected == e && object.same(o.as_ref()),
            (
                Write::Delete { kind, id, expected },
                Write::Delete {
                    kind: k,
                    id: i,
                    expected: e,
                },
            ) => kind == k && id == i && expected == e,
            _ => false,
        }
    }
}
