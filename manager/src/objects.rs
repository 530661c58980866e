//! The kinds of object the cluster store keeps: each is a type and one line in [`KINDS`].
//! The domain types live in `shoal-api` (they travel to clients and nodes); the ones only
//! managers read live here.

use serde::{Deserialize, Serialize};
use shoal_api::types::{AddrPool, Attachment, ClusterVolume, Network, Node, Service, Task};

use crate::ca::Ca;
use crate::store::{Kind, Object};

/// Every kind the store decodes. An object of a kind not listed is kept, replicated and
/// snapshotted like the others, but no typed read sees it.
pub const KINDS: &[Kind] = &[
    Kind::of::<Service>(),
    Kind::of::<Task>(),
    Kind::of::<Node>(),
    Kind::of::<Network>(),
    Kind::of::<Attachment>(),
    Kind::of::<ClusterRecord>(),
    Kind::of::<RemovedNode>(),
    Kind::of::<ClusterVolume>(),
];

impl Object for Service {
    const KIND: &'static str = "service";
    fn id(&self) -> &str {
        &self.id
    }
}

impl Object for Task {
    const KIND: &'static str = "task";
    fn id(&self) -> &str {
        &self.id
    }
}

impl Object for Node {
    const KIND: &'static str = "node";
    fn id(&self) -> &str {
        &self.id
    }
}

impl Object for Network {
    const KIND: &'static str = "network";
    fn id(&self) -> &str {
        &self.id
    }
}

impl Object for Attachment {
    const KIND: &'static str = "attachment";
    fn id(&self) -> &str {
        &self.id
    }
}

impl Object for ClusterVolume {
    const KIND: &'static str = "volume";
    fn id(&self) -> &str {
        &self.volume.name
    }
}

/// The cluster's own record, one object: its CA (so that any manager can issue
/// certificates), the join tokens' secrets, where network subnets come from, and a count
/// every network creation and removal bumps (two that race cannot both pick the same
/// subnet or VXLAN id: one of them finds the count moved).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// The cluster CA.
    pub ca: Ca,
    /// The secret of worker join tokens.
    pub worker_secret: String,
    /// The secret of manager join tokens.
    pub manager_secret: String,
    /// Where network subnets come from (`shoal init --default-addr-pool`).
    #[serde(default)]
    pub addr_pool: AddrPool,
    /// Bumped by every network creation and removal.
    #[serde(default)]
    pub network_changes: u64,
}

/// The id of the one [`ClusterRecord`].
pub const CLUSTER_ID: &str = "cluster";

impl Object for ClusterRecord {
    const KIND: &'static str = "cluster";
    fn id(&self) -> &str {
        CLUSTER_ID
    }
}

/// What is kept of a removed node: its certificates issued before `removed_at` are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedNode {
    /// The node's id.
    pub node_id: String,
    /// Unix seconds.
    pub removed_at: u64,
    /// Its hostname, for messages.
    pub hostname: String,
}

impl Object for RemovedNode {
    const KIND: &'static str = "removed_node";
    fn id(&self) -> &str {
        &self.node_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_registered_once() {
        let mut names: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "a kind is registered twice");
    }
}
