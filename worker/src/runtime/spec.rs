//! Builds the OCI runtime spec (`config.json`) of a container from what the user asked for
//! and what the image says. Every runtime, builtin or external, runs from this one file.

use std::path::PathBuf;

use oci_spec::runtime::{
    LinuxBuilder, LinuxCapabilities, LinuxNamespace, LinuxNamespaceType, LinuxResources,
    LinuxSeccomp, Mount, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};

use super::RuntimeError;
use super::user::ResolvedUser;

/// How a container is connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkNamespace {
    /// The host's network namespace.
    Host,
    /// A namespace prepared by the daemon (bridge), joined by path.
    Path(PathBuf),
    /// A new, empty namespace with only loopback (`--network none`).
    New,
}

/// A file of the container's `/etc` that the daemon writes and bind-mounts
/// (`hosts`, `hostname`, `resolv.conf`).
#[derive(Debug, Clone)]
pub struct EtcFile {
    /// The file on the host.
    pub source: PathBuf,
    /// Where it appears in the container.
    pub destination: &'static str,
}

/// Everything the spec is made from.
#[derive(Debug, Clone)]
pub struct SpecParams {
    /// The process's argv, resolved from the image's Entrypoint and Cmd and the user's.
    pub args: Vec<String>,
    /// `K=V` pairs.
    pub env: Vec<String>,
    /// The working directory, absolute.
    pub cwd: String,
    /// The process's identity.
    pub user: ResolvedUser,
    /// The container's hostname.
    pub hostname: String,
    /// The root filesystem (an overlay mount point).
    pub rootfs: PathBuf,
    /// Mount the root read-only.
    pub read_only: bool,
    /// The process's capabilities.
    pub capabilities: LinuxCapabilities,
    /// The seccomp filter, `None` when unconfined.
    pub seccomp: Option<LinuxSeccomp>,
    /// The network namespace.
    pub network: NetworkNamespace,
    /// Cgroup limits.
    pub resources: LinuxResources,
    /// The cgroup path given to external runtimes, like `/shoal/<id>`.
    pub cgroups_path: String,
    /// Files of `/etc` the daemon manages.
    pub etc_files: Vec<EtcFile>,
    /// The user's mounts (volumes, bind mounts, tmpfs), after every other mount.
    pub mounts: Vec<Mount>,
    /// Set the no_new_privs bit.
    pub no_new_privileges: bool,
}

/// Builds the spec.
pub fn build(p: &SpecParams) -> Result<Spec, RuntimeError> {
    let bad = |e: oci_spec::OciSpecError| RuntimeError::Spec(e.to_string());
    let user = UserBuilder::default()
        .uid(p.user.uid)
        .gid(p.user.gid)
        .additional_gids(p.user.additional_gids.clone())
        .build()
        .map_err(bad)?;
    // No rlimits: containers inherit the daemon's, as with Docker's defaults (raising a
    // hard limit needs CAP_SYS_RESOURCE, which not every host grants even to root).
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(user)
        .args(p.args.clone())
        .env(p.env.clone())
        .cwd(p.cwd.clone())
        .capabilities(p.capabilities.clone())
        .no_new_privileges(p.no_new_privileges)
        .build()
        .map_err(bad)?;
    let root = RootBuilder::default()
        .path(p.rootfs.clone())
        .readonly(p.read_only)
        .build()
        .map_err(bad)?;

    let mut namespaces = vec![
        ns(LinuxNamespaceType::Pid, None),
        ns(LinuxNamespaceType::Ipc, None),
        ns(LinuxNamespaceType::Uts, None),
        ns(LinuxNamespaceType::Mount, None),
    ];
    match &p.network {
        NetworkNamespace::Host => {}
        NetworkNamespace::New => namespaces.push(ns(LinuxNamespaceType::Network, None)),
        NetworkNamespace::Path(path) => {
            namespaces.push(ns(LinuxNamespaceType::Network, Some(path.clone())))
        }
    }
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(p.resources.clone())
        .cgroups_path(PathBuf::from(&p.cgroups_path))
        .masked_paths(masked_paths())
        .readonly_paths(readonly_paths())
        .build()
        .map_err(bad)?;
    linux.set_seccomp(p.seccomp.clone());

    let mut mounts = default_mounts(&p.network);
    for f in &p.etc_files {
        mounts.push(
            Mount::default()
                .set_destination(PathBuf::from(f.destination))
                .set_typ(Some("bind".into()))
                .set_source(Some(f.source.clone()))
                .set_options(Some(vec!["rbind".into(), "rprivate".into()]))
                .clone(),
        );
    }

    mounts.extend(p.mounts.iter().cloned());

    let mut spec = Spec::default();
    spec.set_version("1.0.2".into())
        .set_process(Some(process))
        .set_root(Some(root))
        .set_hostname(Some(p.hostname.clone()))
        .set_mounts(Some(mounts))
        .set_linux(Some(linux))
        .set_annotations(None)
        .set_hooks(None);
    Ok(spec)
}

fn ns(typ: LinuxNamespaceType, path: Option<PathBuf>) -> LinuxNamespace {
    LinuxNamespace::default()
        .set_typ(typ)
        .set_path(path)
        .clone()
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    Mount::default()
        .set_destination(PathBuf::from(dest))
        .set_typ(Some(typ.into()))
        .set_source(Some(PathBuf::from(source)))
        .set_options(Some(options.iter().map(|o| o.to_string()).collect()))
        .clone()
}

/// The mounts every container gets, as Docker gives them.
fn default_mounts(network: &NetworkNamespace) -> Vec<Mount> {
    let mut m = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
    ];
    // A fresh sysfs shows the container's own network devices; in the host's network
    // namespace the kernel refuses a new sysfs, so bind the host's, read-only.
    m.push(match network {
        NetworkNamespace::Host => mount(
            "/sys",
            "bind",
            "/sys",
            &["rbind", "nosuid", "noexec", "nodev", "ro"],
        ),
        _ => mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
    });
    m
}

fn masked_paths() -> Vec<String> {
    [
        "/proc/asound",
        "/proc/acpi",
        "/proc/interrupts",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/proc/scsi",
        "/sys/firmware",
        "/sys/devices/virtual/powercap",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

fn readonly_paths() -> Vec<String> {
    [
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

/// Reads the spec of a bundle.
pub fn load(bundle: &std::path::Path) -> Result<Spec, RuntimeError> {
    Spec::load(bundle.join("config.json")).map_err(|e| RuntimeError::Spec(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SpecParams {
        SpecParams {
            args: vec!["sh".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: ResolvedUser::default(),
            hostname: "abc".into(),
            rootfs: "/tmp/rootfs".into(),
            read_only: true,
            capabilities: LinuxCapabilities::default(),
            seccomp: None,
            network: NetworkNamespace::Path("/run/shoal/netns/x".into()),
            resources: LinuxResources::default(),
            cgroups_path: "/shoal/x".into(),
            mounts: Vec::new(),
            etc_files: vec![EtcFile {
                source: "/tmp/hosts".into(),
                destination: "/etc/hosts",
            }],
            no_new_privileges: false,
        }
    }

    #[test]
    fn spec_carries_what_was_asked() {
        let spec = build(&params()).unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["root"]["readonly"], true);
        assert_eq!(json["hostname"], "abc");
        let nss = json["linux"]["namespaces"].as_array().unwrap();
        assert!(
            nss.iter()
                .any(|n| n["type"] == "network" && n["path"] == "/run/shoal/netns/x")
        );
        assert!(nss.iter().any(|n| n["type"] == "pid"));
        let mounts = json["mounts"].as_array().unwrap();
        assert!(mounts.iter().any(|m| m["destination"] == "/etc/hosts"));
        assert!(
            mounts
                .iter()
                .any(|m| m["destination"] == "/sys" && m["type"] == "sysfs")
        );
    }

    #[test]
    fn host_network_binds_sys_and_has_no_net_namespace() {
        let mut p = params();
        p.network = NetworkNamespace::Host;
        let json = serde_json::to_value(build(&p).unwrap()).unwrap();
        let nss = json["linux"]["namespaces"].as_array().unwrap();
        assert!(!nss.iter().any(|n| n["type"] == "network"));
        let mounts = json["mounts"].as_array().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m["destination"] == "/sys" && m["type"] == "bind")
        );
    }
}
