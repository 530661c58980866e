//! A manager's life: it opens its Raft store, takes part in elections, and while it
//! leads runs the leader's work (the pipeline and the heartbeat watch); a read on any
//! manager first catches up with the leader's read index.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shoal_api::cluster::raft_id;
use shoal_api::dispatcher as pd;
use shoal_api::types::{Node, ResourceAmounts};
use tonic::Status;

use super::{JOINED_MARK, Start};
use crate::cluster::grpcnet::GrpcNet;
use crate::cluster::{ClusterError, ClusterStore, Timings};
use crate::pipeline::Pipeline;

#[derive(Debug, Clone)]
pub struct SelfNode {
    /// Stable id (kept under the data root).
    pub id: String,
    /// Hostname.
    pub hostname: String,
    /// What it offers tasks.
    pub resources: ResourceAmounts,
}

/// How a manager watches its nodes.
#[derive(Debug, Clone, Copy)]
pub struct ManagerOptions {
    /// How often agents heartbeat.
    pub heartbeat_period: Duration,
    /// Heartbeats a node may miss before it is marked down (and its tasks run elsewhere).
    pub heartbeat_misses: u32,
    /// Raft's timings between managers.
    pub raft: Timings,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        ManagerOptions {
            heartbeat_period: Duration::from_millis(1000),
            heartbeat_misses: 3,
            raft: Timings::default(),
        }
    }
}

impl ManagerOptions {
    /// How long a node may stay silent.
    pub fn heartbeat_timeout(&self) -> Duration {
        self.heartbeat_period * self.heartbeat_misses.max(1)
    }
}

/// A running manager.
pub struct Manager {
    pub(super) store: Arc<ClusterStore>,
    /// The Raft links to other managers (their TLS set once this node has a certificate).
    pub(super) net: GrpcNet,
    pub(super) node: SelfNode,
    pub(super) options: ManagerOptions,
    stop: tokio::sync::watch::Sender<bool>,
    /// When each node's next heartbeat is due at the latest (kept in memory only, as
    /// writing every heartbeat through Raft would cost more than it tells).
    deadlines: std::sync::Mutex<HashMap<String, tokio::time::Instant>>,
}

impl Manager {
    /// Opens the manager state under `dir`, leads a one-manager cluster (or takes part in
    /// the election of the cluster it belongs to), and runs the leader's work whenever it
    /// leads.
    pub async fn start(
        dir: PathBuf,
        node: SelfNode,
        options: ManagerOptions,
        how: Start<'_>,
    ) -> Result<Arc<Manager>, ClusterError> {
        let net = GrpcNet::new();
        let id = raft_id(&node.id);
        let store = Arc::new(ClusterStore::open_with(&dir, id, &options.raft, net.clone()).await?);
        match how {
            Start::Init(addr) if !dir.join(JOINED_MARK).exists() => store.bootstrap(addr).await?,
            _ => {}
        }
        Ok(Manager::run_on(store, net, node, options))
    }

    /// Before a read: brings this manager's state up to every write acknowledged before
    /// the read began (the leader's read index, then waiting to apply it), so that a
    /// follower, or a manager just restarted, answers what a write through any manager
    /// has already said. Without a quorum (or a leader) the read answers from the state
    /// this manager has at once: reads still answer. A manager that cannot catch up with
    /// a leader that answers says so rather than answer from old state.
    pub async fn fresh(&self) -> Result<(), Status> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        let index = loop {
            let asked = if self.store.is_leader() {
                self.store
                    .read_index()
                    .await
                    .map_err(|e| (!matches!(e, ClusterError::NoQuorum { .. }), e.to_string()))
            } else if let Some((_, addr)) = self.store.leader() {
                self.net.read_index(&addr).await
            } else {
                Err((false, "no leader known".to_string()))
            };
            match asked {
                Ok(index) => break index,
                Err((again, e)) if !again || tokio::time::Instant::now() >= deadline => {
                    tracing::debug!("a read answers from this manager's state as it is: {e}");
                    return Ok(());
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let wait = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(Duration::from_secs(2));
        self.store.wait_applied(index, wait).await.map_err(|_| {
            Status::unavailable(format!(
                "this manager has not caught up with the leader's log (entry {index}) yet: \
                 try again in a moment, or ask another manager"
            ))
        })
    }

    /// A manager over an open store: while it leads, it runs the leader pipeline and
    /// watches the nodes' heartbeats; when it stops leading, both stop.
    pub fn run(store: Arc<ClusterStore>, node: SelfNode, options: ManagerOptions) -> Arc<Manager> {
        Manager::run_on(store, GrpcNet::new(), node, options)
    }

    pub(super) fn run_on(
        store: Arc<ClusterStore>,
        net: GrpcNet,
        node: SelfNode,
        options: ManagerOptions,
    ) -> Arc<Manager> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let m = Arc::new(Manager {
            store,
            net,
            node,
            options,
            stop,
            deadlines: Default::default(),
        });
        let leader = m.clone();
        tokio::spawn(async move { leader.follow_leadership(stopped).await });
        m
    }

    /// Runs the leader's work in each term this manager leads.
    async fn follow_leadership(self: Arc<Self>, mut stopped: tokio::sync::watch::Receiver<bool>) {
        let mut leads = self.store.leadership();
        loop {
            if *leads.borrow_and_update() {
                let (end, ended) = tokio::sync::watch::channel(false);
                let term = self.clone();
                let work = tokio::spawn(async move { term.lead(ended).await });
                let quit = tokio::select! {
                    _ = stopped.wait_for(|s| *s) => true,
                    _ = leads.wait_for(|l| !*l) => false,
                };
                if quit {
                    let _ = end.send(true);
                    let _ = work.await;
                    return;
                }
                let _ = end.send(true);
                let _ = work.await;
                tracing::info!("this manager no longer leads");
            }
            tokio::select! {
                _ = stopped.wait_for(|s| *s) => return,
                changed = leads.changed() => if changed.is_err() { return },
            }
        }
    }

    /// One term as the leader: the pipeline and the heartbeat watch, until `ended`.
    async fn lead(self: Arc<Self>, ended: tokio::sync::watch::Receiver<bool>) {
        tracing::info!("this manager leads the cluster");
        let me = pd::SessionRequest {
            node_id: self.node.id.clone(),
            hostname: self.node.hostname.clone(),
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            nano_cpus: self.node.resources.nano_cpus,
            memory_bytes: self.node.resources.memory_bytes,
            data_addr: String::new(),
            volume_drivers: Vec::new(),
        };
        if let Err(e) = self.register(&me, false).await {
            tracing::warn!("recording this manager's node: {e}");
        }
        // Every known node gets a full timeout from now to show up again (a new leader
        // does not know when they last spoke).
        let grace = tokio::time::Instant::now() + self.options.heartbeat_timeout();
        match self.store.list::<Node>() {
            Ok(nodes) => {
                let mut deadlines = self.deadlines_mut();
                for v in nodes {
                    deadlines.entry(v.value.id).or_insert(grace);
                }
            }
            Err(e) => tracing::warn!("reading the nodes: {e}"),
        }
        let pipeline = Pipeline::new(self.store.clone(), self.store.id());
        let mut end1 = ended.clone();
        let mut end2 = ended;
        let run = pipeline.run(Duration::from_millis(500), async move {
            let _ = end1.wait_for(|s| *s).await;
        });
        let watch = async {
            let mut tick = tokio::time::interval(self.options.heartbeat_period / 4);
            loop {
                tokio::select! {
                    _ = async { let _ = end2.wait_for(|s| *s).await; } => return,
                    _ = tick.tick() => self.mark_silent_nodes_down().await,
                }
            }
        };
        tokio::join!(run, watch);
        self.deadlines_mut().clear();
    }

    /// Stops the pipeline and the Raft node.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        self.store.shutdown().await;
    }

    pub(super) fn deadlines_mut(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, tokio::time::Instant>> {
        self.deadlines.lock().unwrap_or_else(|e| e.into_inner())
    }
}
