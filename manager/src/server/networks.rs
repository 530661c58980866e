//! Networks through the control API: create (the allocator's subnet and VXLAN id), remove
//! (refused while in use, naming the users), get and list; the names a service spec
//! gives its networks, turned into ids; and standalone containers' attachments.

use std::time::Duration;

use shoal_api::control as pc;
use shoal_api::types::{
    Attachment, AttachmentSpec, Network, NetworkDriver, NetworkSpec, PublishMode, Service,
    ServiceSpec, Task,
};
use tonic::{Request, Response, Status};

use super::auth::CONTROL_CALLERS;
use super::{Manager, ManagerService, internal, listing, object};
use crate::allocator::{self, INGRESS};
use crate::objects::ClusterRecord;
use crate::store::{CommandResult, Versioned, Write};

/// The networks in the store.
pub(super) fn networks(m: &Manager) -> Result<Vec<Versioned<Network>>, Status> {
    m.store.list::<Network>().map_err(internal)
}

/// The network named, or whose id (or a prefix of at least 4) is `key`.
pub(super) fn find_network(m: &Manager, key: &str) -> Result<Versioned<Network>, Status> {
    let all = networks(m)?;
    if let Some(n) = all
        .iter()
        .find(|n| n.value.id == key || n.value.spec.name == key)
    {
        return Ok(n.clone());
    }
    let by_prefix: Vec<&Versioned<Network>> = all
        .iter()
        .filter(|n| key.len() >= 4 && n.value.id.starts_with(key))
        .collect();
    match by_prefix.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Status::not_found(format!(
            "network {key} not found (see \"shoal network ls\")"
        ))),
        _ => Err(Status::invalid_argument(format!(
            "{key} names more than one network: give more of the id, or the name"
        ))),
    }
}

/// Creates a network: checks the spec and the name, allocates, and writes it together
/// with the cluster record's bumped network count (a creation that raced another is
/// tried again).
pub(super) async fn create(m: &Manager, spec: NetworkSpec) -> Result<Versioned<Network>, Status> {
    allocator::check_network_spec(&spec).map_err(Status::invalid_argument)?;
    for _ in 0..10 {
        m.cluster_record().await.map_err(internal)?;
        let Some(cluster) = m
            .store
            .get::<ClusterRecord>(crate::objects::CLUSTER_ID)
            .map_err(internal)?
        else {
            continue;
        };
        let existing: Vec<Network> = networks(m)?.into_iter().map(|v| v.value).collect();
        if existing.iter().any(|n| n.spec.name == spec.name) {
            return Err(Status::already_exists(format!(
                "a network named {} exists already: remove it first, or choose another name",
                spec.name
            )));
        }
        if spec.ingress
            && let Some(other) = existing.iter().find(|n| n.spec.ingress)
        {
            return Err(Status::already_exists(format!(
                "the cluster has an ingress network already ({}): remove it first",
                other.spec.name
            )));
        }
        let a = allocator::allocate_network(&spec, &existing, &cluster.value.addr_pool)
            .map_err(Status::failed_precondition)?;
        let network = Network {
            id: shoal_api::id::random_hex(12).map_err(|e| Status::internal(e.to_string()))?,
            spec: spec.clone(),
            subnet: a.subnet.to_string(),
            gateway: a.gateway.to_string(),
            vni: a.vni,
            created_ms: shoal_api::clock::now_ms(),
        };
        let mut bumped = cluster.value;
        bumped.network_changes += 1;
        let written = m
            .store
            .apply_all(&[
                Write::update(bumped, cluster.version),
                Write::create(network.clone()),
            ])
            .await
            .map_err(internal)?;
        if let CommandResult::Applied(versions) = written {
            return Ok(Versioned {
                version: versions.last().copied().unwrap_or(0),
                value: network,
            });
        }
    }
    Err(Status::aborted(
        "networks kept changing while this one was being made: try again",
    ))
}

/// The ingress network every cluster starts with (as Swarm's): ports published in ingress
/// mode reach tasks through it. Made once, when the cluster starts.
pub(super) async fn ensure_ingress(m: &Manager) -> Result<(), Status> {
    if networks(m)?.iter().any(|n| n.value.spec.ingress) {
        return Ok(());
    }
    create(
        m,
        NetworkSpec {
            name: INGRESS.into(),
            driver: NetworkDriver::Overlay,
            ingress: true,
            ..Default::default()
        },
    )
    .await
    .map(|_| ())
}

/// Who uses `network`: services that name it (or publish through it, for the ingress
/// network), tasks still stopping, standalone containers.
fn users(m: &Manager, network: &Network) -> Result<Vec<String>, Status> {
    let snap = m.store.snapshot().map_err(internal)?;
    let mut users = Vec::new();
    let mut listed = std::collections::HashSet::new();
    for v in snap.list::<Service>() {
        let s = v.value;
        let publishes = s.spec.ports.iter().any(|p| p.mode == PublishMode::Ingress);
        if s.spec.networks.contains(&network.id) || (network.spec.ingress && publishes) {
            users.push(format!("service {}", s.spec.name));
            listed.insert(s.id.as_str());
        }
    }
    // Tasks still stopping (of a service already removed).
    for v in snap.list::<Task>() {
        let t = v.value;
        let uses = t.networks.iter().any(|a| a.network_id == network.id);
        if uses && !t.status.state.is_terminal() && !listed.contains(t.service_id.as_str()) {
            users.push(format!(
                "task {} (stopping)",
                t.id.chars().take(12).collect::<String>()
            ));
        }
    }
    for v in snap.list::<Attachment>() {
        if v.value.network_id == network.id {
            users.push(format!("container {}", v.value.container_name));
        }
    }
    Ok(users)
}

/// Removes a network that no service names and no live task or container uses.
pub(super) async fn remove(m: &Manager, key: &str) -> Result<(), Status> {
    let Versioned {
        version,
        value: network,
    } = find_network(m, key)?;
    let mut users = users(m, &network)?;
    if !users.is_empty() {
        users.truncate(10);
        return Err(Status::failed_precondition(format!(
            "network {} is in use by {}: remove those first",
            network.spec.name,
            users.join(", ")
        )));
    }
    let written = m
        .store
        .apply(Write::delete::<Network>(&network.id, Some(version)))
        .await
        .map_err(internal)?;
    match written {
        CommandResult::Applied(_) => Ok(()),
        _ => Err(Status::aborted(format!(
            "network {} changed while it was being removed: try again",
            network.spec.name
        ))),
    }
}

/// Turns the networks a service spec names (names, ids or id prefixes) into ids, each
/// once, refusing unknown ones and the ingress network (which tasks join by publishing a
/// port in ingress mode).
pub(super) fn resolve_service_networks(m: &Manager, spec: &mut ServiceSpec) -> Result<(), Status> {
    let mut ids: Vec<String> = Vec::new();
    for key in &spec.networks {
        let n = find_network(m, key)
            .map_err(|e| {
                Status::invalid_argument(format!(
                    "{}; create it with \"shoal network create -d overlay {key}\"",
                    e.message()
                ))
            })?
            .value;
        if n.spec.ingress {
            return Err(Status::invalid_argument(format!(
                "network {} is the routing mesh's: tasks join it by publishing a port in ingress mode (--publish published=P,target=T)",
                n.spec.name
            )));
        }
        if !ids.contains(&n.id) {
            ids.push(n.id);
        }
    }
    spec.networks = ids;
    Ok(())
}

/// Refuses a port published in ingress mode that another service publishes already (every
/// node answers on it, so it is the cluster's), or when the cluster has no ingress network.
pub(super) fn check_ingress_ports(
    m: &Manager,
    spec: &ServiceSpec,
    service_id: &str,
) -> Result<(), Status> {
    let mine: Vec<_> = spec
        .ports
        .iter()
        .filter(|p| p.mode == PublishMode::Ingress)
        .collect();
    if mine.is_empty() {
        return Ok(());
    }
    if !networks(m)?.iter().any(|n| n.value.spec.ingress) {
        return Err(Status::failed_precondition(
            "the cluster has no ingress network (it was removed): publish with mode=host, or create one with `shoal network create --ingress`",
        ));
    }
    for v in m.store.list::<Service>().map_err(internal)? {
        let other = v.value;
        if other.id == service_id {
            continue;
        }
        for p in &mine {
            if p.published != 0
                && other.spec.ports.iter().chain(&other.ports).any(|q| {
                    q.mode == PublishMode::Ingress
                        && q.published == p.published
                        && q.protocol == p.protocol
                })
            {
                return Err(Status::already_exists(format!(
                    "port {} is already published by service {}: choose another published port",
                    p.published, other.spec.name
                )));
            }
        }
    }
    Ok(())
}

/// Records a standalone container's attachment to an attachable network and waits for
/// the allocator to give it an address.
pub(super) async fn attach_container(
    m: &Manager,
    node_id: &str,
    network: &str,
    container_id: &str,
    container_name: &str,
) -> Result<AttachmentSpec, Status> {
    let net = find_network(m, network)
        .map_err(|e| {
            Status::not_found(format!(
                "{}; cluster networks are made with \"shoal network create --attachable NAME\" on a manager",
                e.message()
            ))
        })?
        .value;
    if net.spec.ingress || !net.spec.attachable {
        return Err(Status::failed_precondition(format!(
            "network {} is not attachable: only services join it (create one with \"shoal network create --attachable NAME\")",
            net.spec.name
        )));
    }
    // A container that joins again (restarted) keeps one attachment.
    detach_container(m, node_id, container_id).await?;
    let id = shoal_api::id::random_hex(12).map_err(|e| Status::internal(e.to_string()))?;
    let mut watch = m.store.watch::<Attachment>();
    m.store
        .apply(Write::create(Attachment {
            id: id.clone(),
            node_id: node_id.to_string(),
            container_id: container_id.to_string(),
            container_name: container_name.to_string(),
            network_id: net.id.clone(),
            addr: String::new(),
            message: String::new(),
            created_ms: shoal_api::clock::now_ms(),
        }))
        .await
        .map_err(internal)?;
    let current = || {
        m.store
            .get::<Attachment>(&id)
            .ok()
            .flatten()
            .map(|v| v.value)
    };
    let got = watch
        .until(Duration::from_secs(10), current, |a| {
            a.id == id && !a.addr.is_empty()
        })
        .await;
    match got {
        Some(a) => Ok(AttachmentSpec {
            network: net,
            addr: a.addr,
        }),
        None => Err(Status::resource_exhausted(format!(
            "no address on network {}: {}",
            net.spec.name,
            current().map(|a| a.message).unwrap_or_default()
        ))),
    }
}

/// Forgets the attachments of a container on a node (its addresses come free).
pub(super) async fn detach_container(
    m: &Manager,
    node_id: &str,
    container_id: &str,
) -> Result<(), Status> {
    let gone: Vec<Write> = m
        .store
        .list::<Attachment>()
        .map_err(internal)?
        .into_iter()
        .filter(|v| v.value.node_id == node_id && v.value.container_id == container_id)
        .map(|v| Write::delete::<Attachment>(&v.value.id, Some(v.version)))
        .collect();
    if !gone.is_empty() {
        m.store.apply_all(&gone).await.map_err(internal)?;
    }
    Ok(())
}

pub(super) async fn create_call(
    s: &ManagerService,
    r: Request<pc::CreateNetworkRequest>,
) -> Result<Response<pc::ObjectReply>, Status> {
    s.caller(&r, CONTROL_CALLERS, "create network")?;
    let m = s.active().await?;
    if let Some(mut leader) = s.forward(&m).await? {
        return leader.create_network(r.into_inner()).await;
    }
    let spec = r
        .into_inner()
        .spec()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let n = create(&m, spec).await?;
    Ok(Response::new(pc::ObjectReply {
        object: Some(object(&n.value.id, n.version, &n.value)?),
    }))
}

pub(super) async fn remove_call(
    s: &ManagerService,
    r: Request<pc::RemoveRequest>,
) -> Result<Response<pc::RemoveReply>, Status> {
    s.caller(&r, CONTROL_CALLERS, "remove network")?;
    let m = s.active().await?;
    if let Some(mut leader) = s.forward(&m).await? {
        return leader.remove_network(r.into_inner()).await;
    }
    remove(&m, &r.into_inner().id).await?;
    Ok(Response::new(pc::RemoveReply {}))
}

pub(super) async fn get_call(
    s: &ManagerService,
    r: Request<pc::GetRequest>,
) -> Result<Response<pc::ObjectReply>, Status> {
    s.caller(&r, CONTROL_CALLERS, "get network")?;
    let m = s.active().await?;
    m.fresh().await?;
    let n = find_network(&m, &r.into_inner().id)?;
    Ok(Response::new(pc::ObjectReply {
        object: Some(object(&n.value.id, n.version, &n.value)?),
    }))
}

pub(super) async fn list_call(
    s: &ManagerService,
    r: Request<pc::ListRequest>,
) -> Result<Response<pc::ListReply>, Status> {
    s.caller(&r, CONTROL_CALLERS, "list networks")?;
    let m = s.active().await?;
    m.fresh().await?;
    Ok(Response::new(listing(&networks(&m)?)?))
}
