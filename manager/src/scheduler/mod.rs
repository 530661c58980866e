//! The scheduler's pure core: tasks in, placement decisions out. No clock, no I/O, and
//! deterministic: nodes are ordered by id, and every tie is broken by that order.
//!
//! A node is a candidate when every filter passes (ready and active, constraints,
//! platform, resources, host ports, max replicas per node). Among candidates, tasks spread:
//! fewest tasks of the same service first, then fewest tasks in all, with nodes where the
//! service keeps failing ranked last. Placement preferences (`spread=node.labels.zone`)
//! first spread over the label's values. A task no node can take gets an explanation that
//! counts the nodes per failed filter: "no suitable node (2 nodes: insufficient memory; 1
//! node: not available)".

mod constraint;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

pub use self::constraint::{Attribute, Constraint, ConstraintError};

/// CPU and memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// 1e9 per CPU.
    pub nano_cpus: i64,
    /// Bytes.
    pub memory_bytes: i64,
}

/// Whether a node takes new tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Availability {
    /// Takes new tasks.
    #[default]
    Active,
    /// Keeps its tasks, takes no new ones.
    Pause,
    /// Its tasks move elsewhere.
    Drain,
}

/// A node as the scheduler sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its id.
    pub id: String,
    /// Its hostname.
    pub hostname: String,
    /// Whether it is a manager.
    pub manager: bool,
    /// Whether its agent is connected and healthy.
    pub ready: bool,
    /// Active, pause or drain.
    pub availability: Availability,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Operating system (`linux`).
    pub os: String,
    /// Architecture (`x86_64`, `aarch64`).
    pub arch: String,
    /// What it can give tasks.
    pub capacity: Resources,
    /// The volume drivers it has.
    pub volume_drivers: Vec<String>,
}

/// A task to place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskRequest {
    /// The task.
    pub task_id: String,
    /// Its service.
    pub service_id: String,
    /// What it reserves on its node.
    pub reservations: Resources,
    /// Where it may run.
    pub constraints: Vec<Constraint>,
    /// Label keys to spread over, outermost first (`zone` for node.labels.zone).
    pub spread_over: Vec<String>,
    /// At most this many tasks of the service per node; 0 for no limit.
    pub max_replicas_per_node: u32,
    /// Host-mode published ports it needs free on its node.
    pub host_ports: Vec<u16>,
    /// Platforms its image runs on, as (os, arch); empty for any.
    pub platforms: Vec<(String, String)>,
    /// The volume drivers its mounts need (not `local`, which every node has).
    pub volume_drivers: Vec<String>,
}

impl TaskRequest {
    /// Whether two requests place alike (everything but the task id).
    fn same_placement(&self, other: &TaskRequest) -> bool {
        self.service_id == other.service_id
            && self.reservations == other.reservations
            && self.constraints == other.constraints
            && self.spread_over == other.spread_over
            && self.max_replicas_per_node == other.max_replicas_per_node
            && self.host_ports == other.host_ports
            && self.platforms == other.platforms
            && self.volume_drivers == other.volume_drivers
    }
}

/// What became of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Placed on a node.
    Assigned {
        /// The task.
        task_id: String,
        /// The node.
        node_id: String,
    },
    /// No node fits.
    Unschedulable {
        /// The task.
        task_id: String,
        /// Why, counted per filter.
        reason: String,
    },
}

/// What a node already carries.
#[derive(Debug, Clone, Default)]
struct Load {
    reserved: Resources,
    by_service: HashMap<String, u32>,
    total: u32,
    host_ports: Vec<u16>,
    failures: HashMap<String, u32>,
}

/// Failures of a service on a node after which the node is ranked last for it.
const FAILURE_THRESHOLD: u32 = 3;

/// Why a node was passed over, in the order the filters run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Refusal {
    NotAvailable,
    Constraints,
    Platform,
    /// Lacks the request's volume driver at this index.
    VolumeDriver(u16),
    MaxReplicas,
    HostPort,
    Cpu,
    Memory,
}

impl Refusal {
    fn text(self, t: &TaskRequest) -> String {
        if let Refusal::VolumeDriver(i) = self {
            let name = t
                .volume_drivers
                .get(usize::from(i))
                .map_or("?", String::as_str);
            return format!("lack volume driver {name}");
        }
        match self {
            Refusal::NotAvailable => "not available",
            Refusal::Constraints => "scheduling constraints not satisfied",
            Refusal::Platform => "unsupported platform",
            Refusal::MaxReplicas => "max replicas per node reached",
            Refusal::HostPort => "host-mode port already in use",
            Refusal::Cpu => "insufficient cpu",
            Refusal::Memory => "insufficient memory",
            Refusal::VolumeDriver(_) => "lack a volume driver",
        }
        .to_string()
    }
}

/// The scheduler's view of the cluster.
#[derive(Debug, Clone, Default)]
pub struct Scheduler {
    nodes: Vec<NodeInfo>,
    loads: Vec<Load>,
    index: HashMap<String, usize>,
}

impl Scheduler {
    /// A view of `nodes`, carrying nothing yet.
    pub fn new(mut nodes: Vec<NodeInfo>) -> Scheduler {
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        let loads = vec![Load::default(); nodes.len()];
        Scheduler {
            nodes,
            loads,
            index,
        }
    }

    /// Records a task already on a node (assigned or running).
    pub fn add_existing(
        &mut self,
        node_id: &str,
        service_id: &str,
        reservations: Resources,
        host_ports: &[u16],
    ) {
        if let Some(&i) = self.index.get(node_id) {
            let l = &mut self.loads[i];
            l.reserved.nano_cpus += reservations.nano_cpus;
            l.reserved.memory_bytes += reservations.memory_bytes;
            *l.by_service.entry(service_id.to_string()).or_default() += 1;
            l.total += 1;
            l.host_ports.extend_from_slice(host_ports);
        }
    }

    /// Records a recent failure of a task of `service_id` on a node.
    pub fn record_failure(&mut self, node_id: &str, service_id: &str) {
        if let Some(&i) = self.index.get(node_id) {
            *self.loads[i]
                .failures
                .entry(service_id.to_string())
                .or_default() += 1;
        }
    }

    /// How many tasks of `service_id` a node carries (for tests and callers).
    pub fn tasks_of(&self, node_id: &str, service_id: &str) -> u32 {
        self.index
            .get(node_id)
            .and_then(|&i| self.loads[i].by_service.get(service_id).copied())
            .unwrap_or(0)
    }

    fn static_check(&self, i: usize, t: &TaskRequest) -> Option<Refusal> {
        let n = &self.nodes[i];
        if !n.ready || n.availability != Availability::Active {
            return Some(Refusal::NotAvailable);
        }
        if !t.constraints.iter().all(|c| c.matches(n)) {
            return Some(Refusal::Constraints);
        }
        if !t.platforms.is_empty()
            && !t.platforms.iter().any(|(os, arch)| {
                (os.is_empty() || os.eq_ignore_ascii_case(&n.os))
                    && (arch.is_empty() || same_arch(arch, &n.arch))
            })
        {
            return Some(Refusal::Platform);
        }
        if let Some(i) = t
            .volume_drivers
            .iter()
            .position(|d| !n.volume_drivers.contains(d))
        {
            return Some(Refusal::VolumeDriver(i as u16));
        }
        None
    }

    fn dynamic_check(&self, i: usize, t: &TaskRequest) -> Option<Refusal> {
        let (n, l) = (&self.nodes[i], &self.loads[i]);
        if t.max_replicas_per_node > 0
            && l.by_service.get(&t.service_id).copied().unwrap_or(0) >= t.max_replicas_per_node
        {
            return Some(Refusal::MaxReplicas);
        }
        if t.host_ports.iter().any(|p| l.host_ports.contains(p)) {
            return Some(Refusal::HostPort);
        }
        if t.reservations.nano_cpus > 0
            && l.reserved.nano_cpus + t.reservations.nano_cpus > n.capacity.nano_cpus
        {
            return Some(Refusal::Cpu);
        }
        if t.reservations.memory_bytes > 0
            && l.reserved.memory_bytes + t.reservations.memory_bytes > n.capacity.memory_bytes
        {
            return Some(Refusal::Memory);
        }
        None
    }

    fn place(&mut self, i: usize, t: &TaskRequest) {
        self.add_existing(
            &self.nodes[i].id.clone(),
            &t.service_id,
            t.reservations,
            &t.host_ports,
        );
    }

    /// The rank of a node for a service: lower is better.
    fn rank(&self, i: usize, service: &str) -> (bool, u32, u32, usize) {
        let l = &self.loads[i];
        (
            l.failures.get(service).copied().unwrap_or(0) >= FAILURE_THRESHOLD,
            l.by_service.get(service).copied().unwrap_or(0),
            l.total,
            i,
        )
    }

    /// Places `tasks`, in order, and returns a decision for each.
    pub fn schedule(&mut self, tasks: &[TaskRequest]) -> Vec<Decision> {
        let mut out = Vec::with_capacity(tasks.len());
        let mut start = 0;
        while start < tasks.len() {
            let mut end = start + 1;
            while end < tasks.len() && tasks[end].same_placement(&tasks[start]) {
                end += 1;
            }
            self.schedule_group(&tasks[start..end], &mut out);
            start = end;
        }
        out
    }

    /// Places tasks that place alike: the static filters run once for the group, and
    /// without spread preferences a heap gives each pick in O(log n).
    fn schedule_group(&mut self, group: &[TaskRequest], out: &mut Vec<Decision>) {
        let first = &group[0];
        let mut refused: BTreeMap<Refusal, u32> = BTreeMap::new();
        let mut candidates = Vec::new();
        for i in 0..self.nodes.len() {
            match self.static_check(i, first) {
                Some(r) => *refused.entry(r).or_default() += 1,
                None => candidates.push(i),
            }
        }
        if first.spread_over.is_empty() {
            let mut heap: BinaryHeap<Reverse<(bool, u32, u32, usize)>> = candidates
                .iter()
                .map(|&i| Reverse(self.rank(i, &first.service_id)))
                .collect();
            // Nodes dropped in this group: resources and ports only shrink within it.
            let mut dropped = refused.clone();
            for t in group {
                let mut chosen = None;
                while let Some(Reverse(key)) = heap.pop() {
                    let i = key.3;
                    match self.dynamic_check(i, t) {
                        None => {
                            chosen = Some(i);
                            break;
                        }
                        Some(r) => *dropped.entry(r).or_default() += 1,
                    }
                }
                match chosen {
                    Some(i) => {
                        self.place(i, t);
                        heap.push(Reverse(self.rank(i, &t.service_id)));
                        out.push(Decision::Assigned {
                            task_id: t.task_id.clone(),
                            node_id: self.nodes[i].id.clone(),
                        });
                    }
                    None => out.push(Decision::Unschedulable {
                        task_id: t.task_id.clone(),
                        reason: explain(&dropped, self.nodes.len(), t),
                    }),
                }
            }
        } else {
            for t in group {
                let mut this_refused = refused.clone();
                let fitting: Vec<usize> = candidates
                    .iter()
                    .copied()
                    .filter(|&i| match self.dynamic_check(i, t) {
                        None => true,
                        Some(r) => {
                            *this_refused.entry(r).or_default() += 1;
                            false
                        }
                    })
                    .collect();
                match self.pick_with_preferences(&fitting, &candidates, t) {
                    Some(i) => {
                        self.place(i, t);
                        out.push(Decision::Assigned {
                            task_id: t.task_id.clone(),
                            node_id: self.nodes[i].id.clone(),
                        });
                    }
                    None => out.push(Decision::Unschedulable {
                        task_id: t.task_id.clone(),
                        reason: explain(&this_refused, self.nodes.len(), t),
                    }),
                }
            }
        }
    }

    /// Spreads over label values level by level: the value whose nodes (among all
    /// eligible ones) carry the fewest tasks of the service wins, then the best node in it.
    fn pick_with_preferences(
        &self,
        fitting: &[usize],
        eligible: &[usize],
        t: &TaskRequest,
    ) -> Option<usize> {
        let mut pool: Vec<usize> = fitting.to_vec();
        let mut scope: Vec<usize> = eligible.to_vec();
        for key in &t.spread_over {
            if pool.is_empty() {
                return None;
            }
            let value = |i: usize| self.nodes[i].labels.get(key).cloned().unwrap_or_default();
            let mut counts: BTreeMap<String, u32> = BTreeMap::new();
            for &i in &scope {
                *counts.entry(value(i)).or_default() += self.loads[i]
                    .by_service
                    .get(&t.service_id)
                    .copied()
                    .unwrap_or(0);
            }
            let best = pool
                .iter()
                .map(|&i| value(i))
                .min_by_key(|v| (counts.get(v).copied().unwrap_or(0), v.clone()))?;
            pool.retain(|&i| value(i) == best);
            scope.retain(|&i| value(i) == best);
        }
        pool.into_iter()
            .min_by_key(|&i| self.rank(i, &t.service_id))
    }
}

fn same_arch(want: &str, have: &str) -> bool {
    let norm = |a: &str| match a.to_ascii_lowercase().as_str() {
        "amd64" | "x86_64" => "x86_64".to_string(),
        "arm64" | "aarch64" => "aarch64".to_string(),
        other => other.to_string(),
    };
    norm(want) == norm(have)
}

fn explain(refused: &BTreeMap<Refusal, u32>, nodes: usize, t: &TaskRequest) -> String {
    if nodes == 0 {
        return "no suitable node (the cluster has no nodes)".to_string();
    }
    let parts: Vec<String> = refused
        .iter()
        .map(|(r, n)| format!("{n} node{}: {}", if *n == 1 { "" } else { "s" }, r.text(t)))
        .collect();
    format!("no suitable node ({})", parts.join("; "))
}

#[cfg(test)]
mod tests;
