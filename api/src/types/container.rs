//! What the engine is asked to run: one container's spec, with typed ports, networks and
//! durations. The engine takes only this type; `shoal container` sends the engine API's
//! message, turned into this one once, in [`crate::convert`], and the agent builds it
//! straight from a task.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::mount::Mount;
use super::network::AttachmentSpec;
use super::network::PortProtocol;

/// The network namespace a container gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// Its own namespace on the node's bridge (NAT out, published ports).
    #[default]
    Bridge,
    /// The host's namespace.
    Host,
    /// Its own namespace with only loopback.
    None,
    /// Its own namespace on an attachable cluster network (by name or id), beside the
    /// bridge: the managers give it an address when it starts.
    Cluster(String),
}

impl NetworkMode {
    /// Reads `--network`: `bridge` (or empty), `host`, `none`, or a cluster network.
    pub fn parse(s: &str) -> NetworkMode {
        match s {
            "" | "bridge" => NetworkMode::Bridge,
            "host" => NetworkMode::Host,
            "none" => NetworkMode::None,
            other => NetworkMode::Cluster(other.to_string()),
        }
    }

    /// The name `--network` takes.
    pub fn as_str(&self) -> &str {
        match self {
            NetworkMode::Bridge => "bridge",
            NetworkMode::Host => "host",
            NetworkMode::None => "none",
            NetworkMode::Cluster(n) => n,
        }
    }

    /// Whether the container has a network namespace of its own.
    pub fn own_namespace(&self) -> bool {
        !matches!(self, NetworkMode::Host)
    }
}

/// A container port published on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    /// The node's address it answers on (None: every address).
    pub host_ip: Option<IpAddr>,
    /// The node's port (0: one the kernel picks).
    pub host_port: u16,
    /// The container's port.
    pub container_port: u16,
    /// TCP or UDP.
    pub protocol: PortProtocol,
}

/// Cgroup limits of a container (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ContainerResources {
    /// Memory, in bytes.
    pub memory_bytes: i64,
    /// CPU time, 1e9 per CPU.
    pub nano_cpus: i64,
    /// Processes.
    pub pids_limit: i64,
}

/// One container, as the engine runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ContainerSpec {
    /// The image reference.
    pub image: String,
    /// Its unique name (empty: the engine makes one).
    pub name: String,
    /// Replaces the image's Cmd when not empty.
    pub cmd: Vec<String>,
    /// Replaces the image's Entrypoint when set (an empty one drops it).
    pub entrypoint: Option<Vec<String>>,
    /// `K=V`, appended to the image's Env.
    pub env: Vec<String>,
    /// The working directory (empty: the image's).
    pub workdir: String,
    /// The user, `name`, `uid` or `uid:gid` (empty: the image's).
    pub user: String,
    /// The hostname (empty: the id's first 12 digits).
    pub hostname: String,
    /// Cgroup limits.
    pub resources: ContainerResources,
    /// Capabilities added to Docker's default set.
    pub cap_add: Vec<String>,
    /// Capabilities dropped from it.
    pub cap_drop: Vec<String>,
    /// The root file system is mounted read-only.
    pub read_only: bool,
    /// Ports published on the node.
    pub ports: Vec<PortMapping>,
    /// Its network namespace.
    pub network: NetworkMode,
    /// Removed once it exits.
    pub auto_remove: bool,
    /// The signal that stops it (empty: the image's, or SIGTERM).
    pub stop_signal: String,
    /// Time between the stop signal and the kill (None: the engine's default).
    pub stop_timeout: Option<Duration>,
    /// Labels (the agent's name the task and service).
    pub labels: BTreeMap<String, String>,
    /// `--security-opt` values.
    pub security_opt: Vec<String>,
    /// Volumes, host paths and tmpfs mounted into it.
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Cluster networks a task joins, each with its address, beside the bridge (unless
    /// every one is internal). Set by the agent; the engine API cannot set them.
    pub attachments: Vec<AttachmentSpec>,
}
