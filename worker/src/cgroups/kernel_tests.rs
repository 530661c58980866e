//! Cgroups on this host's real kernel (root only). Each test works under its own
//! `shoal-test-<pid>-<n>` parent, removed with everything in it by a guard.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
};

use super::tree_tests::resources;
use super::*;

/// A scratch parent cgroup; dropping it destroys the cgroups made under it, then it.
struct Scratch {
    layout: Layout,
    top: String,
    made: Vec<Cgroup>,
}

impl Scratch {
    /// None (the test skips) when not root.
    fn new() -> Option<Scratch> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: needs root to create cgroups");
            return None;
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Some(Scratch {
            layout: Layout::detect().expect("cgroups mounted"),
            top: format!("shoal-test-{}-{n}", std::process::id()),
            made: Vec::new(),
        })
    }

    fn create(&mut self, name: &str, res: &LinuxResources) -> Result<Cgroup, CgroupError> {
        let cg = Cgroup::create(&self.layout, &format!("{}/{name}", self.top), res)?;
        self.made.push(cg.clone());
        Ok(cg)
    }

    /// The cgroup's directory in the hierarchy holding `controller`'s files.
    fn dir(&self, cg: &Cgroup, controller: &str) -> PathBuf {
        match &self.layout {
            Layout::V1 { .. } => self
                .layout
                .v1_root(controller)
                .expect("controller mounted")
                .join(cg.path()),
            Layout::V2 { root } => root.join(cg.path()),
        }
    }

    fn top_dirs(&self) -> Vec<PathBuf> {
        let top = Cgroup::open(&self.layout, &self.top).expect("path");
        top.dirs().into_iter().map(|d| d.path).collect()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for cg in &self.made {
            let _ = cg.destroy();
        }
        if let Ok(top) = Cgroup::open(&self.layout, &self.top) {
            let _ = top.destroy();
        }
    }
}

/// A child process killed and reaped when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sh -c script` that waits for a line on stdin before running `script`, so the test
/// can move it into a cgroup first.
fn gated_shell(script: &str) -> Reaped {
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("read go; {script}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sh");
    Reaped(child)
}

fn release(child: &mut Reaped) {
    let stdin = child.0.stdin.as_mut().expect("piped stdin");
    stdin.write_all(b"go\n").expect("release the shell");
}

fn wait_exit(child: &mut Reaped, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn read(p: PathBuf) -> String {
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

#[test]
fn limits_join_and_destroy() {
    let Some(mut s) = Scratch::new() else { return };
    let cg = s.create("x", &resources()).expect("create");
    let mut child = Reaped(
        Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep"),
    );
    let pid = i32::try_from(child.0.id()).expect("pid fits");
    cg.add_process(pid).expect("join");
    assert_eq!(cg.pids(), vec![pid]);
    match &s.layout {
        Layout::V1 { unified, .. } => {
            let mem = s.dir(&cg, "memory");
            assert_eq!(read(mem.join("memory.limit_in_bytes")), "67108864");
            if mem.join("memory.memsw.limit_in_bytes").exists() {
                assert_eq!(read(mem.join("memory.memsw.limit_in_bytes")), "134217728");
            }
            assert_eq!(read(s.dir(&cg, "pids").join("pids.max")), "32");
            let cpu = s.dir(&cg, "cpu");
            assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "50000");
            assert_eq!(read(cpu.join("cpu.shares")), "512");
            // The process joined every v1 hierarchy, and the unified one beside them.
            for (c, _) in V1_CONTROLLERS.iter().zip(0..) {
                if s.layout.v1_root(c).is_some() {
                    assert_eq!(
                        read(s.dir(&cg, c).join("cgroup.procs")),
                        pid.to_string(),
                        "{c}"
                    );
                }
            }
            if let Some(u) = unified {
                assert_eq!(
                    read(u.join(cg.path()).join("cgroup.procs")),
                    pid.to_string()
                );
            }
            let cpus = read(
                s.layout
                    .v1_root("cpuset")
                    .expect("cpuset")
                    .join("cpuset.cpus"),
            );
            assert_eq!(read(s.dir(&cg, "cpuset").join("cpuset.cpus")), cpus);
        }
        Layout::V2 { root } => {
            let d = root.join(cg.path());
            assert_eq!(read(d.join("memory.max")), "67108864");
            assert_eq!(read(d.join("pids.max")), "32");
            assert_eq!(read(d.join("cpu.max")), "50000 100000");
            assert_eq!(read(d.join("cpu.weight")), "20");
        }
    }
    assert!(!cg.oom_killed());
    let stats = cg.stats();
    assert_eq!(stats.memory_limit, Some(64 << 20));
    assert_eq!(stats.pids_current, Some(1));
    cg.destroy().expect("destroy");
    let status = wait_exit(&mut child, Duration::from_secs(5)).expect("sleep was killed");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(!cg.exists());
    assert!(
        cg.dirs().iter().all(|d| !d.path.exists()),
        "{:?}",
        cg.dirs()
    );
    cg.destroy().expect("destroy is idempotent");
    // The parent shoal made stays for siblings; the guard removes it.
    assert!(s.top_dirs().iter().any(|d| d.exists()));
}

#[test]
fn pids_limit_stops_a_fork_loop() {
    let Some(mut s) = Scratch::new() else { return };
    let res = LinuxResourcesBuilder::default()
        .pids(LinuxPidsBuilder::default().limit(10).build().expect("pids"))
        .build()
        .expect("resources");
    let cg = s.create("p", &res).expect("create");
    let mut shell = gated_shell("i=0; while [ $i -lt 40 ]; do sleep 30 & i=$((i+1)); done; wait");
    cg.add_process(i32::try_from(shell.0.id()).expect("pid"))
        .expect("join");
    release(&mut shell);
    // The shell forks until the kernel refuses; count while it tries, then after.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut most = 0;
    let mut settled = 0;
    while Instant::now() < deadline && settled < 20 {
        let n = cg.pids().len();
        settled = if n == most { settled + 1 } else { 0 };
        most = most.max(n);
        assert!(n <= 10, "{n} processes with pids.max 10");
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(most >= 9, "the shell started its sleeps ({most} seen)");
    let current = read(s.dir(&cg, "pids").join("pids.current"));
    assert!(
        current.parse::<u32>().expect("pids.current") <= 10,
        "{current}"
    );
    let events = read(s.dir(&cg, "pids").join("pids.events"));
    let refused: u64 = events
        .lines()
        .find_map(|l| l.strip_prefix("max "))
        .and_then(|n| n.trim().parse().ok())
        .expect("pids.events max");
    assert!(refused > 0, "the kernel refused forks: {events}");
    cg.destroy().expect("destroy");
    assert!(cg.pids().is_empty());
}

#[test]
fn oom_kill_is_reported() {
    let Some(mut s) = Scratch::new() else { return };
    let res = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(16 << 20)
                .swap(16 << 20)
                .build()
                .expect("memory"),
        )
        .build()
        .expect("resources");
    let cg = s.create("oom", &res).expect("create");
    // dd fills a 256 MiB buffer: far over the limit.
    let mut shell = gated_shell("exec dd if=/dev/zero of=/dev/null bs=256M count=1");
    cg.add_process(i32::try_from(shell.0.id()).expect("pid"))
        .expect("join");
    assert!(!cg.oom_killed());
    release(&mut shell);
    let status = wait_exit(&mut shell, Duration::from_secs(20)).expect("dd ended");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert!(cg.oom_killed());
}

#[test]
fn kernel_refusal_names_the_limit_and_leaves_nothing() {
    let Some(mut s) = Scratch::new() else { return };
    let res = LinuxResourcesBuilder::default()
        .cpu(
            LinuxCpuBuilder::default()
                .cpus("0-1023")
                .build()
                .expect("cpu"),
        )
        .build()
        .expect("resources");
    let e = s
        .create("bad", &res)
        .expect_err("no host has CPU 1023 here");
    assert!(
        matches!(
            e,
            CgroupError::Refused {
                limit: "cpuset cpus",
                ..
            }
        ) || matches!(
            e,
            CgroupError::MissingController {
                limit: "cpuset cpus",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("cpuset cpus"), "{e}");
    // The parent was made by this call too, so it is gone as well.
    assert!(
        s.top_dirs().iter().all(|d| !d.exists()),
        "{:?}",
        s.top_dirs()
    );
}

#[test]
fn freeze_and_thaw() {
    let Some(mut s) = Scratch::new() else { return };
    let cg = s.create("f", &LinuxResources::default()).expect("create");
    let mut child = Reaped(
        Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep"),
    );
    cg.add_process(i32::try_from(child.0.id()).expect("pid"))
        .expect("join");
    cg.freeze().expect("freeze");
    assert!(cg.is_frozen());
    // destroy thaws first, so a frozen container can still be removed.
    cg.destroy().expect("destroy frozen");
    let status = wait_exit(&mut child, Duration::from_secs(5)).expect("killed");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(!cg.exists());
}
