//! `logs`: reads a container's log file, optionally following it until the container ends.
//! The shim writes the file, so logs stay readable and followable across daemon restarts.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Engine, EngineError};
use crate::logs::{LogReader, Record, read_tail};

/// How often a follower looks for new lines when nothing woke it.
const FOLLOW_POLL: Duration = Duration::from_millis(25);

/// What to read.
#[derive(Debug, Clone, Copy)]
pub struct LogsOptions {
    /// Keep reading until the container ends.
    pub follow: bool,
    /// Only the last N records.
    pub tail: Option<usize>,
    /// Only records at or after this time.
    pub since_unix_nanos: i64,
}

impl Engine {
    /// Streams a container's log records.
    pub fn logs(
        self: &Arc<Self>,
        key: &str,
        opts: LogsOptions,
    ) -> Result<mpsc::Receiver<Result<Record, EngineError>>, EngineError> {
        let entry = self.find(key)?;
        let id = entry.snapshot().id;
        let path = self.paths(&id).log();
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            let mut rx_changed = entry.changed.subscribe();
            // Everything up to now, with tail and since applied.
            let file = match std::fs::File::open(&path) {
                Ok(f) => Some(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    let _ = tx
                        .send(Err(EngineError::Internal(format!("reading logs: {e}"))))
                        .await;
                    return;
                }
            };
            let Some(file) = file else { return };
            let mut reader = match file.try_clone() {
                Ok(f) => {
                    let records = match read_tail(f, opts.tail, opts.since_unix_nanos) {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = tx.send(Err(EngineError::Internal(e.to_string()))).await;
                            return;
                        }
                    };
                    for r in records {
                        if tx.send(Ok(r)).await.is_err() {
                            return;
                        }
                    }
                    // read_tail read the whole file through the shared offset: go on from there.
                    LogReader::new(file)
                }
                Err(e) => {
                    let _ = tx.send(Err(EngineError::Internal(e.to_string()))).await;
                    return;
                }
            };
            if !opts.follow {
                return;
            }
            loop {
                let running = entry.snapshot().is_running();
                loop {
                    match reader.next_record() {
                        Ok(Some(r)) => {
                            if r.time_unix_nanos >= opts.since_unix_nanos
                                && tx.send(Ok(r)).await.is_err()
                            {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = tx.send(Err(EngineError::Internal(e.to_string()))).await;
                            return;
                        }
                    }
                }
                // The shim writes the last line before it records the exit, so once the
                // container is seen stopped, one more drain above has read everything.
                if !running {
                    return;
                }
                tokio::select! {
                    _ = rx_changed.changed() => {}
                    _ = tokio::time::sleep(FOLLOW_POLL) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(rx)
    }
}
