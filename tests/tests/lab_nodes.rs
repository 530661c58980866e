//! Nodes changing role and leaving, on the lab: promote and demote (Raft membership and
//! certificates follow), the quorum guard of demote and leave, `node rm` and its refusals,
//! a worker leaving and joining again; then losing quorum (writes refused at once with a
//! clear error, reads answered) and `init --force-new-cluster`, after which the old
//! managers come back as workers and nothing runs twice.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use shoal_tests::lab::Lab;
use shoal_tests::{require_kernel, shoal_bin, wait_for};

/// The line of `node ls` (as host `asker` sees it) for hostname `h`.
fn node_line(lab: &Lab, asker: usize, h: &str) -> String {
    let (_, ls, _) = lab.shoal(asker, &["node", "ls"]);
    ls.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(h))
        .unwrap_or("")
        .to_string()
}

fn all_ready(lab: &Lab, asker: usize, n: usize) -> bool {
    let (_, ls, _) = lab.shoal(asker, &["node", "ls"]);
    ls.matches(" Ready ").count() == n
}

#[test]
fn managers_are_promoted_demoted_guarded_and_removed() {
    require_kernel!();
    let lab = Lab::cluster("sn", 3, 1);
    assert!(
        wait_for(Duration::from_secs(20), || all_ready(&lab, 1, 4)),
        "{}",
        lab.shoal(1, &["node", "ls"]).1
    );

    // A remote client: a certificate from a manager, then the control API over any
    // manager's cluster port, from another host (here from the worker's namespace).
    let certs = tempfile::tempdir().unwrap();
    let certs_dir = certs.path().to_str().unwrap().to_string();
    lab.shoal_ok(1, &["client-cert", "--name", "ops", "--out", &certs_dir]);
    let remote = |args: &[&str]| {
        let bin = shoal_bin();
        let target = format!("tcp://{}", lab.ok(&["addr", "2"]).trim());
        let path = format!("SHOAL_CERT_PATH={certs_dir}");
        let mut all = vec![
            "exec",
            "4",
            "env",
            &path,
            bin.to_str().unwrap(),
            "-H",
            &target,
        ];
        all.extend_from_slice(args);
        lab.run(&all)
    };
    let (code, out, err) = remote(&[
        "service",
        "create",
        "-d",
        "--name",
        "remote",
        "busybox:test",
        "sleep",
        "1000",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(lab.shoal_ok(1, &["service", "ls"]).contains("remote"));
    let (code, _, err) = remote(&["container", "ls"]);
    assert_ne!(code, 0);
    assert!(err.contains("each node's own socket"), "{err}");
    let (code, out, err) = remote(&["service", "rm", "remote"]);
    assert_eq!(code, 0, "{out}{err}");

    // Promote the worker: it joins Raft, and serves the control API itself.
    lab.shoal_ok(1, &["node", "promote", "h4"]);
    assert!(
        wait_for(Duration::from_secs(30), || {
            node_line(&lab, 1, "h4").contains("Reachable") && lab.role(4) == "manager"
        }),
        "h4 not a manager: {} / {}",
        node_line(&lab, 1, "h4"),
        lab.role(4)
    );
    lab.shoal_ok(4, &["service", "ls"]);

    // Demote a manager: out of Raft, a worker's certificate, the control API refused.
    lab.shoal_ok(2, &["node", "demote", "h3"]);
    assert!(
        wait_for(Duration::from_secs(30), || {
            lab.role(3) == "worker" && !node_line(&lab, 1, "h3").contains("Reachable")
        }),
        "h3 not a worker: {} / {}",
        node_line(&lab, 1, "h3"),
        lab.role(3)
    );
    let (code, _, err) = lab.shoal(3, &["service", "ls"]);
    assert_ne!(code, 0);
    assert!(err.contains("this node is a worker"), "{err}");

    // Managers h1, h2, h4 with h2 down: taking h4 out would leave one of two reachable,
    // so demote and leave refuse; node rm refuses a manager and a node that is up.
    lab.ok(&["stop", "2"]);
    let leader = lab
        .wait_leader(&[1, 4], Duration::from_secs(15))
        .expect("a leader among h1 and h4");
    std::thread::sleep(Duration::from_secs(3)); // the leader stops counting h2 as heard
    let (code, _, err) = lab.shoal(leader, &["node", "demote", "h4"]);
    assert_ne!(code, 0, "demote without quorum was accepted");
    assert!(err.contains("reachable"), "{err}");
    let (code, _, err) = lab.shoal(4, &["leave"]);
    assert_ne!(code, 0, "leave without quorum was accepted");
    assert!(err.contains("reachable"), "{err}");
    let (code, _, err) = lab.shoal(1, &["node", "rm", "--force", "h4"]);
    assert_ne!(code, 0);
    assert!(err.contains("demote it first"), "{err}");
    let (code, _, err) = lab.shoal(1, &["node", "rm", "h3"]);
    assert_ne!(code, 0);
    assert!(err.contains("is up"), "{err}");
    lab.ok(&["start", "2"]);
    assert!(
        wait_for(Duration::from_secs(30), || {
            node_line(&lab, 1, "h2").contains("Reachable")
        }),
        "{}",
        node_line(&lab, 1, "h2")
    );

    // With h2 back, h4 leaves by itself: out of Raft and off the node list (the leader
    // forgets it; there is nothing left to `node rm`).
    assert!(
        wait_for(Duration::from_secs(15), || lab.shoal(4, &["leave"]).0 == 0),
        "h4 could not leave"
    );
    assert_eq!(lab.role(4), "none");
    assert_eq!(node_line(&lab, 1, "h4"), "");
    let (code, _, err) = lab.shoal(1, &["node", "rm", "h4"]);
    assert_ne!(code, 0);
    assert!(err.contains("h4"), "{err}");

    // A worker removed by force leaves by itself and can join again with a token.
    lab.shoal_ok(
        1,
        &[
            "service",
            "create",
            "--name",
            "w",
            "--mode",
            "global",
            "--stop-grace-period",
            "1s",
            "busybox:test",
            "sleep",
            "1000",
        ],
    );
    assert!(wait_for(Duration::from_secs(20), || {
        lab.shoal(3, &["container", "ls", "-q"]).1.lines().count() == 1
    }));
    lab.shoal_ok(1, &["node", "rm", "--force", "h3"]);
    assert!(
        wait_for(Duration::from_secs(20), || {
            lab.role(3) == "none" && lab.shoal(3, &["container", "ls", "-q"]).1.trim().is_empty()
        }),
        "h3 after node rm: role {}, containers {}",
        lab.role(3),
        lab.shoal(3, &["container", "ls"]).1
    );
    let token = lab.shoal_ok(1, &["join-token", "worker", "-q"]);
    let addr = lab.ok(&["addr", "1"]);
    lab.shoal_ok(3, &["join", "--token", token.trim(), addr.trim()]);
    assert!(
        wait_for(Duration::from_secs(20), || {
            lab.role(3) == "worker"
                && lab.shoal(3, &["container", "ls", "-q"]).1.lines().count() == 1
        }),
        "h3 rejoined: role {}, containers {}",
        lab.role(3),
        lab.shoal(3, &["container", "ls"]).1
    );
}

#[test]
fn quorum_lost_then_a_new_cluster_forced_from_a_survivor() {
    require_kernel!();
    let lab = Lab::cluster("sq", 3, 1);
    assert!(wait_for(Duration::from_secs(20), || all_ready(&lab, 1, 4)));
    lab.shoal_ok(
        1,
        &[
            "service",
            "create",
            "--name",
            "s",
            "--replicas",
            "4",
            "--stop-grace-period",
            "1s",
            "busybox:test",
            "sleep",
            "1000",
        ],
    );

    // Two of three managers down: writes are refused at once and say what to do; reads
    // answer from the survivor's state.
    lab.ok(&["stop", "2"]);
    lab.ok(&["stop", "3"]);
    std::thread::sleep(Duration::from_secs(3));
    let started = std::time::Instant::now();
    let (code, _, err) = lab.shoal(1, &["service", "scale", "s=5", "-d"]);
    assert_ne!(code, 0, "a write without quorum was accepted");
    assert!(err.contains("too few managers"), "{err}");
    assert!(err.contains("--force-new-cluster"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "the refusal took {:?}",
        started.elapsed()
    );
    let ls = lab.shoal_ok(1, &["service", "ls"]);
    assert!(ls.contains(" s "), "{ls}");

    // Recover from h1: its state, a Raft of one; the scale goes through.
    let out = lab.shoal_ok(1, &["init", "--force-new-cluster"]);
    assert!(out.contains("only manager"), "{out}");
    lab.shoal_ok(1, &["service", "scale", "s=5", "-d"]);
    let ls = lab.shoal_ok(1, &["node", "ls"]);
    assert_eq!(ls.matches("Leader").count(), 1, "{ls}");
    assert_eq!(ls.matches("Reachable").count(), 0, "{ls}");

    // The old managers come back together: they must not elect a leader of the old
    // cluster; they hear they are workers, and their stale tasks stop.
    lab.ok(&["start", "2"]);
    lab.ok(&["start", "3"]);
    assert!(
        wait_for(Duration::from_secs(30), || {
            lab.role(2) == "worker" && lab.role(3) == "worker" && all_ready(&lab, 1, 4)
        }),
        "h2 {}, h3 {}: {}",
        lab.role(2),
        lab.role(3),
        lab.shoal(1, &["node", "ls"]).1
    );
    assert!(
        wait_for(Duration::from_secs(30), || lab.containers() == 5),
        "containers: {} (want 5: no slot runs twice)",
        lab.containers()
    );
    lab.shoal_ok(1, &["node", "promote", "h2", "h3"]);
    assert!(
        wait_for(Duration::from_secs(30), || {
            lab.shoal(1, &["node", "ls"]).1.matches("Reachable").count() == 2
        }),
        "{}",
        lab.shoal(1, &["node", "ls"]).1
    );
    lab.shoal_ok(2, &["service", "scale", "s=6", "-d"]);
    assert!(
        wait_for(Duration::from_secs(30), || lab.containers() == 6),
        "containers: {}",
        lab.containers()
    );
}
