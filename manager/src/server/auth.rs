//! Who may call, and where a call goes: callers over the cluster port are known by their
//! certificates (role checked, revoked ones refused); writes on a manager that does not
//! lead are forwarded to the leader.

use std::time::Duration;

use tonic::{Request, Status};

use super::{Manager, ManagerService, client_tls, peers};
use crate::ca::Role;
use crate::port::NodeTls;

/// Who may use the control API over the cluster port: managers (forwarding) and the
/// holders of client certificates (`shoal client-cert`).
pub(super) const CONTROL_CALLERS: &[Role] = &[Role::Manager, Role::Client];

/// A node speaks for itself only.
pub(super) fn same_node(caller: &Option<crate::ca::Identity>, node_id: &str) -> Result<(), Status> {
    match caller {
        Some(id) if id.node_id != node_id => Err(Status::permission_denied(format!(
            "node {} cannot speak for node {node_id}",
            id.node_id
        ))),
        _ => Ok(()),
    }
}

impl ManagerService {
    /// A client of the leader's control API when this manager does not lead (writes go
    /// there); None when it leads. During an election it waits (up to 5 s) for the new
    /// leader rather than failing at once.
    pub(super) async fn forward(
        &self,
        m: &Manager,
    ) -> Result<
        Option<shoal_api::control::control_client::ControlClient<tonic::transport::Channel>>,
        Status,
    > {
        let tls = NodeTls::load(&self.tls_dir()).map_err(|e| Status::internal(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut last = None;
        loop {
            if m.store.is_leader() {
                return Ok(None);
            }
            let leader = m.store.leader();
            if let (Some((_, addr)), Some(tls)) = (&leader, &tls) {
                let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
                    .map_err(|e| Status::internal(e.to_string()))?
                    .tls_config(client_tls(tls))
                    .map_err(|e| Status::internal(e.to_string()))?
                    .connect_timeout(Duration::from_millis(500));
                match endpoint.connect().await {
                    Ok(channel) => {
                        return Ok(Some(
                            shoal_api::control::control_client::ControlClient::new(channel)
                                .max_decoding_message_size(shoal_api::MAX_MESSAGE)
                                .max_encoding_message_size(shoal_api::MAX_MESSAGE),
                        ));
                    }
                    Err(e) => last = Some(format!("the leader at {addr} is unreachable ({e})")),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let why = last.unwrap_or_else(|| peers::not_leader(leader).message().to_string());
                return Err(Status::unavailable(format!(
                    "{why}: no manager took over within 5 s; without a quorum of managers the \
                     cluster takes no writes (reads still answer)"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Who calls: nobody to check on the local socket; over the cluster port, the node its
    /// certificate names, which must have one of the `roles`, and whose certificate was
    /// not revoked (the node removed, or its role changed since it was issued).
    pub(super) fn caller<T>(
        &self,
        r: &Request<T>,
        roles: &[Role],
        what: &str,
    ) -> Result<Option<crate::ca::Identity>, Status> {
        self.caller_checked(r, roles, what, true)
    }

    /// [`ManagerService::caller`]; not `strict`: a certificate replaced by a role change
    /// still counts (heartbeats, renewal and Raft, which membership governs).
    pub(super) fn caller_checked<T>(
        &self,
        r: &Request<T>,
        roles: &[Role],
        what: &str,
        strict: bool,
    ) -> Result<Option<crate::ca::Identity>, Status> {
        if !self.remote {
            return Ok(None);
        }
        let certs = r.peer_certs().ok_or_else(|| {
            Status::unauthenticated(format!(
                "{what} needs a node certificate of this cluster: join the cluster first (shoal join)"
            ))
        })?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no certificate presented"))?;
        let id =
            crate::ca::identity_der(leaf).map_err(|e| Status::unauthenticated(e.to_string()))?;
        if !roles.contains(&id.role) {
            let allowed = roles
                .iter()
                .map(|r| format!("{}s", r.as_str()))
                .collect::<Vec<_>>()
                .join(" and ");
            let who = match id.role {
                Role::Client => format!("client {} holds a client certificate", id.node_id),
                role => format!("node {} is a {}", id.node_id, role.as_str()),
            };
            return Err(Status::permission_denied(format!(
                "{what} is for {allowed}; {who}"
            )));
        }
        // The manager is only written while it starts or stops (init, join, leave): a
        // caller then finds no record to be refused by anyway.
        if let Ok(guard) = self.manager.try_read()
            && let Some(m) = guard.as_ref()
        {
            m.check_revoked(&id, strict)?;
        }
        Ok(Some(id))
    }
}
