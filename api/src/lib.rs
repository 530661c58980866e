//! Wire types of shoal: the gRPC services spoken between the client, the daemon and (later)
//! the managers and workers. No I/O lives here.

pub mod types;

/// The local engine API: images and containers on one node.
pub mod engine {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("shoal.engine.v1");
}
