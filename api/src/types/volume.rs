//! Volumes as a node's engine keeps them, and the volume plugins it found.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a volume's data lives, as its driver says: on this node only, or one volume for
/// the whole cluster (a network filesystem, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VolumeScope {
    /// Per node.
    #[default]
    Local,
    /// One for the cluster.
    Global,
}

impl VolumeScope {
    /// `local` or `global`.
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeScope::Local => "local",
            VolumeScope::Global => "global",
        }
    }
}

/// A volume on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Its name, unique on the node.
    pub name: String,
    /// Its driver (`local`, or a plugin's name).
    pub driver: String,
    /// Where its data is on the node, as the driver last said (empty until known).
    #[serde(default)]
    pub mountpoint: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The options it was made with (the driver's).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Per node or per cluster.
    #[serde(default)]
    pub scope: VolumeScope,
    /// When it was made, in Unix seconds.
    pub created_unix: i64,
    /// Made for one container without a name (`-v /path`): `container rm -v` removes it.
    #[serde(default)]
    pub anonymous: bool,
}

/// A volume of cluster-wide (global) scope, as the managers record it: one for the
/// cluster, whichever node made it first; a node that removes it asks the managers first,
/// and they refuse while a task on another node mounts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterVolume {
    /// The volume as the node that recorded it first knew it (`mountpoint` is that node's).
    pub volume: Volume,
    /// The node that recorded it first.
    pub node_id: String,
}

/// A volume plugin found on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    /// Its name (the socket's or spec file's).
    pub name: String,
    /// Where it answers (`unix:///run/docker/plugins/x.sock`, `tcp://...`).
    pub address: String,
    /// What it said it implements (`VolumeDriver`, ...); empty when it did not answer.
    pub implements: Vec<String>,
    /// Why it could not be asked, if it could not.
    #[serde(default)]
    pub error: String,
}
