//! A container's mounts: its volumes made when it is created (an anonymous one gets a
//! random name), mounted with their drivers when it starts (a new, empty volume first
//! filled from the image), let go of when it ends, and its anonymous ones removed with
//! `rm -v`. And the volumes of the node as the engine API shows them: with the containers
//! that use them, removal refused while any does.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Mount as OciMount;
use shoal_api::types::{ContainerSpec, Mount, MountType, Volume, VolumeScope};

use super::{Engine, EngineError};
use crate::runtime::fsutil::secure_join;
use crate::volume::{Filter, VolumeError, copy};

impl From<VolumeError> for EngineError {
    fn from(e: VolumeError) -> Self {
        match e {
            VolumeError::NotFound(_) => EngineError::NotFound(e.to_string()),
            VolumeError::InUse { .. } | VolumeError::Conflict(_) => {
                EngineError::Conflict(e.to_string())
            }
            VolumeError::Invalid(_) => EngineError::Invalid(e.to_string()),
            other => EngineError::Internal(other.to_string()),
        }
    }
}

/// A volume with the containers that refer to it.
#[derive(Debug, Clone)]
pub struct VolumeUse {
    /// The volume.
    pub volume: Volume,
    /// The names of the containers whose mounts name it (running or not).
    pub used_by: Vec<String>,
}

fn oci(target: &str, typ: &str, source: &Path, options: Vec<String>) -> OciMount {
    OciMount::default()
        .set_destination(PathBuf::from(target))
        .set_typ(Some(typ.into()))
        .set_source(Some(source.to_path_buf()))
        .set_options(Some(options))
        .clone()
}

impl Engine {
    /// Checks the mounts of a spec: each one, no target twice, and every bind source on
    /// the host.
    pub(crate) fn check_mounts(spec: &ContainerSpec) -> Result<(), EngineError> {
        for m in &spec.mounts {
            shoal_api::mount::check(m).map_err(|e| EngineError::Invalid(e.0))?;
            if m.kind == MountType::Bind && !Path::new(&m.source).exists() {
                return Err(EngineError::Invalid(format!(
                    "bind source path does not exist: {}: create it first, or mount a volume there instead",
                    m.source
                )));
            }
        }
        if let Some(t) = shoal_api::convert::duplicate_target(&spec.mounts) {
            return Err(EngineError::Invalid(format!(
                "two mounts have the target {t}: give each target once"
            )));
        }
        Ok(())
    }

    /// Makes (or finds) the volumes a new container's mounts name, naming its anonymous
    /// ones; returns those. On failure the anonymous ones made so far go again.
    pub(crate) async fn create_volumes(
        &self,
        mounts: &mut [Mount],
    ) -> Result<Vec<String>, EngineError> {
        let mut anonymous = Vec::new();
        for m in mounts.iter_mut().filter(|m| m.kind == MountType::Volume) {
            let anon = m.source.is_empty();
            let made = self
                .volumes
                .create(
                    (!anon).then_some(m.source.as_str()),
                    &m.volume.driver,
                    &m.volume.driver_opts,
                    &m.volume.labels,
                    anon,
                )
                .await;
            match made {
                Ok(v) => {
                    self.record_global(&v).await;
                    if anon {
                        anonymous.push(v.name.clone());
                    }
                    m.source = v.name;
                }
                Err(e) => {
                    for name in &anonymous {
                        let _ = self.volumes.remove(name, true).await;
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(anonymous)
    }

    /// Mounts a starting container's volumes (copy-up into new, empty ones) and returns
    /// the OCI mounts of all its mounts, in order. On failure, what was mounted is let go.
    pub(crate) async fn prepare_mounts(
        &self,
        id: &str,
        spec: &ContainerSpec,
        rootfs: &Path,
    ) -> Result<Vec<OciMount>, EngineError> {
        let mut out = Vec::new();
        for m in &spec.mounts {
            let ro = |mut o: Vec<String>| {
                if m.read_only {
                    o.push("ro".into());
                }
                o
            };
            let made = match m.kind {
                MountType::Volume => self.mount_volume(id, m, rootfs).await.map(|path| {
                    oci(
                        &m.target,
                        "bind",
                        &path,
                        ro(vec!["rbind".into(), "rprivate".into()]),
                    )
                }),
                MountType::Bind => {
                    let propagation = m.propagation.map_or("rprivate", |p| p.as_str());
                    Ok(oci(
                        &m.target,
                        "bind",
                        Path::new(&m.source),
                        ro(vec!["rbind".into(), propagation.into()]),
                    ))
                }
                MountType::Tmpfs => {
                    let mut o = vec!["nosuid".into(), "nodev".into()];
                    o.extend(m.tmpfs.options.iter().cloned());
                    if let Some(size) = m.tmpfs.size_bytes {
                        o.push(format!("size={size}"));
                    }
                    o.push(format!("mode={:o}", m.tmpfs.mode.unwrap_or(0o1777)));
                    Ok(oci(&m.target, "tmpfs", Path::new("tmpfs"), ro(o)))
                }
            };
            match made {
                Ok(o) => out.push(o),
                Err(e) => {
                    self.release_volumes(id, spec).await;
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    async fn mount_volume(
        &self,
        id: &str,
        m: &Mount,
        rootfs: &Path,
    ) -> Result<PathBuf, EngineError> {
        let (path, _) =
            self.volumes
                .mount(&m.source, id)
                .await
                .map_err(|e| EngineError::StartFailed {
                    message: e.to_string(),
                    exit_code: 125,
                })?;
        if !m.volume.no_copy && copy::is_empty(&path) {
            let from = secure_join(rootfs, Path::new(&m.target));
            if from.is_dir() && !copy::is_empty(&from) {
                let (from2, to) = (from.clone(), path.clone());
                tokio::task::spawn_blocking(move || copy::copy_contents(&from2, &to))
                    .await
                    .map_err(|e| EngineError::Internal(e.to_string()))??;
            }
        }
        Ok(path)
    }

    /// Lets go of a container's volumes (each driver unmounts after its last user). Safe
    /// to call twice.
    pub(crate) async fn release_volumes(&self, id: &str, spec: &ContainerSpec) {
        for m in spec.mounts.iter().filter(|m| m.kind == MountType::Volume) {
            if let Err(e) = self.volumes.unmount(&m.source, id).await {
                tracing::warn!(container = id, volume = %m.source, "unmounting: {e}");
            }
        }
    }

    /// The containers whose mounts name volume `name`.
    fn referring(&self, name: &str) -> Vec<String> {
        self.list(true)
            .into_iter()
            .filter(|r| {
                r.spec
                    .mounts
                    .iter()
                    .any(|m| m.kind == MountType::Volume && m.source == name)
            })
            .map(|r| r.name)
            .collect()
    }

    /// Makes a volume (a random name when `name` is empty).
    pub async fn volume_create(
        &self,
        name: &str,
        driver: &str,
        opts: &std::collections::BTreeMap<String, String>,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<VolumeUse, EngineError> {
        let v = self
            .volumes
            .create(
                (!name.is_empty()).then_some(name),
                driver,
                opts,
                labels,
                false,
            )
            .await?;
        self.record_global(&v).await;
        Ok(VolumeUse {
            used_by: self.referring(&v.name),
            volume: v,
        })
    }

    /// Tells the managers of a volume of cluster-wide scope, once per daemon and
    /// cluster. A node out of touch with them keeps using the volume, and says so.
    async fn record_global(&self, v: &Volume) {
        if v.scope != VolumeScope::Global {
            return;
        }
        let Some(link) = self.cluster_link() else {
            return;
        };
        if !self
            .recorded_volumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(v.name.clone())
        {
            return;
        }
        if let Err(e) = link.record_volume(v.clone()).await {
            tracing::warn!(volume = %v.name, "telling the managers of a cluster-wide volume: {e}");
            self.recorded_volumes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&v.name);
        }
    }

    /// Removes volume `name` unless a container here refers to it, or (cluster-wide
    /// scope) the managers say a task elsewhere mounts it; `force` takes the record even
    /// when the driver cannot remove the volume, or the managers cannot be asked.
    async fn remove_volume(&self, name: &str, force: bool) -> Result<(), EngineError> {
        let v = self.volumes.get(name)?;
        let users = self.referring(name);
        if !users.is_empty() {
            return Err(VolumeError::InUse {
                name: name.to_string(),
                users: users.iter().map(|u| format!("container {u}")).collect(),
            }
            .into());
        }
        if v.scope == VolumeScope::Global
            && let Some(link) = self.cluster_link()
        {
            match link.release_volume(name.to_string()).await {
                Ok(()) => {}
                Err(e) if force => {
                    tracing::warn!(volume = name, "removing it without the managers: {e}")
                }
                Err(e) => return Err(EngineError::Conflict(e)),
            }
            self.recorded_volumes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(name);
        }
        Ok(self.volumes.remove(name, force).await?)
    }

    /// This node's record of volume `name`.
    pub fn volume_record(&self, name: &str) -> Option<Volume> {
        self.volumes.get(name).ok()
    }

    /// Volume `name` and its users: this node's, or one a plugin has.
    pub async fn volume_inspect(&self, name: &str) -> Result<VolumeUse, EngineError> {
        let v = match self.volumes.get(name) {
            Err(VolumeError::NotFound(e)) => self
                .volumes
                .plugin_volumes()
                .await
                .into_iter()
                .find(|v| v.name == name)
                .ok_or(VolumeError::NotFound(e))?,
            other => other?,
        };
        Ok(VolumeUse {
            used_by: self.referring(&v.name),
            volume: v,
        })
    }

    /// The volumes that pass every filter (`KEY=VALUE`): this node's, and those its
    /// plugins have that it has no record of (as Docker lists them).
    pub async fn volume_list(&self, filters: &[String]) -> Result<Vec<VolumeUse>, EngineError> {
        for f in filters {
            Filter::parse(f)?;
        }
        let mut all = self.volumes.list()?;
        all.extend(self.volumes.plugin_volumes().await);
        all.sort_by(|a, b| a.name.cmp(&b.name));
        self.with_users(all, filters)
    }

    /// `volumes` with their users, those that pass every filter.
    fn with_users(
        &self,
        volumes: Vec<Volume>,
        filters: &[String],
    ) -> Result<Vec<VolumeUse>, EngineError> {
        let filters = filters
            .iter()
            .map(|f| Filter::parse(f))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(volumes
            .into_iter()
            .map(|v| VolumeUse {
                used_by: self.referring(&v.name),
                volume: v,
            })
            .filter(|u| {
                filters
                    .iter()
                    .all(|f| f.matches(&u.volume, !u.used_by.is_empty()))
            })
            .collect())
    }

    /// Removes a volume no container refers to.
    pub async fn volume_remove(&self, name: &str, force: bool) -> Result<(), EngineError> {
        self.remove_volume(name, force).await
    }

    /// Removes the anonymous volumes no container refers to, or with the filter
    /// `all=true` every such volume, named ones too (as Docker since API 1.42), that
    /// pass the other filters; returns their names and the bytes their local data took.
    pub async fn volume_prune(
        &self,
        filters: &[String],
    ) -> Result<(Vec<String>, u64), EngineError> {
        let mut all = false;
        let mut rest = Vec::new();
        for f in filters {
            match f.split_once('=') {
                Some(("all", v)) => {
                    all = match v {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => {
                            return Err(EngineError::Invalid(format!(
                                "invalid filter \"{f}\": all is true or false"
                            )));
                        }
                    }
                }
                _ => rest.push(Filter::parse(f)?),
            }
        }
        let mut filters = rest;
        filters.push(Filter::Dangling(true));
        let mut removed = Vec::new();
        let mut bytes = 0;
        for u in self.with_users(self.volumes.list()?, &[])? {
            if !filters
                .iter()
                .all(|f| f.matches(&u.volume, !u.used_by.is_empty()))
                || !(all || u.volume.anonymous)
            {
                continue;
            }
            let size = if u.volume.driver == crate::volume::local::LOCAL {
                dir_size(Path::new(&u.volume.mountpoint))
            } else {
                0
            };
            match self.remove_volume(&u.volume.name, false).await {
                Ok(()) => {
                    bytes += size;
                    removed.push(u.volume.name);
                }
                Err(e) => tracing::warn!(volume = %u.volume.name, "not pruned: {e}"),
            }
        }
        Ok((removed, bytes))
    }

    /// Removes the anonymous volumes of a removed container that no other uses.
    pub(crate) async fn remove_anonymous_volumes(&self, names: &[String]) {
        for name in names {
            if self.referring(name).is_empty()
                && let Err(e) = self.remove_volume(name, false).await
            {
                tracing::warn!(volume = %name, "removing an anonymous volume: {e}");
            }
        }
    }

    /// The volume drivers this node has (local, and the plugins found).
    pub fn volume_drivers(&self) -> Vec<String> {
        self.volumes.driver_names()
    }

    /// The volume plugins found, and what they implement.
    pub async fn volume_plugins(&self) -> Vec<shoal_api::types::PluginInfo> {
        self.volumes.plugins().await
    }
}

/// The bytes of the regular files under `dir`.
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}
