//! `shoal service ...` and `shoal node ...`.

use clap::Subcommand;
use shoal_api::control as pc;
use shoal_api::control::control_client::ControlClient;
use shoal_api::types::{RestartCondition, Service, ServiceMode, ServiceSpec, Task, TaskState};

use crate::args::{self, UsageError};
use crate::client::{Host, connect};
use crate::image_cmd::status;
use crate::output;
use crate::service_flags::{SpecFlags, parse_publish};

/// Service subcommands.
// Parsed once per process; the size of `create`'s flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum ServiceCommand {
    /// Create a service.
    Create(CreateArgs),
    /// List services.
    #[command(alias = "list")]
    Ls {
        /// `table` (default) or `json`.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// List a service's tasks.
    Ps {
        /// The services.
        #[arg(required = true)]
        services: Vec<String>,
        /// Only tasks that match: desired-state=running|shutdown|accepted, node=ID|NAME,
        /// id=PREFIX, name=SERVICE.SLOT.
        #[arg(short, long)]
        filter: Vec<String>,
        /// Show full ids and messages.
        #[arg(long)]
        no_trunc: bool,
        /// Only the task ids.
        #[arg(short, long)]
        quiet: bool,
        /// `table` (default) or `json`.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Show services in detail, as JSON.
    Inspect {
        /// Services by name or id.
        #[arg(required = true)]
        services: Vec<String>,
        /// `json` (default) or `pretty`.
        #[arg(long, default_value = "json")]
        format: String,
    },
    /// Remove services.
    #[command(alias = "remove")]
    Rm {
        /// Services by name or id.
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Set the replicas of services: NAME=N...
    Scale {
        /// NAME=REPLICAS pairs.
        #[arg(required = true)]
        targets: Vec<String>,
        /// Return at once instead of waiting for the tasks.
        #[arg(short, long)]
        detach: bool,
    },
    /// Change a service.
    Update(UpdateArgs),
    /// Show the logs of a service's tasks (on this node's engine).
    Logs {
        /// Keep following.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines of each task (or all).
        #[arg(long, default_value = "all")]
        tail: String,
        /// The service.
        service: String,
    },
    /// Go back to the previous spec of a service.
    Rollback {
        /// The service.
        service: String,
        /// Return at once instead of waiting for the tasks.
        #[arg(short, long)]
        detach: bool,
    },
}

/// `service create`.
#[derive(clap::Args)]
pub struct CreateArgs {
    /// The service's name (default: the image's name).
    #[arg(long)]
    name: Option<String>,
    /// Tasks wanted (replicated modes).
    #[arg(long, default_value_t = 1)]
    replicas: u64,
    /// replicated, global, replicated-job or global-job.
    #[arg(long, default_value = "replicated")]
    mode: String,
    /// Environment variable K=V.
    #[arg(short, long = "env")]
    env: Vec<String>,
    /// Placement constraint, such as node.labels.zone==east.
    #[arg(long)]
    constraint: Vec<String>,
    /// Placement preference, spread=node.labels.KEY.
    #[arg(long = "placement-pref")]
    placement_pref: Vec<String>,
    /// Publish a port: published=P,target=T[,protocol=tcp|udp][,mode=host|ingress].
    #[arg(short, long)]
    publish: Vec<String>,
    /// A label K=V on the service.
    #[arg(short, long)]
    label: Vec<String>,
    /// A network the tasks join, by name or id (repeat for more).
    #[arg(long)]
    network: Vec<String>,
    #[command(flatten)]
    flags: SpecFlags,
    /// Return at once instead of waiting for the tasks.
    #[arg(short, long)]
    detach: bool,
    /// The image.
    image: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// `service update`.
#[derive(clap::Args)]
pub struct UpdateArgs {
    /// A new image.
    #[arg(long)]
    image: Option<String>,
    /// A new number of replicas.
    #[arg(long)]
    replicas: Option<u64>,
    /// Add or replace an environment variable K=V.
    #[arg(long = "env-add")]
    env_add: Vec<String>,
    /// Remove an environment variable.
    #[arg(long = "env-rm")]
    env_rm: Vec<String>,
    /// A new command and arguments, as one shell-quoted string ("" for the image's).
    #[arg(long)]
    args: Option<String>,
    /// Add a placement constraint.
    #[arg(long = "constraint-add")]
    constraint_add: Vec<String>,
    /// Remove a placement constraint.
    #[arg(long = "constraint-rm")]
    constraint_rm: Vec<String>,
    /// Publish another port.
    #[arg(long = "publish-add")]
    publish_add: Vec<String>,
    /// Stop publishing the port with this target (or published) number.
    #[arg(long = "publish-rm")]
    publish_rm: Vec<u16>,
    /// Add or replace a label K=V.
    #[arg(long = "label-add")]
    label_add: Vec<String>,
    /// Remove a label.
    #[arg(long = "label-rm")]
    label_rm: Vec<String>,
    /// Join another network.
    #[arg(long = "network-add")]
    network_add: Vec<String>,
    /// Leave a network (by name or id).
    #[arg(long = "network-rm")]
    network_rm: Vec<String>,
    /// The ids of the networks --network-rm names.
    #[arg(skip)]
    network_rm_ids: Vec<String>,
    #[command(flatten)]
    flags: SpecFlags,
    /// Redeploy even without another change.
    #[arg(long)]
    force: bool,
    /// Go back to the previous spec (as "service rollback").
    #[arg(long)]
    rollback: bool,
    /// Return at once instead of waiting for the tasks.
    #[arg(short, long)]
    detach: bool,
    /// The service.
    service: String,
}

fn label_pairs(labels: &[String]) -> Result<Vec<(String, String)>, UsageError> {
    labels.iter().map(|l| args::parse_label(l)).collect()
}

fn spec_of(a: &CreateArgs) -> Result<ServiceSpec, UsageError> {
    let mode = match a.mode.as_str() {
        "replicated" => ServiceMode::Replicated,
        "global" => ServiceMode::Global,
        "replicated-job" => ServiceMode::ReplicatedJob,
        "global-job" => ServiceMode::GlobalJob,
        other => {
            return Err(UsageError(format!(
                "invalid --mode \"{other}\": use replicated, global, replicated-job or global-job"
            )));
        }
    };
    let mut spread = Vec::new();
    for p in &a.placement_pref {
        match p.strip_prefix("spread=node.labels.") {
            Some(k) if !k.is_empty() => spread.push(k.to_string()),
            _ => {
                return Err(UsageError(format!(
                    "invalid --placement-pref \"{p}\": use spread=node.labels.KEY"
                )));
            }
        }
    }
    let name = a.name.clone().unwrap_or_else(|| {
        let base = a.image.rsplit('/').next().unwrap_or(&a.image);
        base.split([':', '@']).next().unwrap_or(base).to_string()
    });
    let mut env = Vec::new();
    for e in &a.env {
        if let Some(v) = args::parse_env(e)? {
            env.push(v);
        }
    }
    let mut spec = ServiceSpec {
        name,
        image: a.image.clone(),
        command: a.command.clone(),
        env,
        mode,
        replicas: a.replicas,
        constraints: a.constraint.clone(),
        spread_over: spread,
        ports: a
            .publish
            .iter()
            .map(|p| parse_publish(p))
            .collect::<Result<_, _>>()?,
        labels: label_pairs(&a.label)?.into_iter().collect(),
        networks: a.network.clone(),
        ..Default::default()
    };
    if matches!(mode, ServiceMode::ReplicatedJob | ServiceMode::GlobalJob) {
        // A job that exited 0 is done; it runs again only when it failed.
        spec.restart.condition = RestartCondition::OnFailure;
    }
    a.flags.apply(&mut spec)?;
    Ok(spec)
}

/// Applies `service update`'s flags to the stored spec.
fn apply_update(a: &UpdateArgs, s: &mut ServiceSpec) -> Result<(), UsageError> {
    if let Some(i) = &a.image {
        s.image = i.clone();
    }
    if let Some(r) = a.replicas {
        s.replicas = r;
    }
    for k in &a.env_rm {
        s.env.retain(|x| x.split('=').next() != Some(k.as_str()));
    }
    for e in &a.env_add {
        if let Some(e) = args::parse_env(e)? {
            let k = e.split('=').next().unwrap_or_default().to_string();
            s.env.retain(|x| x.split('=').next() != Some(k.as_str()));
            s.env.push(e);
        }
    }
    if let Some(line) = &a.args {
        s.command = split_words(line).ok_or_else(|| {
            UsageError(format!("invalid --args \"{line}\": a quote is not closed"))
        })?;
    }
    s.constraints.retain(|c| !a.constraint_rm.contains(c));
    for c in &a.constraint_add {
        if !s.constraints.contains(c) {
            s.constraints.push(c.clone());
        }
    }
    s.ports
        .retain(|p| !a.publish_rm.contains(&p.target) && !a.publish_rm.contains(&p.published));
    for p in &a.publish_add {
        let p = parse_publish(p)?;
        s.ports
            .retain(|q| q.target != p.target || q.protocol != p.protocol);
        s.ports.push(p);
    }
    for k in &a.label_rm {
        s.labels.remove(k);
    }
    // The stored spec names networks by id; --network-rm may name them (the ids were
    // looked up into network_rm_ids before).
    s.networks
        .retain(|n| !a.network_rm.contains(n) && !a.network_rm_ids.contains(n));
    for n in &a.network_add {
        if !s.networks.contains(n) {
            s.networks.push(n.clone());
        }
    }
    for (k, v) in label_pairs(&a.label_add)? {
        s.labels.insert(k, v);
    }
    a.flags.apply(s)?;
    if a.force {
        s.force_update += 1;
    }
    Ok(())
}

/// Splits a command line into words: whitespace separates, single and double quotes
/// group, a backslash escapes the next character. None if a quote is not closed.
fn split_words(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                in_word = true;
                loop {
                    let d = chars.next()?;
                    if d == c {
                        break;
                    }
                    if d == '\\' && c == '"' {
                        word.push(chars.next()?);
                    } else {
                        word.push(d);
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.push(chars.next()?);
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Some(words)
}

async fn client(host: &Host) -> anyhow::Result<ControlClient<tonic::transport::Channel>> {
    Ok(ControlClient::new(connect(host).await?)
        .max_decoding_message_size(shoal_api::MAX_MESSAGE)
        .max_encoding_message_size(shoal_api::MAX_MESSAGE))
}

async fn tasks_of(
    c: &mut ControlClient<tonic::transport::Channel>,
    service: &str,
) -> anyhow::Result<Vec<Task>> {
    list_tasks(c, service).await.map_err(status)
}

async fn list_tasks(
    c: &mut ControlClient<tonic::transport::Channel>,
    service: &str,
) -> Result<Vec<Task>, tonic::Status> {
    let objects = c
        .list_tasks(pc::ListTasksRequest {
            service: service.to_string(),
        })
        .await?
        .into_inner()
        .objects;
    Ok(objects
        .iter()
        .filter_map(|o| serde_json::from_str(&o.json).ok())
        .collect())
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
fn place(t: &Task) -> String {
    if t.slot > 0 {
        format!("{}.{}", t.spec.name, t.slot)
    } else {
        format!("{}.{}", t.spec.name, output::short_id(&t.node_id))
    }
}

/// Waits until the service converges (or its job completes), printing a line whenever a
/// slot's task changes state and why a task cannot run. Fails when the update pauses or
/// rolls back, or when nothing changes for a minute.
async fn converge(
    c: &mut ControlClient<tonic::transport::Channel>,
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
        let current: Service = serde_json::from_str(&now.object.unwrap_or_default().json)?;
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

fn check_format(format: &str, allowed: &[&str]) -> Result<(), UsageError> {
    if allowed.contains(&format) {
        Ok(())
    } else {
        Err(UsageError(format!(
            "invalid --format \"{format}\": use {}",
            allowed.join(" or ")
        )))
    }
}

/// Runs a service subcommand.
pub async fn run(host: &Host, cmd: ServiceCommand) -> anyhow::Result<()> {
    // Everything the flags can get wrong is found before connecting.
    let spec = match &cmd {
        ServiceCommand::Create(a) => Some(spec_of(a)?),
        ServiceCommand::Update(a) => {
            apply_update(a, &mut ServiceSpec::default())?;
            None
        }
        ServiceCommand::Ls { format } => {
            check_format(format, &["table", "json"])?;
            None
        }
        ServiceCommand::Ps { format, filter, .. } => {
            check_format(format, &["table", "json"])?;
            parse_ps_filters(filter)?;
            None
        }
        ServiceCommand::Inspect { format, .. } => {
            check_format(format, &["json", "pretty"])?;
            None
        }
        _ => None,
    };
    let mut c = client(host).await?;
    match cmd {
        ServiceCommand::Create(a) => {
            let spec = spec.expect("parsed above");
            let r = c
                .create_service(pc::CreateServiceRequest {
                    spec_json: serde_json::to_string(&spec)?,
                })
                .await
                .map_err(status)?
                .into_inner();
            let o = r.object.unwrap_or_default();
            println!("{}", o.id);
            if !a.detach {
                let s: Service = serde_json::from_str(&o.json)?;
                converge(&mut c, &s, false).await?;
            }
        }
        ServiceCommand::Ls { format } => {
            let objects = c
                .list_services(pc::ListRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .objects;
            let services: Vec<Service> = objects
                .iter()
                .filter_map(|o| serde_json::from_str(&o.json).ok())
                .collect();
            if format == "json" {
                println!("{}", serde_json::to_string_pretty(&services)?);
                return Ok(());
            }
            let all = tasks_of(&mut c, "").await?;
            let mut rows = Vec::new();
            for s in &services {
                let mine = all.iter().filter(|t| t.service_id == s.id);
                let running = mine
                    .clone()
                    .filter(|t| t.status.state == TaskState::Running)
                    .count();
                let complete = mine
                    .filter(|t| {
                        t.status.state == TaskState::Complete && t.spec.same_task_template(&s.spec)
                    })
                    .count();
                let (mode, replicas) = match s.spec.mode {
                    ServiceMode::Replicated => {
                        ("replicated", format!("{running}/{}", s.spec.replicas))
                    }
                    ServiceMode::Global => ("global", format!("{running}")),
                    ServiceMode::ReplicatedJob => (
                        "replicated-job",
                        format!(
                            "{running} running ({complete}/{} completed)",
                            s.spec.replicas
                        ),
                    ),
                    ServiceMode::GlobalJob => {
                        ("global-job", format!("{running} ({complete} completed)"))
                    }
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
        }
        ServiceCommand::Ps {
            services,
            filter,
            no_trunc,
            quiet,
            format,
        } => {
            let filters = parse_ps_filters(&filter)?;
            let mut tasks = Vec::new();
            for s in &services {
                tasks.extend(tasks_of(&mut c, s).await?);
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
            let hostnames: std::collections::HashMap<String, String> = c
                .list_nodes(pc::ListRequest {})
                .await
                .map(|r| r.into_inner().objects)
                .unwrap_or_default()
                .iter()
                .filter_map(|o| serde_json::from_str::<shoal_api::types::Node>(&o.json).ok())
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
        }
        ServiceCommand::Inspect { services, format } => {
            let mut out = Vec::new();
            for s in services {
                let r = c
                    .get_service(pc::GetRequest { id: s })
                    .await
                    .map_err(status)?
                    .into_inner();
                out.push(serde_json::from_str::<Service>(
                    &r.object.unwrap_or_default().json,
                )?);
            }
            if format == "json" {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                for s in &out {
                    print!("{}", pretty(s));
                }
            }
        }
        ServiceCommand::Rm { services } => {
            for s in services {
                c.remove_service(pc::RemoveRequest { id: s.clone() })
                    .await
                    .map_err(status)?;
                println!("{s}");
            }
        }
        ServiceCommand::Scale { targets, detach } => {
            let mut parsed = Vec::new();
            for t in &targets {
                let (name, n) = t
                    .split_once('=')
                    .ok_or_else(|| UsageError(format!("invalid \"{t}\": use NAME=REPLICAS")))?;
                let n: u64 = n
                    .parse()
                    .map_err(|_| UsageError(format!("invalid \"{t}\": REPLICAS is a number")))?;
                parsed.push((name.to_string(), n));
            }
            for (name, n) in parsed {
                let updated = update(&mut c, &name, |s| {
                    if !matches!(s.mode, ServiceMode::Replicated | ServiceMode::ReplicatedJob) {
                        return Err(UsageError(format!(
                            "{name} is a {} service: only replicated services scale",
                            format!("{:?}", s.mode).to_lowercase()
                        )));
                    }
                    s.replicas = n;
                    Ok(())
                })
                .await?;
                println!("{name} scaled to {n}");
                if !detach {
                    converge(&mut c, &updated, false).await?;
                }
            }
        }
        ServiceCommand::Update(a) => {
            if a.rollback {
                return rollback(&mut c, &a.service, a.detach).await;
            }
            let mut a = a;
            for key in &a.network_rm {
                if let Ok(r) = c.get_network(pc::GetRequest { id: key.clone() }).await
                    && let Some(o) = r.into_inner().object
                {
                    a.network_rm_ids.push(o.id);
                }
            }
            let updated = update(&mut c, &a.service, |s| apply_update(&a, s)).await?;
            println!("{}", a.service);
            if !a.detach {
                converge(&mut c, &updated, false).await?;
            }
        }
        ServiceCommand::Logs {
            follow,
            tail,
            service,
        } => {
            let tail = args::parse_tail(&tail)?;
            let tasks = tasks_of(&mut c, &service).await?;
            let channel = connect(host).await?;
            let mut handles = Vec::new();
            for t in tasks
                .into_iter()
                .filter(|t| !t.status.container_id.is_empty())
            {
                let mut containers =
                    shoal_api::engine::containers_client::ContainersClient::new(channel.clone())
                        .max_decoding_message_size(shoal_api::MAX_MESSAGE)
                        .max_encoding_message_size(shoal_api::MAX_MESSAGE);
                let prefix = format!("{}.{}", place(&t), output::short_id(&t.id));
                handles.push(tokio::spawn(async move {
                    let req = shoal_api::engine::LogsRequest {
                        id: t.status.container_id.clone(),
                        follow,
                        tail,
                        ..Default::default()
                    };
                    let Ok(stream) = containers.logs(req).await else {
                        return;
                    };
                    let mut stream = stream.into_inner();
                    while let Ok(Some(e)) = stream.message().await {
                        let line = format!("{prefix} | {}", String::from_utf8_lossy(&e.line));
                        if e.stream == shoal_api::engine::Stream::Stderr as i32 {
                            eprintln!("{line}");
                        } else {
                            println!("{line}");
                        }
                    }
                }));
            }
            for h in handles {
                let _ = h.await;
            }
        }
        ServiceCommand::Rollback { service, detach } => {
            rollback(&mut c, &service, detach).await?;
        }
    }
    Ok(())
}

async fn rollback(
    c: &mut ControlClient<tonic::transport::Channel>,
    service: &str,
    detach: bool,
) -> anyhow::Result<()> {
    let r = c
        .update_service(pc::UpdateServiceRequest {
            service: service.to_string(),
            rollback: true,
            ..Default::default()
        })
        .await
        .map_err(status)?
        .into_inner();
    println!("{service}");
    let s: Service = serde_json::from_str(&r.object.unwrap_or_default().json)?;
    if !detach {
        converge(c, &s, true).await?;
    }
    Ok(())
}

/// A service for people: `service inspect --format pretty`.
fn pretty(s: &Service) -> String {
    use std::fmt::Write;
    let spec = &s.spec;
    let mut o = String::new();
    let _ = writeln!(o, "ID:\t\t{}", s.id);
    let _ = writeln!(o, "Name:\t\t{}", spec.name);
    let _ = writeln!(o, "Mode:\t\t{:?}", spec.mode);
    if matches!(
        spec.mode,
        ServiceMode::Replicated | ServiceMode::ReplicatedJob
    ) {
        let _ = writeln!(o, " Replicas:\t{}", spec.replicas);
    }
    if let Some(u) = &s.update_status {
        let _ = writeln!(o, "UpdateStatus:\n State:\t\t{:?}", u.state);
        if !u.message.is_empty() {
            let _ = writeln!(o, " Message:\t{}", u.message);
        }
    }
    let _ = writeln!(o, "Image:\t\t{}", spec.image);
    if !spec.command.is_empty() {
        let _ = writeln!(o, "Args:\t\t{}", spec.command.join(" "));
    }
    for e in &spec.env {
        let _ = writeln!(o, "Env:\t\t{e}");
    }
    let _ = writeln!(
        o,
        "RestartPolicy:\n Condition:\t{:?}\n Delay:\t\t{} ms\n Max attempts:\t{}",
        spec.restart.condition, spec.restart.delay_ms, spec.restart.max_attempts
    );
    for (what, u) in [
        ("UpdateConfig", &spec.update),
        ("RollbackConfig", &spec.rollback),
    ] {
        let _ = writeln!(
            o,
            "{what}:\n Parallelism:\t{}\n Delay:\t\t{} ms\n On failure:\t{:?}\n Monitoring:\t{} ms\n Order:\t\t{:?}",
            u.parallelism, u.delay_ms, u.failure_action, u.monitor_ms, u.order
        );
    }
    if let Some(h) = &spec.healthcheck {
        let _ = writeln!(o, "Healthcheck:\t{} every {} ms", h.command, h.interval_ms);
    }
    for p in &spec.ports {
        let _ = writeln!(
            o,
            "Port:\t\t{} -> {}/{:?} ({:?})",
            p.published, p.target, p.protocol, p.mode
        );
    }
    o
}

async fn update(
    c: &mut ControlClient<tonic::transport::Channel>,
    name: &str,
    change: impl FnOnce(&mut ServiceSpec) -> Result<(), UsageError>,
) -> anyhow::Result<Service> {
    let got = c
        .get_service(pc::GetRequest {
            id: name.to_string(),
        })
        .await
        .map_err(status)?
        .into_inner();
    let o = got.object.unwrap_or_default();
    let s: Service = serde_json::from_str(&o.json)?;
    let mut spec = s.spec.clone();
    change(&mut spec)?;
    let r = c
        .update_service(pc::UpdateServiceRequest {
            service: s.id.clone(),
            spec_json: serde_json::to_string(&spec)?,
            version: o.version,
            rollback: false,
        })
        .await
        .map_err(status)?
        .into_inner();
    Ok(serde_json::from_str(&r.object.unwrap_or_default().json)?)
}
