//! A manager's Raft node: openraft over our redb storage, with writes that return the
//! store's own result type and reads served from the local state machine. The network to
//! other managers is any [`RaftNetworkFactory`]: [`memnet`] joins managers inside one
//! process (the in-process cluster tests); the cluster port's gRPC transport arrives with
//! multi-host. [`NoPeers`] serves a one-manager cluster.

pub mod grpcnet;
pub mod memnet;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::ForwardToLeader;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Config, Raft, ServerState};
use tokio::sync::broadcast;

use crate::store::{
    Command, CommandResult, LogStore, Object, ObjectError, ObjectEvent, Snapshot, StateMachine,
    Stored, TypeConfig, Versioned, Watch, Write,
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
    /// An object did not encode, or a stored one does not decode.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// This manager leads, but too few managers have answered it lately for a write to
    /// commit: refused before it enters the log, so it can never apply later.
    #[error(
        "too few managers are reachable for a quorum (the last quorum answered {}s ago), \
         so the cluster takes no writes; reads still answer. Bring the other managers back, \
         or, if they are gone for good, run `shoal init --force-new-cluster` on this manager",
        .silent_ms / 1000
    )]
    NoQuorum {
        /// Milliseconds since a quorum last acknowledged this leader.
        silent_ms: u64,
    },
    /// A write entered the log but was not committed in time.
    #[error(
        "the write was not committed within {}s: too few managers may be reachable; it takes \
         effect if they return in time. Check `shoal node ls` and try again",
        .0.as_secs()
    )]
    Uncommitted(Duration),
    /// This manager does not lead; writes go to the leader.
    #[error("{}", not_leader_message(*.leader, .addr))]
    NotLeader {
        /// The leader's Raft id, if one is known.
        leader: Option<u64>,
        /// Its address, if known.
        addr: Option<String>,
    },
}

fn not_leader_message(leader: Option<u64>, addr: &Option<String>) -> String {
    match (leader, addr) {
        (Some(id), Some(addr)) => {
            format!("this manager is not the leader: manager {id} at {addr} is")
        }
        (Some(id), None) => format!("this manager is not the leader: manager {id} is"),
        _ => "no manager leads the cluster right now (an election is under way, or too few \
              managers are reachable for a quorum): try again in a moment"
            .to_string(),
    }
}

/// A Raft call's error: "not the leader" (with where it is), or what else went wrong.
fn raft_error<E>(e: RaftError<u64, E>) -> ClusterError
where
    E: openraft::TryAsRef<ForwardToLeader<u64, BasicNode>> + std::error::Error,
{
    match e.forward_to_leader::<BasicNode>() {
        Some(ForwardToLeader {
            leader_id,
            leader_node,
        }) => ClusterError::NotLeader {
            leader: *leader_id,
            addr: leader_node.as_ref().map(|n| n.addr.clone()),
        },
        None => ClusterError::Raft(e.to_string()),
    }
}

/// Raft timings. The defaults favour fast failover on a LAN: a follower that has heard
/// nothing from its leader for the lease (the election timeout's maximum) plus a random
/// election timeout, 300-400 ms in all, stands for election (Swarm's defaults wait 10 s and
/// more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
        Timings::from_election(Duration::from_millis(100))
    }
}

impl Timings {
    /// Timings from the election timeout's minimum: up to twice that, with heartbeats
    /// three times as often.
    pub fn from_election(min: Duration) -> Timings {
        Timings {
            heartbeat: (min / 3).max(Duration::from_millis(5)),
            election_min: min,
            election_max: min * 2,
        }
    }

    /// How long a leader may go without a quorum's answer before it counts as cut off
    /// from the cluster: a few election timeouts, so that one slow round trip is no alarm.
    pub fn quorum_window(&self) -> Duration {
        self.election_max * 5 + Duration::from_secs(1)
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
    quorum_window: Duration,
}

/// How long a write may wait to commit before its caller is told it did not.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the leader may take to confirm its leadership for a read.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

impl ClusterStore {
    /// Opens the store under `dir` (log and state in redb files) as node `id` of a
    /// one-manager cluster.
    pub async fn open(
        dir: &Path,
        id: u64,
        timings: &Timings,
    ) -> Result<ClusterStore, ClusterError> {
        Self::open_with(dir, id, timings, NoPeers).await
    }

    /// Opens the store under `dir` as node `id`, reaching other managers through `network`.
    pub async fn open_with<N>(
        dir: &Path,
        id: u64,
        timings: &Timings,
        network: N,
    ) -> Result<ClusterStore, ClusterError>
    where
        N: RaftNetworkFactory<TypeConfig>,
    {
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
            // An entry may carry a batch of hundreds of task writes: fewer per append keeps
            // one message well inside a heartbeat's worth of work on a follower.
            max_payload_entries: 16,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Raft(format!("invalid Raft timings: {e}")))?;
        let raft = Raft::new(id, Arc::new(config), network, log, state.clone())
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        Ok(ClusterStore {
            id,
            raft,
            state,
            quorum_window: timings.quorum_window(),
        })
    }

    /// This manager's Raft id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The Raft node, for the transport that delivers other managers' calls to it.
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// The leader as this node last heard, and its address.
    pub fn leader(&self) -> Option<(u64, String)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        Some((id, addr))
    }

    /// Whether this node leads now.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Follows this node's Raft state: yields whether it leads, at once and on every change.
    pub fn leadership(&self) -> tokio::sync::watch::Receiver<bool> {
        let mut metrics = self.raft.metrics();
        let (tx, rx) = tokio::sync::watch::channel(self.is_leader());
        tokio::spawn(async move {
            loop {
                let leads = metrics.borrow_and_update().state == ServerState::Leader;
                tx.send_if_modified(|v| std::mem::replace(v, leads) != leads);
                tokio::select! {
                    changed = metrics.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        rx
    }

    /// The managers that vote, and those that only follow the log.
    pub fn members(&self) -> (BTreeSet<u64>, BTreeSet<u64>) {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let learners = membership.learner_ids().collect();
        (voters, learners)
    }

    /// Every member (voter or learner) and its address.
    pub fn member_addrs(&self) -> Vec<(u64, String)> {
        let m = self.raft.metrics().borrow().clone();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }

    /// Adds manager `id` at `addr` as a learner and waits until it has caught up.
    pub async fn add_learner(&self, id: u64, addr: &str) -> Result<(), ClusterError> {
        self.raft
            .add_learner(
                id,
                BasicNode {
                    addr: addr.to_string(),
                },
                true,
            )
            .await
            .map_err(raft_error)?;
        Ok(())
    }

    /// Makes exactly `voters` the voting managers (learners already added).
    pub async fn set_voters(&self, voters: BTreeSet<u64>) -> Result<(), ClusterError> {
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(raft_error)?;
        Ok(())
    }

    /// Makes this node a one-manager cluster and waits until it leads; a node that belongs
    /// to a cluster already is left to its election.
    pub async fn bootstrap(&self, addr: &str) -> Result<(), ClusterError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        if initialized {
            // A member already: it leads again, or follows, as the election decides.
            return Ok(());
        }
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
        self.raft
            .wait(Some(Duration::from_secs(10)))
            .current_leader(self.id, "becoming the leader")
            .await
            .map_err(|e| ClusterError::Raft(format!("no leader: {e}")))?;
        Ok(())
    }

    /// Waits until some manager leads (this one or another), up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64, ClusterError> {
        let m = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .map_err(|e| ClusterError::Raft(format!("no leader: {e}")))?;
        m.current_leader
            .ok_or_else(|| ClusterError::Raft("no leader".into()))
    }

    /// Commits a write through Raft and returns its result.
    /// A leader that no quorum has answered within the quorum window refuses at once
    /// (openraft 0.9's leader does not step down by itself and would hold the write until
    /// its followers return); a write that does not commit in [`WRITE_TIMEOUT`] fails.
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, ClusterError> {
        self.refuse_without_quorum()?;
        match tokio::time::timeout(WRITE_TIMEOUT, self.raft.client_write(cmd)).await {
            Ok(r) => r.map(|r| r.data).map_err(raft_error),
            Err(_) => Err(ClusterError::Uncommitted(WRITE_TIMEOUT)),
        }
    }

    /// On the leader: confirms with a quorum that it still leads, and returns the log
    /// index that a read must see applied to reflect every write acknowledged before it
    /// (openraft's read index).
    pub async fn read_index(&self) -> Result<u64, ClusterError> {
        self.refuse_without_quorum()?;
        match tokio::time::timeout(READ_TIMEOUT, self.raft.get_read_log_id()).await {
            Ok(Ok((read, _))) => Ok(read.map(|l| l.index).unwrap_or(0)),
            Ok(Err(e)) => Err(raft_error(e)),
            Err(_) => Err(ClusterError::Raft(format!(
                "the leader could not confirm its leadership within {}s",
                READ_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Waits (up to `timeout`) until this manager has applied the log up to `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), ClusterError> {
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "a read index")
            .await
            .map(|_| ())
            .map_err(|e| ClusterError::Raft(e.to_string()))
    }

    fn refuse_without_quorum(&self) -> Result<(), ClusterError> {
        let silent_ms = {
            let m = self.raft.metrics();
            let m = m.borrow();
            if m.current_leader == Some(self.id) {
                m.millis_since_quorum_ack
            } else {
                None
            }
        };
        if let Some(silent_ms) = silent_ms
            && silent_ms > self.quorum_window.as_millis() as u64
        {
            return Err(ClusterError::NoQuorum { silent_ms });
        }
        Ok(())
    }

    /// Commits a typed write.
    pub async fn apply(&self, write: Write) -> Result<CommandResult, ClusterError> {
        self.write(write.encode()?).await
    }

    /// Commits typed writes as one all-or-none entry.
    pub async fn apply_all(&self, writes: &[Write]) -> Result<CommandResult, ClusterError> {
        match writes {
            [one] => self.apply(one.clone()).await,
            _ => self.write(Write::encode_batch(writes)?).await,
        }
    }

    /// Reads object `id` of kind `T` from the local state.
    pub fn get<T: Object>(&self, id: &str) -> Result<Option<Versioned<T>>, ClusterError> {
        Ok(self.state.get_typed(id)?)
    }

    /// Reads every object of kind `T` from the local state, in id order.
    pub fn list<T: Object>(&self) -> Result<Vec<Versioned<T>>, ClusterError> {
        Ok(self.state.list_typed()?)
    }

    /// One consistent read of every object of the registered kinds.
    pub fn snapshot(&self) -> Result<Snapshot, ClusterError> {
        Ok(self.state.snapshot()?)
    }

    /// Follows the changes of kind `T` from now on.
    pub fn watch<T: Object>(&self) -> Watch<T> {
        Watch::new(self.state.subscribe())
    }

    /// Reads one object as stored, of any kind (the store's own tests, and kinds no type
    /// is registered for).
    pub fn get_stored(&self, kind: &str, id: &str) -> Result<Option<Stored>, ClusterError> {
        Ok(self.state.get(kind, id)?)
    }

    /// Every object of a kind as stored, by id.
    pub fn list_stored(&self, kind: &str) -> Result<Vec<(String, Stored)>, ClusterError> {
        Ok(self.state.list(kind)?)
    }

    /// Every object of the local state as stored: (kind, id, object), to copy a whole
    /// state into a new cluster.
    pub fn export(&self) -> Result<Vec<(String, String, Stored)>, ClusterError> {
        Ok(self.state.all()?)
    }

    /// Writes objects as another store exported them, whatever is here (a forced new
    /// cluster starts from its old state).
    pub async fn import(&self, objects: Vec<(String, String, Stored)>) -> Result<(), ClusterError> {
        let commands: Vec<Command> = objects
            .into_iter()
            .map(|(kind, id, v)| Command::Put {
                kind,
                id,
                value: v.value,
                expected_version: None,
            })
            .collect();
        for chunk in commands.chunks(500) {
            self.write(Command::Batch {
                commands: chunk.to_vec(),
            })
            .await?;
        }
        Ok(())
    }

    /// Follows applied changes.
    pub fn subscribe(&self) -> broadcast::Receiver<ObjectEvent> {
        self.state.subscribe()
    }
}

/// Waits for the next change, then lets a burst of changes settle (`quiet` with none) and
/// takes them all at once: a reader that reads the whole store per wake-up does so once
/// per burst, not once per object. Returns false when the stream has ended.
pub async fn next_changes(events: &mut broadcast::Receiver<ObjectEvent>, quiet: Duration) -> bool {
    use broadcast::error::{RecvError, TryRecvError};
    if let Err(RecvError::Closed) = events.recv().await {
        return false;
    }
    loop {
        tokio::time::sleep(quiet).await;
        let mut any = false;
        loop {
            match events.try_recv() {
                Ok(_) | Err(TryRecvError::Lagged(_)) => any = true,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => return false,
            }
        }
        if !any {
            return true;
        }
    }
}

/// Drops the changes already queued (the reader is about to read everything anyway).
pub fn skip_changes(events: &mut broadcast::Receiver<ObjectEvent>) {
    while let Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) = events.try_recv() {}
}

impl ClusterStore {
    /// Stops the Raft node.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
