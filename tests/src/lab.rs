//! The multi-host lab (`deploy/lab/shoal-lab`) driven from tests: hosts, each a network
//! namespace with its own daemon. One lab at a time in a test process (they share the
//! underlay's addresses, and several debug-build clusters at once on two cores would time
//! out their own elections); a lab is taken down when its guard drops, and a failing test
//! prints each host's view and the end of its daemon's log.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use std::time::Duration;

use crate::{shoal_bin, wait_for};

static BUSY: AtomicBool = AtomicBool::new(false);

/// A test's turn with the lab: the next waits until it ends.
struct Turn;

impl Turn {
    fn take() -> Turn {
        while BUSY
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            std::thread::sleep(Duration::from_millis(200));
        }
        Turn
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        BUSY.store(false, Ordering::Release);
    }
}

/// A lab of hosts; `down` when dropped.
pub struct Lab {
    name: String,
    hosts: usize,
    _turn: Turn,
}

impl Lab {
    /// `shoal-lab cluster MANAGERS WORKERS`, with busybox imported as `busybox:test` on
    /// every host.
    pub fn cluster(tag: &str, managers: usize, workers: usize) -> Lab {
        let turn = Turn::take();
        let lab = Lab {
            name: format!("{tag}{}", std::process::id() % 100_000),
            hosts: managers + workers,
            _turn: turn,
        };
        lab.ok(&["cluster", &managers.to_string(), &workers.to_string()]);
        let tar = crate::busybox_tarball()
            .to_str()
            .unwrap_or_default()
            .to_string();
        for i in 1..=lab.hosts {
            lab.shoal_ok(i, &["image", "import", &tar, "busybox:test"]);
        }
        lab
    }

    /// The host whose daemon leads, as host `asker` sees it.
    pub fn leader(&self, asker: usize) -> Option<usize> {
        let (_, ls, _) = self.shoal(asker, &["node", "ls"]);
        (1..=self.hosts).find(|i| {
            ls.lines()
                .any(|l| l.contains("Leader") && l.contains(&format!(" h{i} ")))
        })
    }

    /// Waits until some manager among `managers` names a leader; returns its host.
    pub fn wait_leader(&self, managers: &[usize], timeout: Duration) -> Option<usize> {
        let mut found = None;
        wait_for(timeout, || {
            found = managers.iter().find_map(|m| self.leader(*m));
            found.is_some()
        });
        found
    }

    /// Host `i`'s role as its own `shoal info` says ("manager" or "worker").
    pub fn role(&self, i: usize) -> String {
        let (_, out, _) = self.shoal(i, &["info", "--format", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        v["role"].as_str().unwrap_or("").to_string()
    }

    /// Containers running on every host.
    pub fn containers(&self) -> usize {
        (1..=self.hosts)
            .map(|i| self.shoal(i, &["container", "ls", "-q"]).1.lines().count())
            .sum()
    }

    fn script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/lab/shoal-lab")
    }

    /// `shoal-lab ARGS`: exit code, stdout, stderr.
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
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

    /// `shoal-lab ARGS`, which must succeed.
    pub fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "shoal-lab {args:?}: {out}{err}");
        out
    }

    /// `shoal ARGS` on host `i`.
    pub fn shoal(&self, i: usize, args: &[&str]) -> (i32, String, String) {
        let bin = shoal_bin();
        let host = i.to_string();
        let mut all = vec!["exec", host.as_str(), bin.to_str().unwrap()];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// `shoal ARGS` on host `i`, which must succeed.
    pub fn shoal_ok(&self, i: usize, args: &[&str]) -> String {
        let (code, out, err) = self.shoal(i, args);
        assert_eq!(code, 0, "host {i}: shoal {args:?}: {out}{err}");
        out
    }

    /// The ids of the running containers of `service`'s tasks on host `i`.
    pub fn task_containers(&self, i: usize, service: &str) -> Vec<String> {
        let (_, out, _) = self.shoal(i, &["container", "ls", "--format", "json"]);
        let list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
        list.iter()
            .filter(|c| {
                c["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(&format!("{service}.")))
            })
            .filter_map(|c| c["id"].as_str().map(String::from))
            .collect()
    }

    /// Host `i`'s state: its data and run roots, its daemon's log, and `plugins`, its
    /// daemon's volume plugin directory.
    pub fn host_dir(&self, i: usize) -> PathBuf {
        PathBuf::from(format!("/tmp/shoal-lab-{}/h{i}", self.name))
    }

    /// The lab's name (its state is under /tmp/shoal-lab-NAME).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The IP of host `i` on the lab's underlay.
    pub fn ip(&self, i: usize) -> String {
        let addr = self.ok(&["addr", &i.to_string()]);
        addr.trim()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string()
    }

    /// Running tasks of `service` per node hostname.
    pub fn spread(&self, i: usize, service: &str) -> std::collections::BTreeMap<String, usize> {
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
            for i in 1..=self.hosts {
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
        if std::thread::panicking() && std::env::var_os("SHOAL_LAB_KEEP").is_some() {
            eprintln!("SHOAL_LAB_KEEP: lab {} left up for a look", self.name);
            return;
        }
        let (code, out, err) = self.run(&["down"]);
        if code != 0 {
            eprintln!("shoal-lab down: {out}{err}");
        }
    }
}
