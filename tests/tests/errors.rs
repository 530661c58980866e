//! Mistakes a user makes get one clear line that names the problem and the fix, a non-zero
//! exit, and leave nothing half-made behind.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use shoal_tests::{Daemon, require_kernel, shoal_bin};

#[test]
fn no_daemon_running() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nothing.sock");
    let out = std::process::Command::new(shoal_bin())
        .args(["-H", &sock.to_string_lossy(), "container", "ls"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("cannot reach the shoal daemon"), "{err}");
    assert!(err.contains("shoal daemon"), "says how to start it: {err}");
}

#[test]
fn bad_flags_exit_64_before_reaching_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir
        .path()
        .join("nothing.sock")
        .to_string_lossy()
        .into_owned();
    for (args, want) in [
        (
            vec!["container", "run", "--memory", "12q", "busybox"],
            "invalid --memory \"12q\"",
        ),
        (
            vec!["container", "run", "-p", "99999:80", "busybox"],
            "invalid -p",
        ),
        (
            vec!["container", "run", "--cpus", "-1", "busybox"],
            "invalid --cpus",
        ),
        (
            vec!["container", "logs", "--tail", "x", "c"],
            "invalid --tail",
        ),
    ] {
        let mut full = vec!["-H", sock.as_str()];
        full.extend(args);
        let out = std::process::Command::new(shoal_bin())
            .args(&full)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{full:?}: {err}");
        assert!(err.contains(want), "{full:?}: {err}");
    }
}

#[test]
fn daemon_refuses_a_missing_runtime() {
    require_kernel!();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(shoal_bin())
        .arg("daemon")
        .arg("--data-root")
        .arg(dir.path().join("d"))
        .arg("--run-root")
        .arg(dir.path().join("r"))
        .args(["--runtime", "no-such-runtime"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("runtime \"no-such-runtime\" not found"),
        "{err}"
    );
    assert!(err.contains("--runtime builtin"), "{err}");
}

#[test]
fn run_errors_name_the_problem_and_leave_nothing() {
    require_kernel!();
    let d = Daemon::start("builtin");
    d.import_busybox("busybox:test");
    let r = d.shoal(&["container", "run", "--rm", "ghost:1"]);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(r.stderr.contains("image \"ghost:1\" not found"), "{r:?}");
    assert!(r.stderr.contains("shoal image import"), "{r:?}");
    let r = d.shoal(&["container", "run", "--rm", "Bad:Ref:x"]);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(r.stderr.contains("invalid reference"), "{r:?}");
    let r = d.shoal(&[
        "container",
        "run",
        "--rm",
        "--network",
        "none",
        "busybox:test",
        "nope-cmd",
    ]);
    assert_eq!(r.code, 127, "{r:?}");
    assert!(r.stderr.contains("executable file not found"), "{r:?}");
    let r = d.shoal(&[
        "container",
        "run",
        "--rm",
        "--network",
        "none",
        "-u",
        "ghost",
        "busybox:test",
        "true",
    ]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("unable to find user ghost"), "{r:?}");
    let r = d.shoal(&[
        "container",
        "run",
        "--rm",
        "--cap-add",
        "NOPE",
        "busybox:test",
        "true",
    ]);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(r.stderr.contains("unknown capability"), "{r:?}");
    let r = d.shoal(&[
        "container",
        "run",
        "--rm",
        "--memory",
        "1k",
        "busybox:test",
        "true",
    ]);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(r.stderr.contains("minimum is 6m"), "{r:?}");
    d.shoal(&[
        "container",
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "dup",
        "busybox:test",
        "sleep",
        "100",
    ])
    .ok();
    let r = d.shoal(&[
        "container",
        "run",
        "-d",
        "--name",
        "dup",
        "busybox:test",
        "true",
    ]);
    assert!(r.stderr.contains("already in use"), "{r:?}");
    let r = d.shoal(&["container", "rm", "dup"]);
    assert!(r.stderr.contains("stop it first"), "{r:?}");
    d.shoal(&["container", "rm", "-f", "dup"]).ok();
    let r = d.shoal(&["image", "rm", "busybox:test"]).ok();
    assert!(r.stdout.contains("Untagged"), "{r:?}");
    // Every failed run above was removed (--rm) and left no mount or cgroup.
    assert!(
        d.shoal(&["container", "ls", "-a", "-q"])
            .ok()
            .stdout
            .trim()
            .is_empty()
    );
    assert!(d.leftover_mounts().is_empty(), "{:?}", d.leftover_mounts());
    assert!(
        d.leftover_cgroups().is_empty(),
        "{:?}",
        d.leftover_cgroups()
    );
}
