//! What each node is told of the networks its tasks join: every endpoint on them across
//! the cluster (for the overlay's forwarding entries), and the services on them with their
//! VIPs and running tasks (for service discovery and load balancing). Pure: the same store
//! gives the same views.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use shoal_api::types::{
    Attachment, EndpointMode, NetEndpoint, NetService, Network, NetworkView, Node, PublishMode,
    Service, Task, TaskState,
};

/// The prefix of the endpoint ids of nodes' own ingress endpoints.
pub const NODE_ENDPOINT: &str = "node:";

fn has_node(t: &Task) -> bool {
    !t.node_id.is_empty() && t.status.state >= TaskState::Assigned && !t.status.state.is_terminal()
}

/// The views node `node_id` needs: one per network a task of its (or a standalone
/// container's attachment) has an address on, and the ingress network's when some service
/// publishes a port in ingress mode (every node answers on those ports).
pub fn node_views(
    node_id: &str,
    networks: &[Network],
    services: &[Service],
    tasks: &[Task],
    nodes: &[Node],
    attachments: &[Attachment],
) -> Vec<NetworkView> {
    let mut wanted: BTreeSet<&str> = tasks
        .iter()
        .filter(|t| t.node_id == node_id && has_node(t))
        .flat_map(|t| t.networks.iter().map(|a| a.network_id.as_str()))
        .chain(
            attachments
                .iter()
                .filter(|a| a.node_id == node_id && !a.addr.is_empty())
                .map(|a| a.network_id.as_str()),
        )
        .collect();
    let mesh = services
        .iter()
        .any(|s| s.spec.ports.iter().any(|p| p.mode == PublishMode::Ingress));
    let ingress = networks.iter().find(|n| n.spec.ingress);
    if mesh
        && let Some(ing) = ingress
        && nodes
            .iter()
            .any(|n| n.id == node_id && !n.ingress_addr.is_empty())
    {
        wanted.insert(&ing.id);
    }
    let node_addr: HashMap<&str, &str> = nodes
        .iter()
        .map(|n| (n.id.as_str(), n.data_addr.as_str()))
        .collect();
    networks
        .iter()
        .filter(|n| wanted.contains(n.id.as_str()))
        .map(|n| view(n, services, tasks, nodes, attachments, &node_addr))
        .collect()
}

fn view(
    network: &Network,
    services: &[Service],
    tasks: &[Task],
    nodes: &[Node],
    attachments: &[Attachment],
    node_addr: &HashMap<&str, &str>,
) -> NetworkView {
    let mut endpoints: Vec<NetEndpoint> = Vec::new();
    for t in tasks.iter().filter(|t| has_node(t)) {
        for a in t.networks.iter().filter(|a| a.network_id == network.id) {
            endpoints.push(NetEndpoint {
                task_id: t.id.clone(),
                service_id: t.service_id.clone(),
                slot: t.slot,
                node_id: t.node_id.clone(),
                node_addr: node_addr
                    .get(t.node_id.as_str())
                    .copied()
                    .unwrap_or_default()
                    .to_string(),
                addr: a.addr.clone(),
                // Running, and healthy when it has a health check.
                running: t.status.state == TaskState::Running
                    && t.desired_state == TaskState::Running
                    && (t.spec.healthcheck.is_none() || t.status.health == "healthy"),
                name: String::new(),
            });
        }
    }
    // Standalone containers, by name.
    for a in attachments
        .iter()
        .filter(|a| a.network_id == network.id && !a.addr.is_empty())
    {
        endpoints.push(NetEndpoint {
            task_id: a.id.clone(),
            service_id: String::new(),
            slot: 0,
            node_id: a.node_id.clone(),
            node_addr: node_addr
                .get(a.node_id.as_str())
                .copied()
                .unwrap_or_default()
                .to_string(),
            addr: a.addr.clone(),
            running: true,
            name: a.container_name.clone(),
        });
    }
    if network.spec.ingress {
        for n in nodes.iter().filter(|n| !n.ingress_addr.is_empty()) {
            endpoints.push(NetEndpoint {
                task_id: format!("{NODE_ENDPOINT}{}", n.id),
                service_id: String::new(),
                slot: 0,
                node_id: n.id.clone(),
                node_addr: n.data_addr.clone(),
                addr: n.ingress_addr.clone(),
                running: n.ready,
                name: String::new(),
            });
        }
    }
    endpoints.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    let mut by_id: BTreeMap<&str, NetService> = BTreeMap::new();
    for s in services {
        let joins = s.spec.networks.contains(&network.id);
        // The allocator's numbers for ports published without one.
        let ingress_ports: Vec<_> = s
            .ports
            .iter()
            .chain(s.spec.ports.iter().filter(|p| p.published != 0))
            .filter(|p| network.spec.ingress && p.mode == PublishMode::Ingress)
            .fold(
                Vec::new(),
                |mut acc: Vec<shoal_api::types::PortConfig>, p| {
                    if !acc
                        .iter()
                        .any(|q| q.target == p.target && q.protocol == p.protocol)
                    {
                        acc.push(*p);
                    }
                    acc
                },
            );
        if !joins && ingress_ports.is_empty() {
            continue;
        }
        let vip = match s.spec.endpoint_mode {
            EndpointMode::Vip => s
                .vips
                .iter()
                .find(|v| v.network_id == network.id)
                .map(|v| v.addr.clone())
                .unwrap_or_default(),
            EndpointMode::Dnsrr => String::new(),
        };
        by_id.insert(
            &s.id,
            NetService {
                id: s.id.clone(),
                name: s.spec.name.clone(),
                endpoint_mode: s.spec.endpoint_mode,
                vip,
                ports: ingress_ports,
            },
        );
    }
    NetworkView {
        network: network.clone(),
        endpoints,
        services: by_id.into_values().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::types::{
        NetworkAttachment, NetworkDriver, NetworkSpec, PortConfig, PortProtocol, ServiceSpec,
        TaskStatus, Vip,
    };

    fn net(id: &str, ingress: bool) -> Network {
        Network {
            id: id.into(),
            spec: NetworkSpec {
                name: id.into(),
                driver: NetworkDriver::Overlay,
                ingress,
                ..Default::default()
            },
            subnet: "10.0.1.0/24".into(),
            gateway: "10.0.1.1".into(),
            vni: 4097,
            created_ms: 0,
        }
    }

    fn node(id: &str, ingress: &str) -> Node {
        let mut n = crate::testing::node(id);
        n.data_addr = format!("192.168.0.{}", id.len());
        n.ingress_addr = ingress.into();
        n
    }

    fn task(id: &str, node: &str, state: TaskState, nets: &[(&str, &str)]) -> Task {
        Task {
            id: id.into(),
            service_id: "web".into(),
            slot: 1,
            node_id: node.into(),
            spec: ServiceSpec::default(),
            created_ms: 0,
            ports: Vec::new(),
            networks: nets
                .iter()
                .map(|(n, a)| NetworkAttachment {
                    network_id: n.to_string(),
                    addr: a.to_string(),
                })
                .collect(),
            desired_state: TaskState::Running,
            status: TaskStatus {
                state,
                timestamp_ms: 0,
                message: String::new(),
                exit_code: None,
                container_id: String::new(),
                health: String::new(),
            },
        }
    }

    #[test]
    fn nodes_see_the_networks_of_their_tasks_with_every_endpoint() {
        let nets = [net("front", false), net("back", false)];
        let web = Service {
            id: "web".into(),
            spec: ServiceSpec {
                name: "web".into(),
                networks: vec!["front".into()],
                ..Default::default()
            },
            previous_spec: None,
            update_status: None,
            vips: vec![Vip {
                network_id: "front".into(),
                addr: "10.0.1.2/24".into(),
            }],
            ports: Vec::new(),
        };
        let tasks = [
            task("t1", "a", TaskState::Running, &[("front", "10.0.1.3/24")]),
            task("t2", "b", TaskState::Starting, &[("front", "10.0.1.4/24")]),
            task("t3", "b", TaskState::Failed, &[("front", "10.0.1.5/24")]),
            task("t4", "", TaskState::Pending, &[("front", "10.0.1.6/24")]),
            task("t5", "c", TaskState::Running, &[("back", "10.0.1.7/24")]),
        ];
        let nodes = [node("a", ""), node("b", ""), node("c", "")];
        let v = node_views("a", &nets, std::slice::from_ref(&web), &tasks, &nodes, &[]);
        assert_eq!(v.len(), 1, "only the network its tasks join");
        assert_eq!(v[0].network.id, "front");
        let eps: Vec<(&str, bool)> = v[0]
            .endpoints
            .iter()
            .map(|e| (e.task_id.as_str(), e.running))
            .collect();
        assert_eq!(
            eps,
            [("t1", true), ("t2", false)],
            "stopped and unplaced tasks are not endpoints"
        );
        assert_eq!(v[0].endpoints[1].node_addr, "192.168.0.1");
        assert_eq!(v[0].services[0].vip, "10.0.1.2/24");
        assert!(node_views("z", &nets, std::slice::from_ref(&web), &tasks, &nodes, &[]).is_empty());

        // With a health check, a running task counts once it is healthy.
        let mut checked = task("t6", "a", TaskState::Running, &[("front", "10.0.1.8/24")]);
        checked.spec.healthcheck = Some(shoal_api::types::HealthCheck {
            command: "true".into(),
            interval_ms: 1000,
            timeout_ms: 1000,
            retries: 3,
            start_period_ms: 0,
        });
        let running = |t: &Task| {
            node_views(
                "a",
                &nets,
                std::slice::from_ref(&web),
                std::slice::from_ref(t),
                &nodes,
                &[],
            )[0]
            .endpoints[0]
                .running
        };
        assert!(!running(&checked), "not healthy yet");
        checked.status.health = "healthy".into();
        assert!(running(&checked));
    }

    #[test]
    fn every_node_with_an_ingress_address_sees_the_mesh_when_a_port_is_published() {
        let nets = [net("ing", true)];
        let mut web = Service {
            id: "web".into(),
            spec: ServiceSpec {
                name: "web".into(),
                ..Default::default()
            },
            previous_spec: None,
            update_status: None,
            vips: Vec::new(),
            ports: Vec::new(),
        };
        let nodes = [
            node("a", "10.0.1.10/24"),
            node("b", "10.0.1.11/24"),
            node("c", ""),
        ];
        assert!(node_views("a", &nets, std::slice::from_ref(&web), &[], &nodes, &[]).is_empty());
        web.spec.ports.push(PortConfig {
            target: 80,
            published: 8080,
            protocol: PortProtocol::Tcp,
            mode: PublishMode::Ingress,
        });
        let v = node_views("a", &nets, std::slice::from_ref(&web), &[], &nodes, &[]);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].services[0].ports[0].published, 8080);
        let ids: Vec<&str> = v[0].endpoints.iter().map(|e| e.task_id.as_str()).collect();
        assert_eq!(ids, ["node:a", "node:b"]);
        assert!(
            node_views("c", &nets, &[web], &[], &nodes, &[]).is_empty(),
            "no ingress address yet"
        );
    }

    #[test]
    fn standalone_containers_are_endpoints_by_name_and_bring_their_network() {
        let nets = [net("front", false)];
        let a = Attachment {
            id: "a1".into(),
            node_id: "b".into(),
            container_id: "c1".into(),
            container_name: "probe".into(),
            network_id: "front".into(),
            addr: "10.0.1.9/24".into(),
            message: String::new(),
            created_ms: 0,
        };
        let nodes = [node("a", ""), node("b", "")];
        let v = node_views("b", &nets, &[], &[], &nodes, std::slice::from_ref(&a));
        assert_eq!(v.len(), 1, "its node sees the network");
        assert_eq!(v[0].endpoints.len(), 1);
        assert_eq!(v[0].endpoints[0].name, "probe");
        assert!(v[0].endpoints[0].running);
        assert!(node_views("a", &nets, &[], &[], &nodes, &[a]).is_empty());
    }
}
