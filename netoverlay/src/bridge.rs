//! The default `bridge` network of a node: a host bridge (`shoal0`), a veth into each
//! container's network namespace with an address from the bridge's subnet, NAT for
//! egress, and published ports (nftables DNAT, plus a userland proxy that also holds the
//! host port, so a port already in use is found before anything is made, and so loopback
//! clients reach the container too). Made on the first attach, removed with the last
//! detach. The state survives a daemon restart in a JSON file under the run root.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

pub use crate::error::NetError;
use crate::ipam::Pool;
use crate::link::nl;
use crate::nft::Table;
pub use crate::port::PublishedPort;
use crate::proxy::Proxy;

/// A container's connection to the bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Its address.
    pub ip: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix_len: u8,
    /// The gateway (the bridge's address).
    pub gateway: Ipv4Addr,
    /// The host end of the veth.
    pub host_veth: String,
    /// Its published ports.
    pub ports: Vec<PublishedPort>,
}

/// Names and addresses of a bridge network; `Default` gives the node's default bridge.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// The bridge link.
    pub bridge: String,
    /// shoal's nftables table for it.
    pub table: String,
    /// Subnets to choose from, in order; the first that overlaps no host route wins.
    pub candidates: Vec<Ipv4Net>,
    /// Prefix of the host ends of veths.
    pub veth_prefix: String,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            bridge: "shoal0".into(),
            table: "shoal".into(),
            candidates: [
                "172.29.0.0/16",
                "172.30.0.0/16",
                "172.31.0.0/16",
                "10.229.0.0/16",
                "10.230.0.0/16",
            ]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect(),
            veth_prefix: "vsh".into(),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    pool: Option<Pool>,
    endpoints: BTreeMap<String, Endpoint>,
    /// Set when we turned on IPv4 forwarding.
    forwarding_enabled: bool,
}

struct Inner {
    state: State,
    proxies: BTreeMap<String, Vec<Proxy>>,
    /// The bridge and table are known to exist.
    ready: bool,
}

/// The bridge network.
pub struct BridgeNetwork {
    config: BridgeConfig,
    state_file: PathBuf,
    handle: rtnetlink::Handle,
    inner: Mutex<Inner>,
}

impl BridgeNetwork {
    /// Opens the default bridge network with its state under `state_dir`.
    pub async fn open(state_dir: &Path) -> Result<Self, NetError> {
        Self::open_with(state_dir, BridgeConfig::default()).await
    }

    /// Opens a bridge network with the given names.
    pub async fn open_with(state_dir: &Path, config: BridgeConfig) -> Result<Self, NetError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| NetError::State(format!("creating {}: {e}", state_dir.display())))?;
        let state_file = state_dir.join(format!("{}.json", config.bridge));
        let state = match std::fs::read(&state_file) {
            Ok(raw) => serde_json::from_slice(&raw)
                .map_err(|e| NetError::State(format!("reading {}: {e}", state_file.display())))?,
            Err(_) => State::default(),
        };
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| NetError::Netlink(format!("opening netlink: {e}")))?;
        tokio::spawn(conn);
        Ok(BridgeNetwork {
            config,
            state_file,
            handle,
            inner: Mutex::new(Inner {
                state,
                proxies: BTreeMap::new(),
                ready: false,
            }),
        })
    }

    fn table(&self) -> Table {
        Table {
            name: self.config.table.clone(),
            bridge: self.config.bridge.clone(),
        }
    }

    fn save(&self, state: &State) -> Result<(), NetError> {
        let raw = serde_json::to_vec_pretty(state).map_err(|e| NetError::State(e.to_string()))?;
        let tmp = self.state_file.with_extension("tmp");
        std::fs::write(&tmp, raw)
            .and_then(|()| std::fs::rename(&tmp, &self.state_file))
            .map_err(|e| NetError::State(format!("writing {}: {e}", self.state_file.display())))
    }

    async fn link_index(&self, name: &str) -> Option<u32> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        links
            .try_next()
            .await
            .ok()
            .flatten()
            .map(|l| l.header.index)
    }

    /// Makes the bridge, its address and its nftables table, if not there yet. Once made
    /// (and until the last endpoint goes), later attaches skip the checks.
    async fn ensure_bridge(&self, state: &mut State, ready: &mut bool) -> Result<Pool, NetError> {
        if *ready && let Some(p) = &state.pool {
            return Ok(p.clone());
        }
        let pool = match &state.pool {
            Some(p) => p.clone(),
            None => Pool::new(pick_subnet(&self.config)?),
        };
        if self.link_index(&self.config.bridge).await.is_none() {
            self.handle
                .link()
                .add(LinkBridge::new(&self.config.bridge).build())
                .execute()
                .await
                .map_err(nl("creating the bridge"))?;
            let index = self
                .link_index(&self.config.bridge)
                .await
                .ok_or_else(|| NetError::Netlink("the new bridge vanished".into()))?;
            self.handle
                .address()
                .add(
                    index,
                    IpAddr::V4(pool.gateway()),
                    pool.subnet().prefix_len(),
                )
                .execute()
                .await
                .map_err(nl("addressing the bridge"))?;
            self.handle
                .link()
                .set(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(nl("bringing the bridge up"))?;
        }
        self.table().create(pool.subnet())?;
        let forward = Path::new("/proc/sys/net/ipv4/ip_forward");
        if std::fs::read_to_string(forward).is_ok_and(|v| v.trim() != "1") {
            // Containers reach the outside through the host, as with Docker.
            std::fs::write(forward, "1")
                .map_err(|e| NetError::State(format!("enabling IPv4 forwarding: {e}")))?;
            state.forwarding_enabled = true;
        }
        state.pool = Some(pool.clone());
        *ready = true;
        Ok(pool)
    }

    /// Connects the namespace at `netns` to the bridge and publishes `ports`.
    pub async fn attach(
        &self,
        id: &str,
        netns: &Path,
        ports: &[PublishedPort],
    ) -> Result<Endpoint, NetError> {
        let mut inner = self.inner.lock().await;
        // Hold the host ports first: a port in use fails before anything is made.
        let mut proxies = Vec::new();
        for p in ports {
            proxies.push(Proxy::bind(p)?);
        }
        let inner = &mut *inner;
        let mut pool = self
            .ensure_bridge(&mut inner.state, &mut inner.ready)
            .await?;
        let ip = pool.allocate()?;
        let short: String = id.chars().take(8).collect();
        let host_veth = format!("{}{short}", self.config.veth_prefix);
        let endpoint = Endpoint {
            ip,
            prefix_len: pool.subnet().prefix_len(),
            gateway: pool.gateway(),
            host_veth: host_veth.clone(),
            ports: ports.to_vec(),
        };
        match self.plumb(&endpoint, &short, netns).await {
            Ok(()) => {}
            Err(e) => {
                let _ = self.unplumb(id, &endpoint).await;
                if inner.state.endpoints.is_empty() {
                    let _ = self.teardown(&mut inner.state).await;
                    inner.ready = false;
                }
                return Err(e);
            }
        }
        for (proxy, p) in proxies.iter_mut().zip(ports) {
            proxy.start(SocketAddr::new(IpAddr::V4(ip), p.container_port));
        }
        inner.state.pool = Some(pool);
        inner
            .state
            .endpoints
            .insert(id.to_string(), endpoint.clone());
        inner.proxies.insert(id.to_string(), proxies);
        self.save(&inner.state)?;
        Ok(endpoint)
    }

    async fn plumb(&self, e: &Endpoint, short: &str, netns: &Path) -> Result<(), NetError> {
        let peer = format!("vsc{short}");
        self.handle
            .link()
            .add(LinkVeth::new(&e.host_veth, &peer).build())
            .execute()
            .await
            .map_err(nl("creating the veth pair"))?;
        let bridge = self
            .link_index(&self.config.bridge)
            .await
            .ok_or_else(|| NetError::Netlink("the bridge is gone".into()))?;
        let host = self
            .link_index(&e.host_veth)
            .await
            .ok_or_else(|| NetError::Netlink("the new veth vanished".into()))?;
        let peer_index = self
            .link_index(&peer)
            .await
            .ok_or_else(|| NetError::Netlink("the new veth peer vanished".into()))?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(host)
                    .controller(bridge)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("attaching the veth to the bridge"))?;
        let ns = std::fs::File::open(netns)
            .map_err(|err| NetError::State(format!("opening {}: {err}", netns.display())))?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(peer_index)
                    .setns_by_fd(std::os::fd::AsRawFd::as_raw_fd(&ns))
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("moving the veth into the container"))?;
        // Inside the container's namespace.
        let inside = crate::netns::handle_in(netns)?;
        let get = |name: String| {
            let h = inside.clone();
            async move {
                let mut s = h.link().get().match_name(name).execute();
                s.try_next().await.ok().flatten().map(|l| l.header.index)
            }
        };
        let idx = get(peer.clone())
            .await
            .ok_or_else(|| NetError::Netlink("the veth did not arrive in the container".into()))?;
        inside
            .link()
            .set(LinkUnspec::new_with_index(idx).name("eth0").build())
            .execute()
            .await
            .map_err(nl("naming eth0"))?;
        inside
            .address()
            .add(idx, IpAddr::V4(e.ip), e.prefix_len)
            .execute()
            .await
            .map_err(nl("addressing eth0"))?;
        inside
            .link()
            .set(LinkUnspec::new_with_index(idx).up().build())
            .execute()
            .await
            .map_err(nl("bringing eth0 up"))?;
        if let Some(lo) = get("lo".into()).await {
            inside
                .link()
                .set(LinkUnspec::new_with_index(lo).up().build())
                .execute()
                .await
                .map_err(nl("bringing lo up"))?;
        }
        inside
            .route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(e.gateway)
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("adding the default route"))?;
        for p in &e.ports {
            let host_ip = match p.host_ip {
                Some(IpAddr::V4(a)) => Some(a),
                _ => None,
            };
            self.table().publish(
                &format!("shoal:{short}"),
                host_ip,
                p.host_port,
                e.ip,
                p.container_port,
                p.protocol,
            )?;
        }
        Ok(())
    }

    async fn unplumb(&self, id: &str, e: &Endpoint) -> Result<(), NetError> {
        let short: String = id.chars().take(8).collect();
        self.table().unpublish(&format!("shoal:{short}"))?;
        if let Some(index) = self.link_index(&e.host_veth).await {
            // Deleting one end removes the pair.
            let _ = self.handle.link().del(index).execute().await;
        }
        Ok(())
    }

    async fn teardown(&self, state: &mut State) -> Result<(), NetError> {
        self.table().delete()?;
        if let Some(index) = self.link_index(&self.config.bridge).await {
            self.handle
                .link()
                .del(index)
                .execute()
                .await
                .map_err(nl("removing the bridge"))?;
        }
        state.pool = None;
        Ok(())
    }

    /// Disconnects a container: its ports, veth and address; the bridge and the table go
    /// with the last one. Unknown ids are fine.
    pub async fn detach(&self, id: &str) -> Result<(), NetError> {
        let mut inner = self.inner.lock().await;
        inner.proxies.remove(id);
        let Some(e) = inner.state.endpoints.remove(id) else {
            return Ok(());
        };
        let result = self.unplumb(id, &e).await;
        if let Some(pool) = inner.state.pool.as_mut() {
            pool.release(e.ip);
        }
        if inner.state.endpoints.is_empty() {
            inner.ready = false;
            self.teardown(&mut inner.state).await?;
        }
        self.save(&inner.state)?;
        result
    }

    /// After a daemon restart: keeps the endpoints of `live` containers (bringing their
    /// port proxies back), drops the rest, and removes the bridge if nothing is left.
    pub async fn restore(&self, live: &[String]) -> Result<(), NetError> {
        let stale: Vec<String> = {
            let inner = self.inner.lock().await;
            inner
                .state
                .endpoints
                .keys()
                .filter(|id| !live.contains(id))
                .cloned()
                .collect()
        };
        for id in stale {
            self.detach(&id).await?;
        }
        let mut inner = self.inner.lock().await;
        let endpoints = inner.state.endpoints.clone();
        for (id, e) in endpoints {
            let mut proxies = Vec::new();
            for p in &e.ports {
                match Proxy::bind(p) {
                    Ok(mut proxy) => {
                        proxy.start(SocketAddr::new(IpAddr::V4(e.ip), p.container_port));
                        proxies.push(proxy);
                    }
                    Err(err) => {
                        tracing::warn!(container = %id, "restoring a published port: {err}")
                    }
                }
            }
            inner.proxies.insert(id, proxies);
        }
        if inner.state.endpoints.is_empty()
            && (self.link_index(&self.config.bridge).await.is_some() || self.table().exists())
        {
            inner.ready = false;
            self.teardown(&mut inner.state).await?;
            self.save(&inner.state)?;
        }
        Ok(())
    }
}

/// The first candidate subnet that overlaps no route of the host.
fn pick_subnet(config: &BridgeConfig) -> Result<Ipv4Net, NetError> {
    pick_subnet_among(config, &host_routes())
}

/// The first candidate subnet that overlaps none of `routes`.
fn pick_subnet_among(config: &BridgeConfig, routes: &[Ipv4Net]) -> Result<Ipv4Net, NetError> {
    config
        .candidates
        .iter()
        .find(|c| {
            !routes
                .iter()
                .any(|r| r.contains(&c.network()) || c.contains(&r.network()))
        })
        .copied()
        .ok_or_else(|| NetError::NoSubnet(config.bridge.clone()))
}

/// The IPv4 routes of the host (but the default route), from /proc/net/route.
fn host_routes() -> Vec<Ipv4Net> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dest = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            if mask == 0 {
                return None;
            }
            let prefix = u32::from_be(mask).leading_ones() as u8;
            Ipv4Net::new(Ipv4Addr::from(u32::from_be(dest)), prefix).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_a_subnet_free_of_host_routes() {
        let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
        let c = BridgeConfig::default();
        assert_eq!(pick_subnet_among(&c, &[]).unwrap(), net("172.29.0.0/16"));
        let routes = [net("172.29.5.0/24"), net("172.16.0.0/12")];
        assert_eq!(
            pick_subnet_among(&c, &routes).unwrap(),
            net("10.229.0.0/16")
        );
        let all = [net("0.0.0.0/1"), net("128.0.0.0/1")];
        let e = pick_subnet_among(&c, &all).unwrap_err().to_string();
        assert!(e.contains("no free subnet"), "{e}");
        // Whatever this host has, the pick overlaps none of its routes.
        if let Ok(p) = pick_subnet(&c) {
            assert!(
                !host_routes()
                    .iter()
                    .any(|r| r.contains(&p.network()) || p.contains(&r.network()))
            );
        }
    }
}
