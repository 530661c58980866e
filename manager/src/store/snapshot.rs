//! One consistent, typed read of the whole store: what a pipeline pass reasons about. The
//! values are shared with the state machine (no copy, no parse). A stage's writes can be
//! applied to it, so the next stage of the same pass sees them before they are written.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::object::{AnyObject, Object, Versioned, Write};

/// The version a snapshot gives an object one of its pass's stages wrote: not yet in the
/// store. The writes of one pass are merged per object before they go out, so a write
/// that names this version is folded into the one it follows.
pub const PENDING: u64 = u64::MAX;

/// The objects of one kind: id to version and value.
type KindMap = BTreeMap<String, (u64, Arc<dyn AnyObject>)>;

/// Every object of the registered kinds, with its version.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    kinds: HashMap<&'static str, KindMap>,
}

impl Snapshot {
    /// An empty snapshot (tests build theirs with [`Snapshot::with`]).
    pub fn new() -> Snapshot {
        Snapshot::default()
    }

    /// Adds `object` at `version`.
    pub fn with<T: Object>(mut self, object: T, version: u64) -> Snapshot {
        self.insert(object, version);
        self
    }

    /// Adds or replaces `object` at `version`.
    pub fn insert<T: Object>(&mut self, object: T, version: u64) {
        self.insert_shared(Arc::new(object), version);
    }

    pub(crate) fn insert_shared(&mut self, object: Arc<dyn AnyObject>, version: u64) {
        self.kinds
            .entry(object.kind())
            .or_default()
            .insert(object.object_id().to_string(), (version, object));
    }

    /// Object `id` of kind `T`.
    pub fn get<T: Object>(&self, id: &str) -> Option<Versioned<&T>> {
        let (version, o) = self.kinds.get(T::KIND)?.get(id)?;
        Some(Versioned {
            version: *version,
            value: o.as_any().downcast_ref()?,
        })
    }

    /// Every object of kind `T`, in id order.
    pub fn list<T: Object>(&self) -> impl Iterator<Item = Versioned<&T>> + '_ {
        self.kinds.get(T::KIND).into_iter().flat_map(|m| {
            m.values().filter_map(|(version, o)| {
                Some(Versioned {
                    version: *version,
                    value: o.as_any().downcast_ref::<T>()?,
                })
            })
        })
    }

    /// Every object of kind `T`, cloned, in id order.
    pub fn values<T: Object>(&self) -> Vec<T> {
        self.list::<T>().map(|v| v.value.clone()).collect()
    }

    /// How many objects of kind `T` there are.
    pub fn count<T: Object>(&self) -> usize {
        self.kinds.get(T::KIND).map_or(0, BTreeMap::len)
    }

    /// Applies `writes` as the store would if they all succeeded: puts take the version
    /// [`PENDING`].
    pub fn apply(&mut self, writes: &[Write]) {
        for w in writes {
            match w {
                Write::Put { object, .. } => self.insert_shared(object.clone(), PENDING),
                Write::Delete { kind, id, .. } => {
                    if let Some(m) = self.kinds.get_mut(kind) {
                        m.remove(id);
                    }
                }
            }
        }
    }
}

/// Merges the writes of one pass so that each object is written once: the last value
/// with the version the first write read (a later write read the [`PENDING`] version the
/// earlier one left). A creation undone in the same pass writes nothing.
pub fn coalesce(writes: Vec<Write>) -> Vec<Write> {
    let mut out: Vec<Option<Write>> = Vec::with_capacity(writes.len());
    let mut at: HashMap<(&'static str, String), usize> = HashMap::new();
    for w in writes {
        let key = (w.kind(), w.id().to_string());
        let Some(&i) = at.get(&key) else {
            at.insert(key, out.len());
            out.push(Some(w));
            continue;
        };
        let Some(first) = out[i].take() else {
            out[i] = Some(w);
            continue;
        };
        let expected = first.expected();
        out[i] = match w {
            Write::Put { object, .. } => Some(Write::Put { object, expected }),
            // Made and forgotten in one pass: nothing to write.
            Write::Delete { .. } if expected == Some(0) => None,
            Write::Delete { kind, id, .. } => Some(Write::Delete { kind, id, expected }),
        };
    }
    out.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use shoal_api::types::Node;

    use super::*;

    fn node(id: &str, hostname: &str) -> Node {
        let mut n = crate::testing::node(id);
        n.hostname = hostname.into();
        n
    }

    #[test]
    fn reads_are_typed_and_in_id_order() {
        let s = Snapshot::new()
            .with(node("b", "beta"), 4)
            .with(node("a", "alpha"), 2);
        let ids: Vec<&str> = s.list::<Node>().map(|v| v.value.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(s.get::<Node>("b").map(|v| v.version), Some(4));
        assert!(s.get::<Node>("c").is_none());
        assert_eq!(s.count::<Node>(), 2);
    }

    #[test]
    fn writes_of_one_pass_merge_per_object() {
        let mut s = Snapshot::new().with(node("a", "alpha"), 2);
        let first = vec![
            Write::update(node("a", "one"), 2),
            Write::create(node("n", "new")),
        ];
        s.apply(&first);
        assert_eq!(s.get::<Node>("a").map(|v| v.version), Some(PENDING));
        let second = vec![
            Write::update(node("a", "two"), PENDING),
            Write::delete::<Node>("n", Some(PENDING)),
        ];
        s.apply(&second);
        assert!(s.get::<Node>("n").is_none());
        let merged = coalesce(first.into_iter().chain(second).collect());
        assert_eq!(merged, vec![Write::update(node("a", "two"), 2)]);
    }
}
