//! Capabilities: Docker's default set, `--cap-add`/`--cap-drop`, and applying them with
//! capset(2) and prctl(2) in the builtin runtime.

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

use super::SecurityError;

/// Every capability with its number, in kernel order.
const ALL: &[(Capability, &str, u32)] = &[
    (Capability::Chown, "CHOWN", 0),
    (Capability::DacOverride, "DAC_OVERRIDE", 1),
    (Capability::DacReadSearch, "DAC_READ_SEARCH", 2),
    (Capability::Fowner, "FOWNER", 3),
    (Capability::Fsetid, "FSETID", 4),
    (Capability::Kill, "KILL", 5),
    (Capability::Setgid, "SETGID", 6),
    (Capability::Setuid, "SETUID", 7),
    (Capability::Setpcap, "SETPCAP", 8),
    (Capability::LinuxImmutable, "LINUX_IMMUTABLE", 9),
    (Capability::NetBindService, "NET_BIND_SERVICE", 10),
    (Capability::NetBroadcast, "NET_BROADCAST", 11),
    (Capability::NetAdmin, "NET_ADMIN", 12),
    (Capability::NetRaw, "NET_RAW", 13),
    (Capability::IpcLock, "IPC_LOCK", 14),
    (Capability::IpcOwner, "IPC_OWNER", 15),
    (Capability::SysModule, "SYS_MODULE", 16),
    (Capability::SysRawio, "SYS_RAWIO", 17),
    (Capability::SysChroot, "SYS_CHROOT", 18),
    (Capability::SysPtrace, "SYS_PTRACE", 19),
    (Capability::SysPacct, "SYS_PACCT", 20),
    (Capability::SysAdmin, "SYS_ADMIN", 21),
    (Capability::SysBoot, "SYS_BOOT", 22),
    (Capability::SysNice, "SYS_NICE", 23),
    (Capability::SysResource, "SYS_RESOURCE", 24),
    (Capability::SysTime, "SYS_TIME", 25),
    (Capability::SysTtyConfig, "SYS_TTY_CONFIG", 26),
    (Capability::Mknod, "MKNOD", 27),
    (Capability::Lease, "LEASE", 28),
    (Capability::AuditWrite, "AUDIT_WRITE", 29),
    (Capability::AuditControl, "AUDIT_CONTROL", 30),
    (Capability::Setfcap, "SETFCAP", 31),
    (Capability::MacOverride, "MAC_OVERRIDE", 32),
    (Capability::MacAdmin, "MAC_ADMIN", 33),
    (Capability::Syslog, "SYSLOG", 34),
    (Capability::WakeAlarm, "WAKE_ALARM", 35),
    (Capability::BlockSuspend, "BLOCK_SUSPEND", 36),
    (Capability::AuditRead, "AUDIT_READ", 37),
    (Capability::Perfmon, "PERFMON", 38),
    (Capability::Bpf, "BPF", 39),
    (Capability::CheckpointRestore, "CHECKPOINT_RESTORE", 40),
];

/// Docker's default capabilities.
pub const DEFAULT: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// The kernel number of a capability.
pub fn number(cap: Capability) -> u32 {
    ALL.iter()
        .find(|(c, _, _)| *c == cap)
        .map(|(_, _, n)| *n)
        .unwrap_or(u32::MAX)
}

/// The name of a capability without its `CAP_` prefix.
pub fn name(cap: Capability) -> &'static str {
    ALL.iter()
        .find(|(c, _, _)| *c == cap)
        .map(|(_, n, _)| *n)
        .unwrap_or("UNKNOWN")
}

fn parse(name: &str) -> Result<Option<Capability>, SecurityError> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if bare == "ALL" {
        return Ok(None);
    }
    ALL.iter()
        .find(|(_, n, _)| *n == bare)
        .map(|(c, _, _)| Some(*c))
        .ok_or_else(|| SecurityError::UnknownCapability(name.to_string()))
}

/// The capabilities of a container from the default set and the user's additions and
/// removals, with Docker's rules: names in any case, with or without `CAP_`; `ALL` in
/// either list; a capability both added and dropped is dropped, except that `--cap-add
/// ALL --cap-drop X` keeps everything but X.
pub fn resolve(add: &[String], drop: &[String]) -> Result<Vec<Capability>, SecurityError> {
    let adds = add
        .iter()
        .map(|n| parse(n))
        .collect::<Result<Vec<_>, _>>()?;
    let drops = drop
        .iter()
        .map(|n| parse(n))
        .collect::<Result<Vec<_>, _>>()?;
    let add_all = adds.iter().any(Option::is_none);
    let drop_all = drops.iter().any(Option::is_none);
    let mut set: Vec<Capability> = if add_all {
        ALL.iter().map(|(c, _, _)| *c).collect()
    } else if drop_all {
        Vec::new()
    } else {
        DEFAULT.to_vec()
    };
    if drop_all && !add_all {
        // `--cap-drop ALL --cap-add X` gives exactly X.
        set.extend(adds.iter().flatten().copied());
    } else if !add_all {
        set.extend(adds.iter().flatten().copied());
    }
    set.retain(|c| !drops.iter().flatten().any(|d| d == c));
    set.sort_by_key(|c| number(*c));
    set.dedup();
    Ok(set)
}

/// The OCI capability sets of a process: root gets the capabilities in its bounding,
/// permitted and effective sets; any other user keeps them in the bounding set only, as
/// current Docker does. Inheritable and ambient stay empty.
pub fn linux_capabilities(caps: &[Capability], root_user: bool) -> LinuxCapabilities {
    let set: Capabilities = caps.iter().copied().collect();
    let active = if root_user {
        set.clone()
    } else {
        Capabilities::new()
    };
    let mut lc = LinuxCapabilities::default();
    lc.set_bounding(Some(set))
        .set_permitted(Some(active.clone()))
        .set_effective(Some(active))
        .set_inheritable(Some(Capabilities::new()))
        .set_ambient(Some(Capabilities::new()));
    lc
}

/// A bit mask of capabilities.
pub fn mask_of<'a>(caps: impl IntoIterator<Item = &'a Capability>) -> u64 {
    caps.into_iter()
        .map(|c| number(*c))
        .filter(|n| *n < 64)
        .fold(0, |m, n| m | (1u64 << n))
}

/// The effective capabilities of a process, read from /proc.
pub fn effective_of(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// The highest capability number this kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Capability sets computed before fork, applied after with syscalls only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreparedCaps {
    bounding: u64,
    effective: u64,
    permitted: u64,
    inheritable: u64,
    ambient: u64,
    last_cap: u32,
}

/// Computes the masks of an OCI capabilities section.
pub fn prepare(caps: &LinuxCapabilities) -> Result<PreparedCaps, SecurityError> {
    let m = |s: &Option<Capabilities>| s.as_ref().map(|s| mask_of(s.iter())).unwrap_or(0);
    Ok(PreparedCaps {
        bounding: m(caps.bounding()),
        effective: m(caps.effective()),
        permitted: m(caps.permitted()),
        inheritable: m(caps.inheritable()),
        ambient: m(caps.ambient()),
        last_cap: last_cap(),
    })
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

impl PreparedCaps {
    /// Drops every capability outside the bounding set (needs CAP_SETPCAP, so call it
    /// before the user changes).
    pub fn apply_bounding(&self) -> Result<(), SecurityError> {
        for cap in 0..=self.last_cap.min(63) {
            if self.bounding & (1 << cap) == 0 {
                // SAFETY: prctl with integer arguments only.
                let rc =
                    unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
                if rc != 0 {
                    let e = nix::Error::last();
                    // EINVAL: a capability this kernel does not have.
                    if e != nix::Error::EINVAL {
                        return Err(SecurityError::Sys {
                            what: "dropping from the bounding set",
                            source: e,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Sets the effective, permitted, inheritable and ambient sets (after the user
    /// changed, with PR_SET_KEEPCAPS so the permitted set survived it).
    pub fn apply_sets(&self) -> Result<(), SecurityError> {
        let mut header = CapHeader {
            version: CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [
            CapData {
                effective: self.effective as u32,
                permitted: self.permitted as u32,
                inheritable: self.inheritable as u32,
            },
            CapData {
                effective: (self.effective >> 32) as u32,
                permitted: (self.permitted >> 32) as u32,
                inheritable: (self.inheritable >> 32) as u32,
            },
        ];
        // SAFETY: capset reads a v3 header and two data structs, which both point to.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_capset,
                &mut header as *mut CapHeader,
                data.as_ptr(),
            )
        };
        if rc != 0 {
            return Err(SecurityError::Sys {
                what: "capset (is a requested capability outside the daemon's own bounding set?)",
                source: nix::Error::last(),
            });
        }
        // SAFETY: prctl with integer arguments only.
        unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            )
        };
        for cap in 0..=self.last_cap.min(63) {
            if self.ambient & (1 << cap) != 0 {
                // A capability outside the inheritable set cannot be ambient; like runc,
                // go on without it rather than fail the container.
                // SAFETY: prctl with integer arguments only.
                unsafe {
                    libc::prctl(
                        libc::PR_CAP_AMBIENT,
                        libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                        cap as libc::c_ulong,
                        0,
                        0,
                    )
                };
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn default_mask_is_dockers() {
        assert_eq!(mask_of(DEFAULT.iter()), 0xa80425fb);
    }

    #[test]
    fn resolves_adds_and_drops() {
        let mask = |a: &[&str], d: &[&str]| mask_of(resolve(&s(a), &s(d)).unwrap().iter());
        assert_eq!(mask(&[], &[]), 0xa80425fb);
        assert_eq!(mask(&[], &["NET_RAW"]), 0xa80405fb);
        assert_eq!(mask(&["sys_admin"], &[]), 0xa82425fb);
        assert_eq!(mask(&["CAP_SYS_ADMIN"], &["cap_sys_admin"]), 0xa80425fb);
        assert_eq!(mask(&[], &["ALL"]), 0);
        assert_eq!(mask(&["NET_ADMIN"], &["all"]), 1 << 12);
        let all = mask(&["ALL"], &["MKNOD"]);
        assert_eq!(all & (1 << 27), 0);
        assert_ne!(all & (1 << 21), 0);
        let e = resolve(&s(&["NOPE"]), &[]).unwrap_err().to_string();
        assert!(e.contains("unknown capability \"NOPE\""), "{e}");
        assert!(e.contains("man 7 capabilities"), "{e}");
    }

    #[test]
    fn non_root_gets_no_effective_caps() {
        let caps = resolve(&[], &[]).unwrap();
        let lc = linux_capabilities(&caps, false);
        let p = prepare(&lc).unwrap();
        assert_eq!(p.bounding, 0xa80425fb);
        assert_eq!(p.effective, 0);
        let lc = linux_capabilities(&caps, true);
        assert_eq!(prepare(&lc).unwrap().effective, 0xa80425fb);
    }

    /// Real kernel: a forked child applies the default set; the parent reads its CapEff.
    #[test]
    fn applies_in_a_child() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: needs root to hold capabilities");
            return;
        }
        let lc = linux_capabilities(&resolve(&[], &s(&["NET_RAW"])).unwrap(), true);
        let prepared = prepare(&lc).unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        // SAFETY: the child only makes syscalls and exits with _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let ok = prepared.apply_bounding().is_ok() && prepared.apply_sets().is_ok();
                drop(r);
                let mut buf = [0u8; 1];
                // Wait until the parent has looked, then exit.
                let _ = nix::unistd::write(&w, if ok { b"y" } else { b"n" });
                std::thread::sleep(std::time::Duration::from_millis(300));
                let _ = &mut buf;
                // SAFETY: ends the forked child.
                unsafe { libc::_exit(0) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(w);
                let mut buf = [0u8; 1];
                nix::unistd::read(&r, &mut buf).unwrap();
                let eff = effective_of(child.as_raw());
                let _ = nix::sys::wait::waitpid(child, None);
                assert_eq!(&buf, b"y", "applying failed in the child");
                assert_eq!(eff, Some(0xa80405fb));
            }
        }
    }
}
