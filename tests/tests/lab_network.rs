//! Networking on the lab (one manager, two workers, each a host of its own): services on
//! an overlay reach each other by name across hosts, the VIP spreads requests over every
//! replica, dnsrr names every task, a scale-down leaves DNS and the VIP at once, the
//! routing mesh answers on every host, an internal network has no way out, a macvlan
//! task answers another host on the segment; and once everything is removed, no
//! namespace, link, route, neighbour entry or nftables rule is left on any host.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use shoal_tests::lab::Lab;
use shoal_tests::{require_kernel, wait_for};

const HTTPD: &[&str] = &["busybox:test", "httpd", "-f", "-p", "80", "-h", "/"];

/// `shoal service create` on host 1 with `flags`, then `cmd` (image and command).
fn service(lab: &Lab, flags: &[&str], cmd: &[&str]) {
    let mut args = vec!["service", "create"];
    args.extend_from_slice(flags);
    args.extend_from_slice(cmd);
    lab.shoal_ok(1, &args);
}

/// Runs `cmd` in container `c` on host `i`.
fn exec(lab: &Lab, i: usize, c: &str, cmd: &[&str]) -> (i32, String, String) {
    let mut args = vec!["container", "exec", c];
    args.extend_from_slice(cmd);
    lab.shoal(i, &args)
}

/// The hostnames (container ids) that answer `url` in `n` requests from container `c`.
/// (busybox's own `wget -T` crashes in this busybox build: `timeout` bounds it instead.)
fn answers(lab: &Lab, c: &str, url: &str, n: usize) -> BTreeSet<String> {
    (0..n)
        .filter_map(|_| {
            let (code, out, _) = exec(lab, 1, c, &["timeout", "3", "wget", "-q", "-O", "-", url]);
            (code == 0).then(|| out.trim().to_string())
        })
        .collect()
}

/// The addresses `name` resolves to in container `c` (through 127.0.0.11).
fn resolve(lab: &Lab, c: &str, name: &str) -> BTreeSet<String> {
    let (_, out, _) = exec(lab, 1, c, &["nslookup", name, "127.0.0.11"]);
    out.lines()
        .skip_while(|l| !l.starts_with("Name:"))
        .filter_map(|l| l.strip_prefix("Address:"))
        .map(|a| a.trim().to_string())
        .collect()
}

#[test]
fn services_talk_by_name_across_hosts_and_nothing_is_left() {
    require_kernel!();
    let lab = Lab::cluster("nw", 1, 2);
    lab.shoal_ok(1, &["network", "create", "-d", "overlay", "front"]);
    let (code, _, err) = lab.shoal(1, &["network", "create", "front"]);
    assert_ne!(code, 0);
    assert!(err.contains("exists already"), "{err}");
    let ls = lab.shoal_ok(1, &["network", "ls"]);
    assert!(ls.contains("front") && ls.contains("ingress"), "{ls}");

    // web on every host, a client on host 1.
    service(
        &lab,
        &[
            "--name",
            "web",
            "--replicas",
            "3",
            "--replicas-max-per-node",
            "1",
            "--network",
            "front",
        ],
        HTTPD,
    );
    service(
        &lab,
        &[
            "--name",
            "client",
            "--constraint",
            "node.hostname==h1",
            "--network",
            "front",
        ],
        &["busybox:test", "sleep", "100000"],
    );
    let c = lab
        .task_containers(1, "client")
        .pop()
        .expect("client runs on h1");

    // By name, over the overlay: the VIP spreads requests over every replica (two of
    // them on other hosts).
    let mut seen = BTreeSet::new();
    assert!(
        wait_for(Duration::from_secs(20), || {
            seen.extend(answers(&lab, &c, "http://web/etc/hostname", 6));
            seen.len() == 3
        }),
        "the VIP reached {seen:?}"
    );
    assert_eq!(resolve(&lab, &c, "web").len(), 1, "vip mode: one address");
    assert_eq!(resolve(&lab, &c, "tasks.web").len(), 3);
    let (code, out, _) = exec(&lab, 1, &c, &["ip", "-o", "link", "show", "eth1"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("mtu 1450"),
        "overlay MTU is the underlay's - 50: {out}"
    );
    // Names the cluster does not know go to the host's resolvers (none answer in the lab,
    // but the question is not answered as if it were ours).
    assert!(resolve(&lab, &c, "web.invalid").is_empty());

    // dnsrr: the name gives every task.
    service(
        &lab,
        &[
            "--name",
            "rr",
            "--replicas",
            "2",
            "--endpoint-mode",
            "dnsrr",
            "--network",
            "front",
        ],
        HTTPD,
    );
    assert!(wait_for(Duration::from_secs(10), || {
        resolve(&lab, &c, "rr").len() == 2
    }));
    assert_eq!(resolve(&lab, &c, "rr"), resolve(&lab, &c, "tasks.rr"));

    // A task with a health check gets traffic once it is healthy, not before.
    service(
        &lab,
        &[
            "--name",
            "hc",
            "--constraint",
            "node.hostname==h1",
            "--network",
            "front",
            "--health-cmd",
            "test -f /tmp/ready",
            "--health-interval",
            "200ms",
            "--health-start-period",
            "60s",
        ],
        &["busybox:test", "sleep", "100000"],
    );
    let hc = lab.task_containers(1, "hc").pop().expect("hc runs on h1");
    std::thread::sleep(Duration::from_secs(1));
    assert!(resolve(&lab, &c, "tasks.hc").is_empty(), "not healthy yet");
    exec(&lab, 1, &hc, &["touch", "/tmp/ready"]);
    assert!(
        wait_for(Duration::from_secs(5), || resolve(&lab, &c, "tasks.hc")
            .len()
            == 1),
        "healthy now, but not in DNS"
    );
    lab.shoal_ok(1, &["service", "rm", "hc"]);

    // Scaled down: DNS and the VIP follow at once (measured in tests/perf/overlay.sh).
    lab.shoal_ok(1, &["service", "scale", "-d", "web=1"]);
    let scaled = Instant::now();
    assert!(
        wait_for(Duration::from_secs(5), || resolve(&lab, &c, "tasks.web")
            .len()
            == 1),
        "tasks.web: {:?}",
        resolve(&lab, &c, "tasks.web")
    );
    eprintln!(
        "tasks.web followed the scale-down in {:?}",
        scaled.elapsed()
    );
    assert_eq!(answers(&lab, &c, "http://web/etc/hostname", 6).len(), 1);

    // The routing mesh: every host answers on the published port.
    service(
        &lab,
        &["--name", "pub", "--publish", "published=8080,target=80"],
        HTTPD,
    );
    for i in 1..=3 {
        let url = format!("http://{}:8080/etc/hostname", lab.ip(i));
        let from = if i == 3 { "1" } else { "3" };
        assert!(
            wait_for(Duration::from_secs(10), || {
                lab.run(&[
                    "exec", from, "busybox", "timeout", "3", "busybox", "wget", "-q", "-O", "-",
                    &url,
                ])
                .0 == 0
            }),
            "host {i} does not answer on the ingress port"
        );
    }

    // An ingress port without a number gets one from 30000-32767, the same everywhere.
    service(&lab, &["--name", "auto", "--publish", "target=80"], HTTPD);
    let (_, out, _) = lab.shoal(1, &["service", "inspect", "auto"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let v = if v.is_array() { v[0].clone() } else { v };
    let port = v["ports"][0]["published"].as_u64().unwrap_or(0);
    assert!((30000..=32767).contains(&port), "{out}");
    let url = format!("http://{}:{port}/etc/hostname", lab.ip(3));
    assert!(
        wait_for(Duration::from_secs(10), || {
            lab.run(&[
                "exec", "1", "busybox", "timeout", "3", "busybox", "wget", "-q", "-O", "-", &url,
            ])
            .0 == 0
        }),
        "the allocated ingress port {port} does not answer"
    );
    lab.shoal_ok(1, &["service", "rm", "auto"]);

    // No overlay subnet is routed in a host's own namespace (the mesh has one of its own).
    let routes = lab.run(&["exec", "2", "ip", "route"]).1;
    assert!(!routes.contains("10.0."), "host 2 routes: {routes}");
    // ... on loopback too (a relay: the kernel does not route 127/8 to other interfaces).
    let (code, out, err) = lab.run(&[
        "exec",
        "2",
        "busybox",
        "timeout",
        "3",
        "busybox",
        "wget",
        "-q",
        "-O",
        "-",
        "http://127.0.0.1:8080/etc/hostname",
    ]);
    assert_eq!(code, 0, "loopback ingress port: {out}{err}");

    // Host mode: only the task's node answers, and the task sees the client's address.
    service(
        &lab,
        &[
            "--name",
            "hm",
            "--constraint",
            "node.hostname==h1",
            "--publish",
            "published=8081,target=80,mode=host",
        ],
        &["busybox:test", "httpd", "-f", "-vv", "-p", "80", "-h", "/"],
    );
    let url = format!("http://{}:8081/etc/hostname", lab.ip(1));
    assert!(wait_for(Duration::from_secs(10), || {
        lab.run(&[
            "exec", "2", "busybox", "timeout", "3", "busybox", "wget", "-q", "-O", "-", &url,
        ])
        .0 == 0
    }));
    let hm = lab.task_containers(1, "hm").pop().unwrap();
    // httpd -vv logs each request's client on stderr.
    let (_, out, err) = lab.shoal(1, &["container", "logs", &hm]);
    let logs = format!("{out}{err}");
    assert!(
        logs.contains(&lab.ip(2)),
        "the client's address is kept: {logs}"
    );
    let url = format!("http://{}:8081/etc/hostname", lab.ip(2));
    let (code, _, _) = lab.run(&[
        "exec", "3", "busybox", "timeout", "3", "busybox", "wget", "-q", "-O", "-", &url,
    ]);
    assert_ne!(code, 0, "host mode: another node does not answer");

    // An internal network: no route out.
    lab.shoal_ok(1, &["network", "create", "--internal", "back"]);
    service(
        &lab,
        &[
            "--name",
            "iso",
            "--constraint",
            "node.hostname==h1",
            "--network",
            "back",
        ],
        &["busybox:test", "sleep", "100000"],
    );
    let iso = lab.task_containers(1, "iso").pop().expect("iso runs on h1");
    let (_, routes, _) = exec(&lab, 1, &iso, &["ip", "route"]);
    assert!(!routes.contains("default"), "{routes}");
    let url = format!("http://{}:8080/etc/hostname", lab.ip(2));
    let (code, _, _) = exec(
        &lab,
        1,
        &iso,
        &["timeout", "3", "wget", "-q", "-O", "-", &url],
    );
    assert_ne!(code, 0, "an internal network reached another host");

    // macvlan on the hosts' underlay segment: another host reaches the task directly.
    let net = lab.ip(1).rsplit_once('.').unwrap().0.to_string();
    lab.shoal_ok(
        1,
        &[
            "network",
            "create",
            "-d",
            "macvlan",
            "-o",
            "parent=eth0",
            "--subnet",
            &format!("{net}.0/24"),
            "--gateway",
            &format!("{net}.1"),
            "--ip-range",
            &format!("{net}.128/25"),
            "lan",
        ],
    );
    service(
        &lab,
        &[
            "--name",
            "mv",
            "--endpoint-mode",
            "dnsrr",
            "--constraint",
            "node.hostname==h1",
            "--network",
            "lan",
        ],
        HTTPD,
    );
    let mv = lab.task_containers(1, "mv").pop().expect("mv runs on h1");
    let (_, addr, _) = exec(&lab, 1, &mv, &["ip", "-o", "-4", "addr", "show", "eth1"]);
    let ip = addr
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap()
        .to_string();
    assert!(ip.starts_with(&format!("{net}.1")), "{addr}");
    let url = format!("http://{ip}/etc/hostname");
    let (code, out, err) = lab.run(&[
        "exec", "2", "busybox", "timeout", "3", "busybox", "wget", "-q", "-O", "-", &url,
    ]);
    assert_eq!(code, 0, "host 2 cannot reach the macvlan task: {out}{err}");

    // A bridge network: on one node, its tasks reach each other by name.
    lab.shoal_ok(1, &["network", "create", "-d", "bridge", "local"]);
    service(
        &lab,
        &[
            "--name",
            "pair",
            "--replicas",
            "2",
            "--constraint",
            "node.hostname==h2",
            "--network",
            "local",
        ],
        HTTPD,
    );
    assert!(wait_for(Duration::from_secs(20), || lab
        .task_containers(2, "pair")
        .len()
        == 2));
    let one = lab.task_containers(2, "pair").pop().unwrap();
    let reached = wait_for(Duration::from_secs(10), || {
        let (code, out, _) = lab.shoal(
            2,
            &[
                "container",
                "exec",
                &one,
                "timeout",
                "3",
                "wget",
                "-q",
                "-O",
                "-",
                "http://tasks.pair/etc/hostname",
            ],
        );
        code == 0 && !out.trim().is_empty()
    });
    assert!(
        reached,
        "tasks on a bridge network did not reach each other"
    );

    // The daemon restarts under live containers: their names still resolve.
    lab.ok(&["stop", "1"]);
    lab.ok(&["start", "1"]);
    assert!(
        wait_for(Duration::from_secs(30), || resolve(&lab, &c, "tasks.web")
            .len()
            == 1),
        "after a daemon restart: {:?}",
        resolve(&lab, &c, "tasks.web")
    );
    assert_eq!(answers(&lab, &c, "http://web/etc/hostname", 3).len(), 1);

    // Attachable: a standalone container on a worker joins, and reaches a service by
    // name; a network that is not attachable refuses it.
    lab.shoal_ok(1, &["network", "create", "--attachable", "shared"]);
    service(
        &lab,
        &[
            "--name",
            "echo",
            "--constraint",
            "node.hostname==h2",
            "--network",
            "shared",
        ],
        HTTPD,
    );
    let (code, _, err) = lab.shoal(
        3,
        &[
            "container",
            "run",
            "-d",
            "--network",
            "front",
            "busybox:test",
            "sleep",
            "60",
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("not attachable"), "{err}");
    let sa = lab.shoal_ok(
        3,
        &[
            "container",
            "run",
            "-d",
            "--name",
            "sa",
            "--network",
            "shared",
            "busybox:test",
            "sleep",
            "100000",
        ],
    );
    let sa = sa.trim().to_string();
    let reached = wait_for(Duration::from_secs(10), || {
        let (code, _, _) = lab.shoal(
            3,
            &[
                "container",
                "exec",
                &sa,
                "timeout",
                "3",
                "wget",
                "-q",
                "-O",
                "-",
                "http://echo/etc/hostname",
            ],
        );
        code == 0
    });
    assert!(
        reached,
        "the standalone container did not reach service echo"
    );
    // ... and the service's tasks find it by its name.
    let echo = lab
        .task_containers(2, "echo")
        .pop()
        .expect("echo runs on h2");
    let (_, out, _) = lab.shoal(
        2,
        &["container", "exec", &echo, "nslookup", "sa", "127.0.0.11"],
    );
    assert!(out.contains("Name:") && out.contains("10.0."), "{out}");
    let (code, _, err) = lab.shoal(1, &["network", "rm", "shared"]);
    assert_ne!(code, 0);
    assert!(err.contains("container sa"), "{err}");
    lab.shoal_ok(3, &["container", "rm", "-f", &sa]);
    lab.shoal_ok(1, &["service", "rm", "echo"]);
    assert!(
        wait_for(Duration::from_secs(20), || lab
            .shoal(1, &["network", "rm", "shared"])
            .0
            == 0),
        "{}",
        lab.shoal(1, &["network", "rm", "shared"]).2
    );

    // In use: refused, naming the users. Then everything goes.
    let (code, _, err) = lab.shoal(1, &["network", "rm", "front"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("service web") && err.contains("service client"),
        "{err}"
    );
    for s in ["web", "client", "rr", "pub", "iso", "mv", "pair", "hm"] {
        lab.shoal_ok(1, &["service", "rm", s]);
    }
    assert!(
        wait_for(Duration::from_secs(30), || {
            lab.shoal(1, &["network", "rm", "front", "back", "lan", "local"])
                .0
                == 0
                || lab.shoal(1, &["network", "ls", "-q"]).1.trim() == "ingress"
        }),
        "{}",
        lab.shoal(1, &["network", "rm", "front", "back", "lan", "local"])
            .2
    );
    assert!(wait_for(Duration::from_secs(30), || lab.containers() == 0));
    for i in 1..=3 {
        let host = i.to_string();
        let run = |cmd: &[&str]| {
            let mut all = vec!["exec", host.as_str()];
            all.extend_from_slice(cmd);
            lab.run(&all).1
        };
        let clean = || {
            let links = run(&["ip", "-o", "link"]);
            let names: Vec<&str> = links
                .lines()
                .filter_map(|l| l.split(": ").nth(1))
                .map(|n| n.split('@').next().unwrap_or(n))
                .collect();
            names == ["lo", "eth0"] && run(&["nft", "list", "tables"]).trim().is_empty()
        };
        assert!(
            wait_for(Duration::from_secs(15), clean),
            "host {i}: links {} tables {}",
            run(&["ip", "-o", "link"]),
            run(&["nft", "list", "tables"])
        );
        let routes = run(&["ip", "route"]);
        assert_eq!(routes.lines().count(), 1, "host {i}: {routes}");
        let neigh = run(&["ip", "neigh"]);
        assert!(!neigh.contains("10.0."), "host {i}: {neigh}");
        let dir = format!("/tmp/shoal-lab-{}/h{i}/run/net/cluster", lab.name());
        let left: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("ov-") || n == "mesh")
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "host {i}: overlay namespaces left: {left:?}"
        );
    }
}
