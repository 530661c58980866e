//! The rolling update of a service, as one pure step per pass: which config applies (the
//! update's, or the rollback's while going back), how many outdated tasks may be replaced
//! now (parallelism, minus what is still starting or stopping, nothing during the delay or
//! while paused), and whether the update failed, paused or completed.

use shoal_api::types::{
    Service, Task, TaskState, UpdateConfig, UpdateFailureAction, UpdateOrder, UpdateState,
    UpdateStatus,
};

use super::{Proposal, is_live};

/// How the update proceeds in this pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rollout {
    /// Outdated tasks that may be replaced in this pass.
    pub budget: u64,
    /// Whether the replacement starts before the old task stops.
    pub order: UpdateOrder,
}

impl Rollout {
    /// No update limits: every outdated task may be replaced at once, stop-first.
    pub fn unlimited() -> Rollout {
        Rollout {
            budget: u64::MAX,
            order: UpdateOrder::StopFirst,
        }
    }
}

/// The config that rolls out now: the rollback's while going back, else the update's.
pub fn active_config(service: &Service) -> UpdateConfig {
    match &service.update_status {
        Some(s) if s.rolling_back() => service.spec.rollback,
        _ => service.spec.update,
    }
}

/// A task id as people see it.
fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

/// Plans this pass of the update of `service` whose tasks are `mine`; pushes the status
/// changes (paused, rolled back, completed) it decides on.
pub(crate) fn plan(
    service: &Service,
    mine: &[&Task],
    now_ms: i64,
    out: &mut Vec<Proposal>,
) -> Rollout {
    let config = active_config(service);
    let current = |t: &Task| t.spec.same_task_template(&service.spec);
    let status = service.update_status.as_ref();
    let started_ms = status.map(|s| s.started_ms).unwrap_or(0);
    let fresh_starting = mine
        .iter()
        .filter(|t| current(t) && is_live(t) && t.status.state < TaskState::Running)
        .count() as u64;
    let old_live = mine.iter().filter(|t| !current(t) && is_live(t)).count() as u64;
    let old_stopping = mine
        .iter()
        .filter(|t| {
            !current(t) && t.desired_state > TaskState::Running && !t.status.state.is_terminal()
        })
        .count() as u64;
    let in_flight = fresh_starting
        + match config.order {
            UpdateOrder::StopFirst => old_stopping,
            UpdateOrder::StartFirst => 0,
        };
    let mut budget = match config.parallelism {
        0 => u64::MAX,
        p => p.saturating_sub(in_flight),
    };
    if config.delay_ms > 0 {
        // Batches: the next one starts `delay` after the last one runs.
        let last_running = mine
            .iter()
            .filter(|t| {
                current(t) && t.created_ms >= started_ms && t.status.state == TaskState::Running
            })
            .map(|t| t.status.timestamp_ms)
            .max();
        let waiting = last_running.is_some_and(|at| now_ms < at + config.delay_ms as i64);
        if in_flight > 0 || waiting {
            budget = 0;
        }
    }
    let Some(status) = status else {
        return Rollout {
            budget,
            order: config.order,
        };
    };
    if status.paused() {
        budget = 0;
    } else if status.in_progress() {
        let failed = mine.iter().find(|t| {
            current(t)
                && t.created_ms >= started_ms
                && t.desired_state <= TaskState::Running
                && matches!(t.status.state, TaskState::Failed | TaskState::Rejected)
                && t.status.timestamp_ms - t.created_ms <= config.monitor_ms as i64
        });
        if let Some(t) = failed {
            let what = format!(
                "task {} (slot {}) failed: {}",
                short(&t.id),
                t.slot,
                t.status.message
            );
            let rolling_back = status.rolling_back();
            match config.failure_action {
                UpdateFailureAction::Continue => {}
                UpdateFailureAction::Rollback if !rolling_back => {
                    budget = 0;
                    out.push(Proposal::Rollback {
                        service_id: service.id.clone(),
                        message: format!("update rolled back: {what}"),
                    });
                }
                _ => {
                    budget = 0;
                    let (state, verb) = if rolling_back {
                        (UpdateState::RollbackPaused, "rollback")
                    } else {
                        (UpdateState::Paused, "update")
                    };
                    out.push(Proposal::UpdateStatus {
                        service_id: service.id.clone(),
                        status: UpdateStatus {
                            state,
                            started_ms,
                            completed_ms: now_ms,
                            message: format!("{verb} paused: {what}"),
                        },
                    });
                }
            }
        } else if old_live == 0 && old_stopping == 0 && fresh_starting == 0 {
            let (state, message) = if status.rolling_back() {
                (UpdateState::RollbackCompleted, "rollback completed")
            } else {
                (UpdateState::Completed, "update completed")
            };
            let message = if status.message.is_empty() {
                message.to_string()
            } else {
                format!("{message} ({})", status.message)
            };
            out.push(Proposal::UpdateStatus {
                service_id: service.id.clone(),
                status: UpdateStatus {
                    state,
                    started_ms,
                    completed_ms: now_ms,
                    message,
                },
            });
        }
    }
    Rollout {
        budget,
        order: config.order,
    }
}
