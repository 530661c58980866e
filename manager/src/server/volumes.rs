//! Volumes of cluster-wide scope (their plugin says `global`: one volume, whichever node
//! mounts it): a node that makes one records it here, a node that removes one asks here
//! first, and the managers refuse while a task on another node mounts it. Volumes of
//! node scope are each node's own business and never reach the managers.

use std::collections::HashMap;

use shoal_api::control as pc;
use shoal_api::dispatcher as pd;
use shoal_api::types::{ClusterVolume, MountType, Node, Task, VolumeScope};
use tonic::{Request, Response, Status};

use super::auth::CONTROL_CALLERS;
use super::{Manager, ManagerService, internal, listing};
use crate::store::{CommandResult, Write};

/// Records the volume node `node_id` made, unless the managers have it already.
pub(super) async fn record(m: &Manager, req: &pd::RecordVolumeRequest) -> Result<(), Status> {
    let mut volume = req
        .volume()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    if volume.scope != VolumeScope::Global {
        return Err(Status::invalid_argument(format!(
            "volume {} has node scope: only volumes of cluster-wide scope are recorded by the managers",
            volume.name
        )));
    }
    if !shoal_api::mount::valid_volume_name(&volume.name) {
        return Err(Status::invalid_argument(format!(
            "invalid volume name \"{}\"",
            volume.name
        )));
    }
    if m.store
        .get::<ClusterVolume>(&volume.name)
        .map_err(internal)?
        .is_some()
    {
        return Ok(());
    }
    // The mountpoint is the recording node's; other nodes' differ.
    volume.anonymous = false;
    let written = m
        .store
        .apply(Write::create(ClusterVolume {
            volume,
            node_id: req.node_id.clone(),
        }))
        .await
        .map_err(internal)?;
    // A conflict: another node recorded it meanwhile, the same volume.
    if let CommandResult::Conflict { .. } = written {
        tracing::debug!("volume recorded by another node meanwhile");
    }
    Ok(())
}

/// Node `node_id` is about to remove volume `name`: refused while a task on another node
/// mounts it; otherwise the record goes.
pub(super) async fn release(m: &Manager, node_id: &str, name: &str) -> Result<(), Status> {
    let Some(record) = m.store.get::<ClusterVolume>(name).map_err(internal)? else {
        return Ok(());
    };
    let snap = m.store.snapshot().map_err(internal)?;
    let users = users_elsewhere(
        &snap.values::<Task>(),
        &snap.values::<Node>(),
        node_id,
        name,
    );
    if !users.is_empty() {
        return Err(Status::failed_precondition(format!(
            "volume {name} is in use by {}: remove those first (it is one volume for the whole cluster)",
            users.join(", ")
        )));
    }
    m.store
        .apply(Write::delete::<ClusterVolume>(name, Some(record.version)))
        .await
        .map_err(internal)?;
    Ok(())
}

/// The tasks on nodes other than `asker` that mount volume `name` (their templates
/// expanded as their node will): "task web.2 on node h3".
pub(crate) fn users_elsewhere(
    tasks: &[Task],
    nodes: &[Node],
    asker: &str,
    name: &str,
) -> Vec<String> {
    let hostnames: HashMap<&str, &str> = nodes
        .iter()
        .map(|n| (n.id.as_str(), n.hostname.as_str()))
        .collect();
    let mut out: Vec<String> = tasks
        .iter()
        .filter(|t| !t.node_id.is_empty() && t.node_id != asker && !t.status.state.is_terminal())
        .filter_map(|t| {
            let host = hostnames.get(t.node_id.as_str()).copied().unwrap_or("");
            shoal_api::mount::task_mounts(t, host)
                .iter()
                .any(|m| m.kind == MountType::Volume && m.source == name)
                .then(|| {
                    let node = if host.is_empty() {
                        t.node_id.as_str()
                    } else {
                        host
                    };
                    format!("task {} on node {node}", t.container_name())
                })
        })
        .collect();
    out.sort();
    out
}

/// `volume ls --cluster`: the volumes of cluster-wide scope.
pub(super) async fn list_call(
    s: &ManagerService,
    r: Request<pc::ListRequest>,
) -> Result<Response<pc::ListReply>, Status> {
    s.caller(&r, CONTROL_CALLERS, "list cluster volumes")?;
    let m = s.active().await?;
    m.fresh().await?;
    let all = m.store.list::<ClusterVolume>().map_err(internal)?;
    Ok(Response::new(listing(&all)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, task};
    use shoal_api::types::TaskState;

    #[test]
    fn only_live_tasks_on_other_nodes_that_mount_the_volume_hold_it() {
        let mut h2 = node("n2");
        h2.hostname = "h2".into();
        let nodes = vec![node("n1"), h2];
        let mount = shoal_api::mount::parse_mount(
            "type=volume,source=shared-{{.Task.Slot}},target=/data,volume-driver=g",
        )
        .expect("mount");
        let with_mount = |id: &str, node_id: &str, state: TaskState| {
            let mut t = task(id, node_id, state);
            t.spec.name = "db".into();
            t.spec.mounts = vec![mount.clone()];
            t
        };
        let tasks = vec![
            with_mount("t2", "n2", TaskState::Running),
            with_mount("t3", "n2", TaskState::Complete),
            with_mount("t1", "n1", TaskState::Running),
            task("t4", "n2", TaskState::Running),
        ];
        assert_eq!(
            users_elsewhere(&tasks, &nodes, "n1", "shared-1"),
            ["task db.1.t2 on node h2"],
            "a finished task holds nothing; the asker's own are its business"
        );
        assert_eq!(
            users_elsewhere(&tasks, &nodes, "n2", "shared-1"),
            ["task db.1.t1 on node n1"]
        );
        assert!(users_elsewhere(&tasks, &nodes, "n1", "shared-2").is_empty());
    }
}
