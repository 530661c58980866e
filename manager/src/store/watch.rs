//! Typed watches: the changes of one kind of object, as they are applied.

use std::marker::PhantomData;

use tokio::sync::broadcast;

use super::{Held, Object, ObjectEvent, Versioned};

/// One change to an object of kind `T`.
#[derive(Debug, Clone, PartialEq)]
pub enum Change<T> {
    /// Created or updated.
    Put(Versioned<T>),
    /// Deleted.
    Deleted {
        /// Its id.
        id: String,
        /// The Raft index of the deletion.
        version: u64,
    },
    /// The watcher missed changes (it fell behind, or a snapshot replaced the state):
    /// read the objects again.
    Reset,
}

/// The changes of kind `T`, from the moment the watch was made.
pub struct Watch<T> {
    events: broadcast::Receiver<ObjectEvent>,
    kind: PhantomData<fn() -> T>,
}

impl<T: Object> Watch<T> {
    pub(crate) fn new(events: broadcast::Receiver<ObjectEvent>) -> Watch<T> {
        Watch {
            events,
            kind: PhantomData,
        }
    }

    /// The next change; None once the store has closed. An object of the kind that does
    /// not decode is passed over (typed reads report it).
    pub async fn next(&mut self) -> Option<Change<T>> {
        loop {
            let event = match self.events.recv().await {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(_)) => return Some(Change::Reset),
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            match event {
                ObjectEvent::Put {
                    kind,
                    version,
                    object: Held::Typed(o),
                    ..
                } if kind == T::KIND => {
                    if let Some(value) = o.as_any().downcast_ref::<T>() {
                        return Some(Change::Put(Versioned {
                            version,
                            value: value.clone(),
                        }));
                    }
                }
                ObjectEvent::Deleted { kind, id, version } if kind == T::KIND => {
                    return Some(Change::Deleted { id, version });
                }
                ObjectEvent::Reset => return Some(Change::Reset),
                _ => {}
            }
        }
    }

    /// Waits until `check` holds for an object of the kind put, or `timeout` passes;
    /// `current` is read first and after each reset. Returns the object that made it
    /// hold.
    pub async fn until(
        &mut self,
        timeout: std::time::Duration,
        current: impl Fn() -> Option<T>,
        check: impl Fn(&T) -> bool,
    ) -> Option<T> {
        let work = async {
            if let Some(t) = current().filter(|t| check(t)) {
                return Some(t);
            }
            loop {
                match self.next().await? {
                    Change::Put(v) if check(&v.value) => return Some(v.value),
                    Change::Reset => {
                        if let Some(t) = current().filter(|t| check(t)) {
                            return Some(t);
                        }
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(timeout, work).await.ok().flatten()
    }
}
