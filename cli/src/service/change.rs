//! The commands that change services: create, rm, scale, update, rollback; each waits
//! for convergence unless `--detach`.

use shoal_api::control as pc;
use shoal_api::types::{Service, ServiceMode, ServiceSpec};

use super::Control;
use super::args::{UpdateArgs, apply_update};
use super::converge::converge;
use crate::args::UsageError;
use crate::image_cmd::status;

/// `service create`, with the spec its flags made.
pub(super) async fn create(c: &mut Control, spec: ServiceSpec, detach: bool) -> anyhow::Result<()> {
    let r = c
        .create_service(pc::CreateServiceRequest::new(&spec)?)
        .await
        .map_err(status)?
        .into_inner();
    let s: Service = r.decode()?;
    println!("{}", s.id);
    if !detach {
        converge(c, &s, false).await?;
    }
    Ok(())
}

/// `service rm`.
pub(super) async fn rm(c: &mut Control, services: Vec<String>) -> anyhow::Result<()> {
    for s in services {
        c.remove_service(pc::RemoveRequest { id: s.clone() })
            .await
            .map_err(status)?;
        println!("{s}");
    }
    Ok(())
}

/// `service scale NAME=N...`.
pub(super) async fn scale(
    c: &mut Control,
    targets: Vec<String>,
    detach: bool,
) -> anyhow::Result<()> {
    let mut parsed = Vec::new();
    for t in &targets {
        let (name, n) = t
            .split_once('=')
            .ok_or_else(|| UsageError(format!("invalid \"{t}\": use NAME=REPLICAS")))?;
        let n: u64 = n
            .parse()
            .map_err(|_| UsageError(format!("invalid \"{t}\": REPLICAS is a number")))?;
        parsed.push((name.to_string(), n));
    }
    for (name, n) in parsed {
        let updated = update(c, &name, |s| {
            if !matches!(s.mode, ServiceMode::Replicated | ServiceMode::ReplicatedJob) {
                return Err(UsageError(format!(
                    "{name} is a {} service: only replicated services scale",
                    format!("{:?}", s.mode).to_lowercase()
                )));
            }
            s.replicas = n;
            Ok(())
        })
        .await?;
        println!("{name} scaled to {n}");
        if !detach {
            converge(c, &updated, false).await?;
        }
    }
    Ok(())
}

/// `service update`.
pub(super) async fn update_cmd(c: &mut Control, a: UpdateArgs) -> anyhow::Result<()> {
    if a.rollback {
        return rollback(c, &a.service, a.detach).await;
    }
    let mut a = a;
    for key in &a.network_rm {
        if let Ok(r) = c.get_network(pc::GetRequest { id: key.clone() }).await
            && let Some(o) = r.into_inner().object
        {
            a.network_rm_ids.push(o.id);
        }
    }
    let updated = update(c, &a.service, |s| apply_update(&a, s)).await?;
    println!("{}", a.service);
    if !a.detach {
        converge(c, &updated, false).await?;
    }
    Ok(())
}

pub(super) async fn rollback(c: &mut Control, service: &str, detach: bool) -> anyhow::Result<()> {
    let r = c
        .update_service(pc::UpdateServiceRequest::rollback(service))
        .await
        .map_err(status)?
        .into_inner();
    println!("{service}");
    let s: Service = r.decode()?;
    if !detach {
        converge(c, &s, true).await?;
    }
    Ok(())
}

async fn update(
    c: &mut Control,
    name: &str,
    change: impl FnOnce(&mut ServiceSpec) -> Result<(), UsageError>,
) -> anyhow::Result<Service> {
    let got = c
        .get_service(pc::GetRequest {
            id: name.to_string(),
        })
        .await
        .map_err(status)?
        .into_inner();
    let version = got.object()?.version;
    let s: Service = got.decode()?;
    let mut spec = s.spec.clone();
    change(&mut spec)?;
    let r = c
        .update_service(pc::UpdateServiceRequest::new(&s.id, &spec, version)?)
        .await
        .map_err(status)?
        .into_inner();
    Ok(r.decode()?)
}
