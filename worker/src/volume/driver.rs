//! What every volume driver does: the local driver and each volume plugin answer the same
//! calls (Docker's `VolumeDriver` protocol), so the store above them needs to know no more.

use std::collections::BTreeMap;
use std::path::PathBuf;

use futures::future::BoxFuture;
use shoal_api::types::{Volume, VolumeScope};

use super::VolumeError;

/// A volume driver.
pub trait VolumeDriver: Send + Sync {
    /// Its name (`local`, or the plugin's).
    fn name(&self) -> &str;

    /// Whether its volumes are per node or one for the cluster.
    fn scope(&self) -> BoxFuture<'_, Result<VolumeScope, VolumeError>>;

    /// Makes volume `name` with the driver's options.
    fn create<'a>(
        &'a self,
        name: &'a str,
        opts: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<(), VolumeError>>;

    /// Deletes the volume and its data.
    fn remove<'a>(&'a self, volume: &'a Volume) -> BoxFuture<'a, Result<(), VolumeError>>;

    /// Makes the volume's data available on this node for the mount `id`; returns the host
    /// path to bind into containers.
    fn mount<'a>(
        &'a self,
        volume: &'a Volume,
        id: &'a str,
    ) -> BoxFuture<'a, Result<PathBuf, VolumeError>>;

    /// Ends the mount `id`.
    fn unmount<'a>(
        &'a self,
        volume: &'a Volume,
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), VolumeError>>;
}
