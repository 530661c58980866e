//! `shoal volume create|ls|inspect|rm|prune` and `shoal plugin ls`: this node's volumes and
//! the volume plugins it found, through its engine; `volume ls --cluster`: the volumes of
//! cluster-wide scope the managers recorded.

use std::collections::BTreeMap;
use std::io::BufRead;

use clap::Subcommand;
use shoal_api::control as pc;
use shoal_api::control::control_client::ControlClient;
use shoal_api::engine as pb;
use shoal_api::engine::volumes_client::VolumesClient;
use shoal_api::types::ClusterVolume;
use tonic::transport::Channel;

use crate::UsageError;
use crate::args;
use crate::client::{Host, connect, status};
use crate::output;

/// `shoal volume ...`.
#[derive(Subcommand)]
pub enum VolumeCommand {
    /// Create a volume.
    Create {
        /// The driver: local (default) or a volume plugin's name.
        #[arg(short, long, default_value = "local")]
        driver: String,
        /// A driver option, KEY=VALUE (local: type, device, o); repeatable.
        #[arg(short, long = "opt")]
        opt: Vec<String>,
        /// A label, KEY=VALUE; repeatable.
        #[arg(long)]
        label: Vec<String>,
        /// The name (default: a random one).
        name: Option<String>,
    },
    /// List volumes.
    #[command(alias = "list")]
    Ls {
        /// Names only.
        #[arg(short, long)]
        quiet: bool,
        /// Only volumes that match: name=, driver=, label=KEY[=VALUE], dangling=true|false.
        #[arg(short, long)]
        filter: Vec<String>,
        /// `table` (default) or `json`.
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
        /// The volumes of cluster-wide scope the managers recorded (on a manager), instead
        /// of this node's.
        #[arg(long, conflicts_with = "filter")]
        cluster: bool,
    },
    /// Show volumes in detail (JSON).
    Inspect {
        /// Volumes by name.
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove volumes (refused while containers use them).
    #[command(alias = "remove")]
    Rm {
        /// Remove the record even if the driver cannot remove the volume.
        #[arg(short, long)]
        force: bool,
        /// Volumes by name.
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove the anonymous volumes no container uses (with --all, named ones too).
    Prune {
        /// Do not ask first.
        #[arg(short, long)]
        force: bool,
        /// Named volumes too, not only anonymous ones.
        #[arg(short, long)]
        all: bool,
        /// Only volumes that match: label=KEY[=VALUE].
        #[arg(long)]
        filter: Vec<String>,
    },
}

/// `shoal plugin ...`.
#[derive(Subcommand)]
pub enum PluginCommand {
    /// List the volume plugins this node found, and what each implements.
    #[command(alias = "list")]
    Ls {
        /// `table` (default) or `json`.
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
    },
}

fn pairs(flag: &str, values: &[String]) -> Result<BTreeMap<String, String>, UsageError> {
    values
        .iter()
        .map(|v| match v.split_once('=') {
            Some((k, val)) if !k.is_empty() => Ok((k.to_string(), val.to_string())),
            _ => Err(UsageError(format!("invalid {flag} \"{v}\": use KEY=VALUE"))),
        })
        .collect()
}

async fn client(host: &Host) -> anyhow::Result<VolumesClient<Channel>> {
    Ok(VolumesClient::new(connect(host).await?)
        .max_decoding_message_size(shoal_api::MAX_MESSAGE)
        .max_encoding_message_size(shoal_api::MAX_MESSAGE))
}

/// `volume ls --cluster`.
async fn list_cluster(host: &Host, quiet: bool, format: &str) -> anyhow::Result<()> {
    let objects = ControlClient::new(connect(host).await?)
        .max_decoding_message_size(shoal_api::MAX_MESSAGE)
        .list_volumes(pc::ListRequest {})
        .await
        .map_err(status)?
        .into_inner()
        .objects;
    let mut volumes: Vec<ClusterVolume> = shoal_api::wire::decode_all(&objects)?;
    volumes.sort_by(|a, b| a.volume.name.cmp(&b.volume.name));
    if quiet {
        for v in &volumes {
            println!("{}", v.volume.name);
        }
    } else if format == "json" {
        println!("{}", serde_json::to_string_pretty(&volumes)?);
    } else {
        let rows: Vec<Vec<String>> = volumes
            .iter()
            .map(|v| {
                vec![
                    v.volume.driver.clone(),
                    v.volume.name.clone(),
                    v.volume.scope.as_str().to_string(),
                    v.node_id.chars().take(12).collect(),
                ]
            })
            .collect();
        print!(
            "{}",
            output::table(&["DRIVER", "VOLUME NAME", "SCOPE", "RECORDED BY"], &rows)
        );
    }
    Ok(())
}

/// A volume as `inspect` shows it (Docker's keys).
fn detail(v: &pb::VolumeInfo) -> serde_json::Value {
    let created = time::OffsetDateTime::from_unix_timestamp(v.created_unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    serde_json::json!({
        "CreatedAt": created,
        "Driver": v.driver,
        "Labels": v.labels.iter().collect::<BTreeMap<_, _>>(),
        "Mountpoint": v.mountpoint,
        "Name": v.name,
        "Options": v.options.iter().collect::<BTreeMap<_, _>>(),
        "Scope": v.scope,
        "UsedBy": v.used_by,
    })
}

/// Runs a volume subcommand. Flags are checked before connecting.
pub async fn run(host: &Host, cmd: VolumeCommand) -> anyhow::Result<()> {
    match cmd {
        VolumeCommand::Create {
            driver,
            opt,
            label,
            name,
        } => {
            let driver_opts = pairs("--opt", &opt)?;
            let labels: BTreeMap<String, String> = label
                .iter()
                .map(|l| args::parse_label(l))
                .collect::<Result<_, _>>()?;
            if let Some(n) = &name
                && !shoal_api::mount::valid_volume_name(n)
            {
                return Err(UsageError(format!(
                    "invalid volume name \"{n}\": use letters, digits, '_', '.' and '-', starting with a letter or digit (at least 2)"
                ))
                .into());
            }
            let v = client(host)
                .await?
                .create(pb::CreateVolumeRequest {
                    name: name.unwrap_or_default(),
                    driver,
                    driver_opts: driver_opts.into_iter().collect(),
                    labels: labels.into_iter().collect(),
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("{}", v.name);
        }
        VolumeCommand::Ls {
            quiet,
            format,
            cluster: true,
            ..
        } => list_cluster(host, quiet, &format).await?,
        VolumeCommand::Ls {
            quiet,
            filter,
            format,
            cluster: false,
        } => {
            let volumes = client(host)
                .await?
                .list(pb::ListVolumesRequest { filters: filter })
                .await
                .map_err(status)?
                .into_inner()
                .volumes;
            if quiet {
                for v in &volumes {
                    println!("{}", v.name);
                }
            } else if format == "json" {
                let all: Vec<serde_json::Value> = volumes.iter().map(detail).collect();
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                let rows: Vec<Vec<String>> = volumes
                    .iter()
                    .map(|v| vec![v.driver.clone(), v.name.clone()])
                    .collect();
                print!("{}", output::table(&["DRIVER", "VOLUME NAME"], &rows));
            }
        }
        VolumeCommand::Inspect { volumes } => {
            let mut c = client(host).await?;
            let mut out = Vec::new();
            let mut missing = Vec::new();
            for name in volumes {
                match c.inspect(pb::VolumeRef { name: name.clone() }).await {
                    Ok(r) => out.push(detail(&r.into_inner())),
                    Err(e) if e.code() == tonic::Code::NotFound => missing.push(name),
                    Err(e) => return Err(status(e)),
                }
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
            if !missing.is_empty() {
                return Err(anyhow::anyhow!(
                    "no such volume: {} (see \"shoal volume ls\")",
                    missing.join(", ")
                ));
            }
        }
        VolumeCommand::Rm { force, volumes } => {
            let mut c = client(host).await?;
            let mut failed = Vec::new();
            for name in volumes {
                match c
                    .remove(pb::RemoveVolumeRequest {
                        name: name.clone(),
                        force,
                    })
                    .await
                {
                    Ok(_) => println!("{name}"),
                    Err(e) => failed.push(e.message().to_string()),
                }
            }
            if !failed.is_empty() {
                return Err(anyhow::anyhow!("{}", failed.join("\n")));
            }
        }
        VolumeCommand::Prune {
            force,
            all,
            mut filter,
        } => {
            let what = if all {
                "This removes every volume no container uses, named ones too."
            } else {
                "This removes every anonymous volume no container uses."
            };
            if !force && !confirm(what)? {
                return Ok(());
            }
            if all {
                filter.push("all=true".into());
            }
            let r = client(host)
                .await?
                .prune(pb::PruneVolumesRequest { filters: filter })
                .await
                .map_err(status)?
                .into_inner();
            if !r.removed.is_empty() {
                println!("Deleted Volumes:");
                for name in &r.removed {
                    println!("{name}");
                }
                println!();
            }
            println!("Total reclaimed space: {}", output::size(r.reclaimed_bytes));
        }
    }
    Ok(())
}

/// Asks on the terminal; anything but y is no.
fn confirm(what: &str) -> anyhow::Result<bool> {
    eprint!("WARNING! {what} Are you sure you want to continue? [y/N] ");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

/// Runs a plugin subcommand.
pub async fn run_plugin(host: &Host, cmd: PluginCommand) -> anyhow::Result<()> {
    let PluginCommand::Ls { format } = cmd;
    let plugins = client(host)
        .await?
        .plugins(pb::ListPluginsRequest {})
        .await
        .map_err(status)?
        .into_inner()
        .plugins;
    if format == "json" {
        let all: Vec<serde_json::Value> = plugins
            .iter()
            .map(|p| {
                serde_json::json!({
                    "Name": p.name,
                    "Address": p.address,
                    "Implements": p.implements,
                    "Error": p.error,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = plugins
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                if p.error.is_empty() {
                    p.implements.join(", ")
                } else {
                    format!("(not answering: {})", p.error)
                },
                p.address.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(&["NAME", "IMPLEMENTS", "ADDRESS"], &rows)
    );
    Ok(())
}
