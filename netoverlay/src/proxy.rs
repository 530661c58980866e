//! The userland side of a published port: the host port is bound here (which is how a
//! port already in use is found), and connections arriving on it — those the kernel's
//! DNAT does not take, such as loopback ones — are relayed to the container.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::task::JoinHandle;

use shoal_api::types::PortProtocol;

use crate::error::NetError;
use crate::port::PublishedPort;

enum Socket {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

/// One published port's listener and relay.
pub struct Proxy {
    socket: Option<Socket>,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Binds the host port.
    pub fn bind(p: &PublishedPort) -> Result<Proxy, NetError> {
        let ip = p.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let addr = SocketAddr::new(ip, p.host_port);
        let in_use = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                NetError::PortInUse {
                    ip,
                    port: p.host_port,
                    protocol: p.protocol.as_str(),
                }
            } else {
                NetError::State(format!("binding {addr}/{}: {e}", p.protocol.as_str()))
            }
        };
        let socket = match p.protocol {
            PortProtocol::Tcp => Socket::Tcp(std::net::TcpListener::bind(addr).map_err(in_use)?),
            PortProtocol::Udp => Socket::Udp(std::net::UdpSocket::bind(addr).map_err(in_use)?),
        };
        Ok(Proxy {
            socket: Some(socket),
            task: None,
        })
    }

    /// Starts relaying to `target`.
    pub fn start(&mut self, target: SocketAddr) {
        let Some(socket) = self.socket.take() else {
            return;
        };
        self.task = match socket {
            Socket::Tcp(l) => {
                let _ = l.set_nonblocking(true);
                tokio::net::TcpListener::from_std(l)
                    .ok()
                    .map(|l| tokio::spawn(relay_tcp(l, target)))
            }
            Socket::Udp(s) => {
                let _ = s.set_nonblocking(true);
                tokio::net::UdpSocket::from_std(s)
                    .ok()
                    .map(|s| tokio::spawn(relay_udp(Arc::new(s), target)))
            }
        };
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn relay_tcp(listener: tokio::net::TcpListener, target: SocketAddr) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            if let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
        });
    }
}

async fn relay_udp(socket: Arc<tokio::net::UdpSocket>, target: SocketAddr) {
    let mut flows: HashMap<SocketAddr, Arc<tokio::net::UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, client)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let upstream = match flows.get(&client) {
            Some(u) => u.clone(),
            None => {
                let Ok(u) = tokio::net::UdpSocket::bind("0.0.0.0:0").await else {
                    continue;
                };
                if u.connect(target).await.is_err() {
                    continue;
                }
                let u = Arc::new(u);
                flows.insert(client, u.clone());
                let (back, reply_to) = (socket.clone(), u.clone());
                tokio::spawn(async move {
                    let mut b = vec![0u8; 65536];
                    while let Ok(n) = reply_to.recv(&mut b).await {
                        if back.send_to(&b[..n], client).await.is_err() {
                            break;
                        }
                    }
                });
                u
            }
        };
        let _ = upstream.send(&buf[..n]).await;
    }
}
