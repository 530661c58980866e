//! A task's health check: its command run in the container at its interval, each run
//! bounded by its timeout; failures in the start period do not count.

use std::sync::Arc;
use std::time::Duration;

use shoal_api::types::HealthCheck;

use crate::engine::{Engine, ExecChunk, ExecOptions};

/// How a watched container's health ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The container stopped (or is gone) while it was watched.
    Stopped,
    /// The check failed `retries` times in a row.
    Unhealthy(String),
}

/// Runs `check` in `container` until the container stops or the check has failed
/// `retries` times in a row; `healthy` is called once, at the first passing run.
pub async fn watch(
    engine: &Arc<Engine>,
    container: &str,
    check: &HealthCheck,
    mut healthy: impl FnMut(),
) -> Verdict {
    let started = tokio::time::Instant::now();
    let mut failures = 0u32;
    let mut told = false;
    loop {
        tokio::time::sleep(Duration::from_millis(check.interval_ms)).await;
        let running = engine
            .inspect(container)
            .map(|r| r.is_running())
            .unwrap_or(false);
        if !running {
            return Verdict::Stopped;
        }
        if run_once(engine, container, check).await {
            failures = 0;
            if !told {
                told = true;
                healthy();
            }
            continue;
        }
        if started.elapsed() < Duration::from_millis(check.start_period_ms) {
            continue;
        }
        failures += 1;
        if failures >= check.retries {
            return Verdict::Unhealthy(format!(
                "unhealthy: \"{}\" failed {failures} times in a row",
                check.command
            ));
        }
    }
}

/// One run of the check: exit 0 within the timeout.
async fn run_once(engine: &Arc<Engine>, container: &str, check: &HealthCheck) -> bool {
    let opts = ExecOptions {
        cmd: vec!["sh".into(), "-c".into(), check.command.clone()],
        ..Default::default()
    };
    let Ok(mut rx) = engine.exec(container, opts).await else {
        return false;
    };
    let run = async {
        let mut code = 1;
        while let Some(chunk) = rx.recv().await {
            if let ExecChunk::Exit(c) = chunk {
                code = c;
            }
        }
        code
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(check.timeout_ms), run).await,
        Ok(0)
    )
}
