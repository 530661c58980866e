//! Tests of `cluster`.

use super::*;

fn put(id: &str, n: u64) -> Command {
    Command::Put {
        kind: "service".into(),
        id: id.into(),
        value: serde_json::json!({ "replicas": n }),
        expected_version: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_manager_commits_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = ClusterStore::open(dir.path(), 1, &Timings::default())
        .await
        .unwrap();
    store.bootstrap("127.0.0.1:4242").await.unwrap();
    let mut events = store.subscribe();
    let r = store.write(put("web", 3)).await.unwrap();
    let CommandResult::Applied(v) = r else {
        panic!("{r:?}")
    };
    assert_eq!(
        store.get_stored("service", "web").unwrap().unwrap().version,
        v[0]
    );
    assert!(matches!(
        events.recv().await.unwrap(),
        ObjectEvent::Put { .. }
    ));
    let stale = Command::Put {
        kind: "service".into(),
        id: "web".into(),
        value: serde_json::json!({}),
        expected_version: Some(v[0] - 1),
    };
    assert!(matches!(
        store.write(stale).await.unwrap(),
        CommandResult::Conflict { .. }
    ));
    store.shutdown().await;
    drop(store);
    // openraft's tasks let go of the storage a moment after shutdown.
    let store = loop {
        match ClusterStore::open(dir.path(), 1, &Timings::default()).await {
            Ok(s) => break s,
            Err(e) if e.to_string().contains("already open") => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    store.bootstrap("127.0.0.1:4242").await.unwrap();
    assert_eq!(
        store.wait_for_leader(Duration::from_secs(5)).await.unwrap(),
        1
    );
    assert_eq!(
        store.get_stored("service", "web").unwrap().unwrap().value["replicas"],
        3
    );
    store.write(put("db", 1)).await.unwrap();
    assert_eq!(store.list_stored("service").unwrap().len(), 2);
    store.shutdown().await;
}
