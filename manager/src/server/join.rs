//! Joining a cluster, on the joining node: trust the manager only if its CA is the one the
//! token's fingerprint names, get a certificate for a new key, then run as a worker (an
//! agent talking to the managers) or as a manager (a Raft member the leader adds).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use shoal_api::control as pc;
use shoal_api::raft as pr;
use shoal_api::raft::join_client::JoinClient;
use tonic::Status;
use tonic::transport::{Channel, Endpoint, Uri};

use shoal_api::cluster::{JoinToken, MANAGER_NAME, parse_addr};

use super::{JOINED_MARK, Manager, ManagerService, Start, client_tls};
use crate::ca::{Role, fingerprint_der};
use crate::port::NodeTls;

/// Accepts a server whose chain carries the CA with the pinned fingerprint and whose
/// certificate that CA signed; no other.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
    seen: Mutex<Option<String>>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| fingerprint_der(c) == self.fingerprint)
        else {
            let seen = intermediates.last().map(|c| fingerprint_der(c));
            *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = seen;
            return Err(rustls::Error::General("foreign CA".into()));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A channel to the manager at `addr` that trusts only the CA with `fingerprint`.
async fn pinned_channel(addr: &str, fingerprint: &str) -> Result<Channel, Status> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(PinnedCa {
        fingerprint: fingerprint.to_string(),
        provider: provider.clone(),
        seen: Mutex::new(None),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Status::internal(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let target = addr.to_string();
    let channel = Endpoint::from_static("http://shoal-manager")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let (connector, target) = (connector.clone(), target.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(&target).await?;
                let name = ServerName::try_from(MANAGER_NAME)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await;
    channel.map_err(|e| {
        let seen = verifier.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match seen {
            Some(other) => Status::permission_denied(format!(
                "the manager at {addr} belongs to another cluster (its CA is sha256:{other}, the \
                 token names sha256:{fingerprint}): check the address, or take the token from \
                 this manager's cluster"
            )),
            None => Status::unavailable(format!(
                "cannot reach a manager at {addr}: {e}{}; check the address and that its cluster port is open",
                source_chain(&e)
            )),
        }
    })
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = String::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

impl ManagerService {
    /// Starts this node's manager as one that joins an existing cluster's Raft (the
    /// mark tells a restart the same).
    pub(super) async fn start_joined_manager(&self) -> Result<Arc<Manager>, Status> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Status::internal(e.to_string()))?;
        std::fs::write(self.dir.join(JOINED_MARK), b"")
            .map_err(|e| Status::internal(e.to_string()))?;
        let m = Manager::start(
            self.dir.clone(),
            self.node.clone(),
            self.options,
            Start::Joined,
        )
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        *self.manager.write().await = Some(m.clone());
        Ok(m)
    }

    /// `shoal join`: see the module's comment.
    pub(super) async fn join_cluster_here(
        &self,
        req: pc::JoinClusterRequest,
    ) -> Result<pc::JoinClusterReply, Status> {
        if self.manager.read().await.is_some() || self.tls_dir().join("node.crt").exists() {
            return Err(Status::already_exists(
                "this node is already part of a cluster: \"shoal info\" shows it (\"shoal leave\" first)",
            ));
        }
        let token =
            JoinToken::parse(&req.token).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let remote = parse_addr("the manager address", &req.remote_addr)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let listen = match req.listen_addr.as_str() {
            "" => self.port_defaults.listen,
            a => parse_addr("--listen-addr", a)
                .map_err(|e| Status::invalid_argument(e.to_string()))?,
        };
        let advertise = match req.advertise_addr.as_str() {
            "" => self.port_defaults.advertise,
            a => Some(
                parse_addr("--advertise-addr", a)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
            ),
        };
        // A manager must know its port before it asks (the others will dial it there).
        let listener = std::net::TcpListener::bind(listen).map_err(|e| {
            Status::failed_precondition(format!(
                "cannot open the cluster port {listen}: {e}; choose another with --listen-addr IP:PORT"
            ))
        })?;
        let bound = listener
            .local_addr()
            .map_err(|e| Status::internal(e.to_string()))?;
        drop(listener);
        let advertise = match advertise {
            Some(a) if a.port() == 0 => std::net::SocketAddr::new(a.ip(), bound.port()),
            Some(a) => a,
            None => crate::port::default_advertise(bound),
        };

        let channel = pinned_channel(&remote.to_string(), &token.fingerprint).await?;
        let (key_pem, csr_pem) = crate::ca::node_key_and_request(&self.node.id)
            .map_err(|e| Status::internal(e.to_string()))?;
        let reply = JoinClient::new(channel)
            .max_decoding_message_size(shoal_api::MAX_MESSAGE)
            .max_encoding_message_size(shoal_api::MAX_MESSAGE)
            .join(pr::JoinRequest {
                token: token.to_string(),
                node_id: self.node.id.clone(),
                csr_pem,
                advertise_addr: advertise.to_string(),
            })
            .await?
            .into_inner();
        let ca_fp = crate::ca::identity_pem(&reply.cert_pem)
            .and_then(|_| {
                use rustls::pki_types::pem::PemObject;
                CertificateDer::from_pem_slice(reply.ca_pem.as_bytes())
                    .map(|c| fingerprint_der(&c))
                    .map_err(|e| crate::ca::CaError::Cert(e.to_string()))
            })
            .map_err(|e| Status::internal(format!("the manager's answer: {e}")))?;
        if ca_fp != token.fingerprint {
            return Err(Status::permission_denied(
                "the manager sent a CA other than the token's: not joining",
            ));
        }
        let tls = NodeTls {
            ca_pem: reply.ca_pem,
            cert_pem: reply.cert_pem,
            key_pem,
        };
        let role: Role = reply
            .role
            .parse()
            .map_err(|e: crate::ca::CaError| Status::internal(e.to_string()))?;
        let mut managers = reply.managers;
        if !managers.contains(&remote.to_string()) {
            managers.insert(0, remote.to_string());
        }
        tls.save(&self.tls_dir())
            .map_err(|e| Status::internal(e.to_string()))?;
        save_managers(&self.tls_dir(), &managers)?;
        match role {
            Role::Client => {
                return Err(Status::internal(
                    "the manager answered a join with a client certificate",
                ));
            }
            Role::Worker => {
                self.run_agent(false).await?;
            }
            Role::Manager => {
                let m = self.start_joined_manager().await?;
                self.open_port(bound, Some(advertise))
                    .await
                    .map_err(|e| Status::failed_precondition(e.to_string()))?;
                add_manager(&tls, &managers, m.store.id(), &advertise.to_string()).await?;
                self.run_agent(true).await?;
            }
        }
        Ok(pc::JoinClusterReply {
            node_id: self.node.id.clone(),
            role: role.as_str().into(),
        })
    }
}

/// Asks the leader to add this manager to Raft, following "not the leader" answers.
pub(super) async fn add_manager(
    tls: &NodeTls,
    managers: &[String],
    raft_id: u64,
    addr: &str,
) -> Result<(), Status> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut target = managers.first().cloned().unwrap_or_default();
    let mut last = Status::unavailable("no manager to ask");
    while tokio::time::Instant::now() < deadline {
        let endpoint = Endpoint::from_shared(format!("https://{target}"))
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .tls_config(client_tls(tls))
            .map_err(|e| Status::internal(e.to_string()))?
            .connect_timeout(Duration::from_secs(2));
        let answer = match endpoint.connect().await {
            Ok(ch) => JoinClient::new(ch)
                .max_decoding_message_size(shoal_api::MAX_MESSAGE)
                .max_encoding_message_size(shoal_api::MAX_MESSAGE)
                .add_manager(pr::AddManagerRequest {
                    raft_id,
                    addr: addr.to_string(),
                })
                .await
                .map(|_| ()),
            Err(e) => Err(Status::unavailable(format!("{target}: {e}"))),
        };
        match answer {
            Ok(()) => return Ok(()),
            Err(e) => {
                if let Some(leader) = e
                    .metadata()
                    .get(shoal_api::LEADER_METADATA)
                    .and_then(|v| v.to_str().ok())
                {
                    target = leader.to_string();
                } else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                last = e;
            }
        }
    }
    Err(Status::unavailable(format!(
        "the leader did not add this manager to the cluster: {}",
        last.message()
    )))
}

pub(super) fn managers_path(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("managers.json")
}

/// Remembers the managers' addresses (a restarted worker dials them again).
pub(super) fn save_managers(dir: &std::path::Path, managers: &[String]) -> Result<(), Status> {
    let text = serde_json::to_vec(managers).map_err(|e| Status::internal(e.to_string()))?;
    std::fs::write(managers_path(dir), text).map_err(|e| Status::internal(e.to_string()))
}

/// The managers' addresses a joined node remembers (none saved: none; a damaged file is
/// said, and read as none: the node then waits for a manager to be named again).
pub(super) fn load_managers(dir: &std::path::Path) -> Vec<String> {
    let path = managers_path(dir);
    let Ok(raw) = std::fs::read(&path) else {
        return Vec::new();
    };
    serde_json::from_slice(&raw).unwrap_or_else(|e| {
        tracing::warn!(
            "{} is damaged ({e}): no manager to dial until one is named",
            path.display()
        );
        Vec::new()
    })
}
