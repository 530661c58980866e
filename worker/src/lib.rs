//! The shoal worker: the node agent and the local container engine every node runs.
//!
//! - [`image`]: the content-addressed image store (import, load, pull, push, unpack).
//! - [`runtime`]: OCI runtime specs, the builtin runtime and external OCI runtimes.
//! - [`shim`]: the per-container parent process that owns stdio, logs and exit status.
//! - [`cgroups`]: resource limits on the v1 and v2 layouts.
//! - [`security`]: capabilities and the default seccomp profile.
//! - [`engine`]: container lifecycle, tying the pieces together.
//! - [`executor`]: a task's steps on the engine (prepare, start, wait, shutdown, remove).
//! - [`agent`]: the node's session with the managers, running its tasks.
//! - [`volume`]: volumes, their drivers and Docker's volume plugins.
//! - [`daemon`]: the engine's gRPC service on the local socket.

pub mod agent;
pub mod cgroups;
pub mod daemon;
pub mod engine;
pub mod executor;
pub mod image;
pub mod logs;
pub mod reexec;
pub mod registry;
pub mod runtime;
pub mod security;
pub mod shim;
pub mod volume;
