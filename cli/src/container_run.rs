//! `shoal container run` and `create`: flags checked into a `ContainerSpec` before we
//! connect, then create, start, and for a foreground run every log line and the exit code.

use shoal_api::engine as pb;
use shoal_api::engine::containers_client::ContainersClient;
use tokio::signal::unix::{SignalKind, signal};
use tonic::transport::Channel;

use crate::args::{self, UsageError};
use crate::client::status;
use crate::container_logs::{OutputClosed, stream_logs};

/// Exit code of a `run` that failed before the container started (Docker's).
pub const EXIT_RUN_FAILED: i32 = 125;

/// How long a container whose reader went away has to end after SIGPIPE.
const PIPE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// `container run` and `container create`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Run in the background and print the container id.
    #[arg(short, long)]
    pub detach: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
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
    /// Memory plus swap, such as 1g, or -1 for unlimited swap (needs --memory).
    #[arg(long, allow_hyphen_values = true)]
    memory_swap: Option<String>,
    /// CPUs the container may use, such as 0.5 or 2.
    #[arg(long, allow_hyphen_values = true)]
    cpus: Option<String>,
    /// Maximum number of processes (-1 for no limit).
    #[arg(long, allow_hyphen_values = true)]
    pids_limit: Option<String>,
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
    /// bridge (default), host, none, or an attachable cluster network by name.
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
    #[arg(long, allow_hyphen_values = true)]
    stop_timeout: Option<String>,
    /// A label, KEY=VALUE.
    #[arg(short, long = "label")]
    label: Vec<String>,
    /// Mount a volume or a host path: NAME:/path, /host/path:/path or /path (an
    /// anonymous volume), then :ro, :rw, :nocopy.
    #[arg(short = 'v', long = "volume")]
    volume: Vec<String>,
    /// Mount: type=volume|bind|tmpfs,source=..,target=..[,readonly][,volume-driver=..]
    /// [,volume-opt=K=V][,volume-nocopy][,tmpfs-size=..][,tmpfs-mode=..][,bind-propagation=..].
    #[arg(long)]
    mount: Vec<String>,
    /// A tmpfs at PATH[:size=64m,mode=1777,...].
    #[arg(long)]
    tmpfs: Vec<String>,
    /// The image, then the command and its arguments (replacing the image's). Flags end
    /// at the image: everything after it goes to the container as it is.
    #[arg(
        value_name = "IMAGE [COMMAND [ARG...]]",
        required = true,
        num_args = 1..,
        trailing_var_arg = true
    )]
    argv: Vec<String>,
}

impl RunArgs {
    /// The image: the first word after the flags.
    fn image(&self) -> &str {
        self.argv.first().map(String::as_str).unwrap_or_default()
    }

    /// The command: every word after the image.
    fn command(&self) -> &[String] {
        self.argv.get(1..).unwrap_or_default()
    }
}

/// Checks every flag and builds the spec the daemon gets; nothing here needs the daemon.
pub fn spec_of(a: &RunArgs) -> Result<pb::ContainerSpec, UsageError> {
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
    let name_like = !a.network.is_empty()
        && a.network
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !name_like {
        return Err(UsageError(format!(
            "invalid --network \"{}\": use bridge, host, none or the name of an attachable cluster network",
            a.network
        )));
    }
    let memory_bytes = a
        .memory
        .as_deref()
        .map(|m| args::parse_bytes("--memory", m))
        .transpose()?
        .unwrap_or(0);
    if let Some(s) = &a.memory_swap {
        let swap = args::parse_memory_swap(s)?;
        if memory_bytes == 0 {
            return Err(UsageError(format!(
                "invalid --memory-swap \"{s}\": it needs --memory too, for example --memory 512m --memory-swap 1g"
            )));
        }
        if swap != -1 && swap < memory_bytes {
            return Err(UsageError(format!(
                "invalid --memory-swap \"{s}\": it counts memory plus swap, so it must be at least --memory ({})",
                a.memory.as_deref().unwrap_or_default()
            )));
        }
        // The engine API has no field for it yet: the engine gives every memory limit
        // as much swap again. Say so rather than pretend.
        eprintln!(
            "warning: --memory-swap is not applied yet; the container may swap as much as its --memory"
        );
    }
    let stop_signal = a
        .stop_signal
        .as_deref()
        .map(|s| args::parse_signal("--stop-signal", s))
        .transpose()?
        .unwrap_or_default();
    let stop_timeout_secs = a
        .stop_timeout
        .as_deref()
        .map(|s| args::parse_seconds("--stop-timeout", s))
        .transpose()?;
    let usage = |e: shoal_api::mount::MountError| UsageError(e.0);
    let mut mounts: Vec<pb::Mount> = Vec::new();
    for v in &a.volume {
        mounts.push((&shoal_api::mount::parse_volume(v).map_err(usage)?).into());
    }
    for m in &a.mount {
        mounts.push((&shoal_api::mount::parse_mount(m).map_err(usage)?).into());
    }
    for t in &a.tmpfs {
        mounts.push((&shoal_api::mount::parse_tmpfs(t).map_err(usage)?).into());
    }
    Ok(pb::ContainerSpec {
        image: a.image().to_string(),
        name: a.name.clone().unwrap_or_default(),
        cmd: a.command().to_vec(),
        entrypoint: match a.entrypoint.as_deref() {
            None | Some("") => Vec::new(),
            Some(e) => vec![e.to_string()],
        },
        entrypoint_set: a.entrypoint.is_some(),
        env,
        workdir: a.workdir.clone().unwrap_or_default(),
        user: a.user.clone().unwrap_or_default(),
        hostname: a.hostname.clone().unwrap_or_default(),
        resources: Some(pb::Resources {
            memory_bytes,
            nano_cpus: a
                .cpus
                .as_deref()
                .map(args::parse_cpus)
                .transpose()?
                .unwrap_or(0),
            pids_limit: a
                .pids_limit
                .as_deref()
                .map(args::parse_pids_limit)
                .transpose()?
                .unwrap_or(0),
        }),
        cap_add: a.cap_add.clone(),
        cap_drop: a.cap_drop.clone(),
        read_only: a.read_only,
        ports,
        network: a.network.clone(),
        // A foreground run removes the container itself once it has read every line and
        // the exit code; only a detached one leaves that to the daemon.
        auto_remove: a.rm && a.detach,
        stop_signal,
        stop_timeout_secs,
        labels,
        security_opt: a.security_opt.clone(),
        mounts,
    })
}

/// A daemon error with `default` as its exit code unless it carries its own.
pub fn coded(s: tonic::Status, default: i32) -> anyhow::Error {
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

/// Creates a container and prints its id.
pub async fn create(
    client: &mut ContainersClient<Channel>,
    spec: pb::ContainerSpec,
) -> anyhow::Result<()> {
    let created = client
        .create(pb::CreateRequest { spec: Some(spec) })
        .await
        .map_err(|s| coded(s, EXIT_RUN_FAILED))?
        .into_inner();
    for w in &created.warnings {
        eprintln!("warning: {w}");
    }
    println!("{}", created.id);
    Ok(())
}

/// Creates and starts a container; in the foreground, streams its output until it ends and
/// exits with its exit code.
pub async fn run(
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
    for w in &created.warnings {
        eprintln!("warning: {w}");
    }
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
                    volumes: true,
                })
                .await;
        }
        return Err(coded(s, EXIT_RUN_FAILED));
    }
    let Some(waiter) = waiter else {
        println!("{id}");
        return Ok(());
    };
    // A closed stdout must reach us as an error, so that the container is still waited
    // for and removed; the client's default is to die of SIGPIPE.
    // SAFETY: setting a signal's disposition to ignore is async-signal-safe and touches no
    // memory of ours.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let mut waiter = waiter;
    let reply = match forward_output(client, &id).await {
        Ok(()) => waiter.await,
        Err(e) if e.is::<OutputClosed>() => {
            // Like the writer in a shell pipeline whose reader quit: the container gets
            // SIGPIPE (which an init ignores unless it handles it), then SIGKILL; we still
            // collect its exit code and remove it.
            let _ = client
                .kill(pb::KillRequest {
                    id: id.clone(),
                    signal: "SIGPIPE".into(),
                })
                .await;
            match tokio::time::timeout(PIPE_GRACE, &mut waiter).await {
                Ok(r) => r,
                Err(_) => {
                    let _ = client
                        .kill(pb::KillRequest {
                            id: id.clone(),
                            signal: "SIGKILL".into(),
                        })
                        .await;
                    waiter.await
                }
            }
        }
        Err(e) => return Err(e),
    };
    let reply = reply?.map_err(status)?.into_inner();
    if remove {
        client
            .remove(pb::RemoveRequest {
                id: id.clone(),
                force: true,
                volumes: true,
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

/// Streams every log line of a started container until it has exited and its log is
/// drained (the daemon ends a followed stream then). Ctrl-C and SIGTERM go on to the
/// container; a second Ctrl-C kills it.
async fn forward_output(client: &mut ContainersClient<Channel>, id: &str) -> anyhow::Result<()> {
    let logs = pb::LogsRequest {
        id: id.to_string(),
        follow: true,
        tail: -1,
        since_unix_nanos: 0,
        timestamps: false,
    };
    let mut interrupts = signal(SignalKind::interrupt())?;
    let mut terms = signal(SignalKind::terminate())?;
    let mut interrupted = 0;
    let mut log_client = client.clone();
    let streaming = stream_logs(&mut log_client, logs);
    tokio::pin!(streaming);
    loop {
        let forward = tokio::select! {
            r = &mut streaming => return r,
            _ = interrupts.recv() => {
                interrupted += 1;
                if interrupted == 1 { "SIGINT" } else { "SIGKILL" }
            }
            _ = terms.recv() => "SIGTERM",
        };
        if let Err(s) = client
            .kill(pb::KillRequest {
                id: id.to_string(),
                signal: forward.into(),
            })
            .await
        {
            // The container may have exited meanwhile; its log stream ends by itself.
            tracing::debug!("forwarding {forward}: {}", s.message());
        }
    }
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

    fn parse(argv: &[&str]) -> RunArgs {
        let mut full = vec!["shoal"];
        full.extend(argv);
        T::try_parse_from(full).expect("flags parse").run
    }

    #[test]
    fn run_flags_become_a_spec() {
        let a = parse(&[
            "--name",
            "web",
            "-e",
            "A=1",
            "--memory",
            "64m",
            "--memory-swap",
            "128m",
            "--cpus",
            "0.5",
            "--pids-limit",
            "50",
            "-p",
            "8080:80",
            "--cap-drop",
            "NET_RAW",
            "--read-only",
            "--stop-signal",
            "quit",
            "--stop-timeout",
            "3",
            "-l",
            "team=web",
            "--entrypoint",
            "",
            "busybox",
            "sh",
            "-c",
            "echo -n hi",
        ]);
        let s = spec_of(&a).unwrap();
        assert_eq!(s.name, "web");
        assert_eq!(s.cmd, vec!["sh", "-c", "echo -n hi"]);
        let r = s.resources.unwrap();
        assert_eq!(
            (r.memory_bytes, r.nano_cpus, r.pids_limit),
            (64 << 20, 500_000_000, 50)
        );
        assert_eq!(s.ports[0].host_port, 8080);
        assert!(s.read_only);
        assert_eq!(s.stop_signal, "SIGQUIT");
        assert_eq!(s.stop_timeout_secs, Some(3));
        assert_eq!(s.labels["team"], "web");
        assert!(s.entrypoint_set && s.entrypoint.is_empty());
        assert_eq!(s.network, "bridge");
        assert!(!s.auto_remove);
    }

    #[test]
    fn defaults_leave_everything_to_the_daemon() {
        let s = spec_of(&parse(&["busybox"])).unwrap();
        assert_eq!(s.stop_timeout_secs, None, "the daemon's default");
        assert_eq!(s.stop_signal, "");
        assert!(!s.entrypoint_set);
        assert!(s.cmd.is_empty());
        let r = s.resources.unwrap();
        assert_eq!((r.memory_bytes, r.nano_cpus, r.pids_limit), (0, 0, 0));
    }

    #[test]
    fn arguments_after_the_image_go_to_the_container() {
        for (argv, image, cmd) in [
            (vec!["busybox", "ls", "-la"], "busybox", vec!["ls", "-la"]),
            (
                vec!["-d", "busybox", "--rm", "-e", "X=1"],
                "busybox",
                vec!["--rm", "-e", "X=1"],
            ),
            (vec!["busybox", "--help"], "busybox", vec!["--help"]),
            (vec!["busybox", "--", "-x"], "busybox", vec!["--", "-x"]),
            (vec!["--rm", "alpine:3"], "alpine:3", vec![]),
        ] {
            let a = parse(&argv);
            assert_eq!(a.image(), image, "{argv:?}");
            assert_eq!(a.command(), cmd, "{argv:?}");
        }
        let a = parse(&["-d", "--rm", "busybox", "--rm"]);
        assert!(a.detach && a.rm);
        assert!(spec_of(&a).unwrap().auto_remove);
    }

    #[test]
    fn bad_values_name_the_flag() {
        for (argv, want) in [
            (
                vec!["--memory", "12q", "busybox"],
                "invalid --memory \"12q\"",
            ),
            (vec!["--memory", "-1", "busybox"], "invalid --memory \"-1\""),
            (vec!["--cpus", "0", "busybox"], "invalid --cpus \"0\""),
            (vec!["-p", "1:2:3:4", "busybox"], "invalid -p \"1:2:3:4\""),
            (
                vec!["--network", "mars base", "busybox"],
                "invalid --network \"mars base\"",
            ),
            (vec!["-e", "=1", "busybox"], "invalid -e \"=1\""),
            (vec!["-l", "=1", "busybox"], "invalid label \"=1\""),
            (
                vec!["--stop-signal", "NOPE", "busybox"],
                "invalid --stop-signal \"NOPE\"",
            ),
            (
                vec!["--stop-timeout", "-5", "busybox"],
                "invalid --stop-timeout \"-5\"",
            ),
            (
                vec!["--pids-limit", "lots", "busybox"],
                "invalid --pids-limit \"lots\"",
            ),
            (
                vec!["--memory-swap", "1g", "busybox"],
                "invalid --memory-swap \"1g\": it needs --memory too",
            ),
            (
                vec!["--memory", "1g", "--memory-swap", "512m", "busybox"],
                "must be at least --memory (1g)",
            ),
            (
                vec!["--env-file", "/nonexistent/env", "busybox"],
                "cannot read --env-file /nonexistent/env",
            ),
        ] {
            let e = spec_of(&parse(&argv)).unwrap_err().to_string();
            assert!(e.contains(want), "{argv:?}: {e}");
        }
    }

    #[test]
    fn daemon_errors_keep_their_own_exit_code() {
        let plain = coded(tonic::Status::not_found("image \"x\" not found"), 125);
        let c = plain.downcast_ref::<crate::CodedError>().unwrap();
        assert_eq!((c.0, c.1.as_str()), (125, "image \"x\" not found"));
        let mut carried = tonic::Status::failed_precondition("executable file not found");
        carried
            .metadata_mut()
            .insert("shoal-exit-code", "127".parse().unwrap());
        let e = coded(carried, 125);
        assert_eq!(e.downcast_ref::<crate::CodedError>().unwrap().0, 127);
    }
}
