//! The allocator's stage: services get a VIP on each of their networks and a number for
//! each port published in ingress mode without one, nodes an address on the ingress
//! network, standalone containers' attachments their address, and NEW tasks their
//! resources before they become PENDING (an address on each network they join, a number
//! for each port published in host mode without one). Tasks asked to stop before they
//! reached a node stop here: no agent will ever report on them.
//!
//! Nothing is remembered between passes: what is taken is read back from the snapshot
//! every time (in id order), so a new leader allocates exactly as the old one did, and
//! an address comes free when its holder ends.

use std::collections::{HashMap, HashSet};

use shoal_api::types::{
    Attachment, EndpointMode, Network, NetworkAttachment, Node, PortConfig, PortProtocol,
    PublishMode, Service, ServiceSpec, Task, TaskState, Vip,
};

use crate::allocator::{Addresses, INGRESS};
use crate::orchestrator;
use crate::store::{Snapshot, Write};

/// Where published ports without a number come from (as Swarm's dynamic range).
pub const DYNAMIC_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

type PortsInUse = HashSet<(PortProtocol, u16)>;

/// The networks a task of `spec` joins: the spec's, then the ingress network when it
/// publishes a port in ingress mode.
pub fn task_networks<'a>(
    spec: &'a ServiceSpec,
    ports: &[PortConfig],
    ingress: Option<&'a Network>,
) -> Vec<&'a str> {
    let mut out: Vec<&str> = spec.networks.iter().map(String::as_str).collect();
    if let Some(ing) = ingress
        && ports.iter().any(|p| p.mode == PublishMode::Ingress)
        && !out.contains(&ing.id.as_str())
    {
        out.push(&ing.id);
    }
    out
}

/// The allocator's writes for the snapshot.
pub fn run(snap: &Snapshot) -> Vec<Write> {
    let networks: Vec<&Network> = snap.list::<Network>().map(|v| v.value).collect();
    let ingress = networks.iter().copied().find(|n| n.spec.ingress);
    let names: HashMap<&str, &str> = networks
        .iter()
        .map(|n| (n.id.as_str(), n.spec.name.as_str()))
        .collect();
    let name_of = |net: &str| names.get(net).copied().unwrap_or(net).to_string();
    let mut addrs = taken_addresses(snap, &networks);
    let mut out = Vec::new();
    if let Some(ing) = ingress {
        node_ingress_addresses(snap, ing, &mut addrs, &mut out);
    }
    let mut in_use = ports_in_use(snap);
    let mut mesh_ports: HashMap<&str, Vec<PortConfig>> = HashMap::new();
    for v in snap.list::<Service>() {
        let s = v.value;
        let ports = service_ports(s, &mut in_use);
        mesh_ports.insert(s.id.as_str(), ports.clone());
        let vips = service_vips(s, ingress, &mut addrs, &name_of);
        if vips != s.vips || ports != s.ports {
            let mut s = s.clone();
            s.vips = vips;
            s.ports = ports;
            out.push(Write::update(s, v.version));
        }
    }
    for v in snap.list::<Attachment>() {
        let a = v.value;
        if !a.addr.is_empty() {
            continue;
        }
        let mut a = a.clone();
        match addrs.allocate(&a.network_id, &name_of(&a.network_id)) {
            Ok(addr) => {
                a.addr = addr;
                a.message.clear();
            }
            Err(message) if message == a.message => continue,
            Err(message) => a.message = message,
        }
        out.push(Write::update(a, v.version));
    }
    for v in snap.list::<Task>() {
        let t = v.value;
        if t.status.state < TaskState::Assigned && t.desired_state > TaskState::Running {
            let mut t = t.clone();
            t.status.state = TaskState::Shutdown;
            t.status.message = "shut down before it was placed".into();
            out.push(Write::update(t, v.version));
            continue;
        }
        if t.status.state != TaskState::New {
            continue;
        }
        let mut t = t.clone();
        // A port published in ingress mode has the service's number.
        if let Some(ports) = mesh_ports.get(t.service_id.as_str()) {
            for p in t
                .ports
                .iter_mut()
                .filter(|p| p.mode == PublishMode::Ingress)
            {
                if let Some(q) = ports
                    .iter()
                    .find(|q| q.target == p.target && q.protocol == p.protocol)
                {
                    p.published = q.published;
                }
            }
        }
        let result = allocate_ports(&t.ports, &mut in_use).and_then(|ports| {
            let attachments = task_attachments(&t.spec, &ports, ingress, &mut addrs, &name_of)?;
            Ok((ports, attachments))
        });
        match result {
            Ok((ports, attachments)) => {
                t.ports = ports;
                t.networks = attachments;
                t.status.state = TaskState::Pending;
                t.status.message = "pending".into();
            }
            Err(message) if t.status.message == message => continue,
            Err(message) => t.status.message = message,
        }
        out.push(Write::update(t, v.version));
    }
    out
}

/// Every network's addresses, with those its live holders have reserved (in id order, so
/// that the first holder of an address keeps it).
fn taken_addresses(snap: &Snapshot, networks: &[&Network]) -> Addresses {
    let mut addrs = Addresses::new(networks.iter().copied());
    for v in snap.list::<Task>() {
        if !v.value.status.state.is_terminal() {
            for a in &v.value.networks {
                addrs.reserve(&a.network_id, &a.addr);
            }
        }
    }
    for v in snap.list::<Attachment>() {
        if !v.value.addr.is_empty() {
            addrs.reserve(&v.value.network_id, &v.value.addr);
        }
    }
    for v in snap.list::<Service>() {
        for vip in &v.value.vips {
            addrs.reserve(&vip.network_id, &vip.addr);
        }
    }
    addrs
}

/// Nodes' ingress endpoints: a node keeps its address unless another took it first.
fn node_ingress_addresses(
    snap: &Snapshot,
    ingress: &Network,
    addrs: &mut Addresses,
    out: &mut Vec<Write>,
) {
    let mut lacking = Vec::new();
    for v in snap.list::<Node>() {
        let n = v.value;
        if n.ingress_addr.is_empty() || !addrs.reserve(&ingress.id, &n.ingress_addr) {
            lacking.push(v);
        }
    }
    for v in lacking {
        if let Ok(addr) = addrs.allocate(&ingress.id, INGRESS) {
            let mut n = v.value.clone();
            n.ingress_addr = addr;
            out.push(Write::update(n, v.version));
        }
    }
}

/// The published ports live tasks hold (once past NEW), and the ingress ports services
/// hold.
fn ports_in_use(snap: &Snapshot) -> PortsInUse {
    let tasks = snap
        .list::<Task>()
        .filter(|v| orchestrator::is_live(v.value) && v.value.status.state > TaskState::New)
        .flat_map(|v| v.value.ports.iter().map(|p| (p.protocol, p.published)));
    let services = snap.list::<Service>().flat_map(|v| {
        let s = v.value;
        s.ports
            .iter()
            .chain(
                s.spec
                    .ports
                    .iter()
                    .filter(|p| p.mode == PublishMode::Ingress),
            )
            .filter(|p| p.published != 0)
            .map(|p| (p.protocol, p.published))
    });
    tasks.chain(services).collect()
}

/// A service's VIPs: one per network its tasks join in vip mode; ones of networks it left
/// come free.
fn service_vips(
    s: &Service,
    ingress: Option<&Network>,
    addrs: &mut Addresses,
    name_of: &dyn Fn(&str) -> String,
) -> Vec<Vip> {
    let wanted: Vec<&str> = if s.spec.endpoint_mode == EndpointMode::Vip {
        task_networks(&s.spec, &s.spec.ports, ingress)
    } else {
        Vec::new()
    };
    let mut vips: Vec<Vip> = s
        .vips
        .iter()
        .filter(|vip| wanted.contains(&vip.network_id.as_str()))
        .cloned()
        .collect();
    for gone in s.vips.iter().filter(|vip| !vips.contains(vip)) {
        addrs.release(&gone.network_id, &gone.addr);
    }
    for net in &wanted {
        if vips.iter().any(|vip| vip.network_id == *net) || !addrs.knows(net) {
            continue;
        }
        if let Ok(addr) = addrs.allocate(net, &name_of(net)) {
            vips.push(Vip {
                network_id: net.to_string(),
                addr,
            });
        }
    }
    vips
}

/// A NEW task's address on each network it joins; none if one network has no address
/// left (the others are given back).
fn task_attachments(
    spec: &ServiceSpec,
    ports: &[PortConfig],
    ingress: Option<&Network>,
    addrs: &mut Addresses,
    name_of: &dyn Fn(&str) -> String,
) -> Result<Vec<NetworkAttachment>, String> {
    let mut attachments = Vec::new();
    for net in task_networks(spec, ports, ingress) {
        match addrs.allocate(net, &name_of(net)) {
            Ok(addr) => attachments.push(NetworkAttachment {
                network_id: net.to_string(),
                addr,
            }),
            Err(e) => {
                for a in &attachments {
                    addrs.release(&a.network_id, &a.addr);
                }
                return Err(e);
            }
        }
    }
    Ok(attachments)
}

/// A service's ports published in ingress mode, each with a number: the spec's, the one
/// it was given before, or a free one of the dynamic range (marked taken in `in_use`).
fn service_ports(s: &Service, in_use: &mut PortsInUse) -> Vec<PortConfig> {
    let mut out = Vec::new();
    for p in s
        .spec
        .ports
        .iter()
        .filter(|p| p.mode == PublishMode::Ingress)
    {
        let mut p = *p;
        if p.published == 0 {
            let before = s
                .ports
                .iter()
                .find(|q| q.target == p.target && q.protocol == p.protocol && q.published != 0)
                .map(|q| q.published);
            let free = || {
                DYNAMIC_PORTS
                    .clone()
                    .find(|n| !in_use.contains(&(p.protocol, *n)))
            };
            p.published = match before.or_else(free) {
                Some(n) => n,
                None => continue,
            };
            in_use.insert((p.protocol, p.published));
        }
        out.push(p);
    }
    out
}

/// Gives each port published in host mode without a number one from the dynamic range
/// that is not in `in_use`, and marks the ports taken. (An ingress port without a number
/// waits for its service's.)
fn allocate_ports(
    ports: &[PortConfig],
    in_use: &mut PortsInUse,
) -> Result<Vec<PortConfig>, String> {
    let mut out = Vec::with_capacity(ports.len());
    for p in ports {
        let mut p = *p;
        if p.published == 0 && p.mode == PublishMode::Host {
            p.published = DYNAMIC_PORTS
                .clone()
                .find(|n| !in_use.contains(&(p.protocol, *n)))
                .ok_or_else(|| {
                    format!(
                        "no free port left in {}-{} for target port {}",
                        DYNAMIC_PORTS.start(),
                        DYNAMIC_PORTS.end(),
                        p.target
                    )
                })?;
        }
        in_use.insert((p.protocol, p.published));
        out.push(p);
    }
    Ok(out)
}

#[cfg(test)]
#[path = "allocate_tests.rs"]
mod tests;
