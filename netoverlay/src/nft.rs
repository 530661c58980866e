//! shoal's nftables state, through the `nft` binary: one table of our own (`inet shoal` by
//! default) with NAT for the bridge subnet and a DNAT rule per published port. Nothing
//! outside that table is ever touched; the ruleset is never flushed.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;

use shoal_api::types::PortProtocol;

/// Errors of nftables handling.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// `nft` is not installed.
    #[error("nft not found: install nftables (apt-get install nftables)")]
    Missing,
    /// `nft` refused a script.
    #[error("nft refused the rules: {0}")]
    Refused(String),
}

fn nft(script: &str) -> Result<String, NftError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|_| NftError::Missing)?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().map_err(|_| NftError::Missing)?;
    if !out.status.success() {
        return Err(NftError::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn list(args: &[&str]) -> Result<String, NftError> {
    let out = Command::new("nft")
        .args(args)
        .output()
        .map_err(|_| NftError::Missing)?;
    if !out.status.success() {
        return Err(NftError::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The table of one bridge network.
#[derive(Debug, Clone)]
pub struct Table {
    /// Table name in the inet family.
    pub name: String,
    /// The bridge.
    pub bridge: String,
}

impl Table {
    /// Whether the table exists.
    pub fn exists(&self) -> bool {
        list(&["list", "table", "inet", &self.name]).is_ok()
    }

    /// Creates the table with NAT and forwarding for `subnet` behind `bridge` (again if
    /// it exists: the chains are made idempotently).
    pub fn create(&self, subnet: Ipv4Net) -> Result<(), NftError> {
        let (t, b) = (&self.name, &self.bridge);
        nft(&format!(
            "table inet {t} {{\n\
             chain postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
             chain prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n\
             chain output {{ type nat hook output priority -100; policy accept; }}\n\
             chain forward {{ type filter hook forward priority filter; policy accept; }}\n\
             }}\n\
             flush chain inet {t} postrouting\n\
             flush chain inet {t} forward\n\
             add rule inet {t} postrouting ip saddr {subnet} oifname != \"{b}\" masquerade\n\
             add rule inet {t} forward iifname \"{b}\" accept\n\
             add rule inet {t} forward oifname \"{b}\" accept\n"
        ))
        .map(|_| ())
    }

    /// Deletes the table, if it exists.
    pub fn delete(&self) -> Result<(), NftError> {
        if !self.exists() {
            return Ok(());
        }
        nft(&format!("delete table inet {}\n", self.name)).map(|_| ())
    }

    /// Adds the DNAT rules of a published port, tagged with `tag`.
    pub fn publish(
        &self,
        tag: &str,
        host_ip: Option<Ipv4Addr>,
        host_port: u16,
        target: Ipv4Addr,
        port: u16,
        protocol: PortProtocol,
    ) -> Result<(), NftError> {
        let t = &self.name;
        let proto = protocol.as_str();
        let daddr = match host_ip {
            Some(ip) if !ip.is_unspecified() => format!("ip daddr {ip}"),
            _ => "fib daddr type local".to_string(),
        };
        // Traffic from outside, and from the host to one of its own (non-loopback)
        // addresses. Loopback is served by the userland proxy: the kernel will not route
        // 127.0.0.0/8 to another interface.
        nft(&format!(
            "add rule inet {t} prerouting {daddr} {proto} dport {host_port} dnat ip to {target}:{port} comment \"{tag}\"\n\
             add rule inet {t} output ip daddr != 127.0.0.0/8 {daddr} {proto} dport {host_port} dnat ip to {target}:{port} comment \"{tag}\"\n"
        ))
        .map(|_| ())
    }

    /// Deletes every rule tagged with `tag`.
    pub fn unpublish(&self, tag: &str) -> Result<(), NftError> {
        if !self.exists() {
            return Ok(());
        }
        let mut script = String::new();
        for chain in ["prerouting", "output"] {
            let text = list(&["-a", "list", "chain", "inet", &self.name, chain])?;
            for line in text.lines() {
                if line.contains(&format!("comment \"{tag}\""))
                    && let Some(handle) = line
                        .rsplit("# handle ")
                        .next()
                        .and_then(|h| h.trim().parse::<u64>().ok())
                {
                    script.push_str(&format!(
                        "delete rule inet {} {chain} handle {handle}\n",
                        self.name
                    ));
                }
            }
        }
        if script.is_empty() {
            return Ok(());
        }
        nft(&script).map(|_| ())
    }
}
