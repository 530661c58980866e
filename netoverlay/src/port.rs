//! Ports published on a node.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use shoal_api::types::PortProtocol;

/// A port published on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    /// The host address, or every address.
    pub host_ip: Option<IpAddr>,
    /// The host port.
    pub host_port: u16,
    /// The container's port.
    pub container_port: u16,
    /// tcp or udp.
    pub protocol: PortProtocol,
}
