//! Tasks: one run of a service in a slot or on a node, and the states it moves through.

use serde::{Deserialize, Serialize};

use super::network::{NetworkAttachment, PortConfig};
use super::service::ServiceSpec;

/// The states of a task, in the only order they may move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Made by an orchestrator.
    New,
    /// Resources allocated; waiting for a node.
    Pending,
    /// Placed on a node.
    Assigned,
    /// The node's agent took it.
    Accepted,
    /// Image, network, volumes being prepared.
    Preparing,
    /// Prepared.
    Ready,
    /// Starting.
    Starting,
    /// Running.
    Running,
    /// Exited 0.
    Complete,
    /// Stopped on request.
    Shutdown,
    /// Exited non-zero or could not start.
    Failed,
    /// The node refused it.
    Rejected,
    /// The node was lost.
    Orphaned,
}

impl TaskState {
    /// Every state, in order.
    pub const ALL: [TaskState; 13] = [
        TaskState::New,
        TaskState::Pending,
        TaskState::Assigned,
        TaskState::Accepted,
        TaskState::Preparing,
        TaskState::Ready,
        TaskState::Starting,
        TaskState::Running,
        TaskState::Complete,
        TaskState::Shutdown,
        TaskState::Failed,
        TaskState::Rejected,
        TaskState::Orphaned,
    ];

    /// Its name as stored and shown (`running`, `shutdown`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Ready => "ready",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Orphaned => "orphaned",
        }
    }

    /// Whether the task has stopped for good.
    pub fn is_terminal(self) -> bool {
        self >= TaskState::Complete
    }

    /// Whether a task may move from `self` to `next`: only forward, never back.
    pub fn can_move_to(self, next: TaskState) -> bool {
        next > self && !self.is_terminal()
    }
}

/// What a task's agent last reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// The state.
    pub state: TaskState,
    /// When it was reached, in Unix milliseconds.
    pub timestamp_ms: i64,
    /// A human explanation ("no suitable node (…)", "exit code 3", an engine error).
    pub message: String,
    /// The exit code, once exited.
    pub exit_code: Option<i32>,
    /// The engine's container id.
    pub container_id: String,
    /// "healthy" once the task's health check has passed (tasks with a health check get
    /// traffic from then on); empty before, and for tasks without one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub health: String,
}

/// One run of a service in a slot (replicated) or on a node (global).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Its id.
    pub id: String,
    /// Its service.
    pub service_id: String,
    /// The slot (replicated, from 1), or 0 (global).
    pub slot: u64,
    /// The node (global tasks from the start; others once scheduled).
    pub node_id: String,
    /// The spec it runs: the service's at the time it was made.
    pub spec: ServiceSpec,
    /// When it was made, in Unix milliseconds.
    #[serde(default)]
    pub created_ms: i64,
    /// Its published ports, with the published port the allocator picked where the spec
    /// left it to it.
    #[serde(default)]
    pub ports: Vec<PortConfig>,
    /// Its addresses on the networks it joins, given by the allocator.
    #[serde(default)]
    pub networks: Vec<NetworkAttachment>,
    /// What the managers want of it (written only by managers).
    pub desired_state: TaskState,
    /// What the agent reports (written only by the agent and the scheduler's pending
    /// explanation).
    pub status: TaskStatus,
}

impl Task {
    /// The name of the task's container: `SERVICE.SLOT.ID` (global tasks: `SERVICE.NODE.ID`),
    /// with ids cut to 12 characters.
    pub fn container_name(&self) -> String {
        let short: String = self.id.chars().take(12).collect();
        if self.slot > 0 {
            format!("{}.{}.{short}", self.spec.name, self.slot)
        } else {
            let node: String = self.node_id.chars().take(12).collect();
            format!("{}.{node}.{short}", self.spec.name)
        }
    }
}

impl std::str::FromStr for TaskState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown task state \"{s}\""))
    }
}
