//! The orchestrators' pure cores: a service and its tasks in, proposals out. No clock (the
//! caller passes `now_ms`), no I/O, and stable output order, so the same store gives the
//! same proposals on any manager. The driver writes the proposals through Raft with the
//! versions it read.
//!
//! - `replicated`: N tasks in stable slots 1..=N; scale up fills the lowest free slots,
//!   scale down retires the highest; a stopped task is replaced per the restart policy;
//!   a task whose spec differs from the service's is replaced by the rolling update.
//! - `global`: one task per eligible node; a global job, one completion per node.
//! - `rollout`: the rolling update shared by both: parallelism, delay, order, monitor,
//!   failure action, and the service's update status.

pub mod global;
pub mod replicated;
pub mod rollout;

use rollout::Rollout;
use shoal_api::types::{
    RestartCondition, Service, Task, TaskState, TaskStatus, UpdateOrder, UpdateStatus,
};

/// Terminal tasks kept per slot (or node) for `service ps`; older ones are deleted.
pub const TASK_HISTORY_LIMIT: usize = 5;

/// A change an orchestrator wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proposal {
    /// Make a new task (state NEW, desired RUNNING), not before `not_before_ms` (the
    /// restart delay; 0 for now).
    Create {
        /// The task.
        task: Box<Task>,
        /// When it may be created, in Unix milliseconds.
        not_before_ms: i64,
    },
    /// Ask a task to stop.
    Shutdown {
        /// The task.
        task_id: String,
    },
    /// Forget a terminal task beyond the history limit.
    Delete {
        /// The task.
        task_id: String,
    },
    /// The update failed and its failure action is rollback: go back to the previous spec.
    Rollback {
        /// The service.
        service_id: String,
        /// Why.
        message: String,
    },
    /// The service's update paused or completed.
    UpdateStatus {
        /// The service.
        service_id: String,
        /// Its new update status.
        status: UpdateStatus,
    },
}

/// Makes a new task of `service` in `slot` (or on `node_id` for global services).
pub fn new_task(service: &Service, id: String, slot: u64, node_id: &str, now_ms: i64) -> Task {
    Task {
        id,
        service_id: service.id.clone(),
        slot,
        node_id: node_id.to_string(),
        spec: service.spec.clone(),
        created_ms: now_ms,
        ports: service.spec.ports.clone(),
        networks: Vec::new(),
        desired_state: TaskState::Running,
        status: TaskStatus {
            state: TaskState::New,
            timestamp_ms: now_ms,
            message: "created".into(),
            exit_code: None,
            container_id: String::new(),
            health: String::new(),
        },
    }
}

/// Whether a task is (or is meant to be) running: desired RUNNING and not yet stopped.
pub fn is_live(t: &Task) -> bool {
    t.desired_state <= TaskState::Running && !t.status.state.is_terminal()
}

/// Whether a stopped task should be replaced, given the stopped tasks of the same slot
/// (`history`, the stopped task itself included) and the policy.
pub fn should_restart(service: &Service, stopped: &Task, history: &[&Task], now_ms: i64) -> bool {
    let policy = &service.spec.restart;
    if stopped.desired_state > TaskState::Running {
        // Stopped on request (an update, a drain): the slot is still wanted, so it is
        // filled again at once, whatever the restart policy.
        return true;
    }
    let failed = matches!(
        stopped.status.state,
        TaskState::Failed | TaskState::Rejected | TaskState::Orphaned
    );
    let wanted = match policy.condition {
        RestartCondition::None => false,
        RestartCondition::OnFailure => failed,
        RestartCondition::Any => true,
    };
    if !wanted {
        return false;
    }
    if policy.max_attempts == 0 {
        return true;
    }
    let restarts = history
        .iter()
        .filter(|t| t.desired_state <= TaskState::Running && t.status.state.is_terminal())
        .filter(|t| {
            policy.window_ms == 0 || now_ms - t.status.timestamp_ms <= policy.window_ms as i64
        })
        .count();
    // The first run is not a restart.
    restarts <= policy.max_attempts as usize
}

/// Reconciles one place that should hold one live task of `service`: a slot of a
/// replicated service, or a node of a global one. Extra live tasks are shut down; an
/// outdated one is replaced while the rollout's budget lasts (stop-first: it stops, and its
/// replacement starts once it has; start-first: the replacement starts, and the old task
/// stops once the new one runs); an empty place is filled, after the restart delay when
/// its last task failed or exited; the place's history is trimmed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn reconcile_place(
    service: &Service,
    here: &[&Task],
    slot: u64,
    node_id: &str,
    now_ms: i64,
    next_id: &mut dyn FnMut() -> String,
    rollout: &mut Rollout,
    out: &mut Vec<Proposal>,
) {
    let current = |t: &Task| t.spec.same_task_template(&service.spec);
    let (live, mut stopped): (Vec<&Task>, Vec<&Task>) = here.iter().partition(|t| is_live(t));
    let (mut fresh, mut old): (Vec<&Task>, Vec<&Task>) = live.into_iter().partition(|t| current(t));
    // Keep the newest live task of each kind; extra ones (after a manager crash between
    // two writes) are shut down.
    let newest_last = |v: &mut Vec<&Task>| v.sort_by_key(|t| (t.status.timestamp_ms, t.id.clone()));
    newest_last(&mut fresh);
    newest_last(&mut old);
    let keep_fresh = fresh.pop();
    let keep_old = old.pop();
    for extra in fresh.into_iter().chain(old) {
        out.push(Proposal::Shutdown {
            task_id: extra.id.clone(),
        });
    }
    let create = |next_id: &mut dyn FnMut() -> String, not_before_ms| Proposal::Create {
        task: Box::new(new_task(service, next_id(), slot, node_id, now_ms)),
        not_before_ms,
    };
    match (keep_fresh, keep_old) {
        (Some(f), Some(o)) => {
            // A start-first replacement: the old task goes once the new one runs.
            if f.status.state == TaskState::Running || rollout.order == UpdateOrder::StopFirst {
                out.push(Proposal::Shutdown {
                    task_id: o.id.clone(),
                });
            }
        }
        (Some(_), None) => {}
        (None, Some(o)) => {
            if rollout.budget > 0 {
                rollout.budget -= 1;
                match rollout.order {
                    UpdateOrder::StopFirst => out.push(Proposal::Shutdown {
                        task_id: o.id.clone(),
                    }),
                    UpdateOrder::StartFirst => out.push(create(next_id, 0)),
                }
            }
        }
        (None, None) => {
            let still_stopping = stopped
                .iter()
                .any(|t| !current(t) && !t.status.state.is_terminal());
            if still_stopping && rollout.order == UpdateOrder::StopFirst {
                // The replacement waits for the outdated task to be gone.
                trim_history(&mut stopped, out);
                return;
            }
            let last = stopped
                .iter()
                .max_by_key(|t| (t.status.timestamp_ms, t.id.clone()))
                .copied();
            let wanted = match last {
                None => true,
                Some(l) if !current(l) => true,
                Some(l) => should_restart(service, l, &stopped, now_ms),
            };
            if wanted {
                let not_before_ms = match last {
                    Some(l) if current(l) && l.desired_state <= TaskState::Running => {
                        l.status.timestamp_ms + service.spec.restart.delay_ms as i64
                    }
                    _ => 0,
                };
                out.push(create(next_id, not_before_ms));
            }
        }
    }
    trim_history(&mut stopped, out);
}

/// Reconciles one place of a job (a slot of a replicated job, a node of a global one):
/// done once a task of the current spec completed; else, unless one runs, a task is made
/// (after the restart delay when the last one failed, and only while the restart policy
/// allows). Returns whether a task was made (or is waiting for its delay).
pub(crate) fn job_place(
    service: &Service,
    here: &[&Task],
    slot: u64,
    node_id: &str,
    now_ms: i64,
    next_id: &mut dyn FnMut() -> String,
    out: &mut Vec<Proposal>,
) -> bool {
    let current: Vec<&Task> = here
        .iter()
        .filter(|t| t.spec.same_task_template(&service.spec))
        .copied()
        .collect();
    if current
        .iter()
        .any(|t| t.status.state == TaskState::Complete || is_live(t))
    {
        return false;
    }
    let last = current
        .iter()
        .max_by_key(|t| (t.status.timestamp_ms, t.id.clone()))
        .copied();
    let wanted = match last {
        None => true,
        Some(l) => should_restart(service, l, &current, now_ms),
    };
    if wanted {
        let not_before_ms = last
            .filter(|l| l.desired_state <= TaskState::Running)
            .map(|l| l.status.timestamp_ms + service.spec.restart.delay_ms as i64)
            .unwrap_or(0);
        out.push(Proposal::Create {
            task: Box::new(new_task(service, next_id(), slot, node_id, now_ms)),
            not_before_ms,
        });
    }
    let mut stopped: Vec<&Task> = here.iter().filter(|t| !is_live(t)).copied().collect();
    trim_history(&mut stopped, out);
    wanted
}

/// Proposals that trim the terminal tasks of one slot to the history limit, oldest first.
fn trim_history(stopped: &mut [&Task], out: &mut Vec<Proposal>) {
    // Only tasks that have stopped for good; one still stopping is kept.
    let mut done: Vec<&&Task> = stopped
        .iter()
        .filter(|t| t.status.state.is_terminal())
        .collect();
    done.sort_by_key(|t| (t.status.timestamp_ms, t.id.clone()));
    let excess = done.len().saturating_sub(TASK_HISTORY_LIMIT);
    for t in &done[..excess] {
        out.push(Proposal::Delete {
            task_id: t.id.clone(),
        });
    }
}
