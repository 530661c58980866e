//! Container security: capabilities and the default seccomp profile. The OCI spec form is
//! the source of truth (runc and crun read it from config.json); the builtin runtime
//! prepares both before fork and applies them in the container's init with raw syscalls.

mod bpf;
pub mod caps;
pub mod seccomp;
mod syscalls;

/// Errors of capability and seccomp handling.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A capability name no kernel knows.
    #[error(
        "unknown capability \"{0}\": use a name from `man 7 capabilities`, such as NET_ADMIN or SYS_PTRACE, or ALL"
    )]
    UnknownCapability(String),
    /// An unsupported `--security-opt`.
    #[error(
        "invalid --security-opt \"{0}\": supported are seccomp=unconfined and no-new-privileges"
    )]
    UnknownOption(String),
    /// The seccomp profile cannot be compiled.
    #[error("seccomp profile: {0}")]
    Profile(String),
    /// A process's capabilities cannot be read.
    #[error("reading the capabilities of process {pid} from /proc: {source}")]
    Proc {
        /// The process.
        pid: i32,
        /// Why.
        source: std::io::Error,
    },
    /// A system call failed while applying them.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// The kernel's answer.
        source: nix::Error,
    },
}
