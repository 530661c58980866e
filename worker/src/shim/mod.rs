//! The shim: one per container, the container's parent. It is the `shoal` binary
//! re-executed as a hidden subcommand, single-threaded and detached from the daemon, so a
//! container outlives a daemon restart or crash. It starts the container through the
//! chosen runtime, owns the container's stdout and stderr and writes them to the log file
//! with timestamps, reaps the container and records how it ended in `exit.json`, then
//! cleans up the runtime's state and the cgroup and exits.
//!
//! The daemon learns the outcome of the start from the shim's stdout (one JSON line), and
//! the end of the container from the shim's own exit (a pidfd) and `exit.json`.

mod config;
mod io;

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

pub use self::config::{ExitRecord, ShimConfig, StartReport, now_nanos};
use self::io::LineSplitter;
use crate::cgroups::{Cgroup, Layout};
use crate::logs::Stream;
use crate::runtime::external::External;
use crate::runtime::{Runtime, RuntimeError, builtin};

/// The hidden subcommand that runs the shim.
pub const SUBCOMMAND: &str = "__shim";

/// The shim's entry point: `shoal __shim STATE_DIR`.
pub fn main(args: &[OsString]) -> i32 {
    let Some(state_dir) = args.first() else {
        eprintln!("usage: shoal {SUBCOMMAND} STATE_DIR");
        return 2;
    };
    let state_dir = Path::new(state_dir);
    let config = match ShimConfig::load(state_dir) {
        Ok(c) => c,
        Err(e) => {
            StartReport::failed(format!("shim: {e}"), 125).send();
            return 1;
        }
    };
    // Detach: the daemon reaps the process it started at once; the shim goes on as a
    // grandchild in a session of its own, reparented to init (or a subreaper).
    // SAFETY: the shim is single-threaded at this point.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => return 0,
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(e) => {
            StartReport::failed(format!("shim: fork: {e}"), 125).send();
            return 1;
        }
    }
    let _ = nix::unistd::setsid();
    io::redirect_stderr(&state_dir.join("shim.log"));
    match run(&config) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("shim: {e}");
            1
        }
    }
}

/// A running container as the shim sees it.
struct Started {
    pid: i32,
    stdout: OwnedFd,
    stderr: OwnedFd,
    cgroup: Option<Cgroup>,
}

fn run(config: &ShimConfig) -> Result<(), RuntimeError> {
    // Orphans of the container (and runc's init after `runc create` exits) come to us.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block()
        .map_err(|e| RuntimeError::sys("blocking SIGCHLD", e))?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| RuntimeError::sys("signalfd", e))?;
    let started = match start(config) {
        Ok(s) => s,
        Err(e) => {
            let code = match &e {
                RuntimeError::Start { exit_code, .. } => *exit_code,
                _ => 125,
            };
            StartReport::failed(e.to_string(), code).send();
            cleanup_runtime(config);
            return Ok(());
        }
    };
    let report = StartReport {
        ok: true,
        pid: started.pid,
        shim_pid: std::process::id() as i32,
        error: String::new(),
        exit_code: 0,
    };
    if let Err(e) = report.save(&config.state_dir) {
        eprintln!("shim: saving state: {e}");
    }
    report.send();
    io::silence_stdout();

    let (status, oom) = supervise(config, &started, &sigfd)?;
    let oom = oom || started.cgroup.as_ref().is_some_and(|c| c.oom_killed());
    if let Some(cg) = &started.cgroup
        && let Err(e) = cg.destroy()
    {
        eprintln!("shim: removing cgroup: {e}");
    }
    cleanup_runtime(config);
    let record = ExitRecord::new(status, oom);
    record
        .save(&config.state_dir)
        .map_err(|e| RuntimeError::io("writing exit.json", e))?;
    Ok(())
}

/// Starts the container and returns its pid and the read ends of its output.
fn start(config: &ShimConfig) -> Result<Started, RuntimeError> {
    let spec = crate::runtime::spec::load(&config.bundle)?;
    let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RuntimeError::sys("creating a pipe", e))?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RuntimeError::sys("creating a pipe", e))?;
    let null = std::fs::File::open("/dev/null").map_err(|e| RuntimeError::io("/dev/null", e))?;
    match &config.runtime {
        Runtime::Builtin => {
            let resources = spec
                .linux()
                .as_ref()
                .and_then(|l| l.resources().clone())
                .unwrap_or_default();
            let layout = Layout::detect().map_err(|e| RuntimeError::Spec(e.to_string()))?;
            let cgroup = Cgroup::create(&layout, &config.cgroup_path, &resources)
                .map_err(|e| RuntimeError::Spec(e.to_string()))?;
            let stdio = builtin::Stdio {
                stdin: null.into(),
                stdout: out_w,
                stderr: err_w,
            };
            let pid = builtin::create(&spec, stdio, |pid| {
                cgroup
                    .add_process(pid)
                    .map_err(|e| RuntimeError::Spec(e.to_string()))
            });
            match pid {
                Ok(pid) => Ok(Started {
                    pid,
                    stdout: out_r,
                    stderr: err_r,
                    cgroup: Some(cgroup),
                }),
                Err(e) => {
                    let _ = cgroup.destroy();
                    Err(e)
                }
            }
        }
        Runtime::External { name, path } => {
            if config.private_cgroup2_mount {
                hide_unified_cgroup_mount()?;
            }
            let runtime = External {
                name,
                path,
                root: &config.runtime_root,
                log: &config.state_dir.join("runtime.log"),
            };
            let stdio = builtin::Stdio {
                stdin: null.into(),
                stdout: out_w,
                stderr: err_w,
            };
            let pid = runtime.create(
                &config.id,
                &config.bundle,
                &config.state_dir.join("init.pid"),
                stdio,
            )?;
            runtime.start(&config.id)?;
            Ok(Started {
                pid,
                stdout: out_r,
                stderr: err_r,
                cgroup: None,
            })
        }
    }
}

/// crun refuses a host that mixes cgroup v1 controllers with a v2 mount. Hiding the v2
/// mount in a private mount namespace of the shim (inherited by crun) lets it run on v1,
/// while the host's mounts stay as they are.
fn hide_unified_cgroup_mount() -> Result<(), RuntimeError> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| RuntimeError::sys("unshare mount namespace", e))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| RuntimeError::sys("making mounts slaves", e))?;
    let unified = Path::new("/sys/fs/cgroup/unified");
    if unified.exists() {
        umount2(unified, MntFlags::MNT_DETACH)
            .map_err(|e| RuntimeError::sys("hiding /sys/fs/cgroup/unified", e))?;
    }
    Ok(())
}

/// Removes what an external runtime keeps about the container.
fn cleanup_runtime(config: &ShimConfig) {
    if let Runtime::External { name, path } = &config.runtime {
        External {
            name,
            path,
            root: &config.runtime_root,
            log: &config.state_dir.join("runtime.log"),
        }
        .delete(&config.id);
    }
}

/// Copies the container's output into the log until it exits and its pipes are drained.
/// Returns its wait status and whether it was seen to be OOM-killed.
fn supervise(
    config: &ShimConfig,
    started: &Started,
    sigfd: &SignalFd,
) -> Result<(WaitStatus, bool), RuntimeError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&config.log_path)
        .map_err(|e| RuntimeError::io(format!("opening {}", config.log_path.display()), e))?;
    let mut out = LineSplitter::new(
        Stream::Stdout,
        log.try_clone().map_err(|e| RuntimeError::io("log", e))?,
    );
    let mut err = LineSplitter::new(Stream::Stderr, log);
    let mut out_open = true;
    let mut err_open = true;
    let mut status: Option<WaitStatus> = None;
    let mut exited_at: Option<std::time::Instant> = None;
    loop {
        if status.is_some() && !out_open && !err_open {
            break;
        }
        // A process that escaped the PID namespace could hold the pipes open forever; give
        // the output two seconds after the container's end, then stop reading.
        if let Some(t) = exited_at
            && t.elapsed() > std::time::Duration::from_secs(2)
        {
            break;
        }
        let mut fds = Vec::with_capacity(3);
        fds.push(PollFd::new(sigfd.as_fd(), PollFlags::POLLIN));
        if out_open {
            fds.push(PollFd::new(started.stdout.as_fd(), PollFlags::POLLIN));
        }
        if err_open {
            fds.push(PollFd::new(started.stderr.as_fd(), PollFlags::POLLIN));
        }
        let timeout = if exited_at.is_some() {
            PollTimeout::from(200u16)
        } else {
            PollTimeout::NONE
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(RuntimeError::sys("poll", e)),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| {
                f.revents().is_some_and(|r| {
                    !(r & (PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)).is_empty()
                })
            })
            .collect();
        drop(fds);
        let mut idx = 1;
        if out_open {
            if ready[idx] {
                out_open = out.pump(&started.stdout);
            }
            idx += 1;
        }
        if err_open && ready[idx] {
            err_open = err.pump(&started.stderr);
        }
        if ready[0] {
            while let Ok(Some(_)) = sigfd.read_signal() {}
            reap(started.pid, &mut status);
            if status.is_some() && exited_at.is_none() {
                exited_at = Some(std::time::Instant::now());
            }
        }
    }
    out.finish();
    err.finish();
    let status = match status {
        Some(s) => s,
        None => {
            // Output stopped before the exit was seen; wait for the container itself.
            loop {
                match waitpid(Pid::from_raw(started.pid), None) {
                    Ok(s @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => break s,
                    Ok(_) | Err(nix::Error::EINTR) => continue,
                    Err(e) => return Err(RuntimeError::sys("waiting for the container", e)),
                }
            }
        }
    };
    Ok((status, false))
}

/// Reaps every exited child; records the container's status when it is among them.
fn reap(container: i32, status: &mut Option<WaitStatus>) {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(s @ (WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _))) => {
                if pid.as_raw() == container {
                    *status = Some(s);
                }
            }
            Ok(_) => {}
        }
    }
}
