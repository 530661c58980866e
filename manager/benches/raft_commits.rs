//! Raft commits per second on one manager, against the floor under them measured in the
//! same run: durable redb write transactions of the same size on the same disk.
//! Run with `cargo bench -p shoal-manager --bench raft_commits`.

use std::sync::Arc;
use std::time::Instant;

use shoal_manager::cluster::{ClusterStore, Timings};
use shoal_manager::store::Command;

const N: usize = 2000;

fn put(i: usize) -> Command {
    Command::Put {
        kind: "task".into(),
        id: format!("task-{i}"),
        value: serde_json::json!({ "service": "web", "slot": i, "state": "running" }),
        expected_version: None,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");

    // The floor: one durable redb transaction per write.
    let db = redb::Database::create(dir.path().join("floor.redb")).expect("redb");
    let table: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("t");
    let value = serde_json::to_vec(&put(0)).expect("json");
    let t = Instant::now();
    for i in 0..N {
        let tx = db.begin_write().expect("tx");
        tx.open_table(table)
            .expect("table")
            .insert(format!("k{i}").as_str(), value.as_slice())
            .expect("insert");
        tx.commit().expect("commit");
    }
    let floor = N as f64 / t.elapsed().as_secs_f64();

    let (sequential, concurrent) = rt.block_on(async {
        let store = Arc::new(
            ClusterStore::open(&dir.path().join("raft"), 1, &Timings::default())
                .await
                .expect("store"),
        );
        store.bootstrap("127.0.0.1:4242").await.expect("leader");
        let t = Instant::now();
        for i in 0..N {
            store.write(put(i)).await.expect("write");
        }
        let sequential = N as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut handles = Vec::new();
        for w in 0..64 {
            let s = store.clone();
            handles.push(tokio::spawn(async move {
                for i in (w..N).step_by(64) {
                    s.write(put(N + i)).await.expect("write");
                }
            }));
        }
        for h in handles {
            h.await.expect("writer");
        }
        let concurrent = N as f64 / t.elapsed().as_secs_f64();
        store.shutdown().await;
        (sequential, concurrent)
    });
    println!("raft: one manager, {N} commits of a small object:");
    println!("  redb durable transactions (floor): {floor:.0}/s");
    println!(
        "  raft commits, one writer:          {sequential:.0}/s ({:.2} of the floor)",
        sequential / floor
    );
    println!(
        "  raft commits, 64 writers:          {concurrent:.0}/s ({:.2} of the floor)",
        concurrent / floor
    );
}
