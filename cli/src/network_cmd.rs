//! `shoal network create|ls|inspect|rm`: the cluster's networks, through a manager.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use shoal_api::control as pc;
use shoal_api::control::control_client::ControlClient;
use shoal_api::types::{Network, NetworkDriver, NetworkSpec};
use tonic::transport::Channel;

use crate::UsageError;
use crate::client::{Host, connect};
use crate::image_cmd::status;
use crate::output;

/// `shoal network ...`.
#[derive(Subcommand)]
pub enum NetworkCommand {
    /// Create a network.
    Create(CreateArgs),
    /// List networks.
    #[command(alias = "list")]
    Ls {
        /// Print names only.
        #[arg(short, long)]
        quiet: bool,
        /// `table` (default) or `json`.
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
    },
    /// Show networks in detail (JSON).
    Inspect {
        /// Networks by name or id.
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove networks (refused while services, tasks or containers use them).
    #[command(alias = "remove")]
    Rm {
        /// Networks by name or id.
        #[arg(required = true)]
        networks: Vec<String>,
    },
}

/// `shoal network create`.
#[derive(Args, Debug, Clone)]
pub struct CreateArgs {
    /// overlay (default: across nodes), bridge (per node) or macvlan (on a parent
    /// interface's segment).
    #[arg(short, long, default_value = "overlay")]
    pub driver: String,
    /// The subnet, as 10.20.0.0/24 (default: the next free one of the cluster's address
    /// pool).
    #[arg(long)]
    pub subnet: Option<String>,
    /// The gateway (default: the subnet's first address).
    #[arg(long)]
    pub gateway: Option<String>,
    /// Give tasks addresses from this part of the subnet only.
    #[arg(long)]
    pub ip_range: Option<String>,
    /// Let standalone containers join (`shoal container run --network NAME`).
    #[arg(long)]
    pub attachable: bool,
    /// No traffic leaves the network: no route out, no published ports.
    #[arg(long)]
    pub internal: bool,
    /// Make it the routing mesh's network (there is one; `shoal init` makes `ingress`).
    #[arg(long)]
    pub ingress: bool,
    /// Driver options, KEY=VALUE: parent=IFACE (macvlan), mtu=BYTES.
    #[arg(short = 'o', long = "opt")]
    pub opts: Vec<String>,
    /// Labels, KEY=VALUE.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// The network's name.
    pub name: String,
}

fn pairs(flag: &str, items: &[String]) -> Result<BTreeMap<String, String>, UsageError> {
    items
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(UsageError(format!(
                "{flag} {kv}: give KEY=VALUE, for example {flag} parent=eth0"
            ))),
        })
        .collect()
}

impl CreateArgs {
    /// The spec these flags ask for.
    pub fn spec(&self) -> Result<NetworkSpec, UsageError> {
        let driver = match self.driver.as_str() {
            "overlay" => NetworkDriver::Overlay,
            "bridge" => NetworkDriver::Bridge,
            "macvlan" => NetworkDriver::Macvlan,
            other => {
                return Err(UsageError(format!(
                    "unknown network driver \"{other}\": use overlay, bridge or macvlan"
                )));
            }
        };
        Ok(NetworkSpec {
            name: self.name.clone(),
            driver,
            subnet: self.subnet.clone().unwrap_or_default(),
            gateway: self.gateway.clone().unwrap_or_default(),
            ip_range: self.ip_range.clone().unwrap_or_default(),
            attachable: self.attachable,
            internal: self.internal,
            ingress: self.ingress,
            options: pairs("-o", &self.opts)?,
            labels: pairs("--label", &self.labels)?,
        })
    }
}

async fn client(host: &Host) -> anyhow::Result<ControlClient<Channel>> {
    Ok(ControlClient::new(connect(host).await?)
        .max_decoding_message_size(shoal_api::MAX_MESSAGE)
        .max_encoding_message_size(shoal_api::MAX_MESSAGE))
}

async fn all(c: &mut ControlClient<Channel>) -> anyhow::Result<Vec<Network>> {
    let objects = c
        .list_networks(pc::ListRequest {})
        .await
        .map_err(status)?
        .into_inner()
        .objects;
    let mut nets: Vec<Network> = shoal_api::wire::decode_all(&objects)?;
    nets.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    Ok(nets)
}

/// The SCOPE column: overlay and macvlan networks span the cluster; a bridge network is
/// made on each node alone.
fn scope(n: &Network) -> &'static str {
    match n.spec.driver {
        NetworkDriver::Bridge => "local",
        _ => "swarm",
    }
}

/// Runs a `shoal network` command.
pub async fn run(host: &Host, cmd: NetworkCommand) -> anyhow::Result<()> {
    match cmd {
        NetworkCommand::Create(a) => {
            let spec = a.spec()?;
            let mut c = client(host).await?;
            let r = c
                .create_network(pc::CreateNetworkRequest::new(&spec)?)
                .await
                .map_err(status)?
                .into_inner();
            println!("{}", r.object()?.id);
            Ok(())
        }
        NetworkCommand::Ls { quiet, format } => {
            let nets = all(&mut client(host).await?).await?;
            if format == "json" {
                println!("{}", serde_json::to_string_pretty(&nets)?);
                return Ok(());
            }
            if quiet {
                for n in &nets {
                    println!("{}", n.spec.name);
                }
                return Ok(());
            }
            let rows: Vec<Vec<String>> = nets
                .iter()
                .map(|n| {
                    let mut flags = Vec::new();
                    if n.spec.ingress {
                        flags.push("ingress");
                    }
                    if n.spec.attachable {
                        flags.push("attachable");
                    }
                    if n.spec.internal {
                        flags.push("internal");
                    }
                    vec![
                        n.id.chars().take(12).collect(),
                        n.spec.name.clone(),
                        n.spec.driver.as_str().into(),
                        scope(n).into(),
                        n.subnet.clone(),
                        flags.join(","),
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(
                    &["NETWORK ID", "NAME", "DRIVER", "SCOPE", "SUBNET", "OPTIONS"],
                    &rows
                )
            );
            Ok(())
        }
        NetworkCommand::Inspect { networks } => {
            let mut c = client(host).await?;
            let mut out = Vec::new();
            let mut missing = Vec::new();
            for key in networks {
                match c.get_network(pc::GetRequest { id: key.clone() }).await {
                    Ok(r) => {
                        out.push(r.into_inner().decode::<Network>()?);
                    }
                    Err(e) if e.code() == tonic::Code::NotFound => missing.push(key),
                    Err(e) => return Err(status(e)),
                }
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
            if !missing.is_empty() {
                return Err(anyhow::anyhow!(
                    "no such network: {} (see \"shoal network ls\")",
                    missing.join(", ")
                ));
            }
            Ok(())
        }
        NetworkCommand::Rm { networks } => {
            let mut c = client(host).await?;
            let mut failed = false;
            for key in networks {
                match c
                    .remove_network(pc::RemoveRequest { id: key.clone() })
                    .await
                {
                    Ok(_) => println!("{key}"),
                    Err(e) => {
                        eprintln!("error: {}", e.message());
                        failed = true;
                    }
                }
            }
            if failed {
                return Err(crate::ExitCode(1).into());
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> CreateArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            a: CreateArgs,
        }
        let mut argv = vec!["shoal"];
        argv.extend_from_slice(extra);
        <Cli as clap::Parser>::try_parse_from(argv).unwrap().a
    }

    #[test]
    fn flags_become_a_spec() {
        let s = args(&[
            "-d",
            "macvlan",
            "--subnet",
            "192.168.5.0/24",
            "--gateway",
            "192.168.5.254",
            "-o",
            "parent=eth0",
            "--attachable",
            "lan",
        ])
        .spec()
        .unwrap();
        assert_eq!(s.driver, NetworkDriver::Macvlan);
        assert_eq!(s.options["parent"], "eth0");
        assert!(s.attachable && !s.internal);
        assert_eq!(s.name, "lan");
        let e = args(&["-d", "vxlan", "x"]).spec().unwrap_err().0;
        assert!(e.contains("overlay, bridge or macvlan"), "{e}");
        let e = args(&["-o", "parent", "x"]).spec().unwrap_err().0;
        assert!(e.contains("KEY=VALUE"), "{e}");
        assert_eq!(args(&["x"]).spec().unwrap().driver, NetworkDriver::Overlay);
    }
}
