//! Which cgroup hierarchies this host has and where they are mounted, read from
//! /proc/self/mountinfo (or, for tests, from a directory tree laid out like one).

use std::path::{Path, PathBuf};

use super::CgroupError;

/// The v1 controllers shoal makes directories in.
pub const V1_CONTROLLERS: &[&str] = &[
    "memory", "cpu", "cpuacct", "pids", "cpuset", "devices", "freezer", "blkio",
];

/// The v2 controllers shoal enables for its cgroups when the host offers them.
pub const V2_CONTROLLERS: &[&str] = &["cpu", "cpuset", "io", "memory", "pids"];

/// How the host's cgroups are laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One hierarchy per controller (or a few co-mounted, like `cpu,cpuacct`).
    V1 {
        /// The mount point of each controller we use that the host has, in
        /// [`V1_CONTROLLERS`] order; co-mounted controllers share a path.
        controllers: Vec<(String, PathBuf)>,
        /// A v2 hierarchy beside them, if mounted ("hybrid").
        unified: Option<PathBuf>,
    },
    /// One unified hierarchy.
    V2 {
        /// Its mount point.
        root: PathBuf,
    },
}

impl Layout {
    /// Reads the layout of this host from its mount table, falling back to looking at
    /// /sys/fs/cgroup when the mount table is unreadable.
    pub fn detect() -> Result<Layout, CgroupError> {
        match std::fs::read_to_string("/proc/self/mountinfo") {
            Ok(text) => Self::from_mountinfo(&text)
                .or_else(|_| Self::detect_at(Path::new("/sys/fs/cgroup"))),
            Err(_) => Self::detect_at(Path::new("/sys/fs/cgroup")),
        }
    }

    /// A v2 layout rooted at `root` (a test may give a fake tree).
    pub fn v2(root: impl Into<PathBuf>) -> Layout {
        Layout::V2 { root: root.into() }
    }

    /// Reads the layout of a tree under `root` laid out like /sys/fs/cgroup: a v2 root
    /// (it has `cgroup.controllers`), or one directory per v1 controller (each with a
    /// `cgroup.procs`) and maybe `unified`. This is how tests build fake layouts.
    pub fn detect_at(root: &Path) -> Result<Layout, CgroupError> {
        if root.join("cgroup.controllers").exists() {
            return Ok(Layout::v2(root));
        }
        let controllers: Vec<(String, PathBuf)> = V1_CONTROLLERS
            .iter()
            .map(|c| (c.to_string(), root.join(c)))
            .filter(|(_, p)| p.join("cgroup.procs").exists())
            .collect();
        if controllers.is_empty() {
            return Err(CgroupError::NoCgroups);
        }
        let unified = root.join("unified");
        Ok(Layout::V1 {
            controllers,
            unified: unified
                .join("cgroup.controllers")
                .exists()
                .then_some(unified),
        })
    }

    /// Reads the layout from the text of a /proc/<pid>/mountinfo. A cgroup2 mount at
    /// /sys/fs/cgroup means v2; otherwise any v1 controller mount means v1 (with the
    /// cgroup2 mount beside it, if any, as the unified hierarchy); otherwise a lone
    /// cgroup2 mount elsewhere means v2 there.
    pub fn from_mountinfo(text: &str) -> Result<Layout, CgroupError> {
        // (mount point, fstype, super options); a later mount on the same point hides
        // the earlier one.
        let mut mounts: Vec<(PathBuf, String, String)> = Vec::new();
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(point) = left.split(' ').nth(4) else {
                continue;
            };
            let mut right = right.split(' ');
            let (Some(fstype), _, Some(opts)) = (right.next(), right.next(), right.next()) else {
                continue;
            };
            if fstype != "cgroup" && fstype != "cgroup2" {
                continue;
            }
            let point = PathBuf::from(unescape(point));
            mounts.retain(|(p, _, _)| *p != point);
            mounts.push((point, fstype.to_string(), opts.to_string()));
        }
        let standard = Path::new("/sys/fs/cgroup");
        let v2_mounts: Vec<&PathBuf> = mounts
            .iter()
            .filter(|(_, t, _)| t == "cgroup2")
            .map(|(p, _, _)| p)
            .collect();
        if let Some(root) = v2_mounts.iter().find(|p| p.as_path() == standard) {
            return Ok(Layout::v2(root.as_path()));
        }
        // Prefer mounts under /sys/fs/cgroup when a controller is mounted twice.
        let under_standard = |p: &Path| p.starts_with(standard);
        let mut controllers = Vec::new();
        for c in V1_CONTROLLERS {
            let mut found: Vec<&PathBuf> = mounts
                .iter()
                .filter(|(_, t, opts)| t == "cgroup" && opts.split(',').any(|o| o == *c))
                .map(|(p, _, _)| p)
                .collect();
            found.sort_by_key(|p| !under_standard(p));
            if let Some(p) = found.first() {
                controllers.push((c.to_string(), p.to_path_buf()));
            }
        }
        if !controllers.is_empty() {
            let mut unified = v2_mounts.clone();
            unified.sort_by_key(|p| (*p != &standard.join("unified"), !under_standard(p)));
            return Ok(Layout::V1 {
                controllers,
                unified: unified.first().map(|p| p.to_path_buf()),
            });
        }
        v2_mounts
            .first()
            .map(|p| Layout::v2(p.as_path()))
            .ok_or(CgroupError::NoCgroups)
    }

    /// Whether this is the unified (v2-only) layout.
    pub fn is_v2(&self) -> bool {
        matches!(self, Layout::V2 { .. })
    }

    /// Whether v1 controllers sit beside a v2 mount.
    pub fn is_hybrid(&self) -> bool {
        matches!(
            self,
            Layout::V1 {
                unified: Some(_),
                ..
            }
        )
    }

    /// The mount point of a v1 controller.
    pub(super) fn v1_root(&self, controller: &str) -> Option<&Path> {
        match self {
            Layout::V1 { controllers, .. } => controllers
                .iter()
                .find(|(c, _)| c == controller)
                .map(|(_, p)| p.as_path()),
            Layout::V2 { .. } => None,
        }
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space and so on).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|d| {
                let n = d.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0'));
                u8::try_from(n).ok()
            });
        if let Some(n) = code {
            out.push(n);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 22 0:32 / /mnt/other\\040mem rw,relatime - cgroup cgroup rw,memory
";

    #[test]
    fn reads_a_hybrid_mount_table() {
        let layout = Layout::from_mountinfo(HYBRID).expect("hybrid");
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            layout,
            Layout::V1 {
                controllers: vec![
                    ("memory".into(), p("/sys/fs/cgroup/memory")),
                    ("cpu".into(), p("/sys/fs/cgroup/cpu,cpuacct")),
                    ("cpuacct".into(), p("/sys/fs/cgroup/cpu,cpuacct")),
                    ("pids".into(), p("/sys/fs/cgroup/pids")),
                ],
                unified: Some(p("/sys/fs/cgroup/unified")),
            }
        );
        assert!(layout.is_hybrid());
        assert_eq!(
            layout.v1_root("pids"),
            Some(Path::new("/sys/fs/cgroup/pids"))
        );
        assert_eq!(layout.v1_root("devices"), None);
    }

    #[test]
    fn reads_a_v2_mount_table() {
        let text = "\
25 1 0:23 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
26 1 0:24 / /mnt/x rw - cgroup cgroup rw,memory
";
        assert_eq!(
            Layout::from_mountinfo(text).expect("v2"),
            Layout::v2("/sys/fs/cgroup")
        );
        let elsewhere = "26 1 0:24 / /mnt/cg\\0402 rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            Layout::from_mountinfo(elsewhere).expect("v2 elsewhere"),
            Layout::v2("/mnt/cg 2")
        );
        assert!(matches!(
            Layout::from_mountinfo("1 0 0:1 / / rw - ext4 /dev/vda rw\n"),
            Err(CgroupError::NoCgroups)
        ));
        assert_eq!(unescape("a\\777b\\04"), "a\\777b\\04", "not escapes");
    }

    #[test]
    fn reads_fake_trees() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            Layout::detect_at(dir.path()),
            Err(CgroupError::NoCgroups)
        ));
        for c in ["memory", "pids"] {
            std::fs::create_dir_all(dir.path().join(c)).expect("mkdir");
            std::fs::write(dir.path().join(c).join("cgroup.procs"), "").expect("procs");
        }
        let layout = Layout::detect_at(dir.path()).expect("v1");
        assert_eq!(
            layout.v1_root("pids"),
            Some(dir.path().join("pids").as_path())
        );
        assert!(!layout.is_hybrid());
        let v2 = tempfile::tempdir().expect("tempdir");
        std::fs::write(v2.path().join("cgroup.controllers"), "cpu memory pids\n").expect("write");
        assert_eq!(
            Layout::detect_at(v2.path()).expect("v2"),
            Layout::v2(v2.path())
        );
    }

    #[test]
    fn detects_this_host() {
        // Every host shoal runs on has cgroups; whichever layout, it must name real dirs.
        match Layout::detect().expect("cgroups mounted") {
            Layout::V1 {
                controllers,
                unified,
            } => {
                assert!(!controllers.is_empty());
                assert!(
                    controllers
                        .iter()
                        .all(|(_, p)| p.join("cgroup.procs").exists())
                );
                assert!(unified.is_none_or(|u| u.join("cgroup.procs").exists()));
            }
            Layout::V2 { root } => assert!(root.join("cgroup.controllers").exists()),
        }
    }
}
