//! The leader's pipeline: one snapshot of the store per pass, the pure stages run on it in
//! order, each seeing the writes of the ones before, and their writes merged per object
//! and committed through Raft with the versions that were read (a write that lost a race
//! is proposed again on the next pass). Every pass reconciles the whole store, so a new
//! leader that missed events catches up on its first pass.
//!
//! The stages, each `fn(&Snapshot, now) -> Vec<Write>` in a module of its own:
//! 1. [`node_loss`]: tasks of down nodes orphaned, of drained nodes stopped;
//! 2. [`orchestrate`]: services' tasks made, replaced, updated, rolled back, trimmed;
//! 3. [`allocate`]: addresses, VIPs, ports; NEW to PENDING;
//! 4. [`schedule`]: PENDING to ASSIGNED, or why not.

pub mod allocate;
pub mod node_loss;
pub mod orchestrate;
pub mod schedule;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shoal_api::types::{Task, TaskState};

use crate::cluster::{ClusterError, ClusterStore};
use crate::store::{CommandResult, Snapshot, Write, coalesce};

pub use allocate::{DYNAMIC_PORTS, task_networks};

/// The most writes one Raft entry carries: an entry is replicated whole, and a few
/// hundred tasks' JSON is already hundreds of kilobytes.
const BATCH: usize = 100;

/// What one pass wrote, per stage.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    /// Tasks of lost or drained nodes.
    pub node_loss: usize,
    /// The orchestrators' writes.
    pub orchestrated: usize,
    /// The allocator's writes.
    pub allocated: usize,
    /// The scheduler's writes.
    pub scheduled: usize,
    /// Objects written, once the stages' writes were merged.
    pub written: usize,
}

impl PassReport {
    /// Whether the pass changed anything.
    pub fn changed(&self) -> bool {
        self.written > 0
    }
}

/// Runs every stage on `snap` at `now_ms`; returns the merged writes and what each
/// stage proposed.
pub fn plan(snap: &Snapshot, now_ms: i64, ids: orchestrate::Ids<'_>) -> (Vec<Write>, PassReport) {
    let mut snap = snap.clone();
    let mut report = PassReport::default();
    let mut all = Vec::new();
    let mut stage = |writes: Vec<Write>, count: &mut usize, snap: &mut Snapshot| {
        *count = writes.len();
        snap.apply(&writes);
        all.extend(writes);
    };
    let w = node_loss::run(&snap, now_ms);
    stage(w, &mut report.node_loss, &mut snap);
    let w = orchestrate::run(&snap, now_ms, ids);
    stage(w, &mut report.orchestrated, &mut snap);
    let w = allocate::run(&snap);
    stage(w, &mut report.allocated, &mut snap);
    let w = schedule::run(&snap, now_ms);
    stage(w, &mut report.scheduled, &mut snap);
    let writes = coalesce(all);
    report.written = writes.len();
    (writes, report)
}

/// The pipeline of a leading manager.
pub struct Pipeline {
    store: Arc<ClusterStore>,
    node_id: u64,
    counter: AtomicU64,
}

impl Pipeline {
    /// A pipeline writing through `store`; `node_id` keeps task ids unique across managers.
    pub fn new(store: Arc<ClusterStore>, node_id: u64) -> Pipeline {
        Pipeline {
            store,
            node_id,
            counter: AtomicU64::new(0),
        }
    }

    /// A new task id: random, so that short prefixes tell tasks apart; the manager's id and
    /// a counter keep it unique even if the random source fails.
    fn next_id(&self, now_ms: i64) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        match shoal_api::id::random_hex(10) {
            Ok(hex) => format!("{hex}{:x}{n:x}", self.node_id),
            Err(_) => format!("{n:08x}{now_ms:x}{:x}", self.node_id),
        }
    }

    /// One pass over the whole store at time `now_ms`.
    pub async fn reconcile(&self, now_ms: i64) -> Result<PassReport, ClusterError> {
        let snap = self.store.snapshot()?;
        let mut next = || self.next_id(now_ms);
        let (writes, report) = plan(&snap, now_ms, &mut next);
        self.write_batch(writes).await?;
        Ok(report)
    }

    /// Writes one by one: a conflict only skips that write (the next pass sees the newer
    /// object and proposes again).
    async fn write_each(&self, writes: Vec<Write>) -> Result<(), ClusterError> {
        for w in writes {
            self.store.apply(w).await?;
        }
        Ok(())
    }

    /// Writes as Raft entries of up to [`BATCH`] writes each; if one of an entry's writes
    /// lost a race, the others of that entry are written one by one.
    async fn write_batch(&self, writes: Vec<Write>) -> Result<(), ClusterError> {
        for chunk in writes.chunks(BATCH) {
            if chunk.len() < 2 {
                self.write_each(chunk.to_vec()).await?;
                continue;
            }
            if let CommandResult::Conflict { .. } = self.store.apply_all(chunk).await? {
                self.write_each(chunk.to_vec()).await?;
            }
        }
        Ok(())
    }

    /// Runs passes whenever the store changes, and at least every `tick` (restart delays),
    /// until `stop` resolves.
    pub async fn run(&self, tick: Duration, stop: impl std::future::Future<Output = ()>) {
        let mut events = self.store.subscribe();
        tokio::pin!(stop);
        loop {
            // The pass reads the whole store: what is queued now, it sees.
            crate::cluster::skip_changes(&mut events);
            match self.reconcile(shoal_api::clock::now_ms()).await {
                Ok(r) if r.changed() => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!("reconcile pass failed: {e}"),
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = crate::cluster::next_changes(&mut events, Duration::from_millis(2)) => {}
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }
}

/// Counts tasks by (service, state) — for tests and `service ls`.
pub fn census(store: &ClusterStore) -> Result<BTreeMap<(String, TaskState), usize>, ClusterError> {
    let mut out = BTreeMap::new();
    for v in store.list::<Task>()? {
        *out.entry((v.value.service_id, v.value.status.state))
            .or_default() += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
