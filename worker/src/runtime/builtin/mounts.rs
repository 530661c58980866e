//! The container's filesystem, set up inside its new mount namespace: the spec's mounts,
//! a minimal `/dev`, `pivot_root`, masked and read-only paths. Runs in the container's
//! init process before exec (single-threaded, after fork).

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use oci_spec::runtime::Mount;

use crate::runtime::RuntimeError;
use crate::runtime::fsutil::secure_join;

/// A mount's options split the way mount(2) wants them.
#[derive(Debug, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for the mount itself.
    pub flags: MsFlags,
    /// Propagation to apply after mounting (`rprivate`, `rslave`, ...).
    pub propagation: MsFlags,
    /// Filesystem-specific options (`mode=755,size=65536k`).
    pub data: String,
    /// `bind` or `rbind`.
    pub bind: bool,
}

/// Parses the options of an OCI mount.
pub fn parse_options(options: &[String]) -> MountOptions {
    let mut o = MountOptions {
        flags: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: String::new(),
        bind: false,
    };
    let mut data = Vec::new();
    for opt in options {
        let (set, clear) = match opt.as_str() {
            "ro" | "rdonly" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "bind" => {
                o.bind = true;
                (MsFlags::MS_BIND, MsFlags::empty())
            }
            "rbind" => {
                o.bind = true;
                (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty())
            }
            "private" => {
                o.propagation = MsFlags::MS_PRIVATE;
                continue;
            }
            "rprivate" => {
                o.propagation = MsFlags::MS_PRIVATE | MsFlags::MS_REC;
                continue;
            }
            "slave" => {
                o.propagation = MsFlags::MS_SLAVE;
                continue;
            }
            "rslave" => {
                o.propagation = MsFlags::MS_SLAVE | MsFlags::MS_REC;
                continue;
            }
            "shared" => {
                o.propagation = MsFlags::MS_SHARED;
                continue;
            }
            "rshared" => {
                o.propagation = MsFlags::MS_SHARED | MsFlags::MS_REC;
                continue;
            }
            other => {
                data.push(other.to_string());
                continue;
            }
        };
        o.flags.insert(set);
        o.flags.remove(clear);
    }
    o.data = data.join(",");
    o
}

fn sys(what: String) -> impl FnOnce(nix::Error) -> RuntimeError {
    move |e| RuntimeError::sys(what, e)
}

/// Makes every mount of the new namespace a slave of the host's, so nothing the container
/// mounts shows on the host while host unmounts still reach the container, then makes the
/// root filesystem a mount point of its own.
pub fn prepare_root(rootfs: &Path) -> Result<(), RuntimeError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys("making mounts private".into()))?;
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys(format!("bind-mounting root {}", rootfs.display())))?;
    Ok(())
}

/// Mounts one of the spec's mounts under `rootfs`.
pub fn mount_one(rootfs: &Path, m: &Mount) -> Result<(), RuntimeError> {
    let dest = secure_join(rootfs, m.destination());
    let opts = parse_options(m.options().as_deref().unwrap_or_default());
    let mut typ = m.typ().clone().unwrap_or_default();
    if typ == "cgroup" || typ == "cgroup2" {
        // A cgroup v2 host gets its cgroup2 filesystem; on a v1 or hybrid host the
        // container sees an empty, read-only /sys/fs/cgroup (as a rootless runc does).
        if host_is_cgroup2() {
            typ = "cgroup2".into();
        } else {
            std::fs::create_dir_all(&dest)
                .map_err(|e| RuntimeError::io(format!("creating {}", dest.display()), e))?;
            return mount(
                Some("tmpfs"),
                &dest,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("mode=755"),
            )
            .map_err(sys(format!("mounting {}", m.destination().display())));
        }
    }
    let source: PathBuf = m.source().clone().unwrap_or_else(|| typ.clone().into());
    let is_bind = opts.bind || typ == "bind";
    let source_is_file = is_bind && source.metadata().map(|m| !m.is_dir()).unwrap_or(false);
    if source_is_file {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| RuntimeError::io(format!("creating {}", parent.display()), e))?;
        }
        if !dest.exists() {
            std::fs::File::create(&dest)
                .map_err(|e| RuntimeError::io(format!("creating {}", dest.display()), e))?;
        }
    } else {
        std::fs::create_dir_all(&dest)
            .map_err(|e| RuntimeError::io(format!("creating {}", dest.display()), e))?;
    }
    let what = format!(
        "mounting {} on {}",
        source.display(),
        m.destination().display()
    );
    if is_bind {
        let flags = MsFlags::MS_BIND | (opts.flags & MsFlags::MS_REC);
        mount(Some(&source), &dest, None::<&str>, flags, None::<&str>)
            .map_err(sys(what.clone()))?;
        let extra = opts.flags - (MsFlags::MS_BIND | MsFlags::MS_REC);
        if !extra.is_empty() {
            mount(
                None::<&str>,
                &dest,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra,
                None::<&str>,
            )
            .map_err(sys(format!("remounting {}", m.destination().display())))?;
        }
    } else {
        let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
        mount(Some(&source), &dest, Some(typ.as_str()), opts.flags, data)
            .map_err(sys(what.clone()))?;
    }
    if !opts.propagation.is_empty() {
        mount(
            None::<&str>,
            &dest,
            None::<&str>,
            opts.propagation,
            None::<&str>,
        )
        .map_err(sys(what))?;
    }
    Ok(())
}

/// Whether the host's /sys/fs/cgroup is a cgroup v2 filesystem (unified layout).
fn host_is_cgroup2() -> bool {
    nix::sys::statfs::statfs("/sys/fs/cgroup")
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// Creates the device nodes every container has, and the usual links in `/dev`.
pub fn populate_dev(rootfs: &Path) -> Result<(), RuntimeError> {
    let dev = rootfs.join("dev");
    let nodes: [(&str, u64, u64); 6] = [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ];
    let old = nix::sys::stat::umask(Mode::empty());
    for (name, major, minor) in nodes {
        let path = dev.join(name);
        let _ = std::fs::remove_file(&path);
        mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .map_err(sys(format!("creating /dev/{name}")))?;
    }
    nix::sys::stat::umask(old);
    let links = [
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
        ("pts/ptmx", "ptmx"),
        ("/proc/kcore", "core"),
    ];
    for (target, name) in links {
        let path = dev.join(name);
        if path.symlink_metadata().is_err() {
            symlink(target, &path)
                .map_err(|e| RuntimeError::io(format!("linking /dev/{name}"), e))?;
        }
    }
    Ok(())
}

/// Makes `rootfs` the root of the mount namespace and detaches the old root.
pub fn pivot(rootfs: &Path) -> Result<(), RuntimeError> {
    nix::unistd::chdir(rootfs).map_err(sys(format!("entering {}", rootfs.display())))?;
    // Stack the old root under the new one, then detach it: no directory for it needed.
    nix::unistd::pivot_root(".", ".").map_err(sys("pivot_root".into()))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("detaching the old root".into()))?;
    nix::unistd::chdir("/").map_err(sys("entering the new root".into()))?;
    Ok(())
}

/// Hides `path` (after pivot): `/dev/null` over a file, an empty read-only tmpfs over a
/// directory. Missing paths are fine.
pub fn mask(path: &str) -> Result<(), RuntimeError> {
    let p = Path::new(path);
    let Ok(meta) = p.metadata() else {
        return Ok(());
    };
    let result = if meta.is_dir() {
        mount(
            Some("tmpfs"),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
    } else {
        mount(
            Some("/dev/null"),
            p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    };
    result.map_err(sys(format!("masking {path}")))
}

/// Makes `path` (after pivot) read-only. Missing paths are fine.
pub fn make_readonly(path: &str) -> Result<(), RuntimeError> {
    let p = Path::new(path);
    if p.symlink_metadata().is_err() {
        return Ok(());
    }
    mount(
        Some(p),
        p,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys(format!("binding {path}")))?;
    remount_readonly(p)
}

/// Remounts a bind mount read-only, keeping the flags it has (the kernel refuses to clear
/// locked flags such as nosuid).
pub fn remount_readonly(p: &Path) -> Result<(), RuntimeError> {
    let st = nix::sys::statvfs::statvfs(p).map_err(sys(format!("statfs {}", p.display())))?;
    use nix::sys::statvfs::FsFlags;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    let f = st.flags();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if f.contains(fs) {
            flags |= ms;
        }
    }
    mount(None::<&str>, p, None::<&str>, flags, None::<&str>)
        .map_err(sys(format!("remounting {} read-only", p.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_mount_options() {
        let o = parse_options(&s(&["nosuid", "noexec", "mode=755", "size=65536k", "ro"]));
        assert_eq!(
            o.flags,
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY
        );
        assert_eq!(o.data, "mode=755,size=65536k");
        assert!(!o.bind);
        let o = parse_options(&s(&["rbind", "rprivate", "rw"]));
        assert!(o.bind);
        assert_eq!(o.flags, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
    }
}
