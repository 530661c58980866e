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

mod bind;
mod message;
mod serve;
mod upstream;

use bind::*;
use message::*;
use serve::*;
use upstream::*;

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

#[cfg(test)]
mod tests;
