//! Netlink helpers every driver uses: links found, named, moved, configured and deleted,
//! with errors that say what was being done; and the MAC address an endpoint gets.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use rtnetlink::{Handle, LinkUnspec};

use crate::error::NetError;

/// The MAC address of the endpoint at `ip`: 02:42 and the four bytes of the address, so
/// every node can tell a peer's MAC from its address alone.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0x42, a, b, c, d]
}

/// Names the veth of `temp` (in the namespace of `h`) `ifname` and gives it the
/// endpoint's MAC, MTU and address.
pub(crate) async fn configure(
    h: &Handle,
    temp: &str,
    ifname: &str,
    (ip, prefix): (Ipv4Addr, u8),
    mtu: u32,
    place: &str,
) -> Result<(), NetError> {
    let index = must_index(h, temp).await?;
    let named = h
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .name(ifname)
                .mtu(mtu)
                .address(mac_for(ip).to_vec())
                .build(),
        )
        .execute()
        .await;
    match named {
        Err(e) if errno(&e) == libc::EEXIST => {
            return Err(NetError::State(format!(
                "{place} already has an interface named {ifname}: pick another name"
            )));
        }
        other => other.map_err(nl("naming the endpoint's interface"))?,
    }
    h.address()
        .add(index, IpAddr::V4(ip), prefix)
        .execute()
        .await
        .map_err(nl("addressing the endpoint"))?;
    set_link(
        h,
        LinkUnspec::new_with_index(index).up(),
        "bringing the endpoint up",
    )
    .await
}

pub(crate) fn nl(what: &str) -> impl FnOnce(rtnetlink::Error) -> NetError + '_ {
    move |e| NetError::Netlink(format!("{what}: {e}"))
}

/// The kernel's errno in a netlink error, 0 for other errors.
pub(crate) fn errno(e: &rtnetlink::Error) -> i32 {
    match e {
        rtnetlink::Error::NetlinkError(m) => -m.raw_code(),
        _ => 0,
    }
}

/// The index of the link called `name` in the namespace of `h`.
pub(crate) async fn index_of(h: &Handle, name: &str) -> Option<u32> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    links
        .try_next()
        .await
        .ok()
        .flatten()
        .map(|l| l.header.index)
}

pub(crate) async fn must_index(h: &Handle, name: &str) -> Result<u32, NetError> {
    index_of(h, name)
        .await
        .ok_or_else(|| NetError::Netlink(format!("the new link {name} vanished")))
}

/// Deletes the link called `name` in the namespace of `h`; missing is fine.
pub(crate) async fn delete_link(h: &Handle, name: &str) -> Result<(), NetError> {
    let Some(index) = index_of(h, name).await else {
        return Ok(());
    };
    match h.link().del(index).execute().await {
        Err(e) if errno(&e) == libc::ENODEV => Ok(()),
        other => other.map_err(nl(&format!("removing link {name}"))),
    }
}

pub(crate) async fn set_link(
    h: &Handle,
    link: rtnetlink::LinkMessageBuilder<LinkUnspec>,
    what: &str,
) -> Result<(), NetError> {
    h.link().set(link.build()).execute().await.map_err(nl(what))
}

/// Moves a link of the namespace of `h` into the namespace at `netns`.
pub(crate) async fn move_link(
    h: &Handle,
    index: u32,
    netns: &Path,
    what: &str,
) -> Result<(), NetError> {
    let ns = std::fs::File::open(netns)
        .map_err(|e| NetError::State(format!("opening {}: {e}", netns.display())))?;
    set_link(
        h,
        LinkUnspec::new_with_index(index).setns_by_fd(ns.as_raw_fd()),
        what,
    )
    .await
}
