//! The cluster's bridge networks (`network create -d bridge`): on each node that runs a
//! task of one, a bridge of its own with the network's gateway, a veth into each task
//! with the address the managers gave it, and NAT out of the node unless the network is
//! internal. Tasks on one node reach each other; a bridge network does not span nodes
//! (an overlay does). The bridge comes with the first task and goes with the last.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use ipnet::Ipv4Net;
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use shoal_api::types::Network;
use tokio::sync::Mutex;

use crate::error::NetError;
use crate::link::{configure, delete_link, index_of, move_link, must_index, nl, set_link};

struct Bridge {
    name: String,
    table: String,
    endpoints: BTreeSet<String>,
}

/// The bridge networks of this node.
pub struct UserBridges {
    handle: rtnetlink::Handle,
    bridges: Mutex<BTreeMap<String, Bridge>>,
}

fn short(id: &str, n: usize) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(n)
        .collect()
}

impl UserBridges {
    /// Opens the bridge networks of the caller's namespace.
    pub fn open() -> Result<UserBridges, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| NetError::Netlink(format!("opening netlink: {e}")))?;
        tokio::spawn(conn);
        Ok(UserBridges {
            handle,
            bridges: Mutex::default(),
        })
    }

    /// Connects the namespace at `netns` to the bridge of `network` as `ifname` with
    /// address `ip`/`prefix`; with `default_route`, its way out goes through the gateway.
    pub async fn attach(
        &self,
        network: &Network,
        endpoint_id: &str,
        netns: &Path,
        ifname: &str,
        (ip, prefix): (Ipv4Addr, u8),
        default_route: bool,
    ) -> Result<(), NetError> {
        let mut bridges = self.bridges.lock().await;
        if !bridges.contains_key(&network.id) {
            let b = self.make(network).await?;
            bridges.insert(network.id.clone(), b);
        }
        let made = self
            .plumb(
                network,
                endpoint_id,
                netns,
                ifname,
                (ip, prefix),
                default_route,
            )
            .await;
        if let Some(b) = bridges.get_mut(&network.id) {
            if made.is_ok() {
                b.endpoints.insert(endpoint_id.to_string());
            } else if b.endpoints.is_empty() {
                let b = bridges.remove(&network.id);
                if let Some(b) = b {
                    let _ = self.unmake(&b).await;
                }
            }
        }
        made
    }

    async fn make(&self, network: &Network) -> Result<Bridge, NetError> {
        let name = format!("shb{}", short(&network.id, 10));
        let table = format!("shoalb_{}", short(&network.id, 10));
        let subnet: Ipv4Net = network
            .subnet
            .parse()
            .map_err(|_| NetError::State(format!("network {}: bad subnet", network.spec.name)))?;
        let gateway: Ipv4Addr = network
            .gateway
            .parse()
            .map_err(|_| NetError::State(format!("network {}: bad gateway", network.spec.name)))?;
        if index_of(&self.handle, &name).await.is_none() {
            self.handle
                .link()
                .add(LinkBridge::new(&name).build())
                .execute()
                .await
                .map_err(nl("creating the network's bridge"))?;
        }
        let index = must_index(&self.handle, &name).await?;
        // An internal network's bridge has no address: its tasks reach each other, not
        // the node or anything beyond it.
        if !network.spec.internal {
            let added = self
                .handle
                .address()
                .add(index, IpAddr::V4(gateway), subnet.prefix_len())
                .execute()
                .await;
            if let Err(e) = added
                && crate::link::errno(&e) != libc::EEXIST
            {
                let _ = delete_link(&self.handle, &name).await;
                return Err(NetError::Netlink(format!(
                    "addressing bridge {name} with {gateway}/{}: {e} (does a route of this host overlap {subnet}?)",
                    subnet.prefix_len()
                )));
            }
            crate::nft::Table {
                name: table.clone(),
                bridge: name.clone(),
            }
            .create(subnet)?;
            let forward = Path::new("/proc/sys/net/ipv4/ip_forward");
            if std::fs::read_to_string(forward).is_ok_and(|v| v.trim() != "1") {
                let _ = std::fs::write(forward, "1");
            }
        }
        set_link(
            &self.handle,
            LinkUnspec::new_with_index(index).up(),
            "bringing the network's bridge up",
        )
        .await?;
        Ok(Bridge {
            name,
            table,
            endpoints: BTreeSet::new(),
        })
    }

    async fn unmake(&self, b: &Bridge) -> Result<(), NetError> {
        crate::nft::Table {
            name: b.table.clone(),
            bridge: b.name.clone(),
        }
        .delete()?;
        delete_link(&self.handle, &b.name).await
    }

    async fn plumb(
        &self,
        network: &Network,
        endpoint_id: &str,
        netns: &Path,
        ifname: &str,
        (ip, prefix): (Ipv4Addr, u8),
        default_route: bool,
    ) -> Result<(), NetError> {
        let bridge = format!("shb{}", short(&network.id, 10));
        let host_end = format!("ub{}", short(endpoint_id, 10));
        let temp = format!("uc{}", short(endpoint_id, 10));
        delete_link(&self.handle, &host_end).await?;
        delete_link(&self.handle, &temp).await?;
        self.handle
            .link()
            .add(LinkVeth::new(&host_end, &temp).build())
            .execute()
            .await
            .map_err(nl("creating the endpoint's veth pair"))?;
        let result = async {
            let end = must_index(&self.handle, &host_end).await?;
            let br = must_index(&self.handle, &bridge).await?;
            set_link(
                &self.handle,
                LinkUnspec::new_with_index(end).controller(br).up(),
                "attaching the veth to the network's bridge",
            )
            .await?;
            let index = must_index(&self.handle, &temp).await?;
            move_link(
                &self.handle,
                index,
                netns,
                "moving the veth into the container",
            )
            .await?;
            let inside = crate::netns::handle_in(netns)?;
            configure(&inside, &temp, ifname, (ip, prefix), 1500, "the container").await?;
            if let Some(lo) = index_of(&inside, "lo").await {
                set_link(
                    &inside,
                    LinkUnspec::new_with_index(lo).up(),
                    "bringing lo up",
                )
                .await?;
            }
            if default_route && !network.spec.internal {
                let gateway: Ipv4Addr = network.gateway.parse().map_err(|_| {
                    NetError::State(format!("network {}: bad gateway", network.spec.name))
                })?;
                inside
                    .route()
                    .add(
                        RouteMessageBuilder::<Ipv4Addr>::new()
                            .gateway(gateway)
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(nl("adding the default route"))?;
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = delete_link(&self.handle, &host_end).await;
        }
        result
    }

    /// Disconnects an endpoint (its veth goes with its namespace, or here); the bridge
    /// goes with the last. Unknown ids are fine.
    pub async fn detach(&self, network_id: &str, endpoint_id: &str) -> Result<(), NetError> {
        let mut bridges = self.bridges.lock().await;
        let Some(b) = bridges.get_mut(network_id) else {
            return Ok(());
        };
        b.endpoints.remove(endpoint_id);
        let _ = delete_link(&self.handle, &format!("ub{}", short(endpoint_id, 10))).await;
        if b.endpoints.is_empty()
            && let Some(b) = bridges.remove(network_id)
        {
            self.unmake(&b).await?;
        }
        Ok(())
    }

    /// After a daemon restart: the bridges of `live` endpoints ((network, endpoint) pairs)
    /// are known again; bridges of ours that no live endpoint uses are removed.
    pub async fn restore(&self, live: &[(Network, String)]) {
        let mut bridges = self.bridges.lock().await;
        for (network, endpoint) in live {
            let b = bridges.entry(network.id.clone()).or_insert_with(|| Bridge {
                name: format!("shb{}", short(&network.id, 10)),
                table: format!("shoalb_{}", short(&network.id, 10)),
                endpoints: BTreeSet::new(),
            });
            b.endpoints.insert(endpoint.clone());
        }
        let names: BTreeSet<String> = bridges.values().map(|b| b.name.clone()).collect();
        // Links through netlink: /sys/class/net shows the namespace that mounted /sys,
        // not necessarily this daemon's.
        let mut text = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Ok(Some(l)) = futures::TryStreamExt::try_next(&mut links).await {
            for a in &l.attributes {
                if let rtnetlink::packet_route::link::LinkAttribute::IfName(n) = a {
                    text.push(n.clone());
                }
            }
        }
        for link in text
            .iter()
            .filter(|l| l.starts_with("shb") && !names.contains(*l))
        {
            let stale = Bridge {
                name: link.clone(),
                table: format!("shoalb_{}", &link[3..]),
                endpoints: BTreeSet::new(),
            };
            if let Err(e) = self.unmake(&stale).await {
                tracing::warn!("removing a stale bridge network: {e}");
            }
        }
    }

    /// Removes every bridge network of this node.
    pub async fn remove_all(&self) {
        let all: Vec<Bridge> = std::mem::take(&mut *self.bridges.lock().await)
            .into_values()
            .collect();
        for b in all {
            if let Err(e) = self.unmake(&b).await {
                tracing::warn!("removing a bridge network: {e}");
            }
        }
    }
}
impl super::Driver for UserBridges {
    fn attach<'a>(
        &'a self,
        j: super::Join<'a>,
    ) -> futures::future::BoxFuture<'a, Result<(), NetError>> {
        Box::pin(self.attach(
            j.network,
            j.endpoint_id,
            j.netns,
            j.ifname,
            j.addr,
            j.default_route,
        ))
    }

    fn detach<'a>(
        &'a self,
        network_id: &'a str,
        endpoint_id: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), NetError>> {
        Box::pin(self.detach(network_id, endpoint_id))
    }

    fn restore<'a>(&'a self, live: &'a [(Network, String)]) -> futures::future::BoxFuture<'a, ()> {
        Box::pin(async move {
            let mine: Vec<(Network, String)> = live
                .iter()
                .filter(|(n, _)| n.spec.driver == shoal_api::types::NetworkDriver::Bridge)
                .cloned()
                .collect();
            self.restore(&mine).await
        })
    }

    fn remove_all(&self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(self.remove_all())
    }
}
