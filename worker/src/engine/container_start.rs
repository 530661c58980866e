//! `start`: mounts the root filesystem, connects the network, writes the OCI bundle and
//! hands it to a shim. Any failure undoes every step, so a failed start leaves no mount,
//! namespace, link or cgroup behind.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
};
use shoal_api::types::{ContainerSpec, NetworkMode};
use shoal_netoverlay::bridge::PublishedPort;

use super::record::{ContainerRecord, State};
use super::{Engine, EngineError, now_nanos, rootfs};
use crate::runtime::Runtime;
use crate::runtime::spec::{EtcFile, NetworkNamespace, SpecParams};
use crate::shim::{ShimConfig, StartReport};

/// What a start made, to undo on failure and on exit.
#[derive(Default)]
struct Made {
    mounted: Option<PathBuf>,
    netns: Option<PathBuf>,
    attached: bool,
    /// The managers gave a standalone container an address on a cluster network.
    cluster_attached: bool,
}

impl Engine {
    /// Starts a container through an owned handle (for tasks spawned from it).
    pub async fn start_arc(self: Arc<Self>, key: &str) -> Result<(), EngineError> {
        self.start(key).await
    }

    /// Starts a created (or exited) container.
    pub async fn start(self: &Arc<Self>, key: &str) -> Result<(), EngineError> {
        let entry = self.find(key)?;
        let _op = entry.op.lock().await;
        let record = entry.snapshot();
        if record.is_running() {
            return Ok(());
        }
        if record.removing {
            return Err(EngineError::Conflict(format!(
                "container {} is being removed",
                record.name
            )));
        }
        let mut made = Made::default();
        match self.start_inner(&record, &mut made).await {
            Ok(report) => {
                self.update(&entry, |r| {
                    r.state = State::Running {
                        pid: report.pid,
                        shim_pid: report.shim_pid,
                        started_unix_nanos: now_nanos(),
                    }
                })?;
                self.watch_shim(entry.clone(), report.shim_pid);
                Ok(())
            }
            Err(e) => {
                if made.cluster_attached
                    && !self.cluster.has(&record.id).await
                    && let Some(a) = self.cluster_link()
                {
                    a.detach(record.id.clone()).await;
                }
                self.release(&record.id, made.attached).await;
                let exit_code = match &e {
                    EngineError::StartFailed { exit_code, .. } => *exit_code,
                    _ => 125,
                };
                let message = e.to_string();
                self.update(&entry, |r| {
                    r.state = State::Exited {
                        exit_code,
                        started_unix_nanos: 0,
                        finished_unix_nanos: now_nanos(),
                        oom_killed: false,
                        error: message,
                    };
                    r.ip_address.clear();
                })?;
                if record.spec.auto_remove {
                    drop(_op);
                    let _ = self.remove_with_volumes(&record.id, true, true).await;
                }
                Err(e)
            }
        }
    }

    async fn start_inner(
        &self,
        record: &ContainerRecord,
        made: &mut Made,
    ) -> Result<StartReport, EngineError> {
        let paths = self.paths(&record.id);
        let images = self.images.clone();
        let image_id = record.image_id.clone();
        let (layers, config) = tokio::task::spawn_blocking(move || {
            let image = images.resolve(&image_id)?;
            Ok::<_, crate::image::ImageError>((images.layer_dirs(&image)?, images.config(&image)?))
        })
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))?
        .map_err(|e| EngineError::NotFound(e.to_string()))?;

        // Root filesystem.
        let rootfs_dir = paths.rootfs();
        std::fs::create_dir_all(&paths.state_dir)
            .map_err(|e| EngineError::Internal(format!("creating state dir: {e}")))?;
        rootfs::mount_overlay(&layers, &paths.upper(), &paths.work(), &rootfs_dir)?;
        made.mounted = Some(rootfs_dir.clone());

        let spec = &record.spec;
        let user = crate::runtime::user::resolve(&rootfs_dir, &spec.user)?;
        let image_cfg = config.config().clone().unwrap_or_default();
        let cwd = if !spec.workdir.is_empty() {
            spec.workdir.clone()
        } else {
            image_cfg
                .working_dir()
                .clone()
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "/".into())
        };
        let cwd_on_host = crate::runtime::fsutil::secure_join(&rootfs_dir, Path::new(&cwd));
        if !cwd_on_host.exists() {
            std::fs::create_dir_all(&cwd_on_host).map_err(|e| {
                EngineError::Internal(format!("creating working directory {cwd}: {e}"))
            })?;
        }
        let hostname = if spec.hostname.is_empty() {
            record.id[..12].to_string()
        } else {
            spec.hostname.clone()
        };
        let env = environment(
            image_cfg.env().as_deref().unwrap_or_default(),
            &spec.env,
            &hostname,
            user.home.as_deref(),
        );

        // Network.
        let network = match spec.network {
            NetworkMode::Host => NetworkNamespace::Host,
            NetworkMode::None => NetworkNamespace::New,
            NetworkMode::Bridge | NetworkMode::Cluster(_) => {
                let path = self.config.run_root.join("netns").join(&record.id);
                shoal_netoverlay::netns::create(&path).map_err(|e| {
                    EngineError::Internal(format!("creating network namespace: {e}"))
                })?;
                made.netns = Some(path.clone());
                NetworkNamespace::Path(path)
            }
        };
        let mut ip = String::new();
        let mut joins = spec.attachments.clone();
        if let NetworkMode::Cluster(name) = &spec.network {
            // A standalone container on an attachable cluster network.
            let attacher = self
                .cluster_link()
                .ok_or_else(|| EngineError::StartFailed {
                    message: format!(
                        "network {name} is a cluster network and this node is not in a cluster"
                    ),
                    exit_code: 125,
                })?;
            let a = attacher
                .attach(name.clone(), record.id.clone(), record.name.clone())
                .await
                .map_err(|message| EngineError::StartFailed {
                    message,
                    exit_code: 125,
                })?;
            made.cluster_attached = true;
            joins.push(a);
        }
        // Beside cluster networks, the bridge gives the way out (and host-mode ports),
        // unless every network is internal.
        let bridge = joins.is_empty() || joins.iter().any(|a| !a.network.spec.internal);
        if let NetworkNamespace::Path(path) = &network
            && bridge
        {
            let ports = published_ports(spec);
            let endpoint = self
                .network
                .attach(&record.id, path, &ports)
                .await
                .map_err(|e| EngineError::StartFailed {
                    message: e.to_string(),
                    exit_code: 125,
                })?;
            made.attached = true;
            ip = endpoint.ip.to_string();
        }
        if let NetworkNamespace::Path(path) = &network
            && !joins.is_empty()
        {
            self.cluster
                .attach(&record.id, path, &joins, usize::from(bridge), !bridge)
                .await
                .map_err(|e| EngineError::StartFailed {
                    message: e.to_string(),
                    exit_code: 125,
                })?;
            if ip.is_empty() {
                ip = joins[0]
                    .addr
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .to_string();
            }
        }
        let resolv = (!joins.is_empty()).then(|| self.cluster.resolv_conf().to_string());
        let etc_files = write_etc_files(&paths.state_dir, &hostname, &ip, &network, resolv)?;

        // Volumes, bind mounts, tmpfs.
        let mounts = self.prepare_mounts(&record.id, spec, &rootfs_dir).await?;

        // Security.
        let caps = crate::security::caps::resolve(&spec.cap_add, &spec.cap_drop)
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let unconfined = crate::security::seccomp::unconfined(&spec.security_opt)
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let seccomp = (!unconfined).then(|| crate::security::seccomp::default_profile(&caps));
        let params = SpecParams {
            args: record.command.clone(),
            env,
            cwd,
            capabilities: crate::security::caps::linux_capabilities(&caps, user.uid == 0),
            user,
            hostname,
            rootfs: rootfs_dir,
            read_only: spec.read_only,
            seccomp,
            network,
            resources: resources(spec)?,
            cgroups_path: format!("/{}/{}", self.config.cgroup_parent, record.id),
            etc_files,
            mounts,
            no_new_privileges: spec.security_opt.iter().any(|o| {
                o == "no-new-privileges"
                    || o == "no-new-privileges:true"
                    || o == "no-new-privileges=true"
            }),
        };
        let oci = crate::runtime::spec::build(&params)?;
        oci.save(paths.dir.join("config.json"))
            .map_err(|e| EngineError::Internal(format!("writing config.json: {e}")))?;

        // Shim.
        let private_cgroup2_mount = matches!(&record.runtime, Runtime::External { name, .. } if name.contains("crun"))
            && hybrid_cgroups();
        let shim = ShimConfig {
            id: record.id.clone(),
            bundle: paths.dir.clone(),
            runtime: record.runtime.clone(),
            runtime_root: self.config.run_root.join("runtime"),
            log_path: paths.log(),
            state_dir: paths.state_dir.clone(),
            cgroup_path: format!("{}/{}", self.config.cgroup_parent, record.id),
            private_cgroup2_mount,
        };
        let _ = std::fs::remove_file(paths.state_dir.join(crate::shim::ExitRecord::FILE));
        // The log exists before the start returns: a reader that comes at once (`container
        // run` in the foreground) finds it even when the shim opens it later.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(paths.log())
            .map_err(|e| EngineError::Internal(format!("creating the log: {e}")))?;
        shim.save()
            .map_err(|e| EngineError::Internal(format!("writing shim config: {e}")))?;
        let output = tokio::process::Command::new(&self.config.self_exe)
            .arg(crate::shim::SUBCOMMAND)
            .arg(&paths.state_dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| EngineError::Internal(format!("starting the shim: {e}")))?;
        let report: StartReport = serde_json::from_slice(
            output
                .stdout
                .split(|b| *b == b'\n')
                .next()
                .unwrap_or_default(),
        )
        .map_err(|_| {
            EngineError::Internal(format!(
                "the shim gave no start report; see {}",
                paths.state_dir.join("shim.log").display()
            ))
        })?;
        if !report.ok {
            return Err(EngineError::StartFailed {
                message: report.error,
                exit_code: report.exit_code,
            });
        }
        let entry_ip = ip;
        if let Ok(entry) = self.find(&record.id) {
            entry
                .record
                .lock()
                .expect("record lock poisoned")
                .ip_address = entry_ip;
        }
        Ok(report)
    }

    /// Undoes what a start made: network, namespace, root mount. Safe to call twice.
    pub(crate) async fn release(&self, id: &str, detach: bool) {
        let standalone = self
            .find(id)
            .is_ok_and(|e| matches!(e.snapshot().spec.network, NetworkMode::Cluster(_)));
        if standalone
            && self.cluster.has(id).await
            && let Some(a) = self.cluster_link()
        {
            // Only a standalone container's attachment is the engine's to give back
            // (tasks' addresses go with their tasks).
            a.detach(id.to_string()).await;
        }
        self.cluster.detach(id).await;
        if detach && let Err(e) = self.network.detach(id).await {
            tracing::warn!(container = id, "detaching network: {e}");
        }
        let netns = self.config.run_root.join("netns").join(id);
        if netns.exists()
            && let Err(e) = shoal_netoverlay::netns::remove(&netns)
        {
            tracing::warn!(container = id, "removing network namespace: {e}");
        }
        if let Err(e) = rootfs::unmount(&self.paths(id).rootfs()) {
            tracing::warn!(container = id, "{e}");
        }
        if let Ok(e) = self.find(id) {
            self.release_volumes(id, &e.snapshot().spec).await;
        }
    }
}

/// Whether cgroup v1 controllers are mounted beside a v2 mount (crun refuses that).
fn hybrid_cgroups() -> bool {
    crate::cgroups::Layout::detect().is_ok_and(|l| l.is_hybrid())
}

/// The container's environment: the image's, then the user's (overriding by name), then
/// HOSTNAME, HOME and PATH when missing.
fn environment(
    image: &[String],
    user: &[String],
    hostname: &str,
    home: Option<&str>,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let key = |kv: &str| kv.split('=').next().unwrap_or_default().to_string();
    for kv in image.iter().chain(user.iter()) {
        let k = key(kv);
        out.retain(|e| key(e) != k);
        out.push(kv.clone());
    }
    let has = |out: &Vec<String>, k: &str| out.iter().any(|e| key(e) == k);
    if !has(&out, "PATH") {
        out.insert(
            0,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    if !has(&out, "HOSTNAME") {
        out.push(format!("HOSTNAME={hostname}"));
    }
    if !has(&out, "HOME") {
        out.push(format!("HOME={}", home.unwrap_or("/root")));
    }
    out
}

fn published_ports(spec: &ContainerSpec) -> Vec<PublishedPort> {
    spec.ports
        .iter()
        .map(|p| PublishedPort {
            host_ip: p.host_ip,
            host_port: p.host_port,
            container_port: p.container_port,
            protocol: p.protocol,
        })
        .collect()
}

/// Cgroup limits from the user's resources.
fn resources(spec: &ContainerSpec) -> Result<LinuxResources, EngineError> {
    let bad = |e: oci_spec::OciSpecError| EngineError::Internal(e.to_string());
    let r = spec.resources;
    let mut b = LinuxResourcesBuilder::default();
    if r.memory_bytes > 0 {
        b = b.memory(
            LinuxMemoryBuilder::default()
                .limit(r.memory_bytes)
                .swap(r.memory_bytes * 2)
                .build()
                .map_err(bad)?,
        );
    }
    if let Some((quota, period)) = crate::cgroups::nano_cpus_to_quota(r.nano_cpus) {
        b = b.cpu(
            LinuxCpuBuilder::default()
                .period(period)
                .quota(quota)
                .build()
                .map_err(bad)?,
        );
    }
    if r.pids_limit > 0 {
        b = b.pids(
            LinuxPidsBuilder::default()
                .limit(r.pids_limit)
                .build()
                .map_err(bad)?,
        );
    }
    b.build().map_err(bad)
}

/// Writes `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf` for the container.
fn write_etc_files(
    dir: &Path,
    hostname: &str,
    ip: &str,
    network: &NetworkNamespace,
    cluster_resolv: Option<String>,
) -> Result<Vec<EtcFile>, EngineError> {
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text)
            .map_err(|e| EngineError::Internal(format!("writing {}: {e}", p.display())))?;
        Ok::<_, EngineError>(p)
    };
    let mut hosts = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    if !ip.is_empty() {
        hosts.push_str(&format!("{ip}\t{hostname}\n"));
    }
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let resolv = match network {
        // On cluster networks: the embedded DNS server, which forwards the rest.
        NetworkNamespace::Path(_) if cluster_resolv.is_some() => cluster_resolv.unwrap_or_default(),
        // A loopback resolver on the host is unreachable from the container's namespace.
        NetworkNamespace::Path(_) | NetworkNamespace::New => host_resolv
            .lines()
            .filter(|l| {
                !(l.trim_start().starts_with("nameserver")
                    && (l.contains(" 127.") || l.contains(" ::1")))
            })
            .map(|l| format!("{l}\n"))
            .collect(),
        NetworkNamespace::Host => host_resolv,
    };
    let mut files = vec![
        EtcFile {
            source: write("hostname", format!("{hostname}\n"))?,
            destination: "/etc/hostname",
        },
        EtcFile {
            source: write("resolv.conf", resolv)?,
            destination: "/etc/resolv.conf",
        },
    ];
    if !matches!(network, NetworkNamespace::Host) {
        files.push(EtcFile {
            source: write("hosts", hosts)?,
            destination: "/etc/hosts",
        });
    } else {
        files.push(EtcFile {
            source: "/etc/hosts".into(),
            destination: "/etc/hosts",
        });
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_merges_by_name() {
        let env = environment(
            &["PATH=/bin".into(), "A=1".into()],
            &["A=2".into(), "B=3".into()],
            "h",
            None,
        );
        assert_eq!(
            env,
            vec!["PATH=/bin", "A=2", "B=3", "HOSTNAME=h", "HOME=/root"]
        );
    }

    #[test]
    fn cpus_become_a_quota() {
        let spec = ContainerSpec {
            resources: shoal_api::types::ContainerResources {
                nano_cpus: 1_500_000_000,
                memory_bytes: 64 << 20,
                pids_limit: 10,
            },
            ..Default::default()
        };
        let r = resources(&spec).unwrap();
        let cpu = r.cpu().clone().unwrap();
        assert_eq!(cpu.quota(), Some(150_000));
        assert_eq!(cpu.period(), Some(100_000));
        assert_eq!(r.memory().unwrap().limit(), Some(64 << 20));
        assert_eq!(r.pids().unwrap().limit(), 10);
    }
}
