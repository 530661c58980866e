//! The engine API's container messages to and from the engine's [`ContainerSpec`]: the
//! one place where the wire's strings (a port's protocol, a host address, a network name,
//! a stop timeout in seconds) become types, and a bad one becomes an error that names it.

use std::time::Duration;

use crate::engine as pb;
use crate::types::{
    ContainerResources, ContainerSpec, Mount, MountType, NetworkMode, PortMapping, PortProtocol,
    Propagation, TmpfsOptions, VolumeOptions,
};

/// A container message that does not make a spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConvertError(pub String);

impl PortProtocol {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
        }
    }
}

impl std::str::FromStr for PortProtocol {
    type Err = ConvertError;

    /// `tcp` (or empty) or `udp`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "tcp" => Ok(PortProtocol::Tcp),
            "udp" => Ok(PortProtocol::Udp),
            other => Err(ConvertError(format!(
                "invalid protocol \"{other}\": use tcp or udp"
            ))),
        }
    }
}

impl TryFrom<&pb::PortMapping> for PortMapping {
    type Error = ConvertError;

    fn try_from(p: &pb::PortMapping) -> Result<Self, Self::Error> {
        let port = |n: u32| u16::try_from(n).ok();
        let (Some(container_port), Some(host_port)) = (port(p.container_port), port(p.host_port))
        else {
            return Err(ConvertError(format!(
                "invalid port mapping {}:{}: ports are 1-65535",
                p.host_port, p.container_port
            )));
        };
        if container_port == 0 {
            return Err(ConvertError(format!(
                "invalid port mapping {}:0: the container's port is 1-65535",
                p.host_port
            )));
        }
        let protocol = p
            .protocol
            .parse()
            .map_err(|ConvertError(m)| ConvertError(format!("{m} (port {})", p.container_port)))?;
        let host_ip = match p.host_ip.as_str() {
            "" => None,
            ip => Some(ip.parse().map_err(|_| {
                ConvertError(format!(
                    "invalid host address \"{ip}\" for port {}: give an IP address, as 127.0.0.1",
                    p.host_port
                ))
            })?),
        };
        Ok(PortMapping {
            host_ip,
            host_port,
            container_port,
            protocol,
        })
    }
}

impl From<&PortMapping> for pb::PortMapping {
    fn from(p: &PortMapping) -> Self {
        pb::PortMapping {
            host_ip: p.host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            host_port: p.host_port.into(),
            container_port: p.container_port.into(),
            protocol: p.protocol.as_str().into(),
        }
    }
}

impl TryFrom<&pb::Mount> for Mount {
    type Error = ConvertError;

    fn try_from(m: &pb::Mount) -> Result<Self, Self::Error> {
        let kind = match m.r#type.as_str() {
            "" | "volume" => MountType::Volume,
            "bind" => MountType::Bind,
            "tmpfs" => MountType::Tmpfs,
            other => {
                return Err(ConvertError(format!(
                    "invalid mount type \"{other}\": use volume, bind or tmpfs"
                )));
            }
        };
        let propagation = match m.bind_propagation.as_str() {
            "" => None,
            p => Some(
                Propagation::ALL
                    .into_iter()
                    .find(|x| x.as_str() == p)
                    .ok_or_else(|| {
                        ConvertError(format!(
                            "invalid bind propagation \"{p}\": use private, rprivate, shared, rshared, slave or rslave"
                        ))
                    })?,
            ),
        };
        let out = Mount {
            kind,
            source: m.source.clone(),
            target: m.target.clone(),
            read_only: m.read_only,
            volume: VolumeOptions {
                driver: m.volume_driver.clone(),
                driver_opts: m.volume_options.clone().into_iter().collect(),
                labels: m.volume_labels.clone().into_iter().collect(),
                no_copy: m.volume_no_copy,
            },
            propagation,
            tmpfs: TmpfsOptions {
                size_bytes: u64::try_from(m.tmpfs_size_bytes).ok().filter(|n| *n > 0),
                mode: (m.tmpfs_mode != 0).then_some(m.tmpfs_mode),
                options: m.tmpfs_options.clone(),
            },
        };
        crate::mount::check(&out).map_err(|e| ConvertError(e.0))?;
        Ok(out)
    }
}

impl From<&Mount> for pb::Mount {
    fn from(m: &Mount) -> Self {
        pb::Mount {
            r#type: m.kind.as_str().into(),
            source: m.source.clone(),
            target: m.target.clone(),
            read_only: m.read_only,
            volume_driver: m.volume.driver.clone(),
            volume_options: m
                .volume
                .driver_opts
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            volume_labels: m
                .volume
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            volume_no_copy: m.volume.no_copy,
            bind_propagation: m
                .propagation
                .map(|p| p.as_str().to_string())
                .unwrap_or_default(),
            tmpfs_size_bytes: m.tmpfs.size_bytes.map_or(0, |n| n as i64),
            tmpfs_mode: m.tmpfs.mode.unwrap_or(0),
            tmpfs_options: m.tmpfs.options.clone(),
        }
    }
}

impl TryFrom<pb::ContainerSpec> for ContainerSpec {
    type Error = ConvertError;

    fn try_from(s: pb::ContainerSpec) -> Result<Self, Self::Error> {
        let stop_timeout = match s.stop_timeout_secs {
            None => None,
            Some(n) if n >= 0 => Some(Duration::from_secs(n as u64)),
            Some(n) => {
                return Err(ConvertError(format!(
                    "invalid stop timeout {n}: give a number of seconds, 0 or more"
                )));
            }
        };
        let r = s.resources.unwrap_or_default();
        let mounts = s
            .mounts
            .iter()
            .map(Mount::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(t) = duplicate_target(&mounts) {
            return Err(ConvertError(format!(
                "two mounts have the target {t}: give each target once"
            )));
        }
        Ok(ContainerSpec {
            mounts,
            ports: s
                .ports
                .iter()
                .map(PortMapping::try_from)
                .collect::<Result<_, _>>()?,
            image: s.image,
            name: s.name,
            cmd: s.cmd,
            entrypoint: s.entrypoint_set.then_some(s.entrypoint),
            env: s.env,
            workdir: s.workdir,
            user: s.user,
            hostname: s.hostname,
            resources: ContainerResources {
                memory_bytes: r.memory_bytes,
                nano_cpus: r.nano_cpus,
                pids_limit: r.pids_limit,
            },
            cap_add: s.cap_add,
            cap_drop: s.cap_drop,
            read_only: s.read_only,
            network: NetworkMode::parse(&s.network),
            auto_remove: s.auto_remove,
            stop_signal: s.stop_signal,
            stop_timeout,
            labels: s.labels.into_iter().collect(),
            security_opt: s.security_opt,
            attachments: Vec::new(),
        })
    }
}

impl From<&ContainerSpec> for pb::ContainerSpec {
    fn from(s: &ContainerSpec) -> Self {
        pb::ContainerSpec {
            image: s.image.clone(),
            name: s.name.clone(),
            cmd: s.cmd.clone(),
            entrypoint: s.entrypoint.clone().unwrap_or_default(),
            entrypoint_set: s.entrypoint.is_some(),
            env: s.env.clone(),
            workdir: s.workdir.clone(),
            user: s.user.clone(),
            hostname: s.hostname.clone(),
            resources: Some(pb::Resources {
                memory_bytes: s.resources.memory_bytes,
                nano_cpus: s.resources.nano_cpus,
                pids_limit: s.resources.pids_limit,
            }),
            cap_add: s.cap_add.clone(),
            cap_drop: s.cap_drop.clone(),
            read_only: s.read_only,
            ports: s.ports.iter().map(pb::PortMapping::from).collect(),
            network: s.network.as_str().to_string(),
            auto_remove: s.auto_remove,
            stop_signal: s.stop_signal.clone(),
            stop_timeout_secs: s.stop_timeout.map(|d| d.as_secs() as i64),
            labels: s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            security_opt: s.security_opt.clone(),
            mounts: s.mounts.iter().map(pb::Mount::from).collect(),
        }
    }
}

/// A target that two of `mounts` share, if any.
pub fn duplicate_target(mounts: &[Mount]) -> Option<&str> {
    let mut seen = std::collections::HashSet::new();
    mounts
        .iter()
        .map(|m| m.target.trim_end_matches('/'))
        .find(|t| !seen.insert(*t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> pb::ContainerSpec {
        pb::ContainerSpec {
            image: "busybox".into(),
            entrypoint_set: true,
            stop_timeout_secs: Some(3),
            network: "front".into(),
            ports: vec![pb::PortMapping {
                host_ip: "127.0.0.1".into(),
                host_port: 8080,
                container_port: 80,
                protocol: "udp".into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_message_becomes_a_typed_spec_and_back() {
        let spec = ContainerSpec::try_from(message()).expect("converts");
        assert_eq!(
            spec.entrypoint,
            Some(Vec::new()),
            "an empty entrypoint is set"
        );
        assert_eq!(spec.stop_timeout, Some(Duration::from_secs(3)));
        assert_eq!(spec.network, NetworkMode::Cluster("front".into()));
        assert_eq!(spec.ports[0].protocol, PortProtocol::Udp);
        assert_eq!(spec.ports[0].host_ip, Some([127, 0, 0, 1].into()));
        let back = pb::ContainerSpec::from(&spec);
        assert_eq!(ContainerSpec::try_from(back).expect("again"), spec);
    }

    #[test]
    fn mounts_convert_both_ways_and_bad_ones_are_named() {
        let mut m = message();
        m.mounts = vec![
            pb::Mount {
                source: "data".into(),
                target: "/data".into(),
                ..Default::default()
            },
            pb::Mount {
                r#type: "tmpfs".into(),
                target: "/t".into(),
                tmpfs_size_bytes: 1 << 20,
                ..Default::default()
            },
        ];
        let spec = ContainerSpec::try_from(m.clone()).expect("converts");
        assert_eq!(spec.mounts[0].kind, MountType::Volume);
        assert_eq!(spec.mounts[1].tmpfs.size_bytes, Some(1 << 20));
        let back = pb::ContainerSpec::from(&spec);
        assert_eq!(ContainerSpec::try_from(back).expect("again"), spec);
        let mut dup = m.clone();
        dup.mounts[1].target = "/data/".into();
        dup.mounts[1].r#type = "volume".into();
        dup.mounts[1].tmpfs_size_bytes = 0;
        assert!(
            ContainerSpec::try_from(dup)
                .expect_err("dup")
                .0
                .contains("two mounts")
        );
        let mut rel = m;
        rel.mounts[0].target = "data".into();
        assert!(
            ContainerSpec::try_from(rel)
                .expect_err("relative")
                .0
                .contains("absolute")
        );
    }

    #[test]
    fn no_timeout_is_the_default_and_bad_fields_are_named() {
        let spec = ContainerSpec::try_from(pb::ContainerSpec::default()).expect("converts");
        assert_eq!(spec.stop_timeout, None);
        assert_eq!(spec.entrypoint, None);
        assert_eq!(spec.network, NetworkMode::Bridge);
        let bad = |f: &dyn Fn(&mut pb::ContainerSpec)| {
            let mut m = message();
            f(&mut m);
            ContainerSpec::try_from(m).expect_err("refused").0
        };
        assert!(bad(&|m| m.ports[0].protocol = "sctp".into()).contains("use tcp or udp"));
        assert!(bad(&|m| m.ports[0].container_port = 70000).contains("1-65535"));
        assert!(bad(&|m| m.ports[0].container_port = 0).contains("1-65535"));
        assert!(bad(&|m| m.ports[0].host_ip = "here".into()).contains("host address"));
        assert!(bad(&|m| m.stop_timeout_secs = Some(-1)).contains("stop timeout"));
    }
}
