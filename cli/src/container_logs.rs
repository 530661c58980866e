//! A container's log lines printed as its streams had them (`container logs`, and
//! `container run` in the foreground).

use std::io::Write;

use shoal_api::engine as pb;
use shoal_api::engine::containers_client::ContainersClient;
use tonic::transport::Channel;

use crate::client::status;

/// Our output went away (a closed pipe): nobody is left to show lines to.
#[derive(Debug, thiserror::Error)]
#[error("the output was closed")]
pub struct OutputClosed;

/// Copies log lines to stdout and stderr, each as its stream had it. Ends with
/// [`OutputClosed`] when a reader of ours went away (SIGPIPE is ignored then).
pub async fn stream_logs(
    client: &mut ContainersClient<Channel>,
    req: pb::LogsRequest,
) -> anyhow::Result<()> {
    let timestamps = req.timestamps;
    let mut stream = client.logs(req).await.map_err(status)?.into_inner();
    while let Some(entry) = stream.message().await.map_err(status)? {
        let line = log_line(&entry, timestamps);
        let written = if entry.stream == pb::Stream::Stderr as i32 {
            std::io::stderr().lock().write_all(&line)
        } else {
            let mut out = std::io::stdout().lock();
            out.write_all(&line).and_then(|()| out.flush())
        };
        match written {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Err(OutputClosed.into()),
            Err(e) => return Err(anyhow::anyhow!("writing the container's output: {e}")),
        }
    }
    Ok(())
}

/// A log entry as printed: its exact bytes, a newline unless the line was partial, and
/// with `timestamps` its RFC 3339 time first.
fn log_line(entry: &pb::LogEntry, timestamps: bool) -> Vec<u8> {
    let mut line = Vec::with_capacity(entry.line.len() + 40);
    if timestamps {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(entry.time_unix_nanos))
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        line.extend_from_slice(t.as_bytes());
        line.push(b' ');
    }
    line.extend_from_slice(&entry.line);
    if !entry.partial {
        line.push(b'\n');
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_keep_their_bytes() {
        let e = |line: &[u8], partial, nanos| pb::LogEntry {
            stream: pb::Stream::Stdout as i32,
            time_unix_nanos: nanos,
            line: line.to_vec(),
            partial,
        };
        for (entry, timestamps, want) in [
            (e(b"hello", false, 0), false, &b"hello\n"[..]),
            (e(b"no newline", true, 0), false, b"no newline"),
            (e(b"\xff\x00 raw\r", false, 0), false, b"\xff\x00 raw\r\n"),
            (e(b"", false, 0), false, b"\n"),
            (
                e(b"x", false, 1_700_000_000_500_000_000),
                true,
                b"2023-11-14T22:13:20.5Z x\n",
            ),
        ] {
            assert_eq!(
                log_line(&entry, timestamps),
                want,
                "{:?}",
                String::from_utf8_lossy(want)
            );
        }
    }
}
