//! The cluster's objects as the managers store them and the orchestrators reason about
//! them: services, tasks and nodes. Plain data (serde), no I/O; the store keeps them as
//! JSON with a version (the Raft index of their last write).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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

/// The protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

/// How a port is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// Every node answers and forwards to a task anywhere (the routing mesh).
    #[default]
    Ingress,
    /// Only the node of the task answers.
    Host,
}

/// A port of a service's tasks published on nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortConfig {
    /// The port inside the container.
    pub target: u16,
    /// The port on the node (0: the allocator picks one).
    pub published: u16,
    /// TCP or UDP.
    pub protocol: PortProtocol,
    /// Ingress or host.
    pub mode: PublishMode,
}

/// How a service's tasks are reached on its networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    /// One virtual IP per network, balanced over the running tasks.
    #[default]
    Vip,
    /// DNS round robin: the service's name gives every task's address.
    Dnsrr,
}

/// The kind of a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetworkDriver {
    /// VXLAN between nodes: one layer-2 segment across the cluster.
    #[default]
    Overlay,
    /// A bridge on each node: tasks reach the others on the same node.
    Bridge,
    /// Addresses on a parent interface's segment.
    Macvlan,
}

impl NetworkDriver {
    /// Its name, as `-d` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkDriver::Overlay => "overlay",
            NetworkDriver::Bridge => "bridge",
            NetworkDriver::Macvlan => "macvlan",
        }
    }
}

/// What a user asks of a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NetworkSpec {
    /// Unique name.
    pub name: String,
    /// Its driver.
    pub driver: NetworkDriver,
    /// Its subnet (CIDR); empty: the next free one of the cluster's address pool.
    #[serde(default)]
    pub subnet: String,
    /// Its gateway; empty: the subnet's first address.
    #[serde(default)]
    pub gateway: String,
    /// Task addresses come from this range of the subnet (CIDR); empty: the whole subnet.
    #[serde(default)]
    pub ip_range: String,
    /// Standalone containers may join it (`container run --network`).
    #[serde(default)]
    pub attachable: bool,
    /// No traffic leaves the network (no egress route, no published ports).
    #[serde(default)]
    pub internal: bool,
    /// The routing mesh's network: ports published in ingress mode go through it.
    #[serde(default)]
    pub ingress: bool,
    /// Driver options (`parent` for macvlan, `mtu`).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A network as stored, with what the allocator gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Its id.
    pub id: String,
    /// What was asked.
    pub spec: NetworkSpec,
    /// Its subnet (CIDR).
    pub subnet: String,
    /// Its gateway address.
    pub gateway: String,
    /// The VXLAN network identifier (overlay networks; 0 otherwise).
    #[serde(default)]
    pub vni: u32,
    /// When it was made, in Unix milliseconds.
    #[serde(default)]
    pub created_ms: i64,
}

/// A task's (or a container's) address on one network.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NetworkAttachment {
    /// The network's id.
    pub network_id: String,
    /// The address with the subnet's prefix length, as `10.0.1.5/24`.
    pub addr: String,
}

/// A network a container joins, with its address there: what the engine needs to make the
/// container's interface (the network travels whole, so the node needs no lookup).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentSpec {
    /// The network.
    pub network: Network,
    /// The address with the prefix length.
    pub addr: String,
}

/// A service's virtual IP on one network.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Vip {
    /// The network's id.
    pub network_id: String,
    /// The address with the subnet's prefix length.
    pub addr: String,
}

/// What a node is told of one network it has tasks on: the network, every endpoint on it
/// in the cluster, and the services that use it (for the overlay's forwarding entries,
/// service discovery and load balancing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkView {
    /// The network.
    pub network: Network,
    /// Every task on it that has a node (live ones only).
    pub endpoints: Vec<NetEndpoint>,
    /// The services whose tasks join it.
    pub services: Vec<NetService>,
}

/// One task's endpoint on a network, as other nodes see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetEndpoint {
    /// The task.
    pub task_id: String,
    /// Its service.
    pub service_id: String,
    /// Its slot (0 for global tasks).
    pub slot: u64,
    /// Its node.
    pub node_id: String,
    /// Its node's underlay address.
    pub node_addr: String,
    /// Its address with the prefix length.
    pub addr: String,
    /// Running (and healthy): it gets traffic and is named in DNS.
    pub running: bool,
    /// A standalone container's name (its endpoint has no service); empty for tasks.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// A service as the nodes of one of its networks see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetService {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// VIP or DNS round robin.
    pub endpoint_mode: EndpointMode,
    /// Its virtual IP on this network (with prefix length; empty in dnsrr mode).
    pub vip: String,
    /// Its ports published in ingress mode (on the ingress network's view only).
    pub ports: Vec<PortConfig>,
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

/// Whether a node takes tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NodeAvailability {
    /// Takes new tasks.
    #[default]
    Active,
    /// Keeps its tasks, takes no new ones.
    Pause,
    /// Its tasks move elsewhere.
    Drain,
}

/// A node as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Its id.
    pub id: String,
    /// Its hostname.
    pub hostname: String,
    /// Whether it is a manager.
    pub manager: bool,
    /// Whether its agent is connected and heartbeating.
    pub ready: bool,
    /// Why it is not ready ("heartbeat failure", "session closed").
    #[serde(default)]
    pub status_message: String,
    /// Set by `node update --availability`.
    pub availability: NodeAvailability,
    /// Set by `node update --label-add`.
    pub labels: BTreeMap<String, String>,
    /// `linux`.
    pub os: String,
    /// `x86_64`.
    pub arch: String,
    /// What it offers tasks.
    pub resources: ResourceAmounts,
    /// Where other nodes reach it (host:port of its cluster port; managers only).
    #[serde(default)]
    pub addr: String,
    /// The role `node promote`/`demote` asked for; None: as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_role: Option<NodeRole>,
    /// Certificates of this node issued before this time (Unix seconds) are refused: set
    /// when a manager is demoted, so that its manager certificate stops working.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub certs_since: u64,
    /// The address other nodes reach its overlay endpoints at (the VXLAN underlay),
    /// reported by its agent.
    #[serde(default)]
    pub data_addr: String,
    /// Its own address on the ingress network (the routing mesh reaches tasks from it).
    #[serde(default)]
    pub ingress_addr: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A node's role in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    /// Runs tasks.
    Worker,
    /// Runs Raft and the control plane (and tasks).
    Manager,
}

impl NodeRole {
    /// `manager` or `worker`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Manager => "manager",
            NodeRole::Worker => "worker",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_states_only_move_forward() {
        use TaskState::*;
        assert!(New.can_move_to(Pending));
        assert!(Assigned.can_move_to(Running));
        assert!(Running.can_move_to(Failed));
        assert!(!Running.can_move_to(Assigned));
        assert!(!Failed.can_move_to(Running), "terminal states are final");
        assert!(!Complete.can_move_to(Shutdown));
        assert!(Shutdown.is_terminal() && !Running.is_terminal());
    }

    #[test]
    fn scaling_keeps_the_task_template() {
        let a = ServiceSpec {
            name: "web".into(),
            replicas: 3,
            ..Default::default()
        };
        let mut b = a.clone();
        b.replicas = 1;
        assert!(a.same_task_template(&b));
        b.image = "other".into();
        assert!(!a.same_task_template(&b));
    }

    #[test]
    fn specs_round_trip_as_json() {
        let spec = ServiceSpec {
            name: "web".into(),
            image: "busybox".into(),
            replicas: 3,
            mode: ServiceMode::ReplicatedJob,
            ..Default::default()
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains("\"replicated-job\""), "{json}");
        assert_eq!(serde_json::from_str::<ServiceSpec>(&json).unwrap(), spec);
    }
}
