//! The orchestrators' stage: every service's tasks reconciled by its mode's orchestrator
//! (replicated, global, jobs; restarts; rolling updates and rollbacks), and the tasks of
//! removed services stopped, then forgotten. The orchestrators propose; this stage turns
//! proposals into writes against the versions the snapshot holds.

use std::collections::{BTreeMap, HashMap};

use shoal_api::types::{Node, Service, ServiceMode, Task, TaskState, UpdateState, UpdateStatus};

use crate::orchestrator::{self, Proposal};
use crate::store::{Snapshot, Write};

/// Where new tasks' ids come from (random in a manager, a counter in tests).
pub type Ids<'a> = &'a mut dyn FnMut() -> String;

/// The writes the orchestrators want at `now_ms`.
pub fn run(snap: &Snapshot, now_ms: i64, ids: Ids<'_>) -> Vec<Write> {
    let nodes: Vec<Node> = snap.values::<Node>();
    let mut by_service: HashMap<&str, Vec<Task>> = HashMap::new();
    for v in snap.list::<Task>() {
        by_service
            .entry(v.value.service_id.as_str())
            .or_default()
            .push(v.value.clone());
    }
    let mut out = Vec::new();
    // Services the proposals change, written once each at the end.
    let mut changed: BTreeMap<String, (Service, u64)> = BTreeMap::new();
    for v in snap.list::<Service>() {
        let service = v.value;
        let tasks = by_service
            .get(service.id.as_str())
            .map_or(&[][..], Vec::as_slice);
        let proposals = match service.spec.mode {
            ServiceMode::Global | ServiceMode::GlobalJob => {
                orchestrator::global::reconcile(service, tasks, &nodes, now_ms, ids)
            }
            ServiceMode::ReplicatedJob => {
                orchestrator::replicated::reconcile_job(service, tasks, now_ms, ids)
            }
            ServiceMode::Replicated => {
                orchestrator::replicated::reconcile(service, tasks, now_ms, ids)
            }
        };
        for p in proposals {
            match p {
                Proposal::Create {
                    task,
                    not_before_ms,
                } => {
                    if not_before_ms <= now_ms {
                        out.push(Write::create(*task));
                    }
                }
                Proposal::Shutdown { task_id } => {
                    if let Some(t) = snap.get::<Task>(&task_id)
                        && t.value.desired_state <= TaskState::Running
                    {
                        let mut stopped = t.value.clone();
                        stopped.desired_state = TaskState::Shutdown;
                        out.push(Write::update(stopped, t.version));
                    }
                }
                Proposal::Delete { task_id } => {
                    let version = snap.get::<Task>(&task_id).map(|t| t.version);
                    out.push(Write::delete::<Task>(&task_id, version));
                }
                Proposal::Rollback {
                    service_id,
                    message,
                } => {
                    let (s, _) = changed
                        .entry(service_id)
                        .or_insert_with(|| (service.clone(), v.version));
                    if let Some(previous) = s.previous_spec.take() {
                        // Back to the previous spec, rolled out with the rollback
                        // settings; its failure action never rolls back again.
                        s.previous_spec = Some(std::mem::replace(&mut s.spec, previous));
                        s.update_status = Some(UpdateStatus {
                            state: UpdateState::RollbackStarted,
                            started_ms: now_ms,
                            completed_ms: 0,
                            message,
                        });
                    }
                }
                Proposal::UpdateStatus { service_id, status } => {
                    let (s, _) = changed
                        .entry(service_id)
                        .or_insert_with(|| (service.clone(), v.version));
                    s.update_status = Some(status);
                }
            }
        }
    }
    out.extend(
        changed
            .into_values()
            .map(|(s, version)| Write::update(s, version)),
    );
    // Tasks of removed services: stop the live ones, forget the stopped ones.
    for v in snap.list::<Task>() {
        let t = v.value;
        if snap.get::<Service>(&t.service_id).is_some() {
            continue;
        }
        if orchestrator::is_live(t) {
            let mut t = t.clone();
            t.desired_state = TaskState::Shutdown;
            out.push(Write::update(t, v.version));
        } else if t.status.state.is_terminal() {
            out.push(Write::delete::<Task>(&t.id, Some(v.version)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{counter, node, service, task};

    #[test]
    fn a_new_service_gets_its_tasks_and_a_scale_down_stops_the_highest_slot() {
        let snap = Snapshot::new()
            .with(node("n1"), 1)
            .with(service("s1", 2), 2);
        let out = run(&snap, 5_000, &mut counter());
        let made: Vec<(String, u64, TaskState)> = out
            .iter()
            .filter_map(|w| w.object::<Task>())
            .map(|t| (t.id.clone(), t.slot, t.status.state))
            .collect();
        assert_eq!(
            made,
            vec![
                ("id1".into(), 1, TaskState::New),
                ("id2".into(), 2, TaskState::New)
            ]
        );
        assert!(out.iter().all(|w| w.expected() == Some(0)), "creations");

        let mut t1 = task("t1", "n1", TaskState::Running);
        t1.slot = 1;
        let mut t2 = task("t2", "n1", TaskState::Running);
        t2.slot = 2;
        let snap = Snapshot::new()
            .with(node("n1"), 1)
            .with(service("s1", 1), 2)
            .with(t1, 3)
            .with(t2.clone(), 4);
        t2.desired_state = TaskState::Shutdown;
        assert_eq!(
            run(&snap, 5_000, &mut counter()),
            vec![Write::update(t2, 4)]
        );
    }

    #[test]
    fn tasks_of_a_removed_service_stop_then_are_forgotten() {
        let mut gone = task("t1", "n1", TaskState::Running);
        gone.service_id = "removed".into();
        let mut ended = task("t2", "n1", TaskState::Shutdown);
        ended.service_id = "removed".into();
        let snap = Snapshot::new().with(gone.clone(), 3).with(ended, 4);
        gone.desired_state = TaskState::Shutdown;
        assert_eq!(
            run(&snap, 1, &mut counter()),
            vec![Write::update(gone, 3), Write::delete::<Task>("t2", Some(4))]
        );
    }

    #[test]
    fn a_failed_update_with_rollback_goes_back_to_the_previous_spec() {
        let mut s = service("s1", 1);
        let before = s.spec.clone();
        s.spec.image = "broken".into();
        s.spec.update.failure_action = shoal_api::types::UpdateFailureAction::Rollback;
        s.previous_spec = Some(before.clone());
        s.update_status = Some(UpdateStatus {
            state: UpdateState::Updating,
            started_ms: 1_000,
            completed_ms: 0,
            message: String::new(),
        });
        let mut failed = task("t1", "n1", TaskState::Failed);
        failed.spec = s.spec.clone();
        failed.slot = 1;
        failed.created_ms = 1_500;
        failed.status.timestamp_ms = 1_600;
        let snap = Snapshot::new()
            .with(node("n1"), 1)
            .with(s, 7)
            .with(failed, 8);
        let out = run(&snap, 2_000, &mut counter());
        let rolled = out
            .iter()
            .find_map(|w| w.object::<Service>())
            .expect("the service is written");
        assert_eq!(rolled.spec, before, "back to the previous spec");
        let st = rolled.update_status.as_ref().expect("a status");
        assert_eq!(st.state, UpdateState::RollbackStarted);
        assert_eq!(
            out.iter()
                .filter(|w| w.object::<Service>().is_some())
                .count(),
            1,
            "one write per service"
        );
    }
}
