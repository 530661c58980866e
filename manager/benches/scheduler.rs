//! Scheduler core throughput: 100,000 tasks on 1,000 nodes and 10,000 on 100, as in
//! swarmkit's scheduler benchmark (its published figure: 22.6 s for 100k/1k on a laptop).
//! Run with `cargo bench -p shoal-manager --bench scheduler`.

use std::time::Instant;

use shoal_manager::scheduler::{Decision, NodeInfo, Resources, Scheduler, TaskRequest};

fn cluster(nodes: usize) -> Scheduler {
    Scheduler::new(
        (0..nodes)
            .map(|i| NodeInfo {
                id: format!("node-{i:05}"),
                hostname: format!("host-{i}"),
                ready: true,
                os: "linux".into(),
                arch: "x86_64".into(),
                capacity: Resources {
                    nano_cpus: 64_000_000_000,
                    memory_bytes: 256 << 30,
                },
                ..Default::default()
            })
            .collect(),
    )
}

fn tasks(n: usize, services: usize) -> Vec<TaskRequest> {
    (0..n)
        .map(|i| TaskRequest {
            task_id: format!("task-{i}"),
            service_id: format!("svc-{}", i * services / n),
            reservations: Resources {
                nano_cpus: 10_000_000,
                memory_bytes: 16 << 20,
            },
            ..Default::default()
        })
        .collect()
}

fn run(nodes: usize, n: usize, services: usize) {
    let ts = tasks(n, services);
    let mut best = f64::MAX;
    for _ in 0..5 {
        let mut s = cluster(nodes);
        let t = Instant::now();
        let d = s.schedule(&ts);
        let secs = t.elapsed().as_secs_f64();
        assert!(d.iter().all(|d| matches!(d, Decision::Assigned { .. })));
        best = best.min(secs);
    }
    println!(
        "scheduler: {n} tasks ({services} services) on {nodes} nodes: best of 5 {:.1} ms ({:.0} tasks/s)",
        best * 1e3,
        n as f64 / best
    );
}

fn main() {
    run(1_000, 100_000, 1);
    run(1_000, 100_000, 100);
    run(100, 10_000, 1);
    println!("peer: swarmkit's published figure for 100,000 tasks on 1,000 nodes is 22.6 s");
}
