//! What clients, nodes and managers all need to know of a cluster, without the managers'
//! internals: the cluster port's address syntax, join tokens, managers' Raft ids, the name
//! managers' certificates carry, and the pool network subnets come from.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// The default cluster port.
pub const DEFAULT_PORT: u16 = 4242;

/// The name every manager's certificate carries: callers of the cluster port check it.
pub const MANAGER_NAME: &str = "shoal-manager";

/// Input that names no cluster address, token or pool; the message says what and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ClusterInputError(pub String);

/// Parses `--listen-addr`/`--advertise-addr` (named `flag` in errors): `IP`, `IP:PORT` or
/// `:PORT` (the port defaults to 4242, the address to every interface).
pub fn parse_addr(flag: &str, value: &str) -> Result<SocketAddr, ClusterInputError> {
    let bad = || {
        ClusterInputError(format!(
            "invalid {flag} \"{value}\": give IP, IP:PORT or :PORT (for example 192.168.1.10:4242)"
        ))
    };
    let value = value.trim();
    if let Some(port) = value.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| bad())?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    if let Ok(a) = value.parse::<SocketAddr>() {
        return Ok(a);
    }
    let ip: IpAddr = value
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| bad())?;
    Ok(SocketAddr::new(ip, DEFAULT_PORT))
}

/// A manager's Raft id: from its node id, so that it is the same on every manager and
/// across restarts without being handed out.
pub fn raft_id(node_id: &str) -> u64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(node_id.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    (u64::from_be_bytes(b) >> 1).max(1)
}

/// What a join token holds: the fingerprint of the CA a joining node may trust, and the
/// secret that proves it may join (one for workers, one for managers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The CA's fingerprint (SHA-256 of its certificate, hex).
    pub fingerprint: String,
    /// The secret (hex).
    pub secret: String,
}

const TOKEN_PREFIX: &str = "SHOAL1-";

impl JoinToken {
    /// Parses a token as `shoal join-token` prints it.
    pub fn parse(s: &str) -> Result<JoinToken, ClusterInputError> {
        let fix = "copy the whole token that \"shoal join-token worker\" (or manager) prints on a manager";
        let rest = s.trim().strip_prefix(TOKEN_PREFIX).ok_or_else(|| {
            ClusterInputError(format!(
                "this is not a shoal join token (they start with {TOKEN_PREFIX}): {fix}"
            ))
        })?;
        let (fingerprint, secret) = rest
            .split_once('-')
            .ok_or_else(|| ClusterInputError(format!("the join token is cut short: {fix}")))?;
        let hex_of =
            |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex_of(fingerprint, 64) || !hex_of(secret, 32) {
            return Err(ClusterInputError(format!(
                "the join token is damaged: {fix}"
            )));
        }
        Ok(JoinToken {
            fingerprint: fingerprint.to_ascii_lowercase(),
            secret: secret.to_ascii_lowercase(),
        })
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{TOKEN_PREFIX}{}-{}", self.fingerprint, self.secret)
    }
}

/// Where network subnets come from when a network names none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddrPool {
    /// The pools, in order.
    pub pools: Vec<Ipv4Net>,
    /// The prefix length of each network's subnet.
    pub mask_len: u8,
}

impl Default for AddrPool {
    fn default() -> Self {
        AddrPool {
            pools: vec![Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 8).expect("8 is a prefix length")],
            mask_len: 24,
        }
    }
}

impl AddrPool {
    /// Checks pools given to `shoal init --default-addr-pool` (and its mask length; 0:
    /// the default, 24).
    pub fn parse(pools: &[String], mask_len: u32) -> Result<AddrPool, ClusterInputError> {
        let bad = |m: String| Err(ClusterInputError(m));
        let mut out = AddrPool::default();
        if !pools.is_empty() {
            out.pools = pools
                .iter()
                .map(|p| {
                    p.parse::<Ipv4Net>().map(|n| n.trunc()).map_err(|_| {
                        ClusterInputError(format!(
                            "--default-addr-pool {p}: not an IPv4 CIDR; give one as 10.20.0.0/16"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        if mask_len != 0 {
            out.mask_len = u8::try_from(mask_len).unwrap_or(u8::MAX);
        }
        if out.mask_len > 29 {
            return bad(format!(
                "--default-addr-pool-mask-length {}: at most 29 (a subnet needs room for a gateway and tasks)",
                out.mask_len
            ));
        }
        for p in &out.pools {
            if p.prefix_len() > out.mask_len {
                return bad(format!(
                    "--default-addr-pool {p} is smaller than one /{} subnet: give a larger pool or a longer --default-addr-pool-mask-length",
                    out.mask_len
                ));
            }
        }
        for (i, a) in out.pools.iter().enumerate() {
            if let Some(b) = out.pools[i + 1..].iter().find(|b| overlaps(a, b)) {
                return bad(format!(
                    "--default-addr-pool {a} overlaps {b}: give pools that do not overlap"
                ));
            }
        }
        Ok(out)
    }
}

/// Whether two subnets share an address.
pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_the_default_port_and_bad_ones_say_how() {
        let ok = |v: &str| parse_addr("--listen-addr", v).expect("an address");
        assert_eq!(ok("10.0.0.1"), "10.0.0.1:4242".parse().expect("literal"));
        assert_eq!(ok(":5000"), "0.0.0.0:5000".parse().expect("literal"));
        assert_eq!(ok("[::1]:7"), "[::1]:7".parse().expect("literal"));
        let e = parse_addr("--advertise-addr", "eth0:x")
            .expect_err("not an address")
            .to_string();
        assert!(
            e.contains("--advertise-addr") && e.contains("IP:PORT"),
            "{e}"
        );
    }

    #[test]
    fn tokens_round_trip_and_bad_ones_say_why() {
        let fp = "ab".repeat(32);
        let t = JoinToken {
            fingerprint: fp.clone(),
            secret: "cd".repeat(16),
        };
        assert_eq!(JoinToken::parse(&t.to_string()), Ok(t.clone()));
        assert_eq!(JoinToken::parse(&format!("  {t}\n")), Ok(t));
        for (bad, says) in [
            ("SWMTKN-1-abc", "not a shoal join token"),
            ("SHOAL1-abcdef", "cut short"),
            (&format!("SHOAL1-{fp}-xyz")[..], "damaged"),
        ] {
            let e = JoinToken::parse(bad).expect_err("bad token").to_string();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(e.contains("shoal join-token"), "{e}");
        }
    }

    #[test]
    fn raft_ids_are_stable_and_never_zero() {
        assert_eq!(raft_id("node-1"), raft_id("node-1"));
        assert_ne!(raft_id("node-1"), raft_id("node-2"));
        assert!(raft_id("") > 0);
    }

    #[test]
    fn pools_are_checked() {
        assert_eq!(AddrPool::default().pools[0].to_string(), "10.0.0.0/8");
        let p = |pools: &[&str], len| {
            AddrPool::parse(
                &pools.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                len,
            )
        };
        assert!(p(&["10.0.0.0/8"], 30).is_err());
        assert!(p(&["10.0.0.0/25"], 24).is_err());
        assert!(p(&["fish"], 24).is_err());
        let e = p(&["10.0.0.0/8", "10.1.0.0/16"], 24).expect_err("overlap");
        assert!(e.to_string().contains("overlaps"), "{e}");
        assert_eq!(p(&["172.40.0.0/16"], 26).expect("fine").mask_len, 26);
    }
}
