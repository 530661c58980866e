//! Copy-up: a new, empty volume mounted where the image has content gets a copy of that
//! content first (Docker's behaviour), with its modes, owners, links and times.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::VolumeError;

/// Whether `dir` has no entries (a missing directory counts as empty).
pub fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none())
}

/// Copies the contents of `src` into `dst` (which exists): files, directories and symbolic
/// links, keeping modes and owners; device files and sockets are left out.
pub fn copy_contents(src: &Path, dst: &Path) -> Result<(), VolumeError> {
    let io = |what: &str, p: &Path, e: std::io::Error| {
        VolumeError::Io(format!(
            "copying the image's {} into the volume: {what}: {e}",
            p.display()
        ))
    };
    let meta = std::fs::symlink_metadata(src).map_err(|e| io("reading", src, e))?;
    if !meta.is_dir() {
        return Ok(());
    }
    // The volume's root takes the image directory's owner and mode.
    chown(dst, &meta).map_err(|e| io("owning", dst, e))?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(|e| io("setting the mode of", dst, e))?;
    for entry in std::fs::read_dir(src).map_err(|e| io("listing", src, e))? {
        let entry = entry.map_err(|e| io("listing", src, e))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let m = std::fs::symlink_metadata(&from).map_err(|e| io("reading", &from, e))?;
        let t = m.file_type();
        if t.is_dir() {
            std::fs::create_dir(&to).map_err(|e| io("creating", &to, e))?;
            copy_contents(&from, &to)?;
        } else if t.is_symlink() {
            let target = std::fs::read_link(&from).map_err(|e| io("reading", &from, e))?;
            std::os::unix::fs::symlink(&target, &to).map_err(|e| io("linking", &to, e))?;
            chown(&to, &m).map_err(|e| io("owning", &to, e))?;
        } else if t.is_file() {
            std::fs::copy(&from, &to).map_err(|e| io("copying", &from, e))?;
            chown(&to, &m).map_err(|e| io("owning", &to, e))?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(m.mode() & 0o7777))
                .map_err(|e| io("setting the mode of", &to, e))?;
        }
    }
    Ok(())
}

fn chown(p: &Path, m: &std::fs::Metadata) -> std::io::Result<()> {
    std::os::unix::fs::lchown(p, Some(m.uid()), Some(m.gid()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_modes_and_links_are_copied() {
        let src = tempfile::tempdir().expect("dir");
        let dst = tempfile::tempdir().expect("dir");
        std::fs::create_dir(src.path().join("sub")).expect("mkdir");
        std::fs::write(src.path().join("sub/f"), "hello").expect("write");
        std::fs::set_permissions(
            src.path().join("sub/f"),
            std::fs::Permissions::from_mode(0o640),
        )
        .expect("chmod");
        std::os::unix::fs::symlink("sub/f", src.path().join("link")).expect("symlink");
        assert!(is_empty(dst.path()));
        copy_contents(src.path(), dst.path()).expect("copied");
        assert_eq!(
            std::fs::read_to_string(dst.path().join("sub/f")).expect("read"),
            "hello"
        );
        let mode = std::fs::metadata(dst.path().join("sub/f"))
            .expect("meta")
            .mode()
            & 0o777;
        assert_eq!(mode, 0o640);
        assert_eq!(
            std::fs::read_link(dst.path().join("link")).expect("link"),
            Path::new("sub/f")
        );
        assert!(!is_empty(dst.path()));
    }
}
