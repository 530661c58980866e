//! Wire types of shoal: the gRPC services spoken between the client, the daemon and (later)
//! the managers and workers. No I/O lives here.

pub mod types;

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

/// Between managers: Raft's messages, and joining the cluster.
pub mod raft {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("shoal.raft.v1");
}

/// The largest gRPC message shoal sends or takes (tonic's default is 4 MiB): a Raft append
/// of a batch of task writes, a node's assignment set or a listing of thousands of tasks
/// may exceed that.
pub const MAX_MESSAGE: usize = 256 << 20;
