//! Address management for one subnet: pure and deterministic. The gateway takes the first
//! host address; containers get the lowest free address after it.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Errors of address management.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    /// Every address of the subnet is in use.
    #[error("no free address left in {0}: remove some containers, or use a larger subnet")]
    Exhausted(Ipv4Net),
    /// An address outside the subnet, or a reserved one.
    #[error("address {0} cannot be used in {1}")]
    OutOfRange(Ipv4Addr, Ipv4Net),
    /// An address already taken.
    #[error("address {0} is already in use")]
    InUse(Ipv4Addr),
}

/// The addresses of one subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    allocated: BTreeSet<Ipv4Addr>,
    /// Addresses are handed out from this part of the subnet only (reservations may be
    /// anywhere in it).
    #[serde(default)]
    range: Option<Ipv4Net>,
}

impl Pool {
    /// A pool for `subnet`, whose gateway is its first host address.
    pub fn new(subnet: Ipv4Net) -> Pool {
        let subnet = subnet.trunc();
        let gateway = Ipv4Addr::from(u32::from(subnet.network()) + 1);
        Pool {
            subnet,
            gateway,
            allocated: BTreeSet::new(),
            range: None,
        }
    }

    /// A pool for `subnet` with the given gateway, handing out addresses from `range`
    /// (a part of the subnet) only, when given.
    pub fn with(
        subnet: Ipv4Net,
        gateway: Ipv4Addr,
        range: Option<Ipv4Net>,
    ) -> Result<Pool, IpamError> {
        let subnet = subnet.trunc();
        let mut p = Pool::new(subnet);
        if !subnet.contains(&gateway)
            || gateway == subnet.network()
            || gateway == subnet.broadcast()
        {
            return Err(IpamError::OutOfRange(gateway, subnet));
        }
        p.gateway = gateway;
        if let Some(r) = range {
            let r = r.trunc();
            if !subnet.contains(&r) {
                return Err(IpamError::OutOfRange(r.network(), subnet));
            }
            p.range = Some(r);
        }
        Ok(p)
    }

    /// The subnet.
    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// The gateway address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    fn usable(&self, a: Ipv4Addr) -> bool {
        self.subnet.contains(&a)
            && a != self.subnet.network()
            && a != self.subnet.broadcast()
            && a != self.gateway
    }

    /// Hands out the lowest free address.
    pub fn allocate(&mut self) -> Result<Ipv4Addr, IpamError> {
        let within = self.range.unwrap_or(self.subnet);
        let first = u32::from(within.network());
        let last = u32::from(within.broadcast());
        for n in first..=last {
            let a = Ipv4Addr::from(n);
            if self.usable(a) && !self.allocated.contains(&a) {
                self.allocated.insert(a);
                return Ok(a);
            }
        }
        Err(IpamError::Exhausted(within))
    }

    /// Takes a specific address.
    pub fn reserve(&mut self, a: Ipv4Addr) -> Result<(), IpamError> {
        if !self.usable(a) {
            return Err(IpamError::OutOfRange(a, self.subnet));
        }
        if !self.allocated.insert(a) {
            return Err(IpamError::InUse(a));
        }
        Ok(())
    }

    /// Gives an address back.
    pub fn release(&mut self, a: Ipv4Addr) {
        self.allocated.remove(&a);
    }

    /// How many addresses are in use.
    pub fn in_use(&self) -> usize {
        self.allocated.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn gateway_and_first_addresses() {
        let mut p = Pool::new(net("172.29.0.0/16"));
        assert_eq!(p.gateway(), Ipv4Addr::new(172, 29, 0, 1));
        assert_eq!(p.allocate().unwrap(), Ipv4Addr::new(172, 29, 0, 2));
        assert_eq!(p.allocate().unwrap(), Ipv4Addr::new(172, 29, 0, 3));
        p.release(Ipv4Addr::new(172, 29, 0, 2));
        assert_eq!(p.allocate().unwrap(), Ipv4Addr::new(172, 29, 0, 2));
    }

    #[test]
    fn small_subnets_run_out_with_a_clear_error() {
        let mut p = Pool::new(net("10.0.0.0/30"));
        assert_eq!(p.allocate().unwrap(), Ipv4Addr::new(10, 0, 0, 2));
        let e = p.allocate().unwrap_err();
        assert_eq!(e, IpamError::Exhausted(net("10.0.0.0/30")));
        assert!(e.to_string().contains("no free address"));
    }

    #[test]
    fn reserve_checks_range_and_use() {
        let mut p = Pool::new(net("10.0.0.0/24"));
        assert!(p.reserve(Ipv4Addr::new(10, 0, 0, 1)).is_err(), "gateway");
        assert!(
            p.reserve(Ipv4Addr::new(10, 0, 0, 255)).is_err(),
            "broadcast"
        );
        assert!(p.reserve(Ipv4Addr::new(10, 0, 1, 5)).is_err(), "outside");
        p.reserve(Ipv4Addr::new(10, 0, 0, 9)).unwrap();
        assert_eq!(
            p.reserve(Ipv4Addr::new(10, 0, 0, 9)),
            Err(IpamError::InUse(Ipv4Addr::new(10, 0, 0, 9)))
        );
    }

    #[test]
    fn gateway_and_range_are_kept() {
        let mut p = Pool::with(
            net("10.0.1.0/24"),
            Ipv4Addr::new(10, 0, 1, 254),
            Some(net("10.0.1.128/30")),
        )
        .unwrap();
        assert_eq!(p.gateway(), Ipv4Addr::new(10, 0, 1, 254));
        assert_eq!(p.allocate().unwrap(), Ipv4Addr::new(10, 0, 1, 128));
        assert_eq!(p.allocate().unwrap(), Ipv4Addr::new(10, 0, 1, 129));
        p.reserve(Ipv4Addr::new(10, 0, 1, 130)).unwrap();
        assert_eq!(p.allocate().unwrap(), Ipv4Addr::new(10, 0, 1, 131));
        assert!(p.allocate().is_err(), "the range is used up");
        p.reserve(Ipv4Addr::new(10, 0, 1, 1)).unwrap();
        assert!(Pool::with(net("10.0.1.0/24"), Ipv4Addr::new(10, 0, 2, 1), None).is_err());
        assert!(
            Pool::with(
                net("10.0.1.0/24"),
                Ipv4Addr::new(10, 0, 1, 1),
                Some(net("10.0.2.0/25"))
            )
            .is_err()
        );
    }

    proptest! {
        /// Whatever the sequence of allocations and releases, no address is handed out
        /// twice, and none is the network, broadcast or gateway address.
        #[test]
        fn never_hands_out_an_address_twice(ops in proptest::collection::vec(any::<Option<u8>>(), 1..200)) {
            let mut p = Pool::new(net("10.1.0.0/26"));
            let mut live: Vec<Ipv4Addr> = Vec::new();
            for op in ops {
                match op {
                    None => {
                        if let Ok(a) = p.allocate() {
                            prop_assert!(!live.contains(&a));
                            prop_assert!(a != p.gateway() && a != p.subnet().network() && a != p.subnet().broadcast());
                            prop_assert!(p.subnet().contains(&a));
                            live.push(a);
                        } else {
                            prop_assert_eq!(live.len(), 61);
                        }
                    }
                    Some(i) if !live.is_empty() => {
                        let a = live.remove(i as usize % live.len());
                        p.release(a);
                    }
                    Some(_) => {}
                }
                prop_assert_eq!(p.in_use(), live.len());
            }
        }
    }
}
