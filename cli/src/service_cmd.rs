//! `shoal service ...` and `shoal node ...`.

use clap::Subcommand;
use shoal_api::control as pc;
use shoal_api::control::control_client::ControlClient;
use shoal_api::types::{
    ResourceAmounts, RestartCondition, RestartPolicy, Service, ServiceMode, ServiceSpec, Task,
    TaskState,
};

use crate::args::{self, UsageError};
use crate::client::{Host, connect};
use crate::image_cmd::status;
use crate::output;

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
        /// The service.
        service: String,
        /// `table` (default) or `json`.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Show services in detail, as JSON.
    Inspect {
        /// Services by name or id.
        #[arg(required = true)]
        services: Vec<String>,
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
    },
    /// Change a service.
    Update {
        /// A new image.
        #[arg(long)]
        image: Option<String>,
        /// A new number of replicas.
        #[arg(long)]
        replicas: Option<u64>,
        /// Add or replace an environment variable.
        #[arg(long = "env-add")]
        env_add: Vec<String>,
        /// Redeploy even without another change.
        #[arg(long)]
        force: bool,
        /// The service.
        service: String,
    },
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
    },
}

/// `service create`.
#[derive(clap::Args)]
pub struct CreateArgs {
    /// The service's name.
    #[arg(long)]
    name: Option<String>,
    /// Tasks wanted.
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
    /// Reserve CPUs on the node.
    #[arg(long)]
    reserve_cpu: Option<String>,
    /// Reserve memory on the node.
    #[arg(long)]
    reserve_memory: Option<String>,
    /// Limit CPUs.
    #[arg(long)]
    limit_cpu: Option<String>,
    /// Limit memory.
    #[arg(long)]
    limit_memory: Option<String>,
    /// Limit processes.
    #[arg(long)]
    limit_pids: Option<i64>,
    /// none, on-failure or any.
    #[arg(long, default_value = "any")]
    restart_condition: String,
    /// Delay between restarts, such as 5s.
    #[arg(long, default_value = "5s")]
    restart_delay: String,
    /// Restarts allowed (0: unlimited).
    #[arg(long, default_value_t = 0)]
    restart_max_attempts: u32,
    /// Tasks replaced at once by an update (0: all).
    #[arg(long, default_value_t = 1)]
    update_parallelism: u64,
    /// pause, continue or rollback when an update's tasks fail.
    #[arg(long, default_value = "pause")]
    update_failure_action: String,
    /// A new task failing this soon after its creation fails the update.
    #[arg(long, default_value = "5s")]
    update_monitor: String,
    /// A shell command that tells whether a task is healthy (exit 0).
    #[arg(long)]
    health_cmd: Option<String>,
    /// Time between health checks.
    #[arg(long, default_value = "30s")]
    health_interval: String,
    /// A health check running longer fails.
    #[arg(long, default_value = "30s")]
    health_timeout: String,
    /// Consecutive failures that make a task unhealthy.
    #[arg(long, default_value_t = 3)]
    health_retries: u32,
    /// Failures in this first period do not count.
    #[arg(long, default_value = "0s")]
    health_start_period: String,
    /// Return at once instead of waiting for the tasks.
    #[arg(short, long)]
    detach: bool,
    /// The image.
    image: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn millis(flag: &str, s: &str) -> Result<u64, UsageError> {
    let bad = || {
        UsageError(format!(
            "invalid {flag} \"{s}\": use a duration such as 500ms, 5s or 1m"
        ))
    };
    let split = s.find(|c: char| c.is_ascii_alphabetic()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => n,
        "s" => n * 1e3,
        "m" => n * 6e4,
        "h" => n * 3.6e6,
        _ => return Err(bad()),
    };
    if ms < 0.0 {
        return Err(bad());
    }
    Ok(ms as u64)
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
    let condition = match a.restart_condition.as_str() {
        "none" => RestartCondition::None,
        "on-failure" => RestartCondition::OnFailure,
        "any" => RestartCondition::Any,
        other => {
            return Err(UsageError(format!(
                "invalid --restart-condition \"{other}\": use none, on-failure or any"
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
    let cpus = |flag: &str, v: &Option<String>| -> Result<i64, UsageError> {
        v.as_deref()
            .map(args::parse_cpus)
            .transpose()
            .map(|c| c.unwrap_or(0))
            .map_err(|e| UsageError(e.0.replace("--cpus", flag)))
    };
    let bytes = |flag: &str, v: &Option<String>| -> Result<i64, UsageError> {
        v.as_deref()
            .map(|m| args::parse_bytes(flag, m))
            .transpose()
            .map(|b| b.unwrap_or(0))
    };
    Ok(ServiceSpec {
        name,
        image: a.image.clone(),
        command: a.command.clone(),
        env,
        mode,
        replicas: a.replicas,
        max_concurrent: 0,
        constraints: a.constraint.clone(),
        spread_over: spread,
        max_replicas_per_node: 0,
        reservations: ResourceAmounts {
            nano_cpus: cpus("--reserve-cpu", &a.reserve_cpu)?,
            memory_bytes: bytes("--reserve-memory", &a.reserve_memory)?,
        },
        limits: ResourceAmounts {
            nano_cpus: cpus("--limit-cpu", &a.limit_cpu)?,
            memory_bytes: bytes("--limit-memory", &a.limit_memory)?,
        },
        pids_limit: a.limit_pids.unwrap_or(0),
        restart: RestartPolicy {
            condition,
            delay_ms: millis("--restart-delay", &a.restart_delay)?,
            max_attempts: a.restart_max_attempts,
            window_ms: 0,
        },
        healthcheck: match &a.health_cmd {
            None => None,
            Some(cmd) => Some(shoal_api::types::HealthCheck {
                command: cmd.clone(),
                interval_ms: millis("--health-interval", &a.health_interval)?.max(100),
                timeout_ms: millis("--health-timeout", &a.health_timeout)?.max(100),
                retries: a.health_retries.max(1),
                start_period_ms: millis("--health-start-period", &a.health_start_period)?,
            }),
        },
        update: shoal_api::types::UpdateConfig {
            parallelism: a.update_parallelism,
            failure_action: match a.update_failure_action.as_str() {
                "pause" => shoal_api::types::UpdateFailureAction::Pause,
                "continue" => shoal_api::types::UpdateFailureAction::Continue,
                "rollback" => shoal_api::types::UpdateFailureAction::Rollback,
                other => {
                    return Err(UsageError(format!(
                        "invalid --update-failure-action \"{other}\": use pause, continue or rollback"
                    )));
                }
            },
            monitor_ms: millis("--update-monitor", &a.update_monitor)?,
        },
        force_update: 0,
        labels: Default::default(),
    })
}

async fn client(host: &Host) -> anyhow::Result<ControlClient<tonic::transport::Channel>> {
    Ok(ControlClient::new(connect(host).await?))
}

async fn tasks_of(
    c: &mut ControlClient<tonic::transport::Channel>,
    service: &str,
) -> anyhow::Result<Vec<Task>> {
    let objects = c
        .list_tasks(pc::ListTasksRequest {
            service: service.to_string(),
        })
        .await
        .map_err(status)?
        .into_inner()
        .objects;
    Ok(objects
        .iter()
        .filter_map(|o| serde_json::from_str(&o.json).ok())
        .collect())
}

/// Waits until the service's live tasks run (or one says why it cannot), printing
/// progress per slot.
async fn converge(
    c: &mut ControlClient<tonic::transport::Channel>,
    service: &Service,
) -> anyhow::Result<()> {
    let wanted = service.spec.replicas as usize;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut last_line = String::new();
    let mut last_problem = String::new();
    loop {
        let now = c
            .get_service(pc::GetRequest {
                id: service.id.clone(),
            })
            .await
            .map_err(status)?
            .into_inner();
        let current: Service = serde_json::from_str(&now.object.unwrap_or_default().json)?;
        if !current.spec.same_task_template(&service.spec) {
            return Err(anyhow::anyhow!(
                "{}: the update failed and was rolled back to the previous spec: see \"shoal service ps {}\"",
                service.spec.name,
                service.spec.name
            ));
        }
        let tasks = tasks_of(c, &service.id).await?;
        let live: Vec<&Task> = tasks
            .iter()
            .filter(|t| t.desired_state <= TaskState::Running)
            .collect();
        let running = live
            .iter()
            .filter(|t| {
                t.status.state == TaskState::Running && t.spec.same_task_template(&service.spec)
            })
            .count();
        let problem = live
            .iter()
            .filter(|t| t.spec.same_task_template(&service.spec))
            .filter(|t| {
                t.status.state == TaskState::Pending
                    && t.status.message.starts_with("no suitable node")
                    || matches!(t.status.state, TaskState::Failed | TaskState::Rejected)
            })
            .map(|t| format!("slot {}: {}", t.slot, t.status.message))
            .next();
        let line = format!("{}: {running}/{wanted} running", service.spec.name);
        if line != last_line {
            eprintln!("{line}");
            last_line = line;
        }
        if service.spec.mode == ServiceMode::Replicated && running == wanted && live.len() == wanted
        {
            eprintln!("{}: converged", service.spec.name);
            return Ok(());
        }
        if let Some(p) = problem
            && p != last_problem
        {
            eprintln!("{}: {p}", service.spec.name);
            last_problem = p;
        }
        if std::time::Instant::now() > deadline {
            return Err(anyhow::anyhow!(
                "{} did not converge in 60 s: see \"shoal service ps {}\"",
                service.spec.name,
                service.spec.name
            ));
        }
        if service.spec.mode == ServiceMode::ReplicatedJob {
            let done = tasks
                .iter()
                .filter(|t| t.status.state == TaskState::Complete)
                .count();
            if done >= wanted {
                eprintln!("{}: job complete ({done}/{wanted})", service.spec.name);
                return Ok(());
            }
        } else if service.spec.mode != ServiceMode::Replicated && running > 0 {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Runs a service subcommand.
pub async fn run(host: &Host, cmd: ServiceCommand) -> anyhow::Result<()> {
    let spec = match &cmd {
        ServiceCommand::Create(a) => Some(spec_of(a)?),
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
                converge(&mut c, &s).await?;
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
            let mut rows = Vec::new();
            for s in &services {
                let tasks = tasks_of(&mut c, &s.id).await?;
                let running = tasks
                    .iter()
                    .filter(|t| t.status.state == TaskState::Running)
                    .count();
                let mode = match s.spec.mode {
                    ServiceMode::Replicated => "replicated",
                    ServiceMode::Global => "global",
                    ServiceMode::ReplicatedJob => "replicated-job",
                    ServiceMode::GlobalJob => "global-job",
                };
                let replicas = match s.spec.mode {
                    ServiceMode::Replicated => format!("{running}/{}", s.spec.replicas),
                    _ => format!("{running}"),
                };
                rows.push(vec![
                    s.id.chars().take(12).collect(),
                    s.spec.name.clone(),
                    mode.into(),
                    replicas,
                    s.spec.image.clone(),
                ]);
            }
            print!(
                "{}",
                output::table(&["ID", "NAME", "MODE", "REPLICAS", "IMAGE"], &rows)
            );
        }
        ServiceCommand::Ps { service, format } => {
            let mut tasks = tasks_of(&mut c, &service).await?;
            tasks.sort_by_key(|t| (t.slot, std::cmp::Reverse(t.status.timestamp_ms)));
            if format == "json" {
                println!("{}", serde_json::to_string_pretty(&tasks)?);
                return Ok(());
            }
            let now = output::now();
            let rows: Vec<Vec<String>> = tasks
                .iter()
                .map(|t| {
                    vec![
                        t.id.chars().take(12).collect(),
                        format!("{}.{}", t.spec.name, t.slot),
                        t.spec.image.clone(),
                        t.node_id.chars().take(12).collect(),
                        format!("{:?}", t.desired_state),
                        format!(
                            "{:?} {}",
                            t.status.state,
                            output::ago(t.status.timestamp_ms / 1000, now)
                        ),
                        t.status.message.clone(),
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
                        "MESSAGE"
                    ],
                    &rows
                )
            );
        }
        ServiceCommand::Inspect { services } => {
            let mut out = Vec::new();
            for s in services {
                let r = c
                    .get_service(pc::GetRequest { id: s })
                    .await
                    .map_err(status)?
                    .into_inner();
                out.push(serde_json::from_str::<serde_json::Value>(
                    &r.object.unwrap_or_default().json,
                )?);
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        ServiceCommand::Rm { services } => {
            for s in services {
                c.remove_service(pc::RemoveRequest { id: s.clone() })
                    .await
                    .map_err(status)?;
                println!("{s}");
            }
        }
        ServiceCommand::Scale { targets } => {
            for t in targets {
                let (name, n) = t
                    .split_once('=')
                    .ok_or_else(|| UsageError(format!("invalid \"{t}\": use NAME=REPLICAS")))?;
                let n: u64 = n
                    .parse()
                    .map_err(|_| UsageError(format!("invalid \"{t}\": REPLICAS is a number")))?;
                let updated = update(&mut c, name, |s| s.replicas = n).await?;
                println!("{name} scaled to {n}");
                converge(&mut c, &updated).await?;
            }
        }
        ServiceCommand::Update {
            image,
            replicas,
            env_add,
            force,
            service,
        } => {
            let updated = update(&mut c, &service, |s| {
                if let Some(i) = &image {
                    s.image = i.clone();
                }
                if let Some(r) = replicas {
                    s.replicas = r;
                }
                for e in &env_add {
                    let k = e.split('=').next().unwrap_or_default();
                    s.env.retain(|x| x.split('=').next() != Some(k));
                    s.env.push(e.clone());
                }
                if force {
                    s.force_update += 1;
                }
            })
            .await?;
            println!("{service}");
            converge(&mut c, &updated).await?;
        }
        ServiceCommand::Logs {
            follow,
            tail,
            service,
        } => {
            let tail = if tail == "all" {
                -1
            } else {
                tail.parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| {
                        UsageError(format!(
                            "invalid --tail \"{tail}\": use a number of lines, or all"
                        ))
                    })?
            };
            let tasks = tasks_of(&mut c, &service).await?;
            let channel = connect(host).await?;
            let mut handles = Vec::new();
            for t in tasks
                .into_iter()
                .filter(|t| !t.status.container_id.is_empty())
            {
                let mut containers =
                    shoal_api::engine::containers_client::ContainersClient::new(channel.clone());
                let prefix = format!(
                    "{}.{}.{}",
                    t.spec.name,
                    t.slot,
                    t.id.chars().take(12).collect::<String>()
                );
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
        ServiceCommand::Rollback { service } => {
            let r = c
                .update_service(pc::UpdateServiceRequest {
                    service: service.clone(),
                    rollback: true,
                    ..Default::default()
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("{service}");
            let s: Service = serde_json::from_str(&r.object.unwrap_or_default().json)?;
            converge(&mut c, &s).await?;
        }
    }
    Ok(())
}

async fn update(
    c: &mut ControlClient<tonic::transport::Channel>,
    name: &str,
    change: impl FnOnce(&mut ServiceSpec),
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
    change(&mut spec);
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
