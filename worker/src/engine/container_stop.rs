//! `stop` and `kill`: signals to a running container's init. Stop sends the stop signal,
//! waits out the grace period, then kills.

use std::time::Duration;

use nix::sys::signal::Signal;

use super::record::State;
use super::{Engine, EngineError, Entry};

/// Docker's default grace period.
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Parses a signal by name (`TERM`, `SIGTERM`, `sigkill`) or number.
pub(crate) fn parse_signal(s: &str) -> Result<Signal, EngineError> {
    let bad = || {
        EngineError::Invalid(format!(
            "invalid signal \"{s}\": use a name such as SIGTERM, TERM or KILL, or a number such as 15"
        ))
    };
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>().map_err(|_| bad())
}

impl Engine {
    /// Stops a container: its stop signal, then SIGKILL after `timeout` (the container's
    /// own, or 10 s). Stopping a container that is not running is not an error.
    pub async fn stop(&self, key: &str, timeout: Option<Duration>) -> Result<(), EngineError> {
        let entry = self.find(key)?;
        let record = entry.snapshot();
        let State::Running { pid, .. } = record.state else {
            return Ok(());
        };
        let signal = if record.spec.stop_signal.is_empty() {
            Signal::SIGTERM
        } else {
            parse_signal(&record.spec.stop_signal)?
        };
        let timeout = timeout
            .or(record.spec.stop_timeout)
            .unwrap_or(DEFAULT_STOP_TIMEOUT);
        send(pid, signal);
        if wait_exit(&entry, timeout).await {
            return Ok(());
        }
        send(pid, Signal::SIGKILL);
        if wait_exit(&entry, Duration::from_secs(30)).await {
            Ok(())
        } else {
            Err(EngineError::Internal(format!(
                "container {} did not exit after SIGKILL",
                record.name
            )))
        }
    }

    /// Sends `signal` (default SIGKILL) to a running container.
    pub async fn kill(&self, key: &str, signal: &str) -> Result<(), EngineError> {
        let entry = self.find(key)?;
        let record = entry.snapshot();
        let sig = if signal.is_empty() {
            Signal::SIGKILL
        } else {
            parse_signal(signal)?
        };
        let State::Running { pid, .. } = record.state else {
            return Err(EngineError::Conflict(format!(
                "container {} is not running",
                record.name
            )));
        };
        send(pid, sig);
        if sig == Signal::SIGKILL {
            wait_exit(&entry, Duration::from_secs(30)).await;
        }
        Ok(())
    }
}

/// Signals a container's init. The shim has not reaped it while the record says running,
/// so the pid still names it.
fn send(pid: i32, signal: Signal) {
    if let Err(e) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
        tracing::debug!(pid, "signal {signal}: {e}");
    }
}

/// Waits up to `timeout` for the container to leave the running state.
pub(crate) async fn wait_exit(entry: &Entry, timeout: Duration) -> bool {
    let mut rx = entry.changed.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if !entry.snapshot().is_running() {
            return true;
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) => return true,
            Err(_) => return !entry.snapshot().is_running(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_signals() {
        assert_eq!(parse_signal("TERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("sigkill").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("SIGUSR1").unwrap(), Signal::SIGUSR1);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        let e = parse_signal("NOPE").unwrap_err().to_string();
        assert!(e.contains("invalid signal \"NOPE\""), "{e}");
        assert!(parse_signal("999").is_err());
    }
}
