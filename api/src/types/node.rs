//! Nodes as the managers record them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::service::ResourceAmounts;

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
    /// The volume drivers it has (`local`, and the volume plugins its agent found).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_drivers: Vec<String>,
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
