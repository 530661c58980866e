//! Following shims: the engine watches each shim's process through a pidfd and, when it
//! exits, reads the exit record and releases what the container held. On daemon start it
//! re-attaches to shims that still run (live restore) and settles the containers that
//! ended while it was away.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use super::record::State;
use super::{Engine, EngineError, Entry, now_nanos};
use crate::shim::ExitRecord;

/// Opens a pidfd for `pid`, if it exists.
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether `pid` is the shim of container `id` (and not a reused pid).
fn is_shim_of(pid: i32, id: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            args.iter()
                .any(|a| *a == crate::shim::SUBCOMMAND.as_bytes())
                && args.iter().any(|a| a.ends_with(id.as_bytes()))
        })
        .unwrap_or(false)
}

impl Engine {
    /// Loads every record and re-attaches to running containers.
    pub(crate) async fn restore(self: &Arc<Self>) -> Result<(), EngineError> {
        let records = self.store.load_all()?;
        let mut live = Vec::new();
        for record in records {
            let entry = Arc::new(Entry {
                record: Mutex::new(record.clone()),
                changed: watch::channel(0).0,
                op: tokio::sync::Mutex::new(()),
            });
            self.containers
                .lock()
                .expect("containers lock poisoned")
                .insert(record.id.clone(), entry.clone());
            if record.removing {
                let _ = self.remove(&record.id, true).await;
                continue;
            }
            if let State::Running { shim_pid, .. } = record.state {
                if is_shim_of(shim_pid, &record.id) {
                    live.push(record.id.clone());
                    self.watch_shim(entry, shim_pid);
                } else {
                    tracing::info!(container = %record.id, "container ended while the daemon was away");
                    self.finish(&entry).await;
                }
            }
        }
        if let Err(e) = self.network.restore(&live).await {
            tracing::warn!("restoring network state: {e}");
        }
        let mut joined = Vec::new();
        for id in &live {
            if let Ok(entry) = self.find(id) {
                let record = entry.snapshot();
                if !record.spec.attachments.is_empty() {
                    joined.push((
                        id.clone(),
                        self.config.run_root.join("netns").join(id),
                        record.spec.attachments.clone(),
                    ));
                }
            }
        }
        self.cluster.restore(&joined).await;
        Ok(())
    }

    /// Waits in the background for the shim `shim_pid` to exit, then settles the container.
    pub(crate) fn watch_shim(self: &Arc<Self>, entry: Arc<Entry>, shim_pid: i32) {
        let engine = self.clone();
        tokio::spawn(async move {
            if let Some(fd) = pidfd_open(shim_pid)
                // SAFETY: the AsyncFd owns the pidfd for its whole registration; the fd is
                // closed only when the AsyncFd drops.
                && let Ok(afd) = unsafe { AsyncFd::register(fd) }
            {
                // A pidfd turns readable when the process exits.
                let _ = afd.readable().await;
            }
            engine.finish(&entry).await;
        });
    }

    /// Settles a container whose shim has exited: records how it ended, releases its
    /// network and mount, and removes it when it was run with --rm.
    pub(crate) async fn finish(self: &Arc<Self>, entry: &Arc<Entry>) {
        let record = entry.snapshot();
        let State::Running {
            started_unix_nanos, ..
        } = record.state
        else {
            return;
        };
        let paths = self.paths(&record.id);
        let exit = ExitRecord::load(&paths.state_dir);
        self.release(&record.id, true).await;
        let result = self.update(entry, |r| {
            r.state = match &exit {
                Some(x) => State::Exited {
                    exit_code: x.exit_code,
                    started_unix_nanos,
                    finished_unix_nanos: x.finished_unix_nanos,
                    oom_killed: x.oom_killed,
                    error: String::new(),
                },
                None => State::Exited {
                    exit_code: 255,
                    started_unix_nanos,
                    finished_unix_nanos: now_nanos(),
                    oom_killed: false,
                    error: format!(
                        "the container's shim ended without an exit record; see {}",
                        paths.state_dir.join("shim.log").display()
                    ),
                },
            };
            r.ip_address.clear();
        });
        if let Err(e) = result {
            tracing::warn!(container = %record.id, "recording exit: {e}");
        }
        if record.spec.auto_remove {
            let engine = self.clone();
            let id = record.id.clone();
            tokio::spawn(async move {
                if let Err(e) = engine.remove_with_volumes(&id, true, true).await {
                    tracing::warn!(container = %id, "auto-remove: {e}");
                }
            });
        }
    }
}
