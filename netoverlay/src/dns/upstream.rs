//! Asking the host's resolvers, over UDP and then (for a truncated answer) TCP.

use super::*;

/// One upstream's answer, each step within [`UPSTREAM_TIMEOUT`]: over UDP, then over TCP
/// if the UDP answer was truncated and the client is on TCP.
pub(super) async fn ask_upstream(
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

pub(super) async fn ask_upstream_udp(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
) -> io::Result<Vec<u8>> {
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

pub(super) async fn ask_upstream_tcp(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
) -> io::Result<Vec<u8>> {
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
