//! A container's root filesystem: an overlayfs mount of its image's unpacked layers (read
//! only, shared by every container of the image) under its own upper and work dirs.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::EngineError;

/// Mounts the overlay at `target`. `layers` are bottom first, as images list them.
pub(crate) fn mount_overlay(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), EngineError> {
    for d in [upper, work, target] {
        std::fs::create_dir_all(d)
            .map_err(|e| EngineError::Internal(format!("creating {}: {e}", d.display())))?;
    }
    if is_mounted(target) {
        return Ok(());
    }
    let lower = layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    if lower.is_empty() {
        return Err(EngineError::Internal("the image has no layers".into()));
    }
    let data = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|e| {
        EngineError::Internal(format!(
            "mounting the container's root filesystem (overlay) on {}: {e}",
            target.display()
        ))
    })
}

/// Unmounts the overlay at `target`, if mounted.
pub(crate) fn unmount(target: &Path) -> Result<(), EngineError> {
    if !is_mounted(target) {
        return Ok(());
    }
    umount2(target, MntFlags::MNT_DETACH)
        .map_err(|e| EngineError::Internal(format!("unmounting {}: {e}", target.display())))
}

/// Whether `path` is a mount point, read from this process's mount table.
pub(crate) fn is_mounted(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.display().to_string();
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape(mp) == want)
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v as char);
            i += 4;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn root_is_mounted() {
        assert!(is_mounted(Path::new("/")));
        assert!(!is_mounted(Path::new("/no/such/dir")));
    }
}
