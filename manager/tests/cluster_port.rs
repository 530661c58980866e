//! The cluster port over real TLS on loopback: who may call what.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;

use shoal_api::control as pc;
use shoal_api::control::control_client::ControlClient;
use shoal_api::control::control_server::Control;
use shoal_api::dispatcher as pd;
use shoal_api::dispatcher::dispatcher_client::DispatcherClient;
use shoal_api::types::ResourceAmounts;
use shoal_manager::ca::{self, Ca, Role};
use shoal_manager::server::{ManagerOptions, ManagerService, PortDefaults, SelfNode};
use tonic::Request;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

async fn channel(
    addr: &str,
    ca_pem: &str,
    identity: Option<(String, String)>,
) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(ca::MANAGER_NAME);
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

fn certified(ca: &Ca, node: &str, role: Role) -> (String, String) {
    let (key, csr) = ca::node_key_and_request(node).unwrap();
    (ca.issue(&csr, node, role).unwrap(), key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_port_enforces_certificates_and_roles() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let root = tempfile::tempdir().unwrap();
    let node = SelfNode {
        id: "m1".into(),
        hostname: "m1".into(),
        resources: ResourceAmounts::default(),
    };
    let defaults = PortDefaults {
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
    };
    let svc = ManagerService::new(
        root.path().join("manager"),
        node,
        ManagerOptions::default(),
        defaults,
        Arc::new(|_| Box::pin(async {})),
    )
    .await
    .unwrap();
    svc.init(Request::new(pc::InitRequest::default()))
        .await
        .unwrap();
    let addr = svc.port_config().unwrap().advertise.to_string();
    let record = svc.manager().await.unwrap().cluster_record().await.unwrap();
    let ca = record.ca.clone();

    // A manager's certificate reaches the control API.
    let manager = channel(
        &addr,
        &ca.cert_pem,
        Some(certified(&ca, "m2", Role::Manager)),
    )
    .await
    .unwrap();
    ControlClient::new(manager)
        .list_services(pc::ListRequest {})
        .await
        .unwrap();

    // A client certificate (`shoal client-cert`) reaches the control API, and nothing
    // else: not Raft, not the dispatcher, and it cannot mint more client certificates.
    let client = channel(
        &addr,
        &ca.cert_pem,
        Some(certified(&ca, "alice", Role::Client)),
    )
    .await
    .unwrap();
    ControlClient::new(client.clone())
        .list_services(pc::ListRequest {})
        .await
        .unwrap();
    let e = DispatcherClient::new(client.clone())
        .heartbeat(pd::HeartbeatRequest {
            node_id: "alice".into(),
            volume_drivers: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    let e = ControlClient::new(client)
        .issue_client_cert(pc::ClientCertRequest {
            name: "mallory".into(),
            csr_pem: shoal_manager::ca::node_key_and_request("mallory")
                .unwrap()
                .1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("client alice"), "{}", e.message());

    // A worker's does not, and cannot speak for another node.
    let worker = channel(
        &addr,
        &ca.cert_pem,
        Some(certified(&ca, "w1", Role::Worker)),
    )
    .await
    .unwrap();
    let e = ControlClient::new(worker.clone())
        .list_services(pc::ListRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(
        e.message().contains("node w1 is a worker"),
        "{}",
        e.message()
    );
    let e = DispatcherClient::new(worker.clone())
        .heartbeat(pd::HeartbeatRequest {
            node_id: "m1".into(),
            volume_drivers: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(
        e.message().contains("cannot speak for node m1"),
        "{}",
        e.message()
    );
    // Its own heartbeat is its own business (unknown until its session opens).
    let e = DispatcherClient::new(worker)
        .heartbeat(pd::HeartbeatRequest {
            node_id: "w1".into(),
            volume_drivers: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");

    // Without a certificate: nothing but a clear refusal.
    let anonymous = channel(&addr, &ca.cert_pem, None).await.unwrap();
    let e = ControlClient::new(anonymous)
        .info(pc::InfoRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    assert!(e.message().contains("shoal join"), "{}", e.message());

    // A certificate from another cluster's CA fails the handshake; so does trusting
    // another CA.
    let foreign = Ca::generate().unwrap();
    let r = channel(
        &addr,
        &ca.cert_pem,
        Some(certified(&foreign, "x", Role::Manager)),
    )
    .await;
    let refused = match r {
        Err(_) => true,
        Ok(ch) => ControlClient::new(ch)
            .info(pc::InfoRequest {})
            .await
            .is_err(),
    };
    assert!(refused, "a foreign certificate was accepted");
    assert!(channel(&addr, &foreign.cert_pem, None).await.is_err());

    svc.stop().await;
}

/// The certificate a manager's port presents, by the node it names.
async fn presented(addr: std::net::SocketAddr, ca_pem: &str) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for der in rustls_pki_der(ca_pem) {
        roots.add(der).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(ca::MANAGER_NAME).unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    ca::identity_der(&leaf).unwrap().node_id
}

fn rustls_pki_der(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_presented_at_once() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let ca = Ca::generate().unwrap();
    let tls = |node: &str| {
        let (cert_pem, key_pem) = certified(&ca, node, Role::Manager);
        shoal_manager::port::NodeTls {
            ca_pem: ca.cert_pem.clone(),
            cert_pem,
            key_pem,
        }
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr, certs) = shoal_manager::port::open(
        "127.0.0.1:0".parse().unwrap(),
        &tls("before"),
        tonic::service::Routes::default(),
        async move {
            let _ = stopped.await;
        },
    )
    .await
    .unwrap();
    assert_eq!(presented(addr, &ca.cert_pem).await, "before");
    // What renewal does: the new certificate in place, no restart of the port.
    certs.set(&tls("after")).unwrap();
    assert_eq!(presented(addr, &ca.cert_pem).await, "after");
    let _ = stop.send(());
}
