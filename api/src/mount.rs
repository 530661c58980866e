//! Mount flags as Docker's users write them, parsed and checked before anything is made:
//! `--mount type=volume,source=data,target=/data,readonly`, `-v NAME:/path[:ro]`,
//! `-v /host:/path[:ro]`, `-v /path` (an anonymous volume), `--tmpfs /path[:size=64m]`.
//! The cli, the compose reader and the Engine API all read mounts through here.

use std::collections::BTreeMap;

use crate::types::{Mount, MountType, Propagation, Task, TmpfsOptions};

/// A mount that cannot be made; the message names the key or part and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MountError(pub String);

fn bad<T>(m: String) -> Result<T, MountError> {
    Err(MountError(m))
}

/// Parses a size with an optional unit (b, k, m, g; `64m`, `1.5g`, `65536`) into bytes;
/// `what` names it in errors.
pub fn parse_bytes(what: &str, s: &str) -> Result<i64, String> {
    let invalid = || {
        format!(
            "invalid {what} \"{s}\": use a number with an optional unit b, k, m or g, for example 512m"
        )
    };
    let t = s.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix('b')
        .filter(|r| !r.is_empty() && r.ends_with(['k', 'm', 'g']))
        .unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('b') => (&t[..t.len() - 1], 1),
        Some(_) => (t, 1),
        None => return Err(invalid()),
    };
    let value: f64 = num.parse().map_err(|_| invalid())?;
    if !value.is_finite() || value <= 0.0 {
        return Err(invalid());
    }
    let bytes = value * mult as f64;
    if bytes > i64::MAX as f64 {
        return Err(invalid());
    }
    Ok(bytes as i64)
}

/// Whether `name` is a valid volume name (Docker's rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`).
pub fn valid_volume_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() >= 2
        && name.len() <= 255
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The templates a service's volume source may hold, expanded per task.
const TEMPLATES: [&str; 7] = [
    "{{.Service.Name}}",
    "{{.Service.ID}}",
    "{{.Task.Slot}}",
    "{{.Task.ID}}",
    "{{.Task.Name}}",
    "{{.Node.ID}}",
    "{{.Node.Hostname}}",
];

/// What a task's templates expand to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateContext {
    /// `{{.Service.Name}}`.
    pub service_name: String,
    /// `{{.Service.ID}}`.
    pub service_id: String,
    /// `{{.Task.Slot}}` (a global task's is its node's id).
    pub task_slot: String,
    /// `{{.Task.ID}}`.
    pub task_id: String,
    /// `{{.Task.Name}}` (`SERVICE.SLOT.TASKID`).
    pub task_name: String,
    /// `{{.Node.ID}}`.
    pub node_id: String,
    /// `{{.Node.Hostname}}`.
    pub node_hostname: String,
}

/// Expands the templates of a service's volume source for one task.
pub fn expand(source: &str, ctx: &TemplateContext) -> String {
    let values = [
        &ctx.service_name,
        &ctx.service_id,
        &ctx.task_slot,
        &ctx.task_id,
        &ctx.task_name,
        &ctx.node_id,
        &ctx.node_hostname,
    ];
    let mut out = source.to_string();
    for (t, v) in TEMPLATES.iter().zip(values) {
        out = out.replace(t, v);
    }
    out
}

impl TemplateContext {
    /// What `task`'s templates expand to on the node called `node_hostname`.
    pub fn for_task(task: &Task, node_hostname: &str) -> TemplateContext {
        TemplateContext {
            service_name: task.spec.name.clone(),
            service_id: task.service_id.clone(),
            // A global task has no slot: its node stands for it.
            task_slot: if task.slot > 0 {
                task.slot.to_string()
            } else {
                task.node_id.clone()
            },
            task_id: task.id.clone(),
            task_name: task.container_name(),
            node_id: task.node_id.clone(),
            node_hostname: node_hostname.to_string(),
        }
    }
}

/// `task`'s mounts on the node called `node_hostname`, its volumes' names expanded (each
/// slot gets a volume of its own where the name says so).
pub fn task_mounts(task: &Task, node_hostname: &str) -> Vec<Mount> {
    let ctx = TemplateContext::for_task(task, node_hostname);
    task.spec
        .mounts
        .iter()
        .map(|m| {
            let mut m = m.clone();
            if m.kind == MountType::Volume {
                m.source = expand(&m.source, &ctx);
            }
            m
        })
        .collect()
}

/// Whether a volume name is valid once its templates are expanded (with stand-ins).
fn valid_templated_name(name: &str) -> bool {
    let stand_in = TemplateContext {
        service_name: "svc".into(),
        service_id: "id".into(),
        task_slot: "1".into(),
        task_id: "id".into(),
        task_name: "svc.1.id".into(),
        node_id: "id".into(),
        node_hostname: "host".into(),
    };
    valid_volume_name(&expand(name, &stand_in)) && !expand(name, &stand_in).contains("{{")
}

/// Checks a mount: an absolute target that is not `/`, a source fit for its type.
pub fn check(m: &Mount) -> Result<(), MountError> {
    if !m.target.starts_with('/') {
        return bad(format!(
            "invalid mount target \"{}\": it must be an absolute path in the container, such as /data",
            m.target
        ));
    }
    if m.target == "/" {
        return bad(
            "invalid mount target \"/\": a mount cannot replace the container's root".into(),
        );
    }
    match m.kind {
        MountType::Bind => {
            if m.source.is_empty() {
                return bad(format!(
                    "the bind mount on {} needs a source: the host path to mount (source=/host/path)",
                    m.target
                ));
            }
            if !m.source.starts_with('/') {
                return bad(format!(
                    "invalid bind source \"{}\": give an absolute host path (a name without / is a volume: type=volume)",
                    m.source
                ));
            }
        }
        MountType::Volume => {
            if !m.source.is_empty() && !valid_templated_name(&m.source) {
                return bad(format!(
                    "invalid volume name \"{}\": use letters, digits, '_', '.' and '-', starting with a letter or digit (at least 2)",
                    m.source
                ));
            }
        }
        MountType::Tmpfs => {
            if !m.source.is_empty() {
                return bad(format!(
                    "a tmpfs mount takes no source (got \"{}\"): drop source=",
                    m.source
                ));
            }
        }
    }
    if m.kind != MountType::Bind && m.propagation.is_some() {
        return bad("bind-propagation is for bind mounts (type=bind)".into());
    }
    if m.kind != MountType::Volume && (m.volume != Default::default()) {
        return bad(format!(
            "volume options (volume-driver, volume-opt, volume-label, volume-nocopy) are for volumes, not for a {} mount",
            m.kind.as_str()
        ));
    }
    if m.kind != MountType::Tmpfs && m.tmpfs != TmpfsOptions::default() {
        return bad(format!(
            "tmpfs-size and tmpfs-mode are for tmpfs mounts, not for a {} mount",
            m.kind.as_str()
        ));
    }
    Ok(())
}

fn parse_bool(key: &str, v: &str) -> Result<bool, MountError> {
    match v.to_ascii_lowercase().as_str() {
        "" | "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => bad(format!("invalid {key}={v}: use true or false")),
    }
}

fn parse_pair(key: &str, v: &str) -> Result<(String, String), MountError> {
    match v.split_once('=') {
        Some((k, val)) if !k.is_empty() => Ok((k.to_string(), val.to_string())),
        _ => bad(format!("invalid {key}={v}: use {key}=KEY=VALUE")),
    }
}

fn parse_mode(v: &str) -> Result<u32, MountError> {
    u32::from_str_radix(v, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| {
            MountError(format!(
                "invalid tmpfs-mode={v}: give octal permission bits, such as 1777"
            ))
        })
}

fn parse_propagation(v: &str) -> Result<Propagation, MountError> {
    Propagation::ALL
        .into_iter()
        .find(|p| p.as_str() == v)
        .ok_or_else(|| {
            MountError(format!(
                "invalid bind-propagation={v}: use private, rprivate, shared, rshared, slave or rslave"
            ))
        })
}

/// Parses `--mount`: comma-separated `key=value` (the keys Docker takes).
pub fn parse_mount(spec: &str) -> Result<Mount, MountError> {
    let mut m = Mount::default();
    let mut kind: Option<MountType> = None;
    let mut labels = BTreeMap::new();
    let mut opts = BTreeMap::new();
    for field in spec.split(',') {
        let field = field.trim();
        if field.is_empty() {
            continue;
        }
        let (key, value) = field.split_once('=').unwrap_or((field, ""));
        let key = key.to_ascii_lowercase();
        let needs_value = |v: &str| -> Result<String, MountError> {
            if v.is_empty() {
                bad(format!("--mount {key} needs a value: {key}=..."))
            } else {
                Ok(v.to_string())
            }
        };
        match key.as_str() {
            "type" => {
                kind = Some(match value {
                    "volume" => MountType::Volume,
                    "bind" => MountType::Bind,
                    "tmpfs" => MountType::Tmpfs,
                    other => {
                        return bad(format!(
                            "invalid --mount type={other}: use volume, bind or tmpfs"
                        ));
                    }
                })
            }
            "source" | "src" => m.source = needs_value(value)?,
            "target" | "destination" | "dst" => m.target = needs_value(value)?,
            "readonly" | "ro" => m.read_only = parse_bool(&key, value)?,
            "volume-driver" => m.volume.driver = needs_value(value)?,
            "volume-opt" => {
                let (k, v) = parse_pair(&key, value)?;
                opts.insert(k, v);
            }
            "volume-label" => {
                let (k, v) = parse_pair(&key, value)?;
                labels.insert(k, v);
            }
            "volume-nocopy" => m.volume.no_copy = parse_bool(&key, value)?,
            "tmpfs-size" => {
                let n = parse_bytes("tmpfs-size", value).map_err(MountError)?;
                m.tmpfs.size_bytes = Some(n as u64);
            }
            "tmpfs-mode" => m.tmpfs.mode = Some(parse_mode(value)?),
            "bind-propagation" => m.propagation = Some(parse_propagation(value)?),
            // Docker for Mac's hint; meaningless on Linux.
            "consistency" => {}
            other => {
                return bad(format!(
                    "unknown --mount key \"{other}\": the keys are type, source, target, readonly, volume-driver, volume-opt, volume-label, volume-nocopy, tmpfs-size, tmpfs-mode and bind-propagation"
                ));
            }
        }
    }
    m.kind = kind.unwrap_or(MountType::Volume);
    m.volume.driver_opts = opts;
    m.volume.labels = labels;
    if m.target.is_empty() {
        return bad(format!(
            "--mount \"{spec}\" needs a target: target=/path/in/container"
        ));
    }
    check(&m)?;
    Ok(m)
}

/// Whether the last part of a `-v` is options rather than a path.
fn looks_like_options(s: &str) -> bool {
    s.split(',').all(|o| {
        matches!(o, "ro" | "rw" | "nocopy" | "z" | "Z")
            || Propagation::ALL.iter().any(|p| p.as_str() == o)
    })
}

/// Parses `-v`: `NAME:/path[:opts]` (a volume), `/host/path:/path[:opts]` (a bind mount)
/// or `/path` (an anonymous volume). The options are `ro`, `rw`, `nocopy` and a
/// propagation type, comma-separated.
pub fn parse_volume(spec: &str) -> Result<Mount, MountError> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, options) = match parts.as_slice() {
        [target] => ("", *target, ""),
        // `/path:ro`: an anonymous volume with options.
        [target, options] if target.starts_with('/') && looks_like_options(options) => {
            ("", *target, *options)
        }
        [source, target] => (*source, *target, ""),
        [source, target, options] => (*source, *target, *options),
        _ => {
            return bad(format!(
                "invalid -v \"{spec}\": use NAME:/path, /host/path:/path or /path, with :ro or :rw after"
            ));
        }
    };
    let mut m = Mount {
        kind: if source.starts_with('/') {
            MountType::Bind
        } else {
            MountType::Volume
        },
        source: source.to_string(),
        target: target.to_string(),
        ..Default::default()
    };
    if !source.is_empty() && !source.starts_with('/') && source.contains('/') {
        return bad(format!(
            "invalid -v source \"{source}\": a host path must be absolute (such as {}), a volume name has no '/'",
            std::path::Path::new("/").join(source).display()
        ));
    }
    for opt in options.split(',').filter(|o| !o.is_empty()) {
        match opt {
            "ro" => m.read_only = true,
            "rw" => m.read_only = false,
            "nocopy" if m.kind == MountType::Volume => m.volume.no_copy = true,
            // SELinux relabelling: nothing to do on a host without SELinux.
            "z" | "Z" => {}
            other => match parse_propagation(other) {
                Ok(p) if m.kind == MountType::Bind => m.propagation = Some(p),
                _ => {
                    return bad(format!(
                        "invalid -v option \"{other}\" in \"{spec}\": use ro, rw, nocopy (volumes) or a propagation type (bind mounts)"
                    ));
                }
            },
        }
    }
    check(&m)?;
    Ok(m)
}

/// Parses `--tmpfs /path[:options]`: `size=64m`, `mode=1777` and other mount options.
pub fn parse_tmpfs(spec: &str) -> Result<Mount, MountError> {
    let (target, options) = spec.split_once(':').unwrap_or((spec, ""));
    let mut m = Mount {
        kind: MountType::Tmpfs,
        target: target.to_string(),
        ..Default::default()
    };
    for opt in options.split(',').filter(|o| !o.is_empty()) {
        match opt.split_once('=') {
            Some(("size", v)) => {
                let n = parse_bytes("--tmpfs size", v).map_err(MountError)?;
                m.tmpfs.size_bytes = Some(n as u64);
            }
            Some(("mode", v)) => m.tmpfs.mode = Some(parse_mode(v)?),
            _ if opt == "ro" => m.read_only = true,
            _ if matches!(
                opt,
                "rw" | "noexec"
                    | "exec"
                    | "nosuid"
                    | "suid"
                    | "nodev"
                    | "dev"
                    | "noatime"
                    | "relatime"
                    | "strictatime"
            ) =>
            {
                m.tmpfs.options.push(opt.to_string())
            }
            _ => {
                return bad(format!(
                    "invalid --tmpfs option \"{opt}\": use size=64m, mode=1777, ro, noexec, nosuid, nodev"
                ));
            }
        }
    }
    check(&m)?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<Mount, MountError>) -> String {
        r.expect_err("refused").0
    }

    #[test]
    fn mount_flags_become_mounts() {
        let m = parse_mount("type=volume,source=data,target=/data,readonly,volume-opt=type=tmpfs,volume-label=a=b,volume-nocopy")
            .expect("parses");
        assert_eq!(m.kind, MountType::Volume);
        assert_eq!(
            (m.source.as_str(), m.target.as_str(), m.read_only),
            ("data", "/data", true)
        );
        assert_eq!(m.volume.driver_opts["type"], "tmpfs");
        assert_eq!(m.volume.labels["a"], "b");
        assert!(m.volume.no_copy);
        let b = parse_mount("type=bind,src=/srv,dst=/srv,bind-propagation=rslave,ro=false")
            .expect("parses");
        assert_eq!(
            (b.kind, b.propagation, b.read_only),
            (MountType::Bind, Some(Propagation::Rslave), false)
        );
        let t = parse_mount("type=tmpfs,target=/scratch,tmpfs-size=64m,tmpfs-mode=1770")
            .expect("parses");
        assert_eq!(
            (t.tmpfs.size_bytes, t.tmpfs.mode),
            (Some(64 << 20), Some(0o1770))
        );
        let anon = parse_mount("target=/cache").expect("parses");
        assert_eq!((anon.kind, anon.source.as_str()), (MountType::Volume, ""));
    }

    #[test]
    fn bad_mount_flags_name_the_key_and_the_fix() {
        assert!(
            err(parse_mount("type=volume,target=/d,colour=red"))
                .contains("unknown --mount key \"colour\"")
        );
        assert!(err(parse_mount("type=bind,target=/d")).contains("needs a source"));
        assert!(err(parse_mount("type=bind,source=srv,target=/d")).contains("absolute host path"));
        assert!(err(parse_mount("type=volume,source=data,target=data")).contains("absolute path"));
        assert!(err(parse_mount("source=data")).contains("needs a target"));
        assert!(err(parse_mount("type=tmpfs,source=x,target=/t")).contains("takes no source"));
        assert!(err(parse_mount("type=floppy,target=/t")).contains("use volume, bind or tmpfs"));
        assert!(
            err(parse_mount("type=volume,target=/t,tmpfs-size=1m"))
                .contains("tmpfs-size and tmpfs-mode are for tmpfs")
        );
        assert!(
            err(parse_mount("type=bind,source=/a,target=/t,volume-nocopy"))
                .contains("are for volumes")
        );
        assert!(
            err(parse_mount("type=volume,source=-x,target=/t")).contains("invalid volume name")
        );
        assert!(err(parse_mount("type=tmpfs,target=/t,tmpfs-mode=999")).contains("octal"));
        assert!(err(parse_mount("type=volume,target=/")).contains("cannot replace"));
    }

    #[test]
    fn dash_v_reads_names_paths_and_anonymous_volumes() {
        let v = parse_volume("data:/var/lib/db:ro").expect("parses");
        assert_eq!(
            (v.kind, v.source.as_str(), v.target.as_str(), v.read_only),
            (MountType::Volume, "data", "/var/lib/db", true)
        );
        let b = parse_volume("/srv/www:/www:ro,rslave").expect("parses");
        assert_eq!(
            (b.kind, b.propagation),
            (MountType::Bind, Some(Propagation::Rslave))
        );
        let a = parse_volume("/cache").expect("parses");
        assert_eq!(
            (a.kind, a.source.as_str(), a.target.as_str()),
            (MountType::Volume, "", "/cache")
        );
        let n = parse_volume("data:/d:nocopy").expect("parses");
        assert!(n.volume.no_copy);
        assert!(err(parse_volume("relative/path:/d")).contains("must be absolute"));
        assert!(err(parse_volume("data:/d:sideways")).contains("invalid -v option"));
        assert!(err(parse_volume("a:b:c:d")).contains("invalid -v"));
        assert!(err(parse_volume("data:rel")).contains("absolute path"));
    }

    #[test]
    fn tmpfs_flags_take_size_mode_and_options() {
        let t = parse_tmpfs("/run:size=1m,mode=755,noexec").expect("parses");
        assert_eq!(
            (t.tmpfs.size_bytes, t.tmpfs.mode),
            (Some(1 << 20), Some(0o755))
        );
        assert_eq!(t.tmpfs.options, ["noexec"]);
        assert!(err(parse_tmpfs("/run:size=lots")).contains("--tmpfs size"));
        assert!(err(parse_tmpfs("/run:mand")).contains("invalid --tmpfs option"));
    }

    #[test]
    fn templates_expand_per_task_and_are_valid_names() {
        let m =
            parse_mount("source=db-{{.Task.Slot}},target=/data").expect("a templated name is fine");
        let ctx = TemplateContext {
            service_name: "db".into(),
            task_slot: "3".into(),
            node_hostname: "h1".into(),
            ..Default::default()
        };
        assert_eq!(expand(&m.source, &ctx), "db-3");
        assert_eq!(
            expand("{{.Service.Name}}-{{.Node.Hostname}}", &ctx),
            "db-h1"
        );
        assert!(
            err(parse_mount("source={{.Task.Nope}},target=/d")).contains("invalid volume name")
        );
    }

    #[test]
    fn sizes_take_units() {
        assert_eq!(parse_bytes("x", "64m"), Ok(64 << 20));
        assert_eq!(parse_bytes("x", "1.5k"), Ok(1536));
        assert_eq!(parse_bytes("x", "100"), Ok(100));
        assert!(parse_bytes("x", "0").is_err());
        assert!(parse_bytes("x", "m").is_err());
    }
}
