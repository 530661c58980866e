//! Volumes with the real binary: named, anonymous, bind and tmpfs mounts for the builtin
//! runtime and runc; and a volume plugin written in Python, whose calls are checked one
//! by one (including one that crashes mid-Mount). Containers use `--network none`, so
//! tests of several daemons can run side by side (they share the host's bridge).

use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_tests::plugin::PythonPlugin;
use shoal_tests::{Daemon, Run, require_kernel};

const IMG: &str = "busybox";

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(bin))
            .find(|p| p.is_file())
    })
}

fn daemon(runtime: &str, extra: &[&str]) -> Option<Daemon> {
    if runtime != "builtin" && which(runtime).is_none() {
        eprintln!("SKIPPED: {runtime} is not installed (apt-get install {runtime})");
        return None;
    }
    let d = Daemon::start_with(runtime, extra);
    d.import_busybox(IMG);
    Some(d)
}

fn run(d: &Daemon, flags: &[&str], cmd: &[&str]) -> Run {
    let mut args = vec!["run", "--rm", "--network", "none"];
    args.extend_from_slice(flags);
    args.push(IMG);
    args.extend_from_slice(cmd);
    d.shoal(&args)
}

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

macro_rules! each_runtime {
    ($($name:ident),* $(,)?) => {
        mod builtin {
            $( #[test] fn $name() { super::$name("builtin") } )*
        }
        mod runc {
            $( #[test] fn $name() { super::$name("runc") } )*
        }
    };
}

each_runtime!(
    a_named_volume_keeps_data_between_containers,
    a_new_volume_gets_the_images_content_unless_nocopy,
    bind_and_tmpfs_mounts_hold_their_limits,
    anonymous_volumes_go_with_rm_v_and_in_use_ones_stay,
);

fn a_named_volume_keeps_data_between_containers(rt: &str) {
    require_kernel!();
    let Some(d) = daemon(rt, &[]) else { return };
    d.shoal(&["volume", "create", "--label", "app=db", "data"])
        .ok();
    run(
        &d,
        &["-v", "data:/data"],
        &["sh", "-c", "echo kept > /data/f"],
    )
    .ok();
    let r = run(
        &d,
        &["--mount", "type=volume,source=data,target=/mnt,readonly"],
        &["cat", "/mnt/f"],
    )
    .ok();
    assert_eq!(r.stdout.trim(), "kept");
    let r = run(
        &d,
        &["-v", "data:/data:ro"],
        &["sh", "-c", "echo x > /data/g"],
    );
    assert_ne!(r.code, 0, "a read-only volume refuses writes");
    assert!(r.stderr.contains("Read-only file system"), "{r:?}");
    let inspect = d.shoal(&["volume", "inspect", "data"]).ok();
    let v: serde_json::Value = serde_json::from_str(&inspect.stdout).expect("json");
    assert_eq!(v[0]["Driver"], "local");
    assert_eq!(v[0]["Labels"]["app"], "db");
    let mountpoint = v[0]["Mountpoint"].as_str().expect("a mountpoint");
    assert!(
        mountpoint.starts_with(&d.data_root.to_string_lossy().into_owned()),
        "{mountpoint}"
    );
    assert_eq!(
        std::fs::read_to_string(Path::new(mountpoint).join("f")).expect("on the host"),
        "kept\n"
    );
    let filtered = d.shoal(&["volume", "ls", "-q", "-f", "label=app=db"]).ok();
    assert_eq!(filtered.stdout.trim(), "data");
    assert!(
        d.shoal(&["volume", "ls", "-q", "-f", "label=app=web"])
            .ok()
            .stdout
            .trim()
            .is_empty()
    );
    d.shoal(&["volume", "rm", "data"]).ok();
    assert!(volumes(&d).is_empty());
}

fn a_new_volume_gets_the_images_content_unless_nocopy(rt: &str) {
    require_kernel!();
    let Some(d) = daemon(rt, &[]) else { return };
    // busybox's /etc has passwd and group: a new volume there starts with them.
    let r = run(&d, &["-v", "etc:/etc"], &["cat", "/etc/passwd"]).ok();
    assert!(r.stdout.contains("root:"), "{r:?}");
    let r = run(&d, &["-v", "bare:/etc:nocopy"], &["ls", "/etc"]).ok();
    assert!(r.stdout.trim().is_empty(), "nocopy leaves it empty: {r:?}");
    // Once it has content, the image's no longer goes in.
    run(&d, &["-v", "etc:/etc"], &["sh", "-c", "rm /etc/group"]).ok();
    let r = run(&d, &["-v", "etc:/etc"], &["ls", "/etc"]).ok();
    assert!(!r.stdout.contains("group"), "{r:?}");
}

fn bind_and_tmpfs_mounts_hold_their_limits(rt: &str) {
    require_kernel!();
    let Some(d) = daemon(rt, &[]) else { return };
    let host = d.dir().join("share");
    std::fs::create_dir_all(&host).expect("dir");
    std::fs::write(host.join("hello"), "from the host").expect("write");
    let h = host.to_string_lossy().into_owned();
    let r = run(
        &d,
        &["-v", &format!("{h}:/share:ro")],
        &["sh", "-c", "cat /share/hello; echo > /share/x"],
    );
    assert!(r.stdout.contains("from the host"), "{r:?}");
    assert_ne!(r.code, 0, "a read-only bind refuses writes");
    assert!(!host.join("x").exists());
    run(
        &d,
        &["--mount", &format!("type=bind,source={h},target=/share")],
        &["sh", "-c", "echo back > /share/y"],
    )
    .ok();
    assert_eq!(
        std::fs::read_to_string(host.join("y")).expect("written through"),
        "back\n"
    );
    // A 1 MiB tmpfs takes no 2 MiB file.
    let r = run(
        &d,
        &["--tmpfs", "/t:size=1m"],
        &["dd", "if=/dev/zero", "of=/t/big", "bs=1024", "count=2048"],
    );
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("No space left"), "{r:?}");
    let r = run(
        &d,
        &[
            "--mount",
            "type=tmpfs,target=/t,tmpfs-size=2m,tmpfs-mode=700",
        ],
        &["stat", "-c", "%a", "/t"],
    )
    .ok();
    assert_eq!(r.stdout.trim(), "700");
    // Refused before anything is made, naming the problem.
    for (flags, says) in [
        (
            vec!["--mount", "type=volume,target=/x,colour=red"],
            "unknown --mount key \"colour\"",
        ),
        (vec!["-v", "data:relative"], "absolute path"),
        (vec!["--mount", "type=bind,target=/x"], "needs a source"),
        (
            vec!["--mount", "type=bind,source=/no/such/dir,target=/x"],
            "bind source path does not exist",
        ),
        (
            vec!["-v", "v1:/x", "-v", "v2:/x"],
            "two mounts have the target /x",
        ),
    ] {
        let r = run(&d, &flags, &["true"]);
        assert_ne!(r.code, 0, "{flags:?}");
        assert!(r.stderr.contains(says), "{flags:?}: {r:?}");
    }
    assert!(
        volumes(&d).is_empty(),
        "a refused run makes no volume: {:?}",
        volumes(&d)
    );
}

fn anonymous_volumes_go_with_rm_v_and_in_use_ones_stay(rt: &str) {
    require_kernel!();
    let Some(d) = daemon(rt, &[]) else { return };
    let keep = d
        .shoal(&[
            "run",
            "-d",
            "--network",
            "none",
            "-v",
            "/scratch",
            IMG,
            "true",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    let gone = d
        .shoal(&[
            "run",
            "-d",
            "--network",
            "none",
            "-v",
            "/scratch",
            IMG,
            "true",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    assert_eq!(volumes(&d).len(), 2);
    d.shoal(&["wait", &keep, &gone]).ok();
    d.shoal(&["rm", &keep]).ok();
    d.shoal(&["rm", "-v", &gone]).ok();
    let left = volumes(&d);
    assert_eq!(left.len(), 1, "rm without -v keeps it: {left:?}");
    // --rm removes a container's anonymous volumes with it.
    run(&d, &["-v", "/scratch"], &["true"]).ok();
    assert_eq!(volumes(&d), left);
    // In use: rm refused, naming the container; prune keeps it.
    d.shoal(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "holder",
        "-v",
        "busy:/b",
        IMG,
        "sleep",
        "100",
    ])
    .ok();
    let r = d.shoal(&["volume", "rm", "busy"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr
            .contains("volume busy is in use by container holder"),
        "{r:?}"
    );
    d.shoal(&["volume", "create", "idle"]).ok();
    // prune takes the unused anonymous volume only; --all the named one too.
    let pruned = d.shoal(&["volume", "prune", "-f"]).ok();
    assert!(
        pruned.stdout.contains(&left[0]) && !pruned.stdout.contains("idle"),
        "{pruned:?}"
    );
    let pruned = d.shoal(&["volume", "prune", "-a", "-f"]).ok();
    assert!(
        pruned.stdout.contains("idle") && !pruned.stdout.contains("busy"),
        "{pruned:?}"
    );
    assert_eq!(volumes(&d), vec!["busy".to_string()]);
    let dangling = d.shoal(&["volume", "ls", "-q", "-f", "dangling=true"]).ok();
    assert!(dangling.stdout.trim().is_empty(), "{dangling:?}");
    d.shoal(&["rm", "-f", "holder"]).ok();
    d.shoal(&["volume", "rm", "busy"]).ok();
}

/// The Python test plugin `name` (with `extra` flags) in a fresh directory, and that
/// directory's plugin dir for `--plugin-dir`; None (with the reason printed) without python3.
fn python_plugin(name: &str, extra: &[&str]) -> Option<(tempfile::TempDir, PythonPlugin, String)> {
    if which("python3").is_none() {
        eprintln!("SKIPPED: needs python3");
        return None;
    }
    let work = tempfile::tempdir().expect("dir");
    let plugins = work.path().join("plugins");
    let p = PythonPlugin::start(&plugins, name, work.path(), extra);
    Some((work, p, plugins.to_string_lossy().into_owned()))
}

#[test]
fn a_python_volume_plugin_sees_create_mount_unmount_remove() {
    require_kernel!();
    let Some((_work, p, dir)) = python_plugin("pyplug", &[]) else {
        return;
    };
    let Some(d) = daemon("builtin", &["--plugin-dir", &dir, "--plugin-timeout", "5s"]) else {
        return;
    };
    let listed = d.shoal(&["plugin", "ls"]).ok();
    assert!(
        listed.stdout.contains("pyplug") && listed.stdout.contains("VolumeDriver"),
        "{listed:?}"
    );

    let m = "type=volume,source=pv,target=/data,volume-driver=pyplug,volume-opt=size=1g";
    run(
        &d,
        &["--mount", m],
        &["sh", "-c", "echo via-plugin > /data/f"],
    )
    .ok();
    assert_eq!(
        std::fs::read_to_string(p.root.join("pv/f")).expect("in the plugin's directory"),
        "via-plugin\n"
    );
    // Two containers at once: the plugin mounts once, and is unmounted after the last.
    d.shoal(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "a1",
        "--mount",
        m,
        IMG,
        "sleep",
        "100",
    ])
    .ok();
    d.shoal(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "a2",
        "--mount",
        m,
        IMG,
        "sleep",
        "100",
    ])
    .ok();
    d.shoal(&["rm", "-f", "a1", "a2"]).ok();
    d.shoal(&["volume", "rm", "pv"]).ok();

    let calls = p.lifecycle();
    let names: Vec<&str> = calls.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        names,
        [
            "VolumeDriver.Create",
            "VolumeDriver.Mount",
            "VolumeDriver.Unmount",
            "VolumeDriver.Mount",
            "VolumeDriver.Unmount",
            "VolumeDriver.Remove"
        ],
        "{calls:?}"
    );
    assert_eq!(calls[0].1["Name"], "pv");
    assert_eq!(calls[0].1["Opts"]["size"], "1g");
    for (mount, unmount) in [(1, 2), (3, 4)] {
        let id = calls[mount].1["ID"].as_str().expect("Mount carries an ID");
        assert!(!id.is_empty());
        assert_eq!(calls[unmount].1["ID"], id, "Unmount names its Mount's ID");
    }
    assert_ne!(
        calls[1].1["ID"], calls[3].1["ID"],
        "each mount has an ID of its own"
    );
    assert!(!p.root.join("pv").exists(), "the plugin removed it");
    let accept = std::fs::read_to_string(&p.log).expect("log");
    assert!(
        accept.contains("application/vnd.docker.plugins.v1.2+json"),
        "{accept}"
    );
}

#[test]
fn volumes_a_plugin_has_are_listed_and_taken_by_mounts_that_name_no_driver() {
    require_kernel!();
    let Some((_work, p, dir)) = python_plugin("oob", &[]) else {
        return;
    };
    // A volume the plugin has that this node never made (out of band, or another host's).
    std::fs::create_dir_all(p.root.join("elsewhere")).expect("dir");
    std::fs::write(p.root.join("elsewhere/note"), "made elsewhere\n").expect("write");
    let Some(d) = daemon("builtin", &["--plugin-dir", &dir]) else {
        return;
    };
    d.shoal(&["volume", "create", "mine"]).ok();
    let ls = d.shoal(&["volume", "ls"]).ok().stdout;
    assert!(
        ls.lines()
            .any(|l| l.starts_with("oob") && l.ends_with("elsewhere")),
        "{ls}"
    );
    assert!(
        ls.lines()
            .any(|l| l.starts_with("local") && l.ends_with("mine")),
        "{ls}"
    );
    let inspect = d.shoal(&["volume", "inspect", "elsewhere"]).ok().stdout;
    assert!(inspect.contains("\"Driver\": \"oob\""), "{inspect}");
    // `-v NAME:/path` names no driver: the plugin's volume of that name, not a new local one.
    let out = run(&d, &["-v", "elsewhere:/data"], &["cat", "/data/note"]).ok();
    assert_eq!(out.stdout, "made elsewhere\n");
    assert!(
        p.lifecycle()
            .iter()
            .any(|(c, b)| c == "VolumeDriver.Mount" && b["Name"] == "elsewhere"),
        "{:?}",
        p.lifecycle()
    );
    assert!(
        p.lifecycle()
            .iter()
            .all(|(c, _)| c != "VolumeDriver.Create"),
        "Get found it: no Create: {:?}",
        p.lifecycle()
    );
    // A bad filter is refused before any plugin is asked.
    let bad = d.shoal(&["volume", "ls", "-f", "colour=red"]);
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("colour"), "{bad:?}");
}

#[test]
fn a_plugin_that_crashes_mid_mount_fails_only_its_container() {
    require_kernel!();
    let Some((_work, p, dir)) = python_plugin("crashy", &["--crash-on", "VolumeDriver.Mount"])
    else {
        return;
    };
    let Some(d) = daemon("builtin", &["--plugin-dir", &dir, "--plugin-timeout", "5s"]) else {
        return;
    };
    let m = "type=volume,source=cv,target=/data,volume-driver=crashy";
    let started = std::time::Instant::now();
    let r = run(&d, &["--mount", m], &["true"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr
            .contains("volume plugin crashy: VolumeDriver.Mount"),
        "the error names the plugin and the call: {r:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "it gave up in time"
    );
    drop(p);
    // The daemon serves everyone else; nothing of the failed start is left.
    let r = run(
        &d,
        &["-v", "fine:/data"],
        &["sh", "-c", "echo ok > /data/f; cat /data/f"],
    )
    .ok();
    assert_eq!(r.stdout.trim(), "ok");
    let ps = d.shoal(&["container", "ls", "-a", "-q"]).ok();
    assert!(ps.stdout.trim().is_empty(), "{ps:?}");
    assert!(
        d.leftover_mounts().iter().all(|m| !m.contains("cv")),
        "{:?}",
        d.leftover_mounts()
    );
    // A plugin that is not there at all is named at once.
    let r = run(
        &d,
        &[
            "--mount",
            "type=volume,source=x1,target=/d,volume-driver=nosuch",
        ],
        &["true"],
    );
    assert!(r.stderr.contains("volume plugin nosuch not found"), "{r:?}");
}

#[test]
fn a_daemon_restart_under_a_live_container_neither_mounts_nor_unmounts_again() {
    require_kernel!();
    let Some((_work, p, dir)) = python_plugin("steady", &[]) else {
        return;
    };
    let Some(mut d) = daemon("builtin", &["--plugin-dir", &dir, "--plugin-timeout", "5s"]) else {
        return;
    };
    let m = "type=volume,source=sv,target=/data,volume-driver=steady";
    d.shoal(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "live",
        "--mount",
        m,
        IMG,
        "sleep",
        "100",
    ])
    .ok();
    let count = |call: &str| p.lifecycle().iter().filter(|(c, _)| c == call).count();
    assert_eq!(count("VolumeDriver.Mount"), 1);
    d.kill9();
    d.restart();
    // The restarted daemon knows the mount; a second container shares it.
    d.shoal(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "late",
        "--mount",
        m,
        IMG,
        "sleep",
        "100",
    ])
    .ok();
    assert_eq!(count("VolumeDriver.Mount"), 1, "{:?}", p.lifecycle());
    assert_eq!(count("VolumeDriver.Unmount"), 0);
    d.shoal(&["rm", "-f", "live"]).ok();
    assert_eq!(
        count("VolumeDriver.Unmount"),
        0,
        "the other container still uses it"
    );
    d.shoal(&["rm", "-f", "late"]).ok();
    assert_eq!(count("VolumeDriver.Unmount"), 1, "{:?}", p.lifecycle());
}
