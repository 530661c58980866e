//! The routing mesh on this node: a namespace of its own with this node's endpoint on
//! the ingress network, a link to the host, the host's rules that send published ports
//! there, its rules that pick a running task anywhere, and relays for 127.0.0.1.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use shoal_api::types::{NetworkView, PortProtocol};

use super::{ClusterNetworks, Inner, ip_of, nft_in, running_backends};
use crate::error::NetError;

/// The host end of this node's endpoint on the ingress network.
pub const INGRESS_IF: &str = "shoal-ingress";
/// The endpoint id of that endpoint.
const INGRESS_ENDPOINT: &str = "host-ingress";
/// The nftables table of the routing mesh on the host.
const INGRESS_TABLE: &str = "shoal_ingress";
/// The endpoint ids of nodes' own ingress endpoints in views (see the manager's netview).
const NODE_ENDPOINT: &str = "node:";

/// A relay from 127.0.0.1:PORT to the routing mesh.
pub(super) struct Loopback {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Loopback {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Relays each connection to `target`.
async fn relay_loopback(listener: tokio::net::TcpListener, target: SocketAddr) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            if let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
        });
    }
}

/// The host's end of the link to the routing mesh's namespace.
pub const MESH_HOST: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 1);
/// The mesh namespace's end (published ports are sent there).
pub const MESH_LB: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 2);
const MESH_PREFIX: u8 = 30;

/// The ports published in ingress mode in `view` that some running task serves, with
/// those tasks' addresses.
fn mesh_ports(view: &NetworkView) -> Vec<(shoal_api::types::PortConfig, Vec<Ipv4Addr>)> {
    let mut out = Vec::new();
    for s in &view.services {
        let backends = running_backends(view, &s.id);
        if backends.is_empty() {
            continue;
        }
        for p in &s.ports {
            out.push((*p, backends.clone()));
        }
    }
    out
}

fn proto_name(p: PortProtocol) -> &'static str {
    p.as_str()
}

/// The routing mesh's nft script on the host: each port published in ingress mode goes,
/// from outside and from the host itself, to the mesh's namespace (which picks a task).
/// Empty: no table.
pub fn mesh_host_script(view: &NetworkView) -> String {
    let mut rules = String::new();
    for (p, _) in mesh_ports(view) {
        let proto = proto_name(p.protocol);
        let port = p.published;
        rules.push_str(&format!(
            "add rule ip {INGRESS_TABLE} prerouting fib daddr type local {proto} dport {port} dnat to {MESH_LB}\n\
             add rule ip {INGRESS_TABLE} output ip daddr != 127.0.0.0/8 fib daddr type local {proto} dport {port} dnat to {MESH_LB}\n"
        ));
    }
    if rules.is_empty() {
        return String::new();
    }
    format!(
        "add table ip {INGRESS_TABLE}\ndelete table ip {INGRESS_TABLE}\ntable ip {INGRESS_TABLE} {{\n  \
         chain prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n  \
         chain output {{ type nat hook output priority -100; policy accept; }}\n  \
         chain forward {{ type filter hook forward priority filter; policy accept; iifname \"{INGRESS_IF}\" accept; oifname \"{INGRESS_IF}\" accept; }}\n\
         }}\n{rules}"
    )
}

/// The routing mesh's nft script in its namespace: what comes from the host on a
/// published port goes to a running task anywhere over the ingress network, with this
/// node's ingress address as its source (so the answer comes back here).
pub fn mesh_lb_script(view: &NetworkView) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    for (p, backends) in mesh_ports(view) {
        let proto = proto_name(p.protocol);
        let mut map = Vec::new();
        for (k, b) in backends.iter().enumerate() {
            let chain = format!("p{proto}{}b{k}", p.published);
            chains.push_str(&format!(
                "  chain {chain} {{ {proto} dport {} dnat to {b}:{}; }}\n",
                p.published, p.target
            ));
            map.push(format!("{k} : jump {chain}"));
        }
        rules.push_str(&format!(
            "add rule ip {INGRESS_TABLE} prerouting iifname \"eth0\" {proto} dport {} numgen random mod {} vmap {{ {} }}\n",
            p.published,
            backends.len(),
            map.join(", ")
        ));
    }
    if rules.is_empty() {
        return String::new();
    }
    format!(
        "add table ip {INGRESS_TABLE}\ndelete table ip {INGRESS_TABLE}\ntable ip {INGRESS_TABLE} {{\n  \
         chain prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n  \
         chain postrouting {{ type nat hook postrouting priority srcnat; policy accept; oifname \"eth1\" masquerade; }}\n\
         {chains}}}\n{rules}"
    )
}

impl ClusterNetworks {
    /// The routing mesh: a namespace of its own (like Swarm's ingress sandbox) with this
    /// node's endpoint on the ingress network and a link to the host (169.254.77.0/30,
    /// so no overlay subnet is routed in the host's namespace); the host sends published
    /// ports there, and it picks a running task. Made while some service publishes a port
    /// in ingress mode, removed after.
    pub(super) async fn program_ingress(&self, inner: &mut Inner, view: Option<NetworkView>) {
        let host_script = view.as_ref().map(mesh_host_script).unwrap_or_default();
        if let Some(v) = view.as_ref().filter(|_| !host_script.is_empty()) {
            let mine = {
                let views = self.views.read().unwrap_or_else(|e| e.into_inner());
                v.endpoints
                    .iter()
                    .find(|e| e.task_id == format!("{NODE_ENDPOINT}{}", views.node_id))
                    .cloned()
            };
            let Some(mine) = mine else { return };
            if inner.ingress_attached.as_deref() != Some(v.network.id.as_str()) {
                if let Err(e) = self.make_mesh(v, &mine).await {
                    tracing::warn!("making the routing mesh: {e}");
                    self.unmake_mesh(&v.network.id).await;
                    return;
                }
                inner.ingress_attached = Some(v.network.id.clone());
                inner.ingress_rules.clear();
                self.program_peers(&v.network.id).await;
            }
            let lb_script = mesh_lb_script(v);
            let both = format!("{host_script}{lb_script}");
            if both != inner.ingress_rules {
                let mesh = self.mesh_path();
                let done = tokio::task::spawn_blocking(move || {
                    nft_in(Some(&mesh), lb_script)?;
                    nft_in(None, host_script)
                })
                .await;
                match done {
                    Ok(Ok(())) => inner.ingress_rules = both,
                    Ok(Err(e)) => tracing::warn!("programming the routing mesh: {e}"),
                    Err(e) => tracing::warn!("programming the routing mesh: {e}"),
                }
            }
            // Loopback: the kernel will not route 127.0.0.0/8 elsewhere; a relay sends it
            // to the mesh.
            let ports: BTreeSet<u16> = mesh_ports(v)
                .into_iter()
                .filter(|(p, _)| p.protocol == PortProtocol::Tcp)
                .map(|(p, _)| p.published)
                .collect();
            inner.loopback.retain(|port, _| ports.contains(port));
            for port in ports {
                if inner.loopback.contains_key(&port) {
                    continue;
                }
                let target = SocketAddr::new(MESH_LB.into(), port);
                match std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).and_then(|l| {
                    l.set_nonblocking(true)?;
                    tokio::net::TcpListener::from_std(l)
                }) {
                    Ok(listener) => {
                        let task = tokio::spawn(relay_loopback(listener, target));
                        inner.loopback.insert(port, Loopback { task });
                    }
                    Err(e) => tracing::warn!(
                        port,
                        "the routing mesh cannot answer on 127.0.0.1:{port}: {e}"
                    ),
                }
            }
            return;
        }
        inner.loopback.clear();
        if !inner.ingress_rules.is_empty() {
            let _ = tokio::task::spawn_blocking(|| {
                nft_in(
                    None,
                    format!("add table ip {INGRESS_TABLE}\ndelete table ip {INGRESS_TABLE}\n"),
                )
            })
            .await;
            inner.ingress_rules.clear();
        }
        if let Some(id) = inner.ingress_attached.take() {
            self.unmake_mesh(&id).await;
        }
    }

    pub(super) fn mesh_path(&self) -> PathBuf {
        self.state_dir.join("mesh")
    }

    /// Makes the mesh's namespace: this node's endpoint on the ingress network (eth1),
    /// the link to the host (eth0 there, `shoal-ingress` here), forwarding on.
    pub(super) async fn make_mesh(
        &self,
        v: &NetworkView,
        mine: &shoal_api::types::NetEndpoint,
    ) -> Result<(), NetError> {
        let bad = || NetError::State(format!("this node's ingress address {} is bad", mine.addr));
        let ip = ip_of(&mine.addr).ok_or_else(bad)?;
        let underlay: Ipv4Addr = mine.node_addr.parse().map_err(|_| bad())?;
        let path = self.mesh_path();
        crate::netns::remove(&path)?;
        crate::netns::create(&path)?;
        let prefix = mine
            .addr
            .parse::<ipnet::Ipv4Net>()
            .map_err(|_| bad())?
            .prefix_len();
        self.drivers
            .overlay
            .attach_to(
                &v.network,
                underlay,
                INGRESS_ENDPOINT,
                &path,
                "eth1",
                (ip, prefix),
            )
            .await?;
        use crate::link::{configure, delete_link, move_link, must_index, nl, set_link};
        use rtnetlink::{LinkUnspec, LinkVeth, RouteMessageBuilder};
        let h = &self.handle;
        delete_link(h, INGRESS_IF).await?;
        delete_link(h, "shoal-mesh-tmp").await?;
        h.link()
            .add(LinkVeth::new(INGRESS_IF, "shoal-mesh-tmp").build())
            .execute()
            .await
            .map_err(nl("creating the routing mesh's link"))?;
        let index = must_index(h, "shoal-mesh-tmp").await?;
        move_link(h, index, &path, "moving the mesh's link into its namespace").await?;
        let inside = crate::netns::handle_in(&path)?;
        configure(
            &inside,
            "shoal-mesh-tmp",
            "eth0",
            (MESH_LB, MESH_PREFIX),
            1500,
            "the mesh",
        )
        .await?;
        inside
            .route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(MESH_HOST)
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("routing the mesh's answers to the host"))?;
        let host_end = must_index(h, INGRESS_IF).await?;
        h.address()
            .add(host_end, MESH_HOST.into(), MESH_PREFIX)
            .execute()
            .await
            .map_err(nl("addressing the routing mesh's link"))?;
        set_link(
            h,
            LinkUnspec::new_with_index(host_end).up(),
            "bringing the mesh's link up",
        )
        .await?;
        crate::netns::run_in(&path, enable_forwarding)?;
        enable_forwarding();
        Ok(())
    }

    pub(super) async fn unmake_mesh(&self, network_id: &str) {
        let _ = crate::link::delete_link(&self.handle, INGRESS_IF).await;
        if let Err(e) = self
            .drivers
            .overlay
            .detach(network_id, INGRESS_ENDPOINT)
            .await
        {
            tracing::warn!("leaving the ingress network: {e}");
        }
        if let Err(e) = crate::netns::remove(&self.mesh_path()) {
            tracing::warn!("removing the routing mesh's namespace: {e}");
        }
    }

    /// Forgets a mesh made before a restart: its link, namespace and host rules.
    pub(super) async fn forget_mesh(&self) {
        let _ = crate::link::delete_link(&self.handle, INGRESS_IF).await;
        if let Err(e) = crate::netns::remove(&self.mesh_path()) {
            tracing::warn!("removing the routing mesh's namespace: {e}");
        }
        let _ = tokio::task::spawn_blocking(|| {
            nft_in(
                None,
                format!("add table ip {INGRESS_TABLE}\ndelete table ip {INGRESS_TABLE}\n"),
            )
        })
        .await;
    }
}

/// Turns on IPv4 forwarding (the routing mesh forwards between the underlay and the
/// ingress network).
fn enable_forwarding() {
    let forward = Path::new("/proc/sys/net/ipv4/ip_forward");
    if std::fs::read_to_string(forward).is_ok_and(|v| v.trim() != "1")
        && let Err(e) = std::fs::write(forward, "1")
    {
        tracing::warn!("enabling IPv4 forwarding: {e}");
    }
}
