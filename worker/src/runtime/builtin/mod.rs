//! The builtin runtime: applies an OCI spec by forking the container's init from the shim.
//! The shim is single-threaded, so the forked child may allocate and run ordinary Rust
//! until it execs; the daemon, which is multi-threaded, never forks into a container.

pub mod exec;
pub mod mounts;
pub mod process;
pub mod run_bundle;

use std::convert::Infallible;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::sched::CloneFlags;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use self::process::PreparedProcess;
use super::RuntimeError;

/// The container's standard streams, as the shim made them.
pub struct Stdio {
    /// Usually `/dev/null`.
    pub stdin: OwnedFd,
    /// The write end of the shim's stdout pipe.
    pub stdout: OwnedFd,
    /// The write end of the shim's stderr pipe.
    pub stderr: OwnedFd,
}

/// A container ready to start: everything from the spec computed before the fork.
struct Prepared {
    clone_flags: CloneFlags,
    joins: Vec<(OwnedFd, CloneFlags)>,
    rootfs: PathBuf,
    new_mount_ns: bool,
    mounts: Vec<oci_spec::runtime::Mount>,
    masked: Vec<String>,
    readonly: Vec<String>,
    root_readonly: bool,
    hostname: Option<String>,
    process: PreparedProcess,
}

fn flag_of(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::empty(),
    }
}

impl Prepared {
    fn new(spec: &Spec) -> Result<Self, RuntimeError> {
        let linux = spec
            .linux()
            .as_ref()
            .ok_or_else(|| RuntimeError::Spec("the spec has no linux section".into()))?;
        let root = spec
            .root()
            .as_ref()
            .ok_or_else(|| RuntimeError::Spec("the spec has no root".into()))?;
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| RuntimeError::Spec("the spec has no process".into()))?;
        let mut clone_flags = CloneFlags::empty();
        let mut joins = Vec::new();
        for ns in linux.namespaces().as_deref().unwrap_or_default() {
            let flag = flag_of(ns.typ());
            if flag == CloneFlags::CLONE_NEWUSER {
                return Err(RuntimeError::Spec(
                    "user namespaces are not supported by the builtin runtime yet".into(),
                ));
            }
            match ns.path() {
                Some(path) => {
                    let fd = std::fs::File::open(path).map_err(|e| {
                        RuntimeError::io(format!("opening namespace {}", path.display()), e)
                    })?;
                    joins.push((OwnedFd::from(fd), flag));
                }
                None => clone_flags |= flag,
            }
        }
        Ok(Prepared {
            clone_flags,
            joins,
            rootfs: root.path().clone(),
            new_mount_ns: clone_flags.contains(CloneFlags::CLONE_NEWNS),
            mounts: spec.mounts().clone().unwrap_or_default(),
            masked: linux.masked_paths().clone().unwrap_or_default(),
            readonly: linux.readonly_paths().clone().unwrap_or_default(),
            root_readonly: root.readonly().unwrap_or(false),
            hostname: clone_flags
                .contains(CloneFlags::CLONE_NEWUTS)
                .then(|| spec.hostname().clone())
                .flatten(),
            process: PreparedProcess::new(process, linux.seccomp().as_ref())?,
        })
    }
}

/// Creates and starts the container described by `spec`. `before_start` runs in the
/// parent with the child's host pid once the child exists but before it does anything (the
/// shim puts it into its cgroup there). Returns the pid once the program is exec'd.
pub fn create(
    spec: &Spec,
    stdio: Stdio,
    before_start: impl FnOnce(i32) -> Result<(), RuntimeError>,
) -> Result<i32, RuntimeError> {
    let prepared = Prepared::new(spec)?;
    let (sync_r, sync_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RuntimeError::sys("creating a pipe", e))?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RuntimeError::sys("creating a pipe", e))?;
    let flags = prepared.clone_flags.bits() as libc::c_ulong | libc::SIGCHLD as libc::c_ulong;
    // SAFETY: a raw clone without CLONE_VM behaves as fork(2). The shim is single-threaded,
    // so the child is a complete copy with no lock held by another thread.
    let ret = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    if ret < 0 {
        return Err(RuntimeError::sys("clone", nix::Error::last()));
    }
    if ret == 0 {
        drop(sync_w);
        drop(err_r);
        child(prepared, sync_r, err_w, stdio);
    }
    let pid = ret as i32;
    drop(sync_r);
    drop(err_w);
    drop(stdio);
    let started = before_start(pid).and_then(|()| {
        let mut w = std::fs::File::from(sync_w);
        w.write_all(b"g")
            .map_err(|e| RuntimeError::io("starting the container", e))
    });
    if let Err(e) = started {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
        return Err(e);
    }
    // The error pipe closes on a successful exec (close-on-exec), or carries the failure.
    let mut report = Vec::new();
    let _ = std::fs::File::from(err_r).read_to_end(&mut report);
    if report.len() >= 4 {
        let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
        let code = i32::from_le_bytes([report[0], report[1], report[2], report[3]]);
        let message = String::from_utf8_lossy(&report[4..]).into_owned();
        return Err(RuntimeError::Start {
            message,
            exit_code: code,
        });
    }
    Ok(pid)
}

fn child(prepared: Prepared, sync_r: OwnedFd, err_w: OwnedFd, stdio: Stdio) -> ! {
    let Err(err) = child_setup(&prepared, sync_r, stdio);
    let code = match &err {
        RuntimeError::Start { exit_code, .. } => *exit_code,
        _ => 1,
    };
    let mut msg = code.to_le_bytes().to_vec();
    msg.extend_from_slice(err.to_string().as_bytes());
    let _ = std::fs::File::from(err_w).write_all(&msg);
    // SAFETY: _exit ends the forked child without running the parent's exit handlers.
    unsafe { libc::_exit(code) }
}

fn child_setup(p: &Prepared, sync_r: OwnedFd, stdio: Stdio) -> Result<Infallible, RuntimeError> {
    let mut go = [0u8; 1];
    match std::fs::File::from(sync_r).read(&mut go) {
        Ok(1) => {}
        _ => return Err(RuntimeError::Spec("the shim went away before start".into())),
    }
    for (fd, flag) in &p.joins {
        nix::sched::setns(fd, *flag).map_err(|e| RuntimeError::sys("joining a namespace", e))?;
    }
    nix::unistd::setsid().map_err(|e| RuntimeError::sys("setsid", e))?;
    for (fd, target) in [(&stdio.stdin, 0), (&stdio.stdout, 1), (&stdio.stderr, 2)] {
        // SAFETY: dup2 onto the standard descriptors of this single-threaded child.
        if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
            return Err(RuntimeError::sys("setting up stdio", nix::Error::last()));
        }
    }
    drop(stdio);
    if p.new_mount_ns {
        mounts::prepare_root(&p.rootfs)?;
        let mut dev_is_tmpfs = false;
        for m in &p.mounts {
            mounts::mount_one(&p.rootfs, m)?;
            if m.destination().as_os_str() == "/dev" {
                dev_is_tmpfs = m.typ().as_deref() == Some("tmpfs");
            }
        }
        if dev_is_tmpfs {
            mounts::populate_dev(&p.rootfs)?;
        }
        mounts::pivot(&p.rootfs)?;
        for path in &p.masked {
            mounts::mask(path)?;
        }
        for path in &p.readonly {
            mounts::make_readonly(path)?;
        }
        if p.root_readonly {
            mounts::remount_readonly(std::path::Path::new("/"))?;
        }
    } else {
        nix::unistd::chroot(&p.rootfs).map_err(|e| RuntimeError::sys("chroot", e))?;
    }
    if let Some(h) = &p.hostname {
        nix::unistd::sethostname(h).map_err(|e| RuntimeError::sys("sethostname", e))?;
    }
    // Close-on-exec for every descriptor the shim may have leaked; stdio stays open.
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on descriptors.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    p.process.exec()
}
