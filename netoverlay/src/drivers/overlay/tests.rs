//! The overlay driver against real namespaces: two hosts, a VXLAN segment, peers.
use super::peers::PeerDiff;
use super::sandbox::vxlan_temp_name;
use super::*;
use crate::link::mac_for;
use std::process::Command;
use std::time::{Duration, Instant};

pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The namespaces of one test, removed on drop (with any overlay sandbox under the
/// test's directory), pass or fail.
pub(crate) struct Lab {
    pub(crate) dir: tempfile::TempDir,
    namespaces: Vec<PathBuf>,
}

impl Lab {
    pub(crate) fn new() -> Lab {
        Lab {
            dir: tempfile::tempdir().expect("a temporary directory"),
            namespaces: Vec::new(),
        }
    }

    pub(crate) fn netns(&mut self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        netns::create(&path).expect("creating a test namespace");
        self.namespaces.push(path.clone());
        let _ = run(&path, &["ip", "link", "set", "lo", "up"]);
        path
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let dirs = std::fs::read_dir(self.dir.path()).into_iter().flatten();
        for sub in dirs.flatten().filter(|e| e.path().is_dir()) {
            for entry in std::fs::read_dir(sub.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(SANDBOX_PREFIX)
                {
                    let _ = netns::remove(&entry.path());
                }
            }
        }
        for ns in self.namespaces.iter().rev() {
            let _ = netns::remove(ns);
        }
    }
}

/// Runs a command inside the namespace at `ns`: its stdout, or its stderr as error.
pub(crate) fn run(ns: &Path, cmd: &[&str]) -> Result<String, String> {
    let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
    let out = netns::run_in(ns, move || Command::new(&cmd[0]).args(&cmd[1..]).output())
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub(crate) fn ip(ns: &Path, args: &[&str]) -> String {
    let mut cmd = vec!["ip"];
    cmd.extend_from_slice(args);
    run(ns, &cmd).unwrap_or_else(|e| panic!("ip {args:?}: {e}"))
}

/// Whether a ping from inside `ns` to `to` gets an answer within ten seconds.
pub(crate) fn ping(ns: &Path, to: Ipv4Addr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    let to = to.to_string();
    while Instant::now() < deadline {
        if run(ns, &["busybox", "ping", "-c1", "-W1", &to]).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// A veth pair between two namespaces: `a_name` in `a`, `b_name` in `b`.
pub(crate) async fn wire(a: &Path, a_name: &str, b: &Path, b_name: &str) {
    let h = netns::handle_in(a).expect("netlink in the test namespace");
    h.link()
        .add(LinkVeth::new(a_name, b_name).build())
        .execute()
        .await
        .expect("creating the test veth pair");
    let index = must_index(&h, b_name).await.expect("the test veth");
    move_link(&h, index, b, "moving the test veth")
        .await
        .expect("moving the test veth");
}

pub(crate) async fn links_in(ns: &Path) -> BTreeSet<String> {
    let h = netns::handle_in(ns).expect("netlink in the namespace");
    let links: Vec<_> = h
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .expect("listing links");
    links
        .into_iter()
        .flat_map(|l| l.attributes)
        .filter_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n),
            _ => None,
        })
        .collect()
}

async fn link_attr<T>(
    ns: &Path,
    name: &str,
    pick: impl Fn(LinkAttribute) -> Option<T>,
) -> Option<T> {
    let h = netns::handle_in(ns).expect("netlink in the namespace");
    let mut links = h.link().get().match_name(name.to_string()).execute();
    let link = links.try_next().await.ok().flatten()?;
    link.attributes.into_iter().find_map(pick)
}

async fn mtu_in(ns: &Path, name: &str) -> Option<u32> {
    link_attr(ns, name, |a| match a {
        LinkAttribute::Mtu(m) => Some(m),
        _ => None,
    })
    .await
}

async fn mac_in(ns: &Path, name: &str) -> Option<Vec<u8>> {
    link_attr(ns, name, |a| match a {
        LinkAttribute::Address(m) => Some(m),
        _ => None,
    })
    .await
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn addr(s: &str) -> Ipv4Addr {
    s.parse().expect("a test address")
}

fn config(id: &str, vni: u32, subnet: &str, underlay: &str) -> OverlayConfig {
    let subnet: Ipv4Net = subnet.parse().expect("a test subnet");
    OverlayConfig {
        network_id: id.into(),
        vni,
        gateway: subnet.hosts().next().expect("a gateway"),
        subnet,
        underlay_ip: addr(underlay),
    }
}

/// A node's namespace with a veth pair `u0`/`u1` and `ip`/24 on `u0`.
fn lone_host(ns: &Path, ip: &str) {
    ip_cmd(
        ns,
        &["link", "add", "u0", "type", "veth", "peer", "name", "u1"],
    );
    ip_cmd(ns, &["addr", "add", &format!("{ip}/24"), "dev", "u0"]);
    ip_cmd(ns, &["link", "set", "u0", "up"]);
}

/// Runs `ip` in `ns` for its effect; a failure fails the test.
fn ip_cmd(ns: &Path, args: &[&str]) {
    let _ = ip(ns, args);
}

#[test]
fn macs_and_names() {
    assert_eq!(mac_for(addr("10.99.0.3")), [0x02, 0x42, 10, 99, 0, 3]);
    let (a, b) = veth_names("net1", "ctr1");
    assert!(a.len() <= 15 && b.len() <= 15, "{a} {b}");
    assert_ne!(a, b);
    assert_ne!(veth_names("net1", "ctr2").0, a);
    assert_ne!(veth_names("net2", "ctr1").0, a);
    assert_eq!(veth_names("net1", "ctr1").0, a, "names are stable");
    assert!(vxlan_temp_name(0xff_ffff).len() <= 15);
    assert_eq!(short_id("0123456789abcdef"), "0123456789ab");
}

#[test]
fn peer_diff_removes_adds_and_moves() {
    let local = addr("192.168.1.1");
    let old: BTreeMap<_, _> = [
        (addr("10.0.0.5"), addr("192.168.1.2")),
        (addr("10.0.0.6"), addr("192.168.1.3")),
        (addr("10.0.0.8"), addr("192.168.1.2")),
    ]
    .into();
    let peer = |ip: &str, node: &str| Peer {
        ip: addr(ip),
        node_ip: addr(node),
    };
    let new = [
        peer("10.0.0.6", "192.168.1.4"),
        peer("10.0.0.7", "192.168.1.2"),
        peer("10.0.0.8", "192.168.1.2"),
        peer("10.0.0.9", "192.168.1.1"),
    ];
    assert_eq!(
        diff_peers(&old, &new, local),
        PeerDiff {
            remove: vec![addr("10.0.0.5")],
            set: vec![
                (addr("10.0.0.6"), addr("192.168.1.4")),
                (addr("10.0.0.7"), addr("192.168.1.2")),
            ],
        }
    );
    assert_eq!(
        diff_peers(&BTreeMap::new(), &[], local),
        PeerDiff {
            remove: vec![],
            set: vec![]
        }
    );
}

#[test]
fn bad_configs_are_refused_with_the_reason() {
    let cfg = config("net1", 4242, "10.99.0.0/24", "192.168.1.1");
    let err = |cfg: &OverlayConfig, ip: &str, ifname: &str| {
        check(cfg, addr(ip), ifname)
            .expect_err("refused")
            .to_string()
    };
    assert!(check(&cfg, addr("10.99.0.2"), "eth1").is_ok());
    assert!(err(&cfg, "10.98.0.2", "eth1").contains("not a host address of subnet"));
    assert!(err(&cfg, "10.99.0.1", "eth1").contains("is the gateway"));
    assert!(err(&cfg, "10.99.0.2", "a-very-long-ifname").contains("1 to 15"));
    let e = err(
        &OverlayConfig {
            vni: 0,
            ..cfg.clone()
        },
        "10.99.0.2",
        "eth1",
    );
    assert!(e.contains("VNI 0") && e.contains("out of range"), "{e}");
}

#[test]
fn state_survives_a_round_trip() {
    let mut state = State::default();
    state.networks.insert(
        "n".into(),
        Network {
            vni: 7,
            subnet: "10.1.0.0/24".parse().expect("subnet"),
            gateway: addr("10.1.0.1"),
            underlay_ip: addr("192.168.0.1"),
            mtu: 1450,
            endpoints: [(
                "e".to_string(),
                Endpoint {
                    ip: addr("10.1.0.2"),
                    sandbox_veth: "ov1".into(),
                },
            )]
            .into(),
            peers: [(addr("10.1.0.3"), addr("192.168.0.2"))].into(),
        },
    );
    let raw = serde_json::to_vec(&state).expect("serializing");
    let back: State = serde_json::from_slice(&raw).expect("parsing");
    assert_eq!(back.networks["n"].peers, state.networks["n"].peers);
    assert_eq!(back.networks["n"].endpoints["e"].ip, addr("10.1.0.2"));
}

#[tokio::test]
async fn two_nodes_reach_each_other_over_vxlan() {
    if !is_root() {
        eprintln!("SKIPPED: overlay networks need root");
        return;
    }
    let mut lab = Lab::new();
    let (ha, hb) = (lab.netns("host-a"), lab.netns("host-b"));
    let (ca, cb) = (lab.netns("ctr-a"), lab.netns("ctr-b"));
    // The underlay: a cable between the two nodes, with an MTU of its own.
    wire(&ha, "u0", &hb, "u1").await;
    for (ns, ip, dev) in [
        (&ha, "192.168.77.1/24", "u0"),
        (&hb, "192.168.77.2/24", "u1"),
    ] {
        ip_cmd(ns, &["addr", "add", ip, "dev", dev]);
        ip_cmd(ns, &["link", "set", dev, "mtu", "1400", "up"]);
    }
    let a = Overlays::open_in(&lab.dir.path().join("state-a"), Some(&ha))
        .await
        .expect("opening node A");
    let b = Overlays::open_in(&lab.dir.path().join("state-b"), Some(&hb))
        .await
        .expect("opening node B");
    let id = "0123456789abcdef-two-nodes";
    let net_a = config(id, 4242, "10.99.0.0/24", "192.168.77.1");
    let net_b = config(id, 4242, "10.99.0.0/24", "192.168.77.2");
    let (ip_a, ip_b, ip_host) = (addr("10.99.0.2"), addr("10.99.0.3"), addr("10.99.0.254"));
    a.attach(&net_a, "ctr-a", &ca, "eth1", ip_a)
        .await
        .expect("attaching on A");
    b.attach(&net_b, "ctr-b", &cb, "eth1", ip_b)
        .await
        .expect("attaching on B");
    a.attach_host(&net_a, "host-a", "ovhost0", ip_host)
        .await
        .expect("attaching A's host");
    let on = |ip, node: &OverlayConfig| Peer {
        ip,
        node_ip: node.underlay_ip,
    };
    // Every endpoint of the network; each node skips its own.
    let all = [on(ip_a, &net_a), on(ip_host, &net_a), on(ip_b, &net_b)];
    a.set_peers(id, &all).await.expect("peers on A");
    b.set_peers(id, &all).await.expect("peers on B");

    assert!(ping(&ca, ip_b), "A's container reaches B's");
    assert!(ping(&cb, ip_a), "B's container reaches A's");
    assert!(ping(&ha, ip_b), "A's host end reaches B's container");

    assert_eq!(
        a.sandbox_path(id),
        lab.dir.path().join("state-a/ov-0123456789ab")
    );
    assert_eq!(a.networks().await, vec![id.to_string()]);
    let sandbox = a.sandbox_path(id);
    for (ns, link) in [
        (&ca, "eth1"),
        (&ha, "ovhost0"),
        (&sandbox, "vxlan0"),
        (&sandbox, "br0"),
    ] {
        assert_eq!(mtu_in(ns, link).await, Some(1350), "MTU of {link}");
    }
    assert_eq!(mac_in(&ca, "eth1").await, Some(mac_for(ip_a).to_vec()));
    assert_eq!(ip(&ca, &["route", "show", "default"]).trim(), "");
    // The bridge and the tunnel device stay out of the host's sight.
    assert_eq!(links_in(&ha).await, set(&["lo", "u0", "ovhost0"]));

    for (node, ep) in [(&a, "ctr-a"), (&a, "host-a"), (&b, "ctr-b")] {
        node.detach(id, ep).await.expect("detaching");
    }
    a.detach(id, "ctr-a")
        .await
        .expect("detaching twice is fine");
    a.detach("no-such-net", "x")
        .await
        .expect("unknown ids are fine");
    assert!(!a.sandbox_path(id).exists() && !b.sandbox_path(id).exists());
    assert!(a.networks().await.is_empty());
    assert_eq!(links_in(&ha).await, set(&["lo", "u0"]));
    assert_eq!(links_in(&hb).await, set(&["lo", "u1"]));
    assert_eq!(links_in(&ca).await, set(&["lo"]));
    assert_eq!(links_in(&cb).await, set(&["lo"]));
}

#[tokio::test]
async fn peers_follow_the_desired_set() {
    if !is_root() {
        eprintln!("SKIPPED: overlay networks need root");
        return;
    }
    let mut lab = Lab::new();
    let (h, c) = (lab.netns("host"), lab.netns("ctr"));
    lone_host(&h, "192.168.78.1");
    let ov = Overlays::open_in(&lab.dir.path().join("state"), Some(&h))
        .await
        .expect("opening");
    let id = "peers-net";
    let cfg = config(id, 4343, "10.98.0.0/24", "192.168.78.1");
    ov.attach(&cfg, "ep", &c, "eth1", addr("10.98.0.2"))
        .await
        .expect("attaching");
    let peer = |ip: &str, node: &str| Peer {
        ip: addr(ip),
        node_ip: addr(node),
    };
    let sandbox = ov.sandbox_path(id);
    let tables = || {
        let fdb = run(&sandbox, &["bridge", "fdb", "show", "dev", "vxlan0"]).expect("fdb");
        let neigh = ip(&sandbox, &["neigh", "show", "dev", "vxlan0"]);
        (fdb, neigh)
    };
    let fdb_to = |fdb: &str, ip: &str| -> Vec<String> {
        let mac = mac_for(addr(ip)).map(|b| format!("{b:02x}")).join(":");
        fdb.lines()
            .filter(|l| l.starts_with(&mac))
            .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "dst").nth(1))
            .map(str::to_string)
            .collect()
    };
    let neighbour = |neigh: &str, ip: &str| {
        let mac = mac_for(addr(ip)).map(|b| format!("{b:02x}")).join(":");
        neigh.lines().any(|l| {
            l.starts_with(&format!("{ip} ")) && l.contains(&mac) && l.contains("PERMANENT")
        })
    };

    ov.set_peers(
        id,
        &[
            peer("10.98.0.5", "192.168.78.2"),
            peer("10.98.0.6", "192.168.78.3"),
            peer("10.98.0.2", "192.168.78.1"),
        ],
    )
    .await
    .expect("first peers");
    let (fdb, neigh) = tables();
    assert_eq!(fdb_to(&fdb, "10.98.0.5"), ["192.168.78.2"], "{fdb}");
    assert_eq!(fdb_to(&fdb, "10.98.0.6"), ["192.168.78.3"], "{fdb}");
    assert!(
        fdb_to(&fdb, "10.98.0.2").is_empty(),
        "own endpoints are skipped: {fdb}"
    );
    assert!(
        neighbour(&neigh, "10.98.0.5") && neighbour(&neigh, "10.98.0.6"),
        "{neigh}"
    );
    assert!(!neigh.contains("10.98.0.2 "), "{neigh}");

    ov.set_peers(
        id,
        &[
            peer("10.98.0.6", "192.168.78.4"),
            peer("10.98.0.7", "192.168.78.2"),
        ],
    )
    .await
    .expect("second peers");
    let (fdb, neigh) = tables();
    assert!(fdb_to(&fdb, "10.98.0.5").is_empty(), "gone peer: {fdb}");
    assert_eq!(
        fdb_to(&fdb, "10.98.0.6"),
        ["192.168.78.4"],
        "moved peer: {fdb}"
    );
    assert_eq!(
        fdb_to(&fdb, "10.98.0.7"),
        ["192.168.78.2"],
        "new peer: {fdb}"
    );
    assert!(!neigh.contains("10.98.0.5 "), "{neigh}");
    assert!(
        neighbour(&neigh, "10.98.0.6") && neighbour(&neigh, "10.98.0.7"),
        "{neigh}"
    );

    ov.set_peers("no-such-net", &[peer("10.0.0.1", "192.168.78.9")])
        .await
        .expect("an unknown network is ignored");
    assert_eq!(ov.networks().await, vec![id.to_string()]);
    ov.remove_all().await.expect("removing all");
    assert!(!sandbox.exists());
    assert_eq!(links_in(&h).await, set(&["lo", "u0", "u1"]));
    assert_eq!(links_in(&c).await, set(&["lo"]));
}

#[tokio::test]
async fn restore_keeps_live_endpoints_and_drops_the_rest() {
    if !is_root() {
        eprintln!("SKIPPED: overlay networks need root");
        return;
    }
    let mut lab = Lab::new();
    let (h, c1, c2) = (lab.netns("host"), lab.netns("ctr1"), lab.netns("ctr2"));
    lone_host(&h, "192.168.79.1");
    let state = lab.dir.path().join("state");
    let (n1, n2) = (
        config("restore-one", 4444, "10.97.1.0/24", "192.168.79.1"),
        config("restore-two", 4445, "10.97.2.0/24", "192.168.79.1"),
    );
    {
        let ov = Overlays::open_in(&state, Some(&h)).await.expect("opening");
        ov.attach(&n1, "ep1", &c1, "eth1", addr("10.97.1.2"))
            .await
            .expect("attaching ep1");
        ov.attach(&n2, "ep2", &c2, "eth1", addr("10.97.2.2"))
            .await
            .expect("attaching ep2");
        let e = ov
            .attach(&n2, "ep2", &c2, "eth2", addr("10.97.2.3"))
            .await
            .expect_err("attached twice")
            .to_string();
        assert!(e.contains("already attached"), "{e}");
    }
    // A sandbox of no network, as a crash could leave one.
    let leftover = state.join("ov-leftover");
    netns::create(&leftover).expect("a leftover sandbox");

    let ov = Overlays::open_in(&state, Some(&h))
        .await
        .expect("opening again");
    assert_eq!(
        ov.networks().await,
        vec![n1.network_id.clone(), n2.network_id.clone()]
    );
    ov.restore(&["ep1".to_string()]).await.expect("restoring");
    assert_eq!(ov.networks().await, vec![n1.network_id.clone()]);
    assert!(ov.sandbox_path(&n1.network_id).exists());
    assert!(!ov.sandbox_path(&n2.network_id).exists());
    assert!(!leftover.exists());
    assert_eq!(links_in(&c1).await, set(&["lo", "eth1"]));
    assert_eq!(links_in(&c2).await, set(&["lo"]));
    // The kept network still works: a second endpoint joins its sandbox.
    ov.attach(&n1, "ep3", &c2, "eth1", addr("10.97.1.3"))
        .await
        .expect("attaching after restore");
    assert!(ping(&c2, addr("10.97.1.2")));

    ov.remove_all().await.expect("removing all");
    assert!(ov.networks().await.is_empty());
    assert!(!ov.sandbox_path(&n1.network_id).exists());
    assert_eq!(links_in(&h).await, set(&["lo", "u0", "u1"]));
    assert_eq!(links_in(&c1).await, set(&["lo"]));
}

#[tokio::test]
async fn a_vni_in_use_is_named() {
    if !is_root() {
        eprintln!("SKIPPED: overlay networks need root");
        return;
    }
    let mut lab = Lab::new();
    let (h, c) = (lab.netns("host"), lab.netns("ctr"));
    lone_host(&h, "192.168.80.1");
    let ov = Overlays::open_in(&lab.dir.path().join("state"), Some(&h))
        .await
        .expect("opening");
    let first = config("vni-first", 4546, "10.96.1.0/24", "192.168.80.1");
    ov.attach(&first, "ep1", &c, "eth1", addr("10.96.1.2"))
        .await
        .expect("attaching");
    let same = config("vni-second", 4546, "10.96.2.0/24", "192.168.80.1");
    let e = ov
        .attach(&same, "ep2", &c, "eth2", addr("10.96.2.2"))
        .await
        .expect_err("a VNI twice")
        .to_string();
    assert!(e.contains("VNI 4546") && e.contains("vni-first"), "{e}");

    ip_cmd(
        &h,
        &[
            "link", "add", "vxother", "type", "vxlan", "id", "4547", "dstport", "4789",
        ],
    );
    let theirs = config("vni-third", 4547, "10.96.3.0/24", "192.168.80.1");
    let e = ov
        .attach(&theirs, "ep3", &c, "eth3", addr("10.96.3.2"))
        .await
        .expect_err("a VNI held by another device")
        .to_string();
    assert!(e.contains("VNI 4547") && e.contains("link vxother"), "{e}");
    assert!(
        !ov.sandbox_path("vni-third").exists(),
        "a failed first attach leaves no sandbox"
    );
    assert_eq!(links_in(&h).await, set(&["lo", "u0", "u1", "vxother"]));
    assert_eq!(links_in(&c).await, set(&["lo", "eth1"]));
    ov.remove_all().await.expect("removing all");
}
