//! Making the server's sockets inside a container's network namespace.

use super::*;

/// Why binding failed, before we know where we were.
pub(super) struct BindFailure {
    pub(super) protocol: &'static str,
    pub(super) source: io::Error,
}

impl BindFailure {
    pub(super) fn into_error(self, addr: SocketAddr, netns: Option<&Path>) -> DnsError {
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
pub(super) fn bind_in_namespace(
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
pub(super) fn bring_loopback_up() -> Result<(), String> {
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
pub(super) fn bind_pair(
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
