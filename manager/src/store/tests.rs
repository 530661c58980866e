//! openraft's storage suite on our redb storage, and the store's own rules.

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};

use super::*;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogStore::open(&dir.path().join("raft-log.redb")).expect("log store");
        let sm = StateMachine::open(&dir.path().join("state.redb")).expect("state machine");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    // The suite runs its own runtime.
    Suite::test_all(Builder).expect("openraft's storage suite passes");
}

fn entry(index: u64, cmd: Command) -> openraft::Entry<TypeConfig> {
    openraft::Entry {
        log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 0), index),
        payload: openraft::EntryPayload::Normal(cmd),
    }
}

fn put(id: &str, expected: Option<u64>) -> Command {
    Command::Put {
        kind: "service".into(),
        id: id.into(),
        value: serde_json::json!({ "name": id }),
        expected_version: expected,
    }
}

#[tokio::test]
async fn versions_are_raft_indexes_and_conflicts_are_refused() {
    use openraft::storage::RaftStateMachine;
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(&dir.path().join("sm.redb")).unwrap();
    let mut events = sm.subscribe();
    let r = sm
        .apply(vec![
            entry(1, put("web", Some(0))),
            entry(2, put("web", Some(1))),
            entry(3, put("web", Some(1))),
            entry(4, put("db", Some(5))),
            entry(
                5,
                Command::Batch {
                    commands: vec![put("a", None), put("web", Some(2))],
                },
            ),
            entry(
                6,
                Command::Batch {
                    commands: vec![put("b", None), put("web", Some(2))],
                },
            ),
        ])
        .await
        .unwrap();
    assert_eq!(r[0], CommandResult::Applied(vec![1]));
    assert_eq!(r[1], CommandResult::Applied(vec![2]));
    assert!(matches!(
        r[2],
        CommandResult::Conflict {
            expected: 1,
            actual: 2,
            ..
        }
    ));
    assert!(matches!(
        r[3],
        CommandResult::Conflict {
            expected: 5,
            actual: 0,
            ..
        }
    ));
    assert_eq!(r[4], CommandResult::Applied(vec![5, 5]));
    assert!(
        matches!(r[5], CommandResult::Conflict { .. }),
        "a batch is all or nothing"
    );
    assert!(sm.get("service", "b").unwrap().is_none());
    assert_eq!(sm.get("service", "web").unwrap().unwrap().version, 5);
    let ids: Vec<String> = sm
        .list("service")
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, vec!["a", "web"]);
    // Events in commit order.
    let first = events.recv().await.unwrap();
    assert!(matches!(first, ObjectEvent::Put { ref id, .. } if id == "web"));
}

#[tokio::test]
async fn state_survives_reopening() {
    use openraft::storage::RaftStateMachine;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sm.redb");
    {
        let mut sm = StateMachine::open(&path).unwrap();
        sm.apply(vec![entry(7, put("web", None))]).await.unwrap();
    }
    let mut sm = StateMachine::open(&path).unwrap();
    assert_eq!(sm.get("service", "web").unwrap().unwrap().version, 7);
    assert_eq!(sm.applied_state().await.unwrap().0.unwrap().index, 7);
}

#[test]
fn every_command_survives_the_log_encoding() {
    // The log stores entries as JSON: a command that cannot be encoded would fail every
    // write that carries it.
    let cmds = vec![
        put("a", Some(1)),
        Command::Delete {
            kind: "task".into(),
            id: "t".into(),
            expected_version: None,
        },
        Command::Batch {
            commands: vec![put("a", None), Command::Batch { commands: vec![] }],
        },
    ];
    for c in cmds {
        let e = entry(7, c.clone());
        let json = serde_json::to_vec(&e).expect("encodes");
        let back: openraft::Entry<TypeConfig> = serde_json::from_slice(&json).expect("decodes");
        assert_eq!(back.payload, openraft::EntryPayload::Normal(c));
    }
}
