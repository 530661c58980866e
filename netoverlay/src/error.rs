//! The errors of shoal's networking, worded for users.

use std::net::IpAddr;

use crate::ipam::IpamError;
use crate::nft::NftError;

/// Errors of the networks, worded for users.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A host port is taken.
    #[error(
        "port {port}/{protocol} is already in use on {ip}: stop what listens there, or publish another host port"
    )]
    PortInUse {
        /// The address.
        ip: IpAddr,
        /// The port.
        port: u16,
        /// tcp or udp.
        protocol: &'static str,
    },
    /// No candidate subnet is free on this host.
    #[error("no free subnet for the {0} bridge: every candidate overlaps a route of this host")]
    NoSubnet(String),
    /// Address management failed.
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// nftables failed.
    #[error(transparent)]
    Nft(#[from] NftError),
    /// Netlink failed.
    #[error("{0}")]
    Netlink(String),
    /// The namespace could not be used.
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    /// The state file failed.
    #[error("{0}")]
    State(String),
}
