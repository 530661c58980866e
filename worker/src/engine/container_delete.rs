//! `rm`: removes a container's record and files. A running container is refused unless
//! forced, in which case it is killed first.

use std::time::Duration;

use nix::sys::signal::Signal;

use super::container_stop::wait_exit;
use super::record::State;
use super::{Engine, EngineError};

impl Engine {
    /// Removes a container.
    pub async fn remove(&self, key: &str, force: bool) -> Result<(), EngineError> {
        self.remove_with_volumes(key, force, false).await
    }

    /// Removes a container and, with `volumes`, the anonymous volumes made for it.
    pub async fn remove_with_volumes(
        &self,
        key: &str,
        force: bool,
        volumes: bool,
    ) -> Result<(), EngineError> {
        let entry = self.find(key)?;
        let _op = entry.op.lock().await;
        let record = entry.snapshot();
        if let State::Running { pid, .. } = record.state {
            if !force {
                return Err(EngineError::Conflict(format!(
                    "cannot remove running container {}: stop it first (shoal container stop {}) or force with rm -f",
                    record.name, record.name
                )));
            }
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            if !wait_exit(&entry, Duration::from_secs(30)).await {
                return Err(EngineError::Internal(format!(
                    "container {} did not exit after SIGKILL",
                    record.name
                )));
            }
        }
        self.update(&entry, |r| r.removing = true)?;
        // The exit handler has released the network and the mount; make sure.
        self.release(&record.id, false).await;
        let paths = self.paths(&record.id);
        for dir in [&paths.state_dir, &paths.dir] {
            if let Err(e) = std::fs::remove_dir_all(dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(container = %record.id, "removing {}: {e}", dir.display());
            }
        }
        self.store.delete(&record.id)?;
        self.bury(&entry.snapshot());
        self.containers
            .lock()
            .expect("containers lock poisoned")
            .remove(&record.id);
        // Wake waiters so they see the container is gone.
        entry.changed.send_modify(|v| *v += 1);
        if volumes {
            self.remove_anonymous_volumes(&record.anonymous_volumes)
                .await;
        }
        Ok(())
    }
}
