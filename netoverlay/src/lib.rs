//! Networking for shoal: address management, network namespaces, the network drivers and
//! published ports. Service discovery and load balancing arrive with the cluster.

pub mod bridge;
pub mod cluster;
pub mod dns;
pub mod ipam;
pub mod macvlan;
pub mod netns;
pub mod nft;
pub mod overlay;
mod proxy;
pub mod userbridge;
