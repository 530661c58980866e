//! The Containers gRPC service: a thin layer that turns requests into engine calls and
//! engine errors into gRPC statuses.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use shoal_api::engine as pb;
use shoal_api::engine::containers_server::Containers;
use shoal_api::types::ContainerSpec;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::engine::{ContainerRecord, Engine, EngineError, ExecChunk, State};
use crate::engine::{ExecOptions, LogsOptions};
use crate::logs::{Record, Stream as LogStream};

/// Metadata key carrying the exit code a failed start maps to (125, 126, 127).
pub const EXIT_CODE_KEY: &str = "shoal-exit-code";

/// Turns an engine error into a status a client can show as it is.
pub fn status(e: EngineError) -> Status {
    match e {
        EngineError::NotFound(m) => Status::not_found(m),
        EngineError::Invalid(m) => Status::invalid_argument(m),
        EngineError::Conflict(m) => Status::failed_precondition(m),
        EngineError::StartFailed { message, exit_code } => {
            let mut s = Status::failed_precondition(message);
            if let Ok(v) = exit_code.to_string().parse() {
                s.metadata_mut().insert(EXIT_CODE_KEY, v);
            }
            s
        }
        other => Status::internal(other.to_string()),
    }
}

/// The service.
pub struct ContainersService {
    /// The engine behind it.
    pub engine: Arc<Engine>,
}

fn summary(r: &ContainerRecord) -> pb::ContainerSummary {
    let (status, exit_code, started, finished) = match &r.state {
        State::Created => (pb::ContainerStatus::Created, 0, 0, 0),
        State::Running {
            started_unix_nanos, ..
        } => (pb::ContainerStatus::Running, 0, *started_unix_nanos, 0),
        State::Exited {
            exit_code,
            started_unix_nanos,
            finished_unix_nanos,
            ..
        } => (
            pb::ContainerStatus::Exited,
            *exit_code,
            *started_unix_nanos,
            *finished_unix_nanos,
        ),
    };
    let status = if r.removing {
        pb::ContainerStatus::Removing
    } else {
        status
    };
    pb::ContainerSummary {
        id: r.id.clone(),
        name: r.name.clone(),
        image: r.image.clone(),
        command: r.command.clone(),
        status: status as i32,
        exit_code,
        created_unix: r.created_unix_nanos / 1_000_000_000,
        started_unix: started / 1_000_000_000,
        finished_unix: finished / 1_000_000_000,
        ports: r.spec.ports.iter().map(pb::PortMapping::from).collect(),
    }
}

fn log_entry(r: Record) -> pb::LogEntry {
    pb::LogEntry {
        stream: match r.stream {
            LogStream::Stdout => pb::Stream::Stdout as i32,
            LogStream::Stderr => pb::Stream::Stderr as i32,
        },
        time_unix_nanos: r.time_unix_nanos,
        line: r.line,
        partial: r.partial,
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Containers for ContainersService {
    async fn create(
        &self,
        request: Request<pb::CreateRequest>,
    ) -> Result<Response<pb::CreateReply>, Status> {
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("the request has no container spec"))?;
        let spec = ContainerSpec::try_from(spec).map_err(|e| Status::invalid_argument(e.0))?;
        let r = self.engine.create(spec).await.map_err(status)?;
        Ok(Response::new(pb::CreateReply {
            id: r.id,
            name: r.name,
            warnings: Vec::new(),
        }))
    }

    async fn start(
        &self,
        request: Request<pb::ContainerRef>,
    ) -> Result<Response<pb::StartReply>, Status> {
        self.engine
            .start(&request.into_inner().id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::StartReply {}))
    }

    async fn wait(
        &self,
        request: Request<pb::ContainerRef>,
    ) -> Result<Response<pb::WaitReply>, Status> {
        let id = request.into_inner().id;
        let code = self.engine.wait(&id).await.map_err(status)?;
        let error = match self.engine.inspect(&id).map(|r| r.state) {
            Ok(State::Exited { error, .. }) => error,
            _ => String::new(),
        };
        Ok(Response::new(pb::WaitReply {
            exit_code: code,
            error,
        }))
    }

    async fn stop(
        &self,
        request: Request<pb::StopRequest>,
    ) -> Result<Response<pb::StopReply>, Status> {
        let r = request.into_inner();
        let timeout = r
            .timeout_set
            .then(|| Duration::from_secs(r.timeout_secs.max(0) as u64));
        self.engine.stop(&r.id, timeout).await.map_err(status)?;
        Ok(Response::new(pb::StopReply {}))
    }

    async fn kill(
        &self,
        request: Request<pb::KillRequest>,
    ) -> Result<Response<pb::KillReply>, Status> {
        let r = request.into_inner();
        self.engine.kill(&r.id, &r.signal).await.map_err(status)?;
        Ok(Response::new(pb::KillReply {}))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::RemoveReply>, Status> {
        let r = request.into_inner();
        self.engine
            .remove_with_volumes(&r.id, r.force, r.volumes)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RemoveReply {}))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListReply>, Status> {
        let all = request.into_inner().all;
        let containers = self.engine.list(all).iter().map(summary).collect();
        Ok(Response::new(pb::ListReply { containers }))
    }

    async fn inspect(
        &self,
        request: Request<pb::ContainerRef>,
    ) -> Result<Response<pb::ContainerDetail>, Status> {
        let r = self
            .engine
            .inspect(&request.into_inner().id)
            .map_err(status)?;
        let paths = self.engine.paths(&r.id);
        let (pid, error, oom) = match &r.state {
            State::Running { pid, .. } => (*pid as u32, String::new(), false),
            State::Exited {
                error, oom_killed, ..
            } => (0, error.clone(), *oom_killed),
            State::Created => (0, String::new(), false),
        };
        Ok(Response::new(pb::ContainerDetail {
            summary: Some(summary(&r)),
            spec: Some(pb::ContainerSpec::from(&r.spec)),
            pid,
            runtime: r.runtime.name().to_string(),
            bundle: paths.dir.display().to_string(),
            ip_address: r.ip_address.clone(),
            log_path: paths.log().display().to_string(),
            error,
            oom_killed: oom,
            mounts: mount_points(&self.engine, &r),
        }))
    }

    type LogsStream = BoxStream<pb::LogEntry>;

    async fn logs(
        &self,
        request: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let r = request.into_inner();
        let opts = LogsOptions {
            follow: r.follow,
            tail: (r.tail >= 0).then_some(r.tail as usize),
            since_unix_nanos: r.since_unix_nanos,
        };
        let rx = self.engine.logs(&r.id, opts).map_err(status)?;
        let stream = ReceiverStream::new(rx).map(|item| item.map(log_entry).map_err(status));
        Ok(Response::new(Box::pin(stream)))
    }

    type ExecStream = BoxStream<pb::ExecOutput>;

    async fn exec(
        &self,
        request: Request<pb::ExecRequest>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let r = request.into_inner();
        let opts = ExecOptions {
            cmd: r.cmd,
            env: r.env,
            workdir: r.workdir,
            user: r.user,
        };
        let rx = self.engine.exec(&r.id, opts).await.map_err(status)?;
        let stream = ReceiverStream::new(rx).map(|chunk| {
            Ok(match chunk {
                ExecChunk::Stdout(data) => pb::ExecOutput {
                    stream: pb::Stream::Stdout as i32,
                    data,
                    ..Default::default()
                },
                ExecChunk::Stderr(data) => pb::ExecOutput {
                    stream: pb::Stream::Stderr as i32,
                    data,
                    ..Default::default()
                },
                ExecChunk::Exit(code) => pb::ExecOutput {
                    exited: true,
                    exit_code: code,
                    ..Default::default()
                },
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// A container's mounts as `inspect` shows them: volumes by name, with where their data is.
fn mount_points(engine: &Engine, r: &ContainerRecord) -> Vec<pb::MountPoint> {
    use shoal_api::types::MountType;
    r.spec
        .mounts
        .iter()
        .map(|m| {
            let volume = (m.kind == MountType::Volume)
                .then(|| engine.volume_record(&m.source))
                .flatten();
            pb::MountPoint {
                r#type: m.kind.as_str().into(),
                name: if m.kind == MountType::Volume {
                    m.source.clone()
                } else {
                    String::new()
                },
                driver: volume
                    .as_ref()
                    .map(|v| v.driver.clone())
                    .unwrap_or_default(),
                source: match (&volume, m.kind) {
                    (Some(v), _) => v.mountpoint.clone(),
                    (None, MountType::Bind) => m.source.clone(),
                    _ => String::new(),
                },
                target: m.target.clone(),
                read_only: m.read_only,
            }
        })
        .collect()
}
