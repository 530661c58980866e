//! Mounts: what a container or a service's tasks see of volumes, host paths and tmpfs.
//! Parsed from `-v`, `--mount` and `--tmpfs` by [`crate::mount`]; the engine turns them
//! into OCI mounts, so every runtime sees the same.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    /// A named (or anonymous) volume of a volume driver.
    #[default]
    Volume,
    /// A path of the host.
    Bind,
    /// A tmpfs of the container's own.
    Tmpfs,
}

impl MountType {
    /// `volume`, `bind` or `tmpfs`.
    pub fn as_str(self) -> &'static str {
        match self {
            MountType::Volume => "volume",
            MountType::Bind => "bind",
            MountType::Tmpfs => "tmpfs",
        }
    }
}

/// How mounts under a bind mount propagate (mount(2)'s propagation types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Propagation {
    /// Neither way.
    Private,
    /// Neither way, recursively (the default).
    Rprivate,
    /// Both ways.
    Shared,
    /// Both ways, recursively.
    Rshared,
    /// From the host into the container.
    Slave,
    /// From the host into the container, recursively.
    Rslave,
}

impl Propagation {
    /// Its name, as `bind-propagation=` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Propagation::Private => "private",
            Propagation::Rprivate => "rprivate",
            Propagation::Shared => "shared",
            Propagation::Rshared => "rshared",
            Propagation::Slave => "slave",
            Propagation::Rslave => "rslave",
        }
    }

    /// Every propagation type.
    pub const ALL: [Propagation; 6] = [
        Propagation::Private,
        Propagation::Rprivate,
        Propagation::Shared,
        Propagation::Rshared,
        Propagation::Slave,
        Propagation::Rslave,
    ];
}

/// A volume mount's options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct VolumeOptions {
    /// The volume's driver (empty: `local`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub driver: String,
    /// Options for the driver when it makes the volume.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    /// Labels of the volume when it is made.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// A new empty volume is not filled with the image's content at the target.
    #[serde(default)]
    pub no_copy: bool,
}

/// A tmpfs mount's options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TmpfsOptions {
    /// Its size limit in bytes (None: the kernel's default, half the memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// The mode of its root (None: 1777).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Other mount options (`noexec`, `nosuid`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// One mount of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Mount {
    /// Volume, bind or tmpfs.
    #[serde(rename = "type")]
    pub kind: MountType,
    /// A volume's name (empty: an anonymous volume; for services it may hold templates
    /// such as `{{.Task.Slot}}`), or a bind mount's host path; empty for tmpfs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// Where it appears in the container (absolute).
    pub target: String,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
    /// For volumes.
    #[serde(default, skip_serializing_if = "is_default")]
    pub volume: VolumeOptions,
    /// For bind mounts: propagation (None: rprivate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagation: Option<Propagation>,
    /// For tmpfs.
    #[serde(default, skip_serializing_if = "is_default")]
    pub tmpfs: TmpfsOptions,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}
