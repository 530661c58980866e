//! The multi-host lab (`deploy/lab/shoal-lab`): five hosts, each a network namespace on a
//! private underlay with its own daemon; three managers and two workers. Placement by
//! hostname, a worker cut off the underlay (its tasks run elsewhere, and stop on it when it
//! is healed), the leader killed (writes accepted again), every host restarted in turn.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_tests::{busybox_tarball, require_kernel, shoal_bin, wait_for};

struct Lab {
    name: String,
}

impl Lab {
    fn script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/lab/shoal-lab")
    }

    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new("bash")
            .arg(Self::script())
            .args(args)
            .env("SHOAL_LAB", &self.name)
            .env("SHOAL_LAB_NET", "10.78.0")
            .env("SHOAL_BIN", shoal_bin())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "shoal-lab {args:?}: {out}{err}");
        out
    }

    /// `shoal ARGS` on host `i`.
    fn shoal(&self, i: usize, args: &[&str]) -> (i32, String, String) {
        let bin = shoal_bin();
        let host = i.to_string();
        let mut all = vec!["exec", host.as_str(), bin.to_str().unwrap()];
        all.extend_from_slice(args);
        self.run(&all)
    }

    fn shoal_ok(&self, i: usize, args: &[&str]) -> String {
        let (code, out, err) = self.shoal(i, args);
        assert_eq!(code, 0, "host {i}: shoal {args:?}: {out}{err}");
        out
    }

    /// Running tasks of `service` per node hostname.
    fn spread(&self, i: usize, service: &str) -> std::collections::BTreeMap<String, usize> {
        let (_, out, _) = self.shoal(i, &["service", "ps", service, "--format", "json"]);
        let (_, nodes, _) = self.shoal(i, &["node", "ls", "--format", "json"]);
        let tasks: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let nodes: serde_json::Value = serde_json::from_str(&nodes).unwrap_or_default();
        let name = |id: &str| {
            nodes
                .as_array()
                .and_then(|a| a.iter().find(|n| n["id"] == id))
                .and_then(|n| n["hostname"].as_str())
                .unwrap_or("?")
                .to_string()
        };
        let mut out = std::collections::BTreeMap::new();
        for t in tasks.as_array().cloned().unwrap_or_default() {
            if t["status"]["state"] == "running" && t["desired_state"] == "running" {
                *out.entry(name(t["node_id"].as_str().unwrap_or("")))
                    .or_insert(0) += 1;
            }
        }
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What CI shows of a failure is this: the cluster's view and each daemon's last
            // words.
            eprintln!("--- lab status:\n{}", self.run(&["status"]).1);
            for i in 1..=5 {
                let (_, ls, err) = self.shoal(i, &["node", "ls"]);
                eprintln!("--- host {i}: node ls:\n{ls}{err}");
                let log = format!("/tmp/shoal-lab-{}/h{i}/daemon.log", self.name);
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(25).collect();
                eprintln!("--- host {i}: {log} (last lines):");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        let (code, out, err) = self.run(&["down"]);
        if code != 0 {
            eprintln!("shoal-lab down: {out}{err}");
        }
    }
}

#[test]
fn five_hosts_three_managers_survive_partitions_and_kills() {
    require_kernel!();
    let lab = Lab {
        name: format!("sl{}", std::process::id() % 100_000),
    };
    lab.ok(&["cluster", "3", "2"]);
    let tar = busybox_tarball().to_str().unwrap().to_string();
    for i in 1..=5 {
        lab.shoal_ok(i, &["image", "import", &tar, "busybox:test"]);
    }
    assert!(
        wait_for(Duration::from_secs(15), || {
            let (_, ls, _) = lab.shoal(1, &["node", "ls"]);
            ls.matches("Ready").count() == 5
        }),
        "{}",
        lab.shoal(1, &["node", "ls"]).1
    );
    let ls = lab.shoal_ok(2, &["node", "ls"]);
    assert_eq!(ls.matches("Leader").count(), 1, "{ls}");
    assert_eq!(ls.matches("Reachable").count(), 2, "{ls}");
    for h in ["h1", "h2", "h3", "h4", "h5"] {
        assert!(ls.contains(h), "{ls}");
    }

    // Spread over the five hosts; placement by hostname.
    lab.shoal_ok(
        3,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "10",
            "--stop-grace-period",
            "1s",
            "busybox:test",
            "sleep",
            "1000",
        ],
    );
    let spread = lab.spread(1, "web");
    assert_eq!(spread.len(), 5, "{spread:?}");
    assert!(spread.values().all(|n| *n == 2), "{spread:?}");
    lab.shoal_ok(
        1,
        &[
            "service",
            "create",
            "--name",
            "pinned",
            "--replicas",
            "2",
            "--constraint",
            "node.hostname==h4",
            "--stop-grace-period",
            "1s",
            "busybox:test",
            "sleep",
            "1000",
        ],
    );
    assert_eq!(lab.spread(1, "pinned").get("h4"), Some(&2));

    // A worker cut off the underlay: its tasks run elsewhere within seconds; healed, its
    // stale containers stop.
    lab.ok(&["cut", "5"]);
    let cut = Instant::now();
    assert!(
        wait_for(Duration::from_secs(20), || {
            let s = lab.spread(1, "web");
            !s.contains_key("h5") && s.values().sum::<usize>() == 10
        }),
        "{:?}",
        lab.spread(1, "web")
    );
    eprintln!(
        "worker cut off → its tasks running elsewhere in {:?}",
        cut.elapsed()
    );
    assert_eq!(
        lab.shoal_ok(5, &["container", "ls", "-q"]).lines().count(),
        2
    );
    lab.ok(&["heal", "5"]);
    assert!(
        wait_for(Duration::from_secs(20), || {
            lab.shoal(5, &["container", "ls", "-q"]).1.trim().is_empty()
        }),
        "stale containers on h5: {}",
        lab.shoal(5, &["container", "ls"]).1
    );

    // The leader killed: writes through another manager work again soon.
    let leader = (1..=3)
        .find(|i| {
            let (_, ls, _) = lab.shoal(*i, &["node", "ls"]);
            ls.lines()
                .any(|l| l.contains("Leader") && l.contains(&format!(" h{i} ")))
        })
        .expect("a leader among hosts 1-3");
    let other = if leader == 1 { 2 } else { 1 };
    let killed = Instant::now();
    lab.ok(&["kill", &leader.to_string()]);
    assert!(wait_for(Duration::from_secs(15), || {
        lab.shoal(other, &["service", "scale", "web=11", "-d"]).0 == 0
    }));
    eprintln!(
        "leader killed → first accepted write after {:?}",
        killed.elapsed()
    );
    lab.ok(&["start", &leader.to_string()]);

    // Every host restarted in turn: the services stay converged.
    for i in 1..=5 {
        lab.ok(&["stop", &i.to_string()]);
        lab.ok(&["start", &i.to_string()]);
    }
    assert!(
        wait_for(Duration::from_secs(30), || {
            lab.spread(other, "web").values().sum::<usize>() == 11
                && lab.spread(other, "pinned").get("h4") == Some(&2)
        }),
        "web {:?}, pinned {:?}",
        lab.spread(other, "web"),
        lab.spread(other, "pinned")
    );
    // A host whose restart outlasted the heartbeat misses had its tasks replaced; its stale
    // containers stop once it is back (grace 1 s), so the count settles rather than being
    // exact at the moment the services converge.
    let containers = || -> usize {
        (1..=5)
            .map(|i| lab.shoal_ok(i, &["container", "ls", "-q"]).lines().count())
            .sum()
    };
    assert!(
        wait_for(Duration::from_secs(20), || containers() == 13),
        "containers: {} (want 13: no slot runs twice)",
        containers()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(containers(), 13, "no slot runs twice");
    assert_eq!(lab.spread(other, "web").values().sum::<usize>(), 11);
}
