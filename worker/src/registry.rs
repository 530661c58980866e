//! Pull and push over the OCI distribution API, with oci-client (rustls with aws-lc-rs;
//! bearer-token and basic auth; plain HTTP only for registries named insecure). Blobs land
//! in the image store through its verifying `put_blob`, so a registry that serves the
//! wrong bytes is caught by digest.

use std::sync::Arc;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest;
use oci_client::secrets::RegistryAuth;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::image::{ImageError, ImageRecord, ImageStore, Reference};

/// Errors of pull and push.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry refused or failed the request.
    #[error("{reference}: {message}")]
    Registry {
        /// The image.
        reference: String,
        /// What went wrong, with a hint when one helps.
        message: String,
    },
    /// The store refused what came.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The manifest is not one we can run.
    #[error("{0}")]
    Manifest(String),
    /// Local I/O failed.
    #[error("{0}")]
    Io(String),
}

/// One step of a pull or push, for progress display.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// A blob digest, or empty for the whole image.
    pub id: String,
    /// What happens to it: "exists", "downloading", "downloaded", "pushing", "pushed",
    /// "resolved", "done".
    pub action: String,
    /// Bytes done.
    pub current: u64,
    /// Bytes in all.
    pub total: u64,
}

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// `HOST:PORT` names reached over plain HTTP.
    pub insecure: Vec<String>,
    /// Basic credentials, when given.
    pub username: String,
    /// The password for `username`.
    pub password: String,
    /// Extra CA certificates (PEM) to trust for this registry.
    pub ca_certs: Vec<Vec<u8>>,
}

/// Reads the CA certificates kept for `registry` (`HOST[:PORT]`) under each of `dirs`, as
/// Docker's `certs.d`: every `*.crt` in `DIR/HOST:PORT/`.
pub fn ca_certs_for(dirs: &[std::path::PathBuf], registry: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir.join(registry)) else {
            continue;
        };
        let mut files: Vec<_> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "crt"))
            .collect();
        files.sort();
        out.extend(files.iter().filter_map(|p| std::fs::read(p).ok()));
    }
    out
}

impl RegistryOptions {
    fn client(&self) -> oci_client::Client {
        oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(self.insecure.clone()),
            extra_root_certificates: self
                .ca_certs
                .iter()
                .map(|pem| oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            ..Default::default()
        })
    }

    fn auth(&self) -> RegistryAuth {
        if self.username.is_empty() {
            RegistryAuth::Anonymous
        } else {
            RegistryAuth::Basic(self.username.clone(), self.password.clone())
        }
    }
}

const ACCEPTED: &[&str] = &[
    manifest::OCI_IMAGE_MEDIA_TYPE,
    manifest::IMAGE_MANIFEST_MEDIA_TYPE,
    manifest::OCI_IMAGE_INDEX_MEDIA_TYPE,
    manifest::IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

fn remote(reference: &Reference) -> Result<oci_client::Reference, RegistryError> {
    reference
        .to_string()
        .parse()
        .map_err(|e| RegistryError::Manifest(format!("{reference}: {e}")))
}

fn registry_error(
    reference: &Reference,
    opts: &RegistryOptions,
    e: impl std::error::Error,
) -> RegistryError {
    // The useful part (a refused certificate, a refused connection) is deep in the error's
    // chain, and only its debug form shows all of it.
    let text = e.to_string();
    let detail = format!("{e:?}");
    let registry = reference.registry();
    let (cause, hint) = if detail.contains("UnknownIssuer") || detail.contains("InvalidCertificate")
    {
        (
            "the registry's TLS certificate is not trusted".to_string(),
            format!(
                "; to trust its CA, put the CA certificate in <data-root>/certs.d/{registry}/ca.crt (or /etc/shoal/certs.d/{registry}/ca.crt)"
            ),
        )
    } else if detail.contains("InvalidContentType") || detail.contains("CorruptMessage") {
        (
            "the registry does not speak TLS".to_string(),
            format!("; if {registry} serves plain HTTP, pass --insecure-registry {registry}"),
        )
    } else if detail.contains("ConnectionRefused") {
        (
            "connection refused".to_string(),
            format!("; check that a registry listens on {registry}"),
        )
    } else if text.contains("401") || text.contains("Unauthorized") || text.contains("denied") {
        (
            text.clone(),
            if opts.username.is_empty() {
                "; the registry wants credentials".to_string()
            } else {
                "; check the username and password".to_string()
            },
        )
    } else if text.contains("404")
        || text.contains("NotFound")
        || text.contains("MANIFEST_UNKNOWN")
        || text.contains("unknown")
    {
        (text.clone(), "; check the repository and tag".to_string())
    } else {
        (text.clone(), String::new())
    };
    RegistryError::Registry {
        reference: reference.familiar(),
        message: format!("{cause}{hint}"),
    }
}

/// The architecture name OCI uses for this host.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// Pulls `reference` into `store`.
pub async fn pull(
    store: Arc<ImageStore>,
    reference: &Reference,
    opts: &RegistryOptions,
    progress: mpsc::Sender<Progress>,
) -> Result<ImageRecord, RegistryError> {
    let client = opts.client();
    let auth = opts.auth();
    let mut target = remote(reference)?;
    let (mut raw, mut digest) = client
        .pull_manifest_raw(&target, &auth, ACCEPTED)
        .await
        .map_err(|e| registry_error(reference, opts, e))?;
    let mut manifest: Value = serde_json::from_slice(&raw)
        .map_err(|e| RegistryError::Manifest(format!("{reference}: malformed manifest: {e}")))?;
    if manifest.get("manifests").is_some() {
        // An index: pick this host's platform.
        let entries = manifest["manifests"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let chosen = entries
            .iter()
            .find(|m| {
                m["platform"]["os"] == "linux" && m["platform"]["architecture"] == host_arch()
            })
            .ok_or_else(|| {
                RegistryError::Manifest(format!(
                    "{}: no image for linux/{} in the index",
                    reference.familiar(),
                    host_arch()
                ))
            })?;
        let d = chosen["digest"].as_str().unwrap_or_default().to_string();
        target = target.clone_with_digest(d);
        (raw, digest) = client
            .pull_manifest_raw(&target, &auth, ACCEPTED)
            .await
            .map_err(|e| registry_error(reference, opts, e))?;
        manifest = serde_json::from_slice(&raw).map_err(|e| {
            RegistryError::Manifest(format!("{reference}: malformed manifest: {e}"))
        })?;
    }
    let _ = progress
        .send(Progress {
            id: digest.clone(),
            action: "resolved".into(),
            ..Default::default()
        })
        .await;
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .ok_or_else(|| RegistryError::Manifest(format!("{reference}: manifest has no config")))?
        .to_string();
    let mut blobs: Vec<(String, u64)> = vec![(
        config_digest.clone(),
        manifest["config"]["size"].as_u64().unwrap_or(0),
    )];
    for layer in manifest["layers"].as_array().cloned().unwrap_or_default() {
        let d = layer["digest"].as_str().unwrap_or_default().to_string();
        blobs.push((d, layer["size"].as_u64().unwrap_or(0)));
    }
    let tmp_dir = store.root().join("tmp");
    std::fs::create_dir_all(&tmp_dir).map_err(|e| RegistryError::Io(e.to_string()))?;
    for (blob, size) in blobs {
        if store.has_blob(&blob) {
            let _ = progress
                .send(Progress {
                    id: blob.clone(),
                    action: "exists".into(),
                    current: size,
                    total: size,
                })
                .await;
            continue;
        }
        let _ = progress
            .send(Progress {
                id: blob.clone(),
                action: "downloading".into(),
                current: 0,
                total: size,
            })
            .await;
        let tmp = tmp_dir.join(format!("pull-{}", blob.replace(':', "-")));
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| RegistryError::Io(format!("{}: {e}", tmp.display())))?;
        let pulled = client.pull_blob(&target, blob.as_str(), file).await;
        if let Err(e) = pulled {
            let _ = std::fs::remove_file(&tmp);
            return Err(registry_error(reference, opts, e));
        }
        let store2 = store.clone();
        let blob2 = blob.clone();
        let tmp2 = tmp.clone();
        let put = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&tmp2).map_err(|e| ImageError::Io(e.to_string()))?;
            store2.put_blob(f, Some(&blob2))
        })
        .await
        .map_err(|e| RegistryError::Io(e.to_string()))?;
        let _ = std::fs::remove_file(&tmp);
        put?;
        let _ = progress
            .send(Progress {
                id: blob.clone(),
                action: "downloaded".into(),
                current: size,
                total: size,
            })
            .await;
    }
    let config = std::fs::read(store.blob_path(&config_digest))
        .map_err(|e| RegistryError::Io(e.to_string()))?;
    let reference = reference.clone();
    let record = tokio::task::spawn_blocking(move || store.put_image(&raw, &config, &reference))
        .await
        .map_err(|e| RegistryError::Io(e.to_string()))??;
    let _ = progress
        .send(Progress {
            id: digest,
            action: "done".into(),
            ..Default::default()
        })
        .await;
    Ok(record)
}

/// Pushes the local image `reference` to its registry.
pub async fn push(
    store: Arc<ImageStore>,
    reference: &Reference,
    opts: &RegistryOptions,
    progress: mpsc::Sender<Progress>,
) -> Result<String, RegistryError> {
    let client = opts.client();
    let auth = opts.auth();
    let target = remote(reference)?;
    let record = store.resolve(&reference.to_string())?;
    let raw = std::fs::read(store.blob_path(&record.manifest_digest))
        .map_err(|e| RegistryError::Io(e.to_string()))?;
    let manifest: Value = serde_json::from_slice(&raw)
        .map_err(|e| RegistryError::Manifest(format!("stored manifest unreadable: {e}")))?;
    client
        .auth(&target, &auth, oci_client::RegistryOperation::Push)
        .await
        .map_err(|e| registry_error(reference, opts, e))?;
    let mut blobs = vec![
        manifest["config"]["digest"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    ];
    for layer in manifest["layers"].as_array().cloned().unwrap_or_default() {
        blobs.push(layer["digest"].as_str().unwrap_or_default().to_string());
    }
    for blob in blobs {
        let exists = client
            .blob_exists(&target, &blob)
            .await
            .map_err(|e| registry_error(reference, opts, e))?;
        let data = if exists {
            None
        } else {
            Some(
                tokio::fs::read(store.blob_path(&blob))
                    .await
                    .map_err(|e| RegistryError::Io(e.to_string()))?,
            )
        };
        let size = data.as_ref().map(|d| d.len() as u64).unwrap_or(0);
        if let Some(data) = data {
            let _ = progress
                .send(Progress {
                    id: blob.clone(),
                    action: "pushing".into(),
                    current: 0,
                    total: size,
                })
                .await;
            client
                .push_blob(&target, data, &blob)
                .await
                .map_err(|e| registry_error(reference, opts, e))?;
        }
        let _ = progress
            .send(Progress {
                id: blob.clone(),
                action: if exists { "exists" } else { "pushed" }.into(),
                current: size,
                total: size,
            })
            .await;
    }
    let media_type = manifest["mediaType"]
        .as_str()
        .unwrap_or(manifest::OCI_IMAGE_MEDIA_TYPE)
        .to_string();
    let content_type = media_type
        .parse()
        .map_err(|_| RegistryError::Manifest(format!("bad media type {media_type}")))?;
    client
        .push_manifest_raw(&target, raw, content_type)
        .await
        .map_err(|e| registry_error(reference, opts, e))?;
    let _ = progress
        .send(Progress {
            id: record.manifest_digest.clone(),
            action: "done".into(),
            ..Default::default()
        })
        .await;
    Ok(record.manifest_digest)
}
