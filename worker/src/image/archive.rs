//! Images from files: a root filesystem tarball becomes a one-layer image (import); a
//! `docker save` archive or an OCI image layout archive is loaded with every blob checked
//! against its digest (load).

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{HashingWriter, ImageError, ImageRecord, ImageStore, Reference, ioe, is_gzip};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The sha256 of a file's uncompressed content (gunzipped when gzip).
fn diff_id_of(path: &Path) -> Result<String, ImageError> {
    let file = std::fs::File::open(path).map_err(ioe(path.display()))?;
    let mut reader: Box<dyn Read> = if is_gzip(path) {
        Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| ImageError::Archive(format!("reading layer {}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

impl ImageStore {
    /// Imports a root filesystem tarball (plain or gzip) as a one-layer image.
    pub fn import_rootfs(
        &self,
        tar: impl Read,
        reference: &Reference,
    ) -> Result<ImageRecord, ImageError> {
        let tmp = self.temp_path("import");
        let result = self.import_inner(tar, reference, &tmp);
        let _ = std::fs::remove_file(&tmp);
        result
    }

    fn import_inner(
        &self,
        mut tar: impl Read,
        reference: &Reference,
        tmp: &Path,
    ) -> Result<ImageRecord, ImageError> {
        let file = std::fs::File::create(tmp).map_err(ioe(tmp.display()))?;
        let mut w = HashingWriter::new(std::io::BufWriter::new(file));
        std::io::copy(&mut tar, &mut w)
            .map_err(|e| ImageError::Io(format!("receiving the tarball: {e}")))?;
        let (mut file, _, len) = w.finish();
        file.flush().map_err(ioe(tmp.display()))?;
        drop(file);
        if len == 0 {
            return Err(ImageError::Archive(
                "the tarball is empty: give a tar of a root filesystem".into(),
            ));
        }
        // Check it is a tar at all before storing anything.
        let gz = is_gzip(tmp);
        {
            let f = std::fs::File::open(tmp).map_err(ioe(tmp.display()))?;
            let r: Box<dyn Read> = if gz {
                Box::new(flate2::read::GzDecoder::new(f))
            } else {
                Box::new(f)
            };
            let mut a = tar::Archive::new(r);
            let first = a
                .entries()
                .ok()
                .and_then(|mut e| e.next())
                .map(|e| e.is_ok());
            if first != Some(true) {
                return Err(ImageError::Archive(
                    "the file is not a tar archive (plain or gzip): make one with `tar -C ROOTFS -cf rootfs.tar .`".into(),
                ));
            }
        }
        let diff_id = diff_id_of(tmp)?;
        let layer_digest =
            self.put_blob(std::fs::File::open(tmp).map_err(ioe(tmp.display()))?, None)?;
        let created = now_rfc3339();
        let config = json!({
            "created": created,
            "architecture": oci_arch(),
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
            },
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
            "history": [{ "created": created, "created_by": "shoal image import" }]
        });
        let config_bytes =
            serde_json::to_vec(&config).map_err(|e| ImageError::Io(e.to_string()))?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": OCI_CONFIG, "digest": super::digest_of(&config_bytes), "size": config_bytes.len() },
            "layers": [{ "mediaType": if gz { OCI_LAYER_GZIP } else { OCI_LAYER_TAR }, "digest": layer_digest, "size": len }]
        });
        let manifest_bytes =
            serde_json::to_vec(&manifest).map_err(|e| ImageError::Io(e.to_string()))?;
        self.record_image(&manifest_bytes, &config_bytes, Some(reference))
    }

    /// Loads a `docker save` archive or an OCI image layout archive.
    pub fn load_archive(&self, archive: impl Read) -> Result<Vec<ImageRecord>, ImageError> {
        let dir = self.temp_path("load");
        // `docker save | gzip` archives are common: look at the magic bytes.
        let mut archive = std::io::BufReader::new(archive);
        let gz = std::io::BufRead::fill_buf(&mut archive)
            .map(|b| b.starts_with(&[0x1f, 0x8b]))
            .unwrap_or(false);
        let archive: Box<dyn Read> = if gz {
            Box::new(flate2::read::GzDecoder::new(archive))
        } else {
            Box::new(archive)
        };
        let result = extract(archive, &dir).and_then(|()| self.load_dir(&dir));
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    fn load_dir(&self, dir: &Path) -> Result<Vec<ImageRecord>, ImageError> {
        if dir.join("index.json").exists() && !dir.join("manifest.json").exists() {
            return self.load_oci(dir);
        }
        if dir.join("manifest.json").exists() {
            return self.load_docker(dir);
        }
        Err(ImageError::Archive(
            "not an image archive: expected manifest.json (docker save) or index.json (OCI layout) at its top level".into(),
        ))
    }

    fn load_docker(&self, dir: &Path) -> Result<Vec<ImageRecord>, ImageError> {
        let list: Vec<Value> = read_json(&dir.join("manifest.json"))?
            .as_array()
            .cloned()
            .ok_or_else(|| ImageError::Archive("manifest.json is not a list".into()))?;
        let mut out = Vec::new();
        for entry in list {
            let config_path = inside(dir, entry["Config"].as_str().unwrap_or_default())?;
            let config_bytes = std::fs::read(&config_path).map_err(ioe(config_path.display()))?;
            let config: Value = serde_json::from_slice(&config_bytes)
                .map_err(|e| ImageError::Archive(format!("image config: {e}")))?;
            let want: Vec<String> = config["rootfs"]["diff_ids"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let layer_paths = entry["Layers"].as_array().cloned().unwrap_or_default();
            if layer_paths.len() != want.len() {
                return Err(ImageError::Archive(format!(
                    "manifest.json lists {} layers but the config has {} diff ids",
                    layer_paths.len(),
                    want.len()
                )));
            }
            let mut layers = Vec::new();
            for (p, expected_diff) in layer_paths.iter().zip(&want) {
                let name = p.as_str().unwrap_or_default();
                let path = inside(dir, name)?;
                if !path.is_file() {
                    return Err(ImageError::Archive(format!(
                        "layer \"{name}\" named in manifest.json is missing from the archive: the archive is incomplete; save it again"
                    )));
                }
                let diff_id = diff_id_of(&path)?;
                if diff_id != *expected_diff {
                    return Err(ImageError::DigestMismatch {
                        expected: expected_diff.clone(),
                        actual: diff_id,
                    });
                }
                let size = path.metadata().map_err(ioe(path.display()))?.len();
                let gz = is_gzip(&path);
                let digest = self.put_blob(
                    std::fs::File::open(&path).map_err(ioe(path.display()))?,
                    None,
                )?;
                layers.push(json!({ "mediaType": if gz { OCI_LAYER_GZIP } else { OCI_LAYER_TAR }, "digest": digest, "size": size }));
            }
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": { "mediaType": OCI_CONFIG, "digest": super::digest_of(&config_bytes), "size": config_bytes.len() },
                "layers": layers
            });
            let manifest_bytes =
                serde_json::to_vec(&manifest).map_err(|e| ImageError::Io(e.to_string()))?;
            let tags: Vec<Reference> = entry["RepoTags"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_str())
                        .map(Reference::parse)
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?
                .unwrap_or_default();
            let mut record = self.record_image(&manifest_bytes, &config_bytes, tags.first())?;
            for t in tags.iter().skip(1) {
                record = self.record_image(&manifest_bytes, &config_bytes, Some(t))?;
            }
            out.push(record);
        }
        Ok(out)
    }

    fn load_oci(&self, dir: &Path) -> Result<Vec<ImageRecord>, ImageError> {
        let index = read_json(&dir.join("index.json"))?;
        let mut out = Vec::new();
        for desc in index["manifests"].as_array().cloned().unwrap_or_default() {
            let annotations = &desc["annotations"];
            let name = annotations["io.containerd.image.name"]
                .as_str()
                .or_else(|| annotations["org.opencontainers.image.ref.name"].as_str())
                .and_then(|n| {
                    Reference::parse(n).ok().filter(|_| {
                        n.contains('/')
                            || n.contains(':')
                            || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
                    })
                });
            let manifest_bytes = self.layout_blob(dir, &desc)?;
            let mut manifest: Value = serde_json::from_slice(&manifest_bytes)
                .map_err(|e| ImageError::Archive(format!("manifest: {e}")))?;
            let mut manifest_bytes = manifest_bytes;
            if manifest["mediaType"] == OCI_INDEX || manifest.get("manifests").is_some() {
                let chosen = manifest["manifests"]
                    .as_array()
                    .and_then(|m| {
                        m.iter()
                            .find(|d| {
                                d["platform"]["architecture"] == oci_arch()
                                    && d["platform"]["os"] == "linux"
                            })
                            .cloned()
                    })
                    .ok_or_else(|| {
                        ImageError::Archive(format!(
                            "the archive has no image for linux/{}",
                            oci_arch()
                        ))
                    })?;
                manifest_bytes = self.layout_blob(dir, &chosen)?;
                manifest = serde_json::from_slice(&manifest_bytes)
                    .map_err(|e| ImageError::Archive(format!("manifest: {e}")))?;
            }
            let config_bytes = self.layout_blob(dir, &manifest["config"])?;
            for layer in manifest["layers"].as_array().cloned().unwrap_or_default() {
                self.layout_blob_into_store(dir, &layer)?;
            }
            out.push(self.record_image(&manifest_bytes, &config_bytes, name.as_ref())?);
        }
        if out.is_empty() {
            return Err(ImageError::Archive("index.json lists no images".into()));
        }
        Ok(out)
    }

    /// Reads a blob of an OCI layout, checking its digest.
    fn layout_blob(&self, dir: &Path, desc: &Value) -> Result<Vec<u8>, ImageError> {
        let digest = desc["digest"].as_str().unwrap_or_default();
        let hex = super::hex_of(digest)?;
        let path = dir.join("blobs/sha256").join(hex);
        let data = std::fs::read(&path).map_err(|_| {
            ImageError::Archive(format!("blob {digest} is missing from the archive"))
        })?;
        let actual = super::digest_of(&data);
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(data)
    }

    fn layout_blob_into_store(&self, dir: &Path, desc: &Value) -> Result<(), ImageError> {
        let digest = desc["digest"].as_str().unwrap_or_default();
        let hex = super::hex_of(digest)?;
        let path = dir.join("blobs/sha256").join(hex);
        let f = std::fs::File::open(&path).map_err(|_| {
            ImageError::Archive(format!("blob {digest} is missing from the archive"))
        })?;
        self.put_blob(f, Some(digest))?;
        Ok(())
    }
}

fn read_json(path: &Path) -> Result<Value, ImageError> {
    let raw = std::fs::read(path).map_err(ioe(path.display()))?;
    serde_json::from_slice(&raw)
        .map_err(|e| ImageError::Archive(format!("{}: {e}", path.display())))
}

/// A path named inside an archive, resolved under `dir` without leaving it.
fn inside(dir: &Path, name: &str) -> Result<PathBuf, ImageError> {
    let p = Path::new(name);
    if name.is_empty()
        || p.components()
            .any(|c| matches!(c, Component::ParentDir | Component::RootDir))
    {
        return Err(ImageError::Archive(format!(
            "the archive names a file outside itself: \"{name}\""
        )));
    }
    Ok(dir.join(p))
}

/// Extracts an archive's regular files and directories (nothing else is needed) into `dir`.
fn extract(archive: impl Read, dir: &Path) -> Result<(), ImageError> {
    std::fs::create_dir_all(dir).map_err(ioe(dir.display()))?;
    let mut a = tar::Archive::new(archive);
    let entries = a
        .entries()
        .map_err(|e| ImageError::Archive(format!("not a tar archive: {e}")))?;
    let mut seen = 0;
    let mut links = Vec::new();
    for entry in entries {
        let mut entry =
            entry.map_err(|e| ImageError::Archive(format!("reading the archive: {e}")))?;
        seen += 1;
        let kind = entry.header().entry_type();
        if kind.is_symlink() {
            // Older `docker save` links a layer shared by two images to its first copy.
            if let (Ok(path), Ok(Some(target))) = (entry.path(), entry.link_name()) {
                links.push((path.into_owned(), target.into_owned()));
            }
            continue;
        }
        if !(kind.is_file() || kind.is_dir()) {
            continue;
        }
        // unpack_in refuses paths that would leave `dir`.
        entry
            .unpack_in(dir)
            .map_err(|e| ImageError::Archive(format!("unpacking the archive: {e}")))?;
    }
    if seen == 0 {
        return Err(ImageError::Archive(
            "the archive is empty or not a tar file".into(),
        ));
    }
    for (path, target) in links {
        let base = path.parent().unwrap_or(Path::new(""));
        let (Some(from), Some(to)) = (lexical(&base.join(target)), lexical(&path)) else {
            continue; // leaves the archive: ignored, so nothing outside is ever read
        };
        let (from, to) = (dir.join(from), dir.join(to));
        if from.symlink_metadata().is_ok_and(|m| m.is_file()) && !to.exists() {
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).map_err(ioe(parent.display()))?;
            }
            std::fs::hard_link(&from, &to).map_err(ioe(to.display()))?;
        }
    }
    Ok(())
}

/// A relative path with `.` and `..` resolved by name, or `None` if it leaves its root.
fn lexical(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}
