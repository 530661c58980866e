//! `service logs`: the lines of a service's tasks, each prefixed with its task (from this
//! node's engine).

use super::Control;
use super::converge::{place, tasks_of};
use crate::args;
use crate::client::{Host, connect};
use crate::output;

/// `service logs`.
pub(super) async fn logs(
    host: &Host,
    c: &mut Control,
    follow: bool,
    tail: String,
    service: String,
) -> anyhow::Result<()> {
    let tail = args::parse_tail(&tail)?;
    let tasks = tasks_of(c, &service).await?;
    let channel = connect(host).await?;
    let mut handles = Vec::new();
    for t in tasks
        .into_iter()
        .filter(|t| !t.status.container_id.is_empty())
    {
        let mut containers =
            shoal_api::engine::containers_client::ContainersClient::new(channel.clone())
                .max_decoding_message_size(shoal_api::MAX_MESSAGE)
                .max_encoding_message_size(shoal_api::MAX_MESSAGE);
        let prefix = format!("{}.{}", place(&t), output::short_id(&t.id));
        handles.push(tokio::spawn(async move {
            let req = shoal_api::engine::LogsRequest {
                id: t.status.container_id.clone(),
                follow,
                tail,
                ..Default::default()
            };
            let Ok(stream) = containers.logs(req).await else {
                return;
            };
            let mut stream = stream.into_inner();
            while let Ok(Some(e)) = stream.message().await {
                let line = format!("{prefix} | {}", String::from_utf8_lossy(&e.line));
                if e.stream == shoal_api::engine::Stream::Stderr as i32 {
                    eprintln!("{line}");
                } else {
                    println!("{line}");
                }
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    Ok(())
}
