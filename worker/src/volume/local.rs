//! The `local` driver: a volume is a directory, `<data-root>/volumes/NAME/_data`. Given
//! `-o type=.. -o device=.. -o o=..` it mounts that filesystem there while containers use
//! the volume (a tmpfs, an NFS export, a block device), as Docker's local driver does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use shoal_api::types::{Volume, VolumeScope};

use super::VolumeError;
use super::driver::VolumeDriver;

/// The local driver's name.
pub const LOCAL: &str = "local";

/// The options the local driver takes.
const OPTIONS: [&str; 3] = ["type", "device", "o"];

/// The local driver over `root` (`<data-root>/volumes`).
pub struct LocalDriver {
    root: PathBuf,
}

impl LocalDriver {
    /// The driver keeping volumes under `root`.
    pub fn new(root: &Path) -> LocalDriver {
        LocalDriver {
            root: root.to_path_buf(),
        }
    }

    /// Where volume `name`'s data is.
    pub fn data(&self, name: &str) -> PathBuf {
        self.root.join(name).join("_data")
    }
}

/// Checks the local driver's options: only `type`, `device` and `o`; a device needs a type.
pub fn check_options(opts: &BTreeMap<String, String>) -> Result<(), VolumeError> {
    if let Some(k) = opts.keys().find(|k| !OPTIONS.contains(&k.as_str())) {
        return Err(VolumeError::Invalid(format!(
            "the local driver has no option \"{k}\": its options are type, device and o (as mount -t TYPE -o O DEVICE)"
        )));
    }
    if opts.contains_key("device") && !opts.contains_key("type") {
        return Err(VolumeError::Invalid(
            "-o device needs -o type (the filesystem type, such as nfs or ext4)".into(),
        ));
    }
    if opts.get("type").is_some_and(|t| t != "tmpfs") && !opts.contains_key("device") {
        return Err(VolumeError::Invalid(format!(
            "-o type={} needs -o device (what to mount)",
            opts["type"]
        )));
    }
    Ok(())
}

impl VolumeDriver for LocalDriver {
    fn name(&self) -> &str {
        LOCAL
    }

    fn scope(&self) -> BoxFuture<'_, Result<VolumeScope, VolumeError>> {
        Box::pin(async { Ok(VolumeScope::Local) })
    }

    fn create<'a>(
        &'a self,
        name: &'a str,
        opts: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<(), VolumeError>> {
        Box::pin(async move {
            check_options(opts)?;
            let data = self.data(name);
            std::fs::create_dir_all(&data)
                .map_err(|e| VolumeError::Io(format!("creating {}: {e}", data.display())))
        })
    }

    fn remove<'a>(&'a self, volume: &'a Volume) -> BoxFuture<'a, Result<(), VolumeError>> {
        Box::pin(async move {
            let dir = self.root.join(&volume.name);
            // Never through a filesystem still mounted there.
            let _ = nix::mount::umount2(&self.data(&volume.name), nix::mount::MntFlags::MNT_DETACH);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(VolumeError::Io(format!("removing {}: {e}", dir.display()))),
            }
        })
    }

    fn mount<'a>(
        &'a self,
        volume: &'a Volume,
        _id: &'a str,
    ) -> BoxFuture<'a, Result<PathBuf, VolumeError>> {
        Box::pin(async move {
            let data = self.data(&volume.name);
            std::fs::create_dir_all(&data)
                .map_err(|e| VolumeError::Io(format!("creating {}: {e}", data.display())))?;
            let Some(fstype) = volume.options.get("type") else {
                return Ok(data);
            };
            let device = volume
                .options
                .get("device")
                .cloned()
                .unwrap_or_else(|| fstype.clone());
            let o = crate::runtime::builtin::mounts::parse_options(
                &volume
                    .options
                    .get("o")
                    .map(|o| o.split(',').map(String::from).collect::<Vec<_>>())
                    .unwrap_or_default(),
            );
            let data_opts = (!o.data.is_empty()).then_some(o.data.as_str());
            nix::mount::mount(
                Some(device.as_str()),
                &data,
                Some(fstype.as_str()),
                o.flags,
                data_opts,
            )
            .map_err(|e| VolumeError::Driver {
                driver: LOCAL.into(),
                message: format!(
                    "mounting {device} ({fstype}, {}) on volume {}: {e}",
                    volume.options.get("o").map_or("no options", String::as_str),
                    volume.name
                ),
            })?;
            Ok(data)
        })
    }

    fn unmount<'a>(
        &'a self,
        volume: &'a Volume,
        _id: &'a str,
    ) -> BoxFuture<'a, Result<(), VolumeError>> {
        Box::pin(async move {
            if volume.options.contains_key("type") {
                match nix::mount::umount2(
                    &self.data(&volume.name),
                    nix::mount::MntFlags::MNT_DETACH,
                ) {
                    Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
                    Err(e) => {
                        return Err(VolumeError::Driver {
                            driver: LOCAL.into(),
                            message: format!("unmounting volume {}: {e}", volume.name),
                        });
                    }
                }
            }
            Ok(())
        })
    }
}
