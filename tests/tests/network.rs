//! End-to-end behaviour of the default bridge network: an address from the node's subnet,
//! a published port reached from the host, egress through the gateway, and nothing left
//! once the last container goes. One test, so daemons never share the bridge concurrently.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::time::Duration;

use shoal_tests::{Daemon, require_kernel, wait_for};

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// The names of this host's links.
fn link_names() -> std::collections::BTreeSet<String> {
    links()
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

fn links() -> String {
    String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["-o", "link", "show"])
            .output()
            .expect("ip link")
            .stdout,
    )
    .into_owned()
}

fn nft_tables() -> String {
    String::from_utf8_lossy(
        &std::process::Command::new("nft")
            .args(["list", "tables"])
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default(),
    )
    .into_owned()
}

#[test]
fn bridge_publish_egress_and_cleanup() {
    require_kernel!();
    // Judge leftovers against what the host had before, not against an ideal host.
    let links_before = link_names();
    let tables_before = nft_tables();
    for rt in ["builtin", "runc"] {
        let d = Daemon::start(rt);
        d.import_busybox("busybox:test");
        // A web server with a published port, reached from the host on loopback.
        d.shoal(&[
            "container",
            "run",
            "-d",
            "--name",
            "web",
            "-p",
            "18089:80",
            "busybox:test",
            "sh",
            "-c",
            "mkdir -p /www && echo hello-from-web > /www/index.html && httpd -f -p 80 -h /www",
        ])
        .ok();
        assert!(
            wait_for(Duration::from_secs(10), || http_get(18089, "/index.html")
                .is_some_and(|b| b.contains("hello-from-web"))),
            "{rt}: published port answers; daemon log:\n{}",
            d.log()
        );
        // The container has an address of its own and a default route via the gateway.
        let r = d
            .shoal(&["container", "exec", "web", "ip", "-4", "route"])
            .ok();
        let gw = r
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("default via "))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("{rt}: no default route: {}", r.stdout))
            .to_string();
        d.shoal(&[
            "container",
            "exec",
            "web",
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            &gw,
        ])
        .ok();
        let inspect = d.shoal(&["container", "inspect", "web"]).ok();
        let v: serde_json::Value = serde_json::from_str(&inspect.stdout).unwrap();
        assert!(!v[0]["ip_address"].as_str().unwrap_or_default().is_empty());
        // The published port survives a kill -9 of the daemon and comes back with it.
        // (Loopback clients go through the daemon's proxy, so they wait for the restart.)
        let mut d = d;
        d.kill9();
        d.restart();
        assert!(
            wait_for(Duration::from_secs(10), || http_get(18089, "/index.html")
                .is_some_and(|b| b.contains("hello-from-web"))),
            "{rt}: the restarted daemon serves the published port again"
        );
        // A second publish of the same host port is refused with a clear error, and leaves nothing.
        let r = d.shoal(&[
            "container",
            "run",
            "-d",
            "--name",
            "web2",
            "-p",
            "18089:80",
            "busybox:test",
            "sleep",
            "100",
        ]);
        assert_ne!(r.code, 0);
        assert!(
            r.stderr.contains("18089"),
            "{rt}: error names the port: {}",
            r.stderr
        );
        d.shoal(&["container", "rm", "-f", "web2"]);
        // After the last container: no veth, no bridge, no nftables table of ours.
        d.shoal(&["container", "rm", "-f", "web"]).ok();
        assert!(
            wait_for(Duration::from_secs(5), || link_names()
                .is_subset(&links_before)),
            "{rt}: links left: {:?}",
            link_names().difference(&links_before).collect::<Vec<_>>()
        );
        assert_eq!(nft_tables(), tables_before, "{rt}: nft tables left");
        assert!(http_get(18089, "/").is_none(), "{rt}: port closed after rm");
        assert!(d.leftover_mounts().is_empty());
    }
}
