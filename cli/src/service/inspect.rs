//! `service inspect`: services as stored (JSON), or for people.

use shoal_api::control as pc;
use shoal_api::types::{Service, ServiceMode};

use super::Control;
use crate::image_cmd::status;

/// `service inspect`.
pub(super) async fn inspect(
    c: &mut Control,
    services: Vec<String>,
    format: String,
) -> anyhow::Result<()> {
    let mut out = Vec::new();
    for s in services {
        let r = c
            .get_service(pc::GetRequest { id: s })
            .await
            .map_err(status)?
            .into_inner();
        out.push(r.decode::<Service>()?);
    }
    if format == "json" {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for s in &out {
            print!("{}", pretty(s));
        }
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
    for m in &spec.mounts {
        let _ = writeln!(
            o,
            "Mount:\t\t{} {} -> {}{}",
            m.kind.as_str(),
            if m.source.is_empty() {
                "(anonymous)"
            } else {
                &m.source
            },
            m.target,
            if m.read_only { " (read-only)" } else { "" }
        );
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
