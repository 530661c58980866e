//! The engine API's volume service: create, list, inspect, remove and prune the node's
//! volumes, and list the volume plugins found.

use std::sync::Arc;

use shoal_api::engine as pb;
use shoal_api::engine::volumes_server::Volumes;
use tonic::{Request, Response, Status};

use super::containers::status;
use crate::engine::{Engine, VolumeUse};

/// The service.
pub struct VolumesService {
    /// The engine behind it.
    pub engine: Arc<Engine>,
}

fn info(u: VolumeUse) -> pb::VolumeInfo {
    let v = u.volume;
    pb::VolumeInfo {
        name: v.name,
        driver: v.driver,
        mountpoint: v.mountpoint,
        labels: v.labels.into_iter().collect(),
        options: v.options.into_iter().collect(),
        scope: v.scope.as_str().into(),
        created_unix: v.created_unix,
        used_by: u.used_by,
        anonymous: v.anonymous,
    }
}

#[tonic::async_trait]
impl Volumes for VolumesService {
    async fn create(
        &self,
        request: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::VolumeInfo>, Status> {
        let r = request.into_inner();
        let u = self
            .engine
            .volume_create(
                &r.name,
                &r.driver,
                &r.driver_opts.into_iter().collect(),
                &r.labels.into_iter().collect(),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(info(u)))
    }

    async fn list(
        &self,
        request: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesReply>, Status> {
        let filters = request.into_inner().filters;
        let volumes = self
            .engine
            .volume_list(&filters)
            .await
            .map_err(status)?
            .into_iter()
            .map(info)
            .collect();
        Ok(Response::new(pb::ListVolumesReply { volumes }))
    }

    async fn inspect(
        &self,
        request: Request<pb::VolumeRef>,
    ) -> Result<Response<pb::VolumeInfo>, Status> {
        let u = self
            .engine
            .volume_inspect(&request.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(info(u)))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveVolumeRequest>,
    ) -> Result<Response<pb::RemoveVolumeReply>, Status> {
        let r = request.into_inner();
        self.engine
            .volume_remove(&r.name, r.force)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RemoveVolumeReply {}))
    }

    async fn prune(
        &self,
        request: Request<pb::PruneVolumesRequest>,
    ) -> Result<Response<pb::PruneVolumesReply>, Status> {
        let (removed, reclaimed_bytes) = self
            .engine
            .volume_prune(&request.into_inner().filters)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::PruneVolumesReply {
            removed,
            reclaimed_bytes,
        }))
    }

    async fn plugins(
        &self,
        _request: Request<pb::ListPluginsRequest>,
    ) -> Result<Response<pb::ListPluginsReply>, Status> {
        let plugins = self
            .engine
            .volume_plugins()
            .await
            .into_iter()
            .map(|p| pb::PluginSummary {
                name: p.name,
                address: p.address,
                implements: p.implements,
                error: p.error,
            })
            .collect();
        Ok(Response::new(pb::ListPluginsReply { plugins }))
    }
}
