//! Unpacking one layer into a directory of its own, in the form overlayfs stacks: OCI
//! whiteouts (`.wh.NAME`) become 0:0 character devices, opaque markers (`.wh..wh..opq`)
//! become the `trusted.overlay.opaque` xattr. No entry may land outside the directory,
//! whether by `..`, an absolute path, or a symlink planted earlier in the same layer.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use tar::EntryType;

use super::ImageError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// A tar path made relative and checked: no `..`, no root, no prefix.
fn clean(path: &Path) -> Result<PathBuf, ImageError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(ImageError::Layer(format!(
                    "the layer holds a path that leaves it: {}",
                    path.display()
                )));
            }
        }
    }
    Ok(out)
}

/// Fails if any directory on the way to `rel` under `root` is a symlink.
fn no_symlink_parents(root: &Path, rel: &Path) -> Result<(), ImageError> {
    let mut p = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            p.push(c);
            if let Ok(m) = p.symlink_metadata()
                && m.file_type().is_symlink()
            {
                return Err(ImageError::Layer(format!(
                    "the layer writes through a symlink: {}",
                    rel.display()
                )));
            }
        }
    }
    Ok(())
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> ImageError {
    move |e| ImageError::Layer(format!("{what}: {e}"))
}

/// Unpacks the tar stream `layer` into `dest`, which must exist and be empty.
pub fn unpack(layer: impl Read, dest: &Path) -> Result<(), ImageError> {
    let mut archive = tar::Archive::new(layer);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_mask(0);
    // Entries written into a directory change its mtime: set directories' own last.
    let mut dir_times = Vec::new();
    for entry in archive.entries().map_err(io("reading layer"))? {
        let mut entry = entry.map_err(io("reading layer"))?;
        let raw_path = entry.path().map_err(io("reading layer"))?.into_owned();
        let rel = clean(&raw_path)?;
        if rel.as_os_str().is_empty() {
            continue; // the layer's root directory itself
        }
        no_symlink_parents(dest, &rel)?;
        let target = dest.join(&rel);
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent.display()))?;
        }
        if name == OPAQUE {
            let dir = target.parent().unwrap_or(dest);
            xattr::set(dir, "trusted.overlay.opaque", b"y")
                .map_err(io(format!("marking {} opaque", dir.display())))?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(ImageError::Layer(format!(
                    "the layer holds a malformed whiteout: {}",
                    rel.display()
                )));
            }
            if hidden.starts_with(WHITEOUT_PREFIX) {
                // Other `.wh..wh.` names are aufs bookkeeping, meaningless here.
                continue;
            }
            let path = target.with_file_name(hidden);
            remove_any(&path);
            mknod(&path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                .map_err(|e| ImageError::Layer(format!("whiteout {}: {e}", path.display())))?;
            continue;
        }
        let kind = entry.header().entry_type();
        match kind {
            EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(io("reading layer"))?
                    .ok_or_else(|| {
                        ImageError::Layer(format!("hard link {} has no target", rel.display()))
                    })?;
                let source = dest.join(clean(&link)?);
                no_symlink_parents(dest, &clean(&link)?)?;
                remove_any(&target);
                std::fs::hard_link(&source, &target).map_err(io(format!(
                    "linking {} to {}",
                    rel.display(),
                    link.display()
                )))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let header = entry.header();
                let mode = header.mode().unwrap_or(0o644);
                let (major, minor) = (
                    header.device_major().ok().flatten().unwrap_or(0),
                    header.device_minor().ok().flatten().unwrap_or(0),
                );
                let flag = match kind {
                    EntryType::Char => SFlag::S_IFCHR,
                    EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                remove_any(&target);
                mknod(
                    &target,
                    flag,
                    Mode::from_bits_truncate(mode),
                    makedev(major as u64, minor as u64),
                )
                .map_err(|e| ImageError::Layer(format!("creating {}: {e}", rel.display())))?;
                let uid = header.uid().unwrap_or(0) as u32;
                let gid = header.gid().unwrap_or(0) as u32;
                let _ = std::os::unix::fs::lchown(&target, Some(uid), Some(gid));
            }
            EntryType::Directory => {
                if target.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
                    remove_any(&target);
                }
                if let Ok(t) = entry.header().mtime() {
                    dir_times.push((target.clone(), t));
                }
                entry
                    .unpack(&target)
                    .map_err(io(format!("unpacking {}", rel.display())))?;
            }
            _ => {
                // Never write through whatever is there already (a symlink planted by an
                // earlier entry would lead the write out of the layer).
                remove_any(&target);
                entry
                    .unpack(&target)
                    .map_err(io(format!("unpacking {}", rel.display())))?;
            }
        }
    }
    for (dir, secs) in dir_times.iter().rev() {
        // A later entry may have replaced the directory: never follow what replaced it.
        if dir.symlink_metadata().is_ok_and(|m| m.is_dir())
            && let Ok(f) = std::fs::File::open(dir)
        {
            let _ = f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(*secs));
        }
    }
    Ok(())
}

fn remove_any(path: &Path) {
    match path.symlink_metadata() {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if *kind == EntryType::Directory {
                0o755
            } else {
                0o644
            });
            h.set_size(data.len() as u64);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            // Bypass the builder's own path checks so malicious paths can be tested.
            let name = path.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn unpacks_files_links_and_whiteouts() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: whiteouts need mknod, which needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let layer = tar_of(&[
            ("etc/", EntryType::Directory, b"", None),
            ("etc/hello", EntryType::Regular, b"hi\n", None),
            ("etc/hard", EntryType::Link, b"", Some("etc/hello")),
            ("etc/soft", EntryType::Symlink, b"", Some("hello")),
            ("etc/.wh.gone", EntryType::Regular, b"", None),
            ("var/.wh..wh..opq", EntryType::Regular, b"", None),
        ]);
        unpack(&layer[..], dir.path()).unwrap();
        let d = dir.path();
        assert_eq!(
            std::fs::read_to_string(d.join("etc/hello")).unwrap(),
            "hi\n"
        );
        assert_eq!(std::fs::read_to_string(d.join("etc/hard")).unwrap(), "hi\n");
        assert_eq!(
            std::fs::read_link(d.join("etc/soft")).unwrap(),
            Path::new("hello")
        );
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let m = d.join("etc/gone").symlink_metadata().unwrap();
        assert!(m.file_type().is_char_device());
        assert_eq!(m.rdev(), 0);
        // Entries written into etc/ later did not disturb its own mtime.
        assert_eq!(d.join("etc").metadata().unwrap().mtime(), 1_700_000_000);
        assert_eq!(
            xattr::get(d.join("var"), "trusted.overlay.opaque").unwrap(),
            Some(b"y".to_vec())
        );
    }

    #[test]
    fn refuses_paths_that_escape() {
        let dir = tempfile::tempdir().unwrap();
        let dotdot = tar_of(&[("../evil", EntryType::Regular, b"x", None)]);
        let e = unpack(&dotdot[..], dir.path()).unwrap_err().to_string();
        assert!(e.contains("leaves it"), "{e}");
        let through = tar_of(&[
            ("link", EntryType::Symlink, b"", Some("/tmp")),
            ("link/evil", EntryType::Regular, b"x", None),
        ]);
        let e = unpack(&through[..], dir.path()).unwrap_err().to_string();
        assert!(e.contains("through a symlink"), "{e}");
        assert!(!Path::new("/tmp/evil").exists());
        let fresh = tempfile::tempdir().unwrap();
        let bare = tar_of(&[
            ("d/", EntryType::Directory, b"", None),
            ("d/.wh.", EntryType::Regular, b"", None),
        ]);
        let e = unpack(&bare[..], fresh.path()).unwrap_err().to_string();
        assert!(e.contains("malformed whiteout"), "{e}");
        assert!(fresh.path().join("d").is_dir(), "the parent survives");
    }
}
