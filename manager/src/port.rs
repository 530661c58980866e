//! The cluster port (4242/tcp by default): the manager's services over mutual TLS for other
//! nodes. Every caller presents a certificate the cluster CA issued, except a node that is
//! joining (it has none yet, and proves itself with its join token instead).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use tonic::transport::Server;

pub use shoal_api::cluster::DEFAULT_PORT;

/// Errors of the cluster port.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// A flag or stored address is not an address.
    #[error("{0}")]
    Address(String),
    /// Reading or writing the node's TLS files failed.
    #[error("{path}: {message}")]
    Files {
        /// Which file.
        path: String,
        /// Why.
        message: String,
    },
    /// The port could not be opened.
    #[error("{0}")]
    Listen(String),
}

/// The address to tell other nodes, when none was given: the listening address if it is a
/// specific one, else this host's first IPv4 address that is not loopback (loopback if it
/// has none).
pub fn default_advertise(listen: SocketAddr) -> SocketAddr {
    if !listen.ip().is_unspecified() {
        return listen;
    }
    let ip = nix::ifaddrs::getifaddrs()
        .ok()
        .and_then(|addrs| {
            addrs
                .filter_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
                .find(|ip| !ip.is_loopback())
        })
        .unwrap_or(Ipv4Addr::LOCALHOST);
    SocketAddr::new(IpAddr::V4(ip), listen.port())
}

/// Where the cluster port listens and what other nodes are told, kept under the manager's
/// directory so a restarted daemon opens the same port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// What other nodes dial.
    pub advertise: SocketAddr,
}

/// A node's TLS material: the cluster CA's certificate, its own certificate and key (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTls {
    /// The cluster CA certificate.
    pub ca_pem: String,
    /// This node's certificate.
    pub cert_pem: String,
    /// This node's key.
    pub key_pem: String,
}

fn files_err(path: &Path, e: impl std::fmt::Display) -> PortError {
    PortError::Files {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl NodeTls {
    const FILES: [&'static str; 3] = ["ca.crt", "node.crt", "node.key"];

    /// Reads the files under `dir`, if they are there.
    pub fn load(dir: &Path) -> Result<Option<NodeTls>, PortError> {
        if !dir.join("node.crt").exists() {
            return Ok(None);
        }
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(|e| files_err(&p, e))
        };
        Ok(Some(NodeTls {
            ca_pem: read("ca.crt")?,
            cert_pem: read("node.crt")?,
            key_pem: read("node.key")?,
        }))
    }

    /// Writes the files under `dir` (the key readable by root only), each atomically.
    pub fn save(&self, dir: &Path) -> Result<(), PortError> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).map_err(|e| files_err(dir, e))?;
        for (name, text) in Self::FILES
            .iter()
            .zip([&self.ca_pem, &self.cert_pem, &self.key_pem])
        {
            let path = dir.join(name);
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, text).map_err(|e| files_err(&tmp, e))?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| files_err(&tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| files_err(&path, e))?;
        }
        Ok(())
    }
}

/// Saves the port's configuration under `dir`.
pub fn save_config(dir: &Path, config: &PortConfig) -> Result<(), PortError> {
    let path = config_path(dir);
    let text = serde_json::to_vec_pretty(config).map_err(|e| files_err(&path, e))?;
    std::fs::write(&path, text).map_err(|e| files_err(&path, e))
}

/// The port's saved configuration, if any.
pub fn load_config(dir: &Path) -> Result<Option<PortConfig>, PortError> {
    let path = config_path(dir);
    match std::fs::read(&path) {
        Ok(raw) => serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|e| files_err(&path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(files_err(&path, e)),
    }
}

fn config_path(dir: &Path) -> PathBuf {
    dir.join("port.json")
}

/// The certificate the cluster port presents: replaceable while the port runs, so that a
/// renewed certificate is used for the next connection.
#[derive(Debug, Clone)]
pub struct PortCerts(Arc<RwLock<Arc<CertifiedKey>>>);

fn certified(tls: &NodeTls) -> Result<Arc<CertifiedKey>, PortError> {
    let bad = |e: String| PortError::Listen(format!("the node's certificate: {e}"));
    // The chain sent to callers ends with the CA's, so that a joining node can check it
    // against the fingerprint in its token.
    let mut chain = Vec::new();
    for pem in [&tls.cert_pem, &tls.ca_pem] {
        chain.push(CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| bad(e.to_string()))?);
    }
    let key =
        PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(chain, key)))
}

impl PortCerts {
    /// Presents the certificate of `tls` from now on.
    pub fn set(&self, tls: &NodeTls) -> Result<(), PortError> {
        let key = certified(tls)?;
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = key;
        Ok(())
    }
}

impl ResolvesServerCert for PortCerts {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// Binds the port now (so that "address in use" is the caller's error to report) and
/// serves `routes` on it over TLS until `stop` resolves: client certificates are checked
/// against the CA when presented (callers without one reach only what lets them join).
/// Returns the bound address (the port is the kernel's choice when `listen` asks for
/// port 0) and the presented certificate's holder.
pub async fn open(
    listen: SocketAddr,
    tls: &NodeTls,
    routes: tonic::service::Routes,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, PortCerts), PortError> {
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        let fix = if e.kind() == std::io::ErrorKind::AddrInUse {
            ": another program holds it; choose another with --listen-addr IP:PORT"
        } else {
            ""
        };
        PortError::Listen(format!("opening the cluster port {listen}: {e}{fix}"))
    })?;
    let bound = listener
        .local_addr()
        .map_err(|e| PortError::Listen(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(
            CertificateDer::from_pem_slice(tls.ca_pem.as_bytes())
                .map_err(|e| PortError::Listen(format!("the cluster CA: {e}")))?,
        )
        .map_err(|e| PortError::Listen(format!("the cluster CA: {e}")))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| PortError::Listen(format!("the cluster port's TLS settings: {e}")))?;
    let certs = PortCerts(Arc::new(RwLock::new(certified(tls)?)));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PortError::Listen(format!("the cluster port's TLS settings: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(certs.clone()));
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    // Handshakes run side by side, so that a slow or silent caller holds up no other.
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<_>>(64);
    // Stopping closes the listener at once (a port reopened later must be free), and ends
    // the server's connections gracefully.
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        stop.await;
        let _ = stopping.send(true);
    });
    let mut quit = stopped.clone();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = quit.wait_for(|s| *s) => return,
            };
            let Ok((tcp, peer)) = accepted else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, "cluster port handshake: {e}"),
                    Err(_) => tracing::debug!(%peer, "cluster port handshake timed out"),
                }
            });
        }
    });
    let server = Server::builder().add_routes(routes);
    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut quit = stopped;
    let shutdown = async move {
        let _ = quit.wait_for(|s| *s).await;
    };
    tokio::spawn(async move {
        if let Err(e) = server
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
        {
            tracing::error!("the cluster port stopped: {e}");
        }
    });
    tracing::info!(addr = %bound, "cluster port open");
    Ok((bound, certs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_advertised_address_is_a_real_one() {
        let a = default_advertise("0.0.0.0:4242".parse().unwrap());
        assert!(!a.ip().is_unspecified());
        assert_eq!(a.port(), 4242);
        let b = default_advertise("127.0.0.1:9".parse().unwrap());
        assert_eq!(b, "127.0.0.1:9".parse().unwrap());
    }
}
