//! VIPs: an nftables table in each container's namespace that sends a service's VIP to
//! one of its running tasks at random.

use std::collections::BTreeMap;

use shoal_api::types::{EndpointMode, NetworkView};

use super::{ClusterNetworks, Member, ip_of, nft_in, running_backends};

/// The nftables table of VIPs in a container's namespace.
const LB_TABLE: &str = "shoal_lb";

/// The nft script that makes a container's VIP table what `views` say for `networks`:
/// each VIP spread at random over the running tasks of its service, refused at once when
/// none runs.
pub fn lb_script(views: &BTreeMap<String, NetworkView>, networks: &[String]) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    let mut n = 0;
    for id in networks {
        let Some(v) = views.get(id) else { continue };
        for s in &v.services {
            let Some(vip) = ip_of(&s.vip).filter(|_| s.endpoint_mode == EndpointMode::Vip) else {
                continue;
            };
            let backends = running_backends(v, &s.id);
            if backends.is_empty() {
                rules.push_str(&format!(
                    "add rule ip {LB_TABLE} refuse ip daddr {vip} reject\n"
                ));
                continue;
            }
            let mut map = Vec::new();
            for (k, b) in backends.iter().enumerate() {
                chains.push_str(&format!("  chain s{n}b{k} {{ dnat to {b}; }}\n"));
                map.push(format!("{k} : jump s{n}b{k}"));
            }
            rules.push_str(&format!(
                "add rule ip {LB_TABLE} vips ip daddr {vip} numgen random mod {} vmap {{ {} }}\n",
                backends.len(),
                map.join(", ")
            ));
            n += 1;
        }
    }
    format!(
        "add table ip {LB_TABLE}\ndelete table ip {LB_TABLE}\ntable ip {LB_TABLE} {{\n  \
         chain vips {{ type nat hook output priority -100; policy accept; }}\n  \
         chain refuse {{ type filter hook output priority 0; policy accept; }}\n{chains}}}\n{rules}"
    )
}

impl ClusterNetworks {
    pub(super) async fn program_lb(&self, member: &mut Member) {
        let script = {
            let views = self.views.read().unwrap_or_else(|e| e.into_inner());
            lb_script(&views.by_id, &member.networks)
        };
        if script == member.lb {
            return;
        }
        let netns = member.netns.clone();
        let s = script.clone();
        let done = tokio::task::spawn_blocking(move || nft_in(Some(&netns), s)).await;
        match done {
            Ok(Ok(())) => member.lb = script,
            Ok(Err(e)) => tracing::warn!("programming a container's VIPs: {e}"),
            Err(e) => tracing::warn!("programming a container's VIPs: {e}"),
        }
    }
}
