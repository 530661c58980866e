//! End-to-end behaviour of `shoal container` with the real binary and a real daemon, for the
//! builtin runtime, runc and crun (crun runs in a private mount namespace without the cgroup
//! v2 mount when the host mixes layouts). Containers use `--network none` unless the test is
//! about networking, so tests can run in parallel.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use shoal_tests::{Daemon, require_kernel, wait_for};

const IMG: &str = "busybox:test";

fn daemon(runtime: &str) -> Option<Daemon> {
    if runtime != "builtin" && which(runtime).is_none() {
        eprintln!("SKIPPED: {runtime} is not installed (apt-get install {runtime})");
        return None;
    }
    let d = Daemon::start(runtime);
    d.import_busybox(IMG);
    Some(d)
}

fn which(bin: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(bin))
            .find(|p| p.exists())
    })
}

/// `shoal container run --rm --network none IMG ARGS...`
fn run(d: &Daemon, flags: &[&str], cmd: &[&str]) -> shoal_tests::Run {
    let mut args = vec!["container", "run", "--rm", "--network", "none"];
    args.extend_from_slice(flags);
    args.push(IMG);
    args.extend_from_slice(cmd);
    d.shoal(&args)
}

macro_rules! for_runtimes {
    ($($name:ident),* $(,)?) => {
        mod builtin {
            $( #[test] fn $name() { super::$name("builtin") } )*
        }
        mod runc {
            $( #[test] fn $name() { super::$name("runc") } )*
        }
        mod crun {
            $( #[test] fn $name() { super::$name("crun") } )*
        }
    };
}

for_runtimes!(
    pid_one_hostname_and_mounts,
    exit_codes_env_workdir_user,
    capabilities_default_and_changed,
    seccomp_forbids_unshare,
    read_only_root,
    memory_limit_kills,
    pids_limit_holds,
    stop_signal_then_kill,
    logs_tail_and_follow,
    exec_in_running_container,
    nothing_left_after_rm,
    live_restore_after_kill9,
);

fn pid_one_hostname_and_mounts(rt: &str) {
    require_kernel!();
    let Some(d) = daemon(rt) else { return };
    let r = run(&d, &[], &["sh", "-c", "echo $$"]).ok();
    assert_eq!(
        r.stdout.trim(),
        "1",
        "the container's first process is PID 1"
    );
    let r = run(&d, &["--hostname", "fish"], &["hostname"]).ok();
    assert_eq!(r.stdout.trim(), "fish");
    let r = run(&d, &[], &["hostname"]).ok();
    assert_eq!(
        r.stdout.trim().len(),
        12,
        "default hostname is the short id"
    );
    let r = run(&d, &[], &["cat", "/proc/self/mountinfo"]).ok();
    let data_root = d.data_root.to_string_lossy().into_owned();
    for line in r.stdout.lines() {
        let mp = line.split(' ').nth(4).unwrap_or_default();
        assert!(
            !mp.starts_with("/work") && !mp.starts_with("/home") && !mp.contains(&data_root),
            "host mount visible in the container: {line}"
        );
    }
    let r = run(&d, &[], &["ls", "/dev"]).ok();
    for dev in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm",
    ] {
        assert!(
            r.stdout.split_whitespace().any(|x| x == dev),
            "/dev/{dev} missing: {}",
            r.stdout
        );
    }
}

fn exit_codes_env_workdir_user(rt: &str) {
    require_kernel!();
    let Some(d) = daemon(rt) else { return };
    assert_eq!(run(&d, &[], &["sh", "-c", "exit 3"]).code, 3);
    let r = run(&d, &["-e", "FISH=cod"], &["sh", "-c", "echo $FISH"]).ok();
    assert_eq!(r.stdout.trim(), "cod");
    let r = run(&d, &["-w", "/tmp/work"], &["pwd"]).ok();
    assert_eq!(r.stdout.trim(), "/tmp/work");
    let r = run(&d, &["-u", "app"], &["id"]).ok();
    assert!(
        r.stdout.contains("uid=1000(app) gid=1000(app)"),
        "{}",
        r.stdout
    );
    let r = run(&d, &["-u", "4242:4343"], &["id", "-u"]).ok();
    assert_eq!(r.stdout.trim(), "4242");
    let r = run(&d, &[], &["no-such-command"]);
    assert_eq!(r.code, 127, "{r:?}");
    assert!(r.stderr.contains("no-such-command"), "{r:?}");
}

fn capabilities_default_and_changed(rt: &str) {
    require_kernel!();
    let Some(d) = daemon(rt) else { return };
    let capeff = |flags: &[&str]| {
        let r = run(&d, flags, &["grep", "CapEff", "/proc/self/status"]).ok();
        r.stdout
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(capeff(&[]), "00000000a80425fb", "Docker's default set");
    assert_eq!(capeff(&["--cap-drop", "NET_RAW"]), "00000000a80405fb");
    assert_eq!(capeff(&["--cap-add", "SYS_ADMIN"]), "00000000a82425fb");
    assert_eq!(capeff(&["--cap-drop", "ALL"]), "0000000000000000");
    let r = run(&d, &["-u", "app"], &["grep", "CapEff", "/proc/self/status"]).ok();
    assert!(
        r.stdout.contains("0000000000000000"),
        "non-root has no effective caps: {}",
        r.stdout
    );
}

fn seccomp_forbids_unshare(rt: &str) {
    require_kernel!();
    let Some(d) = daemon(rt) else { return };
    let r = run(&d, &[], &["unshare", "-U", "true"]);
    assert_ne!(r.code, 0, "unshare must be refused: {r:?}");
    assert!(
        r.stderr.contains("Operation not permitted"),
        "EPERM expected: {r:?}"
    );
    // The same call without the filter works, so it was the filter that refused it.
    let r = run(
        &d,
        &["--security-opt", "seccomp=unconfined"],
        &["unshare", "-U", "true"],
    );
    assert_eq!(r.code, 0, "{r:?}");
}

fn read_only_root(rt: &str) {
    require_kernel!();
    let Some(d) = daemon(rt) else { return };
    let r = run(&d, &["--read-only"], &["touch", "/x"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("Read-only file system"), "{r:?}");
    run(&d, &[], &["touch", "/x"]).ok();
}

fn memory_limit_kills(rt: &str) {
    require_kernel!();
    let Some(d) = daemon(rt) else { return };
    // tail keeps the current line in memory, and /dev/zero never ends one.
    let r = run(&d, &["--memory", "32m"], &["tail", "/dev/zero"]);
    assert_eq!(r.code, 137, "killed by the OOM killer: {r:?}");
}

fn pids_limit_holds(rt: &str) {
    require_kernel!();
    let Some(d) = daemon(rt) else { return };
    let script = "for i in $(seq 30); do sleep 1 & done; wait; echo finished";
    let r = run(&d, &["--pids-limit", "10"], &["sh", "-c", script]);
    assert!(
        r.stderr.contains("can't fork"),
        "the 11th process is refused: {r:?}"
    );
    assert!(!r.stdout.contains("finished"), "{r:?}");
    let r = run(&d, &["--pids-limit", "100"], &["sh", "-c", script]).ok();
    assert!(
        r.stdout.contains("finished"),
        "a higher limit lets all 30 run: {r:?}"
    );
}

fn stop_signal_then_kill(rt: &str) {
    require_kernel!();
    let Some(d) = daemon(rt) else { return };
    let script = "trap 'echo got-term; exit 0' TERM; echo ready; while true; do sleep 0.1; done";
    let id = d
        .shoal(&[
            "container",
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            "trapper",
            IMG,
            "sh",
            "-c",
            script,
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    assert!(wait_for(Duration::from_secs(10), || d
        .shoal(&["container", "logs", &id])
        .stdout
        .contains("ready")));
    d.shoal(&["container", "stop", "trapper"]).ok();
    assert!(
        d.shoal(&["container", "logs", "trapper"])
            .stdout
            .contains("got-term")
    );
    let r = d.shoal(&["container", "inspect", "trapper"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v[0]["summary"]["exit_code"], 0, "{}", r.stdout);
    // PID 1 ignores SIGTERM without a handler: stop kills it after the grace period.
    d.shoal(&[
        "container",
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "stubborn",
        IMG,
        "sleep",
        "1000",
    ])
    .ok();
    let t = std::time::Instant::now();
    d.shoal(&["container", "stop", "-t", "1", "stubborn"]).ok();
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "waited the grace period"
    );
    let r = d.shoal(&["container", "inspect", "stubborn"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v[0]["summary"]["exit_code"], 137);
}

fn logs_tail_and_follow(rt: &str) {
    require_kernel!();
    let Some(d) = daemon(rt) else { return };
    let script = "for i in 1 2 3; do echo out$i; echo err$i >&2; done; sleep 0.3; echo last";
    let r = d
        .shoal(&[
            "container",
            "run",
            "--network",
            "none",
            "--name",
            "talker",
            IMG,
            "sh",
            "-c",
            script,
        ])
        .ok();
    assert_eq!(
        r.stdout, "out1\nout2\nout3\nlast\n",
        "foreground run streams stdout"
    );
    assert_eq!(r.stderr, "err1\nerr2\nerr3\n", "and stderr");
    let r = d
        .shoal(&["container", "logs", "--tail", "1", "talker"])
        .ok();
    assert_eq!(r.stdout, "last\n");
    assert_eq!(r.stderr, "");
    let r = d.shoal(&["container", "logs", "talker"]).ok();
    assert_eq!(
        r.stderr, "err1\nerr2\nerr3\n",
        "logs keep the streams apart"
    );
    let r = d.shoal(&["container", "logs", "-t", "talker"]).ok();
    assert!(
        r.stdout.lines().all(|l| l.len() > 20 && l.contains('T')),
        "timestamps: {}",
        r.stdout
    );
    // Follow ends when the container does.
    d.shoal(&[
        "container",
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "ticker",
        IMG,
        "sh",
        "-c",
        "for i in 1 2 3 4 5; do echo tick$i; sleep 0.2; done",
    ])
    .ok();
    let r = d.shoal(&["container", "logs", "-f", "ticker"]).ok();
    assert_eq!(r.stdout, "tick1\ntick2\ntick3\ntick4\ntick5\n");
}

fn exec_in_running_container(rt: &str) {
    require_kernel!();
    let Some(d) = daemon(rt) else { return };
    d.shoal(&[
        "container",
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "host1",
        "--hostname",
        "inside",
        IMG,
        "sleep",
        "1000",
    ])
    .ok();
    let r = d.shoal(&["container", "exec", "host1", "hostname"]).ok();
    assert_eq!(r.stdout.trim(), "inside");
    let r = d
        .shoal(&[
            "container",
            "exec",
            "host1",
            "sh",
            "-c",
            "ls /proc | grep -c '^[0-9]'",
        ])
        .ok();
    assert!(
        r.stdout.trim().parse::<u32>().unwrap() <= 4,
        "exec joins the PID namespace: {}",
        r.stdout
    );
    let r = d.shoal(&["container", "exec", "host1", "sh", "-c", "exit 7"]);
    assert_eq!(r.code, 7);
    d.shoal(&["container", "rm", "-f", "host1"]).ok();
}

fn nothing_left_after_rm(rt: &str) {
    require_kernel!();
    let Some(d) = daemon(rt) else { return };
    d.shoal(&[
        "container",
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "tmp",
        "--memory",
        "64m",
        IMG,
        "sleep",
        "1000",
    ])
    .ok();
    assert!(
        !d.leftover_mounts().is_empty(),
        "the running container has its root mounted"
    );
    assert!(
        !d.leftover_cgroups().is_empty() || rt != "builtin",
        "and a cgroup"
    );
    d.shoal(&["container", "rm", "-f", "tmp"]).ok();
    assert!(d.leftover_mounts().is_empty(), "{:?}", d.leftover_mounts());
    assert!(
        wait_for(Duration::from_secs(5), || d.leftover_cgroups().is_empty()),
        "{:?}",
        d.leftover_cgroups()
    );
    assert!(
        !d.data_root
            .join("containers")
            .read_dir()
            .unwrap()
            .flatten()
            .any(|e| e.path().is_dir())
    );
    let r = d.shoal(&["container", "ls", "-a", "-q"]).ok();
    assert!(r.stdout.trim().is_empty());
}

fn live_restore_after_kill9(rt: &str) {
    require_kernel!();
    let Some(mut d) = daemon(rt) else { return };
    let script =
        "trap 'exit 42' TERM; i=0; while true; do echo line$i; i=$((i+1)); sleep 0.1; done";
    d.shoal(&[
        "container",
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "survivor",
        IMG,
        "sh",
        "-c",
        script,
    ])
    .ok();
    assert!(wait_for(Duration::from_secs(10), || d
        .shoal(&["container", "logs", "survivor"])
        .stdout
        .contains("line3")));
    d.kill9();
    std::thread::sleep(Duration::from_millis(300));
    d.restart();
    let r = d.shoal(&["container", "ls"]).ok();
    assert!(
        r.stdout.contains("survivor"),
        "still running after the daemon restart: {}",
        r.stdout
    );
    let before = d
        .shoal(&["container", "logs", "survivor"])
        .ok()
        .stdout
        .lines()
        .count();
    assert!(
        wait_for(Duration::from_secs(10), || {
            d.shoal(&["container", "logs", "survivor"])
                .stdout
                .lines()
                .count()
                > before + 2
        }),
        "logs keep growing"
    );
    d.shoal(&["container", "stop", "survivor"]).ok();
    let r = d.shoal(&["container", "wait", "survivor"]).ok();
    assert_eq!(r.stdout.trim(), "42", "exit code collected after restore");
}
