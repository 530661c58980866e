//! `exec`: runs another process in a running container, with the container's namespaces,
//! cgroup, capabilities and seccomp filter, and streams its output back.

use std::process::Stdio;
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::record::State;
use super::{Engine, EngineError, names};
use crate::runtime::Runtime;
use crate::runtime::builtin::exec::{ExecRequest, SUBCOMMAND};

/// A piece of an exec'd process's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecChunk {
    /// Bytes it wrote to stdout.
    Stdout(Vec<u8>),
    /// Bytes it wrote to stderr.
    Stderr(Vec<u8>),
    /// It ended with this code.
    Exit(i32),
}

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// The program and its arguments.
    pub cmd: Vec<String>,
    /// Extra `K=V` variables.
    pub env: Vec<String>,
    /// Working directory; the container's when empty.
    pub workdir: String,
    /// User; the container's when empty.
    pub user: String,
}

impl Engine {
    /// Runs a process in a running container.
    pub async fn exec(
        self: &Arc<Self>,
        key: &str,
        opts: ExecOptions,
    ) -> Result<mpsc::Receiver<ExecChunk>, EngineError> {
        let entry = self.find(key)?;
        let record = entry.snapshot();
        let State::Running { pid, .. } = record.state else {
            return Err(EngineError::Conflict(format!(
                "container {} is not running: start it first (shoal container start {})",
                record.name, record.name
            )));
        };
        if opts.cmd.is_empty() {
            return Err(EngineError::Invalid(
                "no command given: name the program to run, for example \"sh\"".into(),
            ));
        }
        let paths = self.paths(&record.id);
        let spec = crate::runtime::spec::load(&paths.dir)?;
        let mut process = spec
            .process()
            .clone()
            .ok_or_else(|| EngineError::Internal("the container's spec has no process".into()))?;
        let mut env = process.env().clone().unwrap_or_default();
        let key_of = |kv: &str| kv.split('=').next().unwrap_or_default().to_string();
        for kv in &opts.env {
            let k = key_of(kv);
            env.retain(|e| key_of(e) != k);
            env.push(kv.clone());
        }
        process.set_env(Some(env.clone()));
        process.set_args(Some(opts.cmd.clone()));
        if !opts.workdir.is_empty() {
            process.set_cwd(opts.workdir.clone().into());
        }
        let mut user = process.user().clone();
        if !opts.user.is_empty() {
            let resolved = crate::runtime::user::resolve(&paths.rootfs(), &opts.user)?;
            user.set_uid(resolved.uid);
            user.set_gid(resolved.gid);
            user.set_additional_gids(Some(resolved.additional_gids));
            process.set_user(user.clone());
            let caps = crate::security::caps::resolve(&record.spec.cap_add, &record.spec.cap_drop)
                .map_err(|e| EngineError::Invalid(e.to_string()))?;
            process.set_capabilities(Some(crate::security::caps::linux_capabilities(
                &caps,
                resolved.uid == 0,
            )));
        }
        let mut cmd = match &record.runtime {
            Runtime::Builtin => {
                let req = ExecRequest {
                    pid,
                    process,
                    seccomp: spec.linux().as_ref().and_then(|l| l.seccomp().clone()),
                };
                let file = paths
                    .state_dir
                    .join(format!("exec-{}.json", &names::new_id()[..12]));
                let raw =
                    serde_json::to_vec(&req).map_err(|e| EngineError::Internal(e.to_string()))?;
                std::fs::write(&file, raw)
                    .map_err(|e| EngineError::Internal(format!("writing exec request: {e}")))?;
                let mut c = tokio::process::Command::new(&self.config.self_exe);
                c.arg(SUBCOMMAND).arg(&file);
                c
            }
            Runtime::External { path, name } => {
                let mut c = if name.contains("crun")
                    && std::path::Path::new("/sys/fs/cgroup/unified").exists()
                {
                    // crun refuses the hybrid layout: hide the v2 mount in a private namespace.
                    let mut c = tokio::process::Command::new("unshare");
                    c.args([
                        "-m",
                        "--propagation",
                        "slave",
                        "sh",
                        "-c",
                        "umount -l /sys/fs/cgroup/unified; exec \"$0\" \"$@\"",
                    ]);
                    c.arg(path);
                    c
                } else {
                    tokio::process::Command::new(path)
                };
                c.arg("--root")
                    .arg(self.config.run_root.join("runtime"))
                    .arg("exec")
                    .arg("--cwd")
                    .arg(process.cwd())
                    .arg("--user")
                    .arg(format!("{}:{}", user.uid(), user.gid()));
                for kv in &env {
                    c.arg("--env").arg(kv);
                }
                c.arg(&record.id).args(&opts.cmd);
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        let mut child = cmd
            .spawn()
            .map_err(|e| EngineError::Internal(format!("starting exec: {e}")))?;
        let (tx, rx) = mpsc::channel(64);
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        tokio::spawn(async move {
            let mut out_buf = vec![0u8; 32 * 1024];
            let mut err_buf = vec![0u8; 32 * 1024];
            let (mut out_open, mut err_open) = (true, true);
            while out_open || err_open {
                tokio::select! {
                    n = stdout.read(&mut out_buf), if out_open => match n {
                        Ok(0) | Err(_) => out_open = false,
                        Ok(n) => { let _ = tx.send(ExecChunk::Stdout(out_buf[..n].to_vec())).await; }
                    },
                    n = stderr.read(&mut err_buf), if err_open => match n {
                        Ok(0) | Err(_) => err_open = false,
                        Ok(n) => { let _ = tx.send(ExecChunk::Stderr(err_buf[..n].to_vec())).await; }
                    },
                }
            }
            let code = match child.wait().await {
                Ok(s) => s.code().unwrap_or_else(|| {
                    use std::os::unix::process::ExitStatusExt;
                    128 + s.signal().unwrap_or(0)
                }),
                Err(_) => 255,
            };
            let _ = tx.send(ExecChunk::Exit(code)).await;
        });
        Ok(rx)
    }
}
