//! The embedded DNS server every container on a user network sees at 127.0.0.11. It
//! answers for the names the cluster knows (services, `tasks.NAME`, containers) and
//! forwards every other question to the host's resolvers.
//!
//! Its two sockets (UDP and TCP) are made on a thread inside the container's network
//! namespace and then served by tasks on the shared runtime; a socket keeps the namespace
//! it was made in. The sockets that talk to the upstreams are made by those tasks, on the
//! runtime's threads, i.e. in the daemon's namespace, so a host resolver on the host's
//! loopback (systemd-resolved's 127.0.0.53) is reachable.
//!
//! A container is untrusted: no packet may panic the server, every wait has a deadline and
//! the work a container can start (forwards, TCP connections) is bounded.

use std::hash::BuildHasher;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::TryStreamExt;
use hickory_proto::op::{Edns, Message, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use rtnetlink::LinkUnspec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;

/// Where containers on user networks send their questions.
pub const CONTAINER_DNS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11)), 53);

/// TTL of the answers for cluster names. Docker uses 600 s; ours change whenever a
/// service scales or a task moves, and asking again costs next to nothing (the server is
/// on the container's own loopback). With 5 s, a client that caches by TTL (nginx's
/// `resolver`, a JVM) stops sending traffic to a removed task within seconds, not minutes.
const CLUSTER_TTL: u32 = 5;
/// How long one upstream gets to answer before the next is tried.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Forwards in flight per server; beyond it a question gets SERVFAIL at once.
const MAX_FORWARDS: usize = 64;
/// Open TCP connections per server; beyond it new ones are closed.
const MAX_TCP_CONNECTIONS: usize = 64;
/// A TCP client that sends nothing for this long is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// The largest UDP answer we send, whatever the client's EDNS says.
const MAX_UDP_PAYLOAD: u16 = 4096;
/// The length of a DNS header.
const HEADER_LEN: usize = 12;
/// The header's query/response bit (in its third byte).
const QR_BIT: u8 = 0x80;

/// What a container may resolve.
pub trait Resolver: Send + Sync + 'static {
    /// The addresses of `name` (lowercased, without the trailing dot) if the cluster knows
    /// it, in any order; `None` if it does not, and the question is forwarded.
    fn lookup(&self, name: &str) -> Option<Vec<Ipv4Addr>>;
}

/// Errors of starting the DNS server, worded for users.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// Called outside the daemon's async runtime: a bug.
    #[error("the DNS server must be started from inside the daemon's tokio runtime")]
    NoRuntime,
    /// A socket could not be bound.
    #[error("cannot serve DNS on {addr} ({protocol}){place}: {source}{hint}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// udp or tcp.
        protocol: &'static str,
        /// " in network namespace PATH", or empty.
        place: String,
        /// What to do about it, or empty.
        hint: &'static str,
        /// The kernel's answer.
        source: io::Error,
    },
    /// The namespace's loopback could not be brought up.
    #[error(
        "cannot bring up the loopback interface in network namespace {path} for the DNS server: {reason}"
    )]
    Loopback {
        /// The namespace file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
}

/// A running DNS server. Dropping it stops serving and closes its sockets shortly after;
/// [`DnsServer::stop`] waits until they are closed.
#[derive(Debug)]
pub struct DnsServer {
    local_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Serves inside the network namespace at `netns` on 127.0.0.11:53 (UDP and TCP),
    /// bringing the namespace's loopback up if it is down. Must be called from inside the
    /// tokio runtime; it blocks for as long as making the sockets takes.
    pub fn start(
        netns: &Path,
        resolver: Arc<dyn Resolver>,
        upstreams: Vec<SocketAddr>,
    ) -> Result<DnsServer, DnsError> {
        Self::start_at(CONTAINER_DNS, Some(netns), resolver, upstreams)
    }

    /// Serves on `addr` (UDP and TCP, on the same port; port 0 picks one), inside the
    /// network namespace at `netns` or in the caller's. Must be called from inside the
    /// tokio runtime.
    pub fn start_at(
        addr: SocketAddr,
        netns: Option<&Path>,
        resolver: Arc<dyn Resolver>,
        upstreams: Vec<SocketAddr>,
    ) -> Result<DnsServer, DnsError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| DnsError::NoRuntime)?;
        let (udp, tcp) = match netns {
            None => bind_pair(addr).map_err(|e| e.into_error(addr, None))?,
            Some(path) => {
                let inside = path.to_path_buf();
                crate::netns::run_in(path, move || bind_in_namespace(addr, &inside))??
            }
        };
        let failed =
            |protocol| move |source| BindFailure { protocol, source }.into_error(addr, netns);
        let local_addr = udp.local_addr().map_err(failed("udp"))?;
        // Registering the sockets with the runtime needs its context.
        let _entered = runtime.enter();
        let udp = UdpSocket::from_std(udp).map_err(failed("udp"))?;
        let tcp = TcpListener::from_std(tcp).map_err(failed("tcp"))?;
        let shared = Arc::new(Shared {
            resolver,
            upstreams,
            rotation: AtomicUsize::new(0),
            forwards: Arc::new(Semaphore::new(MAX_FORWARDS)),
        });
        let tasks = vec![
            runtime.spawn(serve_udp(udp, shared.clone())),
            runtime.spawn(serve_tcp(tcp, shared)),
        ];
        Ok(DnsServer { local_addr, tasks })
    }

    /// The address it serves on (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving and returns once the sockets are closed.
    pub async fn stop(mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks.drain(..) {
            // A cancelled task has dropped its sockets by the time its handle resolves.
            let _ = task.await;
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The host's resolvers from a resolv.conf text: its `nameserver` lines, port 53, in
/// order, without 127.0.0.11 (that would be ourselves) and without repeats.
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut upstreams = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        // A link-local address with a zone (fe80::1%eth0) does not parse and is skipped:
        // it names an interface of the host, useless from elsewhere.
        let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        let upstream = SocketAddr::new(ip, 53);
        if upstream != CONTAINER_DNS && !upstreams.contains(&upstream) {
            upstreams.push(upstream);
        }
    }
    upstreams
}

/// The resolv.conf a container on user networks gets: `nameserver 127.0.0.11`, and the
/// host's `search`/`domain` and `options` lines (ndots, timeout, edns0...) kept as they are.
pub fn container_resolv_conf(host_text: &str) -> String {
    let mut out = String::from(
        "# Made by shoal: the embedded DNS server answers for the cluster's names\n\
         # and forwards the others to the host's resolvers.\n",
    );
    out.push_str(&format!("nameserver {}\n", CONTAINER_DNS.ip()));
    for line in host_text.lines() {
        let line = line.trim();
        if matches!(
            line.split_whitespace().next(),
            Some("search" | "domain" | "options")
        ) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Why binding failed, before we know where we were.
struct BindFailure {
    protocol: &'static str,
    source: io::Error,
}

impl BindFailure {
    fn into_error(self, addr: SocketAddr, netns: Option<&Path>) -> DnsError {
        let hint = match self.source.kind() {
            io::ErrorKind::AddrInUse => "; stop what listens there",
            io::ErrorKind::AddrNotAvailable => "; no interface there has that address",
            io::ErrorKind::PermissionDenied => {
                "; ports below 1024 need root or CAP_NET_BIND_SERVICE"
            }
            _ => "",
        };
        DnsError::Bind {
            addr,
            protocol: self.protocol,
            place: netns.map_or_else(String::new, |p| {
                format!(" in network namespace {}", p.display())
            }),
            hint,
            source: self.source,
        }
    }
}

/// Binds on a thread inside the namespace at `path`. For a loopback address, lo is brought
/// up first: it starts down in a new namespace, and while it is down the kernel lets
/// 127.0.0.11 be bound yet unreachable ("network is unreachable"). Setting an up link up
/// changes nothing.
fn bind_in_namespace(
    addr: SocketAddr,
    path: &Path,
) -> Result<(std::net::UdpSocket, std::net::TcpListener), DnsError> {
    if addr.ip().is_loopback() {
        bring_loopback_up().map_err(|reason| DnsError::Loopback {
            path: path.to_path_buf(),
            reason,
        })?;
    }
    bind_pair(addr).map_err(|e| e.into_error(addr, Some(path)))
}

/// Brings up `lo` in the calling thread's namespace. Runs on a namespace thread, which is
/// no worker of the shared runtime, so it gets a small runtime of its own for netlink.
fn bring_loopback_up() -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("starting a runtime: {e}"))?;
    runtime.block_on(async {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| format!("opening netlink: {e}"))?;
        tokio::spawn(connection);
        let lo = handle
            .link()
            .get()
            .match_name(String::from("lo"))
            .execute()
            .try_next()
            .await
            .map_err(|e| format!("finding lo: {e}"))?
            .ok_or("the namespace has no lo interface")?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(lo.header.index).up().build())
            .execute()
            .await
            .map_err(|e| format!("setting lo up: {e}"))
    })
}

/// Binds UDP on `addr` and TCP on the same address and port, nonblocking.
fn bind_pair(
    addr: SocketAddr,
) -> Result<(std::net::UdpSocket, std::net::TcpListener), BindFailure> {
    let udp_failure = |source| BindFailure {
        protocol: "udp",
        source,
    };
    let tcp_failure = |source| BindFailure {
        protocol: "tcp",
        source,
    };
    // With port 0 the kernel picks a UDP port whose TCP twin may be taken: pick again.
    let attempts = if addr.port() == 0 { 16 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = std::net::UdpSocket::bind(addr).map_err(udp_failure)?;
        let bound = udp.local_addr().map_err(udp_failure)?;
        match std::net::TcpListener::bind(bound) {
            Ok(tcp) => {
                udp.set_nonblocking(true).map_err(udp_failure)?;
                tcp.set_nonblocking(true).map_err(tcp_failure)?;
                return Ok((udp, tcp));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(tcp_failure(last.unwrap_or_else(|| {
        io::Error::from(io::ErrorKind::AddrInUse)
    })))
}

/// How a question came in: it bounds the size of our answer, and a truncated upstream
/// answer is worth asking again over TCP only for a TCP client (a UDP client gets the
/// truncated answer and comes back over TCP itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// What to do with a packet.
enum Handling {
    /// Send this back.
    Reply(Vec<u8>),
    /// Ask the upstreams (the parsed question, for the SERVFAIL if they fail).
    Forward(Message),
    /// Send nothing.
    Ignore,
}

/// What the serving tasks of one server share.
struct Shared {
    resolver: Arc<dyn Resolver>,
    upstreams: Vec<SocketAddr>,
    /// Turns the order of multi-address answers, one step per answer.
    rotation: AtomicUsize,
    forwards: Arc<Semaphore>,
}

impl Shared {
    /// Decides what to do with a packet from a container. The parser is a library fed
    /// untrusted bytes, so a panic in it is contained here: the packet is dropped.
    fn handle(&self, packet: &[u8], transport: Transport) -> Handling {
        std::panic::catch_unwind(AssertUnwindSafe(|| self.handle_packet(packet, transport)))
            .unwrap_or(Handling::Ignore)
    }

    fn handle_packet(&self, packet: &[u8], transport: Transport) -> Handling {
        if packet.len() < HEADER_LEN || packet[2] & QR_BIT != 0 {
            // Too short to answer, or an answer itself: replying to answers could make two
            // servers bounce packets forever.
            return Handling::Ignore;
        }
        let Ok(query) = Message::from_vec(packet) else {
            return Handling::Reply(header_reply(packet, ResponseCode::FormErr));
        };
        if query.metadata.op_code != OpCode::Query {
            return Handling::Reply(header_reply(packet, ResponseCode::NotImp));
        }
        let [question] = query.queries.as_slice() else {
            return Handling::Reply(header_reply(packet, ResponseCode::FormErr));
        };
        if question.query_class() != DNSClass::IN {
            return Handling::Forward(query);
        }
        let Some(addresses) = cluster_name(question.name()).and_then(|n| self.resolver.lookup(&n))
        else {
            return Handling::Forward(query);
        };
        let mut response = response_to(&query, ResponseCode::NoError);
        response.metadata.authoritative = true;
        // Other types of a known name get NODATA (no answers, NOERROR): NXDOMAIN would
        // tell the client's resolver that the A record does not exist either.
        if matches!(question.query_type(), RecordType::A | RecordType::ANY) && !addresses.is_empty()
        {
            let first = self.rotation.fetch_add(1, Ordering::Relaxed) % addresses.len();
            let rotated = addresses[first..].iter().chain(&addresses[..first]);
            for ip in rotated {
                // The question's own spelling, so clients that randomise case still match.
                response.add_answer(Record::from_rdata(
                    question.name().clone(),
                    CLUSTER_TTL,
                    RData::A(A(*ip)),
                ));
            }
        }
        Handling::Reply(encode(&response, packet, answer_limit(&query, transport)))
    }

    /// Asks the upstreams in turn and returns the answer to relay, with the client's id.
    /// An upstream that fails or refuses passes the question to the next one.
    async fn forward(&self, packet: &[u8], query: &Message, transport: Transport) -> Vec<u8> {
        let mut refusal = None;
        for &upstream in &self.upstreams {
            let id = random_id();
            let mut out = packet.to_vec();
            out[..2].copy_from_slice(&id.to_be_bytes());
            let reply = match ask_upstream(upstream, &out, id, transport).await {
                Ok(reply) => reply,
                Err(e) => {
                    tracing::debug!(%upstream, "forwarding a DNS question failed: {e}");
                    continue;
                }
            };
            let mut reply = reply;
            reply[..2].copy_from_slice(&packet[..2]);
            let rcode = reply[3] & 0x0f;
            if rcode == ResponseCode::ServFail.low() || rcode == ResponseCode::Refused.low() {
                refusal = Some(reply);
                continue;
            }
            return reply;
        }
        refusal.unwrap_or_else(|| {
            let failure = response_to(query, ResponseCode::ServFail);
            encode(&failure, packet, answer_limit(query, transport))
        })
    }

    /// A slot for one more forward, or `None` when too many are in flight.
    fn forward_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.forwards.clone().try_acquire_owned().ok()
    }

    /// The answer when no forward slot is free: SERVFAIL at once, so the client tries
    /// again instead of waiting for its timeout.
    fn busy(&self, packet: &[u8], query: &Message, transport: Transport) -> Vec<u8> {
        tracing::debug!("too many DNS forwards in flight; answering SERVFAIL");
        let failure = response_to(query, ResponseCode::ServFail);
        encode(&failure, packet, answer_limit(query, transport))
    }
}

/// Serves UDP until aborted; the forwards in flight are aborted with it.
async fn serve_udp(socket: UdpSocket, shared: Arc<Shared>) {
    let socket = Arc::new(socket);
    let mut forwards = JoinSet::new();
    let mut buf = vec![0u8; usize::from(MAX_UDP_PAYLOAD)];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (len, client) = match received {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!("receiving a DNS question: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let packet = &buf[..len];
                match shared.handle(packet, Transport::Udp) {
                    Handling::Reply(reply) => {
                        let _ = socket.send_to(&reply, client).await;
                    }
                    Handling::Ignore => {}
                    Handling::Forward(query) => {
                        let Some(slot) = shared.forward_slot() else {
                            let reply = shared.busy(packet, &query, Transport::Udp);
                            let _ = socket.send_to(&reply, client).await;
                            continue;
                        };
                        let packet = packet.to_vec();
                        let (shared, socket) = (shared.clone(), socket.clone());
                        forwards.spawn(async move {
                            let reply = shared.forward(&packet, &query, Transport::Udp).await;
                            let _ = socket.send_to(&reply, client).await;
                            drop(slot);
                        });
                    }
                }
            }
            Some(_) = forwards.join_next(), if !forwards.is_empty() => {}
        }
    }
}

/// Serves TCP until aborted; the open connections are closed with it.
async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::debug!("accepting a DNS connection: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                // Over the limit, the connection is closed as it is dropped.
                let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
                let shared = shared.clone();
                connections.spawn(async move {
                    serve_connection(stream, &shared).await;
                    drop(slot);
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Answers length-prefixed questions on one connection until it closes, idles or
/// misbehaves.
async fn serve_connection(mut stream: TcpStream, shared: &Shared) {
    loop {
        let Ok(Ok(len)) = timeout(TCP_IDLE, stream.read_u16()).await else {
            return;
        };
        let mut packet = vec![0u8; usize::from(len)];
        let Ok(Ok(_)) = timeout(TCP_IDLE, stream.read_exact(&mut packet)).await else {
            return;
        };
        let reply = match shared.handle(&packet, Transport::Tcp) {
            Handling::Reply(reply) => reply,
            Handling::Forward(query) => match shared.forward_slot() {
                Some(_slot) => shared.forward(&packet, &query, Transport::Tcp).await,
                None => shared.busy(&packet, &query, Transport::Tcp),
            },
            Handling::Ignore => return,
        };
        let Ok(len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&reply);
        if !matches!(
            timeout(TCP_IDLE, stream.write_all(&framed)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}

/// One upstream's answer, each step within [`UPSTREAM_TIMEOUT`]: over UDP, then over TCP
/// if the UDP answer was truncated and the client is on TCP.
async fn ask_upstream(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    transport: Transport,
) -> io::Result<Vec<u8>> {
    let reply = timeout(UPSTREAM_TIMEOUT, ask_upstream_udp(upstream, query, id))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer over UDP"))??;
    let truncated = reply[2] & 0x02 != 0;
    if !truncated || transport == Transport::Udp {
        return Ok(reply);
    }
    timeout(UPSTREAM_TIMEOUT, ask_upstream_tcp(upstream, query, id))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer over TCP"))?
}

async fn ask_upstream_udp(upstream: SocketAddr, query: &[u8], id: u16) -> io::Result<Vec<u8>> {
    // A fresh socket per question: a random source port, and only the upstream's
    // packets reach a connected socket.
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    loop {
        let len = socket.recv(&mut buf).await?;
        if is_answer_to(&buf[..len], id) {
            buf.truncate(len);
            return Ok(buf);
        }
    }
}

async fn ask_upstream_tcp(upstream: SocketAddr, query: &[u8], id: u16) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    let len = u16::try_from(query.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "question too long"))?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await?;
    let mut reply = vec![0u8; usize::from(len)];
    stream.read_exact(&mut reply).await?;
    if is_answer_to(&reply, id) {
        Ok(reply)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the answer does not match the question",
        ))
    }
}

fn is_answer_to(reply: &[u8], id: u16) -> bool {
    reply.len() >= HEADER_LEN && reply[..2] == id.to_be_bytes() && reply[2] & QR_BIT != 0
}

/// The cluster's spelling of a name: lowercased labels joined by dots, no trailing dot.
/// `None` for names the cluster cannot hold (the root, a label with a dot or non-UTF-8).
fn cluster_name(name: &Name) -> Option<String> {
    let mut out = String::new();
    for label in name.iter() {
        let label = std::str::from_utf8(label).ok()?;
        if label.is_empty() || label.contains('.') {
            return None;
        }
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(&label.to_ascii_lowercase());
    }
    (!out.is_empty()).then_some(out)
}

/// A response to `query` with its question, id, RD and CD bits, and an EDNS record if
/// the query had one.
fn response_to(query: &Message, code: ResponseCode) -> Message {
    let mut metadata = Metadata::response_from_request(&query.metadata);
    metadata.response_code = code;
    metadata.recursion_available = true;
    let mut response = Message::new(metadata.id, metadata.message_type, metadata.op_code);
    response.metadata = metadata;
    response.add_queries(query.queries.iter().cloned());
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD);
        response.set_edns(edns);
    }
    response
}

/// The largest answer the client takes: 512 bytes over UDP unless its EDNS says more.
fn answer_limit(query: &Message, transport: Transport) -> usize {
    match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => query.edns.as_ref().map_or(512, |edns| {
            usize::from(edns.max_payload().clamp(512, MAX_UDP_PAYLOAD))
        }),
    }
}

/// The wire form of `response`, truncated (TC set, answers dropped) if over `limit` so
/// the client asks again over TCP.
fn encode(response: &Message, packet: &[u8], limit: usize) -> Vec<u8> {
    let encoded = match response.to_vec() {
        Ok(bytes) if bytes.len() <= limit => Ok(bytes),
        Ok(_) => response.truncate().to_vec(),
        Err(e) => Err(e),
    };
    encoded.unwrap_or_else(|_| header_reply(packet, ResponseCode::ServFail))
}

/// A bare header answering `packet` (at least a header long) with `code`: for questions
/// that cannot be parsed, so no question can be echoed.
fn header_reply(packet: &[u8], code: ResponseCode) -> Vec<u8> {
    let mut reply = vec![0u8; HEADER_LEN];
    reply[..2].copy_from_slice(&packet[..2]);
    // QR, the query's opcode and RD; RA; the code (only its low four bits fit a header).
    reply[2] = QR_BIT | (packet[2] & 0x79);
    reply[3] = 0x80 | (code.low() & 0x0f);
    reply
}

/// An unpredictable query id for the upstreams (no id-guessing from a container).
fn random_id() -> u16 {
    // Each RandomState has fresh keys (random per thread, then stepped), and SipHash
    // under a secret key is unpredictable enough for 16 bits.
    std::collections::hash_map::RandomState::new().hash_one(0u8) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_from_resolv_conf_keeps_nameservers_in_order() {
        let text = "# comment\nnameserver 10.0.0.2\nsearch corp.example\n\
                    nameserver   2001:db8::1  \nnameserver 127.0.0.11\nnameserver 10.0.0.2\n\
                    nameserver fe80::1%eth0\nnameserver bogus\nnameserver\n\
                    ; nameserver 10.9.9.9\nnameserver 127.0.0.53\noptions ndots:2\n";
        assert_eq!(
            upstreams_from_resolv_conf(text),
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:53".parse().unwrap(),
                "127.0.0.53:53".parse().unwrap(),
            ]
        );
        assert!(upstreams_from_resolv_conf("").is_empty());
        assert!(upstreams_from_resolv_conf("nameserver 127.0.0.11\n").is_empty());
    }

    #[test]
    fn container_resolv_conf_points_at_us_and_keeps_search_and_options() {
        let host = "nameserver 127.0.0.53\n# a comment\nsearch corp.example lab.example\n\
                    options ndots:3 timeout:1\nsortlist 10.0.0.0/255.0.0.0\n  options edns0\n";
        let conf = container_resolv_conf(host);
        let lines: Vec<&str> = conf.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            vec![
                "nameserver 127.0.0.11",
                "search corp.example lab.example",
                "options ndots:3 timeout:1",
                "options edns0",
            ]
        );
        let bare = container_resolv_conf("");
        assert_eq!(
            bare.lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>(),
            vec!["nameserver 127.0.0.11"]
        );
        assert_eq!(upstreams_from_resolv_conf(&conf), vec![]);
    }

    use std::collections::HashMap;
    use std::time::Instant;

    use hickory_proto::op::Query;
    use proptest::prelude::*;

    struct Cluster(HashMap<String, Vec<Ipv4Addr>>);

    impl Resolver for Cluster {
        fn lookup(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
            self.0.get(name).cloned()
        }
    }

    fn web_addresses() -> Vec<Ipv4Addr> {
        vec![
            Ipv4Addr::new(10, 0, 0, 2),
            Ipv4Addr::new(10, 0, 0, 3),
            Ipv4Addr::new(10, 0, 0, 4),
        ]
    }

    fn big_addresses() -> Vec<Ipv4Addr> {
        (0..100).map(|i| Ipv4Addr::new(10, 1, 0, i)).collect()
    }

    fn cluster() -> Arc<dyn Resolver> {
        Arc::new(Cluster(HashMap::from([
            ("web".to_string(), web_addresses()),
            ("tasks.web".to_string(), web_addresses()),
            ("big".to_string(), big_addresses()),
        ])))
    }

    fn question(name: &str, rtype: RecordType) -> Message {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        m
    }

    fn with_edns(mut m: Message, payload: u16) -> Message {
        let mut edns = Edns::new();
        edns.set_max_payload(payload);
        m.set_edns(edns);
        m
    }

    fn addresses(m: &Message) -> Vec<Ipv4Addr> {
        m.answers
            .iter()
            .filter_map(|r| match r.data {
                RData::A(A(ip)) => Some(ip),
                _ => None,
            })
            .collect()
    }

    fn sorted(mut v: Vec<Ipv4Addr>) -> Vec<Ipv4Addr> {
        v.sort();
        v
    }

    fn serve(upstreams: Vec<SocketAddr>) -> DnsServer {
        DnsServer::start_at("127.0.0.1:0".parse().unwrap(), None, cluster(), upstreams).unwrap()
    }

    async fn ask_raw(server: SocketAddr, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.send_to(packet, server).await.unwrap();
        let mut buf = vec![0u8; 65535];
        let (len, _) = timeout(wait, socket.recv_from(&mut buf))
            .await
            .ok()?
            .unwrap();
        buf.truncate(len);
        Some(buf)
    }

    async fn ask(server: SocketAddr, query: &Message) -> Message {
        let reply = ask_raw(server, &query.to_vec().unwrap(), Duration::from_secs(6))
            .await
            .expect("an answer within 6 s");
        Message::from_vec(&reply).unwrap()
    }

    async fn ask_tcp(server: SocketAddr, query: &Message) -> Message {
        let mut stream = TcpStream::connect(server).await.unwrap();
        let packet = query.to_vec().unwrap();
        stream
            .write_all(&u16::try_from(packet.len()).unwrap().to_be_bytes())
            .await
            .unwrap();
        stream.write_all(&packet).await.unwrap();
        let reply = timeout(Duration::from_secs(6), async {
            let len = stream.read_u16().await.unwrap();
            let mut reply = vec![0u8; usize::from(len)];
            stream.read_exact(&mut reply).await.unwrap();
            reply
        })
        .await
        .expect("an answer within 6 s");
        Message::from_vec(&reply).unwrap()
    }

    /// How the fake upstream answers over UDP.
    #[derive(Clone, Copy)]
    enum Upstream {
        /// With an A record of this address.
        Answers(Ipv4Addr),
        /// With TC set and no answers; over TCP with an A record of this address.
        Truncates(Ipv4Addr),
        /// REFUSED.
        Refuses,
    }

    /// A fake upstream on 127.0.0.1 (UDP and TCP on one port).
    fn fake_upstream(behaviour: Upstream) -> SocketAddr {
        let (udp, tcp) =
            bind_pair("127.0.0.1:0".parse().unwrap()).unwrap_or_else(|e| panic!("{}", e.source));
        let addr = udp.local_addr().unwrap();
        let (udp, tcp) = (
            UdpSocket::from_std(udp).unwrap(),
            TcpListener::from_std(tcp).unwrap(),
        );
        let answer = move |q: &Message, ip: Ipv4Addr| {
            let mut r = response_to(q, ResponseCode::NoError);
            r.add_answer(Record::from_rdata(
                q.queries[0].name().clone(),
                300,
                RData::A(A(ip)),
            ));
            r
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((len, from)) = udp.recv_from(&mut buf).await {
                let q = Message::from_vec(&buf[..len]).unwrap();
                let r = match behaviour {
                    Upstream::Answers(ip) => answer(&q, ip),
                    Upstream::Truncates(_) => {
                        let mut r = response_to(&q, ResponseCode::NoError);
                        r.metadata.truncation = true;
                        r
                    }
                    Upstream::Refuses => response_to(&q, ResponseCode::Refused),
                };
                udp.send_to(&r.to_vec().unwrap(), from).await.unwrap();
            }
        });
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                let len = stream.read_u16().await.unwrap();
                let mut packet = vec![0u8; usize::from(len)];
                stream.read_exact(&mut packet).await.unwrap();
                let q = Message::from_vec(&packet).unwrap();
                let ip = match behaviour {
                    Upstream::Truncates(ip) | Upstream::Answers(ip) => ip,
                    Upstream::Refuses => Ipv4Addr::UNSPECIFIED,
                };
                let r = answer(&q, ip).to_vec().unwrap();
                stream
                    .write_all(&u16::try_from(r.len()).unwrap().to_be_bytes())
                    .await
                    .unwrap();
                stream.write_all(&r).await.unwrap();
            }
        });
        addr
    }

    #[tokio::test]
    async fn known_name_gets_every_address_in_turning_order() {
        let server = serve(vec![]);
        let mut firsts = Vec::new();
        for _ in 0..3 {
            let reply = ask(server.local_addr(), &question("tasks.web.", RecordType::A)).await;
            assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
            assert!(reply.answers.iter().all(|r| r.ttl == CLUSTER_TTL));
            let got = addresses(&reply);
            assert_eq!(sorted(got.clone()), web_addresses());
            firsts.push(got[0]);
        }
        assert_eq!(
            sorted(firsts),
            web_addresses(),
            "each address comes first once in three answers"
        );
        // Names are matched whatever their case, and answered in the asker's spelling.
        let reply = ask(server.local_addr(), &question("WeB.", RecordType::A)).await;
        assert_eq!(sorted(addresses(&reply)), web_addresses());
        assert_eq!(reply.answers[0].name, Name::from_ascii("WeB.").unwrap());
    }

    #[tokio::test]
    async fn other_types_of_a_known_name_get_no_data() {
        let server = serve(vec![]);
        let query = question("web.", RecordType::AAAA);
        let reply = ask(server.local_addr(), &query).await;
        assert_eq!(reply.metadata.id, query.metadata.id);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.answers.is_empty());
        assert_eq!(reply.queries, query.queries);
    }

    #[tokio::test]
    async fn large_answers_are_truncated_over_udp_and_whole_over_tcp() {
        let server = serve(vec![]);
        let plain = ask(server.local_addr(), &question("big.", RecordType::A)).await;
        assert!(plain.metadata.truncation, "100 addresses exceed 512 bytes");
        assert!(plain.answers.is_empty());
        let edns = with_edns(question("big.", RecordType::A), 4096);
        let reply = ask(server.local_addr(), &edns).await;
        assert!(!reply.metadata.truncation);
        assert_eq!(sorted(addresses(&reply)), big_addresses());
        let reply = ask_tcp(server.local_addr(), &question("big.", RecordType::A)).await;
        assert!(!reply.metadata.truncation);
        assert_eq!(sorted(addresses(&reply)), big_addresses());
    }

    #[tokio::test]
    async fn unknown_names_are_forwarded_and_relayed_with_the_clients_id() {
        let upstream = fake_upstream(Upstream::Answers(Ipv4Addr::new(192, 0, 2, 53)));
        let server = serve(vec![upstream]);
        for _ in 0..3 {
            let query = question("example.org.", RecordType::A);
            let reply = ask(server.local_addr(), &query).await;
            assert_eq!(reply.metadata.id, query.metadata.id);
            assert_eq!(addresses(&reply), vec![Ipv4Addr::new(192, 0, 2, 53)]);
        }
        let query = question("example.org.", RecordType::A);
        let reply = ask_tcp(server.local_addr(), &query).await;
        assert_eq!(reply.metadata.id, query.metadata.id);
        assert_eq!(addresses(&reply), vec![Ipv4Addr::new(192, 0, 2, 53)]);
    }

    #[tokio::test]
    async fn a_silent_or_refusing_upstream_passes_to_the_next() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let refusing = fake_upstream(Upstream::Refuses);
        let answering = fake_upstream(Upstream::Answers(Ipv4Addr::new(192, 0, 2, 54)));
        let server = serve(vec![silent.local_addr().unwrap(), refusing, answering]);
        let reply = ask(
            server.local_addr(),
            &question("example.org.", RecordType::A),
        )
        .await;
        assert_eq!(addresses(&reply), vec![Ipv4Addr::new(192, 0, 2, 54)]);
    }

    #[tokio::test]
    async fn failing_upstreams_give_servfail_in_time() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let server = serve(vec![silent.local_addr().unwrap()]);
        let started = Instant::now();
        let query = question("example.org.", RecordType::A);
        let reply = ask(server.local_addr(), &query).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(reply.metadata.id, query.metadata.id);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "took {:?}",
            started.elapsed()
        );

        // Only refusals: the refusal is relayed.
        let refusing = fake_upstream(Upstream::Refuses);
        let server = serve(vec![refusing]);
        let reply = ask(server.local_addr(), &query).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::Refused);

        // No upstream at all: SERVFAIL at once.
        let server = serve(vec![]);
        let started = Instant::now();
        let reply = ask(
            server.local_addr(),
            &question("example.org.", RecordType::AAAA),
        )
        .await;
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn forwards_in_flight_are_bounded() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let server = serve(vec![silent.local_addr().unwrap()]);
        let flood = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let question_bytes = question("example.org.", RecordType::A).to_vec().unwrap();
        for _ in 0..MAX_FORWARDS {
            flood
                .send_to(&question_bytes, server.local_addr())
                .await
                .unwrap();
        }
        let started = Instant::now();
        let reply = ask(
            server.local_addr(),
            &question("example.net.", RecordType::A),
        )
        .await;
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "one over the limit is refused at once, not after the upstream timeout"
        );
        // Cluster names need no forward and are still answered.
        let reply = ask(server.local_addr(), &question("web.", RecordType::A)).await;
        assert_eq!(sorted(addresses(&reply)), web_addresses());
        // The flood's own questions end in SERVFAIL once the upstream times out.
        let mut buf = vec![0u8; 512];
        for _ in 0..MAX_FORWARDS {
            let (len, _) = timeout(Duration::from_secs(5), flood.recv_from(&mut buf))
                .await
                .expect("every flooded question is answered")
                .unwrap();
            let reply = Message::from_vec(&buf[..len]).unwrap();
            assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        }
    }

    #[tokio::test]
    async fn truncated_upstream_answers_are_fetched_over_tcp_for_tcp_clients() {
        let upstream = fake_upstream(Upstream::Truncates(Ipv4Addr::new(192, 0, 2, 55)));
        let server = serve(vec![upstream]);
        let reply = ask(
            server.local_addr(),
            &question("example.org.", RecordType::A),
        )
        .await;
        assert!(
            reply.metadata.truncation,
            "a UDP client gets the truncated answer"
        );
        let reply = ask_tcp(
            server.local_addr(),
            &question("example.org.", RecordType::A),
        )
        .await;
        assert!(!reply.metadata.truncation);
        assert_eq!(addresses(&reply), vec![Ipv4Addr::new(192, 0, 2, 55)]);
    }

    #[tokio::test]
    async fn garbage_gets_formerr_or_nothing_and_the_server_goes_on() {
        let server = serve(vec![]);
        let at = server.local_addr();
        let short = Duration::from_millis(300);
        assert_eq!(ask_raw(at, &[], short).await, None);
        assert_eq!(ask_raw(at, &[1, 2, 3], short).await, None);
        // A header promising a question that is not there.
        let header = [0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        let reply = ask_raw(at, &header, short).await.expect("a FORMERR");
        assert_eq!(&reply[..2], &[0xab, 0xcd]);
        assert_eq!(reply[2] & QR_BIT, QR_BIT);
        assert_eq!(reply[3] & 0x0f, ResponseCode::FormErr.low());
        // An answer is never answered.
        let mut response = question("web.", RecordType::A);
        response.metadata.message_type = hickory_proto::op::MessageType::Response;
        assert_eq!(ask_raw(at, &response.to_vec().unwrap(), short).await, None);
        // Another opcode.
        let mut notify = question("web.", RecordType::SOA);
        notify.metadata.op_code = OpCode::Notify;
        let reply = ask_raw(at, &notify.to_vec().unwrap(), short)
            .await
            .expect("a NOTIMP");
        assert_eq!(reply[3] & 0x0f, ResponseCode::NotImp.low());
        // Noise.
        let noise: Vec<u8> = (0..300u32).map(|i| (i * 7919 % 251) as u8).collect();
        let _ = ask_raw(at, &noise, short).await;
        // Garbage over TCP: a length then less than promised, then a close.
        let mut stream = TcpStream::connect(at).await.unwrap();
        stream.write_all(&[0, 40, 1, 2, 3]).await.unwrap();
        drop(stream);

        let reply = ask(at, &question("web.", RecordType::A)).await;
        assert_eq!(sorted(addresses(&reply)), web_addresses());
        let reply = ask_tcp(at, &question("web.", RecordType::A)).await;
        assert_eq!(sorted(addresses(&reply)), web_addresses());
    }

    #[tokio::test]
    async fn stop_closes_the_sockets() {
        let server = serve(vec![]);
        let at = server.local_addr();
        server.stop().await;
        std::net::UdpSocket::bind(at).expect("the UDP port is free again");
        std::net::TcpListener::bind(at).expect("the TCP port is free again");
    }

    #[test]
    fn starting_outside_the_runtime_is_an_error() {
        let started = DnsServer::start_at("127.0.0.1:0".parse().unwrap(), None, cluster(), vec![]);
        assert!(matches!(started, Err(DnsError::NoRuntime)));
    }

    #[tokio::test]
    async fn a_taken_port_is_reported_with_the_address() {
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let at = taken.local_addr().unwrap();
        let err = DnsServer::start_at(at, None, cluster(), vec![]).unwrap_err();
        let message = err.to_string();
        assert!(message.contains(&at.to_string()), "{message}");
        assert!(message.contains("stop what listens there"), "{message}");
    }

    fn shared() -> Shared {
        Shared {
            resolver: cluster(),
            upstreams: vec![],
            rotation: AtomicUsize::new(0),
            forwards: Arc::new(Semaphore::new(1)),
        }
    }

    proptest! {
        #[test]
        fn no_packet_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let shared = shared();
            for transport in [Transport::Udp, Transport::Tcp] {
                // Not through `handle`, whose guard would hide a panic of ours.
                let _ = shared.handle_packet(&bytes, transport);
            }
        }

        #[test]
        fn no_damaged_question_panics(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let shared = shared();
            let query = with_edns(question("tasks.web.", RecordType::A), 1232);
            let mut packet = query.to_vec().unwrap();
            for (at, byte) in edits {
                let at = at % packet.len();
                packet[at] = byte;
            }
            packet.truncate(cut % (packet.len() + 1));
            let _ = shared.handle_packet(&packet, Transport::Udp);
        }
    }

    /// Removes a test namespace, even when the test fails.
    struct NamespaceGuard(PathBuf);

    impl Drop for NamespaceGuard {
        fn drop(&mut self) {
            let _ = crate::netns::remove(&self.0);
        }
    }

    #[tokio::test]
    async fn serves_at_127_0_0_11_inside_a_namespace() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: network namespaces need root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ns = dir.path().join("ctr");
        crate::netns::create(&ns).unwrap();
        let _guard = NamespaceGuard(ns.clone());
        // On the host's loopback: out of the container's reach, not of the forwarder's.
        let upstream = fake_upstream(Upstream::Answers(Ipv4Addr::new(192, 0, 2, 56)));
        // A fresh namespace has lo down: starting brings it up.
        let server = DnsServer::start(&ns, cluster(), vec![upstream]).unwrap();
        assert_eq!(server.local_addr(), CONTAINER_DNS);

        let ask_inside = |query: Message| {
            let ns = ns.clone();
            let packet = query.to_vec().unwrap();
            tokio::task::spawn_blocking(move || {
                crate::netns::run_in(&ns, move || -> io::Result<Vec<u8>> {
                    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
                    socket.set_read_timeout(Some(Duration::from_secs(6)))?;
                    socket.send_to(&packet, CONTAINER_DNS)?;
                    let mut buf = vec![0u8; 4096];
                    let len = socket.recv(&mut buf)?;
                    buf.truncate(len);
                    Ok(buf)
                })
            })
        };
        let reply = ask_inside(question("web.", RecordType::A))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(sorted(addresses(&reply)), web_addresses());
        let reply = ask_inside(question("example.org.", RecordType::A))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(addresses(&reply), vec![Ipv4Addr::new(192, 0, 2, 56)]);

        // The socket is the namespace's, not the host's.
        let listening = "0B00007F:0035";
        let inside = crate::netns::run_in(&ns, || {
            std::fs::read_to_string("/proc/thread-self/net/udp").unwrap()
        })
        .unwrap();
        assert!(inside.contains(listening), "{inside}");
        let host = std::fs::read_to_string("/proc/self/net/udp").unwrap();
        assert!(!host.contains(listening), "{host}");

        let busybox = Path::new("/usr/bin/busybox");
        if busybox.exists() {
            let output = tokio::task::spawn_blocking({
                let ns = ns.clone();
                move || {
                    crate::netns::run_in(&ns, || {
                        std::process::Command::new("/usr/bin/busybox")
                            .args(["nslookup", "web", "127.0.0.11"])
                            .output()
                    })
                }
            })
            .await
            .unwrap()
            .unwrap()
            .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            eprintln!(
                "busybox nslookup: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            );
            for ip in web_addresses() {
                assert!(stdout.contains(&format!("Address: {ip}")), "{stdout}");
            }
        } else {
            eprintln!("SKIPPED (part): no /usr/bin/busybox for the nslookup check");
        }
        server.stop().await;
    }
}
