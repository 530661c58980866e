//! The manager's gRPC services: the control API (init, services, tasks, nodes) and the
//! dispatcher (agent sessions and task status). Until `shoal init` the node is no manager
//! and the control calls but `Init` and `Info` say so.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use shoal_api::control as pc;
use shoal_api::control::control_server::Control;
use shoal_api::dispatcher as pd;
use shoal_api::dispatcher::dispatcher_server::Dispatcher;
use shoal_api::types::{
    Node, NodeAvailability, ResourceAmounts, Service, ServiceSpec, Task, TaskState,
};
use tokio::sync::RwLock;
use tonic::{Request, Response, Status};

use crate::cluster::{ClusterError, ClusterStore, Timings};
use crate::pipeline::{Pipeline, kinds, now_ms};
use crate::store::{Command, CommandResult, Versioned};

/// This node, as it describes itself.
#[derive(Debug, Clone)]
pub struct SelfNode {
    /// Stable id (kept under the data root).
    pub id: String,
    /// Hostname.
    pub hostname: String,
    /// What it offers tasks.
    pub resources: ResourceAmounts,
}

/// A running manager.
pub struct Manager {
    store: Arc<ClusterStore>,
    node: SelfNode,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Manager {
    /// Opens the manager state under `dir`, leads a one-manager cluster, and starts the
    /// leader pipeline.
    pub async fn start(dir: PathBuf, node: SelfNode) -> Result<Arc<Manager>, ClusterError> {
        let store = Arc::new(ClusterStore::open(&dir, 1, &Timings::default()).await?);
        store.bootstrap("local").await?;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let m = Arc::new(Manager {
            store: store.clone(),
            node: node.clone(),
            stop,
        });
        m.put_node(false).await?;
        let pipeline = Pipeline::new(store, 1);
        tokio::spawn(async move {
            pipeline
                .run(Duration::from_millis(500), async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
        });
        Ok(m)
    }

    /// Stops the pipeline and the Raft node.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        self.store.shutdown().await;
    }

    async fn put_node(&self, ready: bool) -> Result<(), ClusterError> {
        let existing = self.store.get(kinds::NODE, &self.node.id)?;
        let mut node = match &existing {
            Some(v) => serde_json::from_value::<Node>(v.value.clone())
                .map_err(|e| ClusterError::Read(e.to_string()))?,
            None => Node {
                id: self.node.id.clone(),
                hostname: self.node.hostname.clone(),
                manager: true,
                ready,
                availability: NodeAvailability::Active,
                labels: Default::default(),
                os: std::env::consts::OS.into(),
                arch: std::env::consts::ARCH.into(),
                resources: self.node.resources,
            },
        };
        node.ready = ready;
        node.resources = self.node.resources;
        self.store
            .write(Command::Put {
                kind: kinds::NODE.into(),
                id: node.id.clone(),
                value: serde_json::to_value(&node).unwrap_or_default(),
                expected_version: None,
            })
            .await?;
        Ok(())
    }
}

fn internal(e: ClusterError) -> Status {
    Status::unavailable(e.to_string())
}

fn object(id: &str, v: &Versioned) -> pc::Object {
    pc::Object {
        id: id.to_string(),
        version: v.version,
        json: v.value.to_string(),
    }
}

/// The control and dispatcher services of one node.
#[derive(Clone)]
pub struct ManagerService {
    dir: PathBuf,
    node: SelfNode,
    manager: Arc<RwLock<Option<Arc<Manager>>>>,
    on_active: Arc<dyn Fn() + Send + Sync>,
}

impl ManagerService {
    /// The services for a node whose manager state lives under `dir`. If the node is a
    /// manager already (the state exists), it starts now. `on_active` runs once the
    /// manager is running (the daemon starts its agent there).
    pub async fn new(
        dir: PathBuf,
        node: SelfNode,
        on_active: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<ManagerService, ClusterError> {
        let svc = ManagerService {
            dir,
            node,
            manager: Arc::new(RwLock::new(None)),
            on_active,
        };
        if svc.dir.join("raft-log.redb").exists() {
            let m = Manager::start(svc.dir.clone(), svc.node.clone()).await?;
            *svc.manager.write().await = Some(m);
            (svc.on_active)();
        }
        Ok(svc)
    }

    async fn active(&self) -> Result<Arc<Manager>, Status> {
        self.manager.read().await.clone().ok_or_else(|| {
            Status::failed_precondition(
                "this node is not a manager: run \"shoal init\" to start a cluster (or \"shoal dev\")",
            )
        })
    }

    /// Stops the manager, if running.
    pub async fn stop(&self) {
        if let Some(m) = self.manager.write().await.take() {
            m.stop().await;
        }
    }
}

async fn find_service(m: &Manager, key: &str) -> Result<(Service, u64), Status> {
    if let Some(v) = m.store.get(kinds::SERVICE, key).map_err(internal)? {
        let s: Service =
            serde_json::from_value(v.value).map_err(|e| Status::internal(e.to_string()))?;
        return Ok((s, v.version));
    }
    for (_, v) in m.store.list(kinds::SERVICE).map_err(internal)? {
        let s: Service =
            serde_json::from_value(v.value.clone()).map_err(|e| Status::internal(e.to_string()))?;
        if s.spec.name == key || (key.len() >= 4 && s.id.starts_with(key)) {
            return Ok((s, v.version));
        }
    }
    Err(Status::not_found(format!(
        "service {key} not found (see \"shoal service ls\")"
    )))
}

fn check_spec(spec: &ServiceSpec) -> Result<(), Status> {
    let bad = |m: String| Err(Status::invalid_argument(m));
    if spec.name.is_empty()
        || !spec
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return bad(format!(
            "invalid service name \"{}\": use letters, digits, '-' and '_'",
            spec.name
        ));
    }
    if spec.image.is_empty() {
        return bad("no image given: name one, for example busybox".into());
    }
    for c in &spec.constraints {
        crate::scheduler::Constraint::parse(c)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
    }
    Ok(())
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Control for ManagerService {
    async fn init(&self, _r: Request<pc::InitRequest>) -> Result<Response<pc::InitReply>, Status> {
        let mut guard = self.manager.write().await;
        if guard.is_some() {
            return Err(Status::already_exists(
                "this node is already part of a cluster: \"shoal info\" shows it",
            ));
        }
        let m = Manager::start(self.dir.clone(), self.node.clone())
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        *guard = Some(m);
        drop(guard);
        (self.on_active)();
        Ok(Response::new(pc::InitReply {
            node_id: self.node.id.clone(),
            cluster_id: self.node.id.clone(),
        }))
    }

    async fn info(&self, _r: Request<pc::InfoRequest>) -> Result<Response<pc::InfoReply>, Status> {
        let Some(m) = self.manager.read().await.clone() else {
            return Ok(Response::new(pc::InfoReply {
                node_id: self.node.id.clone(),
                ..Default::default()
            }));
        };
        let nodes = m.store.list(kinds::NODE).map_err(internal)?;
        let managers = nodes
            .iter()
            .filter(|(_, v)| v.value["manager"] == true)
            .count();
        let tasks = m.store.list(kinds::TASK).map_err(internal)?;
        Ok(Response::new(pc::InfoReply {
            swarm_active: true,
            node_id: self.node.id.clone(),
            manager: true,
            leader: 1,
            managers: managers as u32,
            nodes: nodes.len() as u32,
            services: m.store.list(kinds::SERVICE).map_err(internal)?.len() as u32,
            tasks_running: tasks
                .iter()
                .filter(|(_, v)| v.value["status"]["state"] == "running")
                .count() as u32,
        }))
    }

    async fn create_service(
        &self,
        r: Request<pc::CreateServiceRequest>,
    ) -> Result<Response<pc::ObjectReply>, Status> {
        let m = self.active().await?;
        let spec: ServiceSpec = serde_json::from_str(&r.into_inner().spec_json)
            .map_err(|e| Status::invalid_argument(format!("malformed service spec: {e}")))?;
        check_spec(&spec)?;
        for (_, v) in m.store.list(kinds::SERVICE).map_err(internal)? {
            if v.value["spec"]["name"] == spec.name.as_str() {
                return Err(Status::already_exists(format!(
                    "a service named {} exists already: update it, or remove it first",
                    spec.name
                )));
            }
        }
        let mut buf = [0u8; 12];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
            .map_err(|e| Status::internal(format!("making a service id: {e}")))?;
        let id: String = buf.iter().map(|b| format!("{b:02x}")).collect();
        let service = Service {
            id: id.clone(),
            spec,
            previous_spec: None,
        };
        let r = m
            .store
            .write(Command::Put {
                kind: kinds::SERVICE.into(),
                id: id.clone(),
                value: serde_json::to_value(&service).unwrap_or_default(),
                expected_version: Some(0),
            })
            .await
            .map_err(internal)?;
        let version = match r {
            CommandResult::Applied(v) => v.first().copied().unwrap_or(0),
            other => return Err(Status::aborted(format!("{other:?}"))),
        };
        Ok(Response::new(pc::ObjectReply {
            object: Some(pc::Object {
                id,
                version,
                json: serde_json::to_string(&service).unwrap_or_default(),
            }),
        }))
    }

    async fn update_service(
        &self,
        r: Request<pc::UpdateServiceRequest>,
    ) -> Result<Response<pc::ObjectReply>, Status> {
        let m = self.active().await?;
        let r = r.into_inner();
        let (mut service, version) = find_service(&m, &r.service).await?;
        if r.version != 0 && r.version != version {
            return Err(Status::aborted(format!(
                "service {} changed since it was read (version {} now, {} read): read it again and retry",
                service.spec.name, version, r.version
            )));
        }
        let new_spec = if r.rollback {
            service.previous_spec.clone().ok_or_else(|| {
                Status::failed_precondition(format!(
                    "service {} has no previous spec to roll back to",
                    service.spec.name
                ))
            })?
        } else {
            serde_json::from_str(&r.spec_json)
                .map_err(|e| Status::invalid_argument(format!("malformed service spec: {e}")))?
        };
        check_spec(&new_spec)?;
        service.previous_spec = Some(std::mem::replace(&mut service.spec, new_spec));
        let res = m
            .store
            .write(Command::Put {
                kind: kinds::SERVICE.into(),
                id: service.id.clone(),
                value: serde_json::to_value(&service).unwrap_or_default(),
                expected_version: Some(version),
            })
            .await
            .map_err(internal)?;
        match res {
            CommandResult::Applied(v) => Ok(Response::new(pc::ObjectReply {
                object: Some(pc::Object {
                    id: service.id.clone(),
                    version: v.first().copied().unwrap_or(0),
                    json: serde_json::to_string(&service).unwrap_or_default(),
                }),
            })),
            _ => Err(Status::aborted(
                "the service changed while updating it: retry",
            )),
        }
    }

    async fn remove_service(
        &self,
        r: Request<pc::RemoveRequest>,
    ) -> Result<Response<pc::RemoveReply>, Status> {
        let m = self.active().await?;
        let (service, version) = find_service(&m, &r.into_inner().id).await?;
        m.store
            .write(Command::Delete {
                kind: kinds::SERVICE.into(),
                id: service.id,
                expected_version: Some(version),
            })
            .await
            .map_err(internal)?;
        Ok(Response::new(pc::RemoveReply {}))
    }

    async fn get_service(
        &self,
        r: Request<pc::GetRequest>,
    ) -> Result<Response<pc::ObjectReply>, Status> {
        let m = self.active().await?;
        let (s, version) = find_service(&m, &r.into_inner().id).await?;
        Ok(Response::new(pc::ObjectReply {
            object: Some(pc::Object {
                id: s.id.clone(),
                version,
                json: serde_json::to_string(&s).unwrap_or_default(),
            }),
        }))
    }

    async fn list_services(
        &self,
        _r: Request<pc::ListRequest>,
    ) -> Result<Response<pc::ListReply>, Status> {
        let m = self.active().await?;
        let objects = m
            .store
            .list(kinds::SERVICE)
            .map_err(internal)?
            .iter()
            .map(|(id, v)| object(id, v))
            .collect();
        Ok(Response::new(pc::ListReply { objects }))
    }

    async fn list_tasks(
        &self,
        r: Request<pc::ListTasksRequest>,
    ) -> Result<Response<pc::ListReply>, Status> {
        let m = self.active().await?;
        let filter = r.into_inner().service;
        let service_id = if filter.is_empty() {
            None
        } else {
            Some(find_service(&m, &filter).await?.0.id)
        };
        let objects = m
            .store
            .list(kinds::TASK)
            .map_err(internal)?
            .iter()
            .filter(|(_, v)| {
                service_id
                    .as_deref()
                    .is_none_or(|s| v.value["service_id"] == s)
            })
            .map(|(id, v)| object(id, v))
            .collect();
        Ok(Response::new(pc::ListReply { objects }))
    }

    async fn list_nodes(
        &self,
        _r: Request<pc::ListRequest>,
    ) -> Result<Response<pc::ListReply>, Status> {
        let m = self.active().await?;
        let objects = m
            .store
            .list(kinds::NODE)
            .map_err(internal)?
            .iter()
            .map(|(id, v)| object(id, v))
            .collect();
        Ok(Response::new(pc::ListReply { objects }))
    }

    async fn update_node(
        &self,
        r: Request<pc::UpdateNodeRequest>,
    ) -> Result<Response<pc::ObjectReply>, Status> {
        let m = self.active().await?;
        let r = r.into_inner();
        let mut found = None;
        for (id, v) in m.store.list(kinds::NODE).map_err(internal)? {
            if id == r.node || v.value["hostname"] == r.node.as_str() {
                found = Some((id, v));
            }
        }
        let (id, v) = found.ok_or_else(|| {
            Status::not_found(format!("node {} not found (see \"shoal node ls\")", r.node))
        })?;
        let mut node: Node =
            serde_json::from_value(v.value).map_err(|e| Status::internal(e.to_string()))?;
        match r.availability.as_str() {
            "" => {}
            "active" => node.availability = NodeAvailability::Active,
            "pause" => node.availability = NodeAvailability::Pause,
            "drain" => node.availability = NodeAvailability::Drain,
            other => {
                return Err(Status::invalid_argument(format!(
                    "invalid availability \"{other}\": use active, pause or drain"
                )));
            }
        }
        for l in &r.label_add {
            let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
            node.labels.insert(k.to_string(), v.to_string());
        }
        for k in &r.label_rm {
            node.labels.remove(k);
        }
        let res = m
            .store
            .write(Command::Put {
                kind: kinds::NODE.into(),
                id: id.clone(),
                value: serde_json::to_value(&node).unwrap_or_default(),
                expected_version: Some(v.version),
            })
            .await
            .map_err(internal)?;
        let version = match res {
            CommandResult::Applied(v) => v.first().copied().unwrap_or(0),
            _ => return Err(Status::aborted("the node changed while updating it: retry")),
        };
        Ok(Response::new(pc::ObjectReply {
            object: Some(pc::Object {
                id,
                version,
                json: serde_json::to_string(&node).unwrap_or_default(),
            }),
        }))
    }
}

#[tonic::async_trait]
impl Dispatcher for ManagerService {
    type AssignmentsStream = BoxStream<pd::AssignmentSet>;

    async fn assignments(
        &self,
        r: Request<pd::SessionRequest>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        let m = self.active().await?;
        let node_id = r.into_inner().node_id;
        m.put_node(true).await.map_err(internal)?;
        let mut events = m.store.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut last: Vec<(String, u64)> = Vec::new();
            while let Ok(tasks) = m.store.list(kinds::TASK) {
                let mine: Vec<(String, Versioned)> = tasks
                    .into_iter()
                    .filter(|(_, v)| {
                        v.value["node_id"] == node_id.as_str()
                            && v.value["status"]["state"] != "new"
                    })
                    .collect();
                let key: Vec<(String, u64)> =
                    mine.iter().map(|(id, v)| (id.clone(), v.version)).collect();
                if key != last {
                    last = key;
                    let set = pd::AssignmentSet {
                        tasks: mine
                            .iter()
                            .map(|(_, v)| pd::Assignment {
                                json: v.value.to_string(),
                                version: v.version,
                            })
                            .collect(),
                    };
                    if tx.send(Ok(set)).await.is_err() {
                        break;
                    }
                }
                tokio::select! {
                    e = events.recv() => if matches!(e, Err(tokio::sync::broadcast::error::RecvError::Closed)) { break },
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = tx.closed() => break,
                }
            }
            let _ = m.put_node(false).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn update_status(
        &self,
        r: Request<pd::StatusBatch>,
    ) -> Result<Response<pd::StatusReply>, Status> {
        let m = self.active().await?;
        for u in r.into_inner().updates {
            let Some(v) = m.store.get(kinds::TASK, &u.task_id).map_err(internal)? else {
                continue;
            };
            let mut t: Task =
                serde_json::from_value(v.value).map_err(|e| Status::internal(e.to_string()))?;
            let state: TaskState = serde_json::from_value(serde_json::Value::String(
                u.state.clone(),
            ))
            .map_err(|_| Status::invalid_argument(format!("unknown task state {}", u.state)))?;
            if !t.status.state.can_move_to(state) {
                continue; // states only move forward; a late report changes nothing
            }
            t.status.state = state;
            t.status.message = u.message;
            t.status.timestamp_ms = now_ms();
            t.status.exit_code = u.exited.then_some(u.exit_code);
            if !u.container_id.is_empty() {
                t.status.container_id = u.container_id;
            }
            m.store
                .write(Command::Put {
                    kind: kinds::TASK.into(),
                    id: t.id.clone(),
                    value: serde_json::to_value(&t).unwrap_or_default(),
                    expected_version: Some(v.version),
                })
                .await
                .map_err(internal)?;
        }
        Ok(Response::new(pd::StatusReply {}))
    }
}
