//! The cluster networks of one node: containers joined to overlay and macvlan networks,
//! and what the managers' views of those networks program here — the overlay's peers,
//! the DNS answers every container gets at 127.0.0.11, the VIPs balanced by nftables in
//! each container's namespace, and the routing mesh's published ports on the host.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use ipnet::Ipv4Net;
use shoal_api::types::{AttachmentSpec, EndpointMode, NetworkDriver, NetworkView, PortProtocol};
use tokio::sync::Mutex;

use crate::bridge::NetError;
use crate::dns::{DnsServer, Resolver};
use crate::overlay::{OverlayConfig, Overlays, Peer, mac_for};

/// The host end of this node's endpoint on the ingress network.
pub const INGRESS_IF: &str = "shoal-ingress";
/// The endpoint id of that endpoint.
const INGRESS_ENDPOINT: &str = "host-ingress";
/// The nftables table of the routing mesh on the host.
const INGRESS_TABLE: &str = "shoal_ingress";
/// The nftables table of VIPs in a container's namespace.
const LB_TABLE: &str = "shoal_lb";
/// The endpoint ids of nodes' own ingress endpoints in views (see the manager's netview).
const NODE_ENDPOINT: &str = "node:";

/// One container's part.
struct Member {
    netns: PathBuf,
    networks: Vec<String>,
    overlays: Vec<String>,
    bridges: Vec<String>,
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

/// A relay from 127.0.0.1:PORT to the routing mesh.
struct Loopback {
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

/// The cluster networks of this node.
pub struct ClusterNetworks {
    state_dir: PathBuf,
    handle: rtnetlink::Handle,
    overlays: Overlays,
    bridges: crate::userbridge::UserBridges,
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

fn net_of(addr: &str) -> Option<Ipv4Net> {
    addr.parse::<Ipv4Net>().ok()
}

/// Answers for one container: names of the services on the networks it joins.
struct ContainerResolver {
    views: Arc<RwLock<Views>>,
    networks: Vec<String>,
}

impl Resolver for ContainerResolver {
    fn lookup(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
        let views = self.views.read().unwrap_or_else(|e| e.into_inner());
        let (tasks_only, service) = match name.strip_prefix("tasks.") {
            Some(s) => (true, s),
            None => (false, name),
        };
        let mut found = false;
        let mut out = Vec::new();
        for id in &self.networks {
            let Some(v) = views.by_id.get(id) else {
                continue;
            };
            for s in v.services.iter().filter(|s| s.name == service) {
                found = true;
                if !tasks_only && s.endpoint_mode == EndpointMode::Vip && !s.vip.is_empty() {
                    out.extend(ip_of(&s.vip));
                    continue;
                }
                out.extend(
                    v.endpoints
                        .iter()
                        .filter(|e| e.service_id == s.id && e.running)
                        .filter_map(|e| ip_of(&e.addr)),
                );
            }
        }
        if !found && !tasks_only {
            // A standalone container on the network, by its name.
            for id in &self.networks {
                if let Some(v) = views.by_id.get(id) {
                    out.extend(
                        v.endpoints
                            .iter()
                            .filter(|e| {
                                e.service_id.is_empty()
                                    && e.running
                                    && e.name.eq_ignore_ascii_case(name)
                            })
                            .filter_map(|e| ip_of(&e.addr)),
                    );
                }
            }
            if !out.is_empty() {
                return Some(out);
            }
        }
        if !found {
            // A task by name: SERVICE.SLOT, or SERVICE.SLOT.TASKID (as `service ps`
            // and the container names say).
            let mut parts = name.splitn(3, '.');
            let (Some(service), Some(slot)) = (parts.next(), parts.next()) else {
                return None;
            };
            let slot: u64 = slot.parse().ok()?;
            let task = parts.next();
            for id in &self.networks {
                let Some(v) = views.by_id.get(id) else {
                    continue;
                };
                for s in v.services.iter().filter(|s| s.name == service) {
                    out.extend(
                        v.endpoints
                            .iter()
                            .filter(|e| e.service_id == s.id && e.slot == slot && e.running)
                            .filter(|e| task.is_none_or(|t| e.task_id.starts_with(t)))
                            .filter_map(|e| ip_of(&e.addr)),
                    );
                }
            }
            return (!out.is_empty()).then_some(out);
        }
        Some(out)
    }
}

/// The nft script that makes a container's VIP table what `views` say for `networks`:
/// each VIP spread at random over the running tasks of its service, refused at once when
/// none runs.
pub fn lb_script(views: &BTreeMap<String, NetworkView>, networks: &[String]) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    let mut n = 0;
    for id in networks {
        let Some(v) = views.get(id) else { continue };
        for s in &v.services {
            let Some(vip) = ip_of(&s.vip).filter(|_| s.endpoint_mode == EndpointMode::Vip) else {
                continue;
            };
            let backends: Vec<Ipv4Addr> = v
                .endpoints
                .iter()
                .filter(|e| e.service_id == s.id && e.running)
                .filter_map(|e| ip_of(&e.addr))
                .collect();
            if backends.is_empty() {
                rules.push_str(&format!(
                    "add rule ip {LB_TABLE} refuse ip daddr {vip} reject\n"
                ));
                continue;
            }
            let mut map = Vec::new();
            for (k, b) in backends.iter().enumerate() {
                chains.push_str(&format!("  chain s{n}b{k} {{ dnat to {b}; }}\n"));
                map.push(format!("{k} : jump s{n}b{k}"));
            }
            rules.push_str(&format!(
                "add rule ip {LB_TABLE} vips ip daddr {vip} numgen random mod {} vmap {{ {} }}\n",
                backends.len(),
                map.join(", ")
            ));
            n += 1;
        }
    }
    format!(
        "add table ip {LB_TABLE}\ndelete table ip {LB_TABLE}\ntable ip {LB_TABLE} {{\n  \
         chain vips {{ type nat hook output priority -100; policy accept; }}\n  \
         chain refuse {{ type filter hook output priority 0; policy accept; }}\n{chains}}}\n{rules}"
    )
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
        let backends: Vec<Ipv4Addr> = view
            .endpoints
            .iter()
            .filter(|e| e.service_id == s.id && e.running)
            .filter_map(|e| ip_of(&e.addr))
            .collect();
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

fn overlay_config(a: &AttachmentSpec, underlay: Ipv4Addr) -> Result<OverlayConfig, NetError> {
    let bad = |what: &str| NetError::State(format!("network {}: bad {what}", a.network.spec.name));
    Ok(OverlayConfig {
        network_id: a.network.id.clone(),
        vni: a.network.vni,
        subnet: a.network.subnet.parse().map_err(|_| bad("subnet"))?,
        gateway: a.network.gateway.parse().map_err(|_| bad("gateway"))?,
        underlay_ip: underlay,
    })
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
            overlays: Overlays::open(state_dir).await?,
            bridges: crate::userbridge::UserBridges::open()?,
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
            overlays: Vec::new(),
            bridges: Vec::new(),
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
            for id in &member.overlays {
                let _ = self.overlays.detach(id, container_id).await;
            }
            for id in &member.bridges {
                let _ = self.bridges.detach(id, container_id).await;
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
            match a.network.spec.driver {
                NetworkDriver::Overlay => {
                    let underlay = underlay.ok_or_else(|| {
                        NetError::State(
                            "this node's underlay address is not known yet (no word from the managers): try again"
                                .into(),
                        )
                    })?;
                    let cfg = overlay_config(a, underlay)?;
                    self.overlays
                        .attach(&cfg, container_id, &member.netns, &ifname, ip)
                        .await?;
                    member.overlays.push(a.network.id.clone());
                    self.program_peers(&a.network.id).await;
                }
                NetworkDriver::Macvlan => {
                    let parent = a
                        .network
                        .spec
                        .options
                        .get("parent")
                        .cloned()
                        .unwrap_or_default();
                    let gateway = (default_route && i == 0)
                        .then(|| a.network.gateway.parse().ok())
                        .flatten();
                    crate::macvlan::attach(
                        &parent,
                        &member.netns,
                        &ifname,
                        ip,
                        prefix,
                        gateway,
                        mac_for(ip),
                    )
                    .await?;
                }
                NetworkDriver::Bridge => {
                    self.bridges
                        .attach(
                            &a.network,
                            container_id,
                            &member.netns,
                            &ifname,
                            (ip, prefix),
                            default_route && i == 0,
                        )
                        .await?;
                    member.bridges.push(a.network.id.clone());
                }
            }
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
        for id in &member.overlays {
            if let Err(e) = self.overlays.detach(id, container_id).await {
                tracing::warn!(container = container_id, "leaving overlay network: {e}");
            }
        }
        for id in &member.bridges {
            if let Err(e) = self.bridges.detach(id, container_id).await {
                tracing::warn!(container = container_id, "leaving bridge network: {e}");
            }
        }
    }

    /// Whether the container joined cluster networks here.
    pub async fn has(&self, container_id: &str) -> bool {
        self.inner.lock().await.members.contains_key(container_id)
    }

    async fn program_peers(&self, network_id: &str) {
        let peers: Vec<Peer> = {
            let views = self.views.read().unwrap_or_else(|e| e.into_inner());
            let Some(v) = views.by_id.get(network_id) else {
                return;
            };
            v.endpoints
                .iter()
                .filter(|e| e.node_id != views.node_id)
                .filter_map(|e| {
                    Some(Peer {
                        ip: ip_of(&e.addr)?,
                        node_ip: e.node_addr.parse().ok()?,
                    })
                })
                .collect()
        };
        if let Err(e) = self.overlays.set_peers(network_id, &peers).await {
            tracing::warn!(network = network_id, "programming overlay peers: {e}");
        }
    }

    async fn program_lb(&self, member: &mut Member) {
        let script = {
            let views = self.views.read().unwrap_or_else(|e| e.into_inner());
            lb_script(&views.by_id, &member.networks)
        };
        if script == member.lb {
            return;
        }
        let netns = member.netns.clone();
        let s = script.clone();
        let done = tokio::task::spawn_blocking(move || nft_in(Some(&netns), s)).await;
        match done {
            Ok(Ok(())) => member.lb = script,
            Ok(Err(e)) => tracing::warn!("programming a container's VIPs: {e}"),
            Err(e) => tracing::warn!("programming a container's VIPs: {e}"),
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
        for id in self.overlays.networks().await {
            if changed.contains(&id) {
                self.program_peers(&id).await;
            }
        }
        for member in inner.members.values_mut() {
            if member.networks.iter().any(|n| changed.contains(n)) {
                self.program_lb(member).await;
            }
        }
        self.program_ingress(&mut inner, ingress).await;
    }

    /// The routing mesh: a namespace of its own (like Swarm's ingress sandbox) with this
    /// node's endpoint on the ingress network and a link to the host (169.254.77.0/30,
    /// so no overlay subnet is routed in the host's namespace); the host sends published
    /// ports there, and it picks a running task. Made while some service publishes a port
    /// in ingress mode, removed after.
    async fn program_ingress(&self, inner: &mut Inner, view: Option<NetworkView>) {
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

    fn mesh_path(&self) -> PathBuf {
        self.state_dir.join("mesh")
    }

    /// Makes the mesh's namespace: this node's endpoint on the ingress network (eth1),
    /// the link to the host (eth0 there, `shoal-ingress` here), forwarding on.
    async fn make_mesh(
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
        let a = AttachmentSpec {
            network: v.network.clone(),
            addr: mine.addr.clone(),
        };
        let cfg = overlay_config(&a, underlay)?;
        self.overlays
            .attach(&cfg, INGRESS_ENDPOINT, &path, "eth1", ip)
            .await?;
        use crate::overlay::{configure, delete_link, move_link, must_index, nl, set_link};
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

    async fn unmake_mesh(&self, network_id: &str) {
        let _ = crate::overlay::delete_link(&self.handle, INGRESS_IF).await;
        if let Err(e) = self.overlays.detach(network_id, INGRESS_ENDPOINT).await {
            tracing::warn!("leaving the ingress network: {e}");
        }
        if let Err(e) = crate::netns::remove(&self.mesh_path()) {
            tracing::warn!("removing the routing mesh's namespace: {e}");
        }
    }

    /// After a daemon restart: joins the live containers again (their links survived;
    /// their DNS servers and tables are made anew) and removes what no live container
    /// uses.
    pub async fn restore(&self, live: &[(String, PathBuf, Vec<AttachmentSpec>)]) {
        let ids: Vec<String> = live.iter().map(|(id, _, _)| id.clone()).collect();
        if let Err(e) = self.overlays.restore(&ids).await {
            tracing::warn!("restoring overlay networks: {e}");
        }
        let bridged: Vec<(shoal_api::types::Network, String)> = live
            .iter()
            .flat_map(|(id, _, attachments)| {
                attachments
                    .iter()
                    .filter(|a| a.network.spec.driver == NetworkDriver::Bridge)
                    .map(|a| (a.network.clone(), id.clone()))
            })
            .collect();
        self.bridges.restore(&bridged).await;
        let mut inner = self.inner.lock().await;
        for (id, netns, attachments) in live {
            let networks: Vec<String> = attachments.iter().map(|a| a.network.id.clone()).collect();
            let of = |d: NetworkDriver| {
                attachments
                    .iter()
                    .filter(|a| a.network.spec.driver == d)
                    .map(|a| a.network.id.clone())
                    .collect::<Vec<_>>()
            };
            let (overlays, bridges) = (of(NetworkDriver::Overlay), of(NetworkDriver::Bridge));
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
                    overlays,
                    bridges,
                    dns,
                    lb: String::new(),
                },
            );
        }
        // The mesh is made again from the next views.
        let _ = crate::overlay::delete_link(&self.handle, INGRESS_IF).await;
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

    /// Removes everything: the daemon's last act when the node leaves its cluster.
    pub async fn remove_all(&self) {
        let ids: Vec<String> = self.inner.lock().await.members.keys().cloned().collect();
        for id in ids {
            self.detach(&id).await;
        }
        let mut inner = self.inner.lock().await;
        self.program_ingress(&mut inner, None).await;
        if let Err(e) = self.overlays.remove_all().await {
            tracing::warn!("removing overlay networks: {e}");
        }
        self.bridges.remove_all().await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::types::{
        NetEndpoint, NetService, Network, NetworkSpec, PortConfig, PublishMode,
    };

    fn view(mode: EndpointMode, running: &[bool]) -> NetworkView {
        NetworkView {
            network: Network {
                id: "n1".into(),
                spec: NetworkSpec {
                    name: "front".into(),
                    ..Default::default()
                },
                subnet: "10.0.1.0/24".into(),
                gateway: "10.0.1.1".into(),
                vni: 4097,
                created_ms: 0,
            },
            endpoints: running
                .iter()
                .enumerate()
                .map(|(i, r)| NetEndpoint {
                    task_id: format!("t{i}"),
                    service_id: "s1".into(),
                    slot: i as u64 + 1,
                    node_id: "a".into(),
                    node_addr: "192.168.0.1".into(),
                    addr: format!("10.0.1.{}/24", i + 3),
                    running: *r,
                    name: String::new(),
                })
                .collect(),
            services: vec![NetService {
                id: "s1".into(),
                name: "web".into(),
                endpoint_mode: mode,
                vip: if mode == EndpointMode::Vip {
                    "10.0.1.2/24".into()
                } else {
                    String::new()
                },
                ports: vec![PortConfig {
                    target: 80,
                    published: 8080,
                    protocol: PortProtocol::Tcp,
                    mode: PublishMode::Ingress,
                }],
            }],
        }
    }

    fn resolver(v: NetworkView) -> ContainerResolver {
        let mut views = Views::default();
        views.by_id.insert("n1".into(), v);
        ContainerResolver {
            views: Arc::new(RwLock::new(views)),
            networks: vec!["n1".into()],
        }
    }

    #[test]
    fn names_give_the_vip_or_the_running_tasks() {
        let r = resolver(view(EndpointMode::Vip, &[true, false, true]));
        assert_eq!(r.lookup("web"), Some(vec![Ipv4Addr::new(10, 0, 1, 2)]));
        assert_eq!(
            r.lookup("tasks.web"),
            Some(vec![Ipv4Addr::new(10, 0, 1, 3), Ipv4Addr::new(10, 0, 1, 5)])
        );
        assert_eq!(r.lookup("db"), None, "not ours: forwarded");
        assert_eq!(r.lookup("web.3"), Some(vec![Ipv4Addr::new(10, 0, 1, 5)]));
        assert_eq!(r.lookup("web.3.t2"), Some(vec![Ipv4Addr::new(10, 0, 1, 5)]));
        assert_eq!(r.lookup("web.2"), None, "not running");
        assert_eq!(r.lookup("web.3.zz"), None);
        // A standalone container, by its name.
        let mut v = view(EndpointMode::Vip, &[true]);
        v.endpoints.push(NetEndpoint {
            task_id: "att".into(),
            service_id: String::new(),
            slot: 0,
            node_id: "b".into(),
            node_addr: "192.168.0.2".into(),
            addr: "10.0.1.9/24".into(),
            running: true,
            name: "Sidecar".into(),
        });
        let r = resolver(v);
        assert_eq!(r.lookup("sidecar"), Some(vec![Ipv4Addr::new(10, 0, 1, 9)]));
        assert_eq!(r.lookup("tasks.sidecar"), None);
        let r = resolver(view(EndpointMode::Dnsrr, &[true, true]));
        assert_eq!(
            r.lookup("web"),
            Some(vec![Ipv4Addr::new(10, 0, 1, 3), Ipv4Addr::new(10, 0, 1, 4)])
        );
        let r = resolver(view(EndpointMode::Dnsrr, &[false]));
        assert_eq!(r.lookup("web"), Some(vec![]), "known, but nothing runs");
        let mut r = resolver(view(EndpointMode::Vip, &[true]));
        r.networks = vec!["other".into()];
        assert_eq!(r.lookup("web"), None, "names are scoped to shared networks");
    }

    #[test]
    fn vips_spread_over_running_tasks_only() {
        let mut views = BTreeMap::new();
        views.insert(
            "n1".to_string(),
            view(EndpointMode::Vip, &[true, false, true]),
        );
        let s = lb_script(&views, &["n1".into()]);
        assert!(
            s.contains(
                "ip daddr 10.0.1.2 numgen random mod 2 vmap { 0 : jump s0b0, 1 : jump s0b1 }"
            ),
            "{s}"
        );
        assert!(
            s.contains("chain s0b0 { dnat to 10.0.1.3; }")
                && s.contains("chain s0b1 { dnat to 10.0.1.5; }"),
            "{s}"
        );
        views.insert("n1".to_string(), view(EndpointMode::Vip, &[false]));
        let s = lb_script(&views, &["n1".into()]);
        assert!(s.contains("refuse ip daddr 10.0.1.2 reject"), "{s}");
        views.insert("n1".to_string(), view(EndpointMode::Dnsrr, &[true]));
        assert!(!lb_script(&views, &["n1".into()]).contains("daddr"));
    }

    /// The scripts are what nft takes: applied (twice, as replacements) in a namespace of
    /// the test's own.
    #[test]
    fn nft_takes_the_scripts() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: network namespaces need root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ns = dir.path().join("lbns");
        crate::netns::create(&ns).unwrap();
        struct Guard(PathBuf);
        impl Drop for Guard {
            fn drop(&mut self) {
                let _ = crate::netns::remove(&self.0);
            }
        }
        let _g = Guard(ns.clone());
        let mut views = BTreeMap::new();
        views.insert(
            "n1".to_string(),
            view(EndpointMode::Vip, &[true, false, true]),
        );
        for _ in 0..2 {
            nft_in(Some(&ns), lb_script(&views, &["n1".into()])).unwrap();
            nft_in(
                Some(&ns),
                mesh_lb_script(&view(EndpointMode::Vip, &[true, true])),
            )
            .unwrap();
            nft_in(
                Some(&ns),
                mesh_host_script(&view(EndpointMode::Vip, &[true, true])),
            )
            .unwrap();
        }
        views.insert("n1".to_string(), view(EndpointMode::Vip, &[false]));
        nft_in(Some(&ns), lb_script(&views, &["n1".into()])).unwrap();
        let listed = crate::netns::run_in(&ns, || {
            std::process::Command::new("nft")
                .args(["list", "ruleset"])
                .output()
                .unwrap()
        })
        .unwrap();
        let text = String::from_utf8_lossy(&listed.stdout);
        assert!(
            text.contains("table ip shoal_lb") && text.contains("table ip shoal_ingress"),
            "{text}"
        );
        assert!(text.contains("reject"), "{text}");
    }

    #[test]
    fn ingress_ports_go_to_running_tasks() {
        let s = mesh_lb_script(&view(EndpointMode::Vip, &[true, true]));
        assert!(
            s.contains("prerouting iifname \"eth0\" tcp dport 8080 numgen random mod 2"),
            "{s}"
        );
        assert!(s.contains("dnat to 10.0.1.4:80"), "{s}");
        assert!(s.contains("masquerade"), "{s}");
        assert!(mesh_lb_script(&view(EndpointMode::Vip, &[false])).is_empty());
        let h = mesh_host_script(&view(EndpointMode::Vip, &[true]));
        assert!(h.contains("tcp dport 8080 dnat to 169.254.77.2"), "{h}");
        assert!(mesh_host_script(&view(EndpointMode::Vip, &[false])).is_empty());
    }
}
