//! Raft between managers over the cluster port: each message is the JSON of openraft's own
//! type in a gRPC call, over mutual TLS with this manager's certificate. Until the node has
//! a certificate (a one-manager cluster before its CA exists) every peer is unreachable,
//! which a cluster of one never notices.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_api::raft as pr;
use shoal_api::raft::raft_client::RaftClient;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Response, Status};

use crate::store::TypeConfig;

/// A Raft client of the leader at an address.
type ReaderLink = (String, RaftClient<Channel>);

/// The client TLS settings every link uses, once the node has its certificate.
#[derive(Clone, Default)]
pub struct GrpcNet {
    tls: Arc<RwLock<Option<ClientTlsConfig>>>,
    /// When each manager last answered (a leader hears its followers with every
    /// heartbeat).
    heard: Arc<Mutex<HashMap<u64, Instant>>>,
    /// The managers whose last call failed: a link's going down and coming back is
    /// logged once each (openraft's own per-retry lines are filtered out by default).
    down: Arc<Mutex<HashSet<u64>>>,
    /// The link reads ask the leader's read index over, kept while the leader stays.
    reader: Arc<Mutex<Option<ReaderLink>>>,
}

impl GrpcNet {
    /// A network with no certificate yet.
    pub fn new() -> GrpcNet {
        GrpcNet::default()
    }

    /// Sets (or renews) the certificate links present.
    pub fn set_tls(&self, tls: ClientTlsConfig) {
        *self.tls.write().unwrap_or_else(|e| e.into_inner()) = Some(tls);
        *self.reader.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Asks the leader at `addr` for its read index (see
    /// [`crate::cluster::ClusterStore::read_index`]). The error says whether trying again
    /// may help (the leader unreachable or changing) or not (it has no quorum).
    pub async fn read_index(&self, addr: &str) -> Result<u64, (bool, String)> {
        let cached = self
            .reader
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|(a, _)| a == addr)
            .map(|(_, c)| c.clone());
        let mut client = match cached {
            Some(c) => c,
            None => {
                let tls = self
                    .tls()
                    .ok_or((true, "this node has no cluster certificate yet".to_string()))?;
                let endpoint = Endpoint::from_shared(format!("https://{addr}"))
                    .map_err(|e| (false, e.to_string()))?
                    .tls_config(tls)
                    .map_err(|e| (false, e.to_string()))?
                    .connect_timeout(Duration::from_millis(500))
                    .tcp_nodelay(true);
                let c = RaftClient::new(endpoint.connect_lazy())
                    .max_decoding_message_size(shoal_api::MAX_MESSAGE)
                    .max_encoding_message_size(shoal_api::MAX_MESSAGE);
                *self.reader.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((addr.to_string(), c.clone()));
                c
            }
        };
        match tokio::time::timeout(
            Duration::from_secs(3),
            client.read_index(pr::ReadIndexRequest {}),
        )
        .await
        {
            Ok(Ok(r)) => Ok(r.into_inner().index),
            Ok(Err(status)) => {
                *self.reader.lock().unwrap_or_else(|e| e.into_inner()) = None;
                let again = status.code() != tonic::Code::FailedPrecondition;
                Err((again, status.message().to_string()))
            }
            Err(_) => {
                *self.reader.lock().unwrap_or_else(|e| e.into_inner()) = None;
                Err((
                    true,
                    format!("the leader at {addr} did not answer within 3s"),
                ))
            }
        }
    }

    fn tls(&self) -> Option<ClientTlsConfig> {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn note(&self, target: u64, addr: &str, failure: Option<&LinkError>) {
        let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        match failure {
            None => {
                self.heard
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(target, Instant::now());
                if down.remove(&target) {
                    tracing::info!("manager {target} at {addr} answers again");
                }
            }
            Some(e) => {
                if down.insert(target) {
                    tracing::warn!("lost the link to {e}");
                }
            }
        }
    }

    /// Whether manager `id` answered a Raft message within `window`.
    pub fn heard_within(&self, id: u64, window: Duration) -> bool {
        self.heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .is_some_and(|t| t.elapsed() <= window)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct LinkError(String);

impl RaftNetworkFactory<TypeConfig> for GrpcNet {
    type Network = GrpcLink;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> GrpcLink {
        let mut link = GrpcLink {
            target,
            addr: node.addr.clone(),
            net: self.clone(),
            client: None,
        };
        // Connect (TCP and TLS) now, so that the first message does not spend its time
        // limit, a heartbeat interval, on the handshake.
        link.connect().await;
        link
    }
}

/// A link to one manager; it connects on first use and again after a failure.
pub struct GrpcLink {
    target: u64,
    addr: String,
    net: GrpcNet,
    client: Option<RaftClient<Channel>>,
}

impl GrpcLink {
    async fn connect(&mut self) {
        let Some(tls) = self.net.tls() else { return };
        let Ok(endpoint) = Endpoint::from_shared(format!("https://{}", self.addr)) else {
            return;
        };
        let Ok(endpoint) = endpoint.tls_config(tls) else {
            return;
        };
        let endpoint = endpoint
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5));
        if let Ok(Ok(channel)) =
            tokio::time::timeout(Duration::from_millis(500), endpoint.connect()).await
        {
            self.client = Some(
                RaftClient::new(channel)
                    .max_decoding_message_size(shoal_api::MAX_MESSAGE)
                    .max_encoding_message_size(shoal_api::MAX_MESSAGE),
            );
        }
    }

    fn client(&mut self) -> Result<RaftClient<Channel>, LinkError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let tls = self.net.tls().ok_or_else(|| {
            LinkError(format!(
                "manager {} at {}: this node has no cluster certificate yet",
                self.target, self.addr
            ))
        })?;
        let endpoint = Endpoint::from_shared(format!("https://{}", self.addr))
            .map_err(|e| LinkError(format!("manager address {}: {e}", self.addr)))?
            .tls_config(tls)
            .map_err(|e| LinkError(e.to_string()))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5));
        let client = RaftClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(shoal_api::MAX_MESSAGE)
            .max_encoding_message_size(shoal_api::MAX_MESSAGE);
        self.client = Some(client.clone());
        Ok(client)
    }

    /// One call: the request's JSON out, the remote result's JSON back.
    async fn call<Q, A, E>(
        &mut self,
        which: Which,
        rpc: &Q,
        option: &RPCOption,
    ) -> Result<Result<A, E>, LinkError>
    where
        Q: Serialize,
        A: DeserializeOwned,
        E: DeserializeOwned,
    {
        let json = serde_json::to_vec(rpc).map_err(|e| LinkError(e.to_string()))?;
        let reply = self.exchange(which, json, option).await;
        self.net.note(self.target, &self.addr, reply.as_ref().err());
        serde_json::from_slice(&reply?.json).map_err(|e| LinkError(e.to_string()))
    }

    async fn exchange(
        &mut self,
        which: Which,
        json: Vec<u8>,
        option: &RPCOption,
    ) -> Result<pr::RaftMessage, LinkError> {
        let mut client = self.client()?;
        // A large append (a follower catching up on batches of task writes) gets time in
        // proportion: a second plus one per 4 MiB.
        let size_allowance = Duration::from_secs((json.len() >> 22) as u64);
        let msg = pr::RaftMessage { json };
        let call = async {
            match which {
                Which::Append => client.append_entries(msg).await,
                Which::Vote => client.vote(msg).await,
                Which::Snapshot => client.install_snapshot(msg).await,
            }
        };
        // A first call also makes the TLS connection, which takes longer than a heartbeat
        // interval; a slow answer only delays this link, elections keep their own timers.
        let ttl = option.hard_ttl().max(Duration::from_secs(1)) + size_allowance;
        let reply = match tokio::time::timeout(ttl, call).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => {
                self.client = None;
                return Err(LinkError(format!(
                    "manager {} at {}: {}",
                    self.target,
                    self.addr,
                    status.message()
                )));
            }
            Err(_) => {
                return Err(LinkError(format!(
                    "manager {} at {}: no answer within {:?}",
                    self.target, self.addr, ttl
                )));
            }
        };
        Ok(reply)
    }
}

#[derive(Clone, Copy)]
enum Which {
    Append,
    Vote,
    Snapshot,
}

type Rpc<T, E = RaftError<u64>> = Result<T, RPCError<u64, BasicNode, E>>;

impl RaftNetwork<TypeConfig> for GrpcLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<u64>> {
        match self.call(Which::Append, &rpc, &option).await {
            Ok(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            Err(e) => Err(RPCError::Unreachable(Unreachable::new(&e))),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> {
        match self.call(Which::Snapshot, &rpc, &option).await {
            Ok(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<u64>, option: RPCOption) -> Rpc<VoteResponse<u64>> {
        match self.call(Which::Vote, &rpc, &option).await {
            Ok(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            Err(e) => Err(RPCError::Unreachable(Unreachable::new(&e))),
        }
    }
}

/// The receiving side: hands each message to the local Raft node and returns its result.
pub async fn deliver<Q, A, E, F, Fut>(
    raft: &Raft<TypeConfig>,
    msg: pr::RaftMessage,
    f: F,
) -> Result<Response<pr::RaftMessage>, Status>
where
    Q: DeserializeOwned,
    A: Serialize,
    E: Serialize,
    F: FnOnce(Raft<TypeConfig>, Q) -> Fut,
    Fut: std::future::Future<Output = Result<A, E>>,
{
    let rpc: Q = serde_json::from_slice(&msg.json)
        .map_err(|e| Status::invalid_argument(format!("unreadable Raft message: {e}")))?;
    let result = f(raft.clone(), rpc).await;
    let json = serde_json::to_vec(&result).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(pr::RaftMessage { json }))
}
