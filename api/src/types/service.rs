//! What a user asks of a service, and the service as stored: its mode, restart policy,
//! rolling update settings, health check, resources and published ports.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::network::{EndpointMode, PortConfig, Vip};

/// How a service runs its tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceMode {
    /// N tasks in stable slots.
    #[default]
    Replicated,
    /// One task per eligible node.
    Global,
    /// N completions, at most `max_concurrent` at once.
    ReplicatedJob,
    /// One completion per eligible node.
    GlobalJob,
}

/// When a task that stopped is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    /// Never.
    None,
    /// When it failed (non-zero exit, or lost).
    OnFailure,
    /// Whenever it stopped.
    #[default]
    Any,
}

/// The restart policy of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// When to restart.
    pub condition: RestartCondition,
    /// Delay before a replacement starts, in milliseconds.
    pub delay_ms: u64,
    /// Restarts allowed within `window_ms` (0: unlimited).
    pub max_attempts: u32,
    /// The window the attempts are counted in, in milliseconds (0: forever).
    pub window_ms: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            condition: RestartCondition::Any,
            delay_ms: 5_000,
            max_attempts: 0,
            window_ms: 0,
        }
    }
}

/// What to do when tasks of an update fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UpdateFailureAction {
    /// Stop updating more tasks.
    #[default]
    Pause,
    /// Go on as if nothing failed.
    Continue,
    /// Go back to the previous spec.
    Rollback,
}

/// In which order an update replaces a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    /// The old task stops before its replacement starts.
    #[default]
    StopFirst,
    /// The replacement runs before the old task stops.
    StartFirst,
}

/// How a changed service replaces its tasks (and, as `rollback`, how it goes back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// Tasks replaced at once (0: all).
    pub parallelism: u64,
    /// Time between one batch running and the next starting, in milliseconds.
    #[serde(default)]
    pub delay_ms: u64,
    /// What a failed update does.
    pub failure_action: UpdateFailureAction,
    /// A new task failing within this many milliseconds of its creation fails the update.
    pub monitor_ms: u64,
    /// Stop-first or start-first.
    #[serde(default)]
    pub order: UpdateOrder,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay_ms: 0,
            failure_action: UpdateFailureAction::Pause,
            monitor_ms: 5_000,
            order: UpdateOrder::StopFirst,
        }
    }
}

/// Where a service's latest update (or rollback) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    /// Tasks are being replaced.
    Updating,
    /// A task of the update failed and the failure action is pause.
    Paused,
    /// Every task runs the new spec.
    Completed,
    /// Going back to the previous spec.
    RollbackStarted,
    /// A task of the rollback failed.
    RollbackPaused,
    /// Every task runs the previous spec again.
    RollbackCompleted,
}

/// The state of a service's latest update, kept on the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    /// Where it stands.
    pub state: UpdateState,
    /// When it started, in Unix milliseconds; only tasks made since count for it.
    pub started_ms: i64,
    /// When it completed or paused (0: not yet).
    #[serde(default)]
    pub completed_ms: i64,
    /// Why it paused or rolled back.
    #[serde(default)]
    pub message: String,
}

impl UpdateStatus {
    /// Whether a rollback (automatic or asked for) is what is rolling out.
    pub fn rolling_back(&self) -> bool {
        matches!(
            self.state,
            UpdateState::RollbackStarted
                | UpdateState::RollbackPaused
                | UpdateState::RollbackCompleted
        )
    }

    /// Whether tasks are still being replaced.
    pub fn in_progress(&self) -> bool {
        matches!(
            self.state,
            UpdateState::Updating | UpdateState::RollbackStarted
        )
    }

    /// Whether the update stopped on a failure.
    pub fn paused(&self) -> bool {
        matches!(
            self.state,
            UpdateState::Paused | UpdateState::RollbackPaused
        )
    }
}

/// A command run in a task's container to tell whether it is healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// A shell command (run with `sh -c`); exit 0 is healthy.
    pub command: String,
    /// Time between checks, in milliseconds.
    pub interval_ms: u64,
    /// A check running longer fails, in milliseconds.
    pub timeout_ms: u64,
    /// Consecutive failures that make the task unhealthy.
    pub retries: u32,
    /// Failures in this first period do not count, in milliseconds.
    pub start_period_ms: u64,
}

/// CPU and memory, for reservations and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ResourceAmounts {
    /// 1e9 per CPU.
    pub nano_cpus: i64,
    /// Bytes.
    pub memory_bytes: i64,
}

/// What a user asks of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ServiceSpec {
    /// Unique name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Replaces the image's Cmd when not empty.
    pub command: Vec<String>,
    /// `K=V` pairs.
    pub env: Vec<String>,
    /// How tasks are run.
    pub mode: ServiceMode,
    /// Tasks wanted (replicated modes).
    pub replicas: u64,
    /// Tasks running at once (jobs; 0: as many as replicas).
    pub max_concurrent: u64,
    /// Placement constraints, as `node.labels.zone==east`.
    pub constraints: Vec<String>,
    /// Label keys to spread over, outermost first.
    pub spread_over: Vec<String>,
    /// At most this many tasks per node (0: no limit).
    pub max_replicas_per_node: u32,
    /// Reserved on the node.
    pub reservations: ResourceAmounts,
    /// Enforced by cgroups.
    pub limits: ResourceAmounts,
    /// Process limit (0: none).
    pub pids_limit: i64,
    /// When tasks are replaced.
    pub restart: RestartPolicy,
    /// How tasks tell they are healthy; an unhealthy task fails and is replaced.
    #[serde(default)]
    pub healthcheck: Option<HealthCheck>,
    /// How a change rolls out.
    #[serde(default)]
    pub update: UpdateConfig,
    /// How a rollback rolls out.
    #[serde(default = "UpdateConfig::rollback_default")]
    pub rollback: UpdateConfig,
    /// Time a task gets to stop after its stop signal before it is killed, in
    /// milliseconds (None: the engine's default, 10 s).
    #[serde(default)]
    pub stop_grace_period_ms: Option<u64>,
    /// The signal that stops a task (empty: the image's, or SIGTERM).
    #[serde(default)]
    pub stop_signal: String,
    /// Ports published on nodes.
    #[serde(default)]
    pub ports: Vec<PortConfig>,
    /// The networks its tasks join (ids).
    #[serde(default)]
    pub networks: Vec<String>,
    /// Volumes, host paths and tmpfs its tasks mount; a volume's name may hold templates
    /// (`{{.Task.Slot}}`, `{{.Service.Name}}`, `{{.Node.Hostname}}`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<super::Mount>,
    /// How its tasks are reached on those networks.
    #[serde(default)]
    pub endpoint_mode: EndpointMode,
    /// Bumped by `service update --force` to redeploy without another change.
    pub force_update: u64,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

impl UpdateConfig {
    /// The rollback settings a service gets when none are given.
    pub fn rollback_default() -> UpdateConfig {
        UpdateConfig::default()
    }
}

impl ServiceSpec {
    /// Whether tasks made from `self` and `other` run alike: everything but how many of
    /// them there are. A scale changes no task; any other change replaces them.
    pub fn same_task_template(&self, other: &ServiceSpec) -> bool {
        let mut a = self.clone();
        a.replicas = other.replicas;
        a.max_concurrent = other.max_concurrent;
        a.update = other.update;
        a.rollback = other.rollback;
        a == *other
    }
}

/// A service as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Its id.
    pub id: String,
    /// What is wanted now.
    pub spec: ServiceSpec,
    /// What was wanted before the last update (for rollback).
    pub previous_spec: Option<ServiceSpec>,
    /// Where the latest update stands (None: never updated).
    #[serde(default)]
    pub update_status: Option<UpdateStatus>,
    /// Its virtual IPs, one per network (endpoint mode vip), given by the allocator.
    #[serde(default)]
    pub vips: Vec<Vip>,
    /// Its ports published in ingress mode, with the number the allocator picked where
    /// the spec left it (the same on every node and for every task).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortConfig>,
}
