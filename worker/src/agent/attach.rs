//! How the engine reaches the managers for a standalone container's attachment to an
//! attachable network: through the agent's session with the dispatcher.

use shoal_api::dispatcher as pd;
use shoal_api::dispatcher::dispatcher_client::DispatcherClient;
use shoal_api::types::AttachmentSpec;

use super::Agent;

/// How the engine reaches the managers for standalone containers' network attachments:
/// through the agent's session (weakly: the engine outlives agents).
pub(super) struct Link(pub(super) std::sync::Weak<Agent>);

impl crate::engine::ClusterAttacher for Link {
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
}
