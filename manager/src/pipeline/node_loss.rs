//! Node loss and drain, the pipeline's first stage. A task on a node that is down (or
//! gone) is lost: it is recorded ORPHANED, stops counting, and its slot is filled
//! elsewhere by the orchestrators in the same pass (if the node comes back, its agent
//! stops the container). A task on a drained node is asked to stop. Standalone
//! containers' attachments on a lost node give their addresses back.

use std::collections::HashMap;

use shoal_api::types::{Attachment, Node, NodeAvailability, Task, TaskState};

use crate::orchestrator;
use crate::store::{Snapshot, Write};

/// The writes that record lost and drained nodes' tasks.
pub fn run(snap: &Snapshot, now_ms: i64) -> Vec<Write> {
    let nodes: HashMap<&str, &Node> = snap
        .list::<Node>()
        .map(|v| (v.value.id.as_str(), v.value))
        .collect();
    // Why a node's tasks are lost, if they are.
    let lost = |node_id: &str| -> Option<&str> {
        match nodes.get(node_id) {
            None => Some("removed"),
            Some(n) if !n.ready => Some(n.status_message.as_str()),
            Some(_) => None,
        }
    };
    let mut out = Vec::new();
    for v in snap.list::<Task>() {
        let t = v.value;
        if t.node_id.is_empty() {
            continue;
        }
        let placed = t.status.state >= TaskState::Assigned && !t.status.state.is_terminal();
        if let Some(why) = lost(&t.node_id).filter(|_| placed) {
            let mut t = t.clone();
            t.desired_state = TaskState::Shutdown;
            t.status.state = TaskState::Orphaned;
            t.status.timestamp_ms = now_ms;
            t.status.message = format!("node {} is down ({why})", short(&t.node_id));
            out.push(Write::update(t, v.version));
        } else if orchestrator::is_live(t)
            && nodes
                .get(t.node_id.as_str())
                .is_some_and(|n| n.availability == NodeAvailability::Drain)
        {
            let mut t = t.clone();
            t.desired_state = TaskState::Shutdown;
            out.push(Write::update(t, v.version));
        }
    }
    for v in snap.list::<Attachment>() {
        if lost(&v.value.node_id).is_some() {
            out.push(Write::delete::<Attachment>(&v.value.id, Some(v.version)));
        }
    }
    out
}

fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{attachment, node, task};

    #[test]
    fn tasks_of_a_down_or_gone_node_are_orphaned_with_the_reason() {
        let mut down = node("n2");
        down.ready = false;
        down.status_message = "heartbeat failure".into();
        let snap = Snapshot::new()
            .with(node("n1"), 1)
            .with(down, 2)
            .with(task("t1", "n1", TaskState::Running), 3)
            .with(task("t2", "n2", TaskState::Running), 4)
            .with(task("t3", "gone", TaskState::Starting), 5)
            .with(task("t4", "n2", TaskState::Pending), 6)
            .with(task("t5", "n2", TaskState::Failed), 7);
        let out = run(&snap, 9_000);
        let orphan = |id: &str, on: &str, why: &str, version| {
            let mut t = task(id, on, TaskState::Orphaned);
            t.desired_state = TaskState::Shutdown;
            t.status.timestamp_ms = 9_000;
            t.status.message = format!("node {on} is down ({why})");
            Write::update(t, version)
        };
        assert_eq!(
            out,
            vec![
                orphan("t2", "n2", "heartbeat failure", 4),
                orphan("t3", "gone", "removed", 5),
            ],
            "placed tasks of lost nodes only; not yet placed or ended ones are left"
        );
    }

    #[test]
    fn a_drained_node_stops_its_live_tasks_once() {
        let mut drained = node("n1");
        drained.availability = NodeAvailability::Drain;
        let mut stopping = task("t2", "n1", TaskState::Running);
        stopping.desired_state = TaskState::Shutdown;
        let snap = Snapshot::new()
            .with(drained, 1)
            .with(task("t1", "n1", TaskState::Running), 2)
            .with(stopping, 3);
        let mut asked = task("t1", "n1", TaskState::Running);
        asked.desired_state = TaskState::Shutdown;
        assert_eq!(run(&snap, 1), vec![Write::update(asked, 2)]);
    }

    #[test]
    fn attachments_of_a_lost_node_go() {
        let mut down = node("n2");
        down.ready = false;
        let snap = Snapshot::new()
            .with(node("n1"), 1)
            .with(down, 2)
            .with(attachment("a1", "n1", "net"), 3)
            .with(attachment("a2", "n2", "net"), 4);
        assert_eq!(
            run(&snap, 1),
            vec![Write::delete::<Attachment>("a2", Some(4))]
        );
    }
}
