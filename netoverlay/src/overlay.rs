//! The data plane of overlay networks on one node: a VXLAN segment per network.
//!
//! Each network has a sandbox namespace here (`<state_dir>/ov-<id12>`) holding a bridge
//! `br0` with the gateway address and a VXLAN device `vxlan0`; every endpoint is a veth
//! from `br0` into a container's namespace (or into the caller's, for the host's own
//! endpoint). The VXLAN device is made in the caller's namespace and then moved into the
//! sandbox: its UDP socket stays where the device was made, so the tunnel rides the
//! host's underlay while the bridge stays out of the host's sight. Endpoints on other
//! nodes are programmed, never learnt ([`Overlays::set_peers`]): a permanent neighbour
//! entry, which the device answers ARP from, and a forwarding entry to the peer's node.
//! The sandbox comes with the first endpoint and goes with the last; the state survives a
//! daemon restart in `overlay.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, LinkVxlan};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::bridge::NetError;
use crate::netns;

/// The IANA port of VXLAN.
const VXLAN_PORT: u16 = 4789;
/// Outer Ethernet, IPv4, UDP and VXLAN headers.
const VXLAN_OVERHEAD: u32 = 50;
/// The MTU assumed when the underlay interface cannot be found.
const DEFAULT_MTU: u32 = 1500;
const BRIDGE: &str = "br0";
const VXLAN: &str = "vxlan0";
const STATE_FILE: &str = "overlay.json";
const SANDBOX_PREFIX: &str = "ov-";

/// One overlay network as this node joins it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayConfig {
    /// The network's id; its first 12 characters name the sandbox.
    pub network_id: String,
    /// The VXLAN network identifier, 1 to 16777215, the same on every node.
    pub vni: u32,
    /// The network's subnet.
    pub subnet: Ipv4Net,
    /// The gateway address, given to the sandbox's bridge.
    pub gateway: Ipv4Addr,
    /// This node's address on the underlay: the source of its VXLAN packets.
    pub underlay_ip: Ipv4Addr,
}

/// An endpoint of the network on another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The endpoint's address in the overlay.
    pub ip: Ipv4Addr,
    /// Its node's underlay address.
    pub node_ip: Ipv4Addr,
}

/// The MAC address of the endpoint at `ip`: 02:42 and the four bytes of the address, so
/// every node can tell a peer's MAC from its address alone.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0x42, a, b, c, d]
}

/// The MTU of the interface holding `ip` in the calling thread's namespace, or 1500 when
/// no interface holds it.
pub fn underlay_mtu(ip: Ipv4Addr) -> u32 {
    underlay_link(ip).map_or(DEFAULT_MTU, |(_, mtu)| mtu)
}

/// The name and MTU of the interface holding `ip`.
fn underlay_link(ip: Ipv4Addr) -> Option<(String, u32)> {
    let name = nix::ifaddrs::getifaddrs()
        .ok()?
        .find(|a| {
            a.address
                .as_ref()
                .and_then(|s| s.as_sockaddr_in())
                .is_some_and(|s| s.ip() == ip)
        })?
        .interface_name;
    let mtu = link_mtu(&name).unwrap_or(DEFAULT_MTU);
    Some((name, mtu))
}

fn link_mtu(name: &str) -> Option<u32> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ok()?;
    // SAFETY: ifreq is plain old data, for which all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return None;
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFMTU reads the NUL-terminated name and writes an int into `req`,
    // which outlives the call; the socket is open.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) };
    if rc < 0 {
        return None;
    }
    // SAFETY: a successful SIOCGIFMTU filled the union's MTU member.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    u32::try_from(mtu).ok()
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    networks: BTreeMap<String, Network>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Network {
    vni: u32,
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    underlay_ip: Ipv4Addr,
    mtu: u32,
    endpoints: BTreeMap<String, Endpoint>,
    /// What is programmed on `vxlan0`: endpoint address → node address.
    peers: BTreeMap<Ipv4Addr, Ipv4Addr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Endpoint {
    ip: Ipv4Addr,
    /// The veth end on the sandbox's bridge; deleting it deletes the pair.
    sandbox_veth: String,
}

/// Where the far end of an endpoint's veth goes.
enum Target<'a> {
    Container { netns: &'a Path, ifname: &'a str },
    Host { ifname: &'a str },
}

struct Inner {
    state: State,
    /// Netlink handles inside the sandboxes, opened on first use.
    sandboxes: BTreeMap<String, Handle>,
}

/// The overlay networks of this node.
pub struct Overlays {
    state_dir: PathBuf,
    state_file: PathBuf,
    host_netns: Option<PathBuf>,
    /// Netlink in the caller's namespace, where VXLAN sockets and host ends live.
    handle: Handle,
    inner: Mutex<Inner>,
}

impl Overlays {
    /// Opens the overlay networks of this node with their state under `state_dir`; the
    /// underlay is the daemon's own namespace.
    pub async fn open(state_dir: &Path) -> Result<Overlays, NetError> {
        Self::open_in(state_dir, None).await
    }

    /// Like [`Overlays::open`], with the underlay (the "host") in the namespace at
    /// `host_netns` when given: tests make whole nodes that way.
    pub async fn open_in(
        state_dir: &Path,
        host_netns: Option<&Path>,
    ) -> Result<Overlays, NetError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| NetError::State(format!("creating {}: {e}", state_dir.display())))?;
        let state_file = state_dir.join(STATE_FILE);
        let state = match std::fs::read(&state_file) {
            Ok(raw) => serde_json::from_slice(&raw)
                .map_err(|e| NetError::State(format!("reading {}: {e}", state_file.display())))?,
            Err(_) => State::default(),
        };
        let handle = match host_netns {
            Some(path) => netns::handle_in(path)?,
            None => {
                let (conn, handle, _) = rtnetlink::new_connection()
                    .map_err(|e| NetError::Netlink(format!("opening netlink: {e}")))?;
                tokio::spawn(conn);
                handle
            }
        };
        Ok(Overlays {
            state_dir: state_dir.to_path_buf(),
            state_file,
            host_netns: host_netns.map(Path::to_path_buf),
            handle,
            inner: Mutex::new(Inner {
                state,
                sandboxes: BTreeMap::new(),
            }),
        })
    }

    /// The file that keeps the sandbox namespace of a network.
    pub fn sandbox_path(&self, network_id: &str) -> PathBuf {
        self.state_dir
            .join(format!("{SANDBOX_PREFIX}{}", short_id(network_id)))
    }

    /// The ids of the networks that have a sandbox on this node now.
    pub async fn networks(&self) -> Vec<String> {
        let inner = self.inner.lock().await;
        inner.state.networks.keys().cloned().collect()
    }

    /// Connects the container namespace at `netns` to the network as `ifname` with
    /// address `ip`, making the network's sandbox if it is the first endpoint here. No
    /// default route is added: the caller decides where egress goes.
    pub async fn attach(
        &self,
        cfg: &OverlayConfig,
        endpoint_id: &str,
        netns: &Path,
        ifname: &str,
        ip: Ipv4Addr,
    ) -> Result<(), NetError> {
        self.attach_endpoint(cfg, endpoint_id, Target::Container { netns, ifname }, ip)
            .await
    }

    /// Like [`Overlays::attach`] for the caller's own namespace: an interface `ifname`
    /// with address `ip` through which the host reaches the network.
    pub async fn attach_host(
        &self,
        cfg: &OverlayConfig,
        endpoint_id: &str,
        ifname: &str,
        ip: Ipv4Addr,
    ) -> Result<(), NetError> {
        self.attach_endpoint(cfg, endpoint_id, Target::Host { ifname }, ip)
            .await
    }

    /// Disconnects an endpoint; the sandbox goes with the network's last one. Unknown
    /// ids are fine.
    pub async fn detach(&self, network_id: &str, endpoint_id: &str) -> Result<(), NetError> {
        let mut inner = self.inner.lock().await;
        let inner = &mut *inner;
        let Some(net) = inner.state.networks.get_mut(network_id) else {
            return Ok(());
        };
        let Some(endpoint) = net.endpoints.remove(endpoint_id) else {
            return Ok(());
        };
        let result = if net.endpoints.is_empty() {
            self.remove_sandbox(inner, network_id).await
        } else {
            match self.sandbox_handle(inner, network_id) {
                Ok(sandbox) => delete_link(&sandbox, &endpoint.sandbox_veth).await,
                Err(e) => Err(e),
            }
        };
        self.save(&inner.state)?;
        result
    }

    /// Makes the network's forwarding match `peers`, the endpoints on other nodes:
    /// entries of peers that went away are removed, new ones added, moved ones fixed.
    /// Peers on this node are skipped; a network without a sandbox here is ignored.
    pub async fn set_peers(&self, network_id: &str, peers: &[Peer]) -> Result<(), NetError> {
        let mut inner = self.inner.lock().await;
        let inner = &mut *inner;
        let Some(net) = inner.state.networks.get(network_id) else {
            return Ok(());
        };
        let diff = diff_peers(&net.peers, peers, net.underlay_ip);
        if diff.remove.is_empty() && diff.set.is_empty() {
            return Ok(());
        }
        let sandbox = self.sandbox_handle(inner, network_id)?;
        let vxlan = index_of(&sandbox, VXLAN).await.ok_or_else(|| {
            NetError::Netlink(format!(
                "the VXLAN device of overlay network {network_id} is gone from its sandbox: \
                 detach and attach its endpoints again"
            ))
        })?;
        let Some(net) = inner.state.networks.get_mut(network_id) else {
            return Ok(());
        };
        let mut result = Ok(());
        for ip in diff.remove {
            let done = forget_peer(&sandbox, vxlan, ip).await;
            if done.is_ok() {
                net.peers.remove(&ip);
            }
            result = result.and(done);
        }
        for (ip, node_ip) in diff.set {
            let done = program_peer(&sandbox, vxlan, ip, node_ip).await;
            if done.is_ok() {
                net.peers.insert(ip, node_ip);
            }
            result = result.and(done);
        }
        self.save(&inner.state)?;
        result
    }

    /// Tears down every sandbox (daemon shutdown, tests).
    pub async fn remove_all(&self) -> Result<(), NetError> {
        let mut inner = self.inner.lock().await;
        let inner = &mut *inner;
        let ids: Vec<String> = inner.state.networks.keys().cloned().collect();
        let mut result = Ok(());
        for id in ids {
            result = result.and(self.remove_sandbox(inner, &id).await);
        }
        self.save(&inner.state)?;
        result
    }

    /// After a daemon restart: keeps the endpoints in `live`, removes the others, and
    /// removes the sandboxes left without endpoints, gone from under us, or unknown.
    pub async fn restore(&self, live: &[String]) -> Result<(), NetError> {
        let mut inner = self.inner.lock().await;
        let inner = &mut *inner;
        let ids: Vec<String> = inner.state.networks.keys().cloned().collect();
        let mut result = Ok(());
        for id in ids {
            let sandbox = match self.sandbox_handle(inner, &id) {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(
                        network = %id,
                        "the overlay sandbox is gone ({e}); forgetting its endpoints"
                    );
                    result = result.and(self.remove_sandbox(inner, &id).await);
                    continue;
                }
            };
            let Some(net) = inner.state.networks.get_mut(&id) else {
                continue;
            };
            let stale: Vec<String> = net
                .endpoints
                .keys()
                .filter(|e| !live.contains(e))
                .cloned()
                .collect();
            if stale.len() == net.endpoints.len() {
                drop(sandbox);
                result = result.and(self.remove_sandbox(inner, &id).await);
                continue;
            }
            for e in stale {
                if let Some(endpoint) = net.endpoints.remove(&e) {
                    result = result.and(delete_link(&sandbox, &endpoint.sandbox_veth).await);
                }
            }
        }
        // Sandboxes of no network: a crash between making one and saving the state.
        let known: BTreeSet<PathBuf> = inner
            .state
            .networks
            .keys()
            .map(|id| self.sandbox_path(id))
            .collect();
        if let Ok(dir) = std::fs::read_dir(&self.state_dir) {
            for entry in dir.flatten() {
                let path = entry.path();
                let ours = entry
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(SANDBOX_PREFIX));
                if ours && !known.contains(&path) {
                    result = result.and(discard_sandbox(&path, None).await);
                }
            }
        }
        self.save(&inner.state)?;
        result
    }

    async fn attach_endpoint(
        &self,
        cfg: &OverlayConfig,
        endpoint_id: &str,
        target: Target<'_>,
        ip: Ipv4Addr,
    ) -> Result<(), NetError> {
        let ifname = match &target {
            Target::Container { ifname, .. } | Target::Host { ifname } => *ifname,
        };
        check(cfg, ip, ifname)?;
        let mut inner = self.inner.lock().await;
        let inner = &mut *inner;
        let taken = inner
            .state
            .networks
            .get(&cfg.network_id)
            .is_some_and(|n| n.endpoints.contains_key(endpoint_id));
        if taken {
            return Err(NetError::State(format!(
                "endpoint {endpoint_id} is already attached to overlay network {}: detach it first",
                cfg.network_id
            )));
        }
        let sandbox = self.ensure_sandbox(inner, cfg).await?;
        let Some(net) = inner.state.networks.get_mut(&cfg.network_id) else {
            return Err(NetError::State("the new overlay sandbox vanished".into()));
        };
        let (sandbox_veth, temp) = veth_names(&cfg.network_id, endpoint_id);
        let plumbed = self
            .plumb(
                &sandbox,
                &self.sandbox_path(&cfg.network_id),
                (&sandbox_veth, &temp),
                &target,
                (ip, cfg.subnet.prefix_len()),
                net.mtu,
            )
            .await;
        match plumbed {
            Ok(()) => {
                net.endpoints
                    .insert(endpoint_id.to_string(), Endpoint { ip, sandbox_veth });
                self.save(&inner.state)
            }
            Err(e) => {
                // Either end may be anywhere by now; deleting one deletes both.
                let _ = delete_link(&sandbox, &sandbox_veth).await;
                let _ = delete_link(&self.handle, &sandbox_veth).await;
                let _ = delete_link(&self.handle, &temp).await;
                if net.endpoints.is_empty() {
                    let _ = self.remove_sandbox(inner, &cfg.network_id).await;
                    let _ = self.save(&inner.state);
                }
                Err(e)
            }
        }
    }

    /// The network's sandbox, made if this is its first endpoint here.
    async fn ensure_sandbox(
        &self,
        inner: &mut Inner,
        cfg: &OverlayConfig,
    ) -> Result<Handle, NetError> {
        if let Some(net) = inner.state.networks.get(&cfg.network_id) {
            if (net.vni, net.subnet, net.gateway) != (cfg.vni, cfg.subnet, cfg.gateway) {
                return Err(NetError::State(format!(
                    "overlay network {} is set up on this node with VNI {} and subnet {} \
                     (gateway {}): detach its endpoints before changing it",
                    cfg.network_id, net.vni, net.subnet, net.gateway
                )));
            }
            return self.sandbox_handle(inner, &cfg.network_id);
        }
        if let Some(other) = inner
            .state
            .networks
            .iter()
            .find_map(|(id, n)| (n.vni == cfg.vni).then_some(id))
        {
            return Err(NetError::State(format!(
                "VNI {} is in use on this node by overlay network {other}: give each overlay \
                 network its own VNI",
                cfg.vni
            )));
        }
        let mtu = self.underlay_mtu(cfg)?.saturating_sub(VXLAN_OVERHEAD);
        let path = self.sandbox_path(&cfg.network_id);
        discard_sandbox(&path, None).await?;
        netns::create(&path)?;
        match self.build_sandbox(cfg, &path, mtu).await {
            Ok(sandbox) => {
                tracing::info!(
                    network = %cfg.network_id,
                    vni = cfg.vni,
                    mtu,
                    "overlay sandbox made"
                );
                inner.state.networks.insert(
                    cfg.network_id.clone(),
                    Network {
                        vni: cfg.vni,
                        subnet: cfg.subnet,
                        gateway: cfg.gateway,
                        underlay_ip: cfg.underlay_ip,
                        mtu,
                        endpoints: BTreeMap::new(),
                        peers: BTreeMap::new(),
                    },
                );
                inner
                    .sandboxes
                    .insert(cfg.network_id.clone(), sandbox.clone());
                self.save(&inner.state)?;
                Ok(sandbox)
            }
            Err(e) => {
                let _ = delete_link(&self.handle, &vxlan_temp_name(cfg.vni)).await;
                let _ = discard_sandbox(&path, None).await;
                Err(e)
            }
        }
    }

    /// The MTU of the underlay interface, looked up in the host's namespace.
    fn underlay_mtu(&self, cfg: &OverlayConfig) -> Result<u32, NetError> {
        let ip = cfg.underlay_ip;
        let link = match &self.host_netns {
            Some(path) => netns::run_in(path, move || underlay_link(ip))?,
            None => underlay_link(ip),
        };
        match link {
            Some((_, mtu)) => Ok(mtu),
            None => {
                tracing::warn!(
                    network = %cfg.network_id,
                    "the underlay address {ip} is on no interface of this host: VXLAN packets \
                     of the network cannot leave it; check the node's data path address"
                );
                Ok(DEFAULT_MTU)
            }
        }
    }

    /// Inside the new sandbox at `path`: the bridge, then the VXLAN device, made here and
    /// moved in.
    async fn build_sandbox(
        &self,
        cfg: &OverlayConfig,
        path: &Path,
        mtu: u32,
    ) -> Result<Handle, NetError> {
        let sandbox = netns::handle_in(path)?;
        if let Some(lo) = index_of(&sandbox, "lo").await {
            set_link(
                &sandbox,
                LinkUnspec::new_with_index(lo).up(),
                "bringing lo up",
            )
            .await?;
        }
        sandbox
            .link()
            .add(LinkBridge::new(BRIDGE).mtu(mtu).build())
            .execute()
            .await
            .map_err(nl("creating the overlay bridge"))?;
        let bridge = must_index(&sandbox, BRIDGE).await?;
        sandbox
            .address()
            .add(bridge, IpAddr::V4(cfg.gateway), cfg.subnet.prefix_len())
            .execute()
            .await
            .map_err(nl("addressing the overlay bridge"))?;
        set_link(
            &sandbox,
            LinkUnspec::new_with_index(bridge).up(),
            "bringing the overlay bridge up",
        )
        .await?;

        let temp = vxlan_temp_name(cfg.vni);
        delete_link(&self.handle, &temp).await?;
        let made = self
            .handle
            .link()
            .add(
                LinkVxlan::new(&temp, cfg.vni)
                    .port(VXLAN_PORT)
                    .learning(false)
                    .proxy(true)
                    // No outer UDP checksum (the inner packet has its own; IPv4 allows
                    // it): measurably faster in software.
                    .udp_csum(false)
                    .local(cfg.underlay_ip)
                    .mtu(mtu)
                    .build(),
            )
            .execute()
            .await;
        if let Err(e) = made {
            return Err(self.vxlan_error(cfg.vni, &e).await);
        }
        let index = must_index(&self.handle, &temp).await?;
        move_link(
            &self.handle,
            index,
            path,
            "moving the VXLAN device into its sandbox",
        )
        .await?;
        let vxlan = must_index(&sandbox, &temp).await?;
        set_link(
            &sandbox,
            LinkUnspec::new_with_index(vxlan).name(VXLAN),
            "naming the VXLAN device",
        )
        .await?;
        let up = sandbox
            .link()
            .set(
                LinkUnspec::new_with_index(vxlan)
                    .controller(bridge)
                    .up()
                    .build(),
            )
            .execute()
            .await;
        match up {
            Err(e) if errno(&e) == libc::EADDRINUSE => Err(NetError::Netlink(format!(
                "UDP port {VXLAN_PORT} is in use on this host by something other than a VXLAN \
                 device like ours: overlay networks need it; stop what holds it \
                 (ss -ulpn 'sport = :{VXLAN_PORT}')"
            ))),
            Err(e) => Err(nl("bringing the VXLAN device up")(e)),
            Ok(()) => Ok(sandbox),
        }
    }

    async fn vxlan_error(&self, vni: u32, e: &rtnetlink::Error) -> NetError {
        NetError::Netlink(match errno(e) {
            libc::EOPNOTSUPP => "VXLAN needs the vxlan kernel module: load it (modprobe vxlan) or \
                                 use a kernel built with CONFIG_VXLAN"
                .into(),
            libc::EEXIST => match vxlan_holding(&self.handle, vni).await {
                Some(name) => format!(
                    "VNI {vni} is in use on this host by link {name}: delete that link \
                     (ip link del {name}) or give the network another VNI"
                ),
                None => format!(
                    "VNI {vni} is in use on this host by a VXLAN device in another network \
                     namespace (another overlay driver, or a leftover of an earlier run): \
                     remove it or give the network another VNI"
                ),
            },
            _ => format!("creating the VXLAN device for VNI {vni}: {e}"),
        })
    }

    /// Makes the endpoint's veth: one end on the sandbox's bridge, the other named
    /// `ifname` with the endpoint's MAC and address in its target namespace.
    async fn plumb(
        &self,
        sandbox: &Handle,
        sandbox_path: &Path,
        (sandbox_veth, temp): (&str, &str),
        target: &Target<'_>,
        (ip, prefix): (Ipv4Addr, u8),
        mtu: u32,
    ) -> Result<(), NetError> {
        let host = &self.handle;
        delete_link(host, sandbox_veth).await?;
        delete_link(host, temp).await?;
        if let Target::Host { ifname } = target
            && index_of(host, ifname).await.is_some()
        {
            return Err(NetError::State(format!(
                "an interface named {ifname} already exists on this host: pick another name"
            )));
        }
        host.link()
            .add(LinkVeth::new(sandbox_veth, temp).build())
            .execute()
            .await
            .map_err(nl("creating the endpoint's veth pair"))?;
        let end = must_index(host, sandbox_veth).await?;
        move_link(host, end, sandbox_path, "moving the veth into the sandbox").await?;
        let end = must_index(sandbox, sandbox_veth).await?;
        let bridge = must_index(sandbox, BRIDGE).await?;
        set_link(
            sandbox,
            LinkUnspec::new_with_index(end)
                .controller(bridge)
                .mtu(mtu)
                .up(),
            "attaching the veth to the overlay bridge",
        )
        .await?;
        match target {
            Target::Container { netns, ifname } => {
                let index = must_index(host, temp).await?;
                move_link(host, index, netns, "moving the veth into the container").await?;
                let inside = netns::handle_in(netns)?;
                configure(&inside, temp, ifname, (ip, prefix), mtu, "the container").await?;
                if let Some(lo) = index_of(&inside, "lo").await {
                    set_link(
                        &inside,
                        LinkUnspec::new_with_index(lo).up(),
                        "bringing lo up",
                    )
                    .await?;
                }
                Ok(())
            }
            Target::Host { ifname } => {
                configure(host, temp, ifname, (ip, prefix), mtu, "this host").await
            }
        }
    }

    /// Removes a network's sandbox and forgets the network. Missing is fine.
    async fn remove_sandbox(&self, inner: &mut Inner, network_id: &str) -> Result<(), NetError> {
        let handle = inner.sandboxes.remove(network_id);
        let Some(net) = inner.state.networks.remove(network_id) else {
            return Ok(());
        };
        // Left here if a move into the sandbox failed.
        let _ = delete_link(&self.handle, &vxlan_temp_name(net.vni)).await;
        tracing::info!(network = %network_id, "overlay sandbox removed");
        discard_sandbox(&self.sandbox_path(network_id), handle).await
    }

    fn sandbox_handle(&self, inner: &mut Inner, network_id: &str) -> Result<Handle, NetError> {
        if let Some(h) = inner.sandboxes.get(network_id) {
            return Ok(h.clone());
        }
        let h = netns::handle_in(&self.sandbox_path(network_id))?;
        inner.sandboxes.insert(network_id.to_string(), h.clone());
        Ok(h)
    }

    fn save(&self, state: &State) -> Result<(), NetError> {
        let raw = serde_json::to_vec_pretty(state).map_err(|e| NetError::State(e.to_string()))?;
        let tmp = self.state_file.with_extension("tmp");
        std::fs::write(&tmp, raw)
            .and_then(|()| std::fs::rename(&tmp, &self.state_file))
            .map_err(|e| NetError::State(format!("writing {}: {e}", self.state_file.display())))
    }
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

/// Removes the sandbox at `path`: the VXLAN device first (it frees its VNI at once; a
/// dying namespace may hold it a while), every other link, then the namespace. Missing
/// is fine.
async fn discard_sandbox(path: &Path, handle: Option<Handle>) -> Result<(), NetError> {
    if !path.exists() {
        return Ok(());
    }
    let handle = match handle {
        Some(h) => Some(h),
        None => netns::handle_in(path).ok(),
    };
    if let Some(h) = handle {
        let _ = delete_link(&h, VXLAN).await;
        let links: Vec<_> = h
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .unwrap_or_default();
        for link in links {
            let lo = link
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::IfName(n) if n == "lo"));
            if !lo {
                // A veth's peer in a container goes with it.
                let _ = h.link().del(link.header.index).execute().await;
            }
        }
    }
    netns::remove(path)?;
    Ok(())
}

/// The name of a VXLAN device between its making and its move into the sandbox.
fn vxlan_temp_name(vni: u32) -> String {
    format!("vx-{vni}")
}

/// The sandbox end and the temporary name of the far end of an endpoint's veth: unique
/// per network and endpoint, 14 characters.
fn veth_names(network_id: &str, endpoint_id: &str) -> (String, String) {
    let h = fnv1a(format!("{network_id}\0{endpoint_id}").as_bytes()) & 0xffff_ffff_ffff;
    (format!("ov{h:012x}"), format!("oc{h:012x}"))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn short_id(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(12)
        .collect()
}

fn check(cfg: &OverlayConfig, ip: Ipv4Addr, ifname: &str) -> Result<(), NetError> {
    let id = &cfg.network_id;
    if short_id(id).is_empty() {
        return Err(NetError::State(format!(
            "overlay network id {id:?} has no letters or digits: give the network a proper id"
        )));
    }
    if !(1..=0xff_ffff).contains(&cfg.vni) {
        return Err(NetError::State(format!(
            "VNI {} of overlay network {id} is out of range: a VXLAN network identifier is 1 \
             to 16777215",
            cfg.vni
        )));
    }
    if !cfg.subnet.contains(&ip) || ip == cfg.subnet.network() || ip == cfg.subnet.broadcast() {
        return Err(NetError::State(format!(
            "address {ip} is not a host address of subnet {} of overlay network {id}",
            cfg.subnet
        )));
    }
    if ip == cfg.gateway {
        return Err(NetError::State(format!(
            "address {ip} is the gateway of overlay network {id}: give the endpoint another one"
        )));
    }
    if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['/', ' ']) {
        return Err(NetError::State(format!(
            "interface name {ifname:?} is not valid: use 1 to 15 characters, no '/' or spaces"
        )));
    }
    Ok(())
}

/// What [`Overlays::set_peers`] changes.
#[derive(Debug, PartialEq, Eq)]
struct PeerDiff {
    /// Addresses whose entries go.
    remove: Vec<Ipv4Addr>,
    /// Entries to add or point at another node.
    set: Vec<(Ipv4Addr, Ipv4Addr)>,
}

fn diff_peers(old: &BTreeMap<Ipv4Addr, Ipv4Addr>, new: &[Peer], local: Ipv4Addr) -> PeerDiff {
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
async fn program_peer(
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
async fn forget_peer(sandbox: &Handle, vxlan: u32, ip: Ipv4Addr) -> Result<(), NetError> {
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

/// The VXLAN device with `vni` in the namespace of `h`.
async fn vxlan_holding(h: &Handle, vni: u32) -> Option<String> {
    let links: Vec<_> = h.link().get().execute().try_collect().await.ok()?;
    links.into_iter().find_map(|l| {
        let has_vni = l.attributes.iter().any(|a| match a {
            LinkAttribute::LinkInfo(info) => info.iter().any(|i| match i {
                LinkInfo::Data(InfoData::Vxlan(d)) => d.contains(&InfoVxlan::Id(vni)),
                _ => false,
            }),
            _ => false,
        });
        if !has_vni {
            return None;
        }
        l.attributes.into_iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n),
            _ => None,
        })
    })
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    pub(crate) fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// The namespaces of one test, removed on drop (with any overlay sandbox under the
    /// test's directory), pass or fail.
    pub(crate) struct Lab {
        pub(crate) dir: tempfile::TempDir,
        namespaces: Vec<PathBuf>,
    }

    impl Lab {
        pub(crate) fn new() -> Lab {
            Lab {
                dir: tempfile::tempdir().expect("a temporary directory"),
                namespaces: Vec::new(),
            }
        }

        pub(crate) fn netns(&mut self, name: &str) -> PathBuf {
            let path = self.dir.path().join(name);
            netns::create(&path).expect("creating a test namespace");
            self.namespaces.push(path.clone());
            let _ = run(&path, &["ip", "link", "set", "lo", "up"]);
            path
        }
    }

    impl Drop for Lab {
        fn drop(&mut self) {
            let dirs = std::fs::read_dir(self.dir.path()).into_iter().flatten();
            for sub in dirs.flatten().filter(|e| e.path().is_dir()) {
                for entry in std::fs::read_dir(sub.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if entry
                        .file_name()
                        .to_string_lossy()
                        .starts_with(SANDBOX_PREFIX)
                    {
                        let _ = netns::remove(&entry.path());
                    }
                }
            }
            for ns in self.namespaces.iter().rev() {
                let _ = netns::remove(ns);
            }
        }
    }

    /// Runs a command inside the namespace at `ns`: its stdout, or its stderr as error.
    pub(crate) fn run(ns: &Path, cmd: &[&str]) -> Result<String, String> {
        let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        let out = netns::run_in(ns, move || Command::new(&cmd[0]).args(&cmd[1..]).output())
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub(crate) fn ip(ns: &Path, args: &[&str]) -> String {
        let mut cmd = vec!["ip"];
        cmd.extend_from_slice(args);
        run(ns, &cmd).unwrap_or_else(|e| panic!("ip {args:?}: {e}"))
    }

    /// Whether a ping from inside `ns` to `to` gets an answer within ten seconds.
    pub(crate) fn ping(ns: &Path, to: Ipv4Addr) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        let to = to.to_string();
        while Instant::now() < deadline {
            if run(ns, &["busybox", "ping", "-c1", "-W1", &to]).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    /// A veth pair between two namespaces: `a_name` in `a`, `b_name` in `b`.
    pub(crate) async fn wire(a: &Path, a_name: &str, b: &Path, b_name: &str) {
        let h = netns::handle_in(a).expect("netlink in the test namespace");
        h.link()
            .add(LinkVeth::new(a_name, b_name).build())
            .execute()
            .await
            .expect("creating the test veth pair");
        let index = must_index(&h, b_name).await.expect("the test veth");
        move_link(&h, index, b, "moving the test veth")
            .await
            .expect("moving the test veth");
    }

    pub(crate) async fn links_in(ns: &Path) -> BTreeSet<String> {
        let h = netns::handle_in(ns).expect("netlink in the namespace");
        let links: Vec<_> = h
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .expect("listing links");
        links
            .into_iter()
            .flat_map(|l| l.attributes)
            .filter_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n),
                _ => None,
            })
            .collect()
    }

    async fn link_attr<T>(
        ns: &Path,
        name: &str,
        pick: impl Fn(LinkAttribute) -> Option<T>,
    ) -> Option<T> {
        let h = netns::handle_in(ns).expect("netlink in the namespace");
        let mut links = h.link().get().match_name(name.to_string()).execute();
        let link = links.try_next().await.ok().flatten()?;
        link.attributes.into_iter().find_map(pick)
    }

    async fn mtu_in(ns: &Path, name: &str) -> Option<u32> {
        link_attr(ns, name, |a| match a {
            LinkAttribute::Mtu(m) => Some(m),
            _ => None,
        })
        .await
    }

    async fn mac_in(ns: &Path, name: &str) -> Option<Vec<u8>> {
        link_attr(ns, name, |a| match a {
            LinkAttribute::Address(m) => Some(m),
            _ => None,
        })
        .await
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn addr(s: &str) -> Ipv4Addr {
        s.parse().expect("a test address")
    }

    fn config(id: &str, vni: u32, subnet: &str, underlay: &str) -> OverlayConfig {
        let subnet: Ipv4Net = subnet.parse().expect("a test subnet");
        OverlayConfig {
            network_id: id.into(),
            vni,
            gateway: subnet.hosts().next().expect("a gateway"),
            subnet,
            underlay_ip: addr(underlay),
        }
    }

    /// A node's namespace with a veth pair `u0`/`u1` and `ip`/24 on `u0`.
    fn lone_host(ns: &Path, ip: &str) {
        ip_cmd(
            ns,
            &["link", "add", "u0", "type", "veth", "peer", "name", "u1"],
        );
        ip_cmd(ns, &["addr", "add", &format!("{ip}/24"), "dev", "u0"]);
        ip_cmd(ns, &["link", "set", "u0", "up"]);
    }

    /// Runs `ip` in `ns` for its effect; a failure fails the test.
    fn ip_cmd(ns: &Path, args: &[&str]) {
        let _ = ip(ns, args);
    }

    #[test]
    fn macs_and_names() {
        assert_eq!(mac_for(addr("10.99.0.3")), [0x02, 0x42, 10, 99, 0, 3]);
        let (a, b) = veth_names("net1", "ctr1");
        assert!(a.len() <= 15 && b.len() <= 15, "{a} {b}");
        assert_ne!(a, b);
        assert_ne!(veth_names("net1", "ctr2").0, a);
        assert_ne!(veth_names("net2", "ctr1").0, a);
        assert_eq!(veth_names("net1", "ctr1").0, a, "names are stable");
        assert!(vxlan_temp_name(0xff_ffff).len() <= 15);
        assert_eq!(short_id("0123456789abcdef"), "0123456789ab");
    }

    #[test]
    fn peer_diff_removes_adds_and_moves() {
        let local = addr("192.168.1.1");
        let old: BTreeMap<_, _> = [
            (addr("10.0.0.5"), addr("192.168.1.2")),
            (addr("10.0.0.6"), addr("192.168.1.3")),
            (addr("10.0.0.8"), addr("192.168.1.2")),
        ]
        .into();
        let peer = |ip: &str, node: &str| Peer {
            ip: addr(ip),
            node_ip: addr(node),
        };
        let new = [
            peer("10.0.0.6", "192.168.1.4"),
            peer("10.0.0.7", "192.168.1.2"),
            peer("10.0.0.8", "192.168.1.2"),
            peer("10.0.0.9", "192.168.1.1"),
        ];
        assert_eq!(
            diff_peers(&old, &new, local),
            PeerDiff {
                remove: vec![addr("10.0.0.5")],
                set: vec![
                    (addr("10.0.0.6"), addr("192.168.1.4")),
                    (addr("10.0.0.7"), addr("192.168.1.2")),
                ],
            }
        );
        assert_eq!(
            diff_peers(&BTreeMap::new(), &[], local),
            PeerDiff {
                remove: vec![],
                set: vec![]
            }
        );
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        let cfg = config("net1", 4242, "10.99.0.0/24", "192.168.1.1");
        let err = |cfg: &OverlayConfig, ip: &str, ifname: &str| {
            check(cfg, addr(ip), ifname)
                .expect_err("refused")
                .to_string()
        };
        assert!(check(&cfg, addr("10.99.0.2"), "eth1").is_ok());
        assert!(err(&cfg, "10.98.0.2", "eth1").contains("not a host address of subnet"));
        assert!(err(&cfg, "10.99.0.1", "eth1").contains("is the gateway"));
        assert!(err(&cfg, "10.99.0.2", "a-very-long-ifname").contains("1 to 15"));
        let e = err(
            &OverlayConfig {
                vni: 0,
                ..cfg.clone()
            },
            "10.99.0.2",
            "eth1",
        );
        assert!(e.contains("VNI 0") && e.contains("out of range"), "{e}");
    }

    #[test]
    fn state_survives_a_round_trip() {
        let mut state = State::default();
        state.networks.insert(
            "n".into(),
            Network {
                vni: 7,
                subnet: "10.1.0.0/24".parse().expect("subnet"),
                gateway: addr("10.1.0.1"),
                underlay_ip: addr("192.168.0.1"),
                mtu: 1450,
                endpoints: [(
                    "e".to_string(),
                    Endpoint {
                        ip: addr("10.1.0.2"),
                        sandbox_veth: "ov1".into(),
                    },
                )]
                .into(),
                peers: [(addr("10.1.0.3"), addr("192.168.0.2"))].into(),
            },
        );
        let raw = serde_json::to_vec(&state).expect("serializing");
        let back: State = serde_json::from_slice(&raw).expect("parsing");
        assert_eq!(back.networks["n"].peers, state.networks["n"].peers);
        assert_eq!(back.networks["n"].endpoints["e"].ip, addr("10.1.0.2"));
    }

    #[tokio::test]
    async fn two_nodes_reach_each_other_over_vxlan() {
        if !is_root() {
            eprintln!("SKIPPED: overlay networks need root");
            return;
        }
        let mut lab = Lab::new();
        let (ha, hb) = (lab.netns("host-a"), lab.netns("host-b"));
        let (ca, cb) = (lab.netns("ctr-a"), lab.netns("ctr-b"));
        // The underlay: a cable between the two nodes, with an MTU of its own.
        wire(&ha, "u0", &hb, "u1").await;
        for (ns, ip, dev) in [
            (&ha, "192.168.77.1/24", "u0"),
            (&hb, "192.168.77.2/24", "u1"),
        ] {
            ip_cmd(ns, &["addr", "add", ip, "dev", dev]);
            ip_cmd(ns, &["link", "set", dev, "mtu", "1400", "up"]);
        }
        let a = Overlays::open_in(&lab.dir.path().join("state-a"), Some(&ha))
            .await
            .expect("opening node A");
        let b = Overlays::open_in(&lab.dir.path().join("state-b"), Some(&hb))
            .await
            .expect("opening node B");
        let id = "0123456789abcdef-two-nodes";
        let net_a = config(id, 4242, "10.99.0.0/24", "192.168.77.1");
        let net_b = config(id, 4242, "10.99.0.0/24", "192.168.77.2");
        let (ip_a, ip_b, ip_host) = (addr("10.99.0.2"), addr("10.99.0.3"), addr("10.99.0.254"));
        a.attach(&net_a, "ctr-a", &ca, "eth1", ip_a)
            .await
            .expect("attaching on A");
        b.attach(&net_b, "ctr-b", &cb, "eth1", ip_b)
            .await
            .expect("attaching on B");
        a.attach_host(&net_a, "host-a", "ovhost0", ip_host)
            .await
            .expect("attaching A's host");
        let on = |ip, node: &OverlayConfig| Peer {
            ip,
            node_ip: node.underlay_ip,
        };
        // Every endpoint of the network; each node skips its own.
        let all = [on(ip_a, &net_a), on(ip_host, &net_a), on(ip_b, &net_b)];
        a.set_peers(id, &all).await.expect("peers on A");
        b.set_peers(id, &all).await.expect("peers on B");

        assert!(ping(&ca, ip_b), "A's container reaches B's");
        assert!(ping(&cb, ip_a), "B's container reaches A's");
        assert!(ping(&ha, ip_b), "A's host end reaches B's container");

        assert_eq!(
            a.sandbox_path(id),
            lab.dir.path().join("state-a/ov-0123456789ab")
        );
        assert_eq!(a.networks().await, vec![id.to_string()]);
        let sandbox = a.sandbox_path(id);
        for (ns, link) in [
            (&ca, "eth1"),
            (&ha, "ovhost0"),
            (&sandbox, "vxlan0"),
            (&sandbox, "br0"),
        ] {
            assert_eq!(mtu_in(ns, link).await, Some(1350), "MTU of {link}");
        }
        assert_eq!(mac_in(&ca, "eth1").await, Some(mac_for(ip_a).to_vec()));
        assert_eq!(ip(&ca, &["route", "show", "default"]).trim(), "");
        // The bridge and the tunnel device stay out of the host's sight.
        assert_eq!(links_in(&ha).await, set(&["lo", "u0", "ovhost0"]));

        for (node, ep) in [(&a, "ctr-a"), (&a, "host-a"), (&b, "ctr-b")] {
            node.detach(id, ep).await.expect("detaching");
        }
        a.detach(id, "ctr-a")
            .await
            .expect("detaching twice is fine");
        a.detach("no-such-net", "x")
            .await
            .expect("unknown ids are fine");
        assert!(!a.sandbox_path(id).exists() && !b.sandbox_path(id).exists());
        assert!(a.networks().await.is_empty());
        assert_eq!(links_in(&ha).await, set(&["lo", "u0"]));
        assert_eq!(links_in(&hb).await, set(&["lo", "u1"]));
        assert_eq!(links_in(&ca).await, set(&["lo"]));
        assert_eq!(links_in(&cb).await, set(&["lo"]));
    }

    #[tokio::test]
    async fn peers_follow_the_desired_set() {
        if !is_root() {
            eprintln!("SKIPPED: overlay networks need root");
            return;
        }
        let mut lab = Lab::new();
        let (h, c) = (lab.netns("host"), lab.netns("ctr"));
        lone_host(&h, "192.168.78.1");
        let ov = Overlays::open_in(&lab.dir.path().join("state"), Some(&h))
            .await
            .expect("opening");
        let id = "peers-net";
        let cfg = config(id, 4343, "10.98.0.0/24", "192.168.78.1");
        ov.attach(&cfg, "ep", &c, "eth1", addr("10.98.0.2"))
            .await
            .expect("attaching");
        let peer = |ip: &str, node: &str| Peer {
            ip: addr(ip),
            node_ip: addr(node),
        };
        let sandbox = ov.sandbox_path(id);
        let tables = || {
            let fdb = run(&sandbox, &["bridge", "fdb", "show", "dev", "vxlan0"]).expect("fdb");
            let neigh = ip(&sandbox, &["neigh", "show", "dev", "vxlan0"]);
            (fdb, neigh)
        };
        let fdb_to = |fdb: &str, ip: &str| -> Vec<String> {
            let mac = mac_for(addr(ip)).map(|b| format!("{b:02x}")).join(":");
            fdb.lines()
                .filter(|l| l.starts_with(&mac))
                .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "dst").nth(1))
                .map(str::to_string)
                .collect()
        };
        let neighbour = |neigh: &str, ip: &str| {
            let mac = mac_for(addr(ip)).map(|b| format!("{b:02x}")).join(":");
            neigh.lines().any(|l| {
                l.starts_with(&format!("{ip} ")) && l.contains(&mac) && l.contains("PERMANENT")
            })
        };

        ov.set_peers(
            id,
            &[
                peer("10.98.0.5", "192.168.78.2"),
                peer("10.98.0.6", "192.168.78.3"),
                peer("10.98.0.2", "192.168.78.1"),
            ],
        )
        .await
        .expect("first peers");
        let (fdb, neigh) = tables();
        assert_eq!(fdb_to(&fdb, "10.98.0.5"), ["192.168.78.2"], "{fdb}");
        assert_eq!(fdb_to(&fdb, "10.98.0.6"), ["192.168.78.3"], "{fdb}");
        assert!(
            fdb_to(&fdb, "10.98.0.2").is_empty(),
            "own endpoints are skipped: {fdb}"
        );
        assert!(
            neighbour(&neigh, "10.98.0.5") && neighbour(&neigh, "10.98.0.6"),
            "{neigh}"
        );
        assert!(!neigh.contains("10.98.0.2 "), "{neigh}");

        ov.set_peers(
            id,
            &[
                peer("10.98.0.6", "192.168.78.4"),
                peer("10.98.0.7", "192.168.78.2"),
            ],
        )
        .await
        .expect("second peers");
        let (fdb, neigh) = tables();
        assert!(fdb_to(&fdb, "10.98.0.5").is_empty(), "gone peer: {fdb}");
        assert_eq!(
            fdb_to(&fdb, "10.98.0.6"),
            ["192.168.78.4"],
            "moved peer: {fdb}"
        );
        assert_eq!(
            fdb_to(&fdb, "10.98.0.7"),
            ["192.168.78.2"],
            "new peer: {fdb}"
        );
        assert!(!neigh.contains("10.98.0.5 "), "{neigh}");
        assert!(
            neighbour(&neigh, "10.98.0.6") && neighbour(&neigh, "10.98.0.7"),
            "{neigh}"
        );

        ov.set_peers("no-such-net", &[peer("10.0.0.1", "192.168.78.9")])
            .await
            .expect("an unknown network is ignored");
        assert_eq!(ov.networks().await, vec![id.to_string()]);
        ov.remove_all().await.expect("removing all");
        assert!(!sandbox.exists());
        assert_eq!(links_in(&h).await, set(&["lo", "u0", "u1"]));
        assert_eq!(links_in(&c).await, set(&["lo"]));
    }

    #[tokio::test]
    async fn restore_keeps_live_endpoints_and_drops_the_rest() {
        if !is_root() {
            eprintln!("SKIPPED: overlay networks need root");
            return;
        }
        let mut lab = Lab::new();
        let (h, c1, c2) = (lab.netns("host"), lab.netns("ctr1"), lab.netns("ctr2"));
        lone_host(&h, "192.168.79.1");
        let state = lab.dir.path().join("state");
        let (n1, n2) = (
            config("restore-one", 4444, "10.97.1.0/24", "192.168.79.1"),
            config("restore-two", 4445, "10.97.2.0/24", "192.168.79.1"),
        );
        {
            let ov = Overlays::open_in(&state, Some(&h)).await.expect("opening");
            ov.attach(&n1, "ep1", &c1, "eth1", addr("10.97.1.2"))
                .await
                .expect("attaching ep1");
            ov.attach(&n2, "ep2", &c2, "eth1", addr("10.97.2.2"))
                .await
                .expect("attaching ep2");
            let e = ov
                .attach(&n2, "ep2", &c2, "eth2", addr("10.97.2.3"))
                .await
                .expect_err("attached twice")
                .to_string();
            assert!(e.contains("already attached"), "{e}");
        }
        // A sandbox of no network, as a crash could leave one.
        let leftover = state.join("ov-leftover");
        netns::create(&leftover).expect("a leftover sandbox");

        let ov = Overlays::open_in(&state, Some(&h))
            .await
            .expect("opening again");
        assert_eq!(
            ov.networks().await,
            vec![n1.network_id.clone(), n2.network_id.clone()]
        );
        ov.restore(&["ep1".to_string()]).await.expect("restoring");
        assert_eq!(ov.networks().await, vec![n1.network_id.clone()]);
        assert!(ov.sandbox_path(&n1.network_id).exists());
        assert!(!ov.sandbox_path(&n2.network_id).exists());
        assert!(!leftover.exists());
        assert_eq!(links_in(&c1).await, set(&["lo", "eth1"]));
        assert_eq!(links_in(&c2).await, set(&["lo"]));
        // The kept network still works: a second endpoint joins its sandbox.
        ov.attach(&n1, "ep3", &c2, "eth1", addr("10.97.1.3"))
            .await
            .expect("attaching after restore");
        assert!(ping(&c2, addr("10.97.1.2")));

        ov.remove_all().await.expect("removing all");
        assert!(ov.networks().await.is_empty());
        assert!(!ov.sandbox_path(&n1.network_id).exists());
        assert_eq!(links_in(&h).await, set(&["lo", "u0", "u1"]));
        assert_eq!(links_in(&c1).await, set(&["lo"]));
    }

    #[tokio::test]
    async fn a_vni_in_use_is_named() {
        if !is_root() {
            eprintln!("SKIPPED: overlay networks need root");
            return;
        }
        let mut lab = Lab::new();
        let (h, c) = (lab.netns("host"), lab.netns("ctr"));
        lone_host(&h, "192.168.80.1");
        let ov = Overlays::open_in(&lab.dir.path().join("state"), Some(&h))
            .await
            .expect("opening");
        let first = config("vni-first", 4546, "10.96.1.0/24", "192.168.80.1");
        ov.attach(&first, "ep1", &c, "eth1", addr("10.96.1.2"))
            .await
            .expect("attaching");
        let same = config("vni-second", 4546, "10.96.2.0/24", "192.168.80.1");
        let e = ov
            .attach(&same, "ep2", &c, "eth2", addr("10.96.2.2"))
            .await
            .expect_err("a VNI twice")
            .to_string();
        assert!(e.contains("VNI 4546") && e.contains("vni-first"), "{e}");

        ip_cmd(
            &h,
            &[
                "link", "add", "vxother", "type", "vxlan", "id", "4547", "dstport", "4789",
            ],
        );
        let theirs = config("vni-third", 4547, "10.96.3.0/24", "192.168.80.1");
        let e = ov
            .attach(&theirs, "ep3", &c, "eth3", addr("10.96.3.2"))
            .await
            .expect_err("a VNI held by another device")
            .to_string();
        assert!(e.contains("VNI 4547") && e.contains("link vxother"), "{e}");
        assert!(
            !ov.sandbox_path("vni-third").exists(),
            "a failed first attach leaves no sandbox"
        );
        assert_eq!(links_in(&h).await, set(&["lo", "u0", "u1", "vxother"]));
        assert_eq!(links_in(&c).await, set(&["lo", "eth1"]));
        ov.remove_all().await.expect("removing all");
    }
}
