//! What a container's DNS server answers from the managers' views: the services, tasks
//! and standalone containers of the networks the container joins.

use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};

use shoal_api::types::EndpointMode;

use super::{Views, ip_of};
use crate::dns::Resolver;

/// Answers for one container: names of the services on the networks it joins.
pub(super) struct ContainerResolver {
    pub(super) views: Arc<RwLock<Views>>,
    pub(super) networks: Vec<String>,
}

impl Resolver for ContainerResolver {
    fn lookup(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
        let views = self.views.read().unwrap_or_else(|e| e.into_inner());
        let (tasks_only, service) = match name.strip_prefix("tasks.") {
            Some(s) => (true, s),
            None => (false, name),
        };
        let mut found = false;
        let mut out = Vec::new();
        for id in &self.networks {
            let Some(v) = views.by_id.get(id) else {
                continue;
            };
            for s in v.services.iter().filter(|s| s.name == service) {
                found = true;
                if !tasks_only && s.endpoint_mode == EndpointMode::Vip && !s.vip.is_empty() {
                    out.extend(ip_of(&s.vip));
                    continue;
                }
                out.extend(
                    v.endpoints
                        .iter()
                        .filter(|e| e.service_id == s.id && e.running)
                        .filter_map(|e| ip_of(&e.addr)),
                );
            }
        }
        if !found && !tasks_only {
            // A standalone container on the network, by its name.
            for id in &self.networks {
                if let Some(v) = views.by_id.get(id) {
                    out.extend(
                        v.endpoints
                            .iter()
                            .filter(|e| {
                                e.service_id.is_empty()
                                    && e.running
                                    && e.name.eq_ignore_ascii_case(name)
                            })
                            .filter_map(|e| ip_of(&e.addr)),
                    );
                }
            }
            if !out.is_empty() {
                return Some(out);
            }
        }
        if !found {
            // A task by name: SERVICE.SLOT, or SERVICE.SLOT.TASKID (as `service ps`
            // and the container names say).
            let mut parts = name.splitn(3, '.');
            let (Some(service), Some(slot)) = (parts.next(), parts.next()) else {
                return None;
            };
            let slot: u64 = slot.parse().ok()?;
            let task = parts.next();
            for id in &self.networks {
                let Some(v) = views.by_id.get(id) else {
                    continue;
                };
                for s in v.services.iter().filter(|s| s.name == service) {
                    out.extend(
                        v.endpoints
                            .iter()
                            .filter(|e| e.service_id == s.id && e.slot == slot && e.running)
                            .filter(|e| task.is_none_or(|t| e.task_id.starts_with(t)))
                            .filter_map(|e| ip_of(&e.addr)),
                    );
                }
            }
            return (!out.is_empty()).then_some(out);
        }
        Some(out)
    }
}
