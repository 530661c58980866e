//! External OCI runtimes (runc, crun, or any binary with their command line): the shim
//! runs `create` with the container's stdio, then `start`, and `delete` when it is over.
//! Errors come from the runtime's JSON log, worded for the user with Docker's exit codes.

use std::path::Path;
use std::process::{Command, Stdio};

use super::RuntimeError;
use super::builtin;

/// One runtime binary and where it keeps its state and log.
pub struct External<'a> {
    /// Its short name, for messages.
    pub name: &'a str,
    /// The binary.
    pub path: &'a Path,
    /// Its `--root` (state directory).
    pub root: &'a Path,
    /// Its `--log` file.
    pub log: &'a Path,
}

impl External<'_> {
    fn command(&self, verb: &str) -> Command {
        let mut c = Command::new(self.path);
        c.arg("--root")
            .arg(self.root)
            .arg("--log")
            .arg(self.log)
            .arg("--log-format")
            .arg("json")
            .arg(verb);
        c
    }

    fn run(&self, verb: &str, mut c: Command) -> Result<(), RuntimeError> {
        let status = c
            .status()
            .map_err(|e| RuntimeError::io(format!("running {}", self.path.display()), e))?;
        if status.success() {
            Ok(())
        } else {
            Err(self.error(verb))
        }
    }

    /// `create`: the container's init exists, waiting for `start`, with `stdio` as its
    /// standard streams. Returns its pid.
    pub fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        stdio: builtin::Stdio,
    ) -> Result<i32, RuntimeError> {
        let mut c = self.command("create");
        c.arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file)
            .arg(id)
            .stdin(Stdio::from(stdio.stdin))
            .stdout(Stdio::from(stdio.stdout))
            .stderr(Stdio::from(stdio.stderr));
        self.run("create", c)?;
        std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| RuntimeError::External {
                runtime: self.name.to_string(),
                verb: "create".into(),
                message: "it wrote no pid file".into(),
            })
    }

    /// `start`: the container runs its program.
    pub fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let mut c = self.command("start");
        c.arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.run("start", c)
    }

    /// `delete --force`: forget the container. Best effort.
    pub fn delete(&self, id: &str) {
        let mut c = self.command("delete");
        c.arg("--force")
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = c.status();
    }

    /// The last error the runtime logged, as the user should read it.
    fn error(&self, verb: &str) -> RuntimeError {
        let text = std::fs::read_to_string(self.log).unwrap_or_default();
        external_error(self.name, verb, &text)
    }
}

/// Words an external runtime's log as a start error with Docker's exit code: 127 for a
/// missing command, 126 for one that cannot run, 125 otherwise.
fn external_error(name: &str, verb: &str, log: &str) -> RuntimeError {
    let message = log
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["level"] == "error")
        .and_then(|v| v["msg"].as_str().map(String::from))
        .unwrap_or_else(|| log.lines().last().unwrap_or("no message").to_string());
    let lower = message.to_lowercase();
    let exit_code = if lower.contains("executable file not found")
        || lower.contains("not found in $path")
        || lower.contains("no such file or directory")
    {
        127
    } else if lower.contains("permission denied") {
        126
    } else {
        125
    };
    let message = if message.starts_with(name) {
        message
    } else {
        format!("{name} {verb}: {message}")
    };
    RuntimeError::Start { message, exit_code }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_logs_become_user_errors() {
        let log = r#"{"level":"info","msg":"x"}
{"level":"error","msg":"runc create failed: unable to start container process: exec: \"nope\": executable file not found in $PATH"}"#;
        match external_error("runc", "create", log) {
            RuntimeError::Start { message, exit_code } => {
                assert_eq!(exit_code, 127);
                assert!(message.starts_with("runc create failed"), "{message}");
            }
            other => panic!("{other}"),
        }
        match external_error(
            "crun",
            "create",
            "{\"level\":\"error\",\"msg\":\"open `/x`: Permission denied\"}",
        ) {
            RuntimeError::Start { message, exit_code } => {
                assert_eq!(exit_code, 126);
                assert_eq!(message, "crun create: open `/x`: Permission denied");
            }
            other => panic!("{other}"),
        }
    }
}
