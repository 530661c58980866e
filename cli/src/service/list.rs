//! `service ls` and `service ps`: services with their replicas and ports, and tasks
//! with their places, nodes, states and history.

use shoal_api::control as pc;
use shoal_api::types::{Service, ServiceMode, Task, TaskState};
use shoal_api::wire;

use super::converge::{place, tasks_of};
use super::{Control, check_format};
use crate::args::UsageError;
use crate::image_cmd::status;
use crate::output;

/// `service ls`.
pub(super) async fn ls(c: &mut Control, format: String) -> anyhow::Result<()> {
    let objects = c
        .list_services(pc::ListRequest {})
        .await
        .map_err(status)?
        .into_inner()
        .objects;
    let services: Vec<Service> = wire::decode_all(&objects)?;
    if format == "json" {
        println!("{}", serde_json::to_string_pretty(&services)?);
        return Ok(());
    }
    let all = tasks_of(c, "").await?;
    let mut rows = Vec::new();
    for s in &services {
        let mine = all.iter().filter(|t| t.service_id == s.id);
        let running = mine
            .clone()
            .filter(|t| t.status.state == TaskState::Running)
            .count();
        let complete = mine
            .filter(|t| t.status.state == TaskState::Complete && t.spec.same_task_template(&s.spec))
            .count();
        let (mode, replicas) = match s.spec.mode {
            ServiceMode::Replicated => ("replicated", format!("{running}/{}", s.spec.replicas)),
            ServiceMode::Global => ("global", format!("{running}")),
            ServiceMode::ReplicatedJob => (
                "replicated-job",
                format!(
                    "{running} running ({complete}/{} completed)",
                    s.spec.replicas
                ),
            ),
            ServiceMode::GlobalJob => ("global-job", format!("{running} ({complete} completed)")),
        };
        let ports: Vec<String> = s
            .spec
            .ports
            .iter()
            .map(|p| {
                // The allocator's number for an ingress port given without one.
                let p = s
                    .ports
                    .iter()
                    .find(|q| {
                        p.published == 0
                            && q.target == p.target
                            && q.protocol == p.protocol
                            && q.mode == p.mode
                    })
                    .unwrap_or(p);
                let proto = format!("{:?}", p.protocol).to_lowercase();
                if p.published == 0 {
                    format!("*:->{}/{proto}", p.target)
                } else {
                    format!("*:{}->{}/{proto}", p.published, p.target)
                }
            })
            .collect();
        rows.push(vec![
            output::short_id(&s.id),
            s.spec.name.clone(),
            mode.into(),
            replicas,
            s.spec.image.clone(),
            ports.join(", "),
        ]);
    }
    print!(
        "{}",
        output::table(&["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"], &rows)
    );
    Ok(())
}

/// `service ps`.
pub(super) async fn ps(
    c: &mut Control,
    services: Vec<String>,
    filter: Vec<String>,
    no_trunc: bool,
    quiet: bool,
    format: String,
) -> anyhow::Result<()> {
    let filters = parse_ps_filters(&filter)?;
    let mut tasks = Vec::new();
    for s in &services {
        tasks.extend(tasks_of(c, s).await?);
    }
    tasks.retain(|t| ps_filter(&filters, t));
    tasks.sort_by_key(|t| {
        (
            t.spec.name.clone(),
            t.slot,
            t.node_id.clone(),
            std::cmp::Reverse(t.status.timestamp_ms),
        )
    });
    if format == "json" {
        println!("{}", serde_json::to_string_pretty(&tasks)?);
        return Ok(());
    }
    if quiet {
        for t in &tasks {
            println!(
                "{}",
                if no_trunc {
                    t.id.clone()
                } else {
                    output::short_id(&t.id)
                }
            );
        }
        return Ok(());
    }
    let now = output::now();
    let id = |s: &str| {
        if no_trunc {
            s.to_string()
        } else {
            output::short_id(s)
        }
    };
    // Nodes by hostname, as people name them (the id where none is known).
    let nodes = c
        .list_nodes(pc::ListRequest {})
        .await
        .map_err(status)?
        .into_inner()
        .objects;
    let hostnames: std::collections::HashMap<String, String> =
        wire::decode_all::<shoal_api::types::Node>(&nodes)?
            .into_iter()
            .filter(|n| !n.hostname.is_empty())
            .map(|n| (n.id, n.hostname))
            .collect();
    let node = |n: &str| hostnames.get(n).cloned().unwrap_or_else(|| id(n));
    let mut seen = std::collections::HashSet::new();
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            // Older tasks of the same place are indented, as history.
            let name = place(t);
            let shown = if seen.insert(name.clone()) {
                name
            } else {
                format!(" \\_ {name}")
            };
            let ports: Vec<String> = t
                .ports
                .iter()
                .map(|p| {
                    format!(
                        "*:{}->{}/{}",
                        p.published,
                        p.target,
                        format!("{:?}", p.protocol).to_lowercase()
                    )
                })
                .collect();
            let mut message = t.status.message.clone();
            if !no_trunc && message.chars().count() > 60 {
                message = message.chars().take(57).collect::<String>() + "...";
            }
            vec![
                id(&t.id),
                shown,
                t.spec.image.clone(),
                node(&t.node_id),
                format!("{:?}", t.desired_state),
                state_column(t, now),
                message,
                ports.join(", "),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &[
                "ID",
                "NAME",
                "IMAGE",
                "NODE",
                "DESIRED STATE",
                "CURRENT STATE",
                "MESSAGE",
                "PORTS"
            ],
            &rows
        )
    );
    Ok(())
}

/// Checks `ps` flags before connecting.
pub(super) fn check(format: &str, filters: &[String]) -> Result<(), UsageError> {
    check_format(format, &["table", "json"])?;
    parse_ps_filters(filters).map(|_| ())
}

/// Whether a task passes `service ps` filters (`key=value`, each key may repeat: a task
/// passes when it matches one value of every key given).
fn ps_filter(filters: &[(String, String)], t: &Task) -> bool {
    let mut keys: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (k, v) in filters {
        keys.entry(k.as_str()).or_default().push(v.as_str());
    }
    keys.iter().all(|(k, values)| {
        values.iter().any(|v| match *k {
            "desired-state" => match *v {
                "running" => t.desired_state <= TaskState::Running,
                "shutdown" => t.desired_state > TaskState::Running,
                "accepted" => {
                    t.desired_state <= TaskState::Running && !t.status.state.is_terminal()
                }
                _ => false,
            },
            "node" => t.node_id == *v || (v.len() >= 4 && t.node_id.starts_with(v)),
            "id" => t.id.starts_with(v),
            "name" => place(t) == *v || t.spec.name == *v,
            _ => false,
        })
    })
}

fn parse_ps_filters(filters: &[String]) -> Result<Vec<(String, String)>, UsageError> {
    filters
        .iter()
        .map(|f| {
            let (k, v) = f.split_once('=').ok_or_else(|| {
                UsageError(format!(
                    "invalid --filter \"{f}\": use KEY=VALUE, such as desired-state=running"
                ))
            })?;
            match k {
                "desired-state" if !matches!(v, "running" | "shutdown" | "accepted") => {
                    Err(UsageError(format!(
                        "invalid --filter \"{f}\": desired-state is running, shutdown or accepted"
                    )))
                }
                "desired-state" | "node" | "id" | "name" => Ok((k.to_string(), v.to_string())),
                _ => Err(UsageError(format!(
                    "invalid --filter \"{f}\": filter on desired-state, node, id or name"
                ))),
            }
        })
        .collect()
}

/// The state of a task as `service ps` shows it: "Running 5 seconds ago".
fn state_column(t: &Task, now: i64) -> String {
    let state = format!("{:?}", t.status.state);
    format!("{state} {}", output::ago(t.status.timestamp_ms / 1000, now))
}
