//! Managers in one process, joined by direct calls: the Raft network of the in-process
//! cluster tests. A manager can be cut off from the others (its calls out and the calls to
//! it fail as unreachable) and healed again, as a network partition would.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};

use crate::store::TypeConfig;

#[derive(Default)]
struct Routes {
    nodes: HashMap<u64, Raft<TypeConfig>>,
    cut: HashSet<u64>,
}

/// The switchboard every manager of the process is plugged into.
#[derive(Clone, Default)]
pub struct MemNet {
    routes: Arc<Mutex<Routes>>,
}

#[derive(Debug, thiserror::Error)]
#[error("manager {0} is unreachable")]
struct Unplugged(u64);

impl MemNet {
    /// A switchboard with nobody on it.
    pub fn new() -> MemNet {
        MemNet::default()
    }

    fn routes(&self) -> MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Plugs manager `id` in: calls to `id` reach `raft`.
    pub fn plug(&self, id: u64, raft: Raft<TypeConfig>) {
        self.routes().nodes.insert(id, raft);
    }

    /// Unplugs manager `id` (it stopped).
    pub fn unplug(&self, id: u64) {
        self.routes().nodes.remove(&id);
    }

    /// Cuts manager `id` off: nothing reaches it and nothing leaves it.
    pub fn cut(&self, id: u64) {
        self.routes().cut.insert(id);
    }

    /// Heals a cut.
    pub fn heal(&self, id: u64) {
        self.routes().cut.remove(&id);
    }

    /// The Raft node `to` if a call from `from` can reach it.
    fn route(&self, from: u64, to: u64) -> Result<Raft<TypeConfig>, Unplugged> {
        let routes = self.routes();
        if routes.cut.contains(&from) || routes.cut.contains(&to) {
            return Err(Unplugged(to));
        }
        routes.nodes.get(&to).cloned().ok_or(Unplugged(to))
    }

    /// The network factory for manager `id`.
    pub fn endpoint(&self, id: u64) -> MemEndpoint {
        MemEndpoint {
            net: self.clone(),
            from: id,
        }
    }
}

/// One manager's side of the switchboard.
#[derive(Clone)]
pub struct MemEndpoint {
    net: MemNet,
    from: u64,
}

impl RaftNetworkFactory<TypeConfig> for MemEndpoint {
    type Network = MemLink;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> MemLink {
        MemLink {
            net: self.net.clone(),
            from: self.from,
            to: target,
        }
    }
}

/// A link from one manager to another.
pub struct MemLink {
    net: MemNet,
    from: u64,
    to: u64,
}

type Rpc<T, E = RaftError<u64>> = Result<T, RPCError<u64, BasicNode, E>>;

impl RaftNetwork<TypeConfig> for MemLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<u64>> {
        let raft = self
            .net
            .route(self.from, self.to)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        raft.append_entries(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> {
        let raft = self
            .net
            .route(self.from, self.to)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        raft.install_snapshot(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }

    async fn vote(&mut self, rpc: VoteRequest<u64>, _option: RPCOption) -> Rpc<VoteResponse<u64>> {
        let raft = self
            .net
            .route(self.from, self.to)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        raft.vote(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }
}
