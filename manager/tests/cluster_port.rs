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
