//! Cgroups for containers, on both layouts a host may have: v1 (one hierarchy per
//! controller under /sys/fs/cgroup, maybe with a v2 mount beside them at
//! /sys/fs/cgroup/unified: "hybrid") and v2 (one unified hierarchy at /sys/fs/cgroup).
//! Limits come from the OCI spec's `linux.resources`. On a hybrid host the limits go to v1
//! and the process joins the unified hierarchy too, as runc does.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;

/// Errors of cgroup management.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup file could not be written or read.
    #[error("cgroup {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A limit the kernel refused.
    #[error("{0}")]
    Limit(String),
    /// No cgroup filesystem found.
    #[error("no cgroup filesystem mounted at /sys/fs/cgroup")]
    NoCgroups,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The controllers shoal uses on v1.
const V1_CONTROLLERS: &[&str] = &[
    "memory", "cpu", "cpuacct", "pids", "cpuset", "devices", "freezer", "blkio",
];

/// How the host's cgroups are laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One hierarchy per controller.
    V1 {
        /// Mount point of each controller we use that the host has.
        controllers: Vec<(String, PathBuf)>,
        /// A v2 hierarchy beside them, if mounted (hybrid).
        unified: Option<PathBuf>,
    },
    /// One unified hierarchy.
    V2 {
        /// Its mount point.
        root: PathBuf,
    },
}

impl Layout {
    /// Reads the layout of this host.
    pub fn detect() -> Result<Layout, CgroupError> {
        Self::detect_at(Path::new("/sys/fs/cgroup"))
    }

    /// Reads the layout under `root` (a test may give a fake tree).
    pub fn detect_at(root: &Path) -> Result<Layout, CgroupError> {
        if root.join("cgroup.controllers").exists() {
            return Ok(Layout::V2 {
                root: root.to_path_buf(),
            });
        }
        let controllers: Vec<(String, PathBuf)> = V1_CONTROLLERS
            .iter()
            .map(|c| (c.to_string(), root.join(c)))
            .filter(|(_, p)| p.join("cgroup.procs").exists())
            .collect();
        if controllers.is_empty() {
            return Err(CgroupError::NoCgroups);
        }
        let unified = root.join("unified");
        Ok(Layout::V1 {
            controllers,
            unified: unified.join("cgroup.procs").exists().then_some(unified),
        })
    }
}

/// One container's cgroup: a directory in each hierarchy.
#[derive(Debug, Clone)]
pub struct Cgroup {
    layout: Layout,
    /// Relative path, like `shoal/<id>`.
    path: String,
}

/// The `linux.cgroupsPath` to give external runtimes for the same cgroup.
pub fn cgroups_path_for(parent: &str, id: &str) -> String {
    format!("/{parent}/{id}")
}

/// The v2 weight for v1 shares, as runc converts them.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

impl Cgroup {
    /// Creates the cgroup and writes its limits. On failure nothing is left.
    pub fn create(
        layout: &Layout,
        path: &str,
        res: &LinuxResources,
    ) -> Result<Cgroup, CgroupError> {
        let cg = Cgroup {
            layout: layout.clone(),
            path: path.trim_matches('/').to_string(),
        };
        let result = cg.make_dirs().and_then(|()| cg.apply(res));
        if let Err(e) = result {
            let _ = cg.destroy();
            return Err(e);
        }
        Ok(cg)
    }

    /// An existing cgroup (after a daemon restart).
    pub fn open(layout: &Layout, path: &str) -> Cgroup {
        Cgroup {
            layout: layout.clone(),
            path: path.trim_matches('/').to_string(),
        }
    }

    /// Every directory of this cgroup, with the controller it belongs to ("" for v2).
    fn dirs(&self) -> Vec<(String, PathBuf)> {
        match &self.layout {
            Layout::V1 {
                controllers,
                unified,
            } => {
                let mut v: Vec<_> = controllers
                    .iter()
                    .map(|(c, root)| (c.clone(), root.join(&self.path)))
                    .collect();
                if let Some(u) = unified {
                    v.push((String::new(), u.join(&self.path)));
                }
                v
            }
            Layout::V2 { root } => vec![(String::new(), root.join(&self.path))],
        }
    }

    fn make_dirs(&self) -> Result<(), CgroupError> {
        match &self.layout {
            Layout::V1 {
                controllers,
                unified,
            } => {
                for (c, root) in controllers {
                    mkdirs(root, &self.path, |dir, parent| {
                        // A new cpuset cgroup is empty until it gets cpus and mems.
                        if c == "cpuset" {
                            for f in ["cpuset.cpus", "cpuset.mems"] {
                                let v = std::fs::read_to_string(parent.join(f)).unwrap_or_default();
                                let _ = std::fs::write(dir.join(f), v.trim());
                            }
                        }
                        Ok(())
                    })?;
                }
                if let Some(u) = unified {
                    mkdirs(u, &self.path, |_, _| Ok(()))?;
                }
                Ok(())
            }
            Layout::V2 { root } => mkdirs(root, &self.path, |_, parent| {
                // Delegate the controllers we limit to the new level.
                let available =
                    std::fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
                let wanted: Vec<String> = ["cpu", "memory", "pids", "cpuset", "io"]
                    .iter()
                    .filter(|c| available.split_whitespace().any(|a| a == **c))
                    .map(|c| format!("+{c}"))
                    .collect();
                if !wanted.is_empty() {
                    let f = parent.join("cgroup.subtree_control");
                    std::fs::write(&f, wanted.join(" ")).map_err(io(&f))?;
                }
                Ok(())
            }),
        }
    }

    fn write(&self, controller: &str, file: &str, value: &str) -> Result<(), CgroupError> {
        for (c, dir) in self.dirs() {
            let matches = match &self.layout {
                Layout::V1 { .. } => c == controller,
                Layout::V2 { .. } => true,
            };
            if matches {
                let p = dir.join(file);
                return std::fs::write(&p, value).map_err(|e| {
                    if e.raw_os_error() == Some(libc::EINVAL) || e.raw_os_error() == Some(libc::EBUSY) {
                        CgroupError::Limit(format!(
                            "the kernel refused {file} = {value}: the limit is out of range for this host"
                        ))
                    } else {
                        io(&p)(e)
                    }
                });
            }
        }
        Ok(())
    }

    fn has(&self, controller: &str, file: &str) -> bool {
        self.dirs().iter().any(|(c, d)| {
            (matches!(self.layout, Layout::V2 { .. }) || c == controller) && d.join(file).exists()
        })
    }

    fn apply(&self, res: &LinuxResources) -> Result<(), CgroupError> {
        let v2 = matches!(self.layout, Layout::V2 { .. });
        if let Some(mem) = res.memory() {
            if let Some(limit) = mem.limit().filter(|l| *l > 0) {
                if v2 {
                    self.write("memory", "memory.max", &limit.to_string())?;
                    if let Some(swap) = mem.swap().filter(|s| *s > 0) {
                        // v1's memsw counts memory too; v2's swap.max is swap alone.
                        self.write(
                            "memory",
                            "memory.swap.max",
                            &(swap - limit).max(0).to_string(),
                        )?;
                    }
                } else {
                    self.write("memory", "memory.limit_in_bytes", &limit.to_string())?;
                    if self.has("memory", "memory.memsw.limit_in_bytes") {
                        let swap = mem.swap().filter(|s| *s >= limit).unwrap_or(limit * 2);
                        self.write("memory", "memory.memsw.limit_in_bytes", &swap.to_string())?;
                    }
                }
            }
            if let Some(r) = mem.reservation().filter(|r| *r > 0) {
                let file = if v2 {
                    "memory.low"
                } else {
                    "memory.soft_limit_in_bytes"
                };
                self.write("memory", file, &r.to_string())?;
            }
        }
        if let Some(cpu) = res.cpu() {
            let period = cpu.period().unwrap_or(100_000);
            if let Some(quota) = cpu.quota().filter(|q| *q > 0) {
                if v2 {
                    self.write("cpu", "cpu.max", &format!("{quota} {period}"))?;
                } else {
                    self.write("cpu", "cpu.cfs_period_us", &period.to_string())?;
                    self.write("cpu", "cpu.cfs_quota_us", &quota.to_string())?;
                }
            }
            if let Some(shares) = cpu.shares().filter(|s| *s > 0) {
                if v2 {
                    self.write("cpu", "cpu.weight", &shares_to_weight(shares).to_string())?;
                } else {
                    self.write("cpu", "cpu.shares", &shares.to_string())?;
                }
            }
            if let Some(cpus) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
                self.write("cpuset", "cpuset.cpus", cpus)?;
            }
            if let Some(mems) = cpu.mems().as_deref().filter(|m| !m.is_empty()) {
                self.write("cpuset", "cpuset.mems", mems)?;
            }
        }
        if let Some(pids) = res.pids()
            && pids.limit() > 0
        {
            self.write("pids", "pids.max", &pids.limit().to_string())?;
        }
        if !v2 {
            self.apply_v1_devices()?;
        }
        Ok(())
    }

    /// The device rules every container gets on v1: nothing but the standard character
    /// devices and ptys, so a container with CAP_MKNOD cannot open the host's disks.
    /// (On v2 the same needs an eBPF program; not done yet.)
    fn apply_v1_devices(&self) -> Result<(), CgroupError> {
        if !self.has("devices", "devices.deny") {
            return Ok(());
        }
        self.write("devices", "devices.deny", "a")?;
        for rule in [
            "c 1:3 rwm",    // null
            "c 1:5 rwm",    // zero
            "c 1:7 rwm",    // full
            "c 1:8 rwm",    // random
            "c 1:9 rwm",    // urandom
            "c 5:0 rwm",    // tty
            "c 5:1 rwm",    // console
            "c 5:2 rwm",    // ptmx
            "c 136:* rwm",  // pts
            "c 10:200 rwm", // tun
            "c *:* m",
            "b *:* m",
        ] {
            self.write("devices", "devices.allow", rule)?;
        }
        Ok(())
    }

    /// Moves `pid` into the cgroup in every hierarchy.
    pub fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        let dirs = self.dirs();
        for (c, dir) in &dirs {
            let p = dir.join("cgroup.procs");
            let r = std::fs::write(&p, pid.to_string());
            // The unified hierarchy of a hybrid host is best effort.
            if c.is_empty() && matches!(self.layout, Layout::V1 { .. }) {
                continue;
            }
            r.map_err(io(&p))?;
        }
        Ok(())
    }

    /// Pids in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let dir = match &self.layout {
            Layout::V1 { controllers, .. } => controllers
                .iter()
                .find(|(c, _)| c == "pids" || c == "memory")
                .map(|(_, r)| r.join(&self.path)),
            Layout::V2 { root } => Some(root.join(&self.path)),
        };
        dir.and_then(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Whether the OOM killer has killed a process of this cgroup.
    pub fn oom_killed(&self) -> bool {
        let (file, key) = match &self.layout {
            Layout::V1 { .. } => ("memory.oom_control", "oom_kill"),
            Layout::V2 { .. } => ("memory.events", "oom_kill"),
        };
        self.dirs()
            .iter()
            .filter(|(c, _)| c == "memory" || matches!(self.layout, Layout::V2 { .. }))
            .filter_map(|(_, d)| std::fs::read_to_string(d.join(file)).ok())
            .any(|text| {
                text.lines().any(|l| {
                    let mut parts = l.split_whitespace();
                    parts.next() == Some(key)
                        && parts
                            .next()
                            .and_then(|n| n.parse::<u64>().ok())
                            .is_some_and(|n| n > 0)
                })
            })
    }

    /// Memory in use, in bytes.
    pub fn memory_usage(&self) -> Option<u64> {
        let file = match &self.layout {
            Layout::V1 { .. } => "memory.usage_in_bytes",
            Layout::V2 { .. } => "memory.current",
        };
        self.dirs()
            .iter()
            .filter(|(c, _)| c == "memory" || matches!(self.layout, Layout::V2 { .. }))
            .find_map(|(_, d)| std::fs::read_to_string(d.join(file)).ok())
            .and_then(|s| s.trim().parse().ok())
    }

    /// Kills every process left, waits for the cgroup to empty, and removes its
    /// directories. Parents it made are left (they are shared). Safe to call twice.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut last = Ok(());
        for (_, dir) in self.dirs() {
            let mut tries = 0;
            loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 50 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => {
                        last = Err(io(&dir)(e));
                        break;
                    }
                }
            }
        }
        last
    }
}

/// Creates `root/rel` one level at a time, calling `init(dir, parent)` for each new level.
fn mkdirs(
    root: &Path,
    rel: &str,
    mut init: impl FnMut(&Path, &Path) -> Result<(), CgroupError>,
) -> Result<(), CgroupError> {
    let mut dir = root.to_path_buf();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        let parent = dir.clone();
        dir.push(part);
        if !dir.exists() {
            std::fs::create_dir(&dir).or_else(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Ok(())
                } else {
                    Err(io(&dir)(e))
                }
            })?;
            init(&dir, &parent)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
    };

    fn resources() -> LinuxResources {
        LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64 << 20)
                    .swap(128 << 20)
                    .build()
                    .unwrap(),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .quota(150_000)
                    .period(100_000u64)
                    .shares(512u64)
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(32).build().unwrap())
            .build()
            .unwrap()
    }

    fn fake_v1(root: &Path) {
        for c in V1_CONTROLLERS {
            std::fs::create_dir_all(root.join(c)).unwrap();
            std::fs::write(root.join(c).join("cgroup.procs"), "").unwrap();
        }
        std::fs::write(root.join("cpuset/cpuset.cpus"), "0-1\n").unwrap();
        std::fs::write(root.join("cpuset/cpuset.mems"), "0\n").unwrap();
    }

    fn read(p: PathBuf) -> String {
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn detects_layouts() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Layout::detect_at(dir.path()),
            Err(CgroupError::NoCgroups)
        ));
        fake_v1(dir.path());
        match Layout::detect_at(dir.path()).unwrap() {
            Layout::V1 {
                controllers,
                unified,
            } => {
                assert_eq!(controllers.len(), V1_CONTROLLERS.len());
                assert!(unified.is_none());
            }
            other => panic!("{other:?}"),
        }
        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        assert_eq!(
            Layout::detect_at(v2.path()).unwrap(),
            Layout::V2 {
                root: v2.path().to_path_buf()
            }
        );
    }

    #[test]
    fn writes_v1_limits() {
        let dir = tempfile::tempdir().unwrap();
        fake_v1(dir.path());
        // The kernel creates these files; in a fake tree the test does.
        let layout = Layout::detect_at(dir.path()).unwrap();
        let cg = Cgroup::create(&layout, "shoal/c1", &LinuxResources::default()).unwrap();
        let mem = dir.path().join("memory/shoal/c1");
        std::fs::write(mem.join("memory.memsw.limit_in_bytes"), "").unwrap();
        std::fs::write(dir.path().join("devices/shoal/c1/devices.deny"), "").unwrap();
        cg.apply(&resources()).unwrap();
        assert_eq!(
            read(mem.join("memory.limit_in_bytes")),
            (64u64 << 20).to_string()
        );
        assert_eq!(
            read(mem.join("memory.memsw.limit_in_bytes")),
            (128u64 << 20).to_string()
        );
        let cpu = dir.path().join("cpu/shoal/c1");
        assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "150000");
        assert_eq!(read(cpu.join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(cpu.join("cpu.shares")), "512");
        assert_eq!(read(dir.path().join("pids/shoal/c1/pids.max")), "32");
        assert_eq!(read(dir.path().join("cpuset/shoal/cpuset.cpus")), "0-1");
        assert_eq!(read(dir.path().join("cpuset/shoal/c1/cpuset.mems")), "0");
        // The last rule written wins in a plain file; the kernel would accumulate them.
        assert_eq!(read(dir.path().join("devices/shoal/c1/devices.deny")), "a");
    }

    #[test]
    fn writes_v2_limits_and_delegates_controllers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        let layout = Layout::detect_at(dir.path()).unwrap();
        let cg = Cgroup::create(&layout, "shoal/c2", &resources()).unwrap();
        let d = dir.path().join("shoal/c2");
        assert_eq!(read(d.join("memory.max")), (64u64 << 20).to_string());
        assert_eq!(read(d.join("memory.swap.max")), (64u64 << 20).to_string());
        assert_eq!(read(d.join("cpu.max")), "150000 100000");
        assert_eq!(
            read(d.join("cpu.weight")),
            shares_to_weight(512).to_string()
        );
        assert_eq!(read(d.join("pids.max")), "32");
        assert_eq!(
            read(dir.path().join("cgroup.subtree_control")),
            "+cpu +memory +pids +cpuset +io"
        );
        drop(cg);
    }

    #[test]
    fn converts_shares_to_weight() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), 0);
    }

    /// Real kernel: limits are applied, a process joins, destroy kills it and removes the
    /// directories.
    #[test]
    fn real_cgroup_lifecycle() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: needs root to create cgroups");
            return;
        }
        let layout = Layout::detect().expect("cgroups mounted");
        let path = format!("shoal-unit-{}/c", std::process::id());
        let cg = Cgroup::create(&layout, &path, &resources()).expect("create");
        struct Guard(Cgroup, Layout, String);
        impl Drop for Guard {
            fn drop(&mut self) {
                let _ = self.0.destroy();
                let parent = self.2.split('/').next().unwrap_or_default().to_string();
                let _ = Cgroup::open(&self.1, &parent).destroy();
            }
        }
        let guard = Guard(cg, layout.clone(), path.clone());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        guard.0.add_process(child.id() as i32).unwrap();
        assert_eq!(guard.0.pids(), vec![child.id() as i32]);
        assert!(!guard.0.oom_killed());
        match &layout {
            Layout::V1 { controllers, .. } => {
                let mem = &controllers.iter().find(|(c, _)| c == "memory").unwrap().1;
                assert_eq!(
                    read(mem.join(&path).join("memory.limit_in_bytes")).trim(),
                    (64u64 << 20).to_string()
                );
            }
            Layout::V2 { root } => {
                assert_eq!(
                    read(root.join(&path).join("memory.max")).trim(),
                    (64u64 << 20).to_string()
                );
            }
        }
        guard.0.destroy().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "destroy killed the process");
        assert!(guard.0.dirs().iter().all(|(_, d)| !d.exists()));
    }
}
