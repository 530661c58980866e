//! Services through the control API: create (checked, networks named by id, ingress ports
//! unclaimed), update (a new spec, a scale, or a rollback, against the version read),
//! remove, get, list, and their tasks.

use shoal_api::control as pc;
use shoal_api::types::{
    Service, ServiceMode, ServiceSpec, Task, UpdateFailureAction, UpdateState, UpdateStatus,
};
use tonic::{Request, Response, Status};

use super::auth::CONTROL_CALLERS;
use super::{Manager, ManagerService, internal, listing, networks, object};
use crate::store::{CommandResult, Versioned, Write};

/// The service whose id or name is `key` (or whose id starts with it, 4 digits at least).
pub(super) fn find_service(m: &Manager, key: &str) -> Result<Versioned<Service>, Status> {
    if let Some(v) = m.store.get::<Service>(key).map_err(internal)? {
        return Ok(v);
    }
    m.store
        .list::<Service>()
        .map_err(internal)?
        .into_iter()
        .find(|v| v.value.spec.name == key || (key.len() >= 4 && v.value.id.starts_with(key)))
        .ok_or_else(|| {
            Status::not_found(format!(
                "service {key} not found (see \"shoal service ls\")"
            ))
        })
}

fn check_spec(spec: &ServiceSpec) -> Result<(), Status> {
    let bad = |m: String| Err(Status::invalid_argument(m));
    if spec.name.is_empty()
        || !spec
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return bad(format!(
            "invalid service name \"{}\": use letters, digits, '-' and '_'",
            spec.name
        ));
    }
    if spec.image.is_empty() {
        return bad("no image given: name one, for example busybox".into());
    }
    for c in &spec.constraints {
        crate::scheduler::Constraint::parse(c)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
    }
    let mut published = std::collections::HashSet::new();
    for p in &spec.ports {
        if p.target == 0 {
            return bad("a published port needs a target port (the container's), 1-65535".into());
        }
        if p.published != 0 && !published.insert((p.protocol, p.published)) {
            return bad(format!(
                "port {} is published twice: give each published port once",
                p.published
            ));
        }
    }
    for m in &spec.mounts {
        shoal_api::mount::check(m).map_err(|e| Status::invalid_argument(e.0))?;
    }
    if let Some(t) = shoal_api::convert::duplicate_target(&spec.mounts) {
        return bad(format!(
            "two mounts have the target {t}: give each target once"
        ));
    }
    if matches!(
        spec.mode,
        ServiceMode::ReplicatedJob | ServiceMode::GlobalJob
    ) && spec.update.failure_action == UpdateFailureAction::Rollback
    {
        return bad("jobs do not roll back: use --update-failure-action pause or continue".into());
    }
    if spec.rollback.failure_action == UpdateFailureAction::Rollback {
        return bad(
            "a rollback cannot roll back: use --rollback-failure-action pause or continue".into(),
        );
    }
    Ok(())
}

fn bad_request(e: shoal_api::wire::WireError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// The reply carrying `service` at `version`.
fn reply(service: &Service, version: u64) -> Result<Response<pc::ObjectReply>, Status> {
    Ok(Response::new(pc::ObjectReply {
        object: Some(object(&service.id, version, service)?),
    }))
}

/// The version a write gave its object.
fn written(r: CommandResult, what: &str) -> Result<u64, Status> {
    match r {
        CommandResult::Applied(v) => Ok(v.first().copied().unwrap_or(0)),
        _ => Err(Status::aborted(format!(
            "the {what} changed while it was being written: retry"
        ))),
    }
}

pub(super) async fn create(
    s: &ManagerService,
    r: Request<pc::CreateServiceRequest>,
) -> Result<Response<pc::ObjectReply>, Status> {
    s.caller(&r, CONTROL_CALLERS, "create service")?;
    let m = s.active().await?;
    if let Some(mut leader) = s.forward(&m).await? {
        return leader.create_service(r.into_inner()).await;
    }
    let mut spec = r.into_inner().spec().map_err(bad_request)?;
    check_spec(&spec)?;
    networks::resolve_service_networks(&m, &mut spec)?;
    networks::check_ingress_ports(&m, &spec, "")?;
    let services = m.store.list::<Service>().map_err(internal)?;
    if services.iter().any(|v| v.value.spec.name == spec.name) {
        return Err(Status::already_exists(format!(
            "a service named {} exists already: update it, or remove it first",
            spec.name
        )));
    }
    let id = shoal_api::id::random_hex(12).map_err(|e| Status::internal(e.to_string()))?;
    let service = Service {
        id,
        spec,
        previous_spec: None,
        update_status: None,
        vips: Vec::new(),
        ports: Vec::new(),
    };
    let r = m
        .store
        .apply(Write::create(service.clone()))
        .await
        .map_err(internal)?;
    reply(&service, written(r, "service")?)
}

pub(super) async fn update(
    s: &ManagerService,
    r: Request<pc::UpdateServiceRequest>,
) -> Result<Response<pc::ObjectReply>, Status> {
    s.caller(&r, CONTROL_CALLERS, "update service")?;
    let m = s.active().await?;
    if let Some(mut leader) = s.forward(&m).await? {
        return leader.update_service(r.into_inner()).await;
    }
    let r = r.into_inner();
    let Versioned {
        version,
        value: mut service,
    } = find_service(&m, &r.service)?;
    if r.version != 0 && r.version != version {
        return Err(Status::aborted(format!(
            "service {} changed since it was read (version {} now, {} read): read it again and retry",
            service.spec.name, version, r.version
        )));
    }
    let mut new_spec = if r.rollback {
        service.previous_spec.clone().ok_or_else(|| {
            Status::failed_precondition(format!(
                "service {} has no previous spec to roll back to",
                service.spec.name
            ))
        })?
    } else {
        r.spec().map_err(bad_request)?
    };
    check_spec(&new_spec)?;
    networks::resolve_service_networks(&m, &mut new_spec)?;
    networks::check_ingress_ports(&m, &new_spec, &service.id)?;
    if new_spec.mode != service.spec.mode {
        return Err(Status::invalid_argument(format!(
            "service {} cannot change its mode: remove it and create it again",
            service.spec.name
        )));
    }
    // A change of the task template is an update (or a rollback) that rolls out; a
    // scale, or a change of the update settings, is not.
    if r.rollback || !new_spec.same_task_template(&service.spec) {
        service.update_status = Some(UpdateStatus {
            state: if r.rollback {
                UpdateState::RollbackStarted
            } else {
                UpdateState::Updating
            },
            started_ms: shoal_api::clock::now_ms(),
            completed_ms: 0,
            message: if r.rollback {
                "rollback asked for".into()
            } else {
                String::new()
            },
        });
    }
    service.previous_spec = Some(std::mem::replace(&mut service.spec, new_spec));
    let res = m
        .store
        .apply(Write::update(service.clone(), version))
        .await
        .map_err(internal)?;
    reply(&service, written(res, "service")?)
}

pub(super) async fn remove(
    s: &ManagerService,
    r: Request<pc::RemoveRequest>,
) -> Result<Response<pc::RemoveReply>, Status> {
    s.caller(&r, CONTROL_CALLERS, "remove service")?;
    let m = s.active().await?;
    if let Some(mut leader) = s.forward(&m).await? {
        return leader.remove_service(r.into_inner()).await;
    }
    let v = find_service(&m, &r.into_inner().id)?;
    m.store
        .apply(Write::delete::<Service>(&v.value.id, Some(v.version)))
        .await
        .map_err(internal)?;
    Ok(Response::new(pc::RemoveReply {}))
}

pub(super) async fn get(
    s: &ManagerService,
    r: Request<pc::GetRequest>,
) -> Result<Response<pc::ObjectReply>, Status> {
    s.caller(&r, CONTROL_CALLERS, "get service")?;
    let m = s.active().await?;
    m.fresh().await?;
    let v = find_service(&m, &r.into_inner().id)?;
    reply(&v.value, v.version)
}

pub(super) async fn list(
    s: &ManagerService,
    r: Request<pc::ListRequest>,
) -> Result<Response<pc::ListReply>, Status> {
    s.caller(&r, CONTROL_CALLERS, "list services")?;
    let m = s.active().await?;
    m.fresh().await?;
    let services = m.store.list::<Service>().map_err(internal)?;
    Ok(Response::new(listing(&services)?))
}

pub(super) async fn list_tasks(
    s: &ManagerService,
    r: Request<pc::ListTasksRequest>,
) -> Result<Response<pc::ListReply>, Status> {
    s.caller(&r, CONTROL_CALLERS, "list tasks")?;
    let m = s.active().await?;
    m.fresh().await?;
    let filter = r.into_inner().service;
    let service_id = if filter.is_empty() {
        None
    } else {
        Some(find_service(&m, &filter)?.value.id)
    };
    let mut tasks = m.store.list::<Task>().map_err(internal)?;
    if let Some(s) = service_id {
        tasks.retain(|v| v.value.service_id == s);
    }
    Ok(Response::new(listing(&tasks)?))
}
