//! How the engine reaches the managers while the node is in a cluster: for a standalone
//! container's attachment to an attachable network, and for volumes of cluster-wide
//! scope; through the agent's session with the dispatcher.

use shoal_api::dispatcher as pd;
use shoal_api::dispatcher::dispatcher_client::DispatcherClient;
use shoal_api::types::AttachmentSpec;

use super::Agent;

/// How the engine reaches the managers: through the agent's session (weakly: the engine
/// outlives agents).
pub(super) struct Link(pub(super) std::sync::Weak<Agent>);

impl crate::engine::ClusterLink for Link {
    fn attach(
        &self,
        network: String,
        container_id: String,
        name: String,
    ) -> futures::future::BoxFuture<'static, Result<AttachmentSpec, String>> {
        let agent = self.0.upgrade();
        Box::pin(async move {
            let agent = agent.ok_or("this node's agent stopped: try again")?;
            let request = pd::AttachRequest {
                node_id: agent.session.node_id.clone(),
                network,
                container_id,
                container_name: name,
            };
            let mut last = String::new();
            for _ in 0..3 {
                match DispatcherClient::new(agent.channel())
                    .attach_network(request.clone())
                    .await
                {
                    Ok(r) => {
                        return r
                            .into_inner()
                            .attachment()
                            .map_err(|e| format!("the managers' answer: {e}"));
                    }
                    Err(e) if e.metadata().get(shoal_api::LEADER_METADATA).is_some() => {
                        agent.redial(&e);
                        last = e.message().to_string();
                    }
                    Err(e) => return Err(e.message().to_string()),
                }
            }
            Err(last)
        })
    }

    fn detach(&self, container_id: String) -> futures::future::BoxFuture<'static, ()> {
        let agent = self.0.upgrade();
        Box::pin(async move {
            let Some(agent) = agent else { return };
            let request = pd::DetachRequest {
                node_id: agent.session.node_id.clone(),
                container_id,
            };
            for _ in 0..3 {
                match DispatcherClient::new(agent.channel())
                    .detach_network(request.clone())
                    .await
                {
                    Ok(_) => return,
                    Err(e) => {
                        tracing::debug!("giving a network attachment back: {e}");
                        agent.redial(&e);
                    }
                }
            }
        })
    }

    fn record_volume(
        &self,
        volume: shoal_api::types::Volume,
    ) -> futures::future::BoxFuture<'static, Result<(), String>> {
        let agent = self.0.upgrade();
        Box::pin(async move {
            let agent = agent.ok_or("this node's agent stopped")?;
            let request = pd::RecordVolumeRequest::new(&agent.session.node_id, &volume)
                .map_err(|e| e.to_string())?;
            agent
                .ask(|mut c| {
                    let request = request.clone();
                    async move { c.record_volume(request).await.map(|_| ()) }
                })
                .await
        })
    }

    fn release_volume(
        &self,
        name: String,
    ) -> futures::future::BoxFuture<'static, Result<(), String>> {
        let agent = self.0.upgrade();
        Box::pin(async move {
            let agent = agent.ok_or("this node's agent stopped: try again")?;
            let request = pd::ReleaseVolumeRequest {
                node_id: agent.session.node_id.clone(),
                name,
            };
            agent
                .ask(|mut c| {
                    let request = request.clone();
                    async move { c.release_volume(request).await.map(|_| ()) }
                })
                .await
        })
    }
}

impl Agent {
    /// One call to the dispatcher, tried again (up to three times) on the leader when the
    /// manager asked names another: the managers' own message when it fails.
    async fn ask<F, Fut>(&self, call: F) -> Result<(), String>
    where
        F: Fn(DispatcherClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<(), tonic::Status>>,
    {
        let mut last = String::new();
        for _ in 0..3 {
            match call(DispatcherClient::new(self.channel())).await {
                Ok(()) => return Ok(()),
                Err(e) if e.metadata().get(shoal_api::LEADER_METADATA).is_some() => {
                    self.redial(&e);
                    last = e.message().to_string();
                }
                Err(e) => return Err(e.message().to_string()),
            }
        }
        Err(last)
    }
}
