//! Services on a one-node cluster with the real binary: create, scale, restart of the
//! daemon without duplicates, removal; and `shoal dev` from start to a running replica.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use shoal_tests::{Daemon, require_kernel, shoal_bin, wait_for};

fn running_tasks(d: &Daemon, service: &str) -> usize {
    let r = d.shoal(&["service", "ps", service, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap_or_default();
    v.as_array()
        .map(|a| {
            a.iter()
                .filter(|t| t["status"]["state"] == "running" && t["desired_state"] == "running")
                .count()
        })
        .unwrap_or(0)
}

fn running_containers(d: &Daemon) -> usize {
    d.shoal(&["container", "ls", "-q"]).stdout.lines().count()
}

/// One test, so the two daemons never share the bridge network at the same time.
#[test]
fn services_and_dev() {
    require_kernel!();
    services_converge_scale_survive_a_restart_and_go();
    dev_runs_a_demo_cluster_and_cleans_up();
}

fn services_converge_scale_survive_a_restart_and_go() {
    let mut d = Daemon::start("builtin");
    d.import_busybox("busybox:test");
    let r = d.shoal(&["service", "ls"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("shoal init"), "{r:?}");
    d.shoal(&["init"]).ok();
    let r = d.shoal(&["init"]);
    assert!(r.stderr.contains("already part of a cluster"), "{r:?}");
    d.shoal(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "busybox:test",
        "sleep",
        "1000",
    ])
    .ok();
    assert_eq!(running_tasks(&d, "web"), 3);
    assert_eq!(running_containers(&d), 3);
    d.shoal(&["service", "scale", "web=1"]).ok();
    assert!(
        wait_for(Duration::from_secs(30), || running_containers(&d) == 1),
        "scaled down"
    );
    // A restarted daemon adopts the running task instead of starting it again.
    d.kill9();
    d.restart();
    assert!(wait_for(Duration::from_secs(10), || running_tasks(
        &d, "web"
    ) == 1));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(running_containers(&d), 1, "no duplicate after the restart");
    // A task that exits is replaced.
    let id = d
        .shoal(&["container", "ls", "-q"])
        .stdout
        .trim()
        .to_string();
    d.shoal(&["container", "kill", &id]).ok();
    assert!(
        wait_for(Duration::from_secs(20), || running_containers(&d) == 1
            && d.shoal(&["container", "ls", "-q"]).stdout.trim() != id),
        "replaced after its exit"
    );
    // Service logs gather the tasks' output.
    d.shoal(&[
        "service",
        "create",
        "--name",
        "talk",
        "--replicas",
        "2",
        "busybox:test",
        "sh",
        "-c",
        "echo said-$(hostname); sleep 1000",
    ])
    .ok();
    assert!(wait_for(Duration::from_secs(10), || {
        d.shoal(&["service", "logs", "talk"])
            .stdout
            .matches("said-")
            .count()
            == 2
    }));
    let r = d
        .shoal(&[
            "node",
            "inspect",
            &std::fs::read_to_string(d.data_root.join("node-id")).unwrap(),
        ])
        .ok();
    assert!(r.stdout.contains("\"manager\": true"), "{r:?}");
    // A task whose health check keeps failing is replaced.
    d.shoal(&[
        "service",
        "create",
        "--name",
        "sick",
        "--health-cmd",
        "test -f /tmp/ok",
        "--health-interval",
        "300ms",
        "--health-retries",
        "2",
        "--restart-delay",
        "100ms",
        "busybox:test",
        "sh",
        "-c",
        "touch /tmp/ok; sleep 2; rm /tmp/ok; sleep 1000",
    ])
    .ok();
    assert!(
        wait_for(Duration::from_secs(20), || d
            .shoal(&["service", "ps", "sick"])
            .stdout
            .contains("unhealthy")),
        "{}",
        d.shoal(&["service", "ps", "sick"]).stdout
    );
    assert!(
        wait_for(Duration::from_secs(20), || running_tasks(&d, "sick") == 1),
        "replaced"
    );
    d.shoal(&["service", "rm", "sick"]).ok();
    // An update to an image that cannot run rolls back by itself.
    d.shoal(&[
        "service",
        "create",
        "--name",
        "roll",
        "--replicas",
        "2",
        "--update-failure-action",
        "rollback",
        "busybox:test",
        "sleep",
        "1000",
    ])
    .ok();
    let r = d.shoal(&["service", "update", "--image", "ghost:1", "roll"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("rolled back"), "{r:?}");
    assert!(wait_for(Duration::from_secs(30), || {
        let v: serde_json::Value =
            serde_json::from_str(&d.shoal(&["service", "inspect", "roll"]).stdout)
                .unwrap_or_default();
        v[0]["spec"]["image"] == "busybox:test" && running_tasks(&d, "roll") == 2
    }));
    d.shoal(&["service", "rm", "roll"]).ok();
    // Unschedulable tasks say why.
    d.shoal(&[
        "service",
        "create",
        "-d",
        "--name",
        "huge",
        "--reserve-memory",
        "100000g",
        "busybox:test",
        "true",
    ])
    .ok();
    assert!(wait_for(Duration::from_secs(10), || {
        d.shoal(&["service", "ps", "huge"])
            .stdout
            .contains("insufficient memory")
    }));
    d.shoal(&["service", "rm", "web", "huge", "talk"]).ok();
    assert!(
        wait_for(Duration::from_secs(30), || running_containers(&d) == 0),
        "removed"
    );
}

fn dev_runs_a_demo_cluster_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(shoal_bin())
        .arg("dev")
        .arg("--run-root")
        .arg(dir.path().join("run"))
        .arg("--data-root")
        .arg(dir.path().join("data"))
        .args(["--exit-after", "4"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let ms: f64 = err
        .lines()
        .find_map(|l| l.strip_prefix("shoal dev: first replica running "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no first-replica line: {err}"));
    eprintln!("dev: first replica running after {ms} ms");
    assert!(
        stdout.contains("hello from"),
        "the demo's logs are shown: {stdout}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&dir.path().to_string_lossy().to_string()),
        "no mount left"
    );
    assert!(
        !std::path::Path::new("/sys/fs/cgroup/memory/shoal-dev").exists()
            && !std::path::Path::new("/sys/fs/cgroup/shoal-dev").exists()
    );
}
