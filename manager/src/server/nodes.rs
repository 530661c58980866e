//! Nodes coming and going: leaving, removal, promotion and demotion, and certificates
//! renewed (before they expire, or for a new role).
//!
//! The leader keeps the cluster's side: who is a Raft voter, the role each node should
//! have (`desired_role`), and which certificates no longer count (a tombstone for a removed
//! node, `certs_since` for a demoted manager). Each node acts on its own side when its
//! agent's heartbeat says which role the cluster wants: it renews its certificate for that
//! role, then starts or stops its manager.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use shoal_api::control as pc;
use shoal_api::raft as pr;
use shoal_api::raft::join_client::JoinClient;
use shoal_api::types::{Node, NodeRole};
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use super::{
    AgentOrder, Manager, ManagerService, Start, client_tls, internal, join, peers, raft_id,
};
use crate::ca::{Identity, Role};
use crate::cluster::ClusterError;
use crate::pipeline::kinds;
use crate::port::NodeTls;
use crate::store::{Command, CommandResult};

/// What is kept of a removed node: its certificates issued before `removed_at` are refused.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Tombstone {
    /// Unix seconds.
    pub removed_at: u64,
    /// Its hostname, for messages.
    pub hostname: String,
}

/// Unix seconds now.
pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn role_of(r: NodeRole) -> Role {
    match r {
        NodeRole::Manager => Role::Manager,
        NodeRole::Worker => Role::Worker,
    }
}

/// The answer to a node that was removed: its agent stops, and the node leaves.
fn removed_status(node_id: &str) -> Status {
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
        if let Ok(Some(v)) = self.store.get(kinds::REMOVED_NODE, &id.node_id)
            && let Ok(t) = serde_json::from_value::<Tombstone>(v.value)
            && id.issued_at < t.removed_at
        {
            return Err(removed_status(&id.node_id));
        }
        if strict
            && let Ok(Some(v)) = self.store.get(kinds::NODE, &id.node_id)
            && v.value["certs_since"].as_u64().unwrap_or(0) > id.issued_at
        {
            return Err(Status::unauthenticated(format!(
                "the certificate of node {} was replaced when its role changed: the node \
                 renews it by itself within a heartbeat",
                id.node_id
            )));
        }
        Ok(())
    }

    /// The nodes, decoded.
    fn nodes(&self) -> Result<Vec<Node>, Status> {
        Ok(self
            .store
            .list(kinds::NODE)
            .map_err(internal)?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_value(v.value).ok())
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
            .get(kinds::NODE, id)
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_value::<Node>(v.value).ok())
            .and_then(|n| n.desired_role);
        desired.map(role_of).unwrap_or(Role::Worker)
    }

    /// Changes node `id`'s record with `f`, again on a concurrent write.
    pub(super) async fn edit_node(
        &self,
        id: &str,
        f: impl Fn(&mut Node),
    ) -> Result<Option<Node>, ClusterError> {
        for _ in 0..10 {
            let Some(v) = self.store.get(kinds::NODE, id)? else {
                return Ok(None);
            };
            let mut node: Node = serde_json::from_value(v.value.clone())
                .map_err(|e| ClusterError::Read(e.to_string()))?;
            f(&mut node);
            if serde_json::to_value(&node).ok().as_ref() == Some(&v.value) {
                return Ok(Some(node));
            }
            let r = self
                .store
                .write(Command::Put {
                    kind: kinds::NODE.into(),
                    id: id.into(),
                    value: serde_json::to_value(&node).unwrap_or_default(),
                    expected_version: Some(v.version),
                })
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
            .get(kinds::NODE, id)?
            .and_then(|v| v.value["hostname"].as_str().map(String::from))
            .unwrap_or_default();
        let tomb = Tombstone {
            // Every certificate issued up to now is older than this.
            removed_at: unix_now() + 1,
            hostname,
        };
        self.store
            .write(Command::Batch {
                commands: vec![
                    Command::Delete {
                        kind: kinds::NODE.into(),
                        id: id.into(),
                        expected_version: None,
                    },
                    Command::Put {
                        kind: kinds::REMOVED_NODE.into(),
                        id: id.into(),
                        value: serde_json::to_value(&tomb).unwrap_or_default(),
                        expected_version: None,
                    },
                ],
            })
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
            .get(kinds::REMOVED_NODE, id)
            .ok()
            .flatten()
            .and_then(|v| v.value["removed_at"].as_u64())
            .unwrap_or(0);
        let node = self
            .store
            .get(kinds::NODE, id)
            .ok()
            .flatten()
            .and_then(|v| v.value["certs_since"].as_u64())
            .unwrap_or(0);
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
        let since = unix_now() + 1;
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

/// Calls a manager's Join service over the cluster port, following "not the leader"
/// answers, until `call` succeeds or `patience` runs out.
pub(super) async fn at_leader<T, F, Fut>(
    tls: &NodeTls,
    managers: &[String],
    patience: Duration,
    call: F,
) -> Result<T, Status>
where
    F: Fn(JoinClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    let mut next = 0usize;
    let mut target = managers.first().cloned().unwrap_or_default();
    loop {
        let endpoint = Endpoint::from_shared(format!("https://{target}"))
            .map_err(|e| Status::invalid_argument(format!("manager address {target}: {e}")))?
            .tls_config(client_tls(tls))
            .map_err(|e| Status::internal(e.to_string()))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(15));
        let answer = match endpoint.connect().await {
            Ok(ch) => {
                call(
                    JoinClient::new(ch)
                        .max_decoding_message_size(shoal_api::MAX_MESSAGE)
                        .max_encoding_message_size(shoal_api::MAX_MESSAGE),
                )
                .await
            }
            Err(e) => Err(Status::unavailable(format!("{target}: {e}"))),
        };
        match answer {
            Ok(v) => return Ok(v),
            Err(e) if e.metadata().get(shoal_api::REMOVED_METADATA).is_some() => return Err(e),
            Err(e)
                if matches!(
                    e.code(),
                    tonic::Code::PermissionDenied | tonic::Code::FailedPrecondition
                ) =>
            {
                return Err(e);
            }
            Err(e) => {
                let leader = e
                    .metadata()
                    .get(shoal_api::LEADER_METADATA)
                    .and_then(|v| v.to_str().ok())
                    .map(String::from);
                if tokio::time::Instant::now() >= deadline {
                    return Err(e);
                }
                match leader {
                    Some(l) => target = l,
                    None => {
                        next += 1;
                        if !managers.is_empty() {
                            target = managers[next % managers.len()].clone();
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
    }
}

/// Asks each of `managers` once (following a named leader once), with short timeouts:
/// the first answer, or a removal; None when no manager answered.
async fn ask_each_once<T, F, Fut>(
    tls: &NodeTls,
    managers: &[String],
    call: F,
) -> Option<Result<T, Status>>
where
    F: Fn(JoinClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let mut queue: std::collections::VecDeque<String> = managers.iter().cloned().collect();
    let mut asked = BTreeSet::new();
    while let Some(target) = queue.pop_front() {
        if !asked.insert(target.clone()) || asked.len() > managers.len() + 2 {
            continue;
        }
        let Ok(endpoint) = Endpoint::from_shared(format!("https://{target}")) else {
            continue;
        };
        let Ok(endpoint) = endpoint.tls_config(client_tls(tls)) else {
            continue;
        };
        let endpoint = endpoint
            .connect_timeout(Duration::from_millis(700))
            .timeout(Duration::from_secs(3));
        let Ok(channel) = endpoint.connect().await else {
            continue;
        };
        match call(
            JoinClient::new(channel)
                .max_decoding_message_size(shoal_api::MAX_MESSAGE)
                .max_encoding_message_size(shoal_api::MAX_MESSAGE),
        )
        .await
        {
            Ok(v) => return Some(Ok(v)),
            Err(e) if e.metadata().get(shoal_api::REMOVED_METADATA).is_some() => {
                return Some(Err(e));
            }
            Err(e) => {
                if let Some(leader) = e
                    .metadata()
                    .get(shoal_api::LEADER_METADATA)
                    .and_then(|v| v.to_str().ok())
                {
                    queue.push_front(leader.to_string());
                }
            }
        }
    }
    None
}

impl ManagerService {
    /// The other managers this node knows: its own Raft view if it is one, else what it
    /// saved.
    async fn known_managers(&self) -> Vec<String> {
        if let Some(m) = self.manager.read().await.clone() {
            let me = m.store.id();
            let addrs: Vec<String> = m
                .store
                .member_addrs()
                .into_iter()
                .filter(|(id, _)| *id != me)
                .map(|(_, a)| a)
                .collect();
            if !addrs.is_empty() {
                return addrs;
            }
        }
        join::load_managers(&self.tls_dir())
    }

    /// Whom to ask for what only the leader does: the leader this node knows of (itself,
    /// maybe) first, then the other managers.
    async fn ask_first(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(m) = self.manager.read().await.clone()
            && let Some((_, addr)) = m.store.leader()
        {
            out.push(addr);
        }
        for a in self.known_managers().await {
            if !out.contains(&a) {
                out.push(a);
            }
        }
        out
    }

    /// Asks the leader for a new certificate; saves it and the managers' addresses.
    async fn renew_certificate(&self, tls: &NodeTls) -> Result<(NodeTls, Role), Status> {
        let managers = self.ask_first().await;
        let (key_pem, csr_pem) = crate::ca::node_key_and_request(&self.node.id)
            .map_err(|e| Status::internal(e.to_string()))?;
        let reply = at_leader(tls, &managers, Duration::from_secs(10), |mut c| {
            let csr_pem = csr_pem.clone();
            async move {
                c.renew(pr::RenewRequest { csr_pem })
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await?;
        let role: Role = reply
            .role
            .parse()
            .map_err(|e: crate::ca::CaError| Status::internal(e.to_string()))?;
        let new = NodeTls {
            ca_pem: reply.ca_pem,
            cert_pem: reply.cert_pem,
            key_pem,
        };
        new.save(&self.tls_dir())
            .map_err(|e| Status::internal(e.to_string()))?;
        if !reply.managers.is_empty() {
            join::save_managers(&self.tls_dir(), &reply.managers)?;
        }
        Ok((new, role))
    }

    /// What this node's agent hears with each heartbeat: the role the cluster wants it in.
    /// Renews the certificate for that role (or because it is past half its life), and
    /// starts or stops the manager to match. One change at a time; a failed step is tried
    /// again on a later heartbeat.
    pub async fn role_wanted(&self, role: &str) {
        let Ok(wanted) = role.parse::<Role>() else {
            return;
        };
        let Ok(_one) = self.transition.try_lock() else {
            return;
        };
        let Ok(Some(tls)) = NodeTls::load(&self.tls_dir()) else {
            return;
        };
        let Ok(id) = crate::ca::identity_pem(&tls.cert_pem) else {
            return;
        };
        let running = self.manager.read().await.clone();
        if running.is_some() {
            // The agent falls back on these when its own manager cannot serve it (no
            // leader known, or no longer a member).
            let managers = self.known_managers().await;
            if !managers.is_empty() && managers != join::load_managers(&self.tls_dir()) {
                let _ = join::save_managers(&self.tls_dir(), &managers);
            }
        }
        let result = match (wanted, running) {
            (Role::Manager, Some(m)) if id.role == Role::Manager => {
                let (voters, learners) = m.store.members();
                let me = m.store.id();
                if !voters.contains(&me) && !learners.contains(&me) {
                    self.join_raft(&tls, &m).await
                } else if crate::ca::wants_renewal(&id, SystemTime::now()) {
                    self.renew_in_place(&tls).await
                } else {
                    Ok(())
                }
            }
            (Role::Worker, None) if id.role == Role::Worker => {
                if crate::ca::wants_renewal(&id, SystemTime::now()) {
                    self.renew_in_place(&tls).await
                } else {
                    Ok(())
                }
            }
            (Role::Manager, _) => self.become_manager(&tls, id.role).await,
            (Role::Worker, _) => self.become_worker(&tls).await,
            (Role::Client, _) => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(
                "becoming a {} (tried again at the next heartbeat): {}",
                wanted.as_str(),
                e.message()
            );
        }
    }

    /// A renewal in the same role: the new certificate replaces the old one everywhere this
    /// node uses it.
    async fn renew_in_place(&self, tls: &NodeTls) -> Result<(), Status> {
        let (new, _) = self.renew_certificate(tls).await?;
        let local = self.manager.read().await.is_some();
        if let Some(m) = self.manager.read().await.clone() {
            m.net.set_tls(client_tls(&new));
            let certs = self
                .port
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|p| p.certs.clone());
            if let Some(certs) = certs {
                certs
                    .set(&new)
                    .map_err(|e| Status::internal(e.to_string()))?;
            }
        }
        self.run_agent(local).await?;
        Ok(())
    }

    /// Promoted: a manager certificate, the manager started, added to Raft by the leader.
    async fn become_manager(&self, tls: &NodeTls, has: Role) -> Result<(), Status> {
        let tls = if has == Role::Manager {
            tls.clone()
        } else {
            let (new, role) = self.renew_certificate(tls).await?;
            if role != Role::Manager {
                return Err(Status::unavailable(
                    "the leader has not recorded the promotion yet",
                ));
            }
            new
        };
        tracing::info!("this node was promoted: starting its manager");
        let m = self.start_joined_manager().await?;
        let (listen, advertise) = match crate::port::load_config(&self.dir) {
            Ok(Some(c)) => (c.listen, Some(c.advertise)),
            _ => (self.port_defaults.listen, self.port_defaults.advertise),
        };
        self.open_port(listen, advertise)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        self.join_raft(&tls, &m).await?;
        self.run_agent(true).await?;
        Ok(())
    }

    /// Asks the leader to add this manager to Raft.
    async fn join_raft(&self, tls: &NodeTls, m: &Manager) -> Result<(), Status> {
        let Some(config) = self.port_config() else {
            return Err(Status::failed_precondition("the cluster port is not open"));
        };
        let managers = join::load_managers(&self.tls_dir());
        join::add_manager(tls, &managers, m.store.id(), &config.advertise.to_string()).await
    }

    /// Demoted: the manager stops and its Raft state goes, then a worker certificate.
    async fn become_worker(&self, tls: &NodeTls) -> Result<(), Status> {
        let managers = self.known_managers().await;
        join::save_managers(&self.tls_dir(), &managers)?;
        if self.manager.read().await.is_some() {
            tracing::info!("this node was demoted: stopping its manager");
            let config = self.port_config();
            self.stop().await;
            self.drop_manager_state(config);
        }
        let (_, role) = self.renew_certificate(tls).await?;
        if role != Role::Worker {
            return Err(Status::unavailable(
                "the leader still counts this node as a manager",
            ));
        }
        self.run_agent(false).await?;
        Ok(())
    }

    /// Deletes the Raft state of a manager that is one no more, keeping its cluster port's
    /// settings (a later promotion opens the port the same way).
    fn drop_manager_state(&self, config: Option<crate::port::PortConfig>) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(c) = config {
            let _ = std::fs::create_dir_all(&self.dir);
            let _ = crate::port::save_config(&self.dir, &c);
        }
    }

    /// At daemon start, before a manager with Raft state starts its Raft node: asks the
    /// other managers it knows, once each, which role the cluster wants it in (renewing its
    /// certificate on the way). It may have been demoted, removed, or left behind by
    /// `init --force-new-cluster` while it was down; its old Raft state must not rejoin the
    /// managers it knew (two of those coming back together would otherwise elect a leader
    /// of the old cluster). True when the manager should start: the cluster still wants it,
    /// or no manager answered.
    pub(super) async fn manager_at_start(&self) -> bool {
        let Ok(Some(tls)) = NodeTls::load(&self.tls_dir()) else {
            return true;
        };
        let own = crate::port::load_config(&self.dir)
            .ok()
            .flatten()
            .map(|c| c.advertise.to_string());
        let managers: Vec<String> = join::load_managers(&self.tls_dir())
            .into_iter()
            .filter(|a| Some(a) != own.as_ref())
            .collect();
        if managers.is_empty() {
            return true;
        }
        let Ok((key_pem, csr_pem)) = crate::ca::node_key_and_request(&self.node.id) else {
            return true;
        };
        let answer = ask_each_once(&tls, &managers, |mut c| {
            let csr_pem = csr_pem.clone();
            async move {
                c.renew(pr::RenewRequest { csr_pem })
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await;
        let reply = match answer {
            Some(Ok(reply)) => reply,
            Some(Err(e)) if e.metadata().get(shoal_api::REMOVED_METADATA).is_some() => {
                tracing::warn!("the cluster removed this node while it was down: leaving it");
                let _ = std::fs::remove_dir_all(&self.dir);
                let _ = std::fs::remove_dir_all(self.tls_dir());
                return false;
            }
            _ => return true,
        };
        let new = NodeTls {
            ca_pem: reply.ca_pem,
            cert_pem: reply.cert_pem,
            key_pem,
        };
        if new.save(&self.tls_dir()).is_err() {
            return true;
        }
        if !reply.managers.is_empty() {
            let _ = join::save_managers(&self.tls_dir(), &reply.managers);
        }
        if reply.role == Role::Manager.as_str() {
            return true;
        }
        tracing::warn!(
            "the cluster made this node a worker while it was down (demoted, or a new cluster \
             was forced from another manager): its old manager state is set aside"
        );
        let config = crate::port::load_config(&self.dir).ok().flatten();
        self.drop_manager_state(config);
        false
    }

    /// The cluster removed this node: it leaves.
    pub async fn removed(&self) {
        let Ok(_one) = self.transition.try_lock() else {
            return;
        };
        if !self.tls_dir().join("node.crt").exists() {
            return;
        }
        tracing::warn!("this node was removed from the cluster: leaving it");
        self.leave_locally().await;
    }

    /// Stops the agent (and the containers of its tasks), the manager and the cluster
    /// port, and deletes the certificate and the Raft state: the node is in no cluster.
    async fn leave_locally(&self) {
        (self.agent)(AgentOrder::Stop).await;
        self.stop().await;
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(self.tls_dir());
    }

    /// `shoal leave`.
    pub(super) async fn leave(&self, force: bool) -> Result<pc::LeaveReply, Status> {
        let _one = self.transition.lock().await;
        let Some(tls) =
            NodeTls::load(&self.tls_dir()).map_err(|e| Status::internal(e.to_string()))?
        else {
            if self.manager.read().await.is_none() {
                return Err(Status::failed_precondition(
                    "this node is not part of a cluster",
                ));
            }
            self.leave_locally().await;
            return Ok(pc::LeaveReply {
                message: "This node left the cluster.".into(),
            });
        };
        let mut message = String::from("This node left the cluster.");
        if let Some(m) = self.manager.read().await.clone() {
            let me = m.store.id();
            let (voters, _) = m.store.members();
            if voters.len() <= 1 && voters.contains(&me) {
                if !force {
                    return Err(Status::failed_precondition(
                        "this is the last manager of the cluster: leaving erases the cluster's \
                         state (services, nodes, secrets). Promote another node first, or use \
                         \"shoal leave --force\" to erase it",
                    ));
                }
                self.leave_locally().await;
                return Ok(pc::LeaveReply {
                    message: "This node left; the cluster's state is erased.".into(),
                });
            }
        }
        let managers = self.ask_first().await;
        let patience = Duration::from_secs(if force { 3 } else { 10 });
        let told = at_leader(&tls, &managers, patience, |mut c| async move {
            c.leave(pr::NodeLeaveRequest { force }).await.map(|_| ())
        })
        .await;
        match told {
            Ok(()) => {}
            Err(e) if e.metadata().get(shoal_api::REMOVED_METADATA).is_some() => {}
            Err(e) if e.code() == tonic::Code::FailedPrecondition && !force => return Err(e),
            Err(e) if force => {
                message = format!(
                    "This node left the cluster; the managers could not be told ({}): remove it \
                     there with \"shoal node rm {}\"",
                    e.message(),
                    self.node.hostname
                );
            }
            Err(e) if self.manager.read().await.is_some() => {
                return Err(Status::unavailable(format!(
                    "the leader did not take this manager out of the cluster: {}; try again, \
                     or use \"shoal leave --force\"",
                    e.message()
                )));
            }
            Err(e) => {
                message = format!(
                    "This node left the cluster; the managers could not be told ({}): remove it \
                     there with \"shoal node rm {}\"",
                    e.message(),
                    self.node.hostname
                );
            }
        }
        self.leave_locally().await;
        Ok(pc::LeaveReply { message })
    }

    /// `shoal init --force-new-cluster`: this manager's state becomes a new one-manager
    /// cluster. Its Raft log is set aside (`<dir>.before-force-new-cluster`), a new one
    /// starts with every object of the old state, and the other managers' certificates
    /// stop counting: when they come back they hear that they are workers now (promote
    /// them again to restore the quorum).
    pub(super) async fn force_new_cluster(&self) -> Result<pc::InitReply, Status> {
        let _one = self.transition.lock().await;
        let mut guard = self.manager.write().await;
        let Some(old) = guard.take() else {
            return Err(Status::failed_precondition(
                "this node holds no cluster state: --force-new-cluster recovers a cluster on one of its managers (run plain \"shoal init\" for a new one)",
            ));
        };
        let config = self
            .port_config()
            .or_else(|| crate::port::load_config(&self.dir).ok().flatten());
        let Some(config) = config else {
            *guard = Some(old);
            return Err(Status::failed_precondition(
                "this manager has no cluster port settings to start from",
            ));
        };
        let objects = old.store.all();
        let me = old.store.id();
        let others: Vec<u64> = old
            .store
            .members()
            .0
            .into_iter()
            .filter(|v| *v != me)
            .collect();
        if let Some(port) = self.port.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = port.stop.send(true);
        }
        old.stop().await;
        drop(old);
        let aside = self.dir.with_extension("before-force-new-cluster");
        let _ = std::fs::remove_dir_all(&aside);
        std::fs::rename(&self.dir, &aside)
            .map_err(|e| Status::internal(format!("setting {} aside: {e}", self.dir.display())))?;
        std::fs::create_dir_all(&self.dir).map_err(|e| Status::internal(e.to_string()))?;
        let m = Manager::start(
            self.dir.clone(),
            self.node.clone(),
            self.options,
            Start::Init(&config.advertise.to_string()),
        )
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        m.store
            .wait_for_leader(Duration::from_secs(10))
            .await
            .map_err(internal)?;
        let since = unix_now() + 1;
        let mut commands = Vec::new();
        for (kind, id, v) in objects {
            let mut value = v.value;
            if kind == kinds::NODE
                && others.contains(&raft_id(&id))
                && let Ok(mut n) = serde_json::from_value::<Node>(value.clone())
            {
                n.manager = false;
                n.desired_role = Some(NodeRole::Worker);
                n.certs_since = since;
                value = serde_json::to_value(&n).unwrap_or(value);
            }
            commands.push(Command::Put {
                kind,
                id,
                value,
                expected_version: None,
            });
        }
        let count = commands.len();
        let mut rest = commands.into_iter().peekable();
        while rest.peek().is_some() {
            let batch: Vec<Command> = rest.by_ref().take(500).collect();
            m.store
                .write(Command::Batch { commands: batch })
                .await
                .map_err(internal)?;
        }
        tracing::warn!(
            objects = count,
            dropped_managers = others.len(),
            "forced a new cluster from this manager's state"
        );
        *guard = Some(m.clone());
        drop(guard);
        self.open_port(config.listen, Some(config.advertise))
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        self.run_agent(true).await?;
        Ok(pc::InitReply {
            node_id: self.node.id.clone(),
            cluster_id: self.node.id.clone(),
        })
    }
}
