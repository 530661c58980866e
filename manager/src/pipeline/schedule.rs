//! The scheduler's stage: PENDING tasks placed on nodes by the scheduler's core (filters,
//! then spread), or told why no node fits; global tasks, which name their node from the
//! start, are assigned to it. What nodes run already is read from the snapshot.

use shoal_api::types::{Node, NodeAvailability, PublishMode, Task, TaskState};

use crate::orchestrator;
use crate::scheduler::{self, Constraint, Decision, NodeInfo, Resources, Scheduler, TaskRequest};
use crate::store::{Snapshot, Versioned, Write};

/// The scheduler's writes at `now_ms`.
pub fn run(snap: &Snapshot, now_ms: i64) -> Vec<Write> {
    let mut sched = Scheduler::new(snap.list::<Node>().map(|v| node_info(v.value)).collect());
    for v in snap.list::<Task>() {
        let t = v.value;
        if !t.node_id.is_empty()
            && orchestrator::is_live(t)
            && t.status.state >= TaskState::Assigned
        {
            sched.add_existing(&t.node_id, &t.service_id, reservations(t), &host_ports(t));
        }
        if t.status.state == TaskState::Failed && !t.node_id.is_empty() {
            sched.record_failure(&t.node_id, &t.service_id);
        }
    }
    let mut pending: Vec<Versioned<&Task>> = snap
        .list::<Task>()
        .filter(|v| {
            v.value.status.state == TaskState::Pending
                && v.value.desired_state <= TaskState::Running
        })
        .collect();
    // Grouped by service, so that tasks that place alike are scheduled together.
    pending.sort_by(|a, b| {
        let key = |t: &Task| (t.service_id.clone(), t.slot, t.id.clone());
        key(a.value).cmp(&key(b.value))
    });
    let (pinned, free): (Vec<_>, Vec<_>) = pending
        .into_iter()
        .partition(|v| !v.value.node_id.is_empty());
    let requests: Vec<TaskRequest> = free.iter().map(|v| request(v.value)).collect();
    let decisions = sched.schedule(&requests);
    let mut out = Vec::new();
    for (decision, v) in decisions.iter().zip(&free) {
        let mut t = v.value.clone();
        match decision {
            Decision::Assigned { node_id, .. } => {
                t.node_id = node_id.clone();
                assigned(&mut t, now_ms);
            }
            Decision::Unschedulable { reason, .. } => {
                if t.status.message == *reason {
                    continue;
                }
                t.status.message = reason.clone();
            }
        }
        out.push(Write::update(t, v.version));
    }
    // Global tasks name their node already.
    for v in pinned {
        let mut t = v.value.clone();
        assigned(&mut t, now_ms);
        out.push(Write::update(t, v.version));
    }
    out
}

fn assigned(t: &mut Task, now_ms: i64) {
    t.status.state = TaskState::Assigned;
    t.status.message = format!("assigned to {}", t.node_id);
    t.status.timestamp_ms = now_ms;
}

fn node_info(n: &Node) -> NodeInfo {
    NodeInfo {
        id: n.id.clone(),
        hostname: n.hostname.clone(),
        manager: n.manager,
        ready: n.ready,
        availability: match n.availability {
            NodeAvailability::Active => scheduler::Availability::Active,
            NodeAvailability::Pause => scheduler::Availability::Pause,
            NodeAvailability::Drain => scheduler::Availability::Drain,
        },
        labels: n.labels.clone(),
        os: n.os.clone(),
        arch: n.arch.clone(),
        capacity: Resources {
            nano_cpus: n.resources.nano_cpus,
            memory_bytes: n.resources.memory_bytes,
        },
        volume_drivers: n.volume_drivers.clone(),
    }
}

fn reservations(t: &Task) -> Resources {
    Resources {
        nano_cpus: t.spec.reservations.nano_cpus,
        memory_bytes: t.spec.reservations.memory_bytes,
    }
}

fn host_ports(t: &Task) -> Vec<u16> {
    t.ports
        .iter()
        .filter(|p| p.mode == PublishMode::Host)
        .map(|p| p.published)
        .collect()
}

fn request(t: &Task) -> TaskRequest {
    TaskRequest {
        task_id: t.id.clone(),
        service_id: t.service_id.clone(),
        reservations: reservations(t),
        constraints: t
            .spec
            .constraints
            .iter()
            .filter_map(|c| Constraint::parse(c).ok())
            .collect(),
        spread_over: t.spec.spread_over.clone(),
        max_replicas_per_node: t.spec.max_replicas_per_node,
        host_ports: host_ports(t),
        platforms: Vec::new(),
        volume_drivers: volume_drivers(&t.spec),
    }
}

/// The volume drivers a spec's mounts need of a node (not `local`, which every node has).
pub fn volume_drivers(spec: &shoal_api::types::ServiceSpec) -> Vec<String> {
    let mut out: Vec<String> = spec
        .mounts
        .iter()
        .filter(|m| m.kind == shoal_api::types::MountType::Volume)
        .map(|m| m.volume.driver.clone())
        .filter(|d| !d.is_empty() && d != "local")
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, task};

    #[test]
    fn pending_tasks_spread_and_unplaceable_ones_say_why_once() {
        let mut big = task("t3", "", TaskState::Pending);
        big.spec.reservations.memory_bytes = 64 << 30;
        let snap = Snapshot::new()
            .with(node("n1"), 1)
            .with(node("n2"), 2)
            .with(task("t1", "", TaskState::Pending), 3)
            .with(task("t2", "", TaskState::Pending), 4)
            .with(big.clone(), 5);
        let out = run(&snap, 7_000);
        let placed: Vec<(&str, &str, TaskState)> = out
            .iter()
            .filter_map(|w| w.object::<Task>())
            .map(|t| (t.id.as_str(), t.node_id.as_str(), t.status.state))
            .collect();
        assert_eq!(
            placed,
            vec![
                ("t1", "n1", TaskState::Assigned),
                ("t2", "n2", TaskState::Assigned),
                ("t3", "", TaskState::Pending),
            ]
        );
        let why = "no suitable node (2 nodes: insufficient memory)";
        assert_eq!(
            out[2].object::<Task>().map(|t| t.status.message.as_str()),
            Some(why)
        );
        big.status.message = why.into();
        let again = Snapshot::new()
            .with(node("n1"), 1)
            .with(node("n2"), 2)
            .with(big, 6);
        assert!(
            run(&again, 8_000).is_empty(),
            "the same reason is not written again"
        );
    }

    #[test]
    fn a_global_task_is_assigned_to_its_node() {
        let snap = Snapshot::new()
            .with(node("n1"), 1)
            .with(task("g1", "n1", TaskState::Pending), 2);
        let mut t = task("g1", "n1", TaskState::Assigned);
        t.status.message = "assigned to n1".into();
        t.status.timestamp_ms = 5;
        assert_eq!(run(&snap, 5), vec![Write::update(t, 2)]);
    }
}
