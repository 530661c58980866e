//! A node's calls to the managers' Join service over the cluster port (renewals, role
//! changes, leaving): following "not the leader" answers until one answers.

use std::collections::BTreeSet;
use std::time::Duration;

use shoal_api::raft::join_client::JoinClient;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use super::client_tls;
use crate::port::NodeTls;

/// Calls a manager's Join service over the cluster port, following "not the leader"
/// answers, until `call` succeeds or `patience` runs out.
pub(super) async fn at_leader<T, F, Fut>(
    tls: &NodeTls,
    managers: &[String],
    patience: Duration,
    call: F,
) -> Result<T, Status>
where
    F: Fn(JoinClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    let mut next = 0usize;
    let mut target = managers.first().cloned().unwrap_or_default();
    loop {
        let endpoint = Endpoint::from_shared(format!("https://{target}"))
            .map_err(|e| Status::invalid_argument(format!("manager address {target}: {e}")))?
            .tls_config(client_tls(tls))
            .map_err(|e| Status::internal(e.to_string()))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(15));
        let answer = match endpoint.connect().await {
            Ok(ch) => {
                call(
                    JoinClient::new(ch)
                        .max_decoding_message_size(shoal_api::MAX_MESSAGE)
                        .max_encoding_message_size(shoal_api::MAX_MESSAGE),
                )
                .await
            }
            Err(e) => Err(Status::unavailable(format!("{target}: {e}"))),
        };
        match answer {
            Ok(v) => return Ok(v),
            Err(e) if e.metadata().get(shoal_api::REMOVED_METADATA).is_some() => return Err(e),
            Err(e)
                if matches!(
                    e.code(),
                    tonic::Code::PermissionDenied | tonic::Code::FailedPrecondition
                ) =>
            {
                return Err(e);
            }
            Err(e) => {
                let leader = e
                    .metadata()
                    .get(shoal_api::LEADER_METADATA)
                    .and_then(|v| v.to_str().ok())
                    .map(String::from);
                if tokio::time::Instant::now() >= deadline {
                    return Err(e);
                }
                match leader {
                    Some(l) => target = l,
                    None => {
                        next += 1;
                        if !managers.is_empty() {
                            target = managers[next % managers.len()].clone();
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
    }
}

/// Asks each of `managers` once (following a named leader once), with short timeouts:
/// the first answer, or a removal; None when no manager answered.
pub(super) async fn ask_each_once<T, F, Fut>(
    tls: &NodeTls,
    managers: &[String],
    call: F,
) -> Option<Result<T, Status>>
where
    F: Fn(JoinClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let mut queue: std::collections::VecDeque<String> = managers.iter().cloned().collect();
    let mut asked = BTreeSet::new();
    while let Some(target) = queue.pop_front() {
        if !asked.insert(target.clone()) || asked.len() > managers.len() + 2 {
            continue;
        }
        let Ok(endpoint) = Endpoint::from_shared(format!("https://{target}")) else {
            continue;
        };
        let Ok(endpoint) = endpoint.tls_config(client_tls(tls)) else {
            continue;
        };
        let endpoint = endpoint
            .connect_timeout(Duration::from_millis(700))
            .timeout(Duration::from_secs(3));
        let Ok(channel) = endpoint.connect().await else {
            continue;
        };
        match call(
            JoinClient::new(channel)
                .max_decoding_message_size(shoal_api::MAX_MESSAGE)
                .max_encoding_message_size(shoal_api::MAX_MESSAGE),
        )
        .await
        {
            Ok(v) => return Some(Ok(v)),
            Err(e) if e.metadata().get(shoal_api::REMOVED_METADATA).is_some() => {
                return Some(Err(e));
            }
            Err(e) => {
                if let Some(leader) = e
                    .metadata()
                    .get(shoal_api::LEADER_METADATA)
                    .and_then(|v| v.to_str().ok())
                {
                    queue.push_front(leader.to_string());
                }
            }
        }
    }
    None
}
