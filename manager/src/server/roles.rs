//! A node's own side of role changes: it renews its certificate for the role the
//! cluster wants and starts or stops its manager; it leaves the cluster (`shoal leave`),
//! is told it was removed, or (`init --force-new-cluster`) makes a new one-manager
//! cluster of its state.

use std::time::Duration;

use shoal_api::cluster::raft_id;
use shoal_api::control as pc;
use shoal_api::raft as pr;
use shoal_api::types::{Node, NodeRole};
use tonic::Status;

use super::calls::{ask_each_once, at_leader};
use super::{AgentOrder, Manager, ManagerService, Start, client_tls, internal, join};
use crate::ca::Role;
use crate::port::NodeTls;
use crate::store::Write;

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
                } else if crate::ca::wants_renewal(&id, shoal_api::clock::now()) {
                    self.renew_in_place(&tls).await
                } else {
                    Ok(())
                }
            }
            (Role::Worker, None) if id.role == Role::Worker => {
                if crate::ca::wants_renewal(&id, shoal_api::clock::now()) {
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
        let objects = old.store.export().map_err(internal)?;
        let nodes: Vec<Node> = old
            .store
            .list::<Node>()
            .map_err(internal)?
            .into_iter()
            .map(|v| v.value)
            .collect();
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
        let since = shoal_api::clock::now_secs() + 1;
        let count = objects.len();
        // Everything as it was, but the other managers, who come back as workers.
        m.store.import(objects).await.map_err(internal)?;
        let demoted: Vec<Write> = nodes
            .into_iter()
            .filter(|n| others.contains(&raft_id(&n.id)))
            .map(|mut n| {
                n.manager = false;
                n.desired_role = Some(NodeRole::Worker);
                n.certs_since = since;
                Write::overwrite(n)
            })
            .collect();
        if !demoted.is_empty() {
            m.store.apply_all(&demoted).await.map_err(internal)?;
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
