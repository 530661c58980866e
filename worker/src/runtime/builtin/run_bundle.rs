//! `shoal __run-bundle BUNDLE ID`: runs an OCI bundle in the foreground with the builtin
//! runtime, as `runc run --bundle BUNDLE ID` does: create, start, wait, delete. It exists
//! so the builtin runtime can be measured against runc and crun on the very same bundle
//! (tests/perf/), and to try a bundle by hand.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

use super::Stdio;
use crate::cgroups::{Cgroup, Layout};
use crate::runtime::RuntimeError;

/// The hidden subcommand.
pub const SUBCOMMAND: &str = "__run-bundle";

/// Entry point; returns the container's exit code.
pub fn main(args: &[OsString]) -> i32 {
    let (Some(bundle), Some(id)) = (args.first(), args.get(1)) else {
        eprintln!("usage: shoal {SUBCOMMAND} BUNDLE ID");
        return 125;
    };
    match run(Path::new(bundle), &id.to_string_lossy()) {
        Ok(code) => code,
        Err(RuntimeError::Start { message, exit_code }) => {
            eprintln!("{message}");
            exit_code
        }
        Err(e) => {
            eprintln!("{e}");
            125
        }
    }
}

fn run(bundle: &Path, id: &str) -> Result<i32, RuntimeError> {
    let mut spec = crate::runtime::spec::load(bundle)?;
    // A relative root is relative to the bundle, as in runc.
    if let Some(root) = spec.root().clone()
        && root.path().is_relative()
    {
        let mut root = root;
        root.set_path(bundle.join(root.path()));
        spec.set_root(Some(root));
    }
    let linux = spec.linux().clone().unwrap_or_default();
    let cgroup_path = linux
        .cgroups_path()
        .as_ref()
        .map(|p| p.to_string_lossy().trim_start_matches('/').to_string())
        .unwrap_or_else(|| format!("shoal-bundle/{id}"));
    let resources = linux.resources().clone().unwrap_or_default();
    let layout = Layout::detect().map_err(|e| RuntimeError::Spec(e.to_string()))?;
    let cgroup = Cgroup::create(&layout, &cgroup_path, &resources)
        .map_err(|e| RuntimeError::Spec(e.to_string()))?;
    let dup = |fd: i32| -> Result<OwnedFd, RuntimeError> {
        // SAFETY: borrowing this process's standard descriptor only to duplicate it.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        borrowed
            .try_clone_to_owned()
            .map_err(|e| RuntimeError::io("duplicating stdio", e))
    };
    let stdio = Stdio {
        stdin: dup(0)?,
        stdout: dup(1)?,
        stderr: dup(2)?,
    };
    let started = super::create(&spec, stdio, |pid| {
        cgroup
            .add_process(pid)
            .map_err(|e| RuntimeError::Spec(e.to_string()))
    });
    let result = started.and_then(|pid| {
        loop {
            match waitpid(Pid::from_raw(pid), None) {
                Ok(WaitStatus::Exited(_, code)) => break Ok(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => break Ok(128 + sig as i32),
                Ok(_) | Err(nix::Error::EINTR) => continue,
                Err(e) => break Err(RuntimeError::sys("waiting for the container", e)),
            }
        }
    });
    let _ = cgroup.destroy();
    result
}
