//! The image store: content-addressed OCI blobs under `<data-root>/image/blobs/sha256/`,
//! every layer unpacked once under `layers/<diff-id>/` and shared by all containers through
//! overlayfs, and an index (`images.redb`) from references to image records. Images come
//! from root filesystem tarballs (import), `docker save` and OCI archives (load), and
//! registries (pull, in `crate::registry`, through `put_blob` and `put_image`).
//!
//! All calls are blocking; the daemon runs them on its blocking pool.
//!
//! (Over 600 lines: the store's one type and its index; archives and references are in
//! modules of their own.)

mod archive;
mod reference;
#[cfg(test)]
mod tests;
mod unpack;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use oci_spec::image::{ImageConfiguration, ImageManifest};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use self::reference::Reference;

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A malformed reference.
    #[error("{0}")]
    InvalidReference(String),
    /// No such image.
    #[error(
        "image \"{0}\" not found: import it with \"shoal image import\", load it with \"shoal image load -i\", or pull it with \"shoal image pull\""
    )]
    NotFound(String),
    /// The image is used by a container.
    #[error("{0}")]
    InUse(String),
    /// Content did not match its digest.
    #[error(
        "digest mismatch for {expected}: the content hashes to {actual}; the source is corrupt or was changed in transit"
    )]
    DigestMismatch {
        /// What it should have been.
        expected: String,
        /// What it was.
        actual: String,
    },
    /// An archive that is neither `docker save` nor OCI, or a malformed one.
    #[error("{0}")]
    Archive(String),
    /// A layer that cannot be unpacked.
    #[error("{0}")]
    Layer(String),
    /// The index failed.
    #[error("image index: {0}")]
    Index(String),
    /// File system trouble.
    #[error("{0}")]
    Io(String),
}

fn ioe(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> ImageError {
    move |e| ImageError::Io(format!("{what}: {e}"))
}

fn idx(e: impl std::fmt::Display) -> ImageError {
    ImageError::Index(e.to_string())
}

const REFS: TableDefinition<&str, &str> = TableDefinition::new("refs");
const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the blob as stored (compressed or not).
    pub digest: String,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
    /// The blob's media type.
    pub media_type: String,
    /// The blob's size in bytes.
    pub size: u64,
}

/// One image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The config's digest, which is the image's id.
    pub id: String,
    /// The manifest's digest.
    pub manifest_digest: String,
    /// Full references that name it.
    pub references: Vec<String>,
    /// Bytes of its layer blobs.
    pub size: u64,
    /// When it was created, in Unix seconds.
    pub created: i64,
    /// Its layers, bottom first.
    pub layers: Vec<LayerRecord>,
}

/// What a removal did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoveOutcome {
    /// References removed.
    pub untagged: Vec<String>,
    /// Blobs deleted.
    pub deleted: Vec<String>,
}

/// The store.
pub struct ImageStore {
    root: PathBuf,
    db: Database,
    unpack_lock: Mutex<()>,
}

/// `sha256:<hex>` of a byte string.
pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn hex_of(digest: &str) -> Result<&str, ImageError> {
    match digest.split_once(':') {
        Some(("sha256", h)) if h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()) => Ok(h),
        _ => Err(ImageError::Archive(format!(
            "unsupported digest \"{digest}\": only sha256 is supported"
        ))),
    }
}

/// A writer that hashes what passes through it.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    pub(crate) fn finish(self) -> (W, String, u64) {
        (
            self.inner,
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.len,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Whether a blob starts like gzip.
pub(crate) fn is_gzip(path: &Path) -> bool {
    let mut magic = [0u8; 2];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == [0x1f, 0x8b]
}

impl ImageStore {
    /// Opens (or creates) the store at `root`.
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        for d in ["blobs/sha256", "layers", "tmp"] {
            std::fs::create_dir_all(root.join(d)).map_err(ioe(root.join(d).display()))?;
        }
        // Leftovers of an interrupted write.
        if let Ok(entries) = std::fs::read_dir(root.join("tmp")) {
            for e in entries.flatten() {
                let _ =
                    std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
            }
        }
        let db = Database::create(root.join("images.redb")).map_err(idx)?;
        let tx = db.begin_write().map_err(idx)?;
        tx.open_table(REFS).map_err(idx)?;
        tx.open_table(IMAGES).map_err(idx)?;
        tx.commit().map_err(idx)?;
        Ok(ImageStore {
            root: root.to_path_buf(),
            db,
            unpack_lock: Mutex::new(()),
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A fresh path under the store's tmp dir.
    pub(crate) fn temp_path(&self, what: &str) -> PathBuf {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    /// Where blob `digest` lives.
    /// A digest that is not `sha256:<64 hex>` maps to a name no blob ever has.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let name = hex_of(digest).unwrap_or("invalid-digest");
        self.root.join("blobs/sha256").join(name)
    }

    /// Whether the store holds blob `digest`.
    pub fn has_blob(&self, digest: &str) -> bool {
        hex_of(digest).is_ok() && self.blob_path(digest).exists()
    }

    /// Stores a blob, verifying it against `expected` when given; returns its digest.
    pub fn put_blob(
        &self,
        mut data: impl Read,
        expected: Option<&str>,
    ) -> Result<String, ImageError> {
        if let Some(e) = expected {
            hex_of(e)?;
        }
        let tmp = self.temp_path("blob");
        let file = std::fs::File::create(&tmp).map_err(ioe(tmp.display()))?;
        let mut w = HashingWriter::new(file);
        let copied = std::io::copy(&mut data, &mut w);
        let (file, digest, _) = w.finish();
        drop(file);
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&tmp);
            return Err(ImageError::Io(format!("writing blob: {e}")));
        }
        if let Some(e) = expected
            && e != digest
        {
            let _ = std::fs::remove_file(&tmp);
            return Err(ImageError::DigestMismatch {
                expected: e.to_string(),
                actual: digest,
            });
        }
        std::fs::rename(&tmp, self.blob_path(&digest)).map_err(ioe("storing blob"))?;
        Ok(digest)
    }

    /// Stores a blob held in memory.
    pub(crate) fn put_bytes(&self, data: &[u8]) -> Result<String, ImageError> {
        self.put_blob(data, None)
    }

    /// Records an image whose config and layer blobs are in the store, from its manifest
    /// and config bytes, under `reference` (if any).
    pub fn put_image(
        &self,
        manifest: &[u8],
        config: &[u8],
        reference: &Reference,
    ) -> Result<ImageRecord, ImageError> {
        self.record_image(manifest, config, Some(reference))
    }

    pub(crate) fn record_image(
        &self,
        manifest_bytes: &[u8],
        config_bytes: &[u8],
        reference: Option<&Reference>,
    ) -> Result<ImageRecord, ImageError> {
        let manifest: serde_json::Value = serde_json::from_slice(manifest_bytes)
            .map_err(|e| ImageError::Archive(format!("malformed manifest: {e}")))?;
        let config: ImageConfiguration = serde_json::from_slice(config_bytes)
            .map_err(|e| ImageError::Archive(format!("malformed image config: {e}")))?;
        let config_digest = self.put_bytes(config_bytes)?;
        let manifest_digest = self.put_bytes(manifest_bytes)?;
        let diff_ids = config.rootfs().diff_ids().clone();
        let layers_json = manifest["layers"].as_array().cloned().unwrap_or_default();
        if layers_json.len() != diff_ids.len() {
            return Err(ImageError::Archive(format!(
                "the manifest lists {} layers but the config {} diff ids",
                layers_json.len(),
                diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        for (l, diff_id) in layers_json.iter().zip(diff_ids) {
            let digest = l["digest"].as_str().unwrap_or_default().to_string();
            if !self.has_blob(&digest) {
                return Err(ImageError::Archive(format!(
                    "layer {digest} is missing from the store"
                )));
            }
            layers.push(LayerRecord {
                size: l["size"].as_u64().unwrap_or(0),
                media_type: l["mediaType"].as_str().unwrap_or_default().to_string(),
                digest,
                diff_id,
            });
        }
        let created = config
            .created()
            .as_deref()
            .and_then(|c| {
                time::OffsetDateTime::parse(c, &time::format_description::well_known::Rfc3339).ok()
            })
            .map(|t| t.unix_timestamp())
            .unwrap_or(0);
        let mut record = ImageRecord {
            id: config_digest,
            manifest_digest: manifest_digest.clone(),
            references: Vec::new(),
            size: layers.iter().map(|l| l.size).sum(),
            created,
            layers,
        };
        let tx = self.db.begin_write().map_err(idx)?;
        {
            let mut images = tx.open_table(IMAGES).map_err(idx)?;
            let mut refs = tx.open_table(REFS).map_err(idx)?;
            if let Some(old) = images.get(manifest_digest.as_str()).map_err(idx)? {
                let old: ImageRecord = serde_json::from_slice(old.value()).map_err(idx)?;
                record.references = old.references;
            }
            if let Some(r) = reference {
                let name = r.to_string();
                // The reference moves from whatever image had it.
                let previous = refs
                    .get(name.as_str())
                    .map_err(idx)?
                    .map(|v| v.value().to_string());
                let previous_raw = match &previous {
                    Some(prev) if *prev != manifest_digest => {
                        let raw = images
                            .get(prev.as_str())
                            .map_err(idx)?
                            .map(|v| v.value().to_vec());
                        raw.map(|r| (prev.clone(), r))
                    }
                    _ => None,
                };
                if let Some((prev, raw)) = previous_raw {
                    let mut p: ImageRecord = serde_json::from_slice(&raw).map_err(idx)?;
                    p.references.retain(|x| *x != name);
                    images
                        .insert(
                            prev.as_str(),
                            serde_json::to_vec(&p).map_err(idx)?.as_slice(),
                        )
                        .map_err(idx)?;
                }
                refs.insert(name.as_str(), manifest_digest.as_str())
                    .map_err(idx)?;
                if !record.references.contains(&name) {
                    record.references.push(name);
                }
            }
            images
                .insert(
                    manifest_digest.as_str(),
                    serde_json::to_vec(&record).map_err(idx)?.as_slice(),
                )
                .map_err(idx)?;
        }
        tx.commit().map_err(idx)?;
        Ok(record)
    }

    /// Every image, newest first.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        let tx = self.db.begin_read().map_err(idx)?;
        let images = tx.open_table(IMAGES).map_err(idx)?;
        let mut out = Vec::new();
        for e in images.iter().map_err(idx)? {
            let (_, v) = e.map_err(idx)?;
            out.push(serde_json::from_slice::<ImageRecord>(v.value()).map_err(idx)?);
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.created));
        Ok(out)
    }

    /// Finds an image by reference, full id, or an unambiguous id prefix (4+ hex digits).
    pub fn resolve(&self, key: &str) -> Result<ImageRecord, ImageError> {
        let all = self.list()?;
        if let Ok(r) = Reference::parse(key) {
            let name = r.to_string();
            if let Some(img) = all.iter().find(|i| i.references.contains(&name)) {
                return Ok(img.clone());
            }
            if let Some(d) = r.digest()
                && let Some(img) = all.iter().find(|i| i.manifest_digest == d)
            {
                return Ok(img.clone());
            }
        }
        let hex = key.strip_prefix("sha256:").unwrap_or(key);
        if hex.len() >= 4 && hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            let matches: Vec<_> = all
                .iter()
                .filter(|i| i.id.trim_start_matches("sha256:").starts_with(hex))
                .collect();
            match matches.len() {
                1 => return Ok(matches[0].clone()),
                0 => {}
                n => {
                    return Err(ImageError::InvalidReference(format!(
                        "\"{key}\" matches {n} images: give more of the id"
                    )));
                }
            }
        }
        // A malformed reference is worth saying so, unless it looked like an id.
        if let Err(e) = Reference::parse(key)
            && !key.bytes().all(|c| c.is_ascii_hexdigit())
        {
            return Err(e);
        }
        Err(ImageError::NotFound(key.to_string()))
    }

    fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        std::fs::read(self.blob_path(digest)).map_err(ioe(format!("reading blob {digest}")))
    }

    /// The image's config.
    pub fn config(&self, image: &ImageRecord) -> Result<ImageConfiguration, ImageError> {
        serde_json::from_slice(&self.read_blob(&image.id)?)
            .map_err(|e| ImageError::Archive(format!("image config {}: {e}", image.id)))
    }

    /// The image's manifest.
    pub fn manifest(&self, image: &ImageRecord) -> Result<ImageManifest, ImageError> {
        serde_json::from_slice(&self.read_blob(&image.manifest_digest)?)
            .map_err(|e| ImageError::Archive(format!("manifest {}: {e}", image.manifest_digest)))
    }

    /// The unpacked directory of each layer, bottom first, unpacking any layer the first
    /// time it is needed.
    pub fn layer_dirs(&self, image: &ImageRecord) -> Result<Vec<PathBuf>, ImageError> {
        let mut out = Vec::new();
        for layer in &image.layers {
            let dir = self.root.join("layers").join(hex_of(&layer.diff_id)?);
            if !dir.exists() {
                let _guard = self.unpack_lock.lock().expect("unpack lock poisoned");
                if !dir.exists() {
                    self.unpack_layer(layer, &dir)?;
                }
            }
            out.push(dir);
        }
        Ok(out)
    }

    fn unpack_layer(&self, layer: &LayerRecord, dir: &Path) -> Result<(), ImageError> {
        let blob = self.blob_path(&layer.digest);
        let tmp = self.temp_path("layer");
        std::fs::create_dir_all(&tmp).map_err(ioe(tmp.display()))?;
        let file = std::fs::File::open(&blob).map_err(ioe(format!("layer {}", layer.digest)))?;
        let reader = std::io::BufReader::new(file);
        let reader: Box<dyn Read> = if is_gzip(&blob) {
            Box::new(flate2::read::GzDecoder::new(reader))
        } else if layer.media_type.contains("zstd") {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(ImageError::Layer(format!(
                "layer {} is zstd-compressed, which this build cannot unpack: re-export the image with gzip layers",
                layer.digest
            )));
        } else {
            Box::new(reader)
        };
        let mut hashing = HashingReader {
            inner: reader,
            hasher: Sha256::new(),
        };
        // The directory is shared by every image naming this diff id, so its content
        // must be what the diff id says: hash all of the tar, padding included.
        let result = unpack::unpack(&mut hashing, &tmp).and_then(|()| {
            std::io::copy(&mut hashing, &mut std::io::sink())
                .map_err(|e| ImageError::Layer(format!("reading layer {}: {e}", layer.digest)))?;
            let actual = format!("sha256:{}", hex::encode(hashing.hasher.finalize_reset()));
            if actual == layer.diff_id {
                Ok(())
            } else {
                Err(ImageError::DigestMismatch {
                    expected: layer.diff_id.clone(),
                    actual,
                })
            }
        });
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, dir).map_err(ioe(format!("storing layer {}", layer.diff_id)))
    }

    /// Removes a reference, or an image by id. The image's blobs and layers go when no
    /// reference is left and no other image shares them. An image a container uses
    /// (`in_use(id)`) is refused; with `force` it loses its references but keeps its
    /// content (listed untagged) until it is removed by id once no container uses it.
    pub fn remove(
        &self,
        key: &str,
        force: bool,
        in_use: &dyn Fn(&str) -> bool,
    ) -> Result<RemoveOutcome, ImageError> {
        let image = self.resolve(key)?;
        let mut outcome = RemoveOutcome::default();
        let by_reference = Reference::parse(key)
            .ok()
            .map(|r| r.to_string())
            .filter(|r| image.references.contains(r));
        let untag_only = by_reference.is_some() && image.references.len() > 1;
        // A forced removal of an image in use only untags it: its layers may be mounted
        // under a container, so its content stays (untagged) until a later removal.
        let keep_content = !untag_only && in_use(&image.id);
        if keep_content && (!force || image.references.is_empty()) {
            let hint = if image.references.is_empty() {
                "remove the container first"
            } else {
                "remove the container first, or use rm -f to only untag it"
            };
            return Err(ImageError::InUse(format!(
                "image \"{key}\" is in use by a container: {hint}"
            )));
        }
        let tx = self.db.begin_write().map_err(idx)?;
        {
            let mut refs = tx.open_table(REFS).map_err(idx)?;
            let mut images = tx.open_table(IMAGES).map_err(idx)?;
            if untag_only {
                let name = by_reference.clone().unwrap_or_default();
                refs.remove(name.as_str()).map_err(idx)?;
                let mut updated = image.clone();
                updated.references.retain(|r| *r != name);
                images
                    .insert(
                        image.manifest_digest.as_str(),
                        serde_json::to_vec(&updated).map_err(idx)?.as_slice(),
                    )
                    .map_err(idx)?;
                outcome.untagged.push(
                    Reference::parse(&name)
                        .map(|r| r.familiar())
                        .unwrap_or(name),
                );
            } else {
                for r in &image.references {
                    refs.remove(r.as_str()).map_err(idx)?;
                    outcome.untagged.push(
                        Reference::parse(r)
                            .map(|x| x.familiar())
                            .unwrap_or_else(|_| r.clone()),
                    );
                }
                if keep_content {
                    let mut dangling = image.clone();
                    dangling.references.clear();
                    images
                        .insert(
                            image.manifest_digest.as_str(),
                            serde_json::to_vec(&dangling).map_err(idx)?.as_slice(),
                        )
                        .map_err(idx)?;
                } else {
                    images.remove(image.manifest_digest.as_str()).map_err(idx)?;
                }
            }
        }
        tx.commit().map_err(idx)?;
        if untag_only || keep_content {
            return Ok(outcome);
        }
        // Delete what no remaining image uses.
        let remaining = self.list()?;
        let mut used: HashSet<String> = HashSet::new();
        let mut used_layers: HashSet<String> = HashSet::new();
        for i in &remaining {
            used.insert(i.id.clone());
            used.insert(i.manifest_digest.clone());
            for l in &i.layers {
                used.insert(l.digest.clone());
                used_layers.insert(l.diff_id.clone());
            }
        }
        let mut blobs = vec![image.id.clone(), image.manifest_digest.clone()];
        blobs.extend(image.layers.iter().map(|l| l.digest.clone()));
        for b in blobs {
            if !used.contains(&b) && std::fs::remove_file(self.blob_path(&b)).is_ok() {
                outcome.deleted.push(b);
            }
        }
        for l in &image.layers {
            if !used_layers.contains(&l.diff_id)
                && let Ok(hex) = hex_of(&l.diff_id)
            {
                let dir = self.root.join("layers").join(hex);
                // Containers of a forced removal may still have it mounted: move it
                // aside first so a new unpack never sees a half-deleted directory.
                let trash = self.temp_path("trash");
                if std::fs::rename(&dir, &trash).is_ok() {
                    let _ = std::fs::remove_dir_all(&trash);
                }
            }
        }
        Ok(outcome)
    }
}
