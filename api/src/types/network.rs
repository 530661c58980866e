//! Networks as users ask for them and as the allocator completes them, the addresses
//! tasks, containers and services get on them, and what a node is told of each.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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

/// A standalone container's place on an attachable network: recorded by the managers when
/// the container starts on a node (`container run --network NET`), given an address by
/// the allocator, forgotten when the container stops or its node is lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Its id.
    pub id: String,
    /// The container's node.
    pub node_id: String,
    /// The container's id on that node.
    pub container_id: String,
    /// The container's name (DNS answers it on the network).
    pub container_name: String,
    /// The network.
    pub network_id: String,
    /// Its address with the subnet's prefix length; empty until the allocator gives one.
    #[serde(default)]
    pub addr: String,
    /// Why it has no address yet (the allocator's message).
    #[serde(default)]
    pub message: String,
    /// When it was made, in Unix milliseconds.
    pub created_ms: i64,
}
