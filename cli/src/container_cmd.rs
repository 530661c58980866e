//! `shoal container ...`.

use std::io::Write;

use clap::Subcommand;
use shoal_api::engine as pb;
use shoal_api::engine::containers_client::ContainersClient;
use tonic::transport::Channel;

use crate::args::{self, UsageError};
use crate::client::{Host, connect};
use crate::image_cmd::status;
use crate::output;

/// Exit code of a `run` that failed before the container started.
const EXIT_RUN_FAILED: i32 = 125;

/// Container subcommands.
// Parsed once per process; the size of `run`'s flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum ContainerCommand {
    /// Create and start a container.
    Run(RunArgs),
    /// Create a container without starting it (same flags as run; -d and --rm are ignored).
    Create(RunArgs),
    /// Start stopped containers.
    Start {
        /// Containers by id or name.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// List containers.
    #[command(alias = "ps", alias = "list")]
    Ls(LsArgs),
    /// Show a container's logs.
    Logs(LogsArgs),
    /// Run a command in a running container.
    Exec(ExecArgs),
    /// Stop containers: the stop signal, then SIGKILL after the grace period.
    Stop(StopArgs),
    /// Send a signal to containers.
    Kill(KillArgs),
    /// Remove containers.
    #[command(alias = "remove")]
    Rm(RmArgs),
    /// Show containers in detail, as JSON.
    Inspect {
        /// Containers by id or name.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Wait for containers to exit and print their exit codes.
    Wait {
        /// Containers by id or name.
        #[arg(required = true)]
        containers: Vec<String>,
    },
}

/// `container run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Run in the background and print the container id.
    #[arg(short, long)]
    detach: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    /// A name for the container.
    #[arg(long)]
    name: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to pass it from this shell).
    #[arg(short, long = "env")]
    env: Vec<String>,
    /// Read environment variables from a file of KEY=VALUE lines.
    #[arg(long)]
    env_file: Vec<String>,
    /// Working directory inside the container.
    #[arg(short, long)]
    workdir: Option<String>,
    /// User (name or uid, optionally :group).
    #[arg(short, long)]
    user: Option<String>,
    /// Memory limit, such as 512m or 1g.
    #[arg(short, long, allow_hyphen_values = true)]
    memory: Option<String>,
    /// CPUs the container may use, such as 0.5 or 2.
    #[arg(long, allow_hyphen_values = true)]
    cpus: Option<String>,
    /// Maximum number of processes.
    #[arg(long, allow_hyphen_values = true)]
    pids_limit: Option<i64>,
    /// Add a capability (or ALL).
    #[arg(long)]
    cap_add: Vec<String>,
    /// Drop a capability (or ALL).
    #[arg(long)]
    cap_drop: Vec<String>,
    /// Mount the root filesystem read-only.
    #[arg(long)]
    read_only: bool,
    /// The container's hostname.
    #[arg(long)]
    hostname: Option<String>,
    /// Publish a port: [IP:]HOSTPORT:PORT[/tcp|udp].
    #[arg(short, long = "publish")]
    publish: Vec<String>,
    /// bridge (default), host or none.
    #[arg(long, default_value = "bridge")]
    network: String,
    /// Override the image's entrypoint ("" for none).
    #[arg(long)]
    entrypoint: Option<String>,
    /// Security options: seccomp=unconfined, no-new-privileges.
    #[arg(long)]
    security_opt: Vec<String>,
    /// The signal that stops the container (default SIGTERM).
    #[arg(long)]
    stop_signal: Option<String>,
    /// Seconds to wait after the stop signal before killing.
    #[arg(long)]
    stop_timeout: Option<i64>,
    /// A label, KEY=VALUE.
    #[arg(short, long = "label")]
    label: Vec<String>,
    /// The image.
    image: String,
    /// The command and its arguments (replacing the image's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// `container ls`.
#[derive(clap::Args)]
pub struct LsArgs {
    /// Show all containers, not only running ones.
    #[arg(short, long)]
    all: bool,
    /// Only ids.
    #[arg(short, long)]
    quiet: bool,
    /// Full ids and commands.
    #[arg(long)]
    no_trunc: bool,
    /// `table` (default) or `json`.
    #[arg(long, default_value = "table")]
    format: String,
}

/// `container logs`.
#[derive(clap::Args)]
pub struct LogsArgs {
    /// Keep following until the container exits.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines (or all).
    #[arg(long, default_value = "all")]
    tail: String,
    /// Only lines since a time: 10m, 2h, RFC 3339, or Unix seconds.
    #[arg(long)]
    since: Option<String>,
    /// Show timestamps.
    #[arg(short, long)]
    timestamps: bool,
    /// The container.
    container: String,
}

/// `container exec`.
#[derive(clap::Args)]
pub struct ExecArgs {
    /// Set an environment variable.
    #[arg(short, long = "env")]
    env: Vec<String>,
    /// Working directory.
    #[arg(short, long)]
    workdir: Option<String>,
    /// User.
    #[arg(short, long)]
    user: Option<String>,
    /// The container.
    container: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<String>,
}

/// `container stop`.
#[derive(clap::Args)]
pub struct StopArgs {
    /// Seconds to wait before killing.
    #[arg(short = 't', long = "time")]
    time: Option<i64>,
    /// Containers.
    #[arg(required = true)]
    containers: Vec<String>,
}

/// `container kill`.
#[derive(clap::Args)]
pub struct KillArgs {
    /// The signal (default KILL).
    #[arg(short, long, default_value = "KILL")]
    signal: String,
    /// Containers.
    #[arg(required = true)]
    containers: Vec<String>,
}

/// `container rm`.
#[derive(clap::Args)]
pub struct RmArgs {
    /// Kill running containers first.
    #[arg(short, long)]
    force: bool,
    /// Containers.
    #[arg(required = true)]
    containers: Vec<String>,
}

fn spec_of(a: &RunArgs) -> Result<pb::ContainerSpec, UsageError> {
    let mut env = Vec::new();
    for f in &a.env_file {
        env.extend(args::read_env_file(f)?);
    }
    for e in &a.env {
        if let Some(v) = args::parse_env(e)? {
            env.push(v);
        }
    }
    let ports = a
        .publish
        .iter()
        .map(|p| args::parse_port(p))
        .collect::<Result<Vec<_>, _>>()?;
    let labels = a
        .label
        .iter()
        .map(|l| args::parse_label(l))
        .collect::<Result<_, _>>()?;
    if let Some(p) = a.pids_limit
        && p < 0
    {
        return Err(UsageError(format!(
            "invalid --pids-limit {p}: use a positive number"
        )));
    }
    if !matches!(a.network.as_str(), "bridge" | "host" | "none") {
        return Err(UsageError(format!(
            "invalid --network \"{}\": use bridge, host or none",
            a.network
        )));
    }
    Ok(pb::ContainerSpec {
        image: a.image.clone(),
        name: a.name.clone().unwrap_or_default(),
        cmd: a.command.clone(),
        entrypoint: a
            .entrypoint
            .as_deref()
            .map(|e| {
                if e.is_empty() {
                    Vec::new()
                } else {
                    vec![e.to_string()]
                }
            })
            .unwrap_or_default(),
        entrypoint_set: a.entrypoint.is_some(),
        env,
        workdir: a.workdir.clone().unwrap_or_default(),
        user: a.user.clone().unwrap_or_default(),
        hostname: a.hostname.clone().unwrap_or_default(),
        resources: Some(pb::Resources {
            memory_bytes: a
                .memory
                .as_deref()
                .map(|m| args::parse_bytes("--memory", m))
                .transpose()?
                .unwrap_or(0),
            nano_cpus: a
                .cpus
                .as_deref()
                .map(args::parse_cpus)
                .transpose()?
                .unwrap_or(0),
            pids_limit: a.pids_limit.unwrap_or(0),
        }),
        cap_add: a.cap_add.clone(),
        cap_drop: a.cap_drop.clone(),
        read_only: a.read_only,
        ports,
        network: a.network.clone(),
        // A foreground run removes the container itself once it has read every line and
        // the exit code; only a detached one leaves that to the daemon.
        auto_remove: a.rm && a.detach,
        stop_signal: a.stop_signal.clone().unwrap_or_default(),
        stop_timeout_secs: a.stop_timeout.unwrap_or(-1),
        labels,
        security_opt: a.security_opt.clone(),
    })
}

/// Runs a container subcommand.
pub async fn run(host: &Host, cmd: ContainerCommand) -> anyhow::Result<()> {
    // Check flags before connecting, so usage errors come first.
    let spec = match &cmd {
        ContainerCommand::Run(a) | ContainerCommand::Create(a) => Some(spec_of(a)?),
        _ => None,
    };
    let (since, tail) = match &cmd {
        ContainerCommand::Logs(a) => (
            a.since
                .as_deref()
                .map(|s| args::parse_since(s, now_nanos()))
                .transpose()?
                .unwrap_or(0),
            parse_tail(&a.tail)?,
        ),
        _ => (0, -1),
    };
    let mut client = ContainersClient::new(connect(host).await?);
    match cmd {
        ContainerCommand::Run(a) => {
            run_container(&mut client, spec.expect("parsed above"), a.detach, a.rm).await
        }
        ContainerCommand::Create(_) => {
            let created = client
                .create(pb::CreateRequest { spec })
                .await
                .map_err(|s| coded(s, EXIT_RUN_FAILED))?
                .into_inner();
            println!("{}", created.id);
            Ok(())
        }
        ContainerCommand::Start { containers } => {
            each(containers, |id| {
                let mut c = client.clone();
                async move {
                    c.start(pb::ContainerRef { id: id.clone() })
                        .await
                        .map_err(status)?;
                    println!("{id}");
                    Ok(())
                }
            })
            .await
        }
        ContainerCommand::Ls(a) => list(&mut client, a).await,
        ContainerCommand::Logs(a) => {
            let req = pb::LogsRequest {
                id: a.container,
                follow: a.follow,
                tail,
                since_unix_nanos: since,
                timestamps: a.timestamps,
            };
            stream_logs(&mut client, req).await
        }
        ContainerCommand::Exec(a) => {
            let mut env = Vec::new();
            for e in &a.env {
                if let Some(v) = args::parse_env(e)? {
                    env.push(v);
                }
            }
            let req = pb::ExecRequest {
                id: a.container,
                cmd: a.command,
                env,
                workdir: a.workdir.unwrap_or_default(),
                user: a.user.unwrap_or_default(),
            };
            let mut stream = client.exec(req).await.map_err(status)?.into_inner();
            let mut code = 0;
            while let Some(out) = stream.message().await.map_err(status)? {
                if out.exited {
                    code = out.exit_code;
                } else if out.stream == pb::Stream::Stderr as i32 {
                    let _ = std::io::stderr().write_all(&out.data);
                } else {
                    let _ = std::io::stdout().write_all(&out.data);
                }
            }
            let _ = std::io::stdout().flush();
            if code != 0 {
                return Err(crate::ExitCode(code).into());
            }
            Ok(())
        }
        ContainerCommand::Stop(a) => {
            let time = a.time;
            each(a.containers, |id| {
                let mut c = client.clone();
                async move {
                    c.stop(pb::StopRequest {
                        id: id.clone(),
                        timeout_secs: time.unwrap_or(0),
                        timeout_set: time.is_some(),
                    })
                    .await
                    .map_err(status)?;
                    println!("{id}");
                    Ok(())
                }
            })
            .await
        }
        ContainerCommand::Kill(a) => {
            let signal = a.signal;
            each(a.containers, |id| {
                let mut c = client.clone();
                let signal = signal.clone();
                async move {
                    c.kill(pb::KillRequest {
                        id: id.clone(),
                        signal,
                    })
                    .await
                    .map_err(status)?;
                    println!("{id}");
                    Ok(())
                }
            })
            .await
        }
        ContainerCommand::Rm(a) => {
            let force = a.force;
            each(a.containers, |id| {
                let mut c = client.clone();
                async move {
                    c.remove(pb::RemoveRequest {
                        id: id.clone(),
                        force,
                    })
                    .await
                    .map_err(status)?;
                    println!("{id}");
                    Ok(())
                }
            })
            .await
        }
        ContainerCommand::Inspect { containers } => {
            let mut out = Vec::new();
            let mut failed = false;
            for id in containers {
                match client.inspect(pb::ContainerRef { id }).await {
                    Ok(d) => out.push(d.into_inner()),
                    Err(e) => {
                        eprintln!("error: {}", e.message());
                        failed = true;
                    }
                }
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
            if failed {
                return Err(crate::ExitCode(1).into());
            }
            Ok(())
        }
        ContainerCommand::Wait { containers } => {
            each(containers, |id| {
                let mut c = client.clone();
                async move {
                    let r = c
                        .wait(pb::ContainerRef { id })
                        .await
                        .map_err(status)?
                        .into_inner();
                    println!("{}", r.exit_code);
                    Ok(())
                }
            })
            .await
        }
    }
}

/// Runs `f` for every id, going on after failures; fails at the end if any did.
async fn each<F, Fut>(ids: Vec<String>, mut f: F) -> anyhow::Result<()>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut failed = false;
    for id in ids {
        if let Err(e) = f(id).await {
            eprintln!("error: {e}");
            failed = true;
        }
    }
    if failed {
        Err(crate::ExitCode(1).into())
    } else {
        Ok(())
    }
}

/// `--tail`: a number of lines, or `all` (-1).
fn parse_tail(s: &str) -> Result<i64, UsageError> {
    if s == "all" {
        return Ok(-1);
    }
    s.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
        UsageError(format!(
            "invalid --tail \"{s}\": use a number of lines, or all"
        ))
    })
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

async fn run_container(
    client: &mut ContainersClient<Channel>,
    spec: pb::ContainerSpec,
    detach: bool,
    remove: bool,
) -> anyhow::Result<()> {
    let created = client
        .create(pb::CreateRequest { spec: Some(spec) })
        .await
        .map_err(|s| coded(s, EXIT_RUN_FAILED))?
        .into_inner();
    let id = created.id;
    // Ask for the exit code before starting, so an auto-removed container still answers.
    let waiter = if detach {
        None
    } else {
        let mut c = client.clone();
        let id = id.clone();
        Some(tokio::spawn(async move {
            c.wait(pb::ContainerRef { id }).await
        }))
    };
    if let Err(s) = client.start(pb::ContainerRef { id: id.clone() }).await {
        if let Some(w) = waiter {
            w.abort();
        }
        if remove {
            let _ = client
                .remove(pb::RemoveRequest {
                    id: id.clone(),
                    force: true,
                })
                .await;
        }
        return Err(coded(s, EXIT_RUN_FAILED));
    }
    if detach {
        println!("{id}");
        return Ok(());
    }
    let logs = pb::LogsRequest {
        id: id.clone(),
        follow: true,
        tail: -1,
        since_unix_nanos: 0,
        timestamps: false,
    };
    let mut interrupted = false;
    let mut log_client = client.clone();
    let streaming = stream_logs(&mut log_client, logs);
    tokio::pin!(streaming);
    loop {
        tokio::select! {
            r = &mut streaming => { r?; break; }
            _ = tokio::signal::ctrl_c(), if !interrupted => {
                interrupted = true;
                let _ = client.kill(pb::KillRequest { id: id.clone(), signal: "SIGINT".into() }).await;
            }
        }
    }
    let reply = match waiter {
        Some(w) => w.await?.map_err(status)?.into_inner(),
        None => return Ok(()),
    };
    if remove {
        client
            .remove(pb::RemoveRequest {
                id: id.clone(),
                force: true,
            })
            .await
            .map_err(status)?;
    }
    if !reply.error.is_empty() {
        eprintln!("error: {}", reply.error);
    }
    if reply.exit_code != 0 {
        return Err(crate::ExitCode(reply.exit_code).into());
    }
    Ok(())
}

/// A daemon error with `default` as its exit code unless it carries its own.
fn coded(s: tonic::Status, default: i32) -> anyhow::Error {
    let carried = s.metadata().get("shoal-exit-code").is_some();
    let e = status(s);
    if carried {
        return e;
    }
    match e.downcast::<crate::CodedError>() {
        Ok(crate::CodedError(_, m)) => anyhow::Error::new(crate::CodedError(default, m)),
        Err(e) => e,
    }
}

async fn stream_logs(
    client: &mut ContainersClient<Channel>,
    req: pb::LogsRequest,
) -> anyhow::Result<()> {
    let timestamps = req.timestamps;
    let mut stream = client.logs(req).await.map_err(status)?.into_inner();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    while let Some(entry) = stream.message().await.map_err(status)? {
        let mut line = Vec::with_capacity(entry.line.len() + 40);
        if timestamps {
            let t = time::OffsetDateTime::from_unix_timestamp_nanos(entry.time_unix_nanos as i128)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default();
            line.extend_from_slice(t.as_bytes());
            line.push(b' ');
        }
        line.extend_from_slice(&entry.line);
        if !entry.partial {
            line.push(b'\n');
        }
        if entry.stream == pb::Stream::Stderr as i32 {
            let _ = stderr.lock().write_all(&line);
        } else {
            let mut out = stdout.lock();
            let _ = out.write_all(&line);
            let _ = out.flush();
        }
    }
    Ok(())
}

async fn list(client: &mut ContainersClient<Channel>, a: LsArgs) -> anyhow::Result<()> {
    let containers = client
        .list(pb::ListRequest { all: a.all })
        .await
        .map_err(status)?
        .into_inner()
        .containers;
    if a.format == "json" {
        println!("{}", serde_json::to_string_pretty(&containers)?);
        return Ok(());
    }
    if a.format != "table" {
        return Err(UsageError(format!(
            "invalid --format \"{}\": use table or json",
            a.format
        ))
        .into());
    }
    let id = |s: &str| {
        if a.no_trunc {
            s.to_string()
        } else {
            s.chars().take(12).collect()
        }
    };
    if a.quiet {
        for c in &containers {
            println!("{}", id(&c.id));
        }
        return Ok(());
    }
    let now = output::now();
    let rows: Vec<Vec<String>> = containers
        .iter()
        .map(|c| {
            let state = match pb::ContainerStatus::try_from(c.status) {
                Ok(pb::ContainerStatus::Running) => {
                    format!("Up {}", output::duration(now - c.started_unix))
                }
                Ok(pb::ContainerStatus::Exited) => {
                    format!(
                        "Exited ({}) {}",
                        c.exit_code,
                        output::ago(c.finished_unix, now)
                    )
                }
                Ok(pb::ContainerStatus::Removing) => "Removal In Progress".into(),
                _ => "Created".into(),
            };
            let ports = c
                .ports
                .iter()
                .map(|p| {
                    let ip = if p.host_ip.is_empty() {
                        "0.0.0.0"
                    } else {
                        &p.host_ip
                    };
                    format!(
                        "{ip}:{}->{}/{}",
                        p.host_port,
                        p.container_port,
                        if p.protocol.is_empty() {
                            "tcp"
                        } else {
                            &p.protocol
                        }
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            vec![
                id(&c.id),
                c.image.clone(),
                output::command(&c.command, if a.no_trunc { usize::MAX } else { 20 }),
                output::ago(c.created_unix, now),
                state,
                ports,
                c.name.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &[
                "CONTAINER ID",
                "IMAGE",
                "COMMAND",
                "CREATED",
                "STATUS",
                "PORTS",
                "NAMES"
            ],
            &rows
        )
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn run_flags_become_a_spec() {
        let t = T::try_parse_from([
            "x",
            "--name",
            "web",
            "-e",
            "A=1",
            "--memory",
            "64m",
            "--cpus",
            "0.5",
            "-p",
            "8080:80",
            "--cap-drop",
            "NET_RAW",
            "--read-only",
            "busybox",
            "sh",
            "-c",
            "echo -n hi",
        ])
        .unwrap();
        let s = spec_of(&t.run).unwrap();
        assert_eq!(s.name, "web");
        assert_eq!(s.cmd, vec!["sh", "-c", "echo -n hi"]);
        assert_eq!(s.resources.unwrap().memory_bytes, 64 << 20);
        assert_eq!(s.resources.unwrap().nano_cpus, 500_000_000);
        assert_eq!(s.ports[0].host_port, 8080);
        assert!(s.read_only);
        assert_eq!(s.stop_timeout_secs, -1);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        let t = T::try_parse_from(["x", "--memory", "12q", "busybox"]).unwrap();
        assert!(
            spec_of(&t.run)
                .unwrap_err()
                .to_string()
                .contains("invalid --memory")
        );
        let t = T::try_parse_from(["x", "--network", "mars", "busybox"]).unwrap();
        assert!(
            spec_of(&t.run)
                .unwrap_err()
                .to_string()
                .contains("invalid --network")
        );
    }
}
