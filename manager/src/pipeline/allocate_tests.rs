//! The allocator's stage on hand-made snapshots: what each kind of holder gets, what comes
//! free, and (property) that the writes depend on the snapshot alone and never hand one
//! address out twice.

use std::collections::HashSet;

use proptest::prelude::*;
use shoal_api::types::{EndpointMode, PortConfig, PortProtocol, PublishMode};

use super::*;
use crate::testing::{attachment, network, node, service, task};

fn ingress() -> Network {
    let mut n = network("ing", "10.0.0.0/24");
    n.spec.name = INGRESS.into();
    n.spec.ingress = true;
    n.spec.attachable = false;
    n
}

fn port(target: u16, published: u16, mode: PublishMode) -> PortConfig {
    PortConfig {
        target,
        published,
        protocol: PortProtocol::Tcp,
        mode,
    }
}

#[test]
fn a_new_task_gets_an_address_per_network_and_goes_pending() {
    let mut s = service("s1", 1);
    s.spec.networks = vec!["front".into()];
    s.spec.endpoint_mode = EndpointMode::Dnsrr;
    let mut t = task("t1", "", TaskState::New);
    t.spec = s.spec.clone();
    let snap = Snapshot::new()
        .with(network("front", "10.0.1.0/24"), 1)
        .with(s, 2)
        .with(t.clone(), 3);
    t.networks = vec![NetworkAttachment {
        network_id: "front".into(),
        addr: "10.0.1.2/24".into(),
    }];
    t.status.state = TaskState::Pending;
    t.status.message = "pending".into();
    assert_eq!(run(&snap), vec![Write::update(t, 3)]);
}

#[test]
fn services_get_a_vip_per_network_and_give_back_those_they_left() {
    let mut s = service("s1", 1);
    s.spec.networks = vec!["b".into()];
    s.vips = vec![Vip {
        network_id: "a".into(),
        addr: "10.0.1.2/24".into(),
    }];
    let snap = Snapshot::new()
        .with(network("a", "10.0.1.0/24"), 1)
        .with(network("b", "10.0.2.0/24"), 2)
        .with(s.clone(), 3);
    s.vips = vec![Vip {
        network_id: "b".into(),
        addr: "10.0.2.2/24".into(),
    }];
    assert_eq!(run(&snap), vec![Write::update(s.clone(), 3)]);
    // In dnsrr mode, no VIP at all.
    s.spec.endpoint_mode = EndpointMode::Dnsrr;
    let snap = Snapshot::new()
        .with(network("b", "10.0.2.0/24"), 2)
        .with(s.clone(), 4);
    s.vips.clear();
    assert_eq!(run(&snap), vec![Write::update(s, 4)]);
}

#[test]
fn ingress_ports_get_one_number_for_the_service_and_host_ports_one_each() {
    let mut s = service("s1", 2);
    s.spec.ports = vec![
        port(80, 0, PublishMode::Ingress),
        port(22, 0, PublishMode::Host),
    ];
    s.spec.endpoint_mode = EndpointMode::Dnsrr;
    let mut snap = Snapshot::new().with(ingress(), 1).with(s.clone(), 2);
    for id in ["t1", "t2"] {
        let mut t = task(id, "", TaskState::New);
        t.spec = s.spec.clone();
        t.ports = s.spec.ports.clone();
        snap.insert(t, 3);
    }
    let out = run(&snap);
    let svc = out
        .iter()
        .find_map(|w| w.object::<Service>())
        .expect("the service is written");
    assert_eq!(svc.ports, vec![port(80, 30000, PublishMode::Ingress)]);
    let tasks: Vec<&Task> = out.iter().filter_map(|w| w.object::<Task>()).collect();
    assert_eq!(tasks.len(), 2);
    for (t, host) in tasks.iter().zip([30001, 30002]) {
        assert_eq!(
            t.ports,
            vec![
                port(80, 30000, PublishMode::Ingress),
                port(22, host, PublishMode::Host)
            ]
        );
        assert_eq!(t.networks.len(), 1, "the ingress network");
        assert_eq!(t.status.state, TaskState::Pending);
    }
}

#[test]
fn nodes_get_an_ingress_address_and_keep_theirs() {
    let mut keeps = node("n1");
    keeps.ingress_addr = "10.0.0.9/24".into();
    let snap = Snapshot::new()
        .with(ingress(), 1)
        .with(keeps, 2)
        .with(node("n2"), 3);
    let mut n2 = node("n2");
    n2.ingress_addr = "10.0.0.2/24".into();
    assert_eq!(run(&snap), vec![Write::update(n2, 3)]);
}

#[test]
fn a_task_stopped_before_it_was_placed_ends_here() {
    let mut t = task("t1", "", TaskState::Pending);
    t.desired_state = TaskState::Shutdown;
    let snap = Snapshot::new().with(t.clone(), 5);
    t.status.state = TaskState::Shutdown;
    t.status.message = "shut down before it was placed".into();
    assert_eq!(run(&snap), vec![Write::update(t, 5)]);
}

#[test]
fn attachments_get_an_address_or_say_why_once() {
    let small = network("tiny", "10.0.9.0/30");
    let snap = Snapshot::new()
        .with(small, 1)
        .with(attachment("a1", "n1", "tiny"), 2)
        .with(attachment("a2", "n1", "tiny"), 3);
    let out = run(&snap);
    let got: Vec<(&str, &str)> = out
        .iter()
        .filter_map(|w| w.object::<Attachment>())
        .map(|a| (a.addr.as_str(), a.message.as_str()))
        .collect();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0, "10.0.9.2/30");
    assert!(got[1].0.is_empty() && !got[1].1.is_empty(), "{got:?}");
    // Told once: the same failure writes nothing the next time.
    let mut again = snap.clone();
    again.apply(&out);
    assert!(run(&again).is_empty(), "{:?}", run(&again));
}

#[test]
fn an_ended_tasks_address_comes_free() {
    let mut ended = task("t0", "n1", TaskState::Failed);
    ended.networks = vec![NetworkAttachment {
        network_id: "front".into(),
        addr: "10.0.1.2/24".into(),
    }];
    let snap = Snapshot::new()
        .with(network("front", "10.0.1.0/24"), 1)
        .with(ended, 2)
        .with(attachment("a1", "n1", "front"), 3);
    let a = run(&snap)
        .into_iter()
        .find_map(|w| w.object::<Attachment>().cloned())
        .expect("an attachment write");
    assert_eq!(a.addr, "10.0.1.2/24");
}

/// A snapshot of `tasks` NEW tasks and `services` services on two networks, with some
/// addresses already held.
fn crowd(tasks: usize, services: usize, held: usize) -> Snapshot {
    let mut snap = Snapshot::new()
        .with(network("a", "10.0.1.0/24"), 1)
        .with(network("b", "10.0.2.0/24"), 2)
        .with(ingress(), 3);
    for i in 0..services {
        let mut s = service(&format!("s{i}"), 1);
        s.spec.networks = if i % 2 == 0 {
            vec!["a".into()]
        } else {
            vec!["a".into(), "b".into()]
        };
        if i % 3 == 0 {
            s.spec.ports = vec![port(80, 0, PublishMode::Ingress)];
        }
        snap.insert(s, 10 + i as u64);
    }
    for i in 0..tasks {
        let svc = format!("s{}", i % services.max(1));
        let spec = snap
            .get::<Service>(&svc)
            .map(|s| s.value.spec.clone())
            .unwrap_or_default();
        let mut t = task(&format!("t{i:03}"), "", TaskState::New);
        t.service_id = svc;
        t.ports = spec.ports.clone();
        t.spec = spec;
        if i < held {
            t.status.state = TaskState::Running;
            t.networks = vec![NetworkAttachment {
                network_id: "a".into(),
                addr: format!("10.0.1.{}/24", 200 + i),
            }];
        }
        snap.insert(t, 100 + i as u64);
    }
    snap
}

proptest! {
    #[test]
    fn allocation_depends_on_the_snapshot_alone_and_never_doubles_an_address(
        tasks in 0usize..40,
        services in 1usize..6,
        held in 0usize..10,
    ) {
        let snap = crowd(tasks, services, held);
        let first = run(&snap);
        // A new leader reading the same state writes the same.
        prop_assert_eq!(&first, &run(&snap.clone()));
        let mut after = snap.clone();
        after.apply(&first);
        let mut seen = HashSet::new();
        for v in after.list::<Task>() {
            if v.value.status.state.is_terminal() {
                continue;
            }
            for a in &v.value.networks {
                prop_assert!(seen.insert((a.network_id.clone(), a.addr.clone())), "{} twice", a.addr);
            }
        }
        for v in after.list::<Service>() {
            for vip in &v.value.vips {
                prop_assert!(seen.insert((vip.network_id.clone(), vip.addr.clone())), "{} twice", vip.addr);
            }
        }
        // Nothing is left to allocate: a second pass writes nothing.
        prop_assert!(run(&after).is_empty());
    }
}
