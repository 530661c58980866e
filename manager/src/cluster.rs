//! A manager's Raft node: openraft over our redb storage, with writes that return the
//! store's own result type and reads served from the local state machine. The network to
//! other managers arrives with multi-host (issue 4); until then a node can only form a
//! one-manager cluster, and any attempt to reach a peer fails as unreachable.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Config, Raft};
use tokio::sync::broadcast;

use crate::store::{
    Command, CommandResult, LogStore, ObjectEvent, StateMachine, TypeConfig, Versioned,
};

/// Errors of the cluster store.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The storage could not be opened.
    #[error("opening the cluster store in {path}: {message}")]
    Open {
        /// Where.
        path: String,
        /// Why.
        message: String,
    },
    /// Raft refused or failed.
    #[error("{0}")]
    Raft(String),
    /// A read failed.
    #[error("reading the cluster store: {0}")]
    Read(String),
}

/// Raft timings. The defaults favour fast failover on a LAN: a leader is suspected after
/// 150-300 ms without heartbeats (Swarm's defaults wait 10 s and more).
#[derive(Debug, Clone)]
pub struct Timings {
    /// How often the leader sends heartbeats.
    pub heartbeat: Duration,
    /// The election timeout range.
    pub election_min: Duration,
    /// The election timeout range.
    pub election_max: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            heartbeat: Duration::from_millis(50),
            election_min: Duration::from_millis(150),
            election_max: Duration::from_millis(300),
        }
    }
}

/// The network to other managers: none yet.
#[derive(Clone, Default)]
pub struct NoPeers;

#[derive(Debug, thiserror::Error)]
#[error("manager {0} is unreachable: multi-manager clusters need the cluster network")]
struct NoRoute(u64);

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeer;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Self::Network {
        NoPeer(target)
    }
}

/// A connection that never connects.
pub struct NoPeer(u64);

impl RaftNetwork<TypeConfig> for NoPeer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(RPCError::Unreachable(Unreachable::new(&NoRoute(self.0))))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        Err(RPCError::Network(NetworkError::new(&NoRoute(self.0))))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(RPCError::Unreachable(Unreachable::new(&NoRoute(self.0))))
    }
}

/// A manager's replicated store.
pub struct ClusterStore {
    id: u64,
    raft: Raft<TypeConfig>,
    state: StateMachine,
}

impl ClusterStore {
    /// Opens the store under `dir` (log and state in redb files) as node `id`.
    pub async fn open(
        dir: &Path,
        id: u64,
        timings: &Timings,
    ) -> Result<ClusterStore, ClusterError> {
        let open_err = |e: &dyn std::fmt::Display| ClusterError::Open {
            path: dir.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(&e))?;
        let log = LogStore::open(&dir.join("raft-log.redb")).map_err(|e| open_err(&e))?;
        let state = StateMachine::open(&dir.join("state.redb")).map_err(|e| open_err(&e))?;
        let config = Config {
            cluster_name: "shoal".into(),
            heartbeat_interval: timings.heartbeat.as_millis() as u64,
            election_timeout_min: timings.election_min.as_millis() as u64,
            election_timeout_max: timings.election_max.as_millis() as u64,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Raft(format!("invalid Raft timings: {e}")))?;
        let raft = Raft::new(id, Arc::new(config), NoPeers, log, state.clone())
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        Ok(ClusterStore { id, raft, state })
    }

    /// Makes this node a one-manager cluster, unless it already belongs to one, and waits
    /// until it leads.
    pub async fn bootstrap(&self, addr: &str) -> Result<(), ClusterError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        if !initialized {
            let members = BTreeMap::from([(
                self.id,
                BasicNode {
                    addr: addr.to_string(),
                },
            )]);
            self.raft
                .initialize(members)
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?;
        }
        self.raft
            .wait(Some(Duration::from_secs(10)))
            .current_leader(self.id, "becoming the leader")
            .await
            .map_err(|e| ClusterError::Raft(format!("no leader: {e}")))?;
        Ok(())
    }

    /// Commits a write through Raft and returns its result.
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, ClusterError> {
        self.raft
            .client_write(cmd)
            .await
            .map(|r| r.data)
            .map_err(|e| ClusterError::Raft(e.to_string()))
    }

    /// Reads one object from the local state.
    pub fn get(&self, kind: &str, id: &str) -> Result<Option<Versioned>, ClusterError> {
        self.state
            .get(kind, id)
            .map_err(|e| ClusterError::Read(e.to_string()))
    }

    /// Reads every object of a kind from the local state.
    pub fn list(&self, kind: &str) -> Result<Vec<(String, Versioned)>, ClusterError> {
        self.state
            .list(kind)
            .map_err(|e| ClusterError::Read(e.to_string()))
    }

    /// Follows applied changes.
    pub fn subscribe(&self) -> broadcast::Receiver<ObjectEvent> {
        self.state.subscribe()
    }

    /// Stops the Raft node.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(id: &str, n: u64) -> Command {
        Command::Put {
            kind: "service".into(),
            id: id.into(),
            value: serde_json::json!({ "replicas": n }),
            expected_version: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_manager_commits_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = ClusterStore::open(dir.path(), 1, &Timings::default())
            .await
            .unwrap();
        store.bootstrap("127.0.0.1:4242").await.unwrap();
        let mut events = store.subscribe();
        let r = store.write(put("web", 3)).await.unwrap();
        let CommandResult::Applied(v) = r else {
            panic!("{r:?}")
        };
        assert_eq!(store.get("service", "web").unwrap().unwrap().version, v[0]);
        assert!(matches!(
            events.recv().await.unwrap(),
            ObjectEvent::Put { .. }
        ));
        let stale = Command::Put {
            kind: "service".into(),
            id: "web".into(),
            value: serde_json::json!({}),
            expected_version: Some(v[0] - 1),
        };
        assert!(matches!(
            store.write(stale).await.unwrap(),
            CommandResult::Conflict { .. }
        ));
        store.shutdown().await;
        drop(store);
        // openraft's tasks let go of the storage a moment after shutdown.
        let store = loop {
            match ClusterStore::open(dir.path(), 1, &Timings::default()).await {
                Ok(s) => break s,
                Err(e) if e.to_string().contains("already open") => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("{e}"),
            }
        };
        store.bootstrap("127.0.0.1:4242").await.unwrap();
        assert_eq!(
            store.get("service", "web").unwrap().unwrap().value["replicas"],
            3
        );
        store.write(put("db", 1)).await.unwrap();
        assert_eq!(store.list("service").unwrap().len(), 2);
        store.shutdown().await;
    }
}
