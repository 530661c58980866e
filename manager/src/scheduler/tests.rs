//! Tests of the scheduler core: tables for the filters and the explanations, properties
//! for spread and capacity.

use proptest::prelude::*;

use super::*;

const GIB: i64 = 1 << 30;

fn node(id: &str) -> NodeInfo {
    NodeInfo {
        id: id.into(),
        hostname: format!("host-{id}"),
        manager: false,
        ready: true,
        availability: Availability::Active,
        labels: BTreeMap::new(),
        os: "linux".into(),
        arch: "x86_64".into(),
        capacity: Resources {
            nano_cpus: 4_000_000_000,
            memory_bytes: 8 * GIB,
        },
        volume_drivers: vec!["local".into()],
    }
}

fn tasks(service: &str, n: usize) -> Vec<TaskRequest> {
    (0..n)
        .map(|i| TaskRequest {
            task_id: format!("{service}.{i}"),
            service_id: service.into(),
            ..Default::default()
        })
        .collect()
}

fn assigned(decisions: &[Decision]) -> Vec<String> {
    decisions
        .iter()
        .map(|d| match d {
            Decision::Assigned { node_id, .. } => node_id.clone(),
            Decision::Unschedulable { reason, .. } => format!("X {reason}"),
        })
        .collect()
}

#[test]
fn spreads_a_service_over_nodes_in_id_order() {
    let mut s = Scheduler::new(vec![node("c"), node("a"), node("b")]);
    let d = s.schedule(&tasks("web", 5));
    assert_eq!(assigned(&d), vec!["a", "b", "c", "a", "b"]);
}

#[test]
fn prefers_nodes_with_fewer_tasks_of_the_service_then_fewer_in_all() {
    let mut s = Scheduler::new(vec![node("a"), node("b"), node("c")]);
    s.add_existing("a", "web", Resources::default(), &[]);
    s.add_existing("b", "db", Resources::default(), &[]);
    s.add_existing("b", "db", Resources::default(), &[]);
    let d = s.schedule(&tasks("web", 3));
    assert_eq!(
        assigned(&d),
        vec!["c", "b", "a"],
        "c is empty; b has no web task; then a"
    );
}

#[test]
fn nodes_that_keep_failing_a_service_go_last() {
    let mut s = Scheduler::new(vec![node("a"), node("b")]);
    for _ in 0..FAILURE_THRESHOLD {
        s.record_failure("a", "web");
    }
    assert_eq!(assigned(&s.schedule(&tasks("web", 1))), vec!["b"]);
}

#[test]
fn filters_explain_themselves() {
    let mut down = node("d1");
    down.ready = false;
    let mut drained = node("d2");
    drained.availability = Availability::Drain;
    let mut small = node("s1");
    small.capacity.memory_bytes = GIB;
    let mut labelled = node("l1");
    labelled.labels.insert("zone".into(), "east".into());
    labelled.capacity.memory_bytes = GIB;
    let mut s = Scheduler::new(vec![down, drained, small, labelled]);
    let t = TaskRequest {
        task_id: "t".into(),
        service_id: "big".into(),
        reservations: Resources {
            nano_cpus: 0,
            memory_bytes: 2 * GIB,
        },
        ..Default::default()
    };
    let d = s.schedule(std::slice::from_ref(&t));
    assert_eq!(
        assigned(&d),
        vec!["X no suitable node (2 nodes: not available; 2 nodes: insufficient memory)"]
    );
    let mut constrained = t;
    constrained.constraints = vec![Constraint::parse("node.labels.zone==west").unwrap()];
    let d = s.schedule(&[constrained]);
    assert_eq!(
        assigned(&d),
        vec![
            "X no suitable node (2 nodes: not available; 2 nodes: scheduling constraints not satisfied)"
        ]
    );
    let mut empty = Scheduler::new(vec![]);
    assert_eq!(
        assigned(&empty.schedule(&tasks("x", 1))),
        vec!["X no suitable node (the cluster has no nodes)"]
    );
}

#[test]
fn constraints_roles_hostnames_and_labels() {
    let mut m = node("m");
    m.manager = true;
    let mut w = node("w");
    w.labels.insert("disk".into(), "ssd".into());
    let s0 = Scheduler::new(vec![m, w]);
    for (c, want) in [
        ("node.role==manager", "m"),
        ("node.role!=manager", "w"),
        ("node.hostname==HOST-m", "m"),
        ("node.labels.disk==ssd", "w"),
        ("node.labels.disk!=ssd", "m"),
        ("node.platform.os==linux", "m"),
    ] {
        let mut s = s0.clone();
        let mut t = tasks("svc", 1);
        t[0].constraints = vec![Constraint::parse(c).unwrap()];
        assert_eq!(assigned(&s.schedule(&t)), vec![want], "{c}");
    }
    for bad in [
        "node.role==boss",
        "node.color==red",
        "hostname",
        "node.labels.==x",
        "node.id==",
    ] {
        let e = Constraint::parse(bad).unwrap_err().to_string();
        assert!(e.contains("invalid constraint"), "{bad}: {e}");
    }
}

#[test]
fn host_ports_and_max_replicas_limit_nodes() {
    let mut s = Scheduler::new(vec![node("a"), node("b")]);
    let mut t = tasks("web", 3);
    for x in &mut t {
        x.host_ports = vec![80];
    }
    let d = s.schedule(&t);
    assert_eq!(
        assigned(&d),
        vec![
            "a",
            "b",
            "X no suitable node (2 nodes: host-mode port already in use)"
        ]
    );
    let mut s = Scheduler::new(vec![node("a"), node("b")]);
    let mut t = tasks("db", 5);
    for x in &mut t {
        x.max_replicas_per_node = 2;
    }
    let d = s.schedule(&t);
    assert_eq!(
        assigned(&d),
        vec![
            "a",
            "b",
            "a",
            "b",
            "X no suitable node (2 nodes: max replicas per node reached)"
        ]
    );
}

#[test]
fn platforms_must_match() {
    let mut arm = node("arm");
    arm.arch = "aarch64".into();
    let mut s = Scheduler::new(vec![arm, node("x86")]);
    let mut t = tasks("app", 2);
    for x in &mut t {
        x.platforms = vec![("linux".into(), "arm64".into())];
    }
    assert_eq!(assigned(&s.schedule(&t)), vec!["arm", "arm"]);
}

#[test]
fn placement_preferences_spread_over_label_values_first() {
    let mut nodes = Vec::new();
    for (id, zone) in [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")] {
        let mut n = node(id);
        n.labels.insert("zone".into(), zone.into());
        nodes.push(n);
    }
    let mut s = Scheduler::new(nodes);
    let mut t = tasks("web", 4);
    for x in &mut t {
        x.spread_over = vec!["zone".into()];
    }
    let d = assigned(&s.schedule(&t));
    // Two per zone, whatever the number of nodes in each zone.
    assert_eq!(d.iter().filter(|n| n.starts_with('a')).count(), 2, "{d:?}");
    assert_eq!(d.iter().filter(|n| n.starts_with('b')).count(), 2, "{d:?}");
}

proptest! {
    /// Between nodes that are alike, spread never differs by more than one task.
    #[test]
    fn spread_is_even_on_equal_nodes(nodes in 1usize..40, n in 0usize..400) {
        let mut s = Scheduler::new((0..nodes).map(|i| node(&format!("n{i:03}"))).collect());
        let d = s.schedule(&tasks("svc", n));
        prop_assert_eq!(d.len(), n);
        let counts: Vec<u32> = (0..nodes).map(|i| s.tasks_of(&format!("n{i:03}"), "svc")).collect();
        let (min, max) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
        prop_assert!(max - min <= 1, "{:?}", counts);
    }

    /// No node ends over its capacity, whatever the mix of requests.
    #[test]
    fn no_node_over_capacity(
        caps in proptest::collection::vec(1i64..16, 1..20),
        reqs in proptest::collection::vec((0usize..4, 1i64..6), 1..200),
    ) {
        let nodes: Vec<NodeInfo> = caps
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut n = node(&format!("n{i:02}"));
                n.capacity.memory_bytes = c * GIB;
                n
            })
            .collect();
        let mut s = Scheduler::new(nodes.clone());
        let ts: Vec<TaskRequest> = reqs
            .iter()
            .enumerate()
            .map(|(i, (svc, mem))| TaskRequest {
                task_id: format!("t{i}"),
                service_id: format!("s{svc}"),
                reservations: Resources { nano_cpus: 0, memory_bytes: mem * GIB },
                ..Default::default()
            })
            .collect();
        let d = s.schedule(&ts);
        let mut used: HashMap<String, i64> = HashMap::new();
        for (dec, t) in d.iter().zip(&ts) {
            if let Decision::Assigned { node_id, task_id } = dec {
                prop_assert_eq!(task_id, &t.task_id);
                *used.entry(node_id.clone()).or_default() += t.reservations.memory_bytes;
            }
        }
        for n in &nodes {
            prop_assert!(used.get(&n.id).copied().unwrap_or(0) <= n.capacity.memory_bytes);
        }
    }

    /// The same input always gives the same placement.
    #[test]
    fn deterministic(nodes in 1usize..20, n in 0usize..100) {
        let make = || Scheduler::new((0..nodes).rev().map(|i| node(&format!("n{i}"))).collect());
        let (mut a, mut b) = (make(), make());
        prop_assert_eq!(a.schedule(&tasks("s", n)), b.schedule(&tasks("s", n)));
    }
}

#[test]
fn tasks_go_only_to_nodes_with_their_volume_drivers() {
    let mut with = node("a1");
    with.volume_drivers.push("nfsplug".into());
    let mut s = Scheduler::new(vec![with, node("b1"), node("c1")]);
    let t = TaskRequest {
        task_id: "t".into(),
        service_id: "db".into(),
        volume_drivers: vec!["nfsplug".into()],
        ..Default::default()
    };
    let d = s.schedule(&[t.clone(), t.clone()]);
    assert_eq!(assigned(&d), vec!["a1", "a1"]);
    let mut lonely = Scheduler::new(vec![node("b1"), node("c1")]);
    let d = lonely.schedule(&[t]);
    assert_eq!(
        assigned(&d),
        vec!["X no suitable node (2 nodes: lack volume driver nfsplug)"]
    );
}
