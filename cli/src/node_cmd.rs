//! `shoal node ...`: list, inspect, update, promote, demote and remove nodes.

use shoal_api::control as pc;
use shoal_api::control::control_client::ControlClient;
use shoal_api::types::Node;

use crate::client::{Host, connect};
use crate::image_cmd::status;
use crate::output;

type Control = ControlClient<tonic::transport::Channel>;

async fn client(host: &Host) -> anyhow::Result<Control> {
    Ok(ControlClient::new(connect(host).await?)
        .max_decoding_message_size(shoal_api::MAX_MESSAGE)
        .max_encoding_message_size(shoal_api::MAX_MESSAGE))
}

/// Every node, as the managers have them.
async fn nodes(c: &mut Control) -> anyhow::Result<Vec<Node>> {
    let objects = c
        .list_nodes(pc::ListRequest {})
        .await
        .map_err(status)?
        .into_inner()
        .objects;
    Ok(shoal_api::wire::decode_all(&objects)?)
}

/// `shoal node ls`.
pub async fn node_ls(host: &Host, json: bool) -> anyhow::Result<()> {
    let mut c = client(host).await?;
    let nodes = nodes(&mut c).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&nodes)?);
        return Ok(());
    }
    let leader = c
        .info(pc::InfoRequest {})
        .await
        .map_err(status)?
        .into_inner()
        .leader;
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.id.chars().take(12).collect(),
                n.hostname.clone(),
                if n.ready {
                    "Ready".into()
                } else if n.status_message.is_empty() {
                    "Down".into()
                } else {
                    format!("Down ({})", n.status_message)
                },
                format!("{:?}", n.availability),
                if shoal_api::cluster::raft_id(&n.id) == leader {
                    "Leader".into()
                } else if n.manager && n.ready {
                    "Reachable".into()
                } else if n.manager {
                    "Unreachable".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS"],
            &rows
        )
    );
    Ok(())
}

/// `shoal node inspect`.
pub async fn node_inspect(host: &Host, keys: Vec<String>) -> anyhow::Result<()> {
    let mut c = client(host).await?;
    let nodes = nodes(&mut c).await?;
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for k in keys {
        match nodes
            .iter()
            .find(|n| n.id == k || n.hostname == k || (k.len() >= 4 && n.id.starts_with(&k)))
        {
            Some(n) => out.push(n.clone()),
            None => missing.push(k),
        }
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    if !missing.is_empty() {
        return Err(anyhow::anyhow!(
            "no such node: {} (see \"shoal node ls\")",
            missing.join(", ")
        ));
    }
    Ok(())
}

/// `shoal node update`.
pub async fn node_update(
    host: &Host,
    node: String,
    availability: Option<String>,
    label_add: Vec<String>,
    label_rm: Vec<String>,
) -> anyhow::Result<()> {
    let mut c = ControlClient::new(connect(host).await?)
        .max_decoding_message_size(shoal_api::MAX_MESSAGE)
        .max_encoding_message_size(shoal_api::MAX_MESSAGE);
    c.update_node(pc::UpdateNodeRequest {
        node: node.clone(),
        availability: availability.unwrap_or_default(),
        label_add,
        label_rm,
        role: String::new(),
    })
    .await
    .map_err(status)?;
    println!("{node}");
    Ok(())
}

/// Runs `op` for each key; a failing one is reported and does not stop the others (the
/// command then exits 1).
async fn for_each_node<F, Fut>(keys: Vec<String>, mut op: F) -> anyhow::Result<()>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut failed = false;
    for k in keys {
        if let Err(e) = op(k).await {
            eprintln!("error: {e}");
            failed = true;
        }
    }
    match failed {
        true => Err(crate::ExitCode(1).into()),
        false => Ok(()),
    }
}

/// `shoal node promote` (`role` manager) and `shoal node demote` (worker).
pub async fn node_role(host: &Host, keys: Vec<String>, role: &str) -> anyhow::Result<()> {
    let c = ControlClient::new(connect(host).await?)
        .max_decoding_message_size(shoal_api::MAX_MESSAGE)
        .max_encoding_message_size(shoal_api::MAX_MESSAGE);
    for_each_node(keys, |node| {
        let mut c = c.clone();
        async move {
            c.update_node(pc::UpdateNodeRequest {
                node: node.clone(),
                role: role.into(),
                ..Default::default()
            })
            .await
            .map_err(status)?;
            match role {
                "manager" => println!("Node {node} promoted to a manager."),
                _ => println!("Manager {node} demoted to a worker."),
            }
            Ok(())
        }
    })
    .await
}

/// `shoal node rm`.
pub async fn node_rm(host: &Host, keys: Vec<String>, force: bool) -> anyhow::Result<()> {
    let c = ControlClient::new(connect(host).await?)
        .max_decoding_message_size(shoal_api::MAX_MESSAGE)
        .max_encoding_message_size(shoal_api::MAX_MESSAGE);
    for_each_node(keys, |node| {
        let mut c = c.clone();
        async move {
            c.remove_node(pc::RemoveNodeRequest {
                node: node.clone(),
                force,
            })
            .await
            .map_err(status)?;
            println!("{node}");
            Ok(())
        }
    })
    .await
}
