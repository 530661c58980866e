//! Endpoints on other nodes, programmed into a sandbox as the managers' views change: a
//! permanent neighbour entry (the VXLAN device answers ARP from it) and a forwarding
//! entry to the peer's node, as a diff from what was programmed before.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use rtnetlink::Handle;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
};

use super::Peer;
use crate::error::NetError;
use crate::link::{errno, mac_for, nl};

/// What [`Overlays::set_peers`] changes.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct PeerDiff {
    /// Addresses whose entries go.
    pub(super) remove: Vec<Ipv4Addr>,
    /// Entries to add or point at another node.
    pub(super) set: Vec<(Ipv4Addr, Ipv4Addr)>,
}

pub(super) fn diff_peers(
    old: &BTreeMap<Ipv4Addr, Ipv4Addr>,
    new: &[Peer],
    local: Ipv4Addr,
) -> PeerDiff {
    let want: BTreeMap<Ipv4Addr, Ipv4Addr> = new
        .iter()
        .filter(|p| p.node_ip != local)
        .map(|p| (p.ip, p.node_ip))
        .collect();
    PeerDiff {
        remove: old
            .keys()
            .filter(|ip| !want.contains_key(ip))
            .copied()
            .collect(),
        set: want
            .into_iter()
            .filter(|(ip, node)| old.get(ip) != Some(node))
            .collect(),
    }
}

/// A permanent neighbour (the device answers ARP for the peer) and a forwarding entry
/// that sends the peer's MAC to its node; both replace what was there.
pub(super) async fn program_peer(
    sandbox: &Handle,
    vxlan: u32,
    ip: Ipv4Addr,
    node_ip: Ipv4Addr,
) -> Result<(), NetError> {
    let mac = mac_for(ip);
    let what = format!("programming peer {ip} on node {node_ip}");
    sandbox
        .neighbours()
        .add(vxlan, IpAddr::V4(ip))
        .link_layer_address(&mac)
        .replace()
        .execute()
        .await
        .map_err(nl(&what))?;
    sandbox
        .neighbours()
        .add_bridge(vxlan, &mac)
        .destination(IpAddr::V4(node_ip))
        .flags(NeighbourFlags::Own)
        .replace()
        .execute()
        .await
        .map_err(nl(&what))
}

/// Removes a peer's entries; missing ones are fine.
pub(super) async fn forget_peer(
    sandbox: &Handle,
    vxlan: u32,
    ip: Ipv4Addr,
) -> Result<(), NetError> {
    let what = format!("removing peer {ip}");
    let mut neighbour = NeighbourMessage::default();
    neighbour.header.family = AddressFamily::Inet;
    neighbour.header.ifindex = vxlan;
    neighbour
        .attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
    let mut fdb = NeighbourMessage::default();
    fdb.header.family = AddressFamily::Bridge;
    fdb.header.ifindex = vxlan;
    fdb.header.flags = NeighbourFlags::Own;
    // Without a destination the whole entry goes, whatever node it pointed at.
    fdb.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac_for(ip).to_vec()));
    for message in [neighbour, fdb] {
        match sandbox.neighbours().del(message).execute().await {
            Err(e) if errno(&e) == libc::ENOENT => {}
            other => other.map_err(nl(&what))?,
        }
    }
    Ok(())
}
