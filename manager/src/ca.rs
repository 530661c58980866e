//! The cluster's certificate authority and join tokens.
//!
//! The first manager makes the CA (an ECDSA P-256 key and a self-signed certificate); its
//! key travels in the replicated store, so any manager can issue certificates. Every node
//! holds a certificate the CA signed: its common name is the node's id, its organizational
//! unit its role (`manager` or `worker`), and it names `shoal-manager` (managers) or
//! `shoal-worker` as its DNS name, the name every client checks whatever address it dialed.
//!
//! A join token is `SHOAL1-<sha256 of the CA certificate, hex>-<secret>`: the fingerprint
//! lets the joining node trust this CA and no other; the secret (one for workers, another
//! for managers) says which role it may take.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};

/// The DNS name in every manager's certificate; clients check it, whatever address they
/// dialed.
pub use shoal_api::cluster::MANAGER_NAME;
/// The DNS name in every worker's certificate.
pub const WORKER_NAME: &str = "shoal-worker";
/// The name in every client certificate.
pub const CLIENT_NAME: &str = "shoal-client";

/// How long node certificates last; nodes renew them at half their life.
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);

/// Errors of the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Making or reading a key or certificate failed.
    #[error("certificate: {0}")]
    Cert(String),
    /// A join token is not well formed.
    #[error("{0}")]
    Token(String),
}

fn cert_err(e: impl std::fmt::Display) -> CaError {
    CaError::Cert(e.to_string())
}

/// A node's role, as its certificate says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs Raft and the control plane.
    Manager,
    /// Runs tasks.
    Worker,
    /// A remote user of the control API (`shoal client-cert`): no node, no Raft.
    Client,
}

impl Role {
    /// The role's name, as in certificates and tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
            Role::Client => "client",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = CaError;

    fn from_str(s: &str) -> Result<Role, CaError> {
        match s {
            "manager" => Ok(Role::Manager),
            "worker" => Ok(Role::Worker),
            "client" => Ok(Role::Client),
            other => Err(CaError::Token(format!(
                "unknown role \"{other}\": use worker or manager"
            ))),
        }
    }
}

/// The cluster CA: its certificate and key, PEM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ca {
    /// The CA certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

fn der_of(pem: &str) -> Result<Vec<u8>, CaError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| cert_err(format!("not a PEM certificate: {e}")))
}

/// The SHA-256 fingerprint of a certificate (DER), lowercase hex.
pub fn fingerprint_der(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

impl Ca {
    /// Makes a new CA, valid for 20 years.
    pub fn generate() -> Result<Ca, CaError> {
        let key = KeyPair::generate().map_err(cert_err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "shoal cluster CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(20 * 365);
        let cert = params.self_signed(&key).map_err(cert_err)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The fingerprint join tokens carry.
    pub fn fingerprint(&self) -> Result<String, CaError> {
        Ok(fingerprint_der(&der_of(&self.cert_pem)?))
    }

    /// Signs the key in `csr_pem` for node `node_id` in `role`. Only the public key of the
    /// request is used: the name, role and lifetime are the CA's to choose.
    pub fn issue(&self, csr_pem: &str, node_id: &str, role: Role) -> Result<String, CaError> {
        self.issue_since(csr_pem, node_id, role, 0)
    }

    /// [`Ca::issue`], for a certificate that counts as issued no earlier than `since`
    /// (Unix seconds): a node whose older certificates were revoked at `since` gets one
    /// that passes the check (see [`Identity::issued_at`]).
    pub fn issue_since(
        &self,
        csr_pem: &str,
        node_id: &str,
        role: Role,
        since: u64,
    ) -> Result<String, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| cert_err(format!("the certificate request is not valid: {e}")))?;
        let key = KeyPair::from_pem(&self.key_pem).map_err(cert_err)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, key).map_err(cert_err)?;
        let name = match role {
            Role::Manager => MANAGER_NAME,
            Role::Worker => WORKER_NAME,
            Role::Client => CLIENT_NAME,
        };
        let mut params = CertificateParams::new(vec![name.to_string()]).map_err(cert_err)?;
        params.distinguished_name.push(DnType::CommonName, node_id);
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, role.as_str());
        params
            .subject_alt_names
            .push(SanType::DnsName(node_id.try_into().map_err(cert_err)?));
        params.extended_key_usages = match role {
            Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            _ => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        let since = time::OffsetDateTime::from_unix_timestamp(since.min(i64::MAX as u64) as i64)
            .map_err(cert_err)?;
        params.not_before = now - time::Duration::hours(1);
        // The expiry tells when the certificate was issued (expiry - validity), which the
        // revocation check compares; the start leaves an hour for clocks that differ.
        params.not_after = now.max(since) + NODE_CERT_VALIDITY;
        let request = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        Ok(request.signed_by(&issuer).map_err(cert_err)?.pem())
    }
}

/// A new node key and a request to certify it: (key PEM, request PEM).
pub fn node_key_and_request(node_id: &str) -> Result<(String, String), CaError> {
    let key = KeyPair::generate().map_err(cert_err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    params.distinguished_name.push(DnType::CommonName, node_id);
    let csr = params.serialize_request(&key).map_err(cert_err)?;
    Ok((key.serialize_pem(), csr.pem().map_err(cert_err)?))
}

/// Who a certificate speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The node's id.
    pub node_id: String,
    /// Its role.
    pub role: Role,
    /// When the certificate expires.
    pub not_after: SystemTime,
    /// When it became valid.
    pub not_before: SystemTime,
    /// When it was issued (its expiry less [`NODE_CERT_VALIDITY`]), Unix seconds: what
    /// revocation compares.
    pub issued_at: u64,
}

/// Reads the node id and role of a node certificate (DER). The caller has verified the
/// chain already (the TLS handshake did).
pub fn identity_der(der: &[u8]) -> Result<Identity, CaError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| cert_err(format!("unreadable certificate: {e}")))?;
    let subject = cert.subject();
    let node_id = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| cert_err("the certificate names no node"))?
        .to_string();
    let role = subject
        .iter_organizational_unit()
        .next()
        .and_then(|ou| ou.as_str().ok())
        .ok_or_else(|| cert_err("the certificate names no role"))?
        .parse()?;
    let time = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
    };
    let not_after = cert.validity().not_after.timestamp().max(0) as u64;
    Ok(Identity {
        node_id,
        role,
        not_after: time(cert.validity().not_after),
        not_before: time(cert.validity().not_before),
        issued_at: not_after.saturating_sub(NODE_CERT_VALIDITY.as_secs()),
    })
}

/// [`identity_der`] of a PEM certificate.
pub fn identity_pem(pem: &str) -> Result<Identity, CaError> {
    identity_der(&der_of(pem)?)
}

/// Whether a certificate is past half its life (time to renew it).
pub fn wants_renewal(id: &Identity, now: SystemTime) -> bool {
    let life = id
        .not_after
        .duration_since(id.not_before)
        .unwrap_or_default();
    now >= id.not_before + life / 2
}

/// A new join-token secret: 128 random bits, hex.
pub fn new_join_secret() -> Result<String, CaError> {
    shoal_api::id::random_hex(16).map_err(cert_err)
}

/// Compares secrets in time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_issues_certificates_that_name_node_and_role() {
        let ca = Ca::generate().unwrap();
        let (key, csr) = node_key_and_request("abc123").unwrap();
        assert!(key.contains("PRIVATE KEY"));
        let cert = ca.issue(&csr, "node-7", Role::Worker).unwrap();
        let id = identity_pem(&cert).unwrap();
        assert_eq!(
            id.node_id, "node-7",
            "the CA names the node, not the request"
        );
        assert_eq!(id.role, Role::Worker);
        assert!(!wants_renewal(&id, SystemTime::now()));
        assert!(wants_renewal(
            &id,
            SystemTime::now() + NODE_CERT_VALIDITY / 2 + Duration::from_secs(7200)
        ));
        let m = ca.issue(&csr, "node-8", Role::Manager).unwrap();
        assert_eq!(identity_pem(&m).unwrap().role, Role::Manager);
        assert!(ca.issue("garbage", "x", Role::Worker).is_err());

        // The issue time is what revocation compares: now, or the time asked for.
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let issued = identity_pem(&m).unwrap().issued_at;
        assert!(issued.abs_diff(now) <= 2, "{issued} vs {now}");
        let later = ca
            .issue_since(&csr, "node-8", Role::Worker, now + 100)
            .unwrap();
        let later = identity_pem(&later).unwrap();
        assert_eq!(later.issued_at, now + 100);
        assert!(later.not_before <= SystemTime::now(), "valid at once");
    }

    #[test]
    fn join_secrets_are_fresh_and_compared_in_full() {
        let a = new_join_secret().unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_join_secret().unwrap());
        assert!(same_secret("abcd", "abcd"));
        assert!(!same_secret("abcd", "abce"));
        assert!(!same_secret("abcd", "abc"));
    }
}
