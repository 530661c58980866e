//! `shoal container ...`.

use std::io::Write;

use clap::Subcommand;
use shoal_api::engine as pb;
use shoal_api::engine::containers_client::ContainersClient;
use tonic::transport::Channel;

use crate::args::{self, UsageError};
use crate::client::{Host, connect, status};
use crate::container_logs::stream_logs;
use crate::container_run;
pub use crate::container_run::RunArgs;
use crate::output;

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
    /// The container, then the command and its arguments. Flags end at the container:
    /// everything after it goes to the command as it is.
    #[arg(
        value_name = "CONTAINER COMMAND [ARG...]",
        required = true,
        num_args = 2..,
        trailing_var_arg = true
    )]
    argv: Vec<String>,
}

/// `container stop`.
#[derive(clap::Args)]
pub struct StopArgs {
    /// Seconds to wait before killing (default: the container's --stop-timeout, or 10).
    #[arg(short = 't', long = "time", allow_hyphen_values = true)]
    time: Option<String>,
    /// Containers.
    #[arg(required = true)]
    containers: Vec<String>,
}

/// `container kill`.
#[derive(clap::Args)]
pub struct KillArgs {
    /// The signal: a name such as TERM or SIGHUP, or a number.
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
    /// Also remove the anonymous volumes made for them.
    #[arg(short, long)]
    volumes: bool,
    /// Containers.
    #[arg(required = true)]
    containers: Vec<String>,
}

/// The values of a command's flags, checked before we connect so that usage errors come
/// first and leave nothing half-done.
enum Checked {
    Spec(Box<pb::ContainerSpec>),
    Logs(pb::LogsRequest),
    Exec(pb::ExecRequest),
    Signal(String),
    StopTime(Option<i64>),
    Nothing,
}

fn check(cmd: &ContainerCommand) -> Result<Checked, UsageError> {
    Ok(match cmd {
        ContainerCommand::Run(a) | ContainerCommand::Create(a) => {
            Checked::Spec(Box::new(container_run::spec_of(a)?))
        }
        ContainerCommand::Logs(a) => Checked::Logs(pb::LogsRequest {
            id: a.container.clone(),
            follow: a.follow,
            tail: args::parse_tail(&a.tail)?,
            since_unix_nanos: a
                .since
                .as_deref()
                .map(|s| args::parse_since(s, now_nanos()))
                .transpose()?
                .unwrap_or(0),
            timestamps: a.timestamps,
        }),
        ContainerCommand::Exec(a) => {
            let mut env = Vec::new();
            for e in &a.env {
                if let Some(v) = args::parse_env(e)? {
                    env.push(v);
                }
            }
            let (id, cmd) = a
                .argv
                .split_first()
                .filter(|(_, cmd)| !cmd.is_empty())
                .ok_or_else(|| UsageError("exec needs a container and a command".into()))?;
            Checked::Exec(pb::ExecRequest {
                id: id.clone(),
                cmd: cmd.to_vec(),
                env,
                workdir: a.workdir.clone().unwrap_or_default(),
                user: a.user.clone().unwrap_or_default(),
            })
        }
        ContainerCommand::Kill(a) => Checked::Signal(args::parse_signal("--signal", &a.signal)?),
        ContainerCommand::Stop(a) => Checked::StopTime(
            a.time
                .as_deref()
                .map(|t| args::parse_seconds("-t/--time", t))
                .transpose()?,
        ),
        ContainerCommand::Ls(a) => {
            if a.format != "table" && a.format != "json" {
                return Err(UsageError(format!(
                    "invalid --format \"{}\": use table or json",
                    a.format
                )));
            }
            Checked::Nothing
        }
        _ => Checked::Nothing,
    })
}

/// Runs a container subcommand.
pub async fn run(host: &Host, cmd: ContainerCommand) -> anyhow::Result<()> {
    let checked = check(&cmd)?;
    let mut client = ContainersClient::new(connect(host).await?)
        .max_decoding_message_size(shoal_api::MAX_MESSAGE)
        .max_encoding_message_size(shoal_api::MAX_MESSAGE);
    match (cmd, checked) {
        (ContainerCommand::Run(a), Checked::Spec(spec)) => {
            container_run::run(&mut client, *spec, a.detach, a.rm).await
        }
        (ContainerCommand::Create(_), Checked::Spec(spec)) => {
            container_run::create(&mut client, *spec).await
        }
        (ContainerCommand::Start { containers }, _) => {
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
        (ContainerCommand::Ls(a), _) => list(&mut client, a).await,
        (ContainerCommand::Logs(_), Checked::Logs(req)) => stream_logs(&mut client, req).await,
        (ContainerCommand::Exec(_), Checked::Exec(req)) => exec(&mut client, req).await,
        (ContainerCommand::Stop(a), Checked::StopTime(time)) => {
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
        (ContainerCommand::Kill(a), Checked::Signal(signal)) => {
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
        (ContainerCommand::Rm(a), _) => {
            let (force, volumes) = (a.force, a.volumes);
            each(a.containers, |id| {
                let mut c = client.clone();
                async move {
                    c.remove(pb::RemoveRequest {
                        id: id.clone(),
                        force,
                        volumes,
                    })
                    .await
                    .map_err(status)?;
                    println!("{id}");
                    Ok(())
                }
            })
            .await
        }
        (ContainerCommand::Inspect { containers }, _) => {
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
        (ContainerCommand::Wait { containers }, _) => {
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
        (ContainerCommand::Run(_) | ContainerCommand::Create(_), _)
        | (ContainerCommand::Logs(_), _)
        | (ContainerCommand::Exec(_), _)
        | (ContainerCommand::Stop(_), _)
        | (ContainerCommand::Kill(_), _) => unreachable!("check() gives each command its values"),
    }
}

/// Runs a command in a container, copying its output, and ends with its exit code.
async fn exec(client: &mut ContainersClient<Channel>, req: pb::ExecRequest) -> anyhow::Result<()> {
    let id = req.id.clone();
    let mut stream = client.exec(req).await.map_err(status)?.into_inner();
    let mut code = None;
    while let Some(out) = stream.message().await.map_err(status)? {
        if out.exited {
            code = Some(out.exit_code);
        } else if out.stream == pb::Stream::Stderr as i32 {
            let _ = std::io::stderr().write_all(&out.data);
        } else {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(&out.data);
            let _ = stdout.flush();
        }
    }
    match code {
        Some(0) => Ok(()),
        Some(c) => Err(crate::ExitCode(c).into()),
        None => Err(anyhow::anyhow!(
            "the exec in {id} ended without an exit code; see \"shoal logs {id}\" and the daemon's log"
        )),
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

fn now_nanos() -> i64 {
    shoal_api::clock::now_nanos()
}

/// `ps`: a table, ids only, or JSON.
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
            vec![
                id(&c.id),
                c.image.clone(),
                output::command(&c.command, if a.no_trunc { usize::MAX } else { 20 }),
                output::ago(c.created_unix, now),
                output::container_status(c, now),
                output::ports(&c.ports),
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
        #[command(subcommand)]
        cmd: ContainerCommand,
    }

    fn checked(argv: &[&str]) -> Result<Checked, UsageError> {
        let mut full = vec!["container"];
        full.extend(argv);
        check(&T::try_parse_from(full).expect("flags parse").cmd)
    }

    #[test]
    fn values_are_checked_before_connecting() {
        for (argv, want) in [
            (vec!["logs", "--tail", "x", "c"], "invalid --tail \"x\""),
            (
                vec!["logs", "--since", "soon", "c"],
                "invalid --since \"soon\"",
            ),
            (vec!["kill", "-s", "NOPE", "c"], "invalid --signal \"NOPE\""),
            (vec!["stop", "-t", "-3", "c"], "invalid -t/--time \"-3\""),
            (vec!["exec", "-e", "=x", "c", "ls"], "invalid -e \"=x\""),
            (vec!["ls", "--format", "yaml"], "invalid --format \"yaml\""),
            (
                vec!["run", "--memory", "0", "busybox"],
                "invalid --memory \"0\"",
            ),
        ] {
            let Err(e) = checked(&argv) else {
                panic!("{argv:?} passed");
            };
            assert!(e.to_string().starts_with(want), "{argv:?}: {e}");
        }
    }

    #[test]
    fn good_values_reach_the_request() {
        let Ok(Checked::Signal(s)) = checked(&["kill", "-s", "hup", "a", "b"]) else {
            panic!("kill");
        };
        assert_eq!(s, "SIGHUP");
        let Ok(Checked::Signal(s)) = checked(&["kill", "a"]) else {
            panic!("kill default");
        };
        assert_eq!(s, "SIGKILL");
        let Ok(Checked::StopTime(t)) = checked(&["stop", "-t", "0", "a"]) else {
            panic!("stop");
        };
        assert_eq!(t, Some(0));
        let Ok(Checked::StopTime(None)) = checked(&["stop", "a"]) else {
            panic!("stop default");
        };
        let Ok(Checked::Logs(r)) = checked(&["logs", "-f", "--tail", "5", "-t", "web"]) else {
            panic!("logs");
        };
        assert_eq!(
            (
                r.id.as_str(),
                r.follow,
                r.tail,
                r.timestamps,
                r.since_unix_nanos
            ),
            ("web", true, 5, true, 0)
        );
        let Ok(Checked::Logs(r)) = checked(&["logs", "web"]) else {
            panic!("logs default");
        };
        assert_eq!((r.follow, r.tail), (false, -1));
        let Ok(Checked::Exec(r)) = checked(&["exec", "-w", "/tmp", "web", "sh", "-c", "exit 3"])
        else {
            panic!("exec");
        };
        assert_eq!(r.cmd, vec!["sh", "-c", "exit 3"]);
        assert_eq!(r.workdir, "/tmp");
        let Ok(Checked::Exec(r)) = checked(&["exec", "web", "ls", "-w", "-e", "x"]) else {
            panic!("exec with flags after the container");
        };
        assert_eq!((r.id.as_str(), r.workdir.as_str()), ("web", ""));
        assert_eq!(r.cmd, vec!["ls", "-w", "-e", "x"]);
        assert!(
            T::try_parse_from(["container", "exec", "web"]).is_err(),
            "a command is required"
        );
    }
}
