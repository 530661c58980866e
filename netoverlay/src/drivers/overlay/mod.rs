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
use rtnetlink::packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, LinkVxlan};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::error::NetError;
use crate::link::{configure, delete_link, errno, index_of, move_link, must_index, nl, set_link};
use crate::netns;

mod peers;
mod sandbox;
use peers::{diff_peers, forget_peer, program_peer};
use sandbox::discard_sandbox;
pub use sandbox::underlay_mtu;

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

    fn save(&self, state: &State) -> Result<(), NetError> {
        let raw = serde_json::to_vec_pretty(state).map_err(|e| NetError::State(e.to_string()))?;
        let tmp = self.state_file.with_extension("tmp");
        std::fs::write(&tmp, raw)
            .and_then(|()| std::fs::rename(&tmp, &self.state_file))
            .map_err(|e| NetError::State(format!("writing {}: {e}", self.state_file.display())))
    }
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

impl Overlays {
    /// Joins `endpoint_id` (interface `ifname` in `netns`) to `network`, this node's
    /// underlay address being `underlay`.
    pub async fn attach_to(
        &self,
        network: &shoal_api::types::Network,
        underlay: Ipv4Addr,
        endpoint_id: &str,
        netns: &Path,
        ifname: &str,
        addr: (Ipv4Addr, u8),
    ) -> Result<(), NetError> {
        let bad =
            |what: &str| NetError::State(format!("network {}: bad {what}", network.spec.name));
        let cfg = OverlayConfig {
            network_id: network.id.clone(),
            vni: network.vni,
            subnet: network.subnet.parse().map_err(|_| bad("subnet"))?,
            gateway: network.gateway.parse().map_err(|_| bad("gateway"))?,
            underlay_ip: underlay,
        };
        self.attach(&cfg, endpoint_id, netns, ifname, addr.0).await
    }
}

impl super::Driver for Overlays {
    fn attach<'a>(
        &'a self,
        j: super::Join<'a>,
    ) -> futures::future::BoxFuture<'a, Result<(), NetError>> {
        Box::pin(async move {
            let underlay = j.underlay.ok_or_else(|| {
                NetError::State(
                    "this node's underlay address is not known yet (no word from the managers): try again"
                        .into(),
                )
            })?;
            self.attach_to(
                j.network,
                underlay,
                j.endpoint_id,
                j.netns,
                j.ifname,
                j.addr,
            )
            .await
        })
    }

    fn detach<'a>(
        &'a self,
        network_id: &'a str,
        endpoint_id: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), NetError>> {
        Box::pin(self.detach(network_id, endpoint_id))
    }

    fn set_peers<'a>(
        &'a self,
        network_id: &'a str,
        peers: &'a [Peer],
    ) -> futures::future::BoxFuture<'a, Result<(), NetError>> {
        Box::pin(self.set_peers(network_id, peers))
    }

    fn restore<'a>(
        &'a self,
        live: &'a [(shoal_api::types::Network, String)],
    ) -> futures::future::BoxFuture<'a, ()> {
        Box::pin(async move {
            let ids: Vec<String> = live.iter().map(|(_, id)| id.clone()).collect();
            if let Err(e) = self.restore(&ids).await {
                tracing::warn!("restoring overlay networks: {e}");
            }
        })
    }

    fn remove_all(&self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = self.remove_all().await {
                tracing::warn!("removing overlay networks: {e}");
            }
        })
    }
}

#[cfg(test)]
pub(crate) mod tests;
