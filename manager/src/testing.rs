//! Builders for the manager's tests: plain objects with the fields a test does not care
//! about set to something ordinary.

use shoal_api::types::{
    Attachment, Network, NetworkDriver, NetworkSpec, Node, NodeAvailability, ResourceAmounts,
    Service, ServiceSpec, Task, TaskState, TaskStatus,
};

/// A ready, active node with 2 CPUs and 1 GiB.
pub fn node(id: &str) -> Node {
    Node {
        id: id.into(),
        hostname: id.into(),
        manager: false,
        ready: true,
        status_message: String::new(),
        availability: NodeAvailability::Active,
        labels: Default::default(),
        os: "linux".into(),
        arch: "x86_64".into(),
        resources: ResourceAmounts {
            nano_cpus: 2_000_000_000,
            memory_bytes: 1 << 30,
        },
        addr: String::new(),
        desired_role: None,
        certs_since: 0,
        data_addr: String::new(),
        ingress_addr: String::new(),
        volume_drivers: Vec::new(),
    }
}

/// A replicated service of busybox.
pub fn service(id: &str, replicas: u64) -> Service {
    Service {
        id: id.into(),
        spec: ServiceSpec {
            name: format!("{id}-name"),
            image: "busybox".into(),
            replicas,
            ..Default::default()
        },
        previous_spec: None,
        update_status: None,
        vips: Vec::new(),
        ports: Vec::new(),
    }
}

/// A task of service `s1` (with its spec) on `node_id`, in `state`, desired running.
pub fn task(id: &str, node_id: &str, state: TaskState) -> Task {
    Task {
        id: id.into(),
        service_id: "s1".into(),
        slot: 1,
        node_id: node_id.into(),
        spec: service("s1", 1).spec,
        created_ms: 0,
        ports: Vec::new(),
        networks: Vec::new(),
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

/// An overlay network with `subnet`.
pub fn network(id: &str, subnet: &str) -> Network {
    let gateway = subnet
        .split('/')
        .next()
        .and_then(|a| a.parse::<std::net::Ipv4Addr>().ok())
        .map(|a| std::net::Ipv4Addr::from(u32::from(a) + 1).to_string())
        .unwrap_or_default();
    Network {
        id: id.into(),
        spec: NetworkSpec {
            name: format!("{id}-name"),
            driver: NetworkDriver::Overlay,
            attachable: true,
            ..Default::default()
        },
        subnet: subnet.into(),
        gateway,
        vni: 4096,
        created_ms: 0,
    }
}

/// A standalone container's attachment without an address yet.
pub fn attachment(id: &str, node_id: &str, network_id: &str) -> Attachment {
    Attachment {
        id: id.into(),
        node_id: node_id.into(),
        container_id: format!("c-{id}"),
        container_name: format!("name-{id}"),
        network_id: network_id.into(),
        addr: String::new(),
        message: String::new(),
        created_ms: 0,
    }
}

/// Ids `id1`, `id2`, ...
pub fn counter() -> impl FnMut() -> String {
    let mut n = 0;
    move || {
        n += 1;
        format!("id{n}")
    }
}
