//! The shoal control plane. Managers keep the cluster state in a Raft log and turn desired
//! state into running tasks (see `../shared/DESIGN.md`). The engine a worker runs lives in
//! `shoal-worker`; the two meet only through `shoal-api`.
//!
//! - [`scheduler`]: the pure core that places tasks on nodes.
//! - [`store`]: the Raft-replicated store of versioned objects (openraft + redb).

pub mod scheduler;
pub mod store;
