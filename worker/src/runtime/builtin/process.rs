//! The last steps before a container's process runs, shared by the container's init and
//! by `exec`: rlimits, user and groups, capabilities, no_new_privs, seccomp, working
//! directory, and the exec itself. Everything that can fail for a reason the user can fix
//! (an unknown command, a bad working directory) is detected here and reported with
//! Docker's exit codes: 127 for a missing command, 126 for one that cannot run.

use std::convert::Infallible;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::resource::{Resource, setrlimit};
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{LinuxSeccomp, PosixRlimitType, Process};

use crate::runtime::RuntimeError;
use crate::security::caps::PreparedCaps;

/// A process, ready to run: everything computed and allocated before fork.
pub struct PreparedProcess {
    args: Vec<String>,
    env: Vec<CString>,
    path_var: String,
    cwd: PathBuf,
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
    rlimits: Vec<(Resource, u64, u64)>,
    no_new_privs: bool,
    caps: Option<PreparedCaps>,
    seccomp: Option<crate::security::seccomp::CompiledSeccomp>,
}

fn cstring(s: &str, what: &str) -> Result<CString, RuntimeError> {
    CString::new(s).map_err(|_| RuntimeError::Spec(format!("{what} contains a NUL byte: {s:?}")))
}

impl PreparedProcess {
    /// Prepares the spec's process, with the spec's seccomp filter if any.
    pub fn new(process: &Process, seccomp: Option<&LinuxSeccomp>) -> Result<Self, RuntimeError> {
        let args = process.args().clone().unwrap_or_default();
        if args.is_empty() {
            return Err(RuntimeError::Start {
                message: "no command specified: give one after the image name, or use an image with a default command".into(),
                exit_code: 125,
            });
        }
        let env_list = process.env().clone().unwrap_or_default();
        let env = env_list
            .iter()
            .map(|e| cstring(e, "environment variable"))
            .collect::<Result<Vec<_>, _>>()?;
        let path_var = env_list
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .to_string();
        let user = process.user();
        let mut rlimits = Vec::new();
        for r in process.rlimits().as_deref().unwrap_or_default() {
            if let Some(res) = rlimit_resource(r.typ()) {
                rlimits.push((res, r.soft(), r.hard()));
            }
        }
        let caps = process
            .capabilities()
            .as_ref()
            .map(crate::security::caps::prepare)
            .transpose()
            .map_err(|e| RuntimeError::Spec(e.to_string()))?;
        let seccomp = seccomp
            .map(crate::security::seccomp::compile)
            .transpose()
            .map_err(|e| RuntimeError::Spec(e.to_string()))?;
        Ok(PreparedProcess {
            args,
            env,
            path_var,
            cwd: process.cwd().clone(),
            uid: Uid::from_raw(user.uid()),
            gid: Gid::from_raw(user.gid()),
            groups: user
                .additional_gids()
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(|g| Gid::from_raw(*g))
                .collect(),
            rlimits,
            no_new_privs: process.no_new_privileges().unwrap_or(false),
            caps,
            seccomp,
        })
    }

    /// Applies everything and replaces the current process with the container's program.
    /// Runs in a forked, single-threaded child whose root is already the container's.
    pub fn exec(&self) -> Result<Infallible, RuntimeError> {
        reset_signals();
        for (res, soft, hard) in &self.rlimits {
            setrlimit(*res, *soft, *hard).map_err(|e| RuntimeError::sys("setrlimit", e))?;
        }
        // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN, so it goes in
        // before the capabilities are dropped; with it, as late as possible.
        if !self.no_new_privs
            && let Some(prog) = &self.seccomp
        {
            crate::security::seccomp::install(prog)
                .map_err(|e| RuntimeError::Spec(format!("installing seccomp filter: {e}")))?;
        }
        if let Some(caps) = &self.caps {
            caps.apply_bounding()
                .map_err(|e| RuntimeError::Spec(format!("dropping capabilities: {e}")))?;
        }
        // Keep the permitted set across the uid change; the sets are set right after.
        // SAFETY: prctl with PR_SET_KEEPCAPS takes an integer argument and touches no memory.
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
        nix::unistd::setgroups(&self.groups).map_err(|e| RuntimeError::sys("setgroups", e))?;
        nix::unistd::setresgid(self.gid, self.gid, self.gid)
            .map_err(|e| RuntimeError::sys(format!("setgid {}", self.gid), e))?;
        nix::unistd::setresuid(self.uid, self.uid, self.uid)
            .map_err(|e| RuntimeError::sys(format!("setuid {}", self.uid), e))?;
        if let Some(caps) = &self.caps {
            caps.apply_sets()
                .map_err(|e| RuntimeError::Spec(format!("setting capabilities: {e}")))?;
        }
        if self.no_new_privs {
            // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes integer arguments only.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                return Err(RuntimeError::sys(
                    "setting no_new_privs",
                    nix::Error::last(),
                ));
            }
            if let Some(prog) = &self.seccomp {
                crate::security::seccomp::install(prog)
                    .map_err(|e| RuntimeError::Spec(format!("installing seccomp filter: {e}")))?;
            }
        }
        nix::unistd::chdir(&self.cwd).map_err(|e| RuntimeError::Start {
            message: format!(
                "cannot enter working directory {}: {}: create it in the image or choose another with -w",
                self.cwd.display(),
                e.desc()
            ),
            exit_code: 126,
        })?;
        let program = find_program(&self.args[0], &self.path_var)?;
        let argv = self
            .args
            .iter()
            .map(|a| cstring(a, "argument"))
            .collect::<Result<Vec<_>, _>>()?;
        let Err(err) = nix::unistd::execve(&program, &argv, &self.env);
        Err(exec_error(&self.args[0], err))
    }
}

/// Gives the program the signal state a fresh process has: nothing blocked (the shim blocks
/// SIGCHLD for its signalfd) and default dispositions (Rust ignores SIGPIPE at start-up, and
/// an ignored signal stays ignored across exec).
fn reset_signals() {
    use nix::sys::signal::{SigHandler, SigSet, Signal, signal};
    let _ = SigSet::empty().thread_set_mask();
    for sig in Signal::iterator() {
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing the default disposition runs no handler code of ours.
        let _ = unsafe { signal(sig, SigHandler::SigDfl) };
    }
}

fn exec_error(name: &str, err: nix::Error) -> RuntimeError {
    match err {
        nix::Error::ENOENT => RuntimeError::Start {
            message: format!(
                "exec: \"{name}\": no such file or directory (is it a script whose interpreter is missing from the image?)"
            ),
            exit_code: 127,
        },
        nix::Error::EACCES | nix::Error::EPERM => RuntimeError::Start {
            message: format!(
                "exec: \"{name}\": permission denied: make it executable (chmod +x) or run it through a shell"
            ),
            exit_code: 126,
        },
        other => RuntimeError::Start {
            message: format!("exec: \"{name}\": {}", other.desc()),
            exit_code: 126,
        },
    }
}

/// Finds `name` like execvp(3): a name with a slash is taken as it is; otherwise each
/// directory of `path_var` is tried.
fn find_program(name: &str, path_var: &str) -> Result<CString, RuntimeError> {
    let not_found = || RuntimeError::Start {
        message: format!(
            "exec: \"{name}\": executable file not found in $PATH: check the command, or that the image contains it"
        ),
        exit_code: 127,
    };
    if name.contains('/') {
        return cstring(name, "command");
    }
    if name.is_empty() {
        return Err(not_found());
    }
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(name);
        if let Ok(meta) = candidate.metadata()
            && meta.is_file()
        {
            return CString::new(candidate.as_os_str().as_bytes())
                .map_err(|_| RuntimeError::Spec("command contains a NUL byte".into()));
        }
    }
    Err(not_found())
}

fn rlimit_resource(t: PosixRlimitType) -> Option<Resource> {
    Some(match t {
        PosixRlimitType::RlimitCpu => Resource::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => Resource::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => Resource::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => Resource::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => Resource::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => Resource::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => Resource::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => Resource::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => Resource::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => Resource::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => Resource::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => Resource::RLIMIT_RTTIME,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_on_path() {
        assert!(find_program("sh", "/nonexistent:/bin:/usr/bin").is_ok());
        let e = find_program("no-such-cmd-xyz", "/bin:/usr/bin").unwrap_err();
        match e {
            RuntimeError::Start { message, exit_code } => {
                assert_eq!(exit_code, 127);
                assert!(
                    message.contains("executable file not found in $PATH"),
                    "{message}"
                );
            }
            other => panic!("unexpected {other}"),
        }
        assert_eq!(find_program("/x/y", "").unwrap().to_str().unwrap(), "/x/y");
    }
}
