//! The allocator's pure core: subnets and VXLAN ids for networks, addresses for tasks,
//! service VIPs and the nodes' ingress endpoints. It keeps no state of its own: what is
//! taken is read back from the stored objects on every pass, so a new leader allocates
//! exactly as the old one did, and an address comes free when its task stops.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
pub use shoal_api::cluster::{AddrPool, overlaps};
use shoal_api::types::{Network, NetworkDriver, NetworkSpec};
use shoal_netoverlay::ipam::Pool;

/// The first VXLAN id handed out (lower ones are left to other users of VXLAN).
pub const FIRST_VNI: u32 = 4096;
/// The last VXLAN id (24 bits).
pub const LAST_VNI: u32 = (1 << 24) - 1;
/// The name of the routing mesh's network.
pub const INGRESS: &str = "ingress";

/// What a new network gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkAllocation {
    /// Its subnet.
    pub subnet: Ipv4Net,
    /// Its gateway.
    pub gateway: Ipv4Addr,
    /// Its VXLAN id (overlay only; else 0).
    pub vni: u32,
}

fn parse_net(what: &str, s: &str) -> Result<Ipv4Net, String> {
    s.parse::<Ipv4Net>()
        .map_err(|_| format!("{what} {s}: not an IPv4 CIDR; give one as 10.20.30.0/24"))
}

/// Checks a network spec: its name, driver options, subnet, gateway and range.
pub fn check_network_spec(spec: &NetworkSpec) -> Result<(), String> {
    if spec.name.is_empty()
        || spec.name.len() > 64
        || !spec
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(format!(
            "invalid network name \"{}\": use up to 64 letters, digits, '-', '_' and '.'",
            spec.name
        ));
    }
    if spec.driver == NetworkDriver::Macvlan {
        match spec.options.get("parent") {
            Some(p) if !p.is_empty() && p.len() <= 15 => {}
            _ => {
                return Err(
                    "a macvlan network needs its parent interface: -o parent=IFACE (an interface every node that runs its tasks has)"
                        .into(),
                );
            }
        }
        if spec.subnet.is_empty() {
            return Err(
                "a macvlan network needs the subnet of its parent's segment: --subnet CIDR (and --gateway, the segment's router)"
                    .into(),
            );
        }
    }
    if let Some(k) = spec
        .options
        .keys()
        .find(|k| !matches!(k.as_str(), "parent" | "mtu"))
    {
        return Err(format!(
            "unknown driver option {k}: the options are parent (macvlan) and mtu"
        ));
    }
    if let Some(mtu) = spec.options.get("mtu")
        && !mtu.parse::<u32>().is_ok_and(|m| (576..=9000).contains(&m))
    {
        return Err(format!("-o mtu={mtu}: give a number from 576 to 9000"));
    }
    if spec.ingress && spec.driver != NetworkDriver::Overlay {
        return Err("the ingress network must be an overlay network (-d overlay)".into());
    }
    if spec.subnet.is_empty() {
        if !spec.gateway.is_empty() || !spec.ip_range.is_empty() {
            return Err("--gateway and --ip-range need --subnet".into());
        }
        return Ok(());
    }
    let subnet = parse_net("--subnet", &spec.subnet)?;
    if subnet.prefix_len() > 29 {
        return Err(format!(
            "--subnet {subnet}: too small, give a /29 or larger"
        ));
    }
    let subnet = subnet.trunc();
    let gateway = gateway_of(spec, subnet)?;
    let range = match spec.ip_range.as_str() {
        "" => None,
        r => Some(parse_net("--ip-range", r)?),
    };
    Pool::with(subnet, gateway, range).map_err(|_| match range {
        Some(r) if !subnet.contains(&r) => {
            format!("--ip-range {r} is not inside --subnet {subnet}")
        }
        _ => format!("--gateway {gateway} is not a host address of --subnet {subnet}"),
    })?;
    Ok(())
}

fn gateway_of(spec: &NetworkSpec, subnet: Ipv4Net) -> Result<Ipv4Addr, String> {
    match spec.gateway.as_str() {
        "" => Ok(Ipv4Addr::from(u32::from(subnet.network()) + 1)),
        g => g
            .parse()
            .map_err(|_| format!("--gateway {g}: not an IPv4 address")),
    }
}

/// Chooses the subnet, gateway and VXLAN id of a new network, given the networks that
/// exist. A subnet given in the spec must not overlap another network's; one not given is
/// the first free one of the pool.
pub fn allocate_network(
    spec: &NetworkSpec,
    existing: &[Network],
    pool: &AddrPool,
) -> Result<NetworkAllocation, String> {
    check_network_spec(spec)?;
    let taken: Vec<(Ipv4Net, &str)> = existing
        .iter()
        .filter_map(|n| {
            n.subnet
                .parse::<Ipv4Net>()
                .ok()
                .map(|s| (s, n.spec.name.as_str()))
        })
        .collect();
    let subnet = if spec.subnet.is_empty() {
        free_subnet(pool, &taken)?
    } else {
        let s = parse_net("--subnet", &spec.subnet)?.trunc();
        // macvlan subnets are a physical segment's: two macvlan networks on different
        // parents may share one. Others must not overlap anything.
        if let Some((t, name)) = taken.iter().find(|(t, name)| {
            overlaps(&s, t)
                && !(spec.driver == NetworkDriver::Macvlan
                    && existing.iter().any(|n| {
                        n.spec.name == **name
                            && n.spec.driver == NetworkDriver::Macvlan
                            && n.spec.options.get("parent") != spec.options.get("parent")
                    }))
        }) {
            return Err(format!(
                "--subnet {s} overlaps {t} of network {name}: choose another subnet"
            ));
        }
        s
    };
    let gateway = gateway_of(spec, subnet)?;
    let vni = if spec.driver == NetworkDriver::Overlay {
        let used: BTreeSet<u32> = existing.iter().map(|n| n.vni).collect();
        (FIRST_VNI..=LAST_VNI)
            .find(|v| !used.contains(v))
            .ok_or("every VXLAN id is in use: remove unused overlay networks")?
    } else {
        0
    };
    Ok(NetworkAllocation {
        subnet,
        gateway,
        vni,
    })
}

/// The first subnet of the pool's size that overlaps none taken.
fn free_subnet(pool: &AddrPool, taken: &[(Ipv4Net, &str)]) -> Result<Ipv4Net, String> {
    for p in &pool.pools {
        let Ok(subnets) = p.subnets(pool.mask_len) else {
            continue;
        };
        for s in subnets {
            if !taken.iter().any(|(t, _)| overlaps(&s, t)) {
                return Ok(s);
            }
        }
    }
    Err(format!(
        "the cluster's address pool ({}) has no free /{} subnet left: remove unused networks, or give this one --subnet",
        pool.pools
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        pool.mask_len
    ))
}

/// The addresses of every network, with those in use reserved.
#[derive(Debug, Default)]
pub struct Addresses {
    pools: BTreeMap<String, Pool>,
}

impl Addresses {
    /// Pools for `networks`, nothing reserved yet.
    pub fn new<'a>(networks: impl IntoIterator<Item = &'a Network>) -> Addresses {
        let mut pools = BTreeMap::new();
        for n in networks {
            let Ok(subnet) = n.subnet.parse::<Ipv4Net>() else {
                continue;
            };
            let gateway = n
                .gateway
                .parse()
                .unwrap_or(Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1)));
            let range = n.spec.ip_range.parse::<Ipv4Net>().ok();
            if let Ok(p) = Pool::with(subnet, gateway, range) {
                pools.insert(n.id.clone(), p);
            }
        }
        Addresses { pools }
    }

    /// Whether the network is known.
    pub fn knows(&self, network_id: &str) -> bool {
        self.pools.contains_key(network_id)
    }

    /// Marks an address (`ip/len`, or a bare ip) in use; unknown networks and bad or
    /// doubly used addresses are ignored (the first holder keeps it).
    pub fn reserve(&mut self, network_id: &str, addr: &str) -> bool {
        let Some(pool) = self.pools.get_mut(network_id) else {
            return false;
        };
        let ip = addr.split('/').next().unwrap_or_default();
        ip.parse().is_ok_and(|ip| pool.reserve(ip).is_ok())
    }

    /// Gives an address back.
    pub fn release(&mut self, network_id: &str, addr: &str) {
        if let (Some(pool), Ok(ip)) = (
            self.pools.get_mut(network_id),
            addr.split('/').next().unwrap_or_default().parse(),
        ) {
            pool.release(ip);
        }
    }

    /// Hands out the lowest free address, as `ip/len`.
    pub fn allocate(&mut self, network_id: &str, name: &str) -> Result<String, String> {
        let pool = self
            .pools
            .get_mut(network_id)
            .ok_or_else(|| format!("network {name} no longer exists"))?;
        let ip = pool.allocate().map_err(|_| {
            format!(
                "network {name} ({}) has no free address left: scale down, or use a network with a larger subnet",
                pool.subnet()
            )
        })?;
        Ok(format!("{ip}/{}", pool.subnet().prefix_len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, driver: NetworkDriver) -> NetworkSpec {
        NetworkSpec {
            name: name.into(),
            driver,
            ..Default::default()
        }
    }

    fn made(id: &str, s: &NetworkSpec, a: &NetworkAllocation) -> Network {
        Network {
            id: id.into(),
            spec: s.clone(),
            subnet: a.subnet.to_string(),
            gateway: a.gateway.to_string(),
            vni: a.vni,
            created_ms: 0,
        }
    }

    #[test]
    fn networks_take_the_next_free_subnet_and_vni() {
        let pool = AddrPool::default();
        let mut nets = Vec::new();
        for (i, name) in ["ingress", "a", "b"].iter().enumerate() {
            let s = spec(name, NetworkDriver::Overlay);
            let a = allocate_network(&s, &nets, &pool).unwrap();
            assert_eq!(a.subnet.to_string(), format!("10.0.{i}.0/24"));
            assert_eq!(a.gateway.to_string(), format!("10.0.{i}.1"));
            assert_eq!(a.vni, FIRST_VNI + i as u32);
            nets.push(made(&format!("n{i}"), &s, &a));
        }
        // A given subnet skips past; the pool goes around it.
        let mut s = spec("c", NetworkDriver::Bridge);
        s.subnet = "10.0.3.0/24".into();
        let a = allocate_network(&s, &nets, &pool).unwrap();
        assert_eq!(a.vni, 0, "bridge networks have no VXLAN id");
        nets.push(made("n3", &s, &a));
        let a = allocate_network(&spec("d", NetworkDriver::Overlay), &nets, &pool).unwrap();
        assert_eq!(a.subnet.to_string(), "10.0.4.0/24");
        // A subnet that overlaps is refused, naming the other network.
        let mut s = spec("e", NetworkDriver::Overlay);
        s.subnet = "10.0.0.0/16".into();
        let e = allocate_network(&s, &nets, &pool).unwrap_err();
        assert!(e.contains("overlaps") && e.contains("ingress"), "{e}");
        // Freed subnets and VNIs come back.
        nets.remove(1);
        let a = allocate_network(&spec("f", NetworkDriver::Overlay), &nets, &pool).unwrap();
        assert_eq!(
            (a.subnet.to_string(), a.vni),
            ("10.0.1.0/24".into(), FIRST_VNI + 1)
        );
    }

    #[test]
    fn a_used_up_pool_says_so() {
        let pool = AddrPool::parse(&["192.168.0.0/23".into()], 24).unwrap();
        let mut nets = Vec::new();
        for i in 0..2 {
            let s = spec(&format!("n{i}"), NetworkDriver::Overlay);
            let a = allocate_network(&s, &nets, &pool).unwrap();
            nets.push(made(&format!("n{i}"), &s, &a));
        }
        let e = allocate_network(&spec("x", NetworkDriver::Overlay), &nets, &pool).unwrap_err();
        assert!(e.contains("no free /24"), "{e}");
    }

    #[test]
    fn pools_and_specs_are_checked() {
        let bad = |f: &dyn Fn(&mut NetworkSpec)| {
            let mut s = spec("n", NetworkDriver::Overlay);
            f(&mut s);
            check_network_spec(&s).unwrap_err()
        };
        assert!(bad(&|s| s.name = "a b".into()).contains("invalid network name"));
        assert!(bad(&|s| s.driver = NetworkDriver::Macvlan).contains("parent"));
        assert!(bad(&|s| s.gateway = "10.0.0.1".into()).contains("need --subnet"));
        assert!(
            bad(&|s| {
                s.subnet = "10.9.0.0/24".into();
                s.gateway = "10.9.1.1".into();
            })
            .contains("not a host address")
        );
        assert!(
            bad(&|s| {
                s.subnet = "10.9.0.0/24".into();
                s.ip_range = "10.8.0.0/25".into();
            })
            .contains("not inside")
        );
        assert!(bad(&|s| s.subnet = "10.9.0.0/30".into()).contains("too small"));
        assert!(
            bad(&|s| {
                s.options.insert("colour".into(), "red".into());
            })
            .contains("unknown driver option")
        );
        let mut m = spec("m", NetworkDriver::Macvlan);
        m.options.insert("parent".into(), "eth0".into());
        m.subnet = "192.168.1.0/24".into();
        m.gateway = "192.168.1.254".into();
        check_network_spec(&m).unwrap();
    }

    #[test]
    fn addresses_skip_what_is_reserved_and_come_back() {
        let s = spec("a", NetworkDriver::Overlay);
        let a = allocate_network(&s, &[], &AddrPool::default()).unwrap();
        let net = made("n1", &s, &a);
        let mut addrs = Addresses::new([&net]);
        assert!(addrs.reserve("n1", "10.0.0.2/24"));
        assert!(!addrs.reserve("n1", "10.0.0.2/24"), "already held");
        assert!(!addrs.reserve("other", "10.0.0.3/24"));
        assert_eq!(addrs.allocate("n1", "a").unwrap(), "10.0.0.3/24");
        addrs.release("n1", "10.0.0.2/24");
        assert_eq!(addrs.allocate("n1", "a").unwrap(), "10.0.0.2/24");
        let e = addrs.allocate("gone", "b").unwrap_err();
        assert!(e.contains("no longer exists"), "{e}");
    }
}
