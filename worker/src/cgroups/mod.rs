//! Cgroups for containers, on both layouts a host may have: v1 (one hierarchy per
//! controller under /sys/fs/cgroup, maybe with a v2 mount beside them at
//! /sys/fs/cgroup/unified: "hybrid") and v2 (one unified hierarchy at /sys/fs/cgroup).
//! Limits come from the OCI spec's `linux.resources` and are checked before anything is
//! made ([`plan`]). On a hybrid host the limits go to v1 and the process joins the unified
//! hierarchy too, best effort, as runc does. See README.md beside this file.
//!
//! (Over 600 lines: one type, `Cgroup`, whose every step has a v1 and a v2 branch that
//! must change together; its layouts and limits are in modules of their own.)

mod layout;
mod limits;

#[cfg(test)]
mod kernel_tests;
#[cfg(test)]
mod tree_tests;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

pub use layout::{Layout, V1_CONTROLLERS, V2_CONTROLLERS};
pub use limits::{LimitWrite, MIN_MEMORY, nano_cpus_to_quota, plan, shares_to_weight};

/// How long [`Cgroup::destroy`] keeps killing before it gives up.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a freeze or thaw may take, and an empty cgroup may stay busy for rmdir.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(5);

/// Errors of cgroup management.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup file or directory could not be read, written or removed.
    #[error("cgroup {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A limit that is wrong whatever the host: caught before anything is created.
    #[error("invalid {limit} {value}: {reason}")]
    InvalidLimit {
        /// The limit as a user names it ("memory limit").
        limit: &'static str,
        /// The value given.
        value: String,
        /// Why, and what to give instead.
        reason: String,
    },
    /// A limit the kernel of this host refused.
    #[error(
        "the kernel refused {limit} {value} ({path}): {source}; it is out of range for this host, change or drop it"
    )]
    Refused {
        /// The limit as a user names it.
        limit: &'static str,
        /// The value written.
        value: String,
        /// The file.
        path: PathBuf,
        /// The kernel's error.
        source: std::io::Error,
    },
    /// A limit needs a controller this host does not offer at this cgroup.
    #[error(
        "{limit} needs the {controller} cgroup controller, which is not available for {path}: {fix}"
    )]
    MissingController {
        /// The limit as a user names it.
        limit: &'static str,
        /// The controller.
        controller: String,
        /// The cgroup (relative path).
        path: String,
        /// How to get it.
        fix: &'static str,
    },
    /// A cgroup path that would leave the hierarchy or name nothing.
    #[error("invalid cgroup path {path:?}: {reason}")]
    InvalidPath {
        /// The path given.
        path: String,
        /// Why.
        reason: &'static str,
    },
    /// A process could not be moved into the cgroup.
    #[error(
        "moving process {pid} into cgroup {path}: {source} (an empty cpuset.cpus or cpuset.mems gives \"no space left on device\")"
    )]
    Join {
        /// The process.
        pid: i32,
        /// The cgroup.procs file.
        path: PathBuf,
        /// The kernel's error.
        source: std::io::Error,
    },
    /// A signal could not be sent to a process of the cgroup.
    #[error("signalling process {pid} of cgroup {path}: {source}")]
    Signal {
        /// The process.
        pid: i32,
        /// The cgroup.
        path: String,
        /// The error.
        source: nix::Error,
    },
    /// The cgroup did not reach the wanted state in time.
    #[error("cgroup {path}: {what}")]
    Busy {
        /// The cgroup.
        path: String,
        /// What is still going on, and what to do.
        what: String,
    },
    /// No cgroup filesystem found.
    #[error(
        "no cgroup filesystem is mounted: mount cgroup2 at /sys/fs/cgroup (or the v1 controllers under it) and retry"
    )]
    NoCgroups,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The `linux.cgroupsPath` to give an external runtime (runc's cgroupfs driver) for the
/// cgroup shoal would make at `<parent>/<id>`: `/shoal/<id>`.
pub fn cgroups_path_for(parent: &str, id: &str) -> String {
    let parent = parent.trim_matches('/');
    if parent.is_empty() {
        format!("/{id}")
    } else {
        format!("/{parent}/{id}")
    }
}

/// What a cgroup uses now. A field is None when the host does not account it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Memory in use, bytes (page cache included).
    pub memory_usage: Option<u64>,
    /// The memory limit, bytes; None when unlimited.
    pub memory_limit: Option<u64>,
    /// Processes (and threads) in the cgroup.
    pub pids_current: Option<u64>,
    /// CPU time used, nanoseconds.
    pub cpu_usage_ns: Option<u64>,
}

/// One container's cgroup: a directory in each hierarchy.
#[derive(Debug, Clone)]
pub struct Cgroup {
    layout: Layout,
    /// Relative path, like `shoal/<id>`.
    path: String,
}

/// One directory of a cgroup.
#[derive(Debug)]
struct Dir {
    /// The hierarchy's mount point.
    root: PathBuf,
    /// The cgroup's directory in it.
    path: PathBuf,
    /// The unified hierarchy of a hybrid host: joined when possible, never required.
    best_effort: bool,
}

/// Checks a cgroup path and makes it relative: `/shoal/x/` becomes `shoal/x`.
fn relative_path(path: &str) -> Result<String, CgroupError> {
    let bad = |reason| CgroupError::InvalidPath {
        path: path.to_string(),
        reason,
    };
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return Err(bad(
            "it names the root of the hierarchy; give one like shoal/<id>",
        ));
    }
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(bad("`.` and `..` are not allowed"));
    }
    if path.contains(['\0', '\n']) {
        return Err(bad("it contains a NUL or newline"));
    }
    Ok(parts.join("/"))
}

impl Cgroup {
    /// Creates the cgroup at `path` (relative to each hierarchy's root, like
    /// `shoal/<id>`) and writes its limits. Every value is checked first; on any failure
    /// the directories this call made are removed again.
    pub fn create(
        layout: &Layout,
        path: &str,
        res: &LinuxResources,
    ) -> Result<Cgroup, CgroupError> {
        let cg = Cgroup {
            layout: layout.clone(),
            path: relative_path(path)?,
        };
        let writes = plan(layout.is_v2(), res)?;
        let mut created = Vec::new();
        let result = cg
            .make_dirs(&mut created)
            .and_then(|()| cg.write_all(&writes));
        if let Err(e) = result {
            for dir in created.iter().rev() {
                let _ = std::fs::remove_dir(dir);
            }
            return Err(e);
        }
        Ok(cg)
    }

    /// A cgroup made earlier (after a daemon restart). It may no longer exist: see
    /// [`Cgroup::exists`]; [`Cgroup::destroy`] is fine either way.
    pub fn open(layout: &Layout, path: &str) -> Result<Cgroup, CgroupError> {
        Ok(Cgroup {
            layout: layout.clone(),
            path: relative_path(path)?,
        })
    }

    /// The path relative to each hierarchy's root, like `shoal/<id>`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether the cgroup's directories exist.
    pub fn exists(&self) -> bool {
        self.dirs()
            .iter()
            .any(|d| !d.best_effort && d.path.is_dir())
    }

    /// Every directory of this cgroup, one per distinct hierarchy.
    fn dirs(&self) -> Vec<Dir> {
        match &self.layout {
            Layout::V1 {
                controllers,
                unified,
            } => {
                let mut roots: Vec<&PathBuf> = Vec::new();
                for (_, root) in controllers {
                    if !roots.contains(&root) {
                        roots.push(root);
                    }
                }
                let mut dirs: Vec<Dir> = roots
                    .into_iter()
                    .map(|root| Dir {
                        root: root.clone(),
                        path: root.join(&self.path),
                        best_effort: false,
                    })
                    .collect();
                if let Some(u) = unified {
                    dirs.push(Dir {
                        root: u.clone(),
                        path: u.join(&self.path),
                        best_effort: true,
                    });
                }
                dirs
            }
            Layout::V2 { root } => vec![Dir {
                root: root.clone(),
                path: root.join(&self.path),
                best_effort: false,
            }],
        }
    }

    fn make_dirs(&self, created: &mut Vec<PathBuf>) -> Result<(), CgroupError> {
        let cpuset = self.layout.v1_root("cpuset").map(Path::to_path_buf);
        for dir in self.dirs() {
            let is_cpuset = cpuset.as_deref() == Some(dir.root.as_path());
            let made = mkdirs(&dir.root, &self.path, created, |new, parent| {
                if is_cpuset {
                    inherit_cpuset(new, parent)
                } else {
                    Ok(())
                }
            });
            match made {
                Err(e) if dir.best_effort => {
                    tracing::debug!("joining the unified hierarchy is best effort: {e}");
                }
                other => other?,
            }
        }
        if let Layout::V2 { root } = &self.layout {
            self.delegate(root);
        }
        Ok(())
    }

    /// Enables the controllers shoal limits in every ancestor's subtree_control, so the
    /// cgroup gets their files. Best effort: a controller that stays off makes the write
    /// of a limit that needs it fail with a clear error.
    fn delegate(&self, root: &Path) {
        let offered = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let wanted: Vec<&str> = V2_CONTROLLERS
            .iter()
            .copied()
            .filter(|c| offered.split_whitespace().any(|o| o == *c))
            .collect();
        let mut dir = root.to_path_buf();
        let parts: Vec<&str> = self.path.split('/').collect();
        for part in &parts {
            let file = dir.join("cgroup.subtree_control");
            let enabled = std::fs::read_to_string(&file).unwrap_or_default();
            let missing: Vec<String> = wanted
                .iter()
                .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
                .map(|c| format!("+{c}"))
                .collect();
            if !missing.is_empty()
                && let Err(e) = std::fs::write(&file, missing.join(" "))
            {
                tracing::debug!("enabling {missing:?} in {}: {e}", file.display());
            }
            dir.push(part);
        }
    }

    fn write_all(&self, writes: &[LimitWrite]) -> Result<(), CgroupError> {
        let leaf_offers = match &self.layout {
            Layout::V2 { root } => {
                std::fs::read_to_string(root.join(&self.path).join("cgroup.controllers")).ok()
            }
            Layout::V1 { .. } => None,
        };
        for w in writes {
            let missing = |fix| CgroupError::MissingController {
                limit: w.limit,
                controller: w.controller.clone(),
                path: self.path.clone(),
                fix,
            };
            let dir = match &self.layout {
                Layout::V1 { .. } => match self.layout.v1_root(&w.controller) {
                    Some(root) => root.join(&self.path),
                    None if w.optional => continue,
                    None => {
                        return Err(missing(
                            "mount its v1 hierarchy under /sys/fs/cgroup, or drop the limit",
                        ));
                    }
                },
                Layout::V2 { root } => {
                    // Fake trees have no cgroup.controllers in new dirs; the kernel always does.
                    let offered = leaf_offers
                        .as_deref()
                        .is_none_or(|o| o.split_whitespace().any(|c| c == w.controller));
                    if !offered {
                        if w.optional {
                            continue;
                        }
                        return Err(missing(
                            "enable it in the parent cgroups' cgroup.subtree_control (under systemd, Delegate=yes), or drop the limit",
                        ));
                    }
                    root.join(&self.path)
                }
            };
            let file = dir.join(&w.file);
            if w.optional && !file.exists() {
                continue;
            }
            std::fs::write(&file, &w.value).map_err(|source| {
                let refused = [libc::EINVAL, libc::EBUSY, libc::ERANGE, libc::ENOSPC];
                if source.raw_os_error().is_some_and(|e| refused.contains(&e)) {
                    CgroupError::Refused {
                        limit: w.limit,
                        value: w.value.clone(),
                        path: file.clone(),
                        source,
                    }
                } else {
                    io(&file)(source)
                }
            })?;
        }
        Ok(())
    }

    /// Moves `pid` into the cgroup in every hierarchy (the unified one of a hybrid host
    /// best effort).
    pub fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            let file = dir.path.join("cgroup.procs");
            match std::fs::write(&file, pid.to_string()) {
                Ok(()) => {}
                Err(e) if dir.best_effort => {
                    tracing::debug!("joining {} is best effort: {e}", file.display());
                }
                Err(source) => {
                    return Err(CgroupError::Join {
                        pid,
                        path: file,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Processes in the cgroup, in any of its hierarchies, sorted.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .dirs()
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.path.join("cgroup.procs")).ok())
            .flat_map(|s| {
                s.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Sends `signal` to every process in the cgroup (SIGKILL on v2 goes through
    /// cgroup.kill, which no fork can outrun).
    pub fn kill_all(&self, signal: Signal) -> Result<(), CgroupError> {
        if let Layout::V2 { root } = &self.layout
            && signal == Signal::SIGKILL
        {
            let file = root.join(&self.path).join("cgroup.kill");
            if file.exists() && std::fs::write(&file, "1").is_ok() {
                return Ok(());
            }
        }
        for pid in self.pids() {
            match nix::sys::signal::kill(Pid::from_raw(pid), signal) {
                Ok(()) | Err(nix::Error::ESRCH) => {}
                Err(source) => {
                    return Err(CgroupError::Signal {
                        pid,
                        path: self.path.clone(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// The freezer's control file, the value to write, and how to read the state back.
    fn freezer(&self, frozen: bool) -> Result<(PathBuf, &'static str, PathBuf), CgroupError> {
        match &self.layout {
            Layout::V1 { .. } => {
                let root = self.layout.v1_root("freezer").ok_or_else(|| {
                    CgroupError::MissingController {
                        limit: "freezing",
                        controller: "freezer".into(),
                        path: self.path.clone(),
                        fix: "mount the v1 freezer hierarchy under /sys/fs/cgroup",
                    }
                })?;
                let file = root.join(&self.path).join("freezer.state");
                let value = if frozen { "FROZEN" } else { "THAWED" };
                Ok((file.clone(), value, file))
            }
            Layout::V2 { root } => {
                let dir = root.join(&self.path);
                let value = if frozen { "1" } else { "0" };
                Ok((dir.join("cgroup.freeze"), value, dir.join("cgroup.events")))
            }
        }
    }

    fn is_frozen(&self) -> bool {
        let Ok((_, _, state)) = self.freezer(true) else {
            return false;
        };
        let text = std::fs::read_to_string(state).unwrap_or_default();
        match &self.layout {
            Layout::V1 { .. } => matches!(text.trim(), "FROZEN" | "FREEZING"),
            Layout::V2 { .. } => text.lines().any(|l| l.trim() == "frozen 1"),
        }
    }

    fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        let (file, value, _) = self.freezer(frozen)?;
        std::fs::write(&file, value).map_err(io(&file))?;
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while self.is_frozen() != frozen {
            if Instant::now() >= deadline {
                let what = if frozen { "freeze" } else { "thaw" };
                return Err(CgroupError::Busy {
                    path: self.path.clone(),
                    what: format!(
                        "did not {what} within {SETTLE_TIMEOUT:?}; a process may be stuck in the kernel, retry later"
                    ),
                });
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    }

    /// Stops every process of the cgroup until [`Cgroup::thaw`].
    pub fn freeze(&self) -> Result<(), CgroupError> {
        self.set_frozen(true)
    }

    /// Lets the processes of a frozen cgroup run again.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        self.set_frozen(false)
    }

    /// Whether the OOM killer has killed a process of this cgroup (the kernel's
    /// `oom_kill` count, on v1 in memory.oom_control, on v2 in memory.events).
    pub fn oom_killed(&self) -> bool {
        let file = match &self.layout {
            Layout::V1 { .. } => self
                .layout
                .v1_root("memory")
                .map(|r| r.join(&self.path).join("memory.oom_control")),
            Layout::V2 { root } => Some(root.join(&self.path).join("memory.events")),
        };
        let text = file
            .and_then(|f| std::fs::read_to_string(f).ok())
            .unwrap_or_default();
        text.lines().any(|l| {
            l.strip_prefix("oom_kill ")
                .and_then(|n| n.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        })
    }

    /// Memory, processes and CPU time used now.
    pub fn stats(&self) -> CgroupStats {
        let num = |p: Option<PathBuf>| {
            p.and_then(|p| std::fs::read_to_string(p).ok())
                .and_then(|s| s.trim().parse::<u64>().ok())
        };
        match &self.layout {
            Layout::V1 { .. } => {
                let file =
                    |c: &str, f: &str| self.layout.v1_root(c).map(|r| r.join(&self.path).join(f));
                CgroupStats {
                    memory_usage: num(file("memory", "memory.usage_in_bytes")),
                    // v1 shows "unlimited" as a number near i64::MAX.
                    memory_limit: num(file("memory", "memory.limit_in_bytes"))
                        .filter(|l| *l < 1 << 62),
                    pids_current: num(file("pids", "pids.current")),
                    cpu_usage_ns: num(file("cpuacct", "cpuacct.usage")),
                }
            }
            Layout::V2 { root } => {
                let dir = root.join(&self.path);
                let cpu_usage_ns = std::fs::read_to_string(dir.join("cpu.stat"))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find_map(|l| l.strip_prefix("usage_usec "))
                            .and_then(|n| n.trim().parse::<u64>().ok())
                    })
                    .map(|us| us.saturating_mul(1000));
                CgroupStats {
                    memory_usage: num(Some(dir.join("memory.current"))),
                    memory_limit: num(Some(dir.join("memory.max"))),
                    pids_current: num(Some(dir.join("pids.current"))),
                    cpu_usage_ns,
                }
            }
        }
    }

    /// Kills every process left, waits (bounded) for the cgroup to empty, and removes its
    /// directory in every hierarchy. Parent directories stay: they are shared, and
    /// removing one could race with a sibling being created. Safe to call twice.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        let dirs = self.dirs();
        if dirs.iter().all(|d| !d.path.exists()) {
            return Ok(());
        }
        // A frozen v1 task cannot act on SIGKILL until thawed.
        if self.is_frozen()
            && let Err(e) = self.thaw()
        {
            tracing::debug!("thawing {} before killing: {e}", self.path);
        }
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::Busy {
                    path: self.path.clone(),
                    what: format!(
                        "processes {pids:?} still alive {KILL_TIMEOUT:?} after SIGKILL; they may be stuck in the kernel (D state), retry later"
                    ),
                });
            }
            self.kill_all(Signal::SIGKILL)?;
            std::thread::sleep(POLL);
        }
        let mut first_error = None;
        for dir in &dirs {
            if let Err(e) = remove_cgroup_dir(&dir.path) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Removes one empty cgroup directory, retrying while the kernel still tears down the
/// last exited task (EBUSY).
fn remove_cgroup_dir(dir: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(POLL);
            }
            Err(e) => return Err(io(dir)(e)),
        }
    }
}

/// Creates `root/rel` one level at a time, recording each new directory in `created` and
/// calling `init(new, parent)` for it.
fn mkdirs(
    root: &Path,
    rel: &str,
    created: &mut Vec<PathBuf>,
    init: impl Fn(&Path, &Path) -> Result<(), CgroupError>,
) -> Result<(), CgroupError> {
    let mut dir = root.to_path_buf();
    for part in rel.split('/') {
        let parent = dir.clone();
        dir.push(part);
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                created.push(dir.clone());
                init(&dir, &parent)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(&dir)(e)),
        }
    }
    Ok(())
}

/// A new v1 cpuset cgroup starts with no CPUs and no memory nodes, and no task can join
/// it: give it its parent's.
fn inherit_cpuset(dir: &Path, parent: &Path) -> Result<(), CgroupError> {
    for (file, effective) in [
        ("cpuset.cpus", "cpuset.effective_cpus"),
        ("cpuset.mems", "cpuset.effective_mems"),
    ] {
        let read = |f: &str| {
            std::fs::read_to_string(parent.join(f))
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let mut value = read(file);
        if value.is_empty() {
            value = read(effective);
        }
        let target = dir.join(file);
        std::fs::write(&target, &value).map_err(io(&target))?;
    }
    Ok(())
}
