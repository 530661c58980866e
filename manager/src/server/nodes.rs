//! Nodes on the leader: listing and updating them, removal, promotion and demotion,
//! leaving, and certificates renewed (before they expire, or for a new role).
//!
//! The leader keeps the cluster's side: who is a Raft voter, the role each node should
//! have (`desired_role`), and which certificates no longer count (a tombstone for a removed
//! node, `certs_since` for a demoted manager). Each node acts on its own side ([`super::roles`])
//! when its agent's heartbeat says which role the cluster wants.

use std::collections::BTreeSet;

use shoal_api::cluster::raft_id;
use shoal_api::control as pc;
use shoal_api::raft as pr;
use shoal_api::types::{Node, NodeAvailability, NodeRole};
use tonic::{Request, Response, Status};

use super::auth::CONTROL_CALLERS;
use super::{Manager, ManagerService, internal, listing, object, peers};
use crate::ca::{Identity, Role};
use crate::cluster::ClusterError;
use crate::objects::RemovedNode;
use crate::store::{CommandResult, Write};

fn role_of(r: NodeRole) -> Role {
    match r {
        NodeRole::Manager => Role::Manager,
        NodeRole::Worker => Role::Worker,
    }
}

/// The answer to a node that was removed: its agent stops, and the node leaves.
pub(super) fn removed_status(node_id: &str) -> Status {
    let mut s = Status::permission_denied(format!(
        "node {node_id} was removed from the cluster: it can join again with a join token \
         (shoal join)"
    ));
    s.metadata_mut()
        .insert(shoal_api::REMOVED_METADATA, "1".parse().expect("ascii"));
    s
}

impl Manager {
    /// Refuses a certificate of a removed node, or (`strict`) one issued before its node's
    /// role last changed. Heartbeats and renewals are not strict: a demoted manager learns
    /// its new role and renews its certificate with the old one.
    pub(super) fn check_revoked(&self, id: &Identity, strict: bool) -> Result<(), Status> {
        if let Ok(Some(t)) = self.store.get::<RemovedNode>(&id.node_id)
            && id.issued_at < t.value.removed_at
        {
            return Err(removed_status(&id.node_id));
        }
        if strict
            && let Ok(Some(n)) = self.store.get::<Node>(&id.node_id)
            && n.value.certs_since > id.issued_at
        {
            return Err(Status::unauthenticated(format!(
                "the certificate of node {} was replaced when its role changed: the node \
                 renews it by itself within a heartbeat",
                id.node_id
            )));
        }
        Ok(())
    }

    /// The nodes.
    fn nodes(&self) -> Result<Vec<Node>, Status> {
        Ok(self
            .store
            .list::<Node>()
            .map_err(internal)?
            .into_iter()
            .map(|v| v.value)
            .collect())
    }

    /// Refuses taking `leaving` out of the Raft voters when the managers left could not
    /// elect a leader: fewer than a majority of them reachable. Asked of the leader, which
    /// hears every voter with each Raft heartbeat.
    pub(super) fn quorum_without(&self, leaving: u64) -> Result<(), String> {
        let (voters, _) = self.store.members();
        let rest: BTreeSet<u64> = voters.iter().copied().filter(|v| *v != leaving).collect();
        if rest.is_empty() {
            return Err(
                "it is the last manager: without it the cluster's state (services, \
                        nodes, secrets) is gone"
                    .into(),
            );
        }
        let me = self.store.id();
        let window = self.options.raft.quorum_window();
        let reachable = rest
            .iter()
            .filter(|v| **v == me || self.net.heard_within(**v, window))
            .count();
        let needed = rest.len() / 2 + 1;
        if reachable < needed {
            return Err(format!(
                "{} managers would remain, {reachable} of them reachable, and Raft needs {needed} \
                 to elect a leader: bring the unreachable managers back (or promote another \
                 node) first",
                rest.len()
            ));
        }
        Ok(())
    }

    /// The role the cluster wants node `id` in: a voter stays a manager until it is taken
    /// out of Raft (so that it stops its manager only then); otherwise what promote or
    /// demote asked, or worker.
    pub(super) fn wanted_role(&self, id: &str) -> Role {
        let (voters, learners) = self.store.members();
        if voters.contains(&raft_id(id)) || learners.contains(&raft_id(id)) {
            return Role::Manager;
        }
        let desired = self
            .store
            .get::<Node>(id)
            .ok()
            .flatten()
            .and_then(|v| v.value.desired_role);
        desired.map(role_of).unwrap_or(Role::Worker)
    }

    /// Changes node `id`'s record with `f`, again on a concurrent write.
    pub(super) async fn edit_node(
        &self,
        id: &str,
        f: impl Fn(&mut Node),
    ) -> Result<Option<Node>, ClusterError> {
        for _ in 0..10 {
            let Some(v) = self.store.get::<Node>(id)? else {
                return Ok(None);
            };
            let mut node = v.value.clone();
            f(&mut node);
            if node == v.value {
                return Ok(Some(node));
            }
            let r = self
                .store
                .apply(Write::update(node.clone(), v.version))
                .await?;
            if !matches!(r, CommandResult::Conflict { .. }) {
                return Ok(Some(node));
            }
        }
        Err(ClusterError::Raft(format!("node {id} keeps changing")))
    }

    /// Forgets node `id`: its record goes (its tasks run elsewhere), and a tombstone
    /// refuses its certificates from now on.
    pub(super) async fn forget_node(&self, id: &str) -> Result<(), ClusterError> {
        let hostname = self
            .store
            .get::<Node>(id)?
            .map(|v| v.value.hostname)
            .unwrap_or_default();
        let tomb = RemovedNode {
            node_id: id.to_string(),
            // Every certificate issued up to now is older than this.
            removed_at: shoal_api::clock::now_secs() + 1,
            hostname,
        };
        self.store
            .apply_all(&[Write::delete::<Node>(id, None), Write::overwrite(tomb)])
            .await?;
        self.deadlines_mut().remove(id);
        tracing::info!(node = %id, "node removed from the cluster");
        Ok(())
    }

    /// Takes manager `id` out of Raft (a leader that takes itself out steps down once
    /// the change is committed).
    async fn remove_voter(&self, id: u64) -> Result<(), ClusterError> {
        let (mut voters, _) = self.store.members();
        if voters.remove(&id) {
            self.store.set_voters(voters).await?;
        }
        Ok(())
    }

    /// The first certificate time a new certificate for `id` must have: after its
    /// tombstone and its last role change.
    fn certs_since(&self, id: &str) -> u64 {
        let tomb = self
            .store
            .get::<RemovedNode>(id)
            .ok()
            .flatten()
            .map_or(0, |v| v.value.removed_at);
        let node = self
            .store
            .get::<Node>(id)
            .ok()
            .flatten()
            .map_or(0, |v| v.value.certs_since);
        tomb.max(node)
    }

    /// Finds a node by id, id prefix or hostname.
    pub(super) fn find_node(&self, key: &str) -> Result<Node, Status> {
        let nodes = self.nodes()?;
        if let Some(n) = nodes.iter().find(|n| n.id == key) {
            return Ok(n.clone());
        }
        let matches: Vec<&Node> = nodes
            .iter()
            .filter(|n| n.hostname == key || (key.len() >= 4 && n.id.starts_with(key)))
            .collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(Status::not_found(format!(
                "node {key} not found (see \"shoal node ls\")"
            ))),
            many => Err(Status::invalid_argument(format!(
                "\"{key}\" names {} nodes: use the node's id (see \"shoal node ls\")",
                many.len()
            ))),
        }
    }

    /// `node promote` / `node demote`, on the leader.
    pub(super) async fn change_role(&self, node: &Node, role: Role) -> Result<String, Status> {
        let rid = raft_id(&node.id);
        let (voters, _) = self.store.members();
        let name = if node.hostname.is_empty() {
            node.id.clone()
        } else {
            node.hostname.clone()
        };
        match role {
            Role::Client => Err(Status::invalid_argument(
                "a node's role is manager or worker",
            )),
            Role::Manager => {
                if voters.contains(&rid) {
                    return Ok(format!("node {name} is already a manager"));
                }
                self.edit_node(&node.id, |n| n.desired_role = Some(NodeRole::Manager))
                    .await
                    .map_err(internal)?;
                Ok(format!("node {name} promoted to a manager"))
            }
            Role::Worker => {
                if !voters.contains(&rid) {
                    self.edit_node(&node.id, |n| n.desired_role = Some(NodeRole::Worker))
                        .await
                        .map_err(internal)?;
                    return Ok(format!("node {name} is a worker"));
                }
                self.quorum_without(rid).map_err(|why| {
                    Status::failed_precondition(format!("cannot demote {name}: {why}"))
                })?;
                // The record first: once the node is out of Raft, this manager may no
                // longer lead (it steps down if it demoted itself).
                self.edit_node(&node.id, |n| n.desired_role = Some(NodeRole::Worker))
                    .await
                    .map_err(internal)?;
                self.remove_voter(rid).await.map_err(internal)?;
                // Its manager certificate stops counting now that it is out of Raft (a
                // leader that demoted itself leaves this to the next, at the node's next
                // heartbeat).
                if node.id != self.node.id && self.store.is_leader() {
                    let _ = self.revoke_manager_certificate(&node.id).await;
                }
                tracing::info!(node = %node.id, "manager demoted");
                Ok(format!("manager {name} demoted to a worker"))
            }
        }
    }

    /// Refuses node `id`'s certificates issued so far (it was demoted; it renews as a
    /// worker), and records it as no manager.
    pub(super) async fn revoke_manager_certificate(&self, id: &str) -> Result<(), ClusterError> {
        let since = shoal_api::clock::now_secs() + 1;
        self.edit_node(id, |n| {
            n.certs_since = since;
            n.manager = false;
        })
        .await?;
        Ok(())
    }

    /// A node leaving (its own request, on the leader): a manager goes out of Raft first,
    /// then the node is forgotten.
    pub(super) async fn node_leaves(&self, id: &str, force: bool) -> Result<(), Status> {
        if !self.store.is_leader() {
            return Err(peers::not_leader(self.store.leader()));
        }
        let rid = raft_id(id);
        if self.store.members().0.contains(&rid) {
            if !force && let Err(why) = self.quorum_without(rid) {
                return Err(Status::failed_precondition(format!(
                    "this manager cannot leave: {why}; or use \"shoal leave --force\" (the \
                     cluster may then accept no writes)"
                )));
            }
            self.remove_voter(rid).await.map_err(internal)?;
            if !self.store.is_leader() {
                // It was this manager: the next leader forgets the node.
                return Err(peers::not_leader(self.store.leader()));
            }
        }
        self.forget_node(id).await.map_err(internal)
    }

    /// A new certificate for the node `caller` names, in the role the cluster wants it in.
    pub(super) async fn renew(
        &self,
        caller: &Identity,
        csr_pem: &str,
    ) -> Result<pr::JoinReply, Status> {
        if !self.store.is_leader() {
            return Err(peers::not_leader(self.store.leader()));
        }
        let record = self.cluster_record().await.map_err(internal)?;
        let role = self.wanted_role(&caller.node_id);
        let cert_pem = record
            .ca
            .issue_since(
                csr_pem,
                &caller.node_id,
                role,
                self.certs_since(&caller.node_id),
            )
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::info!(node = %caller.node_id, role = role.as_str(), "certificate renewed");
        Ok(pr::JoinReply {
            cert_pem,
            ca_pem: record.ca.cert_pem,
            role: role.as_str().into(),
            managers: self
                .store
                .member_addrs()
                .into_iter()
                .map(|(_, a)| a)
                .collect(),
            raft_id: match role {
                Role::Manager => raft_id(&caller.node_id),
                Role::Worker | Role::Client => 0,
            },
        })
    }

    /// `node rm`, on the leader.
    pub(super) async fn remove_node(&self, key: &str, force: bool) -> Result<(), Status> {
        let node = self.find_node(key)?;
        let name = &node.hostname;
        if self.store.members().0.contains(&raft_id(&node.id)) {
            return Err(Status::failed_precondition(format!(
                "node {name} is a manager: demote it first (shoal node demote {name})"
            )));
        }
        if node.ready && !force {
            return Err(Status::failed_precondition(format!(
                "node {name} is up: run \"shoal leave\" on it, or remove it anyway with \
                 \"shoal node rm --force {name}\" (its tasks stop and run elsewhere)"
            )));
        }
        self.forget_node(&node.id).await.map_err(internal)
    }
}

pub(super) async fn list(
    s: &ManagerService,
    r: Request<pc::ListRequest>,
) -> Result<Response<pc::ListReply>, Status> {
    s.caller(&r, CONTROL_CALLERS, "list nodes")?;
    let m = s.active().await?;
    m.fresh().await?;
    let nodes = m.store.list::<Node>().map_err(internal)?;
    Ok(Response::new(listing(&nodes)?))
}

pub(super) async fn remove(
    s: &ManagerService,
    r: Request<pc::RemoveNodeRequest>,
) -> Result<Response<pc::RemoveReply>, Status> {
    s.caller(&r, CONTROL_CALLERS, "node rm")?;
    let m = s.active().await?;
    if let Some(mut leader) = s.forward(&m).await? {
        return leader.remove_node(r.into_inner()).await;
    }
    let req = r.into_inner();
    m.remove_node(&req.node, req.force).await?;
    Ok(Response::new(pc::RemoveReply {}))
}

/// `node update` (availability, labels) and `node promote|demote` (role).
pub(super) async fn update(
    s: &ManagerService,
    r: Request<pc::UpdateNodeRequest>,
) -> Result<Response<pc::ObjectReply>, Status> {
    s.caller(&r, CONTROL_CALLERS, "update node")?;
    let m = s.active().await?;
    if let Some(mut leader) = s.forward(&m).await? {
        return leader.update_node(r.into_inner()).await;
    }
    let r = r.into_inner();
    let id = m.find_node(&r.node)?.id;
    if !r.role.is_empty() {
        let role: Role = r
            .role
            .parse()
            .map_err(|e: crate::ca::CaError| Status::invalid_argument(e.to_string()))?;
        let node = m.find_node(&id)?;
        m.change_role(&node, role).await?;
    }
    let v = m
        .store
        .get::<Node>(&id)
        .map_err(internal)?
        .ok_or_else(|| Status::not_found(format!("node {} is gone", r.node)))?;
    if r.availability.is_empty() && r.label_add.is_empty() && r.label_rm.is_empty() {
        return Ok(Response::new(pc::ObjectReply {
            object: Some(object(&id, v.version, &v.value)?),
        }));
    }
    let mut node = v.value;
    match r.availability.as_str() {
        "" => {}
        "active" => node.availability = NodeAvailability::Active,
        "pause" => node.availability = NodeAvailability::Pause,
        "drain" => node.availability = NodeAvailability::Drain,
        other => {
            return Err(Status::invalid_argument(format!(
                "invalid availability \"{other}\": use active, pause or drain"
            )));
        }
    }
    for l in &r.label_add {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        node.labels.insert(k.to_string(), v.to_string());
    }
    for k in &r.label_rm {
        node.labels.remove(k);
    }
    let res = m
        .store
        .apply(Write::update(node.clone(), v.version))
        .await
        .map_err(internal)?;
    let version = match res {
        CommandResult::Applied(v) => v.first().copied().unwrap_or(0),
        _ => return Err(Status::aborted("the node changed while updating it: retry")),
    };
    Ok(Response::new(pc::ObjectReply {
        object: Some(object(&id, version, &node)?),
    }))
}
