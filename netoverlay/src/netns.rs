//! Network namespaces kept as files (a bind mount of the namespace), made and entered on
//! dedicated threads: a thread that changes its network namespace must never be a worker
//! of the shared async runtime.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

/// Errors of namespace handling.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A system call failed.
    #[error("{what} {path}: {source}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// The namespace file.
        path: PathBuf,
        /// The kernel's answer.
        source: nix::Error,
    },
    /// A file could not be made or opened.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The namespace file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The helper thread died.
    #[error("network namespace helper thread failed")]
    Thread,
}

/// Makes a new network namespace and keeps it at `path`.
pub fn create(path: &Path) -> Result<(), NetnsError> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| NetnsError::Io {
                what: "creating the directory of",
                path: path.clone(),
                source,
            })?;
        }
        std::fs::File::create(&path).map_err(|source| NetnsError::Io {
            what: "creating",
            path: path.clone(),
            source,
        })?;
        let sys = |what, source| NetnsError::Sys {
            what,
            path: path.clone(),
            source,
        };
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| sys("unsharing for", e))?;
        let mounted = mount(
            Some("/proc/thread-self/ns/net"),
            &path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        );
        if let Err(e) = mounted {
            let _ = std::fs::remove_file(&path);
            return Err(sys("bind-mounting", e));
        }
        // The thread ends here; the namespace lives on through the bind mount.
        Ok(())
    })
    .join()
    .map_err(|_| NetnsError::Thread)?
}

/// Removes a namespace made by [`create`]. Missing is fine.
pub fn remove(path: &Path) -> Result<(), NetnsError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(source) => {
            return Err(NetnsError::Sys {
                what: "unmounting",
                path: path.to_path_buf(),
                source,
            });
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetnsError::Io {
            what: "removing",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Runs `f` on a thread inside the namespace at `path` and returns its result.
pub fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).map_err(|source| NetnsError::Io {
            what: "opening",
            path: path.clone(),
            source,
        })?;
        setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Sys {
            what: "entering",
            path: path.clone(),
            source,
        })?;
        Ok(f())
    })
    .join()
    .map_err(|_| NetnsError::Thread)?
}

/// An rtnetlink handle whose socket lives in the namespace at `path`; its connection runs
/// on the current tokio runtime.
pub fn handle_in(path: &Path) -> Result<rtnetlink::Handle, NetnsError> {
    let rt = tokio::runtime::Handle::current();
    let (conn, handle) = run_in(path, move || {
        // The socket is created here, inside the namespace; registering it with the
        // runtime needs the runtime's context.
        let _guard = rt.enter();
        rtnetlink::new_connection().map(|(conn, handle, _)| (conn, handle))
    })?
    .map_err(|source| NetnsError::Io {
        what: "opening netlink in",
        path: path.to_path_buf(),
        source,
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_enter_remove() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: network namespaces need root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ns1");
        create(&p).unwrap();
        struct Guard(PathBuf);
        impl Drop for Guard {
            fn drop(&mut self) {
                let _ = remove(&self.0);
            }
        }
        let _g = Guard(p.clone());
        let inside = run_in(&p, || {
            std::fs::read_link("/proc/thread-self/ns/net").unwrap()
        })
        .unwrap();
        let outside = std::fs::read_link("/proc/self/ns/net").unwrap();
        assert_ne!(inside, outside, "the thread was in another namespace");
        let links = run_in(&p, || {
            std::fs::read_dir("/sys/class/net")
                .map(|d| d.count())
                .unwrap_or(0)
        })
        .unwrap();
        let _ = links;
        remove(&p).unwrap();
        assert!(!p.exists());
        remove(&p).unwrap();
    }
}
