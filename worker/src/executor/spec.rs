//! A task's container spec, made from the task alone and the networks the managers told
//! of: pure, so every field's mapping is tested without an engine.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use shoal_api::mount::task_mounts;
use shoal_api::types::{
    AttachmentSpec, ContainerResources, ContainerSpec, Network, NetworkMode, PortMapping,
    PublishMode, Task,
};

/// The label that ties a container to its task.
pub const TASK_LABEL: &str = "com.shoal.task.id";
/// The label naming the container's service.
pub const SERVICE_LABEL: &str = "com.shoal.service.id";

/// A task that cannot be made into a container yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrepareError {
    /// One of its networks has not reached this node.
    #[error("network {0} is not known on this node yet: the managers have not told of it")]
    UnknownNetwork(String),
}

/// The container of `task`: its service's image, command, environment and limits, its
/// host-mode ports (ingress ones are the routing mesh's, on every node), its addresses on
/// the cluster networks it joins, and the labels that name its task and service.
pub fn container_spec(
    task: &Task,
    networks: &HashMap<String, Network>,
    node_hostname: &str,
) -> Result<ContainerSpec, PrepareError> {
    let spec = &task.spec;
    let name = task.container_name();
    let attachments = task
        .networks
        .iter()
        .map(|a| {
            let network = networks
                .get(&a.network_id)
                .cloned()
                .ok_or_else(|| PrepareError::UnknownNetwork(a.network_id.clone()))?;
            Ok(AttachmentSpec {
                network,
                addr: a.addr.clone(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // A volume's name may hold templates: each task (each slot) gets its own volume.
    let mounts = task_mounts(task, node_hostname);
    let labels = BTreeMap::from([
        (TASK_LABEL.to_string(), task.id.clone()),
        (SERVICE_LABEL.to_string(), task.service_id.clone()),
    ]);
    Ok(ContainerSpec {
        image: spec.image.clone(),
        name,
        cmd: spec.command.clone(),
        env: spec.env.clone(),
        network: NetworkMode::Bridge,
        resources: ContainerResources {
            memory_bytes: spec.limits.memory_bytes,
            nano_cpus: spec.limits.nano_cpus,
            pids_limit: spec.pids_limit,
        },
        stop_signal: spec.stop_signal.clone(),
        stop_timeout: spec.stop_grace_period_ms.map(Duration::from_millis),
        ports: task
            .ports
            .iter()
            .filter(|p| p.mode == PublishMode::Host)
            .map(|p| PortMapping {
                host_ip: None,
                host_port: p.published,
                container_port: p.target,
                protocol: p.protocol,
            })
            .collect(),
        attachments,
        labels,
        mounts,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use shoal_api::types::{
        NetworkAttachment, NetworkSpec, PortConfig, PortProtocol, ServiceSpec, TaskState,
        TaskStatus,
    };

    use super::*;

    fn task() -> Task {
        Task {
            id: "0123456789abcdef".into(),
            service_id: "svc".into(),
            slot: 2,
            node_id: "node-1".into(),
            spec: ServiceSpec {
                name: "web".into(),
                image: "busybox".into(),
                command: vec!["sleep".into(), "9".into()],
                env: vec!["A=1".into()],
                stop_grace_period_ms: Some(2_500),
                stop_signal: "SIGINT".into(),
                pids_limit: 7,
                ..Default::default()
            },
            created_ms: 0,
            ports: vec![
                PortConfig {
                    target: 80,
                    published: 8080,
                    protocol: PortProtocol::Udp,
                    mode: PublishMode::Host,
                },
                PortConfig {
                    target: 81,
                    published: 30000,
                    protocol: PortProtocol::Tcp,
                    mode: PublishMode::Ingress,
                },
            ],
            networks: vec![NetworkAttachment {
                network_id: "net1".into(),
                addr: "10.0.1.5/24".into(),
            }],
            desired_state: TaskState::Running,
            status: TaskStatus {
                state: TaskState::Assigned,
                timestamp_ms: 0,
                message: String::new(),
                exit_code: None,
                container_id: String::new(),
                health: String::new(),
            },
        }
    }

    fn net() -> Network {
        Network {
            id: "net1".into(),
            spec: NetworkSpec::default(),
            subnet: "10.0.1.0/24".into(),
            gateway: "10.0.1.1".into(),
            vni: 4096,
            created_ms: 0,
        }
    }

    #[test]
    fn a_task_becomes_its_container() {
        let known = HashMap::from([("net1".to_string(), net())]);
        let c = container_spec(&task(), &known, "host-1").expect("prepared");
        assert_eq!(c.name, "web.2.0123456789ab");
        assert_eq!(c.cmd, ["sleep", "9"]);
        assert_eq!(c.stop_timeout, Some(Duration::from_millis(2_500)));
        assert_eq!(c.resources.pids_limit, 7);
        assert_eq!(
            c.ports,
            vec![PortMapping {
                host_ip: None,
                host_port: 8080,
                container_port: 80,
                protocol: PortProtocol::Udp,
            }],
            "host-mode ports only"
        );
        assert_eq!(c.attachments.len(), 1);
        assert_eq!(c.attachments[0].addr, "10.0.1.5/24");
        assert_eq!(c.labels[TASK_LABEL], "0123456789abcdef");
        assert_eq!(c.labels[SERVICE_LABEL], "svc");
    }

    #[test]
    fn volume_names_are_expanded_per_task() {
        let mut t = task();
        t.networks.clear();
        t.spec.mounts = vec![
            shoal_api::mount::parse_mount("source={{.Service.Name}}-{{.Task.Slot}},target=/data")
                .expect("mount"),
            shoal_api::mount::parse_mount("source=logs-{{.Node.Hostname}},target=/logs")
                .expect("mount"),
            shoal_api::mount::parse_mount("type=tmpfs,target=/t").expect("mount"),
        ];
        let c = container_spec(&t, &HashMap::new(), "host-1").expect("prepared");
        let sources: Vec<&str> = c.mounts.iter().map(|m| m.source.as_str()).collect();
        assert_eq!(sources, ["web-2", "logs-host-1", ""]);
        t.slot = 0;
        let c = container_spec(&t, &HashMap::new(), "host-1").expect("prepared");
        assert_eq!(
            c.mounts[0].source, "web-node-1",
            "a global task's slot is its node"
        );
    }

    #[test]
    fn a_global_task_is_named_by_node_and_an_unknown_network_waits() {
        let mut t = task();
        t.slot = 0;
        t.networks.clear();
        t.spec.stop_grace_period_ms = None;
        let c = container_spec(&t, &HashMap::new(), "host-1").expect("prepared");
        assert_eq!(c.name, "web.node-1.0123456789ab");
        assert_eq!(c.stop_timeout, None, "the engine's default");
        assert_eq!(
            container_spec(&task(), &HashMap::new(), "host-1"),
            Err(PrepareError::UnknownNetwork("net1".into()))
        );
    }
}
