//! Networking for shoal: address management, network namespaces, the network drivers and
//! published ports. Service discovery and load balancing arrive with the cluster.

pub mod bridge;
pub mod cluster;
pub mod dns;
pub mod drivers;
pub mod error;
pub mod ipam;
pub(crate) mod link;
pub mod netns;
pub mod nft;
pub mod port;
mod proxy;
