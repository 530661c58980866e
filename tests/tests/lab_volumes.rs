//! Volumes on the lab (one manager, two workers, each a host of its own): a service's
//! per-slot volume lives on the node its task runs on and outlives the task's container;
//! a volume plugin that only one host has, started after the cluster, draws every task
//! that needs it to that host (the node tells the managers of the new driver in its
//! heartbeat), and the plugin sees each task's Mount and Unmount; a volume of a plugin of
//! cluster-wide scope is recorded by the managers, and one node cannot remove it while a
//! task on another mounts it.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use shoal_tests::lab::Lab;
use shoal_tests::plugin::PythonPlugin;
use shoal_tests::{require_kernel, wait_for};

/// The volume names on host `i`.
fn volumes(lab: &Lab, i: usize) -> Vec<String> {
    let (_, out, _) = lab.shoal(i, &["volume", "ls", "-q"]);
    out.lines().map(String::from).collect()
}

/// `cat FILE` in container `c` on host `i`.
fn cat(lab: &Lab, i: usize, c: &str, file: &str) -> String {
    lab.shoal(i, &["container", "exec", c, "cat", file]).1
}

/// What `service ps` says of a service (for failure messages).
fn ps(lab: &Lab, service: &str) -> String {
    lab.shoal(1, &["service", "ps", service, "--no-trunc"]).1
}

#[test]
fn slot_volumes_stay_with_their_node_and_a_plugin_draws_its_tasks() {
    require_kernel!();
    let lab = Lab::cluster("vol", 1, 2);
    // A database pinned to h2, with a volume per slot.
    lab.shoal_ok(
        1,
        &[
            "service",
            "create",
            "--name",
            "db",
            "--constraint",
            "node.hostname==h2",
            "--restart-delay",
            "100ms",
            "--mount",
            "type=volume,source=db-{{.Task.Slot}},target=/data",
            "busybox:test",
            "sh",
            "-c",
            "echo start >> /data/starts; sleep 1000",
        ],
    );
    let mut first = Vec::new();
    assert!(
        wait_for(Duration::from_secs(60), || {
            first = lab.task_containers(2, "db");
            first.len() == 1 && cat(&lab, 2, &first[0], "/data/starts") == "start\n"
        }),
        "db runs on h2 with its volume: {}",
        ps(&lab, "db")
    );
    assert_eq!(volumes(&lab, 2), ["db-1"]);
    assert!(volumes(&lab, 3).is_empty(), "{:?}", volumes(&lab, 3));
    // Its container dies; the replacement on h2 finds what the first one wrote.
    lab.shoal_ok(2, &["container", "kill", &first[0]]);
    let mut second = Vec::new();
    assert!(
        wait_for(Duration::from_secs(60), || {
            second = lab.task_containers(2, "db");
            second.len() == 1
                && second != first
                && cat(&lab, 2, &second[0], "/data/starts") == "start\nstart\n"
        }),
        "the replacement ran on slot 1's volume: {second:?}\n{}",
        ps(&lab, "db")
    );
    // Removing the service leaves the volume (it is the data), and frees it.
    lab.shoal_ok(1, &["service", "rm", "db"]);
    assert!(wait_for(Duration::from_secs(30), || lab
        .task_containers(2, "db")
        .is_empty()));
    assert!(
        wait_for(Duration::from_secs(10), || lab
            .shoal(2, &["volume", "rm", "db-1"])
            .0
            == 0),
        "the volume is free once its task is gone"
    );

    // A service on a plugin no host has yet: its tasks wait and say why.
    lab.shoal_ok(
        1,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "pv",
            "--replicas",
            "2",
            "--mount",
            "type=volume,source=pv-{{.Task.Slot}},target=/data,volume-driver=labplug",
            "busybox:test",
            "sh",
            "-c",
            "hostname > /data/who; sleep 1000",
        ],
    );
    assert!(
        wait_for(Duration::from_secs(30), || ps(&lab, "pv")
            .contains("lack volume driver labplug")),
        "pending on the driver: {}",
        ps(&lab, "pv")
    );
    // The plugin comes up on h3: both tasks go there, and nowhere else.
    let work = lab.host_dir(3).join("plugin-work");
    let plugin = PythonPlugin::start(&lab.host_dir(3).join("plugins"), "labplug", &work, &[]);
    assert!(
        wait_for(Duration::from_secs(60), || lab
            .task_containers(3, "pv")
            .len()
            == 2),
        "both tasks run on h3: {}",
        ps(&lab, "pv")
    );
    assert_eq!(lab.spread(1, "pv").keys().collect::<Vec<_>>(), ["h3"]);
    for c in lab.task_containers(3, "pv") {
        assert!(!cat(&lab, 3, &c, "/data/who").trim().is_empty());
    }
    let mounts = |call: &str| plugin.lifecycle().iter().filter(|(c, _)| c == call).count();
    assert_eq!(mounts("VolumeDriver.Mount"), 2, "{:?}", plugin.lifecycle());
    lab.shoal_ok(1, &["service", "rm", "pv"]);
    assert!(
        wait_for(Duration::from_secs(30), || mounts("VolumeDriver.Unmount")
            == 2),
        "each task's volume unmounted: {:?}",
        plugin.lifecycle()
    );
    // Once the tasks' containers are gone (a stopped one still holds its volume, as in
    // Docker), the volumes go, through the plugin.
    for v in ["pv-1", "pv-2"] {
        assert!(
            wait_for(Duration::from_secs(30), || lab
                .shoal(3, &["volume", "rm", v])
                .0
                == 0),
            "{v}: {:?}",
            lab.shoal(3, &["volume", "rm", v])
        );
    }
    assert!(
        plugin
            .lifecycle()
            .iter()
            .any(|(c, _)| c == "VolumeDriver.Remove")
    );

    drop(plugin);

    // A plugin of cluster-wide scope on h2 and h3, over one store (as a network
    // filesystem would be): one volume for the cluster.
    let shared = lab.host_dir(1).join("global-volumes");
    let shared_arg = shared.to_string_lossy().to_string();
    let global = ["--root", shared_arg.as_str(), "--scope", "global"];
    let _g2 = PythonPlugin::start(
        &lab.host_dir(2).join("plugins"),
        "gplug",
        &lab.host_dir(2).join("g"),
        &global,
    );
    let _g3 = PythonPlugin::start(
        &lab.host_dir(3).join("plugins"),
        "gplug",
        &lab.host_dir(3).join("g"),
        &global,
    );
    lab.shoal_ok(
        1,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "g",
            "--constraint",
            "node.hostname==h3",
            "--mount",
            "type=volume,source=shared,target=/data,volume-driver=gplug",
            "busybox:test",
            "sh",
            "-c",
            "echo from-h3 > /data/note; sleep 1000",
        ],
    );
    assert!(
        wait_for(Duration::from_secs(60), || lab
            .task_containers(3, "g")
            .len()
            == 1),
        "g runs on h3: {}",
        ps(&lab, "g")
    );
    assert!(
        wait_for(Duration::from_secs(10), || lab
            .shoal(1, &["volume", "ls", "--cluster", "-q"])
            .1
            == "shared\n"),
        "the managers recorded the volume: {:?}",
        lab.shoal(1, &["volume", "ls", "--cluster"])
    );
    // h2 takes the same volume (the plugin has it already) and sees h3's data.
    lab.shoal_ok(2, &["volume", "create", "-d", "gplug", "shared"]);
    let seen = lab.shoal_ok(
        2,
        &[
            "container",
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            "shared:/data",
            "busybox:test",
            "cat",
            "/data/note",
        ],
    );
    assert_eq!(seen, "from-h3\n");
    // h2 may not remove it while h3's task mounts it, and keeps it.
    let (code, _, err) = lab.shoal(2, &["volume", "rm", "shared"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("in use by task g.1.") && err.contains("on node h3"),
        "{err}"
    );
    assert_eq!(volumes(&lab, 2), ["shared"]);
    // Once the service is gone, it may.
    lab.shoal_ok(1, &["service", "rm", "g"]);
    assert!(
        wait_for(Duration::from_secs(30), || lab
            .shoal(2, &["volume", "rm", "shared"])
            .0
            == 0),
        "{:?}",
        lab.shoal(2, &["volume", "rm", "shared"])
    );
    assert_eq!(lab.shoal_ok(1, &["volume", "ls", "--cluster", "-q"]), "");
}
