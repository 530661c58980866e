//! What the daemon tells a shim (`shim.json`) and what the shim tells back: the outcome of
//! the start (one JSON line on stdout, also saved as `state.json`) and the container's end
//! (`exit.json`). All files live in the container's state directory under the run root.

use std::io::Write;
use std::path::{Path, PathBuf};

use nix::sys::wait::WaitStatus;
use serde::{Deserialize, Serialize};

use crate::runtime::Runtime;

/// The shim's instructions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimConfig {
    /// The container id.
    pub id: String,
    /// The OCI bundle (holds `config.json`).
    pub bundle: PathBuf,
    /// The runtime that runs it.
    pub runtime: Runtime,
    /// `--root` for external runtimes.
    pub runtime_root: PathBuf,
    /// The container's log file.
    pub log_path: PathBuf,
    /// Where the shim writes its state and the exit record.
    pub state_dir: PathBuf,
    /// The container's cgroup, relative to each hierarchy's root (builtin runtime).
    pub cgroup_path: String,
    /// Run the external runtime with the cgroup v2 mount hidden (crun on a hybrid host).
    pub private_cgroup2_mount: bool,
}

impl ShimConfig {
    /// The file name of the config in the state directory.
    pub const FILE: &'static str = "shim.json";

    /// Reads the config from a state directory.
    pub fn load(state_dir: &Path) -> std::io::Result<Self> {
        let raw = std::fs::read(state_dir.join(Self::FILE))?;
        serde_json::from_slice(&raw).map_err(std::io::Error::other)
    }

    /// Writes the config into its state directory.
    pub fn save(&self) -> std::io::Result<()> {
        write_atomic(
            &self.state_dir.join(Self::FILE),
            &serde_json::to_vec(self).map_err(std::io::Error::other)?,
        )
    }
}

/// The outcome of a start.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StartReport {
    /// Whether the container's program is running.
    pub ok: bool,
    /// The container's init, as seen from the host.
    pub pid: i32,
    /// The shim's own pid.
    pub shim_pid: i32,
    /// Why the start failed.
    pub error: String,
    /// The exit code that goes with the failure (125, 126, 127).
    pub exit_code: i32,
}

impl StartReport {
    /// A failed start.
    pub fn failed(error: String, exit_code: i32) -> Self {
        StartReport {
            ok: false,
            error,
            exit_code,
            ..Default::default()
        }
    }

    /// Writes the report as one line on stdout, where the daemon waits for it.
    pub fn send(&self) {
        if let Ok(mut line) = serde_json::to_vec(self) {
            line.push(b'\n');
            let _ = std::io::stdout().write_all(&line);
            let _ = std::io::stdout().flush();
        }
    }

    /// Saves the report as `state.json`.
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        write_atomic(
            &state_dir.join("state.json"),
            &serde_json::to_vec(self).map_err(std::io::Error::other)?,
        )
    }
}

/// How a container ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitRecord {
    /// The exit code, 128 + signal when killed by one.
    pub exit_code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// Whether the kernel's OOM killer ended it.
    pub oom_killed: bool,
    /// When the shim saw the end, in nanoseconds since the Unix epoch.
    pub finished_unix_nanos: i64,
}

impl ExitRecord {
    /// The file name in the state directory.
    pub const FILE: &'static str = "exit.json";

    /// Builds the record from a wait status.
    pub fn new(status: WaitStatus, oom_killed: bool) -> Self {
        let (exit_code, signal) = match status {
            WaitStatus::Exited(_, code) => (code, None),
            WaitStatus::Signaled(_, sig, _) => (128 + sig as i32, Some(sig as i32)),
            _ => (255, None),
        };
        ExitRecord {
            exit_code,
            signal,
            oom_killed,
            finished_unix_nanos: now_nanos(),
        }
    }

    /// Saves the record.
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        write_atomic(
            &state_dir.join(Self::FILE),
            &serde_json::to_vec(self).map_err(std::io::Error::other)?,
        )
    }

    /// Reads the record, if the container has ended.
    pub fn load(state_dir: &Path) -> Option<Self> {
        let raw = std::fs::read(state_dir.join(Self::FILE)).ok()?;
        serde_json::from_slice(&raw).ok()
    }
}

/// Nanoseconds since the Unix epoch.
pub fn now_nanos() -> i64 {
    shoal_api::clock::now_nanos()
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}
