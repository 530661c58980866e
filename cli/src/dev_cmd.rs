//! `shoal dev`: the daemon in the foreground as a one-node cluster, on the default socket
//! so that plain `shoal service ...` in another terminal reaches it, with a live view of
//! the services' tasks and logs; on Ctrl-C it removes everything it made. Without a stack
//! it runs an embedded demo: the host's busybox-static imported as an image and a `hello`
//! service of two replicas.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use shoal_api::control as pc;
use shoal_api::control::control_client::ControlClient;
use shoal_api::engine as pb;
use shoal_api::engine::containers_client::ContainersClient;
use shoal_api::engine::images_client::ImagesClient;
use shoal_api::types::{RestartPolicy, ServiceMode, ServiceSpec, Task, TaskState};

use crate::client::{Host, connect};
use crate::image_cmd::status;

/// `shoal dev` flags.
#[derive(clap::Args)]
pub struct DevArgs {
    /// Keep state here instead of a temporary directory (kept on exit).
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Where the socket and other volatile state go.
    #[arg(long, default_value = "/run/shoal")]
    pub run_root: PathBuf,
    /// `builtin`, runc, crun, or a path.
    #[arg(long, default_value = "builtin")]
    pub runtime: String,
    /// Stop by itself after this many seconds (for scripts and tests).
    #[arg(long, hide = true)]
    pub exit_after: Option<u64>,
}

const DEMO_IMAGE: &str = "shoal-demo/busybox:latest";

fn demo_service() -> ServiceSpec {
    ServiceSpec {
        name: "hello".into(),
        image: DEMO_IMAGE.into(),
        command: vec![
            "sh".into(),
            "-c".into(),
            "while true; do echo \"hello from $(hostname)\"; sleep 2; done".into(),
        ],
        mode: ServiceMode::Replicated,
        replicas: 2,
        restart: RestartPolicy::default(),
        ..Default::default()
    }
}

/// A root filesystem tarball of the host's busybox-static, for the demo image.
fn busybox_rootfs() -> anyhow::Result<Vec<u8>> {
    let bb = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the demo needs busybox-static on the host: apt-get install busybox-static"
            )
        })?;
    let data = std::fs::read(&bb)?;
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = |path: &str| -> anyhow::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(if path == "tmp/" { 0o1777 } else { 0o755 });
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        b.append_data(&mut h, path, &[][..])?;
        Ok(())
    };
    for d in ["bin/", "etc/", "tmp/", "proc/", "sys/", "dev/", "root/"] {
        dir(d)?;
    }
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(data.len() as u64);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    b.append_data(&mut h, "bin/busybox", &data[..])?;
    for applet in [
        "sh", "echo", "sleep", "hostname", "cat", "ls", "ps", "wget", "httpd", "env", "id", "true",
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    let passwd = b"root:x:0:0:root:/root:/bin/sh\n";
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(passwd.len() as u64);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    b.append_data(&mut h, "etc/passwd", &passwd[..])?;
    Ok(b.into_inner()?)
}

/// The part of `shoal dev` that talks to the daemon it started: set up the demo, follow,
/// clean up. Returns on Ctrl-C (or after `exit_after` seconds).
pub async fn drive(host: Host, started: Instant, exit_after: Option<u64>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let channel = loop {
        match connect(&host).await {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut control = ControlClient::new(channel.clone())
        .max_decoding_message_size(shoal_api::MAX_MESSAGE)
        .max_encoding_message_size(shoal_api::MAX_MESSAGE);
    let info = control
        .info(pc::InfoRequest {})
        .await
        .map_err(status)?
        .into_inner();
    if !info.swarm_active {
        control
            .init(pc::InitRequest::default())
            .await
            .map_err(status)?;
    }
    let mut images = ImagesClient::new(channel.clone())
        .max_decoding_message_size(shoal_api::MAX_MESSAGE)
        .max_encoding_message_size(shoal_api::MAX_MESSAGE);
    let tar = busybox_rootfs()?;
    let chunks = vec![pb::Upload {
        reference: DEMO_IMAGE.into(),
        data: tar,
    }];
    images
        .import(tokio_stream::iter(chunks))
        .await
        .map_err(status)?;
    let services = control
        .list_services(pc::ListRequest {})
        .await
        .map_err(status)?
        .into_inner()
        .objects;
    if !services
        .iter()
        .any(|o| o.json.contains("\"name\":\"hello\""))
    {
        control
            .create_service(pc::CreateServiceRequest::new(&demo_service())?)
            .await
            .map_err(status)?;
    }
    eprintln!(
        "shoal dev: a one-node cluster on {host}; try \"shoal service ls\" in another terminal; Ctrl-C stops and cleans up"
    );
    let mut containers = ContainersClient::new(channel.clone())
        .max_decoding_message_size(shoal_api::MAX_MESSAGE)
        .max_encoding_message_size(shoal_api::MAX_MESSAGE);
    let mut states: std::collections::BTreeMap<String, TaskState> = Default::default();
    let mut first_running_reported = false;
    let mut followed: std::collections::HashSet<String> = Default::default();
    let stop_at = exit_after.map(|s| Instant::now() + Duration::from_secs(s));
    loop {
        let tasks = control
            .list_tasks(pc::ListTasksRequest::default())
            .await
            .map_err(status)?
            .into_inner()
            .objects;
        for t in shoal_api::wire::decode_all::<Task>(&tasks)? {
            let name = format!("{}.{}", t.spec.name, t.slot);
            if states.get(&t.id) != Some(&t.status.state) {
                eprintln!("[{name}] {:?}: {}", t.status.state, t.status.message);
                states.insert(t.id.clone(), t.status.state);
            }
            if t.status.state == TaskState::Running {
                if !first_running_reported {
                    first_running_reported = true;
                    eprintln!(
                        "shoal dev: first replica running {:.0} ms after start",
                        started.elapsed().as_secs_f64() * 1e3
                    );
                }
                if !t.status.container_id.is_empty()
                    && followed.insert(t.status.container_id.clone())
                {
                    let mut c = containers.clone();
                    let id = t.status.container_id.clone();
                    tokio::spawn(async move {
                        let req = pb::LogsRequest {
                            id,
                            follow: true,
                            tail: -1,
                            ..Default::default()
                        };
                        if let Ok(s) = c.logs(req).await {
                            let mut s = s.into_inner();
                            while let Ok(Some(e)) = s.message().await {
                                println!("{name} | {}", String::from_utf8_lossy(&e.line));
                            }
                        }
                    });
                }
            }
        }
        let stop = tokio::time::sleep(Duration::from_millis(200));
        tokio::select! {
            _ = stop => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        if stop_at.is_some_and(|t| Instant::now() > t) {
            break;
        }
    }
    eprintln!("shoal dev: removing services and containers");
    let services = control
        .list_services(pc::ListRequest {})
        .await
        .map_err(status)?
        .into_inner()
        .objects;
    for s in services {
        let _ = control.remove_service(pc::RemoveRequest { id: s.id }).await;
    }
    let list = containers
        .list(pb::ListRequest { all: true })
        .await
        .map_err(status)?
        .into_inner()
        .containers;
    for c in list {
        let _ = containers
            .remove(pb::RemoveRequest {
                id: c.id,
                force: true,
                volumes: true,
            })
            .await;
    }
    Ok(())
}
