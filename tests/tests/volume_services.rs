//! Services that mount volumes, on a one-node cluster with the real binary: a volume per
//! slot that outlives its tasks, placement only where a volume's driver is, and bad mounts
//! refused by the managers.

use std::path::Path;
use std::time::Duration;

use shoal_tests::{Daemon, require_kernel, wait_for};

const IMG: &str = "busybox";

fn volumes(d: &Daemon) -> Vec<String> {
    let mut v: Vec<String> = d
        .shoal(&["volume", "ls", "-q"])
        .ok()
        .stdout
        .lines()
        .map(String::from)
        .collect();
    v.sort();
    v
}

fn volume_file(d: &Daemon, volume: &str, file: &str) -> String {
    let r = d.shoal(&["volume", "inspect", volume]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap_or_default();
    let mp = v[0]["Mountpoint"].as_str().unwrap_or_default().to_string();
    std::fs::read_to_string(Path::new(&mp).join(file)).unwrap_or_default()
}

/// Services' tasks use the node's bridge: this test has a binary of its own, so that no
/// other daemon starts (and takes the host's bridge for its own) meanwhile.
#[test]
fn a_service_keeps_each_slots_volume_and_goes_only_where_its_driver_is() {
    require_kernel!();
    let d = Daemon::start("builtin");
    d.import_busybox(IMG);
    d.shoal(&["init"]).ok();
    d.shoal(&[
        "service",
        "create",
        "--name",
        "db",
        "--replicas",
        "2",
        "--restart-delay",
        "100ms",
        "--mount",
        "source={{.Service.Name}}-{{.Task.Slot}},target=/data",
        IMG,
        "sh",
        "-c",
        "echo run >> /data/runs; sleep 1000",
    ])
    .ok();
    assert_eq!(volumes(&d), ["db-1", "db-2"], "a volume per slot");
    assert!(wait_for(Duration::from_secs(10), || volume_file(
        &d, "db-1", "runs"
    ) == "run\n"));
    // Slot 1's container dies; its replacement finds slot 1's data.
    let ps = d.shoal(&["container", "ls", "--format", "json"]);
    let list: serde_json::Value = serde_json::from_str(&ps.stdout).unwrap_or_default();
    let slot1 = list
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|c| c["name"].as_str().is_some_and(|n| n.starts_with("db.1.")))
        })
        .and_then(|c| c["id"].as_str())
        .map(String::from)
        .unwrap_or_else(|| panic!("no container of slot 1: {ps:?}"));
    d.shoal(&["container", "kill", &slot1]).ok();
    assert!(
        wait_for(Duration::from_secs(30), || volume_file(&d, "db-1", "runs")
            == "run\nrun\n"),
        "slot 1 ran again on its volume: {:?}\n{}\n{}",
        volume_file(&d, "db-1", "runs"),
        d.shoal(&["service", "ps", "db", "--no-trunc"]).stdout,
        d.log()
    );
    assert_eq!(
        volume_file(&d, "db-2", "runs"),
        "run\n",
        "slot 2 was left alone"
    );
    let r = d.shoal(&["service", "rm", "db"]).ok();
    drop(r);

    // A driver no node has: the task waits, saying why.
    d.shoal(&[
        "service",
        "create",
        "--detach",
        "--name",
        "far",
        "--mount",
        "source=x1,target=/x,volume-driver=nosuch",
        IMG,
        "sleep",
        "100",
    ])
    .ok();
    assert!(
        wait_for(Duration::from_secs(15), || d
            .shoal(&["service", "ps", "far", "--no-trunc"])
            .stdout
            .contains("lack volume driver nosuch")),
        "{:?}",
        d.shoal(&["service", "ps", "far", "--no-trunc"])
    );
    d.shoal(&["service", "rm", "far"]).ok();
    assert!(wait_for(Duration::from_secs(30), || d
        .shoal(&["container", "ls", "-a", "-q"])
        .stdout
        .trim()
        .is_empty()));
    // Bad mounts are refused by the managers before anything is made.
    let r = d.shoal(&[
        "service",
        "create",
        "--name",
        "bad",
        "--mount",
        "type=bind,target=/x",
        IMG,
        "true",
    ]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("needs a source"), "{r:?}");
}
