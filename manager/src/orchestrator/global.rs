//! The global orchestrator: one live task per eligible node (ready, active, matching the
//! service's constraints); tasks on nodes that stopped being eligible are shut down. A
//! global job runs to one completion on every eligible node.

use std::collections::BTreeMap;

use shoal_api::types::{Node, NodeAvailability, Service, ServiceMode, Task};

use super::{Proposal, is_live, job_place, reconcile_place, rollout, trim_history};
use crate::scheduler::{Constraint, NodeInfo, Resources};

fn eligible(service: &Service, node: &Node) -> bool {
    if !node.ready || node.availability != NodeAvailability::Active {
        return false;
    }
    let info = NodeInfo {
        id: node.id.clone(),
        hostname: node.hostname.clone(),
        manager: node.manager,
        ready: node.ready,
        labels: node.labels.clone(),
        os: node.os.clone(),
        arch: node.arch.clone(),
        capacity: Resources {
            nano_cpus: node.resources.nano_cpus,
            memory_bytes: node.resources.memory_bytes,
        },
        ..Default::default()
    };
    let drivers = crate::pipeline::schedule::volume_drivers(&service.spec);
    if drivers.iter().any(|d| !node.volume_drivers.contains(d)) {
        return false;
    }
    service.spec.constraints.iter().all(|c| {
        Constraint::parse(c)
            .map(|c| c.matches(&info))
            .unwrap_or(false)
    })
}

/// The proposals that bring a global service to one task per eligible node (or a global
/// job to one completion per eligible node).
pub fn reconcile(
    service: &Service,
    tasks: &[Task],
    nodes: &[Node],
    now_ms: i64,
    next_id: &mut dyn FnMut() -> String,
) -> Vec<Proposal> {
    let mut out = Vec::new();
    let job = match service.spec.mode {
        ServiceMode::Global => false,
        ServiceMode::GlobalJob => true,
        _ => return out,
    };
    let mut by_node: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    for t in tasks.iter().filter(|t| t.service_id == service.id) {
        by_node.entry(t.node_id.as_str()).or_default().push(t);
    }
    let mut sorted: Vec<&Node> = nodes.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mine: Vec<&Task> = by_node.values().flatten().copied().collect();
    let mut rollout = if job {
        rollout::Rollout::unlimited()
    } else {
        rollout::plan(service, &mine, now_ms, &mut out)
    };
    for node in &sorted {
        let here = by_node.remove(node.id.as_str()).unwrap_or_default();
        if !eligible(service, node) {
            let (live, mut stopped): (Vec<&Task>, Vec<&Task>) =
                here.iter().partition(|t| is_live(t));
            for t in live {
                out.push(Proposal::Shutdown {
                    task_id: t.id.clone(),
                });
            }
            trim_history(&mut stopped, &mut out);
            continue;
        }
        if job {
            for t in here.iter().filter(|t| is_live(t)) {
                if !t.spec.same_task_template(&service.spec) {
                    out.push(Proposal::Shutdown {
                        task_id: t.id.clone(),
                    });
                }
            }
            job_place(service, &here, 0, &node.id, now_ms, next_id, &mut out);
            continue;
        }
        reconcile_place(
            service,
            &here,
            0,
            &node.id,
            now_ms,
            next_id,
            &mut rollout,
            &mut out,
        );
    }
    // Tasks on nodes that left the cluster.
    for (_, ts) in by_node {
        for t in ts.into_iter().filter(|t| is_live(t)) {
            out.push(Proposal::Shutdown {
                task_id: t.id.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use shoal_api::types::{ServiceSpec, TaskState};

    use super::super::new_task;
    use super::*;

    fn node(id: &str, ready: bool) -> Node {
        Node {
            id: id.into(),
            hostname: id.into(),
            manager: false,
            ready,
            status_message: String::new(),
            availability: NodeAvailability::Active,
            labels: Default::default(),
            os: "linux".into(),
            arch: "x86_64".into(),
            resources: Default::default(),
            addr: String::new(),
            desired_role: None,
            certs_since: 0,
            data_addr: String::new(),
            ingress_addr: String::new(),
            volume_drivers: Vec::new(),
        }
    }

    fn service(constraints: &[&str]) -> Service {
        Service {
            id: "g".into(),
            spec: ServiceSpec {
                name: "agent".into(),
                image: "busybox".into(),
                mode: ServiceMode::Global,
                constraints: constraints.iter().map(|c| c.to_string()).collect(),
                ..Default::default()
            },
            previous_spec: None,
            update_status: None,
            vips: Vec::new(),
            ports: Vec::new(),
        }
    }

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("t{n}")
        }
    }

    #[test]
    fn one_task_per_eligible_node() {
        let s = service(&[]);
        let mut drained = node("c", true);
        drained.availability = NodeAvailability::Drain;
        let nodes = vec![
            node("b", true),
            node("a", true),
            node("down", false),
            drained,
        ];
        let p = reconcile(&s, &[], &nodes, 0, &mut ids());
        let placed: Vec<String> = p
            .iter()
            .filter_map(|p| match p {
                Proposal::Create { task, .. } => Some(task.node_id.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(placed, vec!["a", "b"]);
    }

    #[test]
    fn tasks_leave_nodes_that_stop_being_eligible() {
        let s = service(&["node.labels.role==edge"]);
        let mut edge = node("e", true);
        edge.labels.insert("role".into(), "edge".into());
        let mut t1 = new_task(&s, "on-plain".into(), 0, "p", 0);
        t1.status.state = TaskState::Running;
        let mut t2 = new_task(&s, "on-gone".into(), 0, "gone", 0);
        t2.status.state = TaskState::Running;
        let p = reconcile(&s, &[t1, t2], &[edge, node("p", true)], 0, &mut ids());
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(matches!(&p[0], Proposal::Create { task, .. } if task.node_id == "e"));
        assert!(p.contains(&Proposal::Shutdown {
            task_id: "on-plain".into()
        }));
        assert!(p.contains(&Proposal::Shutdown {
            task_id: "on-gone".into()
        }));
    }

    #[test]
    fn a_global_job_completes_once_per_node() {
        let mut s = service(&[]);
        s.spec.mode = ServiceMode::GlobalJob;
        s.spec.restart.condition = shoal_api::types::RestartCondition::OnFailure;
        s.spec.restart.delay_ms = 100;
        let nodes = vec![node("a", true), node("b", true), node("c", true)];
        let mut done = new_task(&s, "done-a".into(), 0, "a", 0);
        done.status.state = TaskState::Complete;
        let mut failed = new_task(&s, "failed-b".into(), 0, "b", 0);
        failed.status.state = TaskState::Failed;
        failed.status.timestamp_ms = 50;
        let p = reconcile(&s, &[done, failed], &nodes, 60, &mut ids());
        let made: Vec<(String, i64)> = p
            .iter()
            .filter_map(|p| match p {
                Proposal::Create {
                    task,
                    not_before_ms,
                } => Some((task.node_id.clone(), *not_before_ms)),
                _ => None,
            })
            .collect();
        assert_eq!(
            made,
            vec![("b".to_string(), 150), ("c".to_string(), 0)],
            "a retried after the delay, c run; a is done"
        );
    }
}
