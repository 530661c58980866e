//! Networks through the control API: create (the allocator's subnet and VXLAN id), remove
//! (refused while in use, naming the users), get and list; and the names a service spec
//! gives its networks, turned into ids.

use shoal_api::control as pc;
use shoal_api::types::{Network, NetworkDriver, NetworkSpec, Service, ServiceSpec, Task};
use tonic::Status;

use super::{Manager, internal, now_ms, object};
use crate::allocator::{self, AddrPool, INGRESS};
use crate::pipeline::{ADDR_POOL_ID, kinds};
use crate::store::{Command, CommandResult};

/// The id of the object every network creation and removal bumps: two that race cannot
/// both pick the same subnet or VXLAN id.
const NETWORKS_GUARD: &str = "networks";

/// The networks in the store.
pub(super) fn networks(m: &Manager) -> Result<Vec<Network>, Status> {
    m.store
        .list(kinds::NETWORK)
        .map_err(internal)?
        .into_iter()
        .map(|(_, v)| {
            serde_json::from_value(v.value)
                .map_err(|e| Status::internal(format!("a stored network is malformed: {e}")))
        })
        .collect()
}

/// The network named, or whose id (or a prefix of at least 4) is `key`.
pub(super) fn find_network(m: &Manager, key: &str) -> Result<Network, Status> {
    let all = networks(m)?;
    if let Some(n) = all.iter().find(|n| n.id == key || n.spec.name == key) {
        return Ok(n.clone());
    }
    let by_prefix: Vec<&Network> = all
        .iter()
        .filter(|n| key.len() >= 4 && n.id.starts_with(key))
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

/// The cluster's address pool.
pub(super) fn addr_pool(m: &Manager) -> Result<AddrPool, Status> {
    match m
        .store
        .get(kinds::CLUSTER, ADDR_POOL_ID)
        .map_err(internal)?
    {
        Some(v) => serde_json::from_value(v.value)
            .map_err(|e| Status::internal(format!("the stored address pool is malformed: {e}"))),
        None => Ok(AddrPool::default()),
    }
}

fn random_id() -> Result<String, Status> {
    let mut buf = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .map_err(|e| Status::internal(format!("making an id: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Creates a network: checks the spec and the name, allocates, and writes it together
/// with the guard's new version (a creation that raced another is tried again).
pub(super) async fn create(m: &Manager, spec: NetworkSpec) -> Result<pc::Object, Status> {
    allocator::check_network_spec(&spec).map_err(Status::invalid_argument)?;
    for _ in 0..10 {
        let guard = m
            .store
            .get(kinds::CLUSTER, NETWORKS_GUARD)
            .map_err(internal)?;
        let (count, guard_version) = guard
            .map(|v| (v.value.as_u64().unwrap_or(0), v.version))
            .unwrap_or((0, 0));
        let existing = networks(m)?;
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
        let pool = addr_pool(m)?;
        let a = allocator::allocate_network(&spec, &existing, &pool)
            .map_err(Status::failed_precondition)?;
        let network = Network {
            id: random_id()?,
            spec: spec.clone(),
            subnet: a.subnet.to_string(),
            gateway: a.gateway.to_string(),
            vni: a.vni,
            created_ms: now_ms(),
        };
        let written = m
            .store
            .write(Command::Batch {
                commands: vec![
                    Command::Put {
                        kind: kinds::CLUSTER.into(),
                        id: NETWORKS_GUARD.into(),
                        value: serde_json::json!(count + 1),
                        expected_version: Some(guard_version),
                    },
                    Command::Put {
                        kind: kinds::NETWORK.into(),
                        id: network.id.clone(),
                        value: serde_json::to_value(&network).unwrap_or_default(),
                        expected_version: Some(0),
                    },
                ],
            })
            .await
            .map_err(internal)?;
        if let CommandResult::Applied(versions) = written {
            return Ok(pc::Object {
                id: network.id.clone(),
                version: versions.last().copied().unwrap_or(0),
                json: serde_json::to_string(&network).unwrap_or_default(),
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
    if networks(m)?.iter().any(|n| n.spec.ingress) {
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

/// Removes a network that no service names and no live task or container uses.
pub(super) async fn remove(m: &Manager, key: &str) -> Result<(), Status> {
    let network = find_network(m, key)?;
    let mut users = Vec::new();
    let mut listed = std::collections::HashSet::new();
    for (_, v) in m.store.list(kinds::SERVICE).map_err(internal)? {
        let s: Service =
            serde_json::from_value(v.value).map_err(|e| Status::internal(e.to_string()))?;
        let publishes = s
            .spec
            .ports
            .iter()
            .any(|p| p.mode == shoal_api::types::PublishMode::Ingress);
        if s.spec.networks.contains(&network.id) || (network.spec.ingress && publishes) {
            users.push(format!("service {}", s.spec.name));
            listed.insert(s.id);
        }
    }
    // Tasks still stopping (of a service already removed), and standalone containers.
    for (_, v) in m.store.list(kinds::TASK).map_err(internal)? {
        let t: Task =
            serde_json::from_value(v.value).map_err(|e| Status::internal(e.to_string()))?;
        let uses = t.networks.iter().any(|a| a.network_id == network.id);
        if uses && !t.status.state.is_terminal() && !listed.contains(&t.service_id) {
            users.push(if t.service_id.is_empty() {
                format!("container {}", t.spec.name)
            } else {
                format!(
                    "task {} (stopping)",
                    t.id.chars().take(12).collect::<String>()
                )
            });
        }
    }
    if !users.is_empty() {
        users.truncate(10);
        return Err(Status::failed_precondition(format!(
            "network {} is in use by {}: remove those first",
            network.spec.name,
            users.join(", ")
        )));
    }
    let version = m
        .store
        .get(kinds::NETWORK, &network.id)
        .map_err(internal)?
        .map(|v| v.version);
    let Some(version) = version else {
        return Ok(());
    };
    let written = m
        .store
        .write(Command::Delete {
            kind: kinds::NETWORK.into(),
            id: network.id.clone(),
            expected_version: Some(version),
        })
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

/// The stored objects of every network.
pub(super) fn list(m: &Manager) -> Result<Vec<pc::Object>, Status> {
    Ok(m.store
        .list(kinds::NETWORK)
        .map_err(internal)?
        .iter()
        .map(|(id, v)| object(id, v))
        .collect())
}

/// Turns the networks a service spec names (names, ids or id prefixes) into ids, each
/// once, refusing unknown ones and the ingress network (which tasks join by publishing a
/// port in ingress mode).
pub(super) fn resolve_service_networks(m: &Manager, spec: &mut ServiceSpec) -> Result<(), Status> {
    let mut ids: Vec<String> = Vec::new();
    for key in &spec.networks {
        let n = find_network(m, key).map_err(|e| {
            Status::invalid_argument(format!(
                "{}; create it with \"shoal network create -d overlay {key}\"",
                e.message()
            ))
        })?;
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
    use shoal_api::types::PublishMode;
    let mine: Vec<_> = spec
        .ports
        .iter()
        .filter(|p| p.mode == PublishMode::Ingress)
        .collect();
    if mine.is_empty() {
        return Ok(());
    }
    if !networks(m)?.iter().any(|n| n.spec.ingress) {
        return Err(Status::failed_precondition(
            "the cluster has no ingress network (it was removed): publish with mode=host, or create one with `shoal network create --ingress`",
        ));
    }
    for (_, v) in m.store.list(kinds::SERVICE).map_err(internal)? {
        let other: Service =
            serde_json::from_value(v.value).map_err(|e| Status::internal(e.to_string()))?;
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

/// Records a standalone container's attachment to an attachable network (a task without a
/// service, on the container's node) and waits for the allocator to give it an address.
pub(super) async fn attach_container(
    m: &Manager,
    node_id: &str,
    network: &str,
    container_id: &str,
    container_name: &str,
) -> Result<shoal_api::types::AttachmentSpec, Status> {
    use shoal_api::types::{TaskState, TaskStatus};
    let net = find_network(m, network).map_err(|e| {
        Status::not_found(format!(
            "{}; cluster networks are made with \"shoal network create --attachable NAME\" on a manager",
            e.message()
        ))
    })?;
    if net.spec.ingress || !net.spec.attachable {
        return Err(Status::failed_precondition(format!(
            "network {} is not attachable: only services join it (create one with \"shoal network create --attachable NAME\")",
            net.spec.name
        )));
    }
    // A container that joins again (restarted) keeps one attachment.
    detach_container(m, node_id, container_id).await?;
    let id = random_id()?;
    let task = Task {
        id: id.clone(),
        service_id: String::new(),
        slot: 0,
        node_id: node_id.to_string(),
        spec: ServiceSpec {
            name: container_name.to_string(),
            networks: vec![net.id.clone()],
            ..Default::default()
        },
        created_ms: now_ms(),
        ports: Vec::new(),
        networks: Vec::new(),
        desired_state: TaskState::Running,
        status: TaskStatus {
            state: TaskState::New,
            timestamp_ms: now_ms(),
            message: format!("attachment of container {container_name}"),
            exit_code: None,
            container_id: container_id.to_string(),
            health: String::new(),
        },
    };
    m.store
        .write(Command::Put {
            kind: kinds::TASK.into(),
            id: id.clone(),
            value: serde_json::to_value(&task).unwrap_or_default(),
            expected_version: Some(0),
        })
        .await
        .map_err(internal)?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(v) = m.store.get(kinds::TASK, &id).map_err(internal)? {
            let t: Task =
                serde_json::from_value(v.value).map_err(|e| Status::internal(e.to_string()))?;
            if let Some(a) = t.networks.first() {
                return Ok(shoal_api::types::AttachmentSpec {
                    network: net,
                    addr: a.addr.clone(),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::resource_exhausted(format!(
                    "no address on network {}: {}",
                    net.spec.name, t.status.message
                )));
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Forgets the attachments of a container on a node (its addresses come free).
pub(super) async fn detach_container(
    m: &Manager,
    node_id: &str,
    container_id: &str,
) -> Result<(), Status> {
    for (id, v) in m.store.list(kinds::TASK).map_err(internal)? {
        if v.value["service_id"] == ""
            && v.value["node_id"] == node_id
            && v.value["status"]["container_id"] == container_id
        {
            m.store
                .write(Command::Delete {
                    kind: kinds::TASK.into(),
                    id,
                    expected_version: Some(v.version),
                })
                .await
                .map_err(internal)?;
        }
    }
    Ok(())
}
