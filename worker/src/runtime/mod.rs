//! OCI runtimes. The daemon writes an OCI bundle (`config.json` plus a root filesystem)
//! for every container; the shim hands it to a runtime: the builtin one, which applies the
//! spec in the shim's own forked child, or an external OCI runtime binary (runc, crun, ...),
//! which gets exactly the same bundle.

pub mod builtin;
pub mod external;
pub mod fsutil;
pub mod spec;
pub mod user;

use std::path::{Path, PathBuf};

/// Errors of the runtimes.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The `--runtime` value names no binary.
    #[error(
        "runtime \"{0}\" not found: install it (for example `apt-get install runc`), give its full path with --runtime, or use --runtime builtin"
    )]
    NotFound(String),
    /// A system call failed while setting up the container.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// The error the kernel returned.
        source: nix::Error,
    },
    /// An I/O operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The OCI spec asks for something this runtime cannot do, or is malformed.
    #[error("invalid runtime spec: {0}")]
    Spec(String),
    /// The user named in the spec is not in the image.
    #[error("{0}")]
    User(String),
    /// The container's process could not be started.
    #[error("{message}")]
    Start {
        /// What went wrong, as the user should read it.
        message: String,
        /// The exit code Docker uses for this failure (126 or 127), or 1.
        exit_code: i32,
    },
    /// An external runtime failed.
    #[error("{runtime} {verb} failed: {message}")]
    External {
        /// The runtime's name.
        runtime: String,
        /// The command it was given.
        verb: String,
        /// What it said.
        message: String,
    },
}

impl RuntimeError {
    pub(crate) fn sys(what: impl Into<String>, source: nix::Error) -> Self {
        RuntimeError::Sys {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Which runtime runs a container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    /// shoal's own runtime, applied by the shim.
    Builtin,
    /// An OCI runtime binary.
    External {
        /// Its short name (`runc`, `crun`), used in messages.
        name: String,
        /// Its absolute path.
        path: PathBuf,
    },
}

impl Runtime {
    /// Resolves a `--runtime` value: `builtin`, a name found on `PATH`, or a path.
    pub fn resolve(value: &str) -> Result<Runtime, RuntimeError> {
        if value.is_empty() || value == "builtin" {
            return Ok(Runtime::Builtin);
        }
        let path = if value.contains('/') {
            let p = PathBuf::from(value);
            is_executable(&p).then_some(p)
        } else {
            std::env::var_os("PATH")
                .map(|paths| {
                    std::env::split_paths(&paths)
                        .map(|d| d.join(value))
                        .find(|p| is_executable(p))
                })
                .unwrap_or_default()
        };
        let path = path.ok_or_else(|| RuntimeError::NotFound(value.to_string()))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| value.to_string());
        Ok(Runtime::External { name, path })
    }

    /// The name shown to users.
    pub fn name(&self) -> &str {
        match self {
            Runtime::Builtin => "builtin",
            Runtime::External { name, .. } => name,
        }
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_builtin_and_paths() {
        assert_eq!(Runtime::resolve("builtin").unwrap(), Runtime::Builtin);
        assert_eq!(Runtime::resolve("").unwrap(), Runtime::Builtin);
        let sh = Runtime::resolve("sh").unwrap();
        assert!(matches!(sh, Runtime::External { ref name, .. } if name == "sh"));
        let err = Runtime::resolve("no-such-runtime-xyz").unwrap_err();
        assert!(
            err.to_string()
                .contains("runtime \"no-such-runtime-xyz\" not found")
        );
        assert!(Runtime::resolve("/nonexistent/runc").is_err());
    }
}
