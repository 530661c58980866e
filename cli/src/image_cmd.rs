//! `shoal image ...`: import, load, pull, push, ls, inspect, rm.

use std::io::{IsTerminal, Read};

use clap::Subcommand;
use shoal_api::engine as pb;
use shoal_api::engine::images_client::ImagesClient;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::args::UsageError;
pub use crate::client::status;
use crate::client::{Host, connect};
use crate::output::{self, short_id};
use crate::progress::ProgressView;

/// The size of one upload chunk.
const CHUNK: usize = 256 * 1024;

/// Image subcommands.
#[derive(Subcommand)]
pub enum ImageCommand {
    /// Import a root filesystem tarball (plain or gzip; - for stdin) as a one-layer image.
    Import {
        /// The tarball.
        tarball: String,
        /// The reference to give the image, such as myimage:1.0.
        reference: String,
    },
    /// Load images from a `docker save` or OCI archive.
    Load {
        /// The archive (stdin when not given).
        #[arg(short, long)]
        input: Option<String>,
    },
    /// Pull an image from a registry.
    Pull(PullArgs),
    /// Push an image to its registry.
    Push(PushArgs),
    /// List images.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Show images in detail, as JSON.
    Inspect {
        /// Images by reference or id.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove images.
    #[command(alias = "remove")]
    Rm {
        /// Remove even when a container uses it.
        #[arg(short, long)]
        force: bool,
        /// Images by reference or id.
        #[arg(required = true)]
        images: Vec<String>,
    },
}

/// `image ls`.
#[derive(clap::Args)]
pub struct LsArgs {
    /// Only ids.
    #[arg(short, long)]
    quiet: bool,
    /// `table` (default) or `json`.
    #[arg(long, default_value = "table")]
    format: String,
}

/// `image pull`.
#[derive(clap::Args)]
pub struct PullArgs {
    /// The image.
    reference: String,
    /// Reach this registry (HOST:PORT) over plain HTTP; repeatable.
    #[arg(long = "insecure-registry")]
    insecure: Vec<String>,
}

/// `image push`.
#[derive(clap::Args)]
pub struct PushArgs {
    /// The image.
    reference: String,
    /// Reach this registry (HOST:PORT) over plain HTTP; repeatable.
    #[arg(long = "insecure-registry")]
    insecure: Vec<String>,
}

/// A file (or stdin) being read into upload chunks on a thread of its own.
struct Upload {
    /// What the file is called in messages.
    name: String,
    chunks: ReceiverStream<pb::Upload>,
    /// A read error, with the chunk sender kept alive so that the upload cannot look
    /// complete to the daemon before we cancel it.
    failed: oneshot::Receiver<(std::io::Error, mpsc::Sender<pb::Upload>)>,
}

impl Upload {
    /// Opens `path` (stdin for none or `-`) and starts reading it. The first chunk carries
    /// `reference`, even when the input is empty.
    fn start(path: Option<&str>, reference: String) -> Result<Upload, UsageError> {
        let (name, mut reader): (String, Box<dyn Read + Send>) = match path {
            None | Some("-") => {
                if std::io::stdin().is_terminal() {
                    return Err(UsageError(
                        "no input: give a file, or pipe the archive into stdin".into(),
                    ));
                }
                ("stdin".into(), Box::new(std::io::stdin()))
            }
            Some(p) => (
                p.to_string(),
                Box::new(std::fs::File::open(p).map_err(|e| {
                    UsageError(format!(
                        "cannot read {p}: {e}; give the path of the archive"
                    ))
                })?),
            ),
        };
        let (tx, rx) = mpsc::channel(4);
        let (fail_tx, fail_rx) = oneshot::channel();
        std::thread::spawn(move || {
            let mut reference = reference;
            let mut first = true;
            loop {
                let mut buf = vec![0u8; CHUNK];
                let n = match read_full(&mut reader, &mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = fail_tx.send((e, tx));
                        return;
                    }
                };
                if n == 0 && !first {
                    return;
                }
                buf.truncate(n);
                let chunk = pb::Upload {
                    // Empty after the first chunk.
                    reference: std::mem::take(&mut reference),
                    data: buf,
                };
                first = false;
                if tx.blocking_send(chunk).is_err() || n == 0 {
                    return;
                }
            }
        });
        Ok(Upload {
            name,
            chunks: ReceiverStream::new(rx),
            failed: fail_rx,
        })
    }

    /// Runs `call` with the chunks; a read error cancels the call.
    async fn send<T, F, Fut>(self, call: F) -> anyhow::Result<T>
    where
        F: FnOnce(ReceiverStream<pb::Upload>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let name = self.name;
        let rpc = call(self.chunks);
        tokio::select! {
            biased;
            Ok((e, _open)) = self.failed => {
                Err(anyhow::anyhow!("reading {name} failed: {e}; nothing was imported"))
            }
            r = rpc => Ok(r.map_err(status)?.into_inner()),
        }
    }
}

/// Reads until `buf` is full or the input ends, so chunks are whole (pipes give less).
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Runs an image subcommand.
pub async fn run(host: &Host, cmd: ImageCommand) -> anyhow::Result<()> {
    // Check local arguments before connecting, so usage errors come first.
    if let ImageCommand::Import { tarball, .. } = &cmd
        && tarball != "-"
        && !std::path::Path::new(tarball).is_file()
    {
        return Err(UsageError(format!(
            "cannot read {tarball}: no such file; give the path of a root filesystem tarball"
        ))
        .into());
    }
    if let ImageCommand::Ls(a) = &cmd
        && a.format != "table"
        && a.format != "json"
    {
        return Err(UsageError(format!(
            "invalid --format \"{}\": use table or json",
            a.format
        ))
        .into());
    }
    // Open the input before connecting, so an unreadable file is a usage error.
    let upload = match &cmd {
        ImageCommand::Import { tarball, reference } => {
            Some(Upload::start(Some(tarball), reference.clone())?)
        }
        ImageCommand::Load { input } => Some(Upload::start(input.as_deref(), String::new())?),
        _ => None,
    };
    let mut client = ImagesClient::new(connect(host).await?)
        .max_decoding_message_size(shoal_api::MAX_MESSAGE)
        .max_encoding_message_size(shoal_api::MAX_MESSAGE)
        .max_decoding_message_size(64 << 20);
    match cmd {
        ImageCommand::Import { .. } => {
            let upload = upload.expect("opened above");
            let s = upload.send(|chunks| client.import(chunks)).await?;
            println!("{}", s.id);
        }
        ImageCommand::Load { .. } => {
            let upload = upload.expect("opened above");
            let reply = upload.send(|chunks| client.load(chunks)).await?;
            for img in reply.images {
                if img.references.is_empty() {
                    println!("Loaded image ID: {}", img.id);
                }
                for r in img.references {
                    println!("Loaded image: {r}");
                }
            }
        }
        ImageCommand::Pull(a) => {
            let req = pb::PullRequest {
                reference: a.reference.clone(),
                registry: Some(pb::RegistryOptions {
                    insecure_registries: a.insecure,
                    ..Default::default()
                }),
            };
            let stream = client.pull(req).await.map_err(status)?.into_inner();
            show_progress(stream).await?;
        }
        ImageCommand::Push(a) => {
            let req = pb::PushRequest {
                reference: a.reference.clone(),
                registry: Some(pb::RegistryOptions {
                    insecure_registries: a.insecure,
                    ..Default::default()
                }),
            };
            let stream = client.push(req).await.map_err(status)?.into_inner();
            show_progress(stream).await?;
        }
        ImageCommand::Ls(a) => {
            let images = client
                .list(pb::ListImagesRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .images;
            if a.format == "json" {
                println!("{}", serde_json::to_string_pretty(&images)?);
            } else if a.quiet {
                for i in images {
                    println!("{}", short_id(&i.id));
                }
            } else {
                let now = output::now();
                let mut rows = Vec::new();
                for i in &images {
                    let refs: Vec<(String, String)> = if i.references.is_empty() {
                        vec![("<none>".into(), "<none>".into())]
                    } else {
                        i.references.iter().map(|r| split_ref(r)).collect()
                    };
                    for (repo, tag) in refs {
                        rows.push(vec![
                            repo,
                            tag,
                            short_id(&i.id),
                            output::ago(i.created_unix, now),
                            output::size(i.size),
                        ]);
                    }
                }
                print!(
                    "{}",
                    output::table(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], &rows)
                );
            }
        }
        ImageCommand::Inspect { images } => {
            let mut out = Vec::new();
            let mut failed = false;
            for r in images {
                match client.inspect(pb::ImageRef { reference: r }).await {
                    Ok(d) => {
                        let d = d.into_inner();
                        out.push(serde_json::json!({
                            "summary": d.summary,
                            "config": serde_json::from_str::<serde_json::Value>(&d.config_json)
                                .map_err(|e| anyhow::anyhow!("the image's config is malformed: {e}"))?,
                            "manifest": serde_json::from_str::<serde_json::Value>(&d.manifest_json)
                                .map_err(|e| anyhow::anyhow!("the image's manifest is malformed: {e}"))?,
                        }));
                    }
                    Err(e) => {
                        eprintln!("error: {}", e.message());
                        failed = true;
                    }
                }
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
            if failed {
                return Err(crate::ExitCode(1).into());
            }
        }
        ImageCommand::Rm { force, images } => {
            let mut failed = false;
            for r in images {
                match client
                    .remove(pb::RemoveImageRequest {
                        reference: r,
                        force,
                    })
                    .await
                {
                    Ok(reply) => {
                        let reply = reply.into_inner();
                        for u in reply.untagged {
                            println!("Untagged: {u}");
                        }
                        for d in reply.deleted {
                            println!("Deleted: {d}");
                        }
                    }
                    Err(e) => {
                        eprintln!("error: {}", e.message());
                        failed = true;
                    }
                }
            }
            if failed {
                return Err(crate::ExitCode(1).into());
            }
        }
    }
    Ok(())
}

/// `docker.io/library/busybox:latest` as (`busybox`, `latest`).
fn split_ref(r: &str) -> (String, String) {
    let short = r
        .strip_prefix("docker.io/library/")
        .or_else(|| r.strip_prefix("docker.io/"))
        .unwrap_or(r);
    let (name, _) = short.split_once('@').unwrap_or((short, ""));
    let slash = name.rfind('/').map(|i| i + 1).unwrap_or(0);
    match name[slash..].rfind(':') {
        Some(i) => (
            name[..slash + i].to_string(),
            name[slash + i + 1..].to_string(),
        ),
        None => (name.to_string(), "<none>".to_string()),
    }
}

async fn show_progress(mut stream: tonic::Streaming<pb::Progress>) -> anyhow::Result<()> {
    let mut view = ProgressView::new();
    while let Some(p) = stream.message().await.map_err(status)? {
        view.show(&p);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_references() {
        for (input, repo, tag) in [
            ("docker.io/library/busybox:latest", "busybox", "latest"),
            ("localhost:5000/a/b:1", "localhost:5000/a/b", "1"),
            ("docker.io/team/app:v2", "team/app", "v2"),
            ("localhost:5000/app", "localhost:5000/app", "<none>"),
            ("busybox:1@sha256:abc", "busybox", "1"),
        ] {
            assert_eq!(split_ref(input), (repo.into(), tag.into()), "{input}");
        }
    }

    #[test]
    fn reads_whole_chunks_from_short_reads() {
        /// Gives at most 3 bytes per read, like a slow pipe, with one interruption.
        struct Trickle(Vec<u8>, bool);
        impl Read for Trickle {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if !self.1 {
                    self.1 = true;
                    return Err(std::io::ErrorKind::Interrupted.into());
                }
                let n = buf.len().min(3).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0.drain(..n);
                Ok(n)
            }
        }
        let mut r = Trickle(b"0123456789".to_vec(), false);
        let mut buf = [0u8; 8];
        assert_eq!(read_full(&mut r, &mut buf).unwrap(), 8);
        assert_eq!(&buf, b"01234567");
        assert_eq!(read_full(&mut r, &mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"89");
        assert_eq!(read_full(&mut r, &mut buf).unwrap(), 0);
    }

    #[tokio::test]
    async fn uploads_carry_the_reference_first_and_every_byte() {
        use futures::StreamExt;
        let path = std::env::temp_dir().join(format!("shoal-cli-upload-{}", std::process::id()));
        struct Remove(std::path::PathBuf);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let _guard = Remove(path.clone());
        let data: Vec<u8> = (0..CHUNK * 2 + 10).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let up = Upload::start(Some(&path.to_string_lossy()), "me:1".into()).unwrap();
        let chunks: Vec<pb::Upload> = up.chunks.collect().await;
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[0].reference, "me:1");
        assert!(chunks[1..].iter().all(|c| c.reference.is_empty()));
        assert_eq!(chunks[0].data.len(), CHUNK);
        let joined: Vec<u8> = chunks.into_iter().flat_map(|c| c.data).collect();
        assert_eq!(joined, data);

        std::fs::write(&path, b"").unwrap();
        let up = Upload::start(Some(&path.to_string_lossy()), "empty:1".into()).unwrap();
        let chunks: Vec<pb::Upload> = up.chunks.collect().await;
        assert_eq!(chunks.len(), 1, "an empty input still names the image");
        assert_eq!(chunks[0].reference, "empty:1");

        let Err(e) = Upload::start(Some("/nonexistent/x.tar"), String::new()) else {
            panic!("a missing file opened");
        };
        assert!(
            e.to_string().starts_with("cannot read /nonexistent/x.tar"),
            "{e}"
        );
    }
}
