//! The connection to a daemon: the local unix socket, or `tcp://host:port`. When nothing
//! answers, the user gets one line saying where we looked and how to start a daemon.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::args::UsageError;

/// The default socket of a daemon with the default run root.
pub const DEFAULT_SOCKET: &str = "/run/shoal/shoal.sock";

/// How long a TCP connection attempt may take before we call the daemon unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the daemon is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A unix socket.
    Unix(PathBuf),
    /// A TCP address, `HOST:PORT`.
    Tcp(String),
}

impl Host {
    /// Parses `-H`/`SHOAL_HOST`: a path, `unix:///path`, or `tcp://host:port`. Empty (an
    /// exported but empty SHOAL_HOST) means the default socket.
    pub fn parse(s: &str) -> Result<Host, UsageError> {
        if s.is_empty() {
            return Ok(Host::Unix(PathBuf::from(DEFAULT_SOCKET)));
        }
        let bad = || {
            UsageError(format!(
                "invalid -H/SHOAL_HOST \"{s}\": use a socket path, unix:///PATH or tcp://HOST:PORT"
            ))
        };
        if let Some(p) = s.strip_prefix("unix://") {
            if p.is_empty() {
                return Err(bad());
            }
            return Ok(Host::Unix(PathBuf::from(p)));
        }
        if let Some(a) = s.strip_prefix("tcp://") {
            let a = a.trim_end_matches('/');
            let (host, port) = a.rsplit_once(':').ok_or_else(bad)?;
            if host.is_empty() || port.parse::<u16>().ok().filter(|p| *p > 0).is_none() {
                return Err(bad());
            }
            return Ok(Host::Tcp(a.to_string()));
        }
        if s.contains("://") {
            return Err(bad());
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

/// Why a connection failed, in a few words.
fn why(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound => "no such file".into(),
        K::ConnectionRefused => "connection refused; is the daemon running?".into(),
        K::PermissionDenied => "permission denied; the socket is root's, try sudo".into(),
        K::TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}

/// The I/O error at the bottom of a transport error, if there is one.
fn io_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

/// Connects to the daemon.
pub async fn connect(host: &Host) -> anyhow::Result<Channel> {
    match host {
        Host::Unix(path) => {
            // Connect once here, so the user sees exactly why it failed; the channel takes
            // this stream first and dials again only if it has to reconnect later.
            let first = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| unreachable(host, &why(&e)))?;
            let first = Arc::new(Mutex::new(Some(first)));
            let path = path.clone();
            Endpoint::from_static("http://[::]:50051")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    let ready = first.lock().ok().and_then(|mut f| f.take());
                    async move {
                        let stream = match ready {
                            Some(s) => s,
                            None => tokio::net::UnixStream::connect(path).await?,
                        };
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
                .map_err(|e| {
                    let why = io_cause(&e).map(why).unwrap_or_else(|| e.to_string());
                    unreachable(host, &why)
                })
        }
        Host::Tcp(addr) => {
            // Reachable first (the plainer error), then the certificate.
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(unreachable(host, &why(&e))),
                Err(_) => return Err(unreachable(host, "no answer within 5s")),
            }
            let dir = cert_dir();
            let tls = client_tls(&dir)?;
            let endpoint = Endpoint::from_shared(format!("https://{addr}"))
                .map_err(|e| UsageError(format!("invalid -H/SHOAL_HOST tcp://{addr}: {e}")))?
                .tls_config(tls)
                .map_err(|e| anyhow::anyhow!("the client certificate in {}: {e}", dir.display()))?
                .connect_timeout(CONNECT_TIMEOUT);
            endpoint.connect().await.map_err(|e| {
                let why = io_cause(&e).map(why).unwrap_or_else(|| e.to_string());
                unreachable(
                    host,
                    &format!("{why}; with the client certificate in {}", dir.display()),
                )
            })
        }
    }
}

/// Where a remote client keeps its certificate: `$SHOAL_CERT_PATH`, or `~/.shoal`.
pub fn cert_dir() -> PathBuf {
    match std::env::var_os("SHOAL_CERT_PATH") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"))
            .join(".shoal"),
    }
}

/// The files of a client certificate, under its directory.
pub const CLIENT_FILES: [&str; 3] = ["ca.pem", "cert.pem", "key.pem"];

/// TLS with the client certificate in `dir`: the cluster CA is the only one trusted, and
/// a manager's certificate the only one accepted.
fn client_tls(dir: &std::path::Path) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name));
    let (ca, cert, key) = match (
        read(CLIENT_FILES[0]),
        read(CLIENT_FILES[1]),
        read(CLIENT_FILES[2]),
    ) {
        (Ok(ca), Ok(cert), Ok(key)) => (ca, cert, key),
        _ => {
            return Err(UsageError(format!(
                "a manager's cluster port takes a client certificate of its cluster, and there \
                 is none in {}: on a manager run \"shoal client-cert --out DIR\", copy DIR \
                 here and point SHOAL_CERT_PATH at it (or use ~/.shoal)",
                dir.display()
            ))
            .into());
        }
    };
    Ok(tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .identity(tonic::transport::Identity::from_pem(cert, key))
        .domain_name(shoal_api::cluster::MANAGER_NAME))
}

/// Turns a daemon error into one line, with the exit code it carries (1 unless the
/// daemon set `shoal-exit-code`).
pub fn status(s: tonic::Status) -> anyhow::Error {
    // A broken connection to the daemon carries the transport's error as its source; the
    // daemon's own "unavailable" answers (no leader, say) carry none and speak for themselves.
    if s.code() == tonic::Code::Unavailable && std::error::Error::source(&s).is_some() {
        return anyhow::anyhow!("the shoal daemon went away: {}", s.message());
    }
    if s.code() == tonic::Code::Unimplemented {
        return anyhow::anyhow!(
            "the daemon does not serve this here: a manager's cluster port (tcp://) serves \
             the cluster's commands (service, node, info, join-token); containers and images \
             are managed on each node's own socket"
        );
    }
    let code = s
        .metadata()
        .get("shoal-exit-code")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    anyhow::Error::new(crate::CodedError(code, s.message().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts() {
        for (input, want) in [
            ("/x.sock", Host::Unix("/x.sock".into())),
            ("", Host::Unix(DEFAULT_SOCKET.into())),
            ("x.sock", Host::Unix("x.sock".into())),
            ("unix:///x.sock", Host::Unix("/x.sock".into())),
            ("tcp://h:4242", Host::Tcp("h:4242".into())),
            ("tcp://10.0.0.1:4242/", Host::Tcp("10.0.0.1:4242".into())),
            ("tcp://[::1]:4242", Host::Tcp("[::1]:4242".into())),
        ] {
            assert_eq!(Host::parse(input).unwrap(), want, "{input}");
        }
        for bad in [
            "tcp://h",
            "tcp://:4242",
            "tcp://h:0",
            "tcp://h:99999",
            "http://h:1",
            "unix://",
        ] {
            let e = Host::parse(bad).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("invalid -H/SHOAL_HOST \"{bad}\"")),
                "{e}"
            );
        }
    }

    #[test]
    fn daemon_errors_carry_their_exit_code() {
        let e = status(tonic::Status::not_found("container \"x\" not found"));
        let c = e.downcast_ref::<crate::CodedError>().unwrap();
        assert_eq!((c.0, c.1.as_str()), (1, "container \"x\" not found"));
        let mut s = tonic::Status::failed_precondition("permission denied");
        s.metadata_mut()
            .insert("shoal-exit-code", "126".parse().unwrap());
        assert_eq!(
            status(s).downcast_ref::<crate::CodedError>().unwrap().0,
            126
        );
        // A broken connection: the transport's error is the source.
        let mut broken = tonic::Status::unavailable("broken pipe");
        broken.set_source(std::sync::Arc::new(std::io::Error::from(
            std::io::ErrorKind::BrokenPipe,
        )));
        assert_eq!(
            status(broken).to_string(),
            "the shoal daemon went away: broken pipe"
        );
        // The daemon's own "unavailable" answers speak for themselves.
        let no_leader = tonic::Status::unavailable("no manager leads the cluster right now");
        assert_eq!(
            status(no_leader).to_string(),
            "no manager leads the cluster right now"
        );
    }

    /// A path under the temp directory that is removed when the test ends.
    struct TempPath(PathBuf);

    impl TempPath {
        fn new(tag: &str) -> TempPath {
            let p = std::env::temp_dir().join(format!(
                "shoal-cli-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_file(&p);
            TempPath(p)
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[tokio::test]
    async fn a_missing_socket_says_how_to_start_a_daemon() {
        let p = TempPath::new("missing");
        let host = Host::Unix(p.0.clone());
        let e = connect(&host).await.unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "cannot reach the shoal daemon at {} (no such file): start it with \"sudo shoal daemon\" or \"shoal dev\", or point -H/SHOAL_HOST at a running one",
                p.0.display()
            )
        );
        assert_eq!(e.lines().count(), 1);
    }

    #[tokio::test]
    async fn a_dead_socket_is_refused() {
        let p = TempPath::new("dead");
        // A socket file with no listener behind it: what a crashed daemon leaves.
        drop(std::os::unix::net::UnixListener::bind(&p.0).unwrap());
        let e = connect(&Host::Unix(p.0.clone()))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot reach the shoal daemon at"), "{e}");
        assert!(
            e.contains("(connection refused; is the daemon running?)"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_closed_tcp_port_is_refused() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let host = Host::Tcp(format!("127.0.0.1:{port}"));
        let e = connect(&host).await.unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "cannot reach the shoal daemon at tcp://127.0.0.1:{port} (connection refused"
            )),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_listening_socket_connects() {
        let p = TempPath::new("live");
        let listener = tokio::net::UnixListener::bind(&p.0).unwrap();
        // Accept and hold the connection; the HTTP/2 handshake is lazy, so connecting
        // needs no server behind the socket.
        let accept = tokio::spawn(async move { listener.accept().await.map(|(s, _)| s) });
        connect(&Host::Unix(p.0.clone())).await.unwrap();
        let accepted = tokio::time::timeout(Duration::from_secs(5), accept).await;
        assert!(matches!(accepted, Ok(Ok(Ok(_)))), "{accepted:?}");
    }
}
