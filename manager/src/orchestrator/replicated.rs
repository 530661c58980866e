//! The replicated orchestrator: slots 1..=replicas, each with at most one live task.

use std::collections::BTreeMap;

use shoal_api::types::{Service, ServiceMode, Task, TaskState, UpdateFailureAction};

use super::{Proposal, is_live, new_task, reconcile_place, should_restart, trim_history};

/// The proposals that bring `service` (replicated mode) to its spec, given all its tasks.
/// `next_id` names new tasks.
pub fn reconcile(
    service: &Service,
    tasks: &[Task],
    now_ms: i64,
    next_id: &mut dyn FnMut() -> String,
) -> Vec<Proposal> {
    let mut out = Vec::new();
    let wanted = match service.spec.mode {
        ServiceMode::Replicated => service.spec.replicas,
        _ => return out,
    };
    let mut slots: BTreeMap<u64, Vec<&Task>> = BTreeMap::new();
    for t in tasks.iter().filter(|t| t.service_id == service.id) {
        slots.entry(t.slot).or_default().push(t);
    }
    let mine: Vec<&Task> = slots.values().flatten().copied().collect();
    let current = |t: &Task| t.spec.same_task_template(&service.spec);
    // A rolling update: how many outdated tasks may be replaced in this pass.
    let update = service.spec.update;
    let in_flight = mine
        .iter()
        .filter(|t| current(t) && is_live(t) && t.status.state < TaskState::Running)
        .count() as u64;
    let failed = service.previous_spec.is_some()
        && mine.iter().any(|t| {
            current(t)
                && t.desired_state <= TaskState::Running
                && matches!(t.status.state, TaskState::Failed | TaskState::Rejected)
                && t.status.timestamp_ms - t.created_ms <= update.monitor_ms as i64
        });
    let mut budget = match update.parallelism {
        0 => u64::MAX,
        p => p.saturating_sub(in_flight),
    };
    if failed {
        match update.failure_action {
            UpdateFailureAction::Continue => {}
            UpdateFailureAction::Pause => budget = 0,
            UpdateFailureAction::Rollback => {
                budget = 0;
                out.push(Proposal::Rollback {
                    service_id: service.id.clone(),
                });
            }
        }
    }
    for slot in 1..=wanted.max(slots.keys().next_back().copied().unwrap_or(0)) {
        let in_slot = slots.get(&slot).cloned().unwrap_or_default();
        if slot > wanted {
            let (live, mut stopped): (Vec<&Task>, Vec<&Task>) =
                in_slot.iter().partition(|t| is_live(t));
            // Scale down: retire the slot.
            for t in live {
                out.push(Proposal::Shutdown {
                    task_id: t.id.clone(),
                });
            }
            trim_history(&mut stopped, &mut out);
            continue;
        }
        reconcile_place(
            service,
            &in_slot,
            slot,
            "",
            now_ms,
            next_id,
            &mut budget,
            &mut out,
        );
    }
    out
}

/// The proposals of a replicated job: `replicas` completions, at most `max_concurrent`
/// (0: all) running at once. A slot is done once a task in it completed; a failed slot is
/// retried per the restart policy (an exit of 0 is never retried).
pub fn reconcile_job(
    service: &Service,
    tasks: &[Task],
    now_ms: i64,
    next_id: &mut dyn FnMut() -> String,
) -> Vec<Proposal> {
    let mut out = Vec::new();
    if service.spec.mode != ServiceMode::ReplicatedJob {
        return out;
    }
    let total = service.spec.replicas;
    let limit = match service.spec.max_concurrent {
        0 => total,
        n => n.min(total),
    } as usize;
    let mut slots: BTreeMap<u64, Vec<&Task>> = BTreeMap::new();
    for t in tasks.iter().filter(|t| t.service_id == service.id) {
        slots.entry(t.slot).or_default().push(t);
    }
    let mut running = slots.values().flatten().filter(|t| is_live(t)).count();
    for slot in 1..=total {
        let in_slot = slots.get(&slot).cloned().unwrap_or_default();
        if in_slot
            .iter()
            .any(|t| t.status.state == shoal_api::types::TaskState::Complete)
            || in_slot.iter().any(|t| is_live(t))
        {
            continue;
        }
        if running >= limit {
            break;
        }
        let last = in_slot
            .iter()
            .max_by_key(|t| (t.status.timestamp_ms, t.id.clone()))
            .copied();
        let create = match last {
            None => true,
            Some(l) => should_restart(service, l, &in_slot, now_ms),
        };
        if create {
            let not_before_ms = last
                .map(|l| l.status.timestamp_ms + service.spec.restart.delay_ms as i64)
                .unwrap_or(0);
            out.push(Proposal::Create {
                task: Box::new(new_task(service, next_id(), slot, "", now_ms)),
                not_before_ms,
            });
            running += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use shoal_api::types::{RestartCondition, RestartPolicy, ServiceSpec, TaskState};

    use super::*;

    fn service(replicas: u64) -> Service {
        Service {
            id: "svc".into(),
            spec: ServiceSpec {
                name: "web".into(),
                image: "busybox".into(),
                replicas,
                restart: RestartPolicy {
                    condition: RestartCondition::Any,
                    delay_ms: 1000,
                    max_attempts: 0,
                    window_ms: 0,
                },
                ..Default::default()
            },
            previous_spec: None,
        }
    }

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("t{n}")
        }
    }

    fn task(s: &Service, id: &str, slot: u64, state: TaskState, at: i64) -> Task {
        let mut t = new_task(s, id.into(), slot, "node1", at);
        t.status.state = state;
        t
    }

    fn summary(p: &[Proposal]) -> Vec<String> {
        p.iter()
            .map(|p| match p {
                Proposal::Create {
                    task,
                    not_before_ms,
                } => format!("create slot {} at {not_before_ms}", task.slot),
                Proposal::Shutdown { task_id } => format!("shutdown {task_id}"),
                Proposal::Delete { task_id } => format!("delete {task_id}"),
                Proposal::Rollback { service_id } => format!("rollback {service_id}"),
            })
            .collect()
    }

    #[test]
    fn jobs_run_to_completion_with_a_concurrency_limit() {
        let mut s = service(5);
        s.spec.mode = ServiceMode::ReplicatedJob;
        s.spec.max_concurrent = 2;
        let p = reconcile_job(&s, &[], 0, &mut ids());
        assert_eq!(
            summary(&p),
            vec!["create slot 1 at 0", "create slot 2 at 0"]
        );
        let done: Vec<Task> = (1..=4)
            .map(|i| task(&s, &format!("d{i}"), i, TaskState::Complete, 0))
            .collect();
        assert_eq!(
            summary(&reconcile_job(&s, &done, 10, &mut ids())),
            vec!["create slot 5 at 0"]
        );
        let mut all = done.clone();
        all.push(task(&s, "d5", 5, TaskState::Complete, 0));
        assert!(
            reconcile_job(&s, &all, 10, &mut ids()).is_empty(),
            "every completion done"
        );
        s.spec.restart.condition = RestartCondition::OnFailure;
        let mut failed = done;
        failed.push(task(&s, "f5", 5, TaskState::Failed, 100));
        for t in &mut failed {
            t.spec = s.spec.clone();
        }
        assert_eq!(
            summary(&reconcile_job(&s, &failed, 200, &mut ids())),
            vec!["create slot 5 at 1100"]
        );
    }

    #[test]
    fn creates_missing_slots() {
        let s = service(3);
        let running = task(&s, "a", 2, TaskState::Running, 0);
        let p = reconcile(&s, &[running], 100, &mut ids());
        assert_eq!(
            summary(&p),
            vec!["create slot 1 at 0", "create slot 3 at 0"]
        );
    }

    #[test]
    fn scale_down_retires_the_highest_slots() {
        let s = service(1);
        let ts: Vec<Task> = (1..=3)
            .map(|i| task(&s, &format!("x{i}"), i, TaskState::Running, 0))
            .collect();
        assert_eq!(
            summary(&reconcile(&s, &ts, 0, &mut ids())),
            vec!["shutdown x2", "shutdown x3"]
        );
    }

    #[test]
    fn stopped_tasks_restart_after_the_delay() {
        let s = service(1);
        let failed = task(&s, "f", 1, TaskState::Failed, 500);
        assert_eq!(
            summary(&reconcile(&s, &[failed], 600, &mut ids())),
            vec!["create slot 1 at 1500"]
        );
    }

    #[test]
    fn restart_conditions_and_attempts() {
        let mut s = service(1);
        s.spec.restart.condition = RestartCondition::OnFailure;
        let done = task(&s, "d", 1, TaskState::Complete, 0);
        assert!(
            reconcile(&s, &[done], 10, &mut ids()).is_empty(),
            "exit 0 is not a failure"
        );
        s.spec.restart.condition = RestartCondition::None;
        let failed = task(&s, "f", 1, TaskState::Failed, 0);
        assert!(reconcile(&s, &[failed], 10, &mut ids()).is_empty());
        s.spec.restart.condition = RestartCondition::Any;
        s.spec.restart.max_attempts = 2;
        let history: Vec<Task> = (0..3)
            .map(|i| task(&s, &format!("h{i}"), 1, TaskState::Failed, i))
            .collect();
        assert!(
            reconcile(&s, &history, 10, &mut ids()).is_empty(),
            "the first run and two restarts failed: no more"
        );
        assert_eq!(reconcile(&s, &history[..2], 10, &mut ids()).len(), 1);
        s.spec.restart.window_ms = 5;
        // (Built again: a changed restart policy is a changed spec, which replaces tasks.)
        let history: Vec<Task> = (0..3)
            .map(|i| task(&s, &format!("h{i}"), 1, TaskState::Failed, i))
            .collect();
        assert_eq!(
            summary(&reconcile(&s, &history, 100, &mut ids())),
            vec!["create slot 1 at 1002"],
            "failures outside the window do not count"
        );
    }

    #[test]
    fn a_wanted_slot_whose_task_was_stopped_on_request_is_filled_at_once() {
        let mut s = service(1);
        s.spec.restart.condition = RestartCondition::None;
        let mut stopped = task(&s, "s", 1, TaskState::Shutdown, 0);
        stopped.desired_state = TaskState::Shutdown;
        // A drain or an update stopped it; the restart policy is for failures only.
        assert_eq!(
            summary(&reconcile(&s, &[stopped], 10, &mut ids())),
            vec!["create slot 1 at 0"]
        );
    }

    #[test]
    fn a_changed_spec_replaces_the_task() {
        let old = service(1);
        let mut new = old.clone();
        new.spec.image = "busybox:2".into();
        let t = task(&old, "o", 1, TaskState::Running, 0);
        assert_eq!(
            summary(&reconcile(&new, &[t], 10, &mut ids())),
            vec!["shutdown o", "create slot 1 at 0"]
        );
    }

    #[test]
    fn history_is_trimmed() {
        let s = service(1);
        let mut ts: Vec<Task> = (0..7)
            .map(|i| {
                let mut t = task(&s, &format!("h{i}"), 1, TaskState::Shutdown, i);
                t.desired_state = TaskState::Shutdown;
                t
            })
            .collect();
        ts.push(task(&s, "live", 1, TaskState::Running, 100));
        assert_eq!(
            summary(&reconcile(&s, &ts, 200, &mut ids())),
            vec!["delete h0", "delete h1"]
        );
    }

    #[test]
    fn duplicate_live_tasks_in_a_slot_are_reduced_to_one() {
        let s = service(1);
        let a = task(&s, "a", 1, TaskState::Running, 1);
        let b = task(&s, "b", 1, TaskState::Running, 2);
        assert_eq!(
            summary(&reconcile(&s, &[a, b], 10, &mut ids())),
            vec!["shutdown a"]
        );
    }
}
