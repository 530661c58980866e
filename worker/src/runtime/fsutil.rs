//! Path resolution inside a container's root that never leaves it, even through the
//! image's own symlinks (an image may hold `/etc -> /host/etc`).

use std::path::{Component, Path, PathBuf};

/// Resolves `path` (absolute inside the container) against `root`, following symlinks as
/// the container would see them, so the result is always under `root`. Missing trailing
/// components are kept as they are (the caller may create them).
pub fn secure_join(root: &Path, path: &Path) -> PathBuf {
    let mut resolved = PathBuf::new(); // relative to root
    let mut pending: Vec<std::ffi::OsString> = components(path);
    pending.reverse();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let full = root.join(&candidate);
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() && hops < 255 => {
                hops += 1;
                let Ok(target) = std::fs::read_link(&full) else {
                    resolved = candidate;
                    continue;
                };
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                let mut more = components(&target);
                more.reverse();
                pending.extend(more);
            }
            _ => resolved = candidate,
        }
    }
    root.join(resolved)
}

fn components(path: &Path) -> Vec<std::ffi::OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_inside_root_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("real/etc")).unwrap();
        std::os::unix::fs::symlink("/real/etc", root.join("etc")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.join("up")).unwrap();
        assert_eq!(
            secure_join(root, Path::new("/etc/passwd")),
            root.join("real/etc/passwd")
        );
        assert_eq!(secure_join(root, Path::new("/up/x")), root.join("x"));
        assert_eq!(secure_join(root, Path::new("/../../a")), root.join("a"));
        assert_eq!(secure_join(root, Path::new("/a/./b")), root.join("a/b"));
    }

    #[test]
    fn symlink_loops_end() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::os::unix::fs::symlink("/b", root.join("a")).unwrap();
        std::os::unix::fs::symlink("/a", root.join("b")).unwrap();
        let p = secure_join(root, Path::new("/a/c"));
        assert!(p.starts_with(root));
    }
}
