//! The service flags that `service create` and `service update` share, and their parsing
//! into a `ServiceSpec`: create applies them to a default spec, update to the stored one,
//! so a flag means the same in both and a flag not given changes nothing.

use shoal_api::types::{
    EndpointMode, HealthCheck, PortConfig, PortProtocol, PublishMode, RestartCondition,
    ServiceSpec, UpdateConfig, UpdateFailureAction, UpdateOrder,
};

use crate::args::{self, UsageError};

/// Flags that set a part of a service's spec.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct SpecFlags {
    /// Limit CPUs (such as 0.5).
    #[arg(long)]
    pub limit_cpu: Option<String>,
    /// Limit memory (such as 64m).
    #[arg(long)]
    pub limit_memory: Option<String>,
    /// Limit processes (0: none).
    #[arg(long)]
    pub limit_pids: Option<i64>,
    /// Reserve CPUs on the node.
    #[arg(long)]
    pub reserve_cpu: Option<String>,
    /// Reserve memory on the node.
    #[arg(long)]
    pub reserve_memory: Option<String>,
    /// When a stopped task is replaced: none, on-failure or any (jobs: on-failure).
    #[arg(long)]
    pub restart_condition: Option<String>,
    /// Delay before a replacement starts, such as 5s.
    #[arg(long)]
    pub restart_delay: Option<String>,
    /// Restarts allowed within the window (0: unlimited).
    #[arg(long)]
    pub restart_max_attempts: Option<u32>,
    /// The window restarts are counted in, such as 1m (0s: forever).
    #[arg(long)]
    pub restart_window: Option<String>,
    /// Tasks an update replaces at once (0: all).
    #[arg(long)]
    pub update_parallelism: Option<u64>,
    /// Time between update batches, such as 10s.
    #[arg(long)]
    pub update_delay: Option<String>,
    /// pause, continue or rollback when an update's tasks fail.
    #[arg(long)]
    pub update_failure_action: Option<String>,
    /// A new task failing this soon after it was made fails the update.
    #[arg(long)]
    pub update_monitor: Option<String>,
    /// stop-first or start-first.
    #[arg(long)]
    pub update_order: Option<String>,
    /// Tasks a rollback replaces at once (0: all).
    #[arg(long)]
    pub rollback_parallelism: Option<u64>,
    /// Time between rollback batches.
    #[arg(long)]
    pub rollback_delay: Option<String>,
    /// pause or continue when a rollback's tasks fail.
    #[arg(long)]
    pub rollback_failure_action: Option<String>,
    /// A task failing this soon after a rollback made it fails the rollback.
    #[arg(long)]
    pub rollback_monitor: Option<String>,
    /// stop-first or start-first.
    #[arg(long)]
    pub rollback_order: Option<String>,
    /// A shell command that tells whether a task is healthy (exit 0).
    #[arg(long)]
    pub health_cmd: Option<String>,
    /// Time between health checks (default 30s).
    #[arg(long)]
    pub health_interval: Option<String>,
    /// A health check running longer fails (default 30s).
    #[arg(long)]
    pub health_timeout: Option<String>,
    /// Consecutive failures that make a task unhealthy (default 3).
    #[arg(long)]
    pub health_retries: Option<u32>,
    /// Failures in this first period do not count (default 0s).
    #[arg(long)]
    pub health_start_period: Option<String>,
    /// Remove the health check.
    #[arg(long)]
    pub no_healthcheck: bool,
    /// Time a task gets to stop before it is killed, such as 10s.
    #[arg(long)]
    pub stop_grace_period: Option<String>,
    /// The signal that stops a task, such as SIGINT.
    #[arg(long)]
    pub stop_signal: Option<String>,
    /// Tasks of a replicated job that run at once (0: all).
    #[arg(long)]
    pub max_concurrent: Option<u64>,
    /// At most this many tasks on one node (0: no limit).
    #[arg(long)]
    pub replicas_max_per_node: Option<u32>,
    /// How tasks are reached on their networks: vip (one address, balanced) or dnsrr (the
    /// name gives every task's address).
    #[arg(long)]
    pub endpoint_mode: Option<String>,
}

/// Parses a duration such as `500ms`, `5s`, `1m` or `1h` (a bare `0` too) into
/// milliseconds.
pub fn millis(flag: &str, s: &str) -> Result<u64, UsageError> {
    let bad = || {
        UsageError(format!(
            "invalid {flag} \"{s}\": use a duration such as 500ms, 5s or 1m"
        ))
    };
    if s.trim() == "0" {
        return Ok(0);
    }
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
    if !ms.is_finite() || ms < 0.0 {
        return Err(bad());
    }
    Ok(ms as u64)
}

fn failure_action(
    flag: &str,
    s: &str,
    rollback_allowed: bool,
) -> Result<UpdateFailureAction, UsageError> {
    match s {
        "pause" => Ok(UpdateFailureAction::Pause),
        "continue" => Ok(UpdateFailureAction::Continue),
        "rollback" if rollback_allowed => Ok(UpdateFailureAction::Rollback),
        other => Err(UsageError(if rollback_allowed {
            format!("invalid {flag} \"{other}\": use pause, continue or rollback")
        } else {
            format!("invalid {flag} \"{other}\": use pause or continue")
        })),
    }
}

fn order(flag: &str, s: &str) -> Result<UpdateOrder, UsageError> {
    match s {
        "stop-first" => Ok(UpdateOrder::StopFirst),
        "start-first" => Ok(UpdateOrder::StartFirst),
        other => Err(UsageError(format!(
            "invalid {flag} \"{other}\": use stop-first or start-first"
        ))),
    }
}

/// Parses a restart condition.
pub fn restart_condition(s: &str) -> Result<RestartCondition, UsageError> {
    match s {
        "none" => Ok(RestartCondition::None),
        "on-failure" => Ok(RestartCondition::OnFailure),
        "any" => Ok(RestartCondition::Any),
        other => Err(UsageError(format!(
            "invalid --restart-condition \"{other}\": use none, on-failure or any"
        ))),
    }
}

/// Parses `--publish`: `published=P,target=T[,protocol=tcp|udp][,mode=ingress|host]`, or
/// the short `[P:]T[/tcp|udp]` (ingress mode).
pub fn parse_publish(s: &str) -> Result<PortConfig, UsageError> {
    let bad = |why: String| {
        UsageError(format!(
            "invalid --publish \"{s}\": {why}; use published=8080,target=80[,protocol=tcp|udp][,mode=host|ingress] or 8080:80"
        ))
    };
    let port = |v: &str| -> Result<u16, UsageError> {
        v.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad(format!("\"{v}\" is not a port between 1 and 65535")))
    };
    let mut p = PortConfig {
        target: 0,
        published: 0,
        protocol: PortProtocol::Tcp,
        mode: PublishMode::Ingress,
    };
    if s.contains('=') {
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("\"{part}\" is not KEY=VALUE")))?;
            match k.trim() {
                "published" => p.published = port(v)?,
                "target" => p.target = port(v)?,
                "protocol" => {
                    p.protocol = match v {
                        "tcp" => PortProtocol::Tcp,
                        "udp" => PortProtocol::Udp,
                        _ => return Err(bad(format!("protocol \"{v}\" is not tcp or udp"))),
                    }
                }
                "mode" => {
                    p.mode = match v {
                        "ingress" => PublishMode::Ingress,
                        "host" => PublishMode::Host,
                        _ => return Err(bad(format!("mode \"{v}\" is not ingress or host"))),
                    }
                }
                other => return Err(bad(format!("unknown key \"{other}\""))),
            }
        }
        if p.target == 0 {
            return Err(bad("target= is missing".into()));
        }
        return Ok(p);
    }
    let m = args::parse_port(s).map_err(|e| UsageError(e.0.replace("-p", "--publish")))?;
    if !m.host_ip.is_empty() {
        return Err(bad(
            "a service publishes on every address of its nodes".into()
        ));
    }
    p.published = m.host_port as u16;
    p.target = m.container_port as u16;
    p.protocol = if m.protocol == "udp" {
        PortProtocol::Udp
    } else {
        PortProtocol::Tcp
    };
    Ok(p)
}

fn update_config(
    c: &mut UpdateConfig,
    which: &str,
    parallelism: Option<u64>,
    delay: &Option<String>,
    action: &Option<String>,
    monitor: &Option<String>,
    ord: &Option<String>,
) -> Result<(), UsageError> {
    if let Some(p) = parallelism {
        c.parallelism = p;
    }
    if let Some(d) = delay {
        c.delay_ms = millis(&format!("--{which}-delay"), d)?;
    }
    if let Some(a) = action {
        c.failure_action =
            failure_action(&format!("--{which}-failure-action"), a, which == "update")?;
    }
    if let Some(m) = monitor {
        c.monitor_ms = millis(&format!("--{which}-monitor"), m)?;
    }
    if let Some(o) = ord {
        c.order = order(&format!("--{which}-order"), o)?;
    }
    Ok(())
}

impl SpecFlags {
    /// Sets in `spec` what the flags say; leaves the rest.
    pub fn apply(&self, spec: &mut ServiceSpec) -> Result<(), UsageError> {
        if let Some(m) = &self.endpoint_mode {
            spec.endpoint_mode = match m.as_str() {
                "vip" => EndpointMode::Vip,
                "dnsrr" => EndpointMode::Dnsrr,
                other => {
                    return Err(UsageError(format!(
                        "invalid --endpoint-mode \"{other}\": use vip or dnsrr"
                    )));
                }
            };
        }
        let cpus = |flag: &str, v: &str| -> Result<i64, UsageError> {
            args::parse_cpus(v).map_err(|e| UsageError(e.0.replace("--cpus", flag)))
        };
        if let Some(v) = &self.limit_cpu {
            spec.limits.nano_cpus = cpus("--limit-cpu", v)?;
        }
        if let Some(v) = &self.limit_memory {
            spec.limits.memory_bytes = args::parse_bytes("--limit-memory", v)?;
        }
        if let Some(v) = self.limit_pids {
            if v < 0 {
                return Err(UsageError(format!(
                    "invalid --limit-pids {v}: use a number of processes, or 0 for no limit"
                )));
            }
            spec.pids_limit = v;
        }
        if let Some(v) = &self.reserve_cpu {
            spec.reservations.nano_cpus = cpus("--reserve-cpu", v)?;
        }
        if let Some(v) = &self.reserve_memory {
            spec.reservations.memory_bytes = args::parse_bytes("--reserve-memory", v)?;
        }
        if let Some(v) = &self.restart_condition {
            spec.restart.condition = restart_condition(v)?;
        }
        if let Some(v) = &self.restart_delay {
            spec.restart.delay_ms = millis("--restart-delay", v)?;
        }
        if let Some(v) = self.restart_max_attempts {
            spec.restart.max_attempts = v;
        }
        if let Some(v) = &self.restart_window {
            spec.restart.window_ms = millis("--restart-window", v)?;
        }
        update_config(
            &mut spec.update,
            "update",
            self.update_parallelism,
            &self.update_delay,
            &self.update_failure_action,
            &self.update_monitor,
            &self.update_order,
        )?;
        update_config(
            &mut spec.rollback,
            "rollback",
            self.rollback_parallelism,
            &self.rollback_delay,
            &self.rollback_failure_action,
            &self.rollback_monitor,
            &self.rollback_order,
        )?;
        if self.no_healthcheck {
            if self.health_cmd.is_some() {
                return Err(UsageError(
                    "--no-healthcheck and --health-cmd contradict each other: give one".into(),
                ));
            }
            spec.healthcheck = None;
        }
        let tuning = self.health_interval.is_some()
            || self.health_timeout.is_some()
            || self.health_retries.is_some()
            || self.health_start_period.is_some();
        if let Some(cmd) = &self.health_cmd {
            let h = spec.healthcheck.get_or_insert(HealthCheck {
                command: String::new(),
                interval_ms: 30_000,
                timeout_ms: 30_000,
                retries: 3,
                start_period_ms: 0,
            });
            h.command = cmd.clone();
        }
        match spec.healthcheck.as_mut() {
            Some(h) => {
                if let Some(v) = &self.health_interval {
                    h.interval_ms = millis("--health-interval", v)?.max(100);
                }
                if let Some(v) = &self.health_timeout {
                    h.timeout_ms = millis("--health-timeout", v)?.max(100);
                }
                if let Some(v) = self.health_retries {
                    h.retries = v.max(1);
                }
                if let Some(v) = &self.health_start_period {
                    h.start_period_ms = millis("--health-start-period", v)?;
                }
            }
            None if tuning => {
                return Err(UsageError(
                    "the --health-* settings need a check: give --health-cmd too".into(),
                ));
            }
            None => {}
        }
        if let Some(v) = &self.stop_grace_period {
            spec.stop_grace_period_ms = Some(millis("--stop-grace-period", v)?);
        }
        if let Some(v) = &self.stop_signal {
            spec.stop_signal = args::parse_signal("--stop-signal", v)?;
        }
        if let Some(v) = self.max_concurrent {
            spec.max_concurrent = v;
        }
        if let Some(v) = self.replicas_max_per_node {
            spec.max_replicas_per_node = v;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(millis("--x", "1.5s").unwrap(), 1500);
        assert_eq!(millis("--x", "0").unwrap(), 0);
        assert_eq!(millis("--x", "2m").unwrap(), 120_000);
        let e = millis("--update-delay", "soon").unwrap_err().0;
        assert!(e.contains("--update-delay") && e.contains("5s"), "{e}");
    }

    #[test]
    fn publish_long_and_short() {
        let p = parse_publish("published=8080,target=80,mode=host,protocol=udp").unwrap();
        assert_eq!(
            (p.published, p.target, p.mode, p.protocol),
            (8080, 80, PublishMode::Host, PortProtocol::Udp)
        );
        let p = parse_publish("9000:90").unwrap();
        assert_eq!(
            (p.published, p.target, p.mode),
            (9000, 90, PublishMode::Ingress)
        );
        let p = parse_publish("target=80,mode=host").unwrap();
        assert_eq!(p.published, 0, "the allocator picks one");
        for bad in [
            "published=80",
            "target=0",
            "target=80,mode=bridge",
            "x=1,target=2",
        ] {
            assert!(parse_publish(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_change_only_what_they_name() {
        let mut spec = ServiceSpec::default();
        let f = SpecFlags {
            update_order: Some("start-first".into()),
            update_delay: Some("2s".into()),
            rollback_parallelism: Some(0),
            stop_signal: Some("int".into()),
            stop_grace_period: Some("3s".into()),
            restart_window: Some("1m".into()),
            ..Default::default()
        };
        f.apply(&mut spec).unwrap();
        assert_eq!(spec.update.order, UpdateOrder::StartFirst);
        assert_eq!(spec.update.delay_ms, 2000);
        assert_eq!(spec.update.parallelism, 1, "unchanged");
        assert_eq!(spec.rollback.parallelism, 0);
        assert_eq!(spec.stop_signal, "SIGINT");
        assert_eq!(spec.stop_grace_period_ms, Some(3000));
        assert_eq!(spec.restart.window_ms, 60_000);
        let bad = SpecFlags {
            rollback_failure_action: Some("rollback".into()),
            ..Default::default()
        };
        let e = bad.apply(&mut spec).unwrap_err().0;
        assert!(e.contains("pause or continue"), "{e}");
        let lonely = SpecFlags {
            health_retries: Some(2),
            ..Default::default()
        };
        assert!(
            lonely
                .apply(&mut spec)
                .unwrap_err()
                .0
                .contains("--health-cmd")
        );
    }
}
