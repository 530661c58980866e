//! The connection to a daemon: the local unix socket, or `tcp://host:port`.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// The default socket of a daemon with the default run root.
pub const DEFAULT_SOCKET: &str = "/run/shoal/shoal.sock";

/// Where the daemon is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A unix socket.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(String),
}

impl Host {
    /// Parses `-H`: a path, `unix:///path`, or `tcp://host:port`.
    pub fn parse(s: &str) -> Result<Host, crate::args::UsageError> {
        if let Some(p) = s.strip_prefix("unix://") {
            return Ok(Host::Unix(PathBuf::from(p)));
        }
        if let Some(a) = s.strip_prefix("tcp://") {
            if a.is_empty() || !a.contains(':') {
                return Err(crate::args::UsageError(format!(
                    "invalid -H \"{s}\": use tcp://HOST:PORT, unix:///PATH or a socket path"
                )));
            }
            return Ok(Host::Tcp(a.to_string()));
        }
        if s.contains("://") {
            return Err(crate::args::UsageError(format!(
                "invalid -H \"{s}\": use tcp://HOST:PORT, unix:///PATH or a socket path"
            )));
        }
        Ok(Host::Unix(PathBuf::from(s)))
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Unix(p) => write!(f, "{}", p.display()),
            Host::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// The one line shown when no daemon answers.
pub fn unreachable(host: &Host, why: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot reach the shoal daemon at {host} ({why}): start it with \"sudo shoal daemon\" or \"shoal dev\", or point -H/SHOAL_HOST at a running one"
    )
}

/// Connects to the daemon.
pub async fn connect(host: &Host) -> anyhow::Result<Channel> {
    match host {
        Host::Unix(path) => {
            match std::fs::metadata(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(unreachable(host, "no such file"));
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    return Err(unreachable(host, "permission denied; the socket is root's"));
                }
                _ => {}
            }
            let path = path.clone();
            let channel = Endpoint::from_static("http://[::]:50051")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
                .map_err(|e| {
                    let text = format!("{e:?}");
                    let why = if text.contains("ConnectionRefused") {
                        "connection refused; the daemon is not running"
                    } else if text.contains("PermissionDenied") {
                        "permission denied; the socket is root's"
                    } else {
                        "connection failed"
                    };
                    unreachable(host, why)
                })?;
            Ok(channel)
        }
        Host::Tcp(addr) => {
            let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| anyhow::anyhow!("invalid address {addr}: {e}"))?;
            endpoint
                .connect()
                .await
                .map_err(|_| unreachable(host, "connection failed"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts() {
        assert_eq!(
            Host::parse("/x.sock").unwrap(),
            Host::Unix("/x.sock".into())
        );
        assert_eq!(
            Host::parse("unix:///x.sock").unwrap(),
            Host::Unix("/x.sock".into())
        );
        assert_eq!(
            Host::parse("tcp://h:4242").unwrap(),
            Host::Tcp("h:4242".into())
        );
        assert!(Host::parse("tcp://h").is_err());
        assert!(Host::parse("http://h:1").is_err());
    }
}
