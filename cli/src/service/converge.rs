//! Following a service to convergence: a line whenever a slot's task changes state (and
//! why a task cannot run), a summary, and an end when every slot runs the new spec, the
//! job completes, or the update pauses or rolls back.

use shoal_api::control as pc;
use shoal_api::types::{Service, ServiceMode, Task, TaskState};
use shoal_api::wire;

use super::Control;
use crate::image_cmd::status;
use crate::output;

pub(super) async fn tasks_of(c: &mut Control, service: &str) -> anyhow::Result<Vec<Task>> {
    list_tasks(c, service).await.map_err(status)
}

async fn list_tasks(c: &mut Control, service: &str) -> Result<Vec<Task>, tonic::Status> {
    let objects = c
        .list_tasks(pc::ListTasksRequest {
            service: service.to_string(),
        })
        .await?
        .into_inner()
        .objects;
    wire::decode_all(&objects).map_err(|e| tonic::Status::data_loss(e.to_string()))
}

/// A daemon's own "not now" (an election, a manager catching up), which a progress view
/// waits out rather than giving up on: not a broken connection, not a refusal.
fn passing(e: &tonic::Status) -> bool {
    e.code() == tonic::Code::Unavailable && std::error::Error::source(e).is_none()
}

/// What a task says in progress lines: its state, and the message when it explains.
fn task_line(t: &Task) -> String {
    let state = format!("{:?}", t.status.state).to_lowercase();
    match t.status.state {
        TaskState::Failed | TaskState::Rejected | TaskState::Orphaned => {
            format!("{state}: {}", t.status.message)
        }
        TaskState::Pending if t.status.message.starts_with("no suitable node") => {
            format!("pending: {}", t.status.message)
        }
        _ => state,
    }
}

/// Where a task runs, as progress shows it: its slot, or its node for global services.
pub(super) fn place(t: &Task) -> String {
    if t.slot > 0 {
        format!("{}.{}", t.spec.name, t.slot)
    } else {
        format!("{}.{}", t.spec.name, output::short_id(&t.node_id))
    }
}

/// Waits until the service converges (or its job completes), printing a line whenever a
/// slot's task changes state and why a task cannot run. Fails when the update pauses or
/// rolls back, or when nothing changes for a minute.
pub(super) async fn converge(
    c: &mut Control,
    service: &Service,
    rollback: bool,
) -> anyhow::Result<()> {
    let name = &service.spec.name;
    let wanted = service.spec.replicas as usize;
    let quiet_limit = std::time::Duration::from_secs(60);
    let started = std::time::Instant::now();
    let mut last_change = std::time::Instant::now();
    let mut shown: std::collections::HashMap<String, String> = Default::default();
    let mut last_summary = String::new();
    loop {
        let now = match c
            .get_service(pc::GetRequest {
                id: service.id.clone(),
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(e) if passing(&e) && last_change.elapsed() < quiet_limit => {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(status(e)),
        };
        let current: Service = now.decode()?;
        if let Some(st) = &current.update_status {
            if st.paused() {
                return Err(anyhow::anyhow!(
                    "{name}: {}: fix the spec and run \"shoal service update\" again, or \"shoal service rollback {name}\"",
                    st.message
                ));
            }
            if st.rolling_back() && !rollback {
                return Err(anyhow::anyhow!(
                    "{name}: {}; the service runs its previous spec again (see \"shoal service ps {name}\")",
                    st.message
                ));
            }
        }
        if !current.spec.same_task_template(&service.spec) {
            return Err(anyhow::anyhow!(
                "{name} was changed by another update meanwhile: see \"shoal service inspect {name}\""
            ));
        }
        let tasks = match list_tasks(c, &service.id).await {
            Ok(t) => t,
            Err(e) if passing(&e) && last_change.elapsed() < quiet_limit => {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(status(e)),
        };
        let fresh: Vec<&Task> = tasks
            .iter()
            .filter(|t| t.spec.same_task_template(&service.spec))
            .collect();
        // The newest task of each place.
        let mut newest: std::collections::BTreeMap<String, &Task> = Default::default();
        for t in &fresh {
            let e = newest.entry(place(t)).or_insert(t);
            if (t.created_ms, &t.id) > (e.created_ms, &e.id) {
                *e = t;
            }
        }
        for (p, t) in &newest {
            let line = task_line(t);
            if shown.get(p) != Some(&line) {
                eprintln!("{p}: {line}");
                shown.insert(p.clone(), line);
                last_change = std::time::Instant::now();
            }
        }
        let live: Vec<&Task> = tasks
            .iter()
            .filter(|t| t.desired_state <= TaskState::Running && !t.status.state.is_terminal())
            .collect();
        let running = fresh
            .iter()
            .filter(|t| {
                t.status.state == TaskState::Running && t.desired_state <= TaskState::Running
            })
            .count();
        let complete = fresh
            .iter()
            .filter(|t| t.status.state == TaskState::Complete)
            .count();
        let rolling = current
            .update_status
            .as_ref()
            .is_some_and(|s| s.in_progress());
        let all_fresh_running = live.iter().all(|t| {
            t.spec.same_task_template(&service.spec) && t.status.state == TaskState::Running
        });
        let summary = match service.spec.mode {
            ServiceMode::Replicated => format!("{name}: {running}/{wanted} running"),
            ServiceMode::Global => format!("{name}: {running} running"),
            ServiceMode::ReplicatedJob => format!("{name}: {complete}/{wanted} complete"),
            ServiceMode::GlobalJob => format!("{name}: {complete} complete"),
        };
        if summary != last_summary {
            eprintln!("{summary}");
            last_summary = summary;
            last_change = std::time::Instant::now();
        }
        let done = match service.spec.mode {
            ServiceMode::Replicated => {
                running == wanted && live.len() == wanted && all_fresh_running && !rolling
            }
            ServiceMode::Global => {
                if live.is_empty() && started.elapsed() > std::time::Duration::from_secs(3) {
                    eprintln!("{name}: no node is eligible for its tasks (see \"shoal node ls\")");
                    return Ok(());
                }
                !live.is_empty() && all_fresh_running && !rolling
            }
            ServiceMode::ReplicatedJob => complete >= wanted,
            ServiceMode::GlobalJob => {
                complete > 0
                    && !fresh.iter().any(|t| {
                        t.desired_state <= TaskState::Running && !t.status.state.is_terminal()
                    })
            }
        };
        if done {
            match service.spec.mode {
                ServiceMode::ReplicatedJob | ServiceMode::GlobalJob => {
                    eprintln!("{name}: job complete")
                }
                _ => eprintln!("{name}: converged"),
            }
            return Ok(());
        }
        if last_change.elapsed() > quiet_limit {
            return Err(anyhow::anyhow!(
                "{name} did not converge: nothing changed for {} s; see \"shoal service ps {name}\"",
                quiet_limit.as_secs()
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
