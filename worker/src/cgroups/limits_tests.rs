//! Tests of `limits`.

use super::*;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder,
    LinuxPidsBuilder, LinuxResourcesBuilder,
};

fn mem(limit: i64, swap: Option<i64>) -> LinuxResources {
    let mut m = LinuxMemoryBuilder::default().limit(limit);
    if let Some(s) = swap {
        m = m.swap(s);
    }
    LinuxResourcesBuilder::default()
        .memory(m.build().expect("memory"))
        .build()
        .expect("resources")
}

fn files(writes: &[LimitWrite]) -> Vec<(String, String)> {
    writes
        .iter()
        .filter(|w| w.controller != "devices")
        .map(|w| (w.file.clone(), w.value.clone()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(f, v)| (f.to_string(), v.to_string()))
        .collect()
}

#[test]
fn converts_shares_to_weight() {
    assert_eq!(shares_to_weight(2), 1);
    assert_eq!(shares_to_weight(1024), 39);
    assert_eq!(shares_to_weight(262_144), 10_000);
    assert_eq!(shares_to_weight(0), 0);
    assert_eq!(shares_to_weight(1), 1, "below the range clamps");
}

#[test]
fn converts_nano_cpus_to_quota() {
    assert_eq!(nano_cpus_to_quota(1_500_000_000), Some((150_000, 100_000)));
    assert_eq!(nano_cpus_to_quota(250_000_000), Some((25_000, 100_000)));
    assert_eq!(
        nano_cpus_to_quota(1_000),
        Some((1_000, 100_000)),
        "kernel minimum"
    );
    assert_eq!(nano_cpus_to_quota(0), None);
    assert_eq!(nano_cpus_to_quota(-5), None);
    assert_eq!(nano_cpus_to_quota(i64::MAX), Some((MAX_CPU_QUOTA, 100_000)));
}

#[test]
fn memory_swap_defaults_to_the_limit_like_docker() {
    let m = 64 << 20;
    assert_eq!(
        files(&plan(false, &mem(m, None)).expect("v1")),
        pairs(&[
            ("memory.limit_in_bytes", "67108864"),
            ("memory.memsw.limit_in_bytes", "134217728"),
        ])
    );
    assert_eq!(
        files(&plan(true, &mem(m, None)).expect("v2")),
        pairs(&[("memory.max", "67108864"), ("memory.swap.max", "67108864")])
    );
    // OCI swap is memory + swap: v2 gets the swap part alone.
    assert_eq!(
        files(&plan(true, &mem(m, Some(m + (16 << 20)))).expect("v2")),
        pairs(&[("memory.max", "67108864"), ("memory.swap.max", "16777216")])
    );
    assert_eq!(
        files(&plan(true, &mem(m, Some(-1))).expect("v2")),
        pairs(&[("memory.max", "67108864"), ("memory.swap.max", "max")])
    );
    assert_eq!(
        files(&plan(false, &mem(m, Some(m))).expect("v1 no swap")),
        pairs(&[
            ("memory.limit_in_bytes", "67108864"),
            ("memory.memsw.limit_in_bytes", "67108864"),
        ])
    );
    let p = plan(true, &mem(-1, None)).expect("unlimited");
    assert_eq!(files(&p), pairs(&[("memory.max", "max")]));
    let p = plan(false, &mem(m, None)).expect("v1");
    assert!(p[1].optional, "memsw needs swap accounting");
    assert!(!p[0].optional);
}

#[test]
fn refuses_bad_memory_values_naming_the_limit() {
    let e = plan(false, &mem(1 << 20, None)).expect_err("1 MiB");
    assert!(e.to_string().contains("memory limit 1048576"), "{e}");
    assert!(e.to_string().contains("minimum"), "{e}");
    let e = plan(true, &mem(64 << 20, Some(32 << 20))).expect_err("swap below limit");
    assert!(
        e.to_string().starts_with("invalid memory+swap limit"),
        "{e}"
    );
    let e = plan(true, &mem(-7, None)).expect_err("negative");
    assert!(e.to_string().contains("memory limit -7"), "{e}");
    let r = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(64 << 20)
                .reservation(128 << 20)
                .build()
                .expect("memory"),
        )
        .build()
        .expect("resources");
    let e = plan(false, &r).expect_err("reservation above limit");
    assert!(e.to_string().contains("memory reservation"), "{e}");
}

#[test]
fn cpu_and_pids_on_both_layouts() {
    let r = LinuxResourcesBuilder::default()
        .cpu(
            LinuxCpuBuilder::default()
                .quota(150_000)
                .period(100_000u64)
                .shares(512u64)
                .cpus("0-1")
                .mems("0")
                .build()
                .expect("cpu"),
        )
        .pids(LinuxPidsBuilder::default().limit(32).build().expect("pids"))
        .build()
        .expect("resources");
    assert_eq!(
        files(&plan(false, &r).expect("v1")),
        pairs(&[
            ("cpu.cfs_period_us", "100000"),
            ("cpu.cfs_quota_us", "150000"),
            ("cpu.shares", "512"),
            ("cpuset.cpus", "0-1"),
            ("cpuset.mems", "0"),
            ("pids.max", "32"),
        ])
    );
    assert_eq!(
        files(&plan(true, &r).expect("v2")),
        pairs(&[
            ("cpu.max", "150000 100000"),
            ("cpu.weight", "20"),
            ("cpuset.cpus", "0-1"),
            ("cpuset.mems", "0"),
            ("pids.max", "32"),
        ])
    );
    let only_period = LinuxResourcesBuilder::default()
        .cpu(
            LinuxCpuBuilder::default()
                .period(50_000u64)
                .build()
                .expect("cpu"),
        )
        .build()
        .expect("resources");
    assert_eq!(
        files(&plan(true, &only_period).expect("v2")),
        pairs(&[("cpu.max", "max 50000")])
    );
}

#[test]
fn refuses_cpu_values_the_kernel_would_reject() {
    let cpu = |b: LinuxCpuBuilder| {
        LinuxResourcesBuilder::default()
            .cpu(b.build().expect("cpu"))
            .build()
            .expect("resources")
    };
    for (r, needle) in [
        (cpu(LinuxCpuBuilder::default().quota(500)), "cpu quota 500"),
        (
            cpu(LinuxCpuBuilder::default().period(5_000_000u64)),
            "cpu period 5000000",
        ),
        (cpu(LinuxCpuBuilder::default().shares(1u64)), "cpu shares 1"),
        (
            cpu(LinuxCpuBuilder::default().shares(300_000u64)),
            "cpu shares 300000",
        ),
        (
            cpu(LinuxCpuBuilder::default().cpus("0-a")),
            "cpuset cpus 0-a",
        ),
        (
            cpu(LinuxCpuBuilder::default().mems("0,,1")),
            "cpuset mems 0,,1",
        ),
    ] {
        for v2 in [false, true] {
            let e = plan(v2, &r).expect_err(needle);
            assert!(e.to_string().contains(needle), "{e}");
        }
    }
    let pids = LinuxResourcesBuilder::default()
        .pids(
            LinuxPidsBuilder::default()
                .limit(1i64 << 40)
                .build()
                .expect("pids"),
        )
        .build()
        .expect("resources");
    let e = plan(false, &pids).expect_err("pids");
    assert!(e.to_string().contains("pids limit"), "{e}");
}

#[test]
fn device_rules_default_to_a_safe_list_on_v1_only() {
    let p = plan(false, &LinuxResources::default()).expect("v1");
    assert_eq!(p[0].file, "devices.deny");
    assert_eq!(p[0].value, "a");
    assert!(p.iter().any(|w| w.value == "c 1:3 rwm"));
    assert!(!p.iter().any(|w| w.value.starts_with("b 8:")));
    assert!(
        plan(true, &LinuxResources::default())
            .expect("v2")
            .is_empty()
    );
    let r = LinuxResourcesBuilder::default()
        .devices(vec![
            LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .access("rwm")
                .build()
                .expect("deny"),
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(LinuxDeviceType::B)
                .major(8)
                .access("r")
                .build()
                .expect("allow"),
        ])
        .build()
        .expect("resources");
    let got: Vec<_> = plan(false, &r)
        .expect("v1")
        .into_iter()
        .map(|w| (w.file, w.value, w.optional))
        .collect();
    assert_eq!(
        got,
        vec![
            ("devices.deny".to_string(), "a".to_string(), false),
            ("devices.allow".to_string(), "b 8:* r".to_string(), false),
        ]
    );
}

#[test]
fn unified_settings_need_v2() {
    let r = LinuxResourcesBuilder::default()
        .unified(std::collections::HashMap::from([(
            "memory.high".to_string(),
            "50000000".to_string(),
        )]))
        .build()
        .expect("resources");
    let p = plan(true, &r).expect("v2");
    assert_eq!(p[0].controller, "memory");
    assert_eq!(p[0].file, "memory.high");
    assert!(plan(false, &r).is_err());
    let bad = LinuxResourcesBuilder::default()
        .unified(std::collections::HashMap::from([(
            "../escape".to_string(),
            "1".to_string(),
        )]))
        .build()
        .expect("resources");
    assert!(plan(true, &bad).is_err());
}
