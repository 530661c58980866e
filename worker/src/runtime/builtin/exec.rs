//! `exec` for the builtin runtime: the daemon re-executes `shoal` as a hidden subcommand,
//! a fresh single-threaded process that joins the container's cgroups and namespaces,
//! forks (so the new PID namespace applies), and runs the process in the child while the
//! parent waits and passes on its exit code.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::sys::wait::{WaitStatus, waitpid};
use oci_spec::runtime::{LinuxSeccomp, Process};
use serde::{Deserialize, Serialize};

use super::process::PreparedProcess;
use crate::runtime::RuntimeError;

/// The hidden subcommand.
pub const SUBCOMMAND: &str = "__exec";

/// What the daemon asks the exec helper to run.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The container's init, as seen from the host.
    pub pid: i32,
    /// The process to run.
    pub process: Process,
    /// The container's seccomp filter.
    pub seccomp: Option<LinuxSeccomp>,
}

/// Entry point of `shoal __exec REQUEST.json`. Returns the exit code.
pub fn main(args: &[OsString]) -> i32 {
    let Some(path) = args.first() else {
        eprintln!("usage: shoal {SUBCOMMAND} REQUEST.json");
        return 125;
    };
    match run(Path::new(path)) {
        Ok(code) => code,
        Err(RuntimeError::Start { message, exit_code }) => {
            eprintln!("{message}");
            exit_code
        }
        Err(e) => {
            eprintln!("exec failed: {e}");
            126
        }
    }
}

fn run(path: &Path) -> Result<i32, RuntimeError> {
    let raw = std::fs::read(path).map_err(|e| RuntimeError::io("reading exec request", e))?;
    let _ = std::fs::remove_file(path);
    let req: ExecRequest =
        serde_json::from_slice(&raw).map_err(|e| RuntimeError::Spec(e.to_string()))?;
    let prepared = PreparedProcess::new(&req.process, req.seccomp.as_ref())?;
    join_cgroups(req.pid)?;
    // Open every namespace first: after joining the mount namespace, /proc/<pid> is gone.
    let kinds = [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ];
    let mut fds: Vec<(OwnedFd, CloneFlags)> = Vec::new();
    for (name, flag) in kinds {
        let p = PathBuf::from(format!("/proc/{}/ns/{name}", req.pid));
        let own = PathBuf::from(format!("/proc/self/ns/{name}"));
        // Joining a namespace we are already in is harmless but needs no work.
        if std::fs::read_link(&p).ok() == std::fs::read_link(&own).ok() {
            continue;
        }
        let f = std::fs::File::open(&p).map_err(|e| RuntimeError::Start {
            message: format!("the container is not running ({e})"),
            exit_code: 126,
        })?;
        fds.push((OwnedFd::from(f), flag));
    }
    for (fd, flag) in &fds {
        nix::sched::setns(fd, *flag).map_err(|e| RuntimeError::sys("joining a namespace", e))?;
    }
    drop(fds);
    // SAFETY: this helper is single-threaded; fork gives the child a full copy.
    match unsafe { nix::unistd::fork() }.map_err(|e| RuntimeError::sys("fork", e))? {
        nix::unistd::ForkResult::Child => {
            let Err(err) = prepared.exec();
            let code = match &err {
                RuntimeError::Start { exit_code, .. } => *exit_code,
                _ => 126,
            };
            eprintln!("{err}");
            // SAFETY: ends the forked child without the parent's exit handlers.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                Ok(_) | Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(RuntimeError::sys("waiting for the process", e)),
            }
        },
    }
}

/// Puts this process into every cgroup of `pid`, so limits and accounting cover it.
fn join_cgroups(pid: i32) -> Result<(), RuntimeError> {
    let me = std::process::id().to_string();
    let list = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|e| {
        RuntimeError::Start {
            message: format!("the container is not running ({e})"),
            exit_code: 126,
        }
    })?;
    for line in list.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => continue,
        };
        let base = if controllers.is_empty() {
            let unified = Path::new("/sys/fs/cgroup/unified");
            if unified.join("cgroup.procs").exists() {
                unified.to_path_buf()
            } else {
                PathBuf::from("/sys/fs/cgroup")
            }
        } else {
            let name = controllers.trim_start_matches("name=");
            let first = name.split(',').next().unwrap_or(name);
            let dir = Path::new("/sys/fs/cgroup").join(first);
            if dir.exists() {
                dir
            } else {
                Path::new("/sys/fs/cgroup").join(name)
            }
        };
        let procs = base.join(path.trim_start_matches('/')).join("cgroup.procs");
        // Best effort: a hierarchy we cannot write to is not worth failing exec for.
        let _ = std::fs::write(procs, &me);
    }
    Ok(())
}
