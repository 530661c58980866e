//! The cluster networks of one node: containers joined to overlay, bridge and macvlan
//! networks through their [`Driver`]s, and what the managers' views of those networks
//! program here — the overlay's peers, the DNS answers every container gets at
//! 127.0.0.11 ([`resolver`]), the VIPs balanced by nftables in each container's namespace
//! ([`lb`]), and the routing mesh's published ports on the host ([`mesh`]).

mod lb;
mod mesh;
mod resolver;

pub use lb::lb_script;
pub use mesh::{INGRESS_IF, MESH_HOST, MESH_LB, mesh_host_script, mesh_lb_script};

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use ipnet::Ipv4Net;
use shoal_api::types::{AttachmentSpec, Network, NetworkDriver, NetworkView};
use tokio::sync::Mutex;

use crate::dns::DnsServer;
use crate::drivers::overlay::Peer;
use crate::drivers::{Drivers, Join};
use crate::error::NetError;
use mesh::Loopback;
use resolver::ContainerResolver;

/// One container's part.
struct Member {
    netns: PathBuf,
    networks: Vec<String>,
    /// The networks it joined, with their drivers (to leave them).
    joined: Vec<(NetworkDriver, String)>,
    dns: Option<DnsServer>,
    lb: String,
}

#[derive(Default)]
struct Inner {
    members: BTreeMap<String, Member>,
    /// The ingress table's last script, and whether the host endpoint is attached.
    ingress_rules: String,
    ingress_attached: Option<String>,
    /// Loopback listeners of ingress ports (the kernel will not route 127.0.0.0/8 to the
    /// ingress network): TCP port → its backends and relay.
    loopback: BTreeMap<u16, Loopback>,
}

/// The cluster networks of this node.
pub struct ClusterNetworks {
    state_dir: PathBuf,
    handle: rtnetlink::Handle,
    drivers: Drivers,
    views: Arc<RwLock<Views>>,
    inner: Mutex<Inner>,
    upstreams: Vec<SocketAddr>,
    resolv_conf: String,
}

/// The managers' latest views, and which node this is.
#[derive(Default)]
struct Views {
    node_id: String,
    by_id: BTreeMap<String, NetworkView>,
}

impl Views {
    fn underlay(&self) -> Option<Ipv4Addr> {
        self.by_id
            .values()
            .flat_map(|v| &v.endpoints)
            .find(|e| e.node_id == self.node_id && !e.node_addr.is_empty())
            .and_then(|e| e.node_addr.parse().ok())
    }
}

fn ip_of(addr: &str) -> Option<Ipv4Addr> {
    addr.split('/').next().and_then(|a| a.parse().ok())
}

/// The addresses of `service_id`'s running (and healthy) tasks on the network of `view`.
fn running_backends(view: &NetworkView, service_id: &str) -> Vec<Ipv4Addr> {
    view.endpoints
        .iter()
        .filter(|e| e.service_id == service_id && e.running)
        .filter_map(|e| ip_of(&e.addr))
        .collect()
}

fn net_of(addr: &str) -> Option<Ipv4Net> {
    addr.parse::<Ipv4Net>().ok()
}

/// Runs `nft -f -` with `script`, in the namespace at `netns` or in the caller's.
fn nft_in(netns: Option<&Path>, script: String) -> Result<(), NetError> {
    let run = move || -> Result<(), NetError> {
        use std::io::Write;
        let mut child = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|_| NetError::Nft(crate::nft::NftError::Missing))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(script.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|_| NetError::Nft(crate::nft::NftError::Missing))?;
        if !out.status.success() {
            return Err(NetError::Nft(crate::nft::NftError::Refused(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            )));
        }
        Ok(())
    };
    match netns {
        Some(p) => crate::netns::run_in(p, run)?,
        None => run(),
    }
}

impl ClusterNetworks {
    /// Opens the cluster networks with their state under `state_dir`; DNS questions the
    /// cluster cannot answer go to the resolvers of the host's resolv.conf.
    pub async fn open(state_dir: &Path) -> Result<ClusterNetworks, NetError> {
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| NetError::Netlink(format!("opening netlink: {e}")))?;
        tokio::spawn(conn);
        Ok(ClusterNetworks {
            state_dir: state_dir.to_path_buf(),
            handle,
            drivers: Drivers::open(state_dir).await?,
            views: Arc::default(),
            inner: Mutex::default(),
            upstreams: crate::dns::upstreams_from_resolv_conf(&host),
            resolv_conf: crate::dns::container_resolv_conf(&host),
        })
    }

    /// The resolv.conf of a container on cluster networks.
    pub fn resolv_conf(&self) -> &str {
        &self.resolv_conf
    }

    /// Joins the container whose namespace is at `netns` to its networks, naming its
    /// interfaces from `first_if` (eth0, or eth1 after a bridge), then starts its DNS
    /// server and VIP table. On failure, what was made is undone.
    pub async fn attach(
        &self,
        container_id: &str,
        netns: &Path,
        attachments: &[AttachmentSpec],
        first_if: usize,
        default_route: bool,
    ) -> Result<(), NetError> {
        let mut inner = self.inner.lock().await;
        let mut member = Member {
            netns: netns.to_path_buf(),
            networks: attachments.iter().map(|a| a.network.id.clone()).collect(),
            joined: Vec::new(),
            dns: None,
            lb: String::new(),
        };
        let result = self
            .attach_each(
                container_id,
                &mut member,
                attachments,
                first_if,
                default_route,
            )
            .await;
        if let Err(e) = result {
            for (kind, id) in &member.joined {
                let _ = self.drivers.get(*kind).detach(id, container_id).await;
            }
            return Err(e);
        }
        inner.members.insert(container_id.to_string(), member);
        Ok(())
    }

    async fn attach_each(
        &self,
        container_id: &str,
        member: &mut Member,
        attachments: &[AttachmentSpec],
        first_if: usize,
        default_route: bool,
    ) -> Result<(), NetError> {
        let underlay = self
            .views
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .underlay();
        for (i, a) in attachments.iter().enumerate() {
            let ifname = format!("eth{}", first_if + i);
            let (ip, prefix) = match net_of(&a.addr) {
                Some(n) => (n.addr(), n.prefix_len()),
                None => {
                    return Err(NetError::State(format!(
                        "network {}: bad address {}",
                        a.network.spec.name, a.addr
                    )));
                }
            };
            let kind = a.network.spec.driver;
            self.drivers
                .get(kind)
                .attach(Join {
                    network: &a.network,
                    endpoint_id: container_id,
                    netns: &member.netns,
                    ifname: &ifname,
                    addr: (ip, prefix),
                    default_route: default_route && i == 0,
                    underlay,
                })
                .await?;
            member.joined.push((kind, a.network.id.clone()));
            self.program_peers(&a.network.id).await;
        }
        let resolver = Arc::new(ContainerResolver {
            views: self.views.clone(),
            networks: member.networks.clone(),
        });
        let dns = DnsServer::start(&member.netns, resolver, self.upstreams.clone())
            .map_err(|e| NetError::State(format!("starting the container's DNS server: {e}")))?;
        member.dns = Some(dns);
        self.program_lb(member).await;
        Ok(())
    }

    /// Leaves every network of a container; an overlay sandbox goes with its last
    /// endpoint. Unknown ids are fine.
    pub async fn detach(&self, container_id: &str) {
        let member = self.inner.lock().await.members.remove(container_id);
        let Some(member) = member else { return };
        if let Some(dns) = member.dns {
            dns.stop().await;
        }
        for (kind, id) in &member.joined {
            if let Err(e) = self.drivers.get(*kind).detach(id, container_id).await {
                tracing::warn!(
                    container = container_id,
                    "leaving {} network {id}: {e}",
                    kind.as_str()
                );
            }
        }
    }

    /// Whether the container joined cluster networks here.
    pub async fn has(&self, container_id: &str) -> bool {
        self.inner.lock().await.members.contains_key(container_id)
    }

    /// Tells the network's driver where its endpoints on other nodes are.
    async fn program_peers(&self, network_id: &str) {
        let (kind, peers): (NetworkDriver, Vec<Peer>) = {
            let views = self.views.read().unwrap_or_else(|e| e.into_inner());
            let Some(v) = views.by_id.get(network_id) else {
                return;
            };
            let peers = v
                .endpoints
                .iter()
                .filter(|e| e.node_id != views.node_id)
                .filter_map(|e| {
                    Some(Peer {
                        ip: ip_of(&e.addr)?,
                        node_ip: e.node_addr.parse().ok()?,
                    })
                })
                .collect();
            (v.network.spec.driver, peers)
        };
        if let Err(e) = self.drivers.get(kind).set_peers(network_id, &peers).await {
            tracing::warn!(network = network_id, "programming the network's peers: {e}");
        }
    }

    /// Takes the managers' latest views for node `node_id`: the overlay peers, the DNS
    /// answers, every container's VIPs and the routing mesh follow them.
    pub async fn set_views(&self, node_id: &str, views: Vec<NetworkView>) {
        let ingress = views.iter().find(|v| v.network.spec.ingress).cloned();
        let changed: BTreeSet<String> = {
            let mut v = self.views.write().unwrap_or_else(|e| e.into_inner());
            v.node_id = node_id.to_string();
            let new: BTreeMap<String, NetworkView> = views
                .into_iter()
                .map(|x| (x.network.id.clone(), x))
                .collect();
            let changed = new
                .iter()
                .filter(|(id, x)| v.by_id.get(*id) != Some(x))
                .map(|(id, _)| id.clone())
                .collect();
            v.by_id = new;
            changed
        };
        let mut inner = self.inner.lock().await;
        for id in &changed {
            self.program_peers(id).await;
        }
        for member in inner.members.values_mut() {
            if member.networks.iter().any(|n| changed.contains(n)) {
                self.program_lb(member).await;
            }
        }
        self.program_ingress(&mut inner, ingress).await;
    }

    /// After a daemon restart: joins the live containers again (their links survived;
    /// their DNS servers and tables are made anew) and removes what no live container
    /// uses.
    pub async fn restore(&self, live: &[(String, PathBuf, Vec<AttachmentSpec>)]) {
        let joined: Vec<(Network, String)> = live
            .iter()
            .flat_map(|(id, _, attachments)| {
                attachments.iter().map(|a| (a.network.clone(), id.clone()))
            })
            .collect();
        for driver in self.drivers.all() {
            driver.restore(&joined).await;
        }
        let mut inner = self.inner.lock().await;
        for (id, netns, attachments) in live {
            let networks: Vec<String> = attachments.iter().map(|a| a.network.id.clone()).collect();
            let joined = attachments
                .iter()
                .map(|a| (a.network.spec.driver, a.network.id.clone()))
                .collect();
            let resolver = Arc::new(ContainerResolver {
                views: self.views.clone(),
                networks: networks.clone(),
            });
            let dns = match DnsServer::start(netns, resolver, self.upstreams.clone()) {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::warn!(container = %id, "restarting the container's DNS server: {e}");
                    None
                }
            };
            inner.members.insert(
                id.clone(),
                Member {
                    netns: netns.clone(),
                    networks,
                    joined,
                    dns,
                    lb: String::new(),
                },
            );
        }
        drop(inner);
        // The mesh is made again from the next views.
        self.forget_mesh().await;
    }

    /// Removes everything: the daemon's last act when the node leaves its cluster.
    pub async fn remove_all(&self) {
        let ids: Vec<String> = self.inner.lock().await.members.keys().cloned().collect();
        for id in ids {
            self.detach(&id).await;
        }
        let mut inner = self.inner.lock().await;
        self.program_ingress(&mut inner, None).await;
        for driver in self.drivers.all() {
            driver.remove_all().await;
        }
    }
}

#[cfg(test)]
mod tests;
