//! `shoal service ...`: the command line, what each subcommand takes, and where each is
//! carried out.
//!
//! - [`args`]: `create` and `update` flags, and the specs they make;
//! - [`change`]: create, rm, scale, update, rollback;
//! - [`converge`]: following a service until it converges;
//! - [`list`]: `ls` and `ps`;
//! - [`inspect`], [`logs`].

mod args;
mod change;
mod converge;
mod inspect;
mod list;
mod logs;

use clap::Subcommand;
use shoal_api::control::control_client::ControlClient;

pub use self::args::{CreateArgs, UpdateArgs};
use crate::args::UsageError;
use crate::client::{Host, connect};

/// A client of the managers' control API.
type Control = ControlClient<tonic::transport::Channel>;

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

async fn client(host: &Host) -> anyhow::Result<Control> {
    Ok(ControlClient::new(connect(host).await?)
        .max_decoding_message_size(shoal_api::MAX_MESSAGE)
        .max_encoding_message_size(shoal_api::MAX_MESSAGE))
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

/// Runs a service subcommand. Everything the flags can get wrong is found before
/// connecting.
pub async fn run(host: &Host, cmd: ServiceCommand) -> anyhow::Result<()> {
    let spec = match &cmd {
        ServiceCommand::Create(a) => Some(args::spec_of(a)?),
        ServiceCommand::Update(a) => {
            args::apply_update(a, &mut Default::default())?;
            None
        }
        ServiceCommand::Ls { format } => {
            check_format(format, &["table", "json"])?;
            None
        }
        ServiceCommand::Ps { format, filter, .. } => {
            list::check(format, filter)?;
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
            change::create(&mut c, spec, a.detach).await
        }
        ServiceCommand::Ls { format } => list::ls(&mut c, format).await,
        ServiceCommand::Ps {
            services,
            filter,
            no_trunc,
            quiet,
            format,
        } => list::ps(&mut c, services, filter, no_trunc, quiet, format).await,
        ServiceCommand::Inspect { services, format } => {
            inspect::inspect(&mut c, services, format).await
        }
        ServiceCommand::Rm { services } => change::rm(&mut c, services).await,
        ServiceCommand::Scale { targets, detach } => change::scale(&mut c, targets, detach).await,
        ServiceCommand::Update(a) => change::update_cmd(&mut c, a).await,
        ServiceCommand::Logs {
            follow,
            tail,
            service,
        } => logs::logs(host, &mut c, follow, tail, service).await,
        ServiceCommand::Rollback { service, detach } => {
            change::rollback(&mut c, &service, detach).await
        }
    }
}
