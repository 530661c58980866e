//! The `macvlan` driver: a container gets a MAC address of its own on a parent interface
//! of the host, and with it a place on the parent's LAN, without bridge or NAT. Bridge
//! mode, so containers on one parent reach each other; as with any macvlan, the host
//! cannot reach them through the parent itself. The link lives in the container's
//! namespace and dies with it, so there is no detach.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use rtnetlink::packet_route::link::MacVlanMode;
use rtnetlink::{Handle, LinkMacVlan, LinkUnspec, RouteMessageBuilder};

use crate::error::NetError;
use crate::link::{errno, index_of, mac_for, move_link, nl, set_link};
use crate::netns;

/// Whether an interface called `parent` exists in the calling thread's namespace.
pub fn parent_exists(parent: &str) -> bool {
    nix::net::if_::if_nametoindex(parent).is_ok()
}

/// Gives the container namespace at `netns` an interface `ifname` on the host's `parent`
/// interface, in bridge mode, with MAC `mac`, address `ip`/`prefix` and, when `gateway`
/// is given, a default route through it.
pub async fn attach(
    parent: &str,
    netns: &Path,
    ifname: &str,
    ip: Ipv4Addr,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
    mac: [u8; 6],
) -> Result<(), NetError> {
    if prefix > 32 {
        return Err(NetError::State(format!(
            "prefix length {prefix} is not valid for IPv4: use 0 to 32"
        )));
    }
    if mac[0] & 1 == 1 || mac == [0; 6] {
        return Err(NetError::State(format!(
            "MAC address {} is not a unicast address: give the container another one",
            mac.map(|b| format!("{b:02x}")).join(":")
        )));
    }
    let (conn, host, _) = rtnetlink::new_connection()
        .map_err(|e| NetError::Netlink(format!("opening netlink: {e}")))?;
    tokio::spawn(conn);
    let Some(parent_index) = index_of(&host, parent).await else {
        return Err(NetError::Netlink(format!(
            "the macvlan parent interface {parent} does not exist on this host: create it or \
             pick another with -o parent=IFACE"
        )));
    };
    let temp = temp_name();
    let made = host
        .link()
        .add(
            LinkMacVlan::new(&temp, parent_index, MacVlanMode::Bridge)
                .address(mac.to_vec())
                .build(),
        )
        .execute()
        .await;
    match made {
        Err(e) if errno(&e) == libc::EOPNOTSUPP => {
            return Err(NetError::Netlink(
                "macvlan needs the macvlan kernel module: load it (modprobe macvlan) or use a \
                 kernel built with CONFIG_MACVLAN"
                    .into(),
            ));
        }
        Err(e) => {
            return Err(NetError::Netlink(format!(
                "making a macvlan on {parent}: {e}; the parent must be an Ethernet interface \
                 that is not itself a macvlan in another mode or a bridge port"
            )));
        }
        Ok(()) => {}
    }
    let moved = match index_of(&host, &temp).await {
        Some(index) => move_link(&host, index, netns, "moving the macvlan into the container")
            .await
            .map_err(|e| (e, Some(index))),
        None => Err((
            NetError::Netlink(format!("the new link {temp} vanished")),
            None,
        )),
    };
    if let Err((e, index)) = moved {
        if let Some(index) = index {
            let _ = host.link().del(index).execute().await;
        }
        return Err(e);
    }
    let inside = netns::handle_in(netns)?;
    let index = index_of(&inside, &temp)
        .await
        .ok_or_else(|| NetError::Netlink("the macvlan did not arrive in the container".into()))?;
    let configured = configure(&inside, index, ifname, ip, prefix, gateway).await;
    if configured.is_err() {
        let _ = inside.link().del(index).execute().await;
    }
    configured
}

async fn configure(
    inside: &Handle,
    index: u32,
    ifname: &str,
    ip: Ipv4Addr,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
) -> Result<(), NetError> {
    let named = inside
        .link()
        .set(LinkUnspec::new_with_index(index).name(ifname).build())
        .execute()
        .await;
    match named {
        Err(e) if errno(&e) == libc::EEXIST => {
            return Err(NetError::State(format!(
                "the container already has an interface named {ifname}: pick another name"
            )));
        }
        other => other.map_err(nl("naming the macvlan"))?,
    }
    inside
        .address()
        .add(index, IpAddr::V4(ip), prefix)
        .execute()
        .await
        .map_err(nl("addressing the macvlan"))?;
    set_link(
        inside,
        LinkUnspec::new_with_index(index).up(),
        "bringing the macvlan up",
    )
    .await?;
    if let Some(lo) = index_of(inside, "lo").await {
        set_link(
            inside,
            LinkUnspec::new_with_index(lo).up(),
            "bringing lo up",
        )
        .await?;
    }
    if let Some(gw) = gateway {
        let routed = inside
            .route()
            .add(RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw).build())
            .execute()
            .await;
        match routed {
            Err(e) if errno(&e) == libc::ENETUNREACH => {
                return Err(NetError::State(format!(
                    "the gateway {gw} is outside {ip}/{prefix}: give a gateway in the subnet"
                )));
            }
            other => other.map_err(nl("adding the default route"))?,
        }
    }
    Ok(())
}

/// A name for the link between its making and its move, unique on this host: the pid
/// and a counter, at most 15 characters.
fn temp_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) & 0xff_ffff;
    format!("mv{:x}x{n:x}", std::process::id() & 0xff_ffff)
}

/// The macvlan driver: an interface on the parent's segment, made in the container's
/// namespace; it goes with the namespace, so nothing is kept here.
pub struct Macvlan;

impl super::Driver for Macvlan {
    fn attach<'a>(
        &'a self,
        j: super::Join<'a>,
    ) -> futures::future::BoxFuture<'a, Result<(), NetError>> {
        Box::pin(async move {
            let parent = j
                .network
                .spec
                .options
                .get("parent")
                .cloned()
                .unwrap_or_default();
            let gateway = j
                .default_route
                .then(|| j.network.gateway.parse().ok())
                .flatten();
            let (ip, prefix) = j.addr;
            attach(&parent, j.netns, j.ifname, ip, prefix, gateway, mac_for(ip)).await
        })
    }

    fn detach<'a>(
        &'a self,
        _network_id: &'a str,
        _endpoint_id: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), NetError>> {
        Box::pin(async { Ok(()) })
    }

    fn restore<'a>(
        &'a self,
        _live: &'a [(shoal_api::types::Network, String)],
    ) -> futures::future::BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    fn remove_all(&self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::overlay::tests::{Lab, ip, is_root, links_in, ping, wire};

    #[test]
    fn temporary_names_fit_and_differ() {
        let (a, b) = (temp_name(), temp_name());
        assert_ne!(a, b);
        assert!(a.len() <= 15, "{a}");
    }

    #[tokio::test]
    async fn a_macvlan_container_is_on_the_parents_lan() {
        if !is_root() {
            eprintln!("SKIPPED: macvlan needs root");
            return;
        }
        let mut lab = Lab::new();
        let (host, other, ctr) = (lab.netns("host"), lab.netns("other"), lab.netns("ctr"));
        // The host's LAN: its `lan0` cabled to another machine's `lan1`.
        wire(&host, "lan0", &other, "lan1").await;
        ip(&host, &["link", "set", "lan0", "up"]);
        ip(&other, &["addr", "add", "192.168.81.2/24", "dev", "lan1"]);
        ip(&other, &["link", "set", "lan1", "up"]);
        let mac = [0x02, 0x42, 192, 168, 81, 10];
        let target = ctr.clone();
        // The driver works in its caller's namespace: call it from a thread of the host's.
        let (exists, missing, no_parent, attached) = netns::run_in(&host, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async {
                let ip = Ipv4Addr::new(192, 168, 81, 10);
                let gw = Some(Ipv4Addr::new(192, 168, 81, 1));
                (
                    parent_exists("lan0"),
                    parent_exists("nope0"),
                    attach("nope0", &target, "eth0", ip, 24, gw, mac).await,
                    attach("lan0", &target, "eth0", ip, 24, gw, mac).await,
                )
            })
        })
        .expect("running in the host namespace");
        assert!(exists && !missing);
        let e = no_parent.expect_err("no such parent").to_string();
        assert!(e.contains("nope0") && e.contains("-o parent=IFACE"), "{e}");
        attached.expect("attaching");

        assert!(
            ping(&other, Ipv4Addr::new(192, 168, 81, 10)),
            "the LAN reaches the container"
        );
        let route = ip(&ctr, &["route", "show", "default"]);
        assert!(route.contains("via 192.168.81.1 dev eth0"), "{route}");
        let link = ip(&ctr, &["-d", "-o", "link", "show", "eth0"]);
        assert!(
            link.contains("02:42:c0:a8:51:0a") && link.contains("macvlan"),
            "{link}"
        );
        assert_eq!(
            links_in(&host).await,
            ["lo", "lan0"].map(String::from).into(),
            "nothing left on the host"
        );
    }
}
