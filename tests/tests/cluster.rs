//! Real daemons on this machine joined over the cluster port (mutual TLS on loopback).
//! A worker joins with a token, tasks spread over both nodes, the worker is killed and its
//! tasks run on the manager within seconds, and when it comes back its stale containers
//! are stopped; bad tokens and a foreign CA are refused with clear errors. Three managers
//! form a Raft cluster; a follower forwards writes; the leader is killed and another
//! accepts writes within a second or so; the old leader comes back as a follower.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use shoal_tests::{Daemon, require_kernel, wait_for};

fn info(d: &Daemon) -> serde_json::Value {
    serde_json::from_str(&d.shoal(&["info", "--format", "json"]).ok().stdout).unwrap()
}

/// Running tasks of `service` per node id.
fn running_per_node(d: &Daemon, service: &str) -> std::collections::BTreeMap<String, usize> {
    let r = d.shoal(&["service", "ps", service, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap_or_default();
    let mut out = std::collections::BTreeMap::new();
    for t in v.as_array().cloned().unwrap_or_default() {
        if t["status"]["state"] == "running" && t["desired_state"] == "running" {
            *out.entry(t["node_id"].as_str().unwrap_or("").to_string())
                .or_insert(0) += 1;
        }
    }
    out
}

/// One test, so that the daemons of one part never share the bridge with the other's.
#[test]
fn workers_and_managers_join_and_survive_failures() {
    require_kernel!();
    a_worker_joins_runs_tasks_is_lost_and_comes_back();
    three_managers_fail_over();
}

fn a_worker_joins_runs_tasks_is_lost_and_comes_back() {
    let manager = Daemon::start("builtin");
    let mut worker = Daemon::start("builtin");
    manager.import_busybox("busybox:test");
    worker.import_busybox("busybox:test");
    manager.shoal(&["init"]).ok();
    let m = info(&manager);
    let addr = m["advertise_addr"].as_str().unwrap().to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{m}");
    assert_eq!(m["ca_fingerprint"].as_str().unwrap().len(), 64, "{m}");
    let token = manager
        .shoal(&["join-token", "worker", "-q"])
        .ok()
        .stdout
        .trim()
        .to_string();

    // Bad tokens: refused before anything changes, saying why and what to do.
    let r = worker.shoal(&["join", "--token", "SWMTKN-1-nope", &addr]);
    assert_eq!(r.code, 64, "{r:?}");
    assert!(r.stderr.contains("not a shoal join token"), "{r:?}");
    let (fp, secret) = token["SHOAL1-".len()..].split_once('-').unwrap();
    let wrong_secret = format!("SHOAL1-{fp}-{}", "0".repeat(secret.len()));
    let r = worker.shoal(&["join", "--token", &wrong_secret, &addr]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("not valid"), "{r:?}");
    let foreign = format!("SHOAL1-{}-{secret}", "ab".repeat(32));
    let r = worker.shoal(&["join", "--token", &foreign, &addr]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("belongs to another cluster"), "{r:?}");
    assert_eq!(info(&worker)["cluster"], "inactive");

    // The right token: the worker joins and is ready.
    let r = worker.shoal(&["join", "--token", &token, &addr]).ok();
    assert!(r.stdout.contains("as a worker"), "{r:?}");
    let w = info(&worker);
    assert_eq!(w["role"], "worker", "{w}");
    let worker_id = w["node_id"].as_str().unwrap().to_string();
    let manager_id = m["node_id"].as_str().unwrap().to_string();
    assert!(wait_for(Duration::from_secs(10), || {
        manager
            .shoal(&["node", "ls"])
            .stdout
            .lines()
            .filter(|l| l.contains("Ready"))
            .count()
            == 2
    }));
    let r = worker.shoal(&["join", "--token", &token, &addr]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("already part of a cluster"), "{r:?}");

    // Tasks spread over both nodes.
    manager
        .shoal(&[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "4",
            "--stop-grace-period",
            "1s",
            "busybox:test",
            "sleep",
            "1000",
        ])
        .ok();
    let spread = running_per_node(&manager, "web");
    assert_eq!(spread.get(&manager_id), Some(&2), "{spread:?}");
    assert_eq!(spread.get(&worker_id), Some(&2), "{spread:?}");
    assert_eq!(
        worker
            .shoal(&["container", "ls", "-q"])
            .stdout
            .lines()
            .count(),
        2
    );

    // The worker dies: within a few seconds its tasks run on the manager.
    worker.kill9();
    let lost = Instant::now();
    assert!(
        wait_for(Duration::from_secs(15), || {
            running_per_node(&manager, "web").get(&manager_id) == Some(&4)
        }),
        "tasks not moved: {:?}",
        running_per_node(&manager, "web")
    );
    eprintln!(
        "worker lost → its tasks running on the manager in {:?}",
        lost.elapsed()
    );
    let ls = manager.shoal(&["node", "ls"]).stdout;
    assert!(ls.contains("Down (heartbeat failure"), "{ls}");

    // It comes back: it reconnects on its own, and its stale containers stop.
    worker.restart();
    assert!(
        wait_for(Duration::from_secs(15), || {
            worker
                .shoal(&["container", "ls", "-q"])
                .stdout
                .trim()
                .is_empty()
        }),
        "stale containers still run: {}",
        worker.shoal(&["container", "ls"]).stdout
    );
    assert!(wait_for(Duration::from_secs(10), || {
        !manager.shoal(&["node", "ls"]).stdout.contains("Down")
    }));
    assert_eq!(running_per_node(&manager, "web").values().sum::<usize>(), 4);
    manager.shoal(&["service", "rm", "web"]).ok();
}

fn join(d: &Daemon, token: &str, addr: &str) {
    let r = d.shoal(&["join", "--token", token, addr]).ok();
    assert!(r.stdout.contains("joined the cluster"), "{r:?}");
}

fn leader_of(ds: &[&Daemon]) -> Option<usize> {
    ds.iter().position(|d| {
        let r = d.shoal(&["node", "ls"]);
        let me = info(d)["node_id"].as_str().unwrap_or("").to_string();
        r.stdout
            .lines()
            .any(|l| l.contains("Leader") && !me.is_empty() && l.starts_with(&me[..12]))
    })
}

fn three_managers_fail_over() {
    let mut ds: Vec<Daemon> = (0..3).map(|_| Daemon::start("builtin")).collect();
    for d in &ds {
        d.import_busybox("busybox:test");
    }
    ds[0].shoal(&["init"]).ok();
    let addr = info(&ds[0])["advertise_addr"].as_str().unwrap().to_string();
    let token = ds[0]
        .shoal(&["join-token", "manager", "-q"])
        .ok()
        .stdout
        .trim()
        .to_string();
    join(&ds[1], &token, &addr);
    join(&ds[2], &token, &addr);
    for d in &ds {
        let i = info(d);
        assert_eq!(i["role"], "manager", "{i}");
        assert_eq!(i["managers"], 3, "{i}");
    }
    assert!(
        wait_for(Duration::from_secs(10), || {
            let ls = ds[1].shoal(&["node", "ls"]).stdout;
            ls.matches("Leader").count() == 1 && ls.matches("Reachable").count() == 2
        }),
        "{}",
        ds[1].shoal(&["node", "ls"]).stdout
    );

    // A follower takes the write and forwards it to the leader.
    let leader = {
        let refs: Vec<&Daemon> = ds.iter().collect();
        leader_of(&refs).expect("a leader")
    };
    let follower = (leader + 1) % 3;
    ds[follower]
        .shoal(&[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "6",
            "--stop-grace-period",
            "1s",
            "busybox:test",
            "sleep",
            "1000",
        ])
        .ok();
    let spread = running_per_node(&ds[follower], "web");
    assert_eq!(spread.len(), 3, "{spread:?}");
    assert!(spread.values().all(|n| *n == 2), "{spread:?}");

    // The leader dies: another accepts writes soon, and its tasks run elsewhere.
    ds[leader].kill9();
    let killed = Instant::now();
    let survivor = &ds[follower];
    assert!(wait_for(Duration::from_secs(15), || {
        survivor.shoal(&["service", "scale", "web=7", "-d"]).code == 0
    }));
    eprintln!(
        "leader killed → first accepted write after {:?}",
        killed.elapsed()
    );
    assert!(
        wait_for(Duration::from_secs(20), || {
            let spread = running_per_node(survivor, "web");
            spread.values().sum::<usize>() == 7 && spread.len() == 2
        }),
        "not converged on the survivors: {:?}",
        running_per_node(survivor, "web")
    );

    // The old leader comes back as a follower; its stale containers stop.
    ds[leader].restart();
    assert!(
        wait_for(Duration::from_secs(20), || {
            ds[leader]
                .shoal(&["container", "ls", "-q"])
                .stdout
                .trim()
                .is_empty()
        }),
        "stale containers on the old leader: {}",
        ds[leader].shoal(&["container", "ls"]).stdout
    );
    assert!(wait_for(Duration::from_secs(10), || {
        let ls = ds[leader].shoal(&["node", "ls"]).stdout;
        ls.matches("Leader").count() == 1 && ls.matches("Reachable").count() == 2
    }));
    ds[follower].shoal(&["service", "rm", "web"]).ok();
}
