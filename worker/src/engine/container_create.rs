//! `create`: checks what the user asked for and records a new container. Nothing is
//! mounted or started yet; errors here leave nothing behind.

use std::sync::{Arc, Mutex};

use shoal_api::types::{ContainerSpec, NetworkMode};
use tokio::sync::watch;

use super::record::{ContainerRecord, State};
use super::{Engine, EngineError, Entry, names, now_nanos};

/// Docker's smallest memory limit: below it a container cannot even start.
const MIN_MEMORY: i64 = 6 * 1024 * 1024;

impl Engine {
    /// Creates a container and returns its record.
    pub async fn create(&self, mut spec: ContainerSpec) -> Result<ContainerRecord, EngineError> {
        validate(&spec)?;
        if let NetworkMode::Cluster(name) = &spec.network
            && self.cluster_link().is_none()
        {
            return Err(EngineError::Invalid(format!(
                "network \"{name}\" not found: use bridge, host or none (cluster networks need this node in a cluster)"
            )));
        }
        let images = self.images.clone();
        let image_ref = spec.image.clone();
        let (image, config) = tokio::task::spawn_blocking(move || {
            let image = images.resolve(&image_ref)?;
            let config = images.config(&image)?;
            Ok::<_, crate::image::ImageError>((image, config))
        })
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))?
        .map_err(|e| EngineError::NotFound(e.to_string()))?;
        let command = command_line(&spec, &config);
        if command.is_empty() {
            return Err(EngineError::Invalid(format!(
                "no command specified: image \"{}\" has no default command; give one after the image name",
                spec.image
            )));
        }
        // The name is checked again below, under the lock; checking it first keeps a
        // refused create from making volumes.
        if !spec.name.is_empty() {
            names::validate(&spec.name)?;
            let map = self.containers.lock().expect("containers lock poisoned");
            if map
                .values()
                .any(|e| e.record.lock().expect("record lock poisoned").name == spec.name)
            {
                return Err(EngineError::Conflict(format!(
                    "the container name \"{}\" is already in use: remove that container (shoal container rm {}) or choose another name",
                    spec.name, spec.name
                )));
            }
        }
        let anonymous_volumes = self.create_volumes(&mut spec.mounts).await?;
        let id = names::new_id();
        let entry = {
            let mut map = self.containers.lock().expect("containers lock poisoned");
            let taken = |n: &str| {
                map.values()
                    .any(|e| e.record.lock().expect("record lock poisoned").name == n)
            };
            let name = if spec.name.is_empty() {
                names::generate(&id, taken)
            } else {
                names::validate(&spec.name)?;
                if taken(&spec.name) {
                    return Err(EngineError::Conflict(format!(
                        "the container name \"{}\" is already in use: remove that container (shoal container rm {}) or choose another name",
                        spec.name, spec.name
                    )));
                }
                spec.name.clone()
            };
            spec.name = name.clone();
            let record = ContainerRecord {
                id: id.clone(),
                name,
                image: spec.image.clone(),
                image_id: image.id.clone(),
                spec,
                command,
                runtime: self.config.runtime.clone(),
                created_unix_nanos: now_nanos(),
                state: State::Created,
                ip_address: String::new(),
                removing: false,
                anonymous_volumes,
            };
            let entry = Arc::new(Entry {
                record: Mutex::new(record),
                changed: watch::channel(0).0,
                op: tokio::sync::Mutex::new(()),
            });
            map.insert(id.clone(), entry.clone());
            entry
        };
        let record = entry.snapshot();
        if let Err(e) = self.store.put(&record) {
            self.containers
                .lock()
                .expect("containers lock poisoned")
                .remove(&id);
            self.remove_anonymous_volumes(&record.anonymous_volumes)
                .await;
            return Err(e);
        }
        Ok(record)
    }
}

/// The program and arguments, from the user's and the image's Entrypoint and Cmd, as
/// Docker combines them: a user's entrypoint drops the image's Cmd.
pub(crate) fn command_line(
    spec: &ContainerSpec,
    config: &oci_spec::image::ImageConfiguration,
) -> Vec<String> {
    let image = config.config().as_ref();
    let entrypoint = match &spec.entrypoint {
        Some(e) => e.clone(),
        None => image
            .and_then(|c| c.entrypoint().clone())
            .unwrap_or_default(),
    };
    let cmd = if !spec.cmd.is_empty() {
        spec.cmd.clone()
    } else if spec.entrypoint.is_some() {
        Vec::new()
    } else {
        image.and_then(|c| c.cmd().clone()).unwrap_or_default()
    };
    entrypoint.into_iter().chain(cmd).collect()
}

fn validate(spec: &ContainerSpec) -> Result<(), EngineError> {
    let invalid = |m: String| Err(EngineError::Invalid(m));
    if spec.image.trim().is_empty() {
        return invalid("no image given: name one, for example \"busybox\"".into());
    }
    {
        let r = &spec.resources;
        if r.memory_bytes < 0 || (r.memory_bytes > 0 && r.memory_bytes < MIN_MEMORY) {
            return invalid(format!(
                "invalid memory limit {} bytes: the minimum is 6m (6 MiB)",
                r.memory_bytes
            ));
        }
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as i64)
            .unwrap_or(1);
        if r.nano_cpus < 0 || r.nano_cpus > cpus * 1_000_000_000 {
            return invalid(format!(
                "invalid --cpus {}: this machine has {cpus} CPUs; use a value above 0 and at most {cpus}",
                r.nano_cpus as f64 / 1e9
            ));
        }
        if r.pids_limit < 0 {
            return invalid(format!(
                "invalid --pids-limit {}: use a positive number, or 0 for no limit",
                r.pids_limit
            ));
        }
    }
    // Other names are cluster networks, checked with the managers at start.
    let no_namespace = matches!(spec.network, NetworkMode::Host | NetworkMode::None);
    if !spec.attachments.is_empty() && no_namespace {
        return invalid(format!(
            "cluster networks need a network namespace of the container's own, not \"{}\"",
            spec.network.as_str()
        ));
    }
    if !spec.ports.is_empty() && no_namespace {
        return invalid(format!(
            "published ports need the bridge network, not \"{}\": drop -p, or use --network bridge",
            spec.network.as_str()
        ));
    }
    if let Some(p) = spec.ports.iter().find(|p| p.container_port == 0) {
        return invalid(format!(
            "invalid port mapping {}:0: the container's port is 1-65535",
            p.host_port
        ));
    }
    crate::security::caps::resolve(&spec.cap_add, &spec.cap_drop)
        .map_err(|e| EngineError::Invalid(e.to_string()))?;
    crate::security::seccomp::unconfined(&spec.security_opt)
        .map_err(|e| EngineError::Invalid(e.to_string()))?;
    if !spec.stop_signal.is_empty() {
        super::container_stop::parse_signal(&spec.stop_signal)?;
    }
    Engine::check_mounts(spec)?;
    if !spec.workdir.is_empty() && !spec.workdir.starts_with('/') {
        return invalid(format!(
            "invalid working directory \"{}\": it must be an absolute path",
            spec.workdir
        ));
    }
    Ok(())
}
