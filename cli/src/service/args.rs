//! What `service create` and `service update` take, and the specs they make: every
//! flag checked before anything is sent.

use shoal_api::types::{RestartCondition, ServiceMode, ServiceSpec};

use crate::args::{self, UsageError};
use crate::service_flags::{SpecFlags, parse_publish};

/// `service create`.
#[derive(clap::Args)]
pub struct CreateArgs {
    /// The service's name (default: the image's name).
    #[arg(long)]
    pub(super) name: Option<String>,
    /// Tasks wanted (replicated modes).
    #[arg(long, default_value_t = 1)]
    pub(super) replicas: u64,
    /// replicated, global, replicated-job or global-job.
    #[arg(long, default_value = "replicated")]
    pub(super) mode: String,
    /// Environment variable K=V.
    #[arg(short, long = "env")]
    pub(super) env: Vec<String>,
    /// Placement constraint, such as node.labels.zone==east.
    #[arg(long)]
    pub(super) constraint: Vec<String>,
    /// Placement preference, spread=node.labels.KEY.
    #[arg(long = "placement-pref")]
    pub(super) placement_pref: Vec<String>,
    /// Publish a port: published=P,target=T[,protocol=tcp|udp][,mode=host|ingress].
    #[arg(short, long)]
    pub(super) publish: Vec<String>,
    /// A label K=V on the service.
    #[arg(short, long)]
    pub(super) label: Vec<String>,
    /// A network the tasks join, by name or id (repeat for more).
    #[arg(long)]
    pub(super) network: Vec<String>,
    /// A mount for each task: type=volume|bind|tmpfs,source=..,target=..[,readonly]...;
    /// a volume's name may hold {{.Task.Slot}}, {{.Service.Name}}, {{.Node.Hostname}}.
    #[arg(long)]
    pub(super) mount: Vec<String>,
    #[command(flatten)]
    pub(super) flags: SpecFlags,
    /// Return at once instead of waiting for the tasks.
    #[arg(short, long)]
    pub(super) detach: bool,
    /// The image.
    pub(super) image: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub(super) command: Vec<String>,
}

/// `service update`.
#[derive(clap::Args)]
pub struct UpdateArgs {
    /// A new image.
    #[arg(long)]
    pub(super) image: Option<String>,
    /// A new number of replicas.
    #[arg(long)]
    pub(super) replicas: Option<u64>,
    /// Add or replace an environment variable K=V.
    #[arg(long = "env-add")]
    pub(super) env_add: Vec<String>,
    /// Remove an environment variable.
    #[arg(long = "env-rm")]
    pub(super) env_rm: Vec<String>,
    /// A new command and arguments, as one shell-quoted string ("" for the image's).
    #[arg(long)]
    pub(super) args: Option<String>,
    /// Add a placement constraint.
    #[arg(long = "constraint-add")]
    pub(super) constraint_add: Vec<String>,
    /// Remove a placement constraint.
    #[arg(long = "constraint-rm")]
    pub(super) constraint_rm: Vec<String>,
    /// Publish another port.
    #[arg(long = "publish-add")]
    pub(super) publish_add: Vec<String>,
    /// Stop publishing the port with this target (or published) number.
    #[arg(long = "publish-rm")]
    pub(super) publish_rm: Vec<u16>,
    /// Add or replace a label K=V.
    #[arg(long = "label-add")]
    pub(super) label_add: Vec<String>,
    /// Remove a label.
    #[arg(long = "label-rm")]
    pub(super) label_rm: Vec<String>,
    /// Join another network.
    #[arg(long = "network-add")]
    pub(super) network_add: Vec<String>,
    /// Leave a network (by name or id).
    #[arg(long = "network-rm")]
    pub(super) network_rm: Vec<String>,
    /// Add a mount (or replace the one with its target).
    #[arg(long = "mount-add")]
    pub(super) mount_add: Vec<String>,
    /// Remove the mount with this target.
    #[arg(long = "mount-rm")]
    pub(super) mount_rm: Vec<String>,
    /// The ids of the networks --network-rm names.
    #[arg(skip)]
    pub(super) network_rm_ids: Vec<String>,
    #[command(flatten)]
    pub(super) flags: SpecFlags,
    /// Redeploy even without another change.
    #[arg(long)]
    pub(super) force: bool,
    /// Go back to the previous spec (as "service rollback").
    #[arg(long)]
    pub(super) rollback: bool,
    /// Return at once instead of waiting for the tasks.
    #[arg(short, long)]
    pub(super) detach: bool,
    /// The service.
    pub(super) service: String,
}

fn mounts(flags: &[String]) -> Result<Vec<shoal_api::types::Mount>, UsageError> {
    let mounts = flags
        .iter()
        .map(|m| shoal_api::mount::parse_mount(m).map_err(|e| UsageError(e.0)))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(t) = shoal_api::convert::duplicate_target(&mounts) {
        return Err(UsageError(format!(
            "two mounts have the target {t}: give each target once"
        )));
    }
    Ok(mounts)
}

fn label_pairs(labels: &[String]) -> Result<Vec<(String, String)>, UsageError> {
    labels.iter().map(|l| args::parse_label(l)).collect()
}

pub(super) fn spec_of(a: &CreateArgs) -> Result<ServiceSpec, UsageError> {
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
        mounts: mounts(&a.mount)?,
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
pub(super) fn apply_update(a: &UpdateArgs, s: &mut ServiceSpec) -> Result<(), UsageError> {
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
    let rm: Vec<&str> = a.mount_rm.iter().map(|t| t.trim_end_matches('/')).collect();
    s.mounts
        .retain(|m| !rm.contains(&m.target.trim_end_matches('/')));
    for m in mounts(&a.mount_add)? {
        s.mounts.retain(|x| x.target != m.target);
        s.mounts.push(m);
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
