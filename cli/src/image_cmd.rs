//! `shoal image ...`.

use std::io::{IsTerminal, Read};

use clap::Subcommand;
use shoal_api::engine as pb;
use shoal_api::engine::images_client::ImagesClient;

use crate::client::{Host, connect};
use crate::output;

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

/// Turns a daemon error into one line, with the exit code it carries.
pub fn status(s: tonic::Status) -> anyhow::Error {
    if s.code() == tonic::Code::Unavailable {
        return anyhow::anyhow!("the shoal daemon went away: {}", s.message());
    }
    let code = s
        .metadata()
        .get("shoal-exit-code")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    anyhow::Error::new(crate::CodedError(code, s.message().to_string()))
}

/// Streams a file (or stdin) to an upload call.
fn upload_stream(
    path: Option<String>,
    reference: String,
) -> anyhow::Result<impl futures::Stream<Item = pb::Upload> + Send + 'static> {
    let mut reader: Box<dyn Read + Send> = match path.as_deref() {
        None | Some("-") => {
            if std::io::stdin().is_terminal() {
                return Err(crate::args::UsageError(
                    "no input: give a file with -i, or pipe the archive into stdin".into(),
                )
                .into());
            }
            Box::new(std::io::stdin())
        }
        Some(p) => Box::new(
            std::fs::File::open(p)
                .map_err(|e| crate::args::UsageError(format!("cannot read {p}: {e}")))?,
        ),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    std::thread::spawn(move || {
        let mut first = true;
        loop {
            let mut buf = vec![0u8; 256 * 1024];
            let n = match reader.read(&mut buf) {
                Ok(0) | Err(_) => 0,
                Ok(n) => n,
            };
            if n == 0 && !first {
                break;
            }
            buf.truncate(n);
            let chunk = pb::Upload {
                reference: if first {
                    reference.clone()
                } else {
                    String::new()
                },
                data: buf,
            };
            first = false;
            if tx.blocking_send(chunk).is_err() || n == 0 {
                break;
            }
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}

fn short_id(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

/// Runs an image subcommand.
pub async fn run(host: &Host, cmd: ImageCommand) -> anyhow::Result<()> {
    // Check local arguments before connecting, so usage errors come first.
    if let ImageCommand::Import { tarball, .. } = &cmd
        && tarball != "-"
        && !std::path::Path::new(tarball).is_file()
    {
        return Err(crate::args::UsageError(format!(
            "cannot read {tarball}: no such file; give the path of a root filesystem tarball"
        ))
        .into());
    }
    let mut client = ImagesClient::new(connect(host).await?).max_decoding_message_size(64 << 20);
    match cmd {
        ImageCommand::Import { tarball, reference } => {
            let stream = upload_stream(Some(tarball), reference)?;
            let s = client.import(stream).await.map_err(status)?.into_inner();
            println!("{}", s.id);
        }
        ImageCommand::Load { input } => {
            let stream = upload_stream(input, String::new())?;
            let reply = client.load(stream).await.map_err(status)?.into_inner();
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
            let mut stream = client.pull(req).await.map_err(status)?.into_inner();
            while let Some(p) = stream.message().await.map_err(status)? {
                print_progress(&p);
            }
        }
        ImageCommand::Push(a) => {
            let req = pb::PushRequest {
                reference: a.reference.clone(),
                registry: Some(pb::RegistryOptions {
                    insecure_registries: a.insecure,
                    ..Default::default()
                }),
            };
            let mut stream = client.push(req).await.map_err(status)?.into_inner();
            while let Some(p) = stream.message().await.map_err(status)? {
                print_progress(&p);
            }
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
            } else if a.format != "table" {
                return Err(crate::args::UsageError(format!(
                    "invalid --format \"{}\": use table or json",
                    a.format
                ))
                .into());
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
                            "config": serde_json::from_str::<serde_json::Value>(&d.config_json).unwrap_or_default(),
                            "manifest": serde_json::from_str::<serde_json::Value>(&d.manifest_json).unwrap_or_default(),
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

fn print_progress(p: &pb::Progress) {
    let id = short_id(&p.id);
    match p.action.as_str() {
        "done" => println!("{}: done", if id.is_empty() { "image" } else { &id }),
        action if p.total > 0 => println!("{id}: {action} {}", output::size(p.total)),
        action => println!("{id}: {action}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_references() {
        assert_eq!(
            split_ref("docker.io/library/busybox:latest"),
            ("busybox".into(), "latest".into())
        );
        assert_eq!(
            split_ref("localhost:5000/a/b:1"),
            ("localhost:5000/a/b".into(), "1".into())
        );
        assert_eq!(
            split_ref("docker.io/team/app:v2"),
            ("team/app".into(), "v2".into())
        );
    }
}
