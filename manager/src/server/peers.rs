//! What managers and joining nodes call over the cluster port, besides the control API and
//! the dispatcher: Raft's messages, and joining.

use std::collections::BTreeSet;

use shoal_api::raft as pr;
use shoal_api::raft::join_server::Join;
use shoal_api::raft::raft_server::Raft;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use tonic::{Request, Response, Status};

use shoal_api::cluster::{JoinToken, raft_id};

use super::{ManagerService, internal};
use crate::ca::{Role, same_secret};
use crate::cluster::grpcnet::deliver;
use crate::objects::{CLUSTER_ID, ClusterRecord, RemovedNode};
use crate::port::NodeTls;

pub use shoal_api::LEADER_METADATA as LEADER_KEY;

/// The TLS settings a node dials managers with.
pub fn client_tls(tls: &NodeTls) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&tls.ca_pem))
        .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
        .domain_name(crate::ca::MANAGER_NAME)
}

/// "Not the leader", with the leader's address in the metadata when known.
pub fn not_leader(leader: Option<(u64, String)>) -> Status {
    let (id, addr) = match leader {
        Some((id, addr)) => (Some(id), Some(addr)),
        None => (None, None),
    };
    let mut status = Status::unavailable(
        crate::cluster::ClusterError::NotLeader {
            leader: id,
            addr: addr.clone(),
        }
        .to_string(),
    );
    if let Some(v) = addr.and_then(|a| a.parse().ok()) {
        status.metadata_mut().insert(LEADER_KEY, v);
    }
    status
}

#[tonic::async_trait]
impl Raft for ManagerService {
    async fn append_entries(
        &self,
        r: Request<pr::RaftMessage>,
    ) -> Result<Response<pr::RaftMessage>, Status> {
        self.caller(&r, &[Role::Manager], "Raft")?;
        let m = self.active().await?;
        deliver(m.store.raft(), r.into_inner(), |raft, rpc| async move {
            raft.append_entries(rpc).await
        })
        .await
    }

    async fn vote(&self, r: Request<pr::RaftMessage>) -> Result<Response<pr::RaftMessage>, Status> {
        self.caller(&r, &[Role::Manager], "Raft")?;
        let m = self.active().await?;
        deliver(m.store.raft(), r.into_inner(), |raft, rpc| async move {
            raft.vote(rpc).await
        })
        .await
    }

    async fn read_index(
        &self,
        r: Request<pr::ReadIndexRequest>,
    ) -> Result<Response<pr::ReadIndexReply>, Status> {
        self.caller(&r, &[Role::Manager], "Raft")?;
        let m = self.active().await?;
        let index = m.store.read_index().await.map_err(internal)?;
        Ok(Response::new(pr::ReadIndexReply { index }))
    }

    async fn install_snapshot(
        &self,
        r: Request<pr::RaftMessage>,
    ) -> Result<Response<pr::RaftMessage>, Status> {
        self.caller(&r, &[Role::Manager], "Raft")?;
        let m = self.active().await?;
        deliver(m.store.raft(), r.into_inner(), |raft, rpc| async move {
            raft.install_snapshot(rpc).await
        })
        .await
    }
}

#[tonic::async_trait]
impl Join for ManagerService {
    async fn join(&self, r: Request<pr::JoinRequest>) -> Result<Response<pr::JoinReply>, Status> {
        let m = self.active().await?;
        let req = r.into_inner();
        let token =
            JoinToken::parse(&req.token).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let Some(record) = m
            .store
            .get::<ClusterRecord>(CLUSTER_ID)
            .map_err(internal)?
            .map(|v| v.value)
        else {
            return Err(Status::unavailable(
                "this manager has no cluster CA yet: try again in a moment",
            ));
        };
        let fingerprint = record
            .ca
            .fingerprint()
            .map_err(|e| Status::internal(e.to_string()))?;
        if token.fingerprint != fingerprint {
            return Err(Status::permission_denied(
                "the join token belongs to another cluster (its CA fingerprint differs): take \
                 the token from \"shoal join-token\" on a manager of this cluster",
            ));
        }
        let role = if same_secret(&token.secret, &record.manager_secret) {
            Role::Manager
        } else if same_secret(&token.secret, &record.worker_secret) {
            Role::Worker
        } else {
            return Err(Status::permission_denied(
                "the join token is not valid (it may have been rotated): get the current one \
                 with \"shoal join-token worker\" (or manager) on a manager",
            ));
        };
        let id_ok = !req.node_id.is_empty()
            && req.node_id.len() <= 64
            && req
                .node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !id_ok {
            return Err(Status::invalid_argument(format!(
                "invalid node id \"{}\": letters, digits and '-', at most 64",
                req.node_id
            )));
        }
        if role == Role::Manager && req.advertise_addr.is_empty() {
            return Err(Status::invalid_argument(
                "a manager joins with the address the others reach it at (--advertise-addr)",
            ));
        }
        // A node that left (or was removed) gets a certificate newer than its tombstone.
        let since = m
            .store
            .get::<RemovedNode>(&req.node_id)
            .map_err(internal)?
            .map_or(0, |v| v.value.removed_at);
        let cert_pem = record
            .ca
            .issue_since(&req.csr_pem, &req.node_id, role, since)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let managers = m
            .store
            .member_addrs()
            .into_iter()
            .map(|(_, addr)| addr)
            .collect();
        tracing::info!(node = %req.node_id, role = role.as_str(), "a node joins");
        Ok(Response::new(pr::JoinReply {
            cert_pem,
            ca_pem: record.ca.cert_pem,
            role: role.as_str().into(),
            managers,
            raft_id: match role {
                Role::Manager => raft_id(&req.node_id),
                Role::Worker | Role::Client => 0,
            },
        }))
    }

    async fn add_manager(
        &self,
        r: Request<pr::AddManagerRequest>,
    ) -> Result<Response<pr::AddManagerReply>, Status> {
        let me = self.caller(&r, &[Role::Manager], "adding a manager")?;
        let m = self.active().await?;
        let req = r.into_inner();
        if let Some(id) = &me
            && raft_id(&id.node_id) != req.raft_id
        {
            return Err(Status::permission_denied(format!(
                "node {} can only add itself",
                id.node_id
            )));
        }
        if !m.store.is_leader() {
            return Err(not_leader(m.store.leader()));
        }
        m.store
            .add_learner(req.raft_id, &req.addr)
            .await
            .map_err(internal)?;
        let (mut voters, _) = m.store.members();
        if voters.insert(req.raft_id) {
            m.store
                .set_voters(voters.into_iter().collect::<BTreeSet<u64>>())
                .await
                .map_err(internal)?;
        }
        if let Some(id) = &me {
            let _ = m.edit_node(&id.node_id, |n| n.manager = true).await;
        }
        tracing::info!(raft_id = req.raft_id, addr = %req.addr, "a manager joined Raft");
        Ok(Response::new(pr::AddManagerReply {}))
    }

    async fn renew(&self, r: Request<pr::RenewRequest>) -> Result<Response<pr::JoinReply>, Status> {
        let me = self
            .caller_checked(&r, &[Role::Manager, Role::Worker], "renewing", false)?
            .ok_or_else(|| Status::permission_denied("renewing needs the node's certificate"))?;
        let m = self.active().await?;
        m.renew(&me, &r.into_inner().csr_pem)
            .await
            .map(Response::new)
    }

    async fn leave(
        &self,
        r: Request<pr::NodeLeaveRequest>,
    ) -> Result<Response<pr::NodeLeaveReply>, Status> {
        let me = self
            .caller_checked(&r, &[Role::Manager, Role::Worker], "leaving", false)?
            .ok_or_else(|| Status::permission_denied("leaving needs the node's certificate"))?;
        let m = self.active().await?;
        m.node_leaves(&me.node_id, r.into_inner().force).await?;
        Ok(Response::new(pr::NodeLeaveReply {}))
    }
}
