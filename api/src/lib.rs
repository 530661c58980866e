//! Wire types of shoal: the gRPC services spoken between the client, the daemon, the
//! managers and the workers, the domain types they carry, and the one place each is
//! converted. No I/O lives here but the clock and the random source.
//!
//! - [`types`]: the cluster's objects and the engine's container spec.
//! - [`wire`]: how objects travel inside the messages (JSON of [`types`]).
//! - [`convert`]: the engine API's container messages to and from [`types`].
//! - [`cluster`]: addresses, join tokens, Raft ids and address pools, for clients too.
//! - [`mount`]: `-v`, `--mount` and `--tmpfs` as users write them.
//! - [`id`], [`clock`]: the one random id source and the one wall clock.

pub mod clock;
pub mod cluster;
pub mod convert;
pub mod id;
pub mod mount;
pub mod types;
pub mod wire;

/// The metadata key in which a manager that does not lead names the leader's cluster
/// address, so that callers go there.
pub const LEADER_METADATA: &str = "shoal-leader";

/// The metadata key set on the answer to a node that was removed from the cluster: its
/// agent stops and the node leaves.
pub const REMOVED_METADATA: &str = "shoal-removed";

/// The control API of managers: cluster, services, tasks, nodes.
pub mod control {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("shoal.control.v1");
}

/// The dispatcher API between managers and agents.
pub mod dispatcher {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("shoal.dispatcher.v1");
}

/// The local engine API: images and containers on one node.
pub mod engine {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("shoal.engine.v1");
}

/// Between managers: Raft's messages, and joining.
pub mod raft {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("shoal.raft.v1");
}

/// The largest gRPC message shoal sends or takes (tonic's default is 4 MiB): a Raft append
/// of a batch of task writes, a node's assignment set or a listing of thousands of tasks
/// may exceed that.
pub const MAX_MESSAGE: usize = 256 << 20;
