//! Helpers for the end-to-end tests: a real `shoal daemon` on temporary roots with its own
//! cgroup parent, the `shoal` client pointed at it, and a busybox image built from Debian's
//! busybox-static. Everything a test makes is removed when its [`Daemon`] drops, even when
//! the test fails.

pub mod lab;
pub mod plugin;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `shoal` binary under test: `$SHOAL_BIN`, or `shoal` next to the test's deps dir.
pub fn shoal_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SHOAL_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir of the test binary");
    let bin = dir.join("shoal");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p shoal-cli` (tests/run.sh does)",
        bin.display()
    );
    bin
}

/// Why a test that needs the kernel cannot run here, if it cannot.
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (namespaces, mounts, cgroups)".into());
    }
    if !Path::new("/bin/busybox").exists() && !Path::new("/usr/bin/busybox").exists() {
        return Some("needs busybox-static (apt-get install busybox-static)".into());
    }
    None
}

/// Skips the calling test with a printed reason when the machine cannot run it.
#[macro_export]
macro_rules! require_kernel {
    () => {
        if let Some(reason) = $crate::skip_reason() {
            eprintln!("SKIPPED: {reason}");
            return;
        }
    };
}

/// The busybox root filesystem tarball, built once per test process.
pub fn busybox_tarball() -> &'static Path {
    static TARBALL: OnceLock<PathBuf> = OnceLock::new();
    TARBALL.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("shoal-test-images-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("image dir");
        let out = dir.join("busybox.tar");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/busybox-rootfs.sh");
        let status = Command::new("sh")
            .arg(script)
            .arg(&out)
            .status()
            .expect("running busybox-rootfs.sh");
        assert!(status.success(), "building the busybox tarball failed");
        out
    })
}

/// The result of a client command.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Self {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics with the whole output unless the command succeeded.
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "command failed: {self:#?}");
        self
    }
}

/// A daemon on its own temporary data and run roots.
pub struct Daemon {
    /// The data root.
    pub data_root: PathBuf,
    /// The run root.
    pub run_root: PathBuf,
    /// The runtime it was started with.
    pub runtime: String,
    /// Its cgroup parent, unique to this daemon.
    pub cgroup_parent: String,
    /// More daemon flags.
    pub extra_args: Vec<String>,
    child: Option<std::process::Child>,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts a daemon with `runtime` (`builtin`, `runc`, `crun`) and waits for its socket.
    pub fn start(runtime: &str) -> Daemon {
        Daemon::start_with(runtime, &[])
    }

    /// Starts a daemon with `runtime` and more flags, and waits for its socket.
    pub fn start_with(runtime: &str, extra_args: &[&str]) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("shoal-e2e-")
            .tempdir()
            .expect("temp dir");
        let tag = dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().replace("shoal-e2e-", ""))
            .unwrap_or_default();
        let mut d = Daemon {
            data_root: dir.path().join("data"),
            run_root: dir.path().join("run"),
            runtime: runtime.to_string(),
            cgroup_parent: format!("shoal-e2e-{tag}"),
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            child: None,
            _dir: dir,
        };
        d.spawn();
        d
    }

    /// The daemon's own temporary directory (its roots are in it).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// The socket clients use.
    pub fn socket(&self) -> PathBuf {
        self.run_root.join("shoal.sock")
    }

    fn spawn(&mut self) {
        if let Err(e) = self.try_spawn() {
            panic!("{e}");
        }
    }

    fn try_spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self._dir.path().join("daemon.log"))
            .map_err(|e| format!("daemon log: {e}"))?;
        let child = Command::new(shoal_bin())
            .arg("daemon")
            .arg("--data-root")
            .arg(&self.data_root)
            .arg("--run-root")
            .arg(&self.run_root)
            .arg("--runtime")
            .arg(&self.runtime)
            .arg("--cgroup-parent")
            .arg(&self.cgroup_parent)
            // Tests run daemons side by side: each manager's cluster port on its own free port.
            .arg("--listen-addr")
            .arg("127.0.0.1:0")
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting shoal daemon: {e}"))?;
        self.child = Some(child);
        let socket = self.socket();
        let ready = wait_for(Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        if !ready {
            return Err(format!("daemon did not come up; its log:\n{}", self.log()));
        }
        Ok(())
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// `kill -9` of the daemon, leaving its containers to their shims.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the daemon again on the same roots.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Runs `shoal ARGS` against this daemon.
    pub fn shoal(&self, args: &[&str]) -> Run {
        Run::from(
            Command::new(shoal_bin())
                .arg("-H")
                .arg(self.socket())
                .args(args)
                .stdin(Stdio::null())
                .output()
                .expect("running shoal"),
        )
    }

    /// Imports the busybox image as `name`.
    pub fn import_busybox(&self, name: &str) {
        let tar = busybox_tarball().to_string_lossy().into_owned();
        self.shoal(&["image", "import", &tar, name]).ok();
    }

    /// The container cgroups this daemon made that still exist.
    pub fn leftover_cgroups(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for root in [
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup/pids",
            "/sys/fs/cgroup/cpu",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup",
        ] {
            let dir = Path::new(root).join(&self.cgroup_parent);
            if let Ok(entries) = std::fs::read_dir(&dir) {
                out.extend(
                    entries
                        .flatten()
                        .filter(|e| e.path().is_dir())
                        .map(|e| e.path()),
                );
            }
        }
        out
    }

    /// Mounts under this daemon's roots that still exist.
    pub fn leftover_mounts(&self) -> Vec<String> {
        let base = self._dir.path().to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|mp| mp.starts_with(&base))
            .map(String::from)
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Remove every container through the daemon (bringing it back if a test killed
        // it), then stop it, then sweep what is left.
        if self.child.is_none() {
            let _ = self.try_spawn();
        }
        if self.child.is_some() {
            let ids = self.shoal(&["container", "ls", "-a", "-q", "--no-trunc"]);
            for id in ids.stdout.split_whitespace() {
                let _ = self.shoal(&["container", "rm", "-f", id]);
            }
        }
        self.kill9();
        let base = self._dir.path().to_string_lossy().into_owned();
        // Shims of this daemon still alive.
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&base)
                    && let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>()
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let mut mounts = self.leftover_mounts();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        // Containers whose shim died with the daemon still run in their cgroups.
        for cg in self.leftover_cgroups() {
            let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        wait_for(Duration::from_secs(5), || {
            self.leftover_cgroups().iter().all(|cg| {
                std::fs::read_to_string(cg.join("cgroup.procs"))
                    .unwrap_or_default()
                    .trim()
                    .is_empty()
            })
        });
        for cg in self.leftover_cgroups() {
            let _ = std::fs::remove_dir(&cg);
        }
        for root in [
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup/pids",
            "/sys/fs/cgroup/cpu",
            "/sys/fs/cgroup/cpuacct",
            "/sys/fs/cgroup/cpuset",
            "/sys/fs/cgroup/devices",
            "/sys/fs/cgroup/freezer",
            "/sys/fs/cgroup/blkio",
            "/sys/fs/cgroup/systemd",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup",
        ] {
            let _ = std::fs::remove_dir(Path::new(root).join(&self.cgroup_parent));
        }
    }
}

/// Polls `f` until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
