//! Names, VIPs and the mesh's rules from hand-made views; nft takes the scripts.

use std::net::Ipv4Addr;

use shoal_api::types::{
    EndpointMode, NetEndpoint, NetService, Network, NetworkSpec, PortConfig, PortProtocol,
    PublishMode,
};

use super::resolver::ContainerResolver;
use super::*;
use crate::dns::Resolver;

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
        s.contains("ip daddr 10.0.1.2 numgen random mod 2 vmap { 0 : jump s0b0, 1 : jump s0b1 }"),
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
