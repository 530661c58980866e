//! Cgroups on fake trees laid out like v1 and v2 hierarchies: the exact files written.

use super::*;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
};

pub(super) fn resources() -> LinuxResources {
    LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(64 << 20)
                .build()
                .expect("memory"),
        )
        .cpu(
            LinuxCpuBuilder::default()
                .quota(50_000)
                .period(100_000u64)
                .shares(512u64)
                .build()
                .expect("cpu"),
        )
        .pids(LinuxPidsBuilder::default().limit(32).build().expect("pids"))
        .build()
        .expect("resources")
}

fn fake_v1(root: &Path) {
    for c in V1_CONTROLLERS {
        std::fs::create_dir_all(root.join(c)).expect("mkdir");
        std::fs::write(root.join(c).join("cgroup.procs"), "").expect("procs");
    }
    std::fs::write(root.join("cpuset/cpuset.cpus"), "0-1\n").expect("cpus");
    std::fs::write(root.join("cpuset/cpuset.mems"), "0\n").expect("mems");
}

fn read(p: PathBuf) -> String {
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn writes_v1_limits_into_each_hierarchy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    fake_v1(root);
    // Files the kernel would show only with swap accounting or a devices controller.
    std::fs::create_dir_all(root.join("memory/shoal/c1")).expect("mkdir");
    std::fs::write(root.join("memory/shoal/c1/memory.memsw.limit_in_bytes"), "").expect("memsw");
    let layout = Layout::detect_at(root).expect("layout");
    let cg = Cgroup::create(&layout, "/shoal/c1/", &resources()).expect("create");
    assert_eq!(cg.path(), "shoal/c1");
    let mem = root.join("memory/shoal/c1");
    assert_eq!(read(mem.join("memory.limit_in_bytes")), "67108864");
    assert_eq!(read(mem.join("memory.memsw.limit_in_bytes")), "134217728");
    let cpu = root.join("cpu/shoal/c1");
    assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "50000");
    assert_eq!(read(cpu.join("cpu.cfs_period_us")), "100000");
    assert_eq!(read(cpu.join("cpu.shares")), "512");
    assert_eq!(read(root.join("pids/shoal/c1/pids.max")), "32");
    // New cpuset levels get their parent's CPUs and memory nodes.
    assert_eq!(read(root.join("cpuset/shoal/cpuset.cpus")), "0-1");
    assert_eq!(read(root.join("cpuset/shoal/c1/cpuset.mems")), "0");
    // No limit lands in another controller's hierarchy.
    assert!(!root.join("memory/shoal/c1/pids.max").exists());
    assert!(!root.join("pids/shoal/c1/memory.limit_in_bytes").exists());
    // devices.deny does not exist in a fake tree: the default rules are skipped.
    assert!(!root.join("devices/shoal/c1/devices.deny").exists());
    cg.add_process(4242).expect("join");
    assert_eq!(read(root.join("freezer/shoal/c1/cgroup.procs")), "4242");
    assert_eq!(cg.pids(), vec![4242]);
}

#[test]
fn writes_v2_limits_and_delegates_controllers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::write(
        root.join("cgroup.controllers"),
        "cpuset cpu io memory hugetlb pids\n",
    )
    .expect("controllers");
    std::fs::write(root.join("cgroup.subtree_control"), "cpu\n").expect("subtree");
    let layout = Layout::detect_at(root).expect("layout");
    let cg = Cgroup::create(&layout, "shoal/c2", &resources()).expect("create");
    let d = root.join("shoal/c2");
    assert_eq!(read(d.join("memory.max")), "67108864");
    assert!(
        !d.join("memory.swap.max").exists(),
        "optional, absent in the fake"
    );
    assert_eq!(read(d.join("cpu.max")), "50000 100000");
    assert_eq!(read(d.join("cpu.weight")), "20");
    assert_eq!(read(d.join("pids.max")), "32");
    // Only what is missing is enabled, at every level above the leaf, not in it.
    assert_eq!(
        read(root.join("cgroup.subtree_control")),
        "+cpuset +io +memory +pids"
    );
    assert_eq!(
        read(root.join("shoal/cgroup.subtree_control")),
        "+cpu +cpuset +io +memory +pids"
    );
    assert!(!d.join("cgroup.subtree_control").exists());
    assert!(cg.exists());
}

#[test]
fn v2_limit_without_its_controller_is_refused_and_cleaned_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::write(root.join("cgroup.controllers"), "memory\n").expect("controllers");
    // Pretend the kernel made the leaf with only memory available. It exists
    // beforehand, so it is not ours to remove; "shoal" is.
    std::fs::create_dir_all(root.join("shoal/c3")).expect("mkdir");
    std::fs::write(root.join("shoal/c3/cgroup.controllers"), "memory\n").expect("write");
    let layout = Layout::v2(root);
    let e = Cgroup::create(&layout, "shoal/c3", &resources()).expect_err("no pids");
    assert!(
        matches!(&e, CgroupError::MissingController { controller, .. } if controller == "cpu"),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("cpu quota needs the cpu cgroup controller"),
        "{e}"
    );
    assert!(root.join("shoal/c3").exists());
}

#[test]
fn invalid_limits_create_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    fake_v1(dir.path());
    let layout = Layout::detect_at(dir.path()).expect("layout");
    let res = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(4096)
                .build()
                .expect("memory"),
        )
        .build()
        .expect("resources");
    let e = Cgroup::create(&layout, "shoal/c4", &res).expect_err("too small");
    assert!(e.to_string().contains("invalid memory limit 4096"), "{e}");
    assert!(!dir.path().join("memory/shoal").exists());
    for bad in ["", "/", "shoal/../../etc", "./x"] {
        let e = Cgroup::create(&layout, bad, &LinuxResources::default()).expect_err(bad);
        assert!(matches!(e, CgroupError::InvalidPath { .. }), "{bad}: {e}");
    }
}

#[test]
fn reads_oom_kills_and_stats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::write(root.join("cgroup.controllers"), "memory pids\n").expect("write");
    let cg =
        Cgroup::create(&Layout::v2(root), "shoal/c5", &LinuxResources::default()).expect("create");
    let d = root.join("shoal/c5");
    assert!(!cg.oom_killed(), "no memory.events yet");
    std::fs::write(
        d.join("memory.events"),
        "low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n",
    )
    .expect("write");
    assert!(!cg.oom_killed(), "an OOM event without a kill");
    std::fs::write(d.join("memory.events"), "max 3\noom 1\noom_kill 2\n").expect("write");
    assert!(cg.oom_killed());
    std::fs::write(d.join("memory.current"), "1234\n").expect("write");
    std::fs::write(d.join("memory.max"), "max\n").expect("write");
    std::fs::write(d.join("pids.current"), "3\n").expect("write");
    std::fs::write(d.join("cpu.stat"), "usage_usec 7\nuser_usec 5\n").expect("write");
    assert_eq!(
        cg.stats(),
        CgroupStats {
            memory_usage: Some(1234),
            memory_limit: None,
            pids_current: Some(3),
            cpu_usage_ns: Some(7000),
        }
    );
}

#[test]
fn cgroups_path_for_runc() {
    assert_eq!(cgroups_path_for("shoal", "abc"), "/shoal/abc");
    assert_eq!(cgroups_path_for("/shoal/", "abc"), "/shoal/abc");
    assert_eq!(cgroups_path_for("", "abc"), "/abc");
}
