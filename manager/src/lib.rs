//! The shoal control plane. Managers keep the cluster state in a Raft log and turn desired
//! state into running tasks (see `../shared/DESIGN.md`). The engine a worker runs lives in
//! `shoal-worker`; the two meet only through `shoal-api`.
//!
//! - [`cluster`]: a manager's Raft node over the store.
//! - [`orchestrator`]: the pure cores that turn services into tasks.
//! - [`scheduler`]: the pure core that places tasks on nodes.
//! - [`pipeline`]: the leader's loop around the cores.
//! - [`store`]: the Raft-replicated store of versioned objects (openraft + redb), typed.
//! - [`objects`]: the kinds of object it keeps.
//! - [`server`]: the gRPC services (control API, dispatcher, Raft, joining).

pub mod allocator;
pub mod ca;
pub mod cluster;
pub mod netview;
pub mod objects;
pub mod orchestrator;
pub mod pipeline;
pub mod port;
pub mod scheduler;
pub mod server;
pub mod store;
#[cfg(test)]
pub(crate) mod testing;
