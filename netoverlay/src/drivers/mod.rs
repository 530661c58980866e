//! The drivers of cluster networks, behind one trait: what it takes to put a container's
//! interface on a network, take it off, follow the network's other endpoints, and find
//! again after a daemon restart what a driver made before.
//!
//! - [`overlay`]: VXLAN between nodes, one sandbox namespace per network and node;
//! - [`bridge`]: a bridge of its own per network on each node;
//! - [`macvlan`]: addresses on a parent interface's segment.

pub mod bridge;
pub mod macvlan;
pub mod overlay;

use std::net::Ipv4Addr;
use std::path::Path;

use futures::future::BoxFuture;
use shoal_api::types::{Network, NetworkDriver};

use crate::error::NetError;
use overlay::Peer;

/// One container interface to make on a network.
#[derive(Debug, Clone, Copy)]
pub struct Join<'a> {
    /// The network.
    pub network: &'a Network,
    /// The endpoint's id (the container's).
    pub endpoint_id: &'a str,
    /// The container's network namespace.
    pub netns: &'a Path,
    /// The interface's name in it (`eth1`, ...).
    pub ifname: &'a str,
    /// Its address and the subnet's prefix length.
    pub addr: (Ipv4Addr, u8),
    /// Whether this network gives the container its default route.
    pub default_route: bool,
    /// This node's underlay address, once the managers have told it.
    pub underlay: Option<Ipv4Addr>,
}

/// A network driver.
pub trait Driver: Send + Sync {
    /// Makes the container's interface on the network (and whatever the network needs on
    /// this node first).
    fn attach<'a>(&'a self, join: Join<'a>) -> BoxFuture<'a, Result<(), NetError>>;

    /// Removes the endpoint's interface; what the network needs here goes with its last
    /// endpoint. Unknown endpoints are fine.
    fn detach<'a>(
        &'a self,
        network_id: &'a str,
        endpoint_id: &'a str,
    ) -> BoxFuture<'a, Result<(), NetError>>;

    /// The network's endpoints on other nodes (drivers that reach them by themselves, as
    /// a bridge or macvlan does, need not know).
    fn set_peers<'a>(
        &'a self,
        _network_id: &'a str,
        _peers: &'a [Peer],
    ) -> BoxFuture<'a, Result<(), NetError>> {
        Box::pin(async { Ok(()) })
    }

    /// After a daemon restart: keeps what serves the live endpoints (network, endpoint
    /// id; of every driver), removes the rest.
    fn restore<'a>(&'a self, live: &'a [(Network, String)]) -> BoxFuture<'a, ()>;

    /// Removes everything it made (the node leaves its cluster).
    fn remove_all(&self) -> BoxFuture<'_, ()>;
}

/// The drivers of one node.
pub struct Drivers {
    /// Overlay networks.
    pub overlay: overlay::Overlays,
    /// Bridge networks.
    pub bridge: bridge::UserBridges,
    /// Macvlan networks.
    pub macvlan: macvlan::Macvlan,
}

impl Drivers {
    /// The drivers, with the overlay's state under `state_dir`.
    pub async fn open(state_dir: &Path) -> Result<Drivers, NetError> {
        Ok(Drivers {
            overlay: overlay::Overlays::open(state_dir).await?,
            bridge: bridge::UserBridges::open()?,
            macvlan: macvlan::Macvlan,
        })
    }

    /// The driver of networks of `kind`.
    pub fn get(&self, kind: NetworkDriver) -> &dyn Driver {
        match kind {
            NetworkDriver::Overlay => &self.overlay,
            NetworkDriver::Bridge => &self.bridge,
            NetworkDriver::Macvlan => &self.macvlan,
        }
    }

    /// Every driver.
    pub fn all(&self) -> [&dyn Driver; 3] {
        [&self.overlay, &self.bridge, &self.macvlan]
    }
}
