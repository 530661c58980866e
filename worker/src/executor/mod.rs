//! The task executor: what the agent does to one task, step by step. `prepare` makes the
//! task's container spec (pure, [`spec`]); `start` creates and starts the container
//! (nothing is left behind when it fails); `wait` follows it to its end and tells what
//! the end means for the task; `shutdown` stops it with its stop signal and grace period;
//! `remove` deletes it. [`health`] runs a task's health check.

pub mod health;
pub mod spec;

use std::collections::HashMap;
use std::sync::Arc;

use shoal_api::types::{ContainerSpec, Network, Task, TaskState};

pub use self::spec::{PrepareError, SERVICE_LABEL, TASK_LABEL, container_spec};
use crate::engine::{ContainerRecord, Engine, EngineError, State};

/// Runs tasks on one node's engine.
#[derive(Clone)]
pub struct Executor {
    engine: Arc<Engine>,
}

/// How a task's container ended, for the managers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// COMPLETE on exit code 0, FAILED otherwise.
    pub state: TaskState,
    /// "finished", "exit code 3", "exit code 137 (out of memory)", the engine's error.
    pub message: String,
    /// The exit code.
    pub code: i32,
}

impl Executor {
    /// An executor on `engine`.
    pub fn new(engine: Arc<Engine>) -> Executor {
        Executor { engine }
    }

    /// The engine it runs tasks on.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The container spec of `task`, given the networks the managers told of.
    pub fn prepare(
        &self,
        task: &Task,
        networks: &HashMap<String, Network>,
        node_hostname: &str,
    ) -> Result<ContainerSpec, PrepareError> {
        container_spec(task, networks, node_hostname)
    }

    /// Creates and starts the container of `spec`; returns its id. A container that was
    /// made but did not start is removed.
    pub async fn start(&self, spec: ContainerSpec) -> Result<String, EngineError> {
        let record = self.engine.create(spec).await?;
        if let Err(e) = self.engine.clone().start_arc(&record.id).await {
            let _ = self.engine.remove(&record.id, true).await;
            return Err(e);
        }
        Ok(record.id)
    }

    /// Waits for the container to end; None if it is gone.
    pub async fn wait(&self, container: &str) -> Option<Exit> {
        self.engine.wait(container).await.ok()?;
        self.engine.inspect(container).ok().map(|r| exit_of(&r))
    }

    /// Stops the container: its stop signal, then a kill after its grace period.
    pub async fn shutdown(&self, container: &str) -> Result<(), EngineError> {
        self.engine.stop(container, None).await
    }

    /// Removes the container (stopping it first if it still runs).
    pub async fn remove(&self, container: &str) -> Result<(), EngineError> {
        self.engine.remove(container, true).await
    }
}

/// What an ended container means for its task: complete on exit code 0, failed otherwise
/// (with the code, the OOM killer, or the engine's error).
pub fn exit_of(record: &ContainerRecord) -> Exit {
    let (code, oom, error) = match &record.state {
        State::Exited {
            exit_code,
            oom_killed,
            error,
            ..
        } => (*exit_code, *oom_killed, error.as_str()),
        _ => (-1, false, ""),
    };
    let (state, message) = if code == 0 {
        (TaskState::Complete, "finished".to_string())
    } else if oom {
        (
            TaskState::Failed,
            format!("exit code {code} (out of memory)"),
        )
    } else if !error.is_empty() {
        (TaskState::Failed, format!("exit code {code}: {error}"))
    } else {
        (TaskState::Failed, format!("exit code {code}"))
    };
    Exit {
        state,
        message,
        code,
    }
}

/// Stops (each with its grace period) and removes every container of a task on this
/// node: what leaving the cluster leaves behind.
pub async fn remove_task_containers(engine: &Engine) {
    let tasks: Vec<String> = engine
        .list(true)
        .into_iter()
        .filter(|r| r.spec.labels.contains_key(TASK_LABEL))
        .map(|r| r.id)
        .collect();
    futures::future::join_all(tasks.iter().map(|id| async move {
        let _ = engine.stop(id, None).await;
        if let Err(e) = engine.remove(id, true).await {
            tracing::warn!("removing container {id}: {e}");
        }
    }))
    .await;
}
