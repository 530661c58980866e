//! The replicated orchestrator: slots 1..=replicas, each with at most one live task.

use std::collections::BTreeMap;

use shoal_api::types::{Service, ServiceMode, Task};

use super::{Proposal, is_live, job_place, reconcile_place, rollout, trim_history};

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
    let mut rollout = rollout::plan(service, &mine, now_ms, &mut out);
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
            &mut rollout,
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
    let current = |t: &Task| t.spec.same_task_template(&service.spec);
    // Runs of an outdated spec stop; the job runs again with the new one.
    for t in slots.values().flatten() {
        if is_live(t) && !current(t) {
            out.push(Proposal::Shutdown {
                task_id: t.id.clone(),
            });
        }
    }
    let mut running = slots
        .values()
        .flatten()
        .filter(|t| is_live(t) && current(t))
        .count();
    for slot in 1..=total {
        if running >= limit {
            break;
        }
        let in_slot = slots.get(&slot).cloned().unwrap_or_default();
        if job_place(service, &in_slot, slot, "", now_ms, next_id, &mut out) {
            running += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use shoal_api::types::{
        RestartCondition, RestartPolicy, ServiceSpec, TaskState, UpdateFailureAction, UpdateOrder,
        UpdateState, UpdateStatus,
    };

    use super::super::new_task;
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
                Proposal::Rollback { service_id, .. } => format!("rollback {service_id}"),
                Proposal::UpdateStatus { status, .. } => format!("status {:?}", status.state),
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
    fn a_changed_spec_replaces_the_task_stop_first() {
        let old = service(1);
        let mut new = old.clone();
        new.spec.image = "busybox:2".into();
        let t = task(&old, "o", 1, TaskState::Running, 0);
        assert_eq!(
            summary(&reconcile(&new, std::slice::from_ref(&t), 10, &mut ids())),
            vec!["shutdown o"]
        );
        let mut stopping = t.clone();
        stopping.desired_state = TaskState::Shutdown;
        assert!(
            reconcile(&new, std::slice::from_ref(&stopping), 20, &mut ids()).is_empty(),
            "the replacement waits until the old task is gone"
        );
        stopping.status.state = TaskState::Shutdown;
        assert_eq!(
            summary(&reconcile(&new, &[stopping], 30, &mut ids())),
            vec!["create slot 1 at 0"]
        );
    }

    fn updating(mut s: Service, started_ms: i64) -> Service {
        s.update_status = Some(UpdateStatus {
            state: UpdateState::Updating,
            started_ms,
            completed_ms: 0,
            message: String::new(),
        });
        s
    }

    #[test]
    fn start_first_runs_the_new_task_before_stopping_the_old() {
        let old = service(1);
        let mut new = old.clone();
        new.spec.image = "busybox:2".into();
        new.spec.update.order = UpdateOrder::StartFirst;
        let new = updating(new, 5);
        let o = task(&old, "o", 1, TaskState::Running, 0);
        assert_eq!(
            summary(&reconcile(&new, std::slice::from_ref(&o), 10, &mut ids())),
            vec!["create slot 1 at 0"]
        );
        let mut n = task(&new, "n", 1, TaskState::Starting, 10);
        assert!(
            reconcile(&new, &[o.clone(), n.clone()], 20, &mut ids()).is_empty(),
            "the old task runs on while the new one starts"
        );
        n.status.state = TaskState::Running;
        assert_eq!(
            summary(&reconcile(&new, &[o, n.clone()], 30, &mut ids())),
            vec!["shutdown o"]
        );
        assert_eq!(
            summary(&reconcile(&new, &[n], 40, &mut ids())),
            vec!["status Completed"]
        );
    }

    #[test]
    fn updates_go_in_batches_of_parallelism_with_a_delay_between() {
        let old = service(3);
        let mut new = old.clone();
        new.spec.image = "busybox:2".into();
        new.spec.update.order = UpdateOrder::StartFirst;
        new.spec.update.parallelism = 2;
        new.spec.update.delay_ms = 1000;
        let new = updating(new, 5);
        let olds: Vec<Task> = (1..=3)
            .map(|i| task(&old, &format!("o{i}"), i, TaskState::Running, 0))
            .collect();
        assert_eq!(
            summary(&reconcile(&new, &olds, 10, &mut ids())),
            vec!["create slot 1 at 0", "create slot 2 at 0"]
        );
        let mut all = olds.clone();
        let mut n1 = task(&new, "n1", 1, TaskState::Running, 10);
        n1.status.timestamp_ms = 100;
        let mut n2 = n1.clone();
        n2.id = "n2".into();
        n2.slot = 2;
        all.extend([n1, n2]);
        assert_eq!(
            summary(&reconcile(&new, &all, 500, &mut ids())),
            vec!["shutdown o1", "shutdown o2"],
            "within the delay the third slot waits"
        );
        let later: Vec<Task> = all
            .into_iter()
            .filter(|t| t.id != "o1" && t.id != "o2")
            .collect();
        assert_eq!(
            summary(&reconcile(&new, &later, 1200, &mut ids())),
            vec!["create slot 3 at 0"]
        );
    }

    #[test]
    fn a_failed_update_pauses_or_rolls_back() {
        let old = service(2);
        let mut new = old.clone();
        new.spec.image = "ghost".into();
        let mut new = updating(new, 5);
        new.previous_spec = Some(old.spec.clone());
        let mut f = task(&new, "f", 1, TaskState::Failed, 10);
        f.status.timestamp_ms = 20;
        f.status.message = "no such image".into();
        let o2 = task(&old, "o2", 2, TaskState::Running, 0);
        let p = reconcile(&new, &[f.clone(), o2.clone()], 30, &mut ids());
        assert_eq!(summary(&p)[0], "status Paused");
        assert!(
            !summary(&p).contains(&"shutdown o2".to_string()),
            "a paused update replaces nothing more: {p:?}"
        );
        match &p[0] {
            Proposal::UpdateStatus { status, .. } => {
                assert!(status.message.contains("no such image"), "{status:?}")
            }
            other => panic!("{other:?}"),
        }
        new.spec.update.failure_action = UpdateFailureAction::Rollback;
        f.spec = new.spec.clone();
        let p = reconcile(&new, &[f.clone(), o2.clone()], 30, &mut ids());
        assert_eq!(summary(&p)[0], "rollback svc");
        new.update_status.as_mut().unwrap().state = UpdateState::Paused;
        new.spec.update.failure_action = UpdateFailureAction::Pause;
        f.spec = new.spec.clone();
        let p = reconcile(&new, &[f, o2], 30, &mut ids());
        assert!(
            !summary(&p)
                .iter()
                .any(|s| s.starts_with("shutdown") || s.starts_with("status")),
            "paused stays paused: {p:?}"
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
