//! The multi-host lab (`deploy/lab/shoal-lab`): five hosts, each a network namespace on a
//! private underlay with its own daemon; three managers and two workers. Placement by
//! hostname, a worker cut off the underlay (its tasks run elsewhere, and stop on it when it
//! is healed), the leader killed (writes accepted again), every host restarted in turn.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use shoal_tests::lab::Lab;
use shoal_tests::{require_kernel, wait_for};

#[test]
fn five_hosts_three_managers_survive_partitions_and_kills() {
    require_kernel!();
    let lab = Lab::cluster("sl", 3, 2);
    assert!(
        wait_for(Duration::from_secs(15), || {
            let (_, ls, _) = lab.shoal(1, &["node", "ls"]);
            ls.matches("Ready").count() == 5
        }),
        "{}",
        lab.shoal(1, &["node", "ls"]).1
    );
    let ls = lab.shoal_ok(2, &["node", "ls"]);
    assert_eq!(ls.matches("Leader").count(), 1, "{ls}");
    assert_eq!(ls.matches("Reachable").count(), 2, "{ls}");
    for h in ["h1", "h2", "h3", "h4", "h5"] {
        assert!(ls.contains(h), "{ls}");
    }

    // Spread over the five hosts; placement by hostname.
    lab.shoal_ok(
        3,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "10",
            "--stop-grace-period",
            "1s",
            "busybox:test",
            "sleep",
            "1000",
        ],
    );
    let spread = lab.spread(1, "web");
    assert_eq!(spread.len(), 5, "{spread:?}");
    assert!(spread.values().all(|n| *n == 2), "{spread:?}");
    lab.shoal_ok(
        1,
        &[
            "service",
            "create",
            "--name",
            "pinned",
            "--replicas",
            "2",
            "--constraint",
            "node.hostname==h4",
            "--stop-grace-period",
            "1s",
            "busybox:test",
            "sleep",
            "1000",
        ],
    );
    assert_eq!(lab.spread(1, "pinned").get("h4"), Some(&2));

    // A worker cut off the underlay: its tasks run elsewhere within seconds; healed, its
    // stale containers stop.
    lab.ok(&["cut", "5"]);
    let cut = Instant::now();
    assert!(
        wait_for(Duration::from_secs(20), || {
            let s = lab.spread(1, "web");
            !s.contains_key("h5") && s.values().sum::<usize>() == 10
        }),
        "{:?}",
        lab.spread(1, "web")
    );
    eprintln!(
        "worker cut off → its tasks running elsewhere in {:?}",
        cut.elapsed()
    );
    assert_eq!(
        lab.shoal_ok(5, &["container", "ls", "-q"]).lines().count(),
        2
    );
    lab.ok(&["heal", "5"]);
    assert!(
        wait_for(Duration::from_secs(20), || {
            lab.shoal(5, &["container", "ls", "-q"]).1.trim().is_empty()
        }),
        "stale containers on h5: {}",
        lab.shoal(5, &["container", "ls"]).1
    );

    // The leader killed: writes through another manager work again soon.
    let leader = lab.leader(1).expect("a leader among hosts 1-3");
    let other = if leader == 1 { 2 } else { 1 };
    let killed = Instant::now();
    lab.ok(&["kill", &leader.to_string()]);
    assert!(wait_for(Duration::from_secs(15), || {
        lab.shoal(other, &["service", "scale", "web=11", "-d"]).0 == 0
    }));
    eprintln!(
        "leader killed → first accepted write after {:?}",
        killed.elapsed()
    );
    lab.ok(&["start", &leader.to_string()]);

    // Every host restarted in turn: the services stay converged.
    for i in 1..=5 {
        lab.ok(&["stop", &i.to_string()]);
        lab.ok(&["start", &i.to_string()]);
    }
    assert!(
        wait_for(Duration::from_secs(30), || {
            lab.spread(other, "web").values().sum::<usize>() == 11
                && lab.spread(other, "pinned").get("h4") == Some(&2)
        }),
        "web {:?}, pinned {:?}",
        lab.spread(other, "web"),
        lab.spread(other, "pinned")
    );
    // A host whose restart outlasted the heartbeat misses had its tasks replaced; its stale
    // containers stop once it is back (grace 1 s), so the count settles rather than being
    // exact at the moment the services converge.
    let containers = || -> usize {
        (1..=5)
            .map(|i| lab.shoal_ok(i, &["container", "ls", "-q"]).lines().count())
            .sum()
    };
    assert!(
        wait_for(Duration::from_secs(20), || containers() == 13),
        "containers: {} (want 13: no slot runs twice)",
        containers()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(containers(), 13, "no slot runs twice");
    assert_eq!(lab.spread(other, "web").values().sum::<usize>(), 11);
}

/// What became of one service the writer tried.
#[derive(Default, Clone)]
struct Tried {
    /// The create was acknowledged.
    created: bool,
    /// The scale to 2: None when not tried, Some(acknowledged) when tried.
    scaled: Option<bool>,
}

#[test]
fn leader_killed_again_and_again_loses_no_acknowledged_write() {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    require_kernel!();
    let lab = Arc::new(Lab::cluster("sk", 3, 1));
    assert!(wait_for(Duration::from_secs(20), || {
        lab.shoal(1, &["node", "ls"]).1.matches(" Ready ").count() == 4
    }));

    // A writer creates services and scales them through whichever manager it picks, and
    // records what was acknowledged, while the leader is killed and restarted five times.
    let tried: Arc<Mutex<BTreeMap<String, Tried>>> = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (lab, tried, stop) = (lab.clone(), tried.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let via = 1 + n % 3;
                let name = format!("k{n}");
                let (code, _, _) = lab.shoal(
                    via,
                    &[
                        "service",
                        "create",
                        "-d",
                        "--name",
                        &name,
                        "--stop-grace-period",
                        "1s",
                        "busybox:test",
                        "sleep",
                        "1000",
                    ],
                );
                tried.lock().unwrap().insert(
                    name,
                    Tried {
                        created: code == 0,
                        scaled: None,
                    },
                );
                if n.is_multiple_of(2) {
                    let target = format!("k{}", n - 1);
                    if tried.lock().unwrap()[&target].created {
                        let scale = format!("{target}=2");
                        let (code, _, _) = lab.shoal(via, &["service", "scale", "-d", &scale]);
                        tried.lock().unwrap().get_mut(&target).unwrap().scaled = Some(code == 0);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let mut failovers = Vec::new();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_secs(2));
        let leader = lab
            .wait_leader(&[1, 2, 3], Duration::from_secs(15))
            .expect("a leader");
        lab.ok(&["kill", &leader.to_string()]);
        let killed = Instant::now();
        let others: Vec<usize> = (1..=3).filter(|i| *i != leader).collect();
        let mut next = None;
        wait_for(Duration::from_secs(15), || {
            next = others
                .iter()
                .find_map(|m| lab.leader(*m))
                .filter(|l| *l != leader);
            next.is_some()
        });
        failovers.push(killed.elapsed());
        assert!(next.is_some(), "no new leader after h{leader} was killed");
        lab.ok(&["start", &leader.to_string()]);
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    eprintln!("leader killed → new leader seen after {failovers:?}");

    // Every acknowledged create exists; every acknowledged scale holds; a write that was
    // not acknowledged may or may not have applied.
    let tried = tried.lock().unwrap().clone();
    let acked = tried.values().filter(|t| t.created).count();
    assert!(acked >= 10, "only {acked} creates were acknowledged");
    let services = || -> BTreeMap<String, u64> {
        let (_, out, _) = lab.shoal(1, &["service", "ls", "--format", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        v.as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|s| {
                (
                    s["spec"]["name"].as_str().unwrap_or("").to_string(),
                    s["spec"]["replicas"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    };
    let stored = services();
    let views = |name: &str| -> String {
        (1..=3)
            .map(|i| {
                let (_, out, err) = lab.shoal(i, &["service", "inspect", name]);
                format!("--- h{i}:\n{out}{err}")
            })
            .collect()
    };
    for (name, t) in &tried {
        let have = stored.get(name);
        if t.created {
            assert!(
                have.is_some(),
                "acknowledged service {name} is gone:\n{}",
                views(name)
            );
        }
        match (t.scaled, have) {
            (Some(true), Some(r)) => {
                assert_eq!(*r, 2, "acknowledged scale of {name} lost:\n{}", views(name))
            }
            (None, Some(r)) => assert_eq!(*r, 1, "{name} was never scaled"),
            _ => {}
        }
    }

    // Every slot runs once: the containers on all hosts match the replicas asked for.
    let want: u64 = stored.values().sum();
    let short = || -> String {
        stored
            .iter()
            .filter(|(name, r)| lab.spread(1, name).values().sum::<usize>() as u64 != **r)
            .map(|(name, _)| lab.shoal(1, &["service", "ps", name]).1)
            .collect()
    };
    assert!(
        wait_for(Duration::from_secs(60), || lab.containers() as u64 == want),
        "containers: {} (want {want}: every slot once); services not converged:\n{}",
        lab.containers(),
        short()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(lab.containers() as u64, want, "no slot runs twice");
}
