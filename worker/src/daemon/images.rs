//! The Images gRPC service over the image store. Uploads (import, load) stream into the
//! store's blocking readers; every store call runs on the blocking pool.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use shoal_api::engine as pb;
use shoal_api::engine::images_server::Images;
use tonic::{Request, Response, Status, Streaming};

use super::upload::ChannelReader;
use crate::engine::Engine;
use crate::image::{ImageError, ImageRecord, ImageStore, Reference};
use crate::registry::{Progress, RegistryError, RegistryOptions};

/// The service.
pub struct ImagesService {
    /// The engine, for its image store and to know which images are in use.
    pub engine: Arc<Engine>,
    /// Registries reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Directories of per-registry CA certificates (`certs.d`).
    pub certs_dirs: Vec<std::path::PathBuf>,
}

fn image_status(e: ImageError) -> Status {
    let text = e.to_string();
    if text.contains("not found") {
        Status::not_found(text)
    } else if text.contains("in use") {
        Status::failed_precondition(text)
    } else {
        Status::invalid_argument(text)
    }
}

fn summary(r: &ImageRecord) -> pb::ImageSummary {
    pb::ImageSummary {
        references: r.references.iter().map(|x| x.to_string()).collect(),
        id: r.id.clone(),
        manifest_digest: r.manifest_digest.clone(),
        size: r.size,
        created_unix: r.created,
    }
}

/// Runs a store call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(image_status)
}

/// Feeds an upload stream into a reader on the blocking pool running `consume`; returns
/// what `consume` returns, and the reference from the first chunk.
async fn upload<T: Send + 'static>(
    mut stream: Streaming<pb::Upload>,
    consume: impl FnOnce(ChannelReader, String) -> Result<T, ImageError> + Send + 'static,
) -> Result<T, Status> {
    let first = stream
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("empty upload"))?;
    let reference = first.reference.clone();
    let (tx, reader) = ChannelReader::new();
    let task = tokio::task::spawn_blocking(move || consume(reader, reference));
    let mut send_ok = tx.send(Ok(first.data)).await.is_ok();
    while send_ok {
        match stream.message().await {
            Ok(Some(chunk)) => send_ok = tx.send(Ok(chunk.data)).await.is_ok(),
            Ok(None) => break,
            Err(e) => {
                let _ = tx.send(Err(format!("upload interrupted: {e}"))).await;
                break;
            }
        }
    }
    drop(tx);
    task.await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(image_status)
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl ImagesService {
    /// The daemon's registry settings merged with the request's.
    fn registry_options(
        &self,
        req: Option<pb::RegistryOptions>,
        registry: &str,
    ) -> RegistryOptions {
        let req = req.unwrap_or_default();
        let mut insecure = self.insecure_registries.clone();
        insecure.extend(req.insecure_registries);
        RegistryOptions {
            insecure,
            username: req.username,
            password: req.password,
            ca_certs: crate::registry::ca_certs_for(&self.certs_dirs, registry),
        }
    }
}

/// Runs a pull or push, turning its progress into a gRPC stream that ends with the
/// outcome: an error status if it failed.
fn progress_stream<F, Fut>(work: F) -> BoxStream<pb::Progress>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Progress>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), RegistryError>> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Progress>(64);
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Result<pb::Progress, Status>>(64);
    tokio::spawn(async move {
        let forward_tx = out_tx.clone();
        let forward = tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                let msg = pb::Progress {
                    id: p.id,
                    action: p.action,
                    current: p.current,
                    total: p.total,
                    message: String::new(),
                };
                if forward_tx.send(Ok(msg)).await.is_err() {
                    break;
                }
            }
        });
        let result = work(tx).await;
        let _ = forward.await;
        if let Err(e) = result {
            let status = match &e {
                RegistryError::Image(ImageError::NotFound(_)) => Status::not_found(e.to_string()),
                _ => Status::failed_precondition(e.to_string()),
            };
            let _ = out_tx.send(Err(status)).await;
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(out_rx))
}

#[tonic::async_trait]
impl Images for ImagesService {
    async fn import(
        &self,
        request: Request<Streaming<pb::Upload>>,
    ) -> Result<Response<pb::ImageSummary>, Status> {
        let store: Arc<ImageStore> = self.engine.images().clone();
        let record = upload(request.into_inner(), move |reader, reference| {
            let reference = Reference::parse(&reference)?;
            store.import_rootfs(reader, &reference)
        })
        .await?;
        Ok(Response::new(summary(&record)))
    }

    async fn load(
        &self,
        request: Request<Streaming<pb::Upload>>,
    ) -> Result<Response<pb::LoadReply>, Status> {
        let store: Arc<ImageStore> = self.engine.images().clone();
        let records = upload(request.into_inner(), move |reader, _| {
            store.load_archive(reader)
        })
        .await?;
        Ok(Response::new(pb::LoadReply {
            images: records.iter().map(summary).collect(),
        }))
    }

    type PullStream = BoxStream<pb::Progress>;

    async fn pull(
        &self,
        request: Request<pb::PullRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let r = request.into_inner();
        let reference = Reference::parse(&r.reference).map_err(image_status)?;
        let opts = self.registry_options(r.registry, reference.registry());
        let store = self.engine.images().clone();
        Ok(Response::new(progress_stream(move |tx| async move {
            crate::registry::pull(store, &reference, &opts, tx)
                .await
                .map(|_| ())
        })))
    }

    type PushStream = BoxStream<pb::Progress>;

    async fn push(
        &self,
        request: Request<pb::PushRequest>,
    ) -> Result<Response<Self::PushStream>, Status> {
        let r = request.into_inner();
        let reference = Reference::parse(&r.reference).map_err(image_status)?;
        let opts = self.registry_options(r.registry, reference.registry());
        let store = self.engine.images().clone();
        // Fail before streaming when the image is not here.
        let key = reference.to_string();
        let check = store.clone();
        blocking(move || check.resolve(&key)).await?;
        Ok(Response::new(progress_stream(move |tx| async move {
            crate::registry::push(store, &reference, &opts, tx)
                .await
                .map(|_| ())
        })))
    }

    async fn list(
        &self,
        _request: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesReply>, Status> {
        let store = self.engine.images().clone();
        let records = blocking(move || store.list()).await?;
        Ok(Response::new(pb::ListImagesReply {
            images: records.iter().map(summary).collect(),
        }))
    }

    async fn inspect(
        &self,
        request: Request<pb::ImageRef>,
    ) -> Result<Response<pb::ImageDetail>, Status> {
        let store = self.engine.images().clone();
        let reference = request.into_inner().reference;
        let (record, config, manifest) = blocking(move || {
            let record = store.resolve(&reference)?;
            let config = store.config(&record)?;
            let manifest = store.manifest(&record)?;
            Ok((record, config, manifest))
        })
        .await?;
        Ok(Response::new(pb::ImageDetail {
            summary: Some(summary(&record)),
            config_json: serde_json::to_string(&config)
                .map_err(|e| Status::internal(format!("encoding the image's config: {e}")))?,
            manifest_json: serde_json::to_string(&manifest)
                .map_err(|e| Status::internal(format!("encoding the image's manifest: {e}")))?,
        }))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveImageRequest>,
    ) -> Result<Response<pb::RemoveImageReply>, Status> {
        let r = request.into_inner();
        let store = self.engine.images().clone();
        let engine = self.engine.clone();
        let outcome = blocking(move || {
            store.remove(&r.reference, r.force, &|id: &str| engine.image_in_use(id))
        })
        .await?;
        Ok(Response::new(pb::RemoveImageReply {
            untagged: outcome.untagged.iter().map(|x| x.to_string()).collect(),
            deleted: outcome.deleted.iter().map(|x| x.to_string()).collect(),
        }))
    }
}
