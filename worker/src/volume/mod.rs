//! A node's volumes: named and anonymous volumes of the local driver and of volume
//! plugins, made, listed, removed, and mounted for containers. A volume is mounted with its
//! driver once however many containers use it (the mount's users are counted, and kept
//! across daemon restarts), and unmounted when the last one lets go.
//!
//! - [`driver`]: the `VolumeDriver` trait every driver answers;
//! - [`local`]: the local driver (`<data-root>/volumes/NAME/_data`, or a filesystem of
//!   `-o type/device/o` mounted there);
//! - [`plugin`]: Docker's volume plugin protocol, and finding plugins;
//! - [`store`]: the records on disk;
//! - [`copy`]: copy-up of the image's content into a new, empty volume.

pub mod copy;
pub mod driver;
pub mod local;
pub mod plugin;
mod store;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_api::types::{PluginInfo, Volume};

use self::driver::VolumeDriver;
use self::local::{LOCAL, LocalDriver};
use self::plugin::Plugin;
use self::store::{MountState, Store};

/// Errors of volumes, worded for users.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeError {
    /// No such volume.
    #[error("volume {0} not found (see \"shoal volume ls\")")]
    NotFound(String),
    /// The volume is used.
    #[error("volume {name} is in use by {}: remove {} first", users.join(", "), if users.len() == 1 { "it" } else { "them" })]
    InUse {
        /// The volume.
        name: String,
        /// Who uses it.
        users: Vec<String>,
    },
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The volume exists with another driver, or a plugin does not exist.
    #[error("{0}")]
    Conflict(String),
    /// A driver failed.
    #[error("volume driver {driver}: {message}")]
    Driver {
        /// The driver.
        driver: String,
        /// What it said.
        message: String,
    },
    /// A plugin failed or could not be reached.
    #[error("volume plugin {plugin}: {call}: {message}")]
    Plugin {
        /// The plugin.
        plugin: String,
        /// The call.
        call: String,
        /// What happened.
        message: String,
    },
    /// The file system failed.
    #[error("{0}")]
    Io(String),
    /// The records failed.
    #[error("volume store: {0}")]
    Store(String),
}

/// How a node's volumes are set up.
#[derive(Debug, Clone)]
pub struct VolumesConfig {
    /// `<data-root>/volumes`.
    pub root: PathBuf,
    /// Where plugins are looked for, in order.
    pub plugin_dirs: Vec<PathBuf>,
    /// How long a plugin call may take.
    pub plugin_timeout: Duration,
}

impl VolumesConfig {
    /// Docker's plugin directories, and shoal's own under the run root.
    pub fn default_plugin_dirs(run_root: &Path) -> Vec<PathBuf> {
        vec![
            run_root.join("plugins"),
            PathBuf::from("/run/docker/plugins"),
            PathBuf::from("/etc/docker/plugins"),
            PathBuf::from("/usr/lib/docker/plugins"),
        ]
    }
}

/// The volumes of one node.
pub struct Volumes {
    config: VolumesConfig,
    store: Store,
    local: Arc<LocalDriver>,
    plugins: Mutex<HashMap<String, Arc<Plugin>>>,
    /// One lock per volume: a plugin that hangs holds up its own volume only.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A volume list filter (`volume ls -f`): name (a part of it), driver, label (a key, or
/// KEY=VALUE), dangling (used by no container).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// The name contains this.
    Name(String),
    /// The driver is this.
    Driver(String),
    /// It has this label (with this value).
    Label(String, Option<String>),
    /// Whether no container uses it.
    Dangling(bool),
}

impl Filter {
    /// Parses `KEY=VALUE`.
    pub fn parse(s: &str) -> Result<Filter, VolumeError> {
        let (k, v) = s.split_once('=').ok_or_else(|| {
            VolumeError::Invalid(format!(
                "invalid filter \"{s}\": use KEY=VALUE with name, driver, label or dangling"
            ))
        })?;
        Ok(match k {
            "name" => Filter::Name(v.to_string()),
            "driver" => Filter::Driver(v.to_string()),
            "label" => match v.split_once('=') {
                Some((k, v)) => Filter::Label(k.to_string(), Some(v.to_string())),
                None => Filter::Label(v.to_string(), None),
            },
            "dangling" => Filter::Dangling(match v {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => {
                    return Err(VolumeError::Invalid(format!(
                        "invalid filter \"{s}\": dangling is true or false"
                    )));
                }
            }),
            _ => {
                return Err(VolumeError::Invalid(format!(
                    "invalid filter \"{s}\": filter on name, driver, label or dangling"
                )));
            }
        })
    }

    /// Whether `v`, used or not, passes.
    pub fn matches(&self, v: &Volume, used: bool) -> bool {
        match self {
            Filter::Name(n) => v.name.contains(n.as_str()),
            Filter::Driver(d) => v.driver == *d,
            Filter::Label(k, None) => v.labels.contains_key(k),
            Filter::Label(k, Some(val)) => v.labels.get(k) == Some(val),
            Filter::Dangling(d) => used != *d,
        }
    }
}

impl Volumes {
    /// Opens the volumes kept under `config.root` (records in `<root>.redb`).
    pub fn open(config: VolumesConfig) -> Result<Volumes, VolumeError> {
        std::fs::create_dir_all(&config.root)
            .map_err(|e| VolumeError::Io(format!("creating {}: {e}", config.root.display())))?;
        let store = Store::open(&config.root.with_extension("redb"))?;
        Ok(Volumes {
            local: Arc::new(LocalDriver::new(&config.root)),
            config,
            store,
            plugins: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// The driver called `name` (empty: local): the local driver, or a plugin found now.
    pub fn driver(&self, name: &str) -> Result<Arc<dyn VolumeDriver>, VolumeError> {
        if name.is_empty() || name == LOCAL {
            return Ok(self.local.clone());
        }
        Ok(self.plugin(name)?)
    }

    /// The plugin called `name`, found now (and kept).
    fn plugin(&self, name: &str) -> Result<Arc<Plugin>, VolumeError> {
        if let Some(p) = self
            .plugins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(p.clone());
        }
        let found = plugin::discover(&self.config.plugin_dirs)
            .into_iter()
            .find(|f| f.name == name)
            .ok_or_else(|| {
                VolumeError::Conflict(format!(
                    "volume plugin {name} not found: no {name}.sock, {name}.spec or {name}.json in {}",
                    self.config
                        .plugin_dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        let address = found.address.map_err(|e| VolumeError::Plugin {
            plugin: name.to_string(),
            call: "finding it".into(),
            message: e,
        })?;
        let p = Arc::new(Plugin::new(name, address, self.config.plugin_timeout));
        self.plugins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), p.clone());
        Ok(p)
    }

    /// The volumes the plugins found have that this node has no record of (made out of
    /// band, or by another node for a plugin of cluster-wide scope), as `VolumeDriver.List`
    /// tells; a plugin that does not answer at once is left out (and warned of).
    pub async fn plugin_volumes(&self) -> Vec<Volume> {
        let known: std::collections::HashSet<String> = self
            .list()
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect();
        let mut out = Vec::new();
        for name in self.driver_names().into_iter().skip(1) {
            let Ok(p) = self.plugin(&name) else { continue };
            match p.list_volumes().await {
                Ok(list) => {
                    for (volume, mountpoint) in list {
                        if known.contains(&volume) || out.iter().any(|v: &Volume| v.name == volume)
                        {
                            continue;
                        }
                        out.push(Volume {
                            name: volume,
                            driver: name.clone(),
                            mountpoint,
                            labels: BTreeMap::new(),
                            options: BTreeMap::new(),
                            scope: p.capabilities_scope().await.unwrap_or_default(),
                            created_unix: 0,
                            anonymous: false,
                        });
                    }
                }
                Err(e) => tracing::warn!(plugin = %name, "listing its volumes: {e}"),
            }
        }
        out
    }

    /// The plugin that has volume `name`, when one found has it (`VolumeDriver.Get`,
    /// asked quickly): a mount that names no driver takes a plugin's volume of its name,
    /// as Docker does, before making a local one.
    async fn plugin_with(&self, name: &str) -> Option<String> {
        for plugin in self.driver_names().into_iter().skip(1) {
            if let Ok(p) = self.plugin(&plugin)
                && p.has_volume(name).await
            {
                return Some(plugin);
            }
        }
        None
    }

    /// The volume drivers this node has: local, and every plugin found.
    pub fn driver_names(&self) -> Vec<String> {
        let mut plugins: Vec<String> = plugin::discover(&self.config.plugin_dirs)
            .into_iter()
            .filter(|f| f.address.is_ok() && f.name != LOCAL)
            .map(|f| f.name)
            .collect();
        plugins.sort();
        plugins.dedup();
        let mut out = vec![LOCAL.to_string()];
        out.extend(plugins);
        out
    }

    /// The plugins found, each asked what it implements.
    pub async fn plugins(&self) -> Vec<PluginInfo> {
        let mut out = Vec::new();
        for f in plugin::discover(&self.config.plugin_dirs) {
            match &f.address {
                Err(e) => out.push(PluginInfo {
                    name: f.name.clone(),
                    address: String::new(),
                    implements: Vec::new(),
                    error: e.clone(),
                }),
                Ok(a) => {
                    let p = Plugin::new(&f.name, a.clone(), Duration::from_secs(5));
                    out.push(p.info().await);
                }
            }
        }
        out
    }

    /// Volume `name`.
    pub fn get(&self, name: &str) -> Result<Volume, VolumeError> {
        self.store
            .volume(name)?
            .ok_or_else(|| VolumeError::NotFound(name.to_string()))
    }

    /// Every volume, by name.
    pub fn list(&self) -> Result<Vec<Volume>, VolumeError> {
        self.store.volumes()
    }

    /// Makes a volume (a random name when `name` is None), or returns it when one of that
    /// name and driver exists already (as Docker does).
    pub async fn create(
        &self,
        name: Option<&str>,
        driver: &str,
        opts: &BTreeMap<String, String>,
        labels: &BTreeMap<String, String>,
        anonymous: bool,
    ) -> Result<Volume, VolumeError> {
        let name = match name {
            Some(n) if !n.is_empty() => {
                if !shoal_api::mount::valid_volume_name(n) {
                    return Err(VolumeError::Invalid(format!(
                        "invalid volume name \"{n}\": use letters, digits, '_', '.' and '-', starting with a letter or digit (at least 2)"
                    )));
                }
                n.to_string()
            }
            _ => shoal_api::id::random_hex(32).map_err(|e| VolumeError::Io(e.to_string()))?,
        };
        let lock = self.lock(&name);
        let _held = lock.lock().await;
        if let Some(v) = self.store.volume(&name)? {
            // A mount that names no driver takes the volume of that name as it is (as
            // Docker does); one that names another driver is a conflict.
            if !driver.is_empty() && v.driver != driver {
                return Err(VolumeError::Conflict(format!(
                    "volume {name} exists already with driver {}: remove it first, or name another",
                    v.driver
                )));
            }
            return Ok(v);
        }
        let found = if driver.is_empty() && !anonymous {
            self.plugin_with(&name).await
        } else {
            None
        };
        let driver_name = match (&found, driver) {
            (Some(p), _) => p.as_str(),
            (None, "") => LOCAL,
            (None, d) => d,
        };
        let d = self.driver(driver_name)?;
        let scope = d.scope().await?;
        d.create(&name, opts).await?;
        let volume = Volume {
            mountpoint: if driver_name == LOCAL {
                self.local.data(&name).display().to_string()
            } else {
                String::new()
            },
            name: name.clone(),
            driver: driver_name.to_string(),
            labels: labels.clone(),
            options: opts.clone(),
            scope,
            created_unix: shoal_api::clock::now_secs() as i64,
            anonymous,
        };
        if let Err(e) = self.store.set_volume(&name, Some(&volume)) {
            let _ = d.remove(&volume).await;
            return Err(e);
        }
        Ok(volume)
    }

    /// Removes a volume no container holds mounted (the caller checks who refers to it).
    /// With `force`, a driver that fails to remove it does not keep the record.
    pub async fn remove(&self, name: &str, force: bool) -> Result<(), VolumeError> {
        let lock = self.lock(name);
        let _held = lock.lock().await;
        let v = self.get(name)?;
        if let Some(m) = self.store.mount(name)?
            && !m.users.is_empty()
        {
            return Err(VolumeError::InUse {
                name: name.to_string(),
                users: m
                    .users
                    .iter()
                    .map(|u| format!("container {}", short(u)))
                    .collect(),
            });
        }
        let removed = match self.driver(&v.driver) {
            Ok(d) => d.remove(&v).await,
            Err(e) => Err(e),
        };
        if let Err(e) = removed
            && !force
        {
            return Err(e);
        }
        self.store.set_mount(name, None)?;
        self.store.set_volume(name, None)
    }

    /// Mounts volume `name` for `user` (a container): the driver mounts it for the first
    /// user only. Returns the host path to bind, and whether this was the first mount.
    pub async fn mount(&self, name: &str, user: &str) -> Result<(PathBuf, bool), VolumeError> {
        let lock = self.lock(name);
        let _held = lock.lock().await;
        let v = self.get(name)?;
        if let Some(mut m) = self.store.mount(name)? {
            if m.users.insert(user.to_string()) {
                self.store.set_mount(name, Some(&m))?;
            }
            return Ok((m.path, false));
        }
        let d = self.driver(&v.driver)?;
        let id = shoal_api::id::random_hex(32).map_err(|e| VolumeError::Io(e.to_string()))?;
        let path = d.mount(&v, &id).await?;
        let state = MountState {
            id: id.clone(),
            path: path.clone(),
            users: [user.to_string()].into(),
        };
        if let Err(e) = self.store.set_mount(name, Some(&state)) {
            let _ = d.unmount(&v, &id).await;
            return Err(e);
        }
        if v.mountpoint != path.display().to_string() {
            let mut v = v;
            v.mountpoint = path.display().to_string();
            self.store.set_volume(name, Some(&v))?;
        }
        Ok((path, true))
    }

    /// Lets go of volume `name` for `user`; the driver unmounts it after the last user.
    /// A user that holds no mount is fine.
    pub async fn unmount(&self, name: &str, user: &str) -> Result<(), VolumeError> {
        let lock = self.lock(name);
        let _held = lock.lock().await;
        let Some(mut m) = self.store.mount(name)? else {
            return Ok(());
        };
        if !m.users.remove(user) {
            return Ok(());
        }
        if !m.users.is_empty() {
            return self.store.set_mount(name, Some(&m));
        }
        let v = self.get(name)?;
        let d = self.driver(&v.driver)?;
        // The record goes even when the driver fails: nothing here holds the mount now.
        let done = d.unmount(&v, &m.id).await;
        self.store.set_mount(name, None)?;
        done
    }

    /// The containers holding a mount of volume `name`.
    pub fn users(&self, name: &str) -> Result<Vec<String>, VolumeError> {
        Ok(self
            .store
            .mount(name)?
            .map(|m| m.users.into_iter().collect())
            .unwrap_or_default())
    }
}

fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

#[cfg(test)]
mod tests;
