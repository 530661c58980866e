//! Capabilities: Docker's default set, `--cap-add`/`--cap-drop`, and applying them with
//! capset(2) and prctl(2) in the builtin runtime.
//!
//! The builtin runtime calls [`prepare`] before fork (it reads /proc and computes masks)
//! and the [`PreparedCaps`] methods after, which make syscalls only. For a container whose
//! user is not root, the order matters:
//!
//! 1. [`PreparedCaps::apply_bounding`]: dropping from the bounding set needs CAP_SETPCAP,
//!    which a non-root user no longer has;
//! 2. `prctl(PR_SET_KEEPCAPS, 1)`, then setgroups, setresgid, setresuid: without
//!    KEEPCAPS the change of uid empties the permitted set;
//! 3. [`PreparedCaps::apply_sets`]: effective, permitted, inheritable and ambient.
//!
//! [`PreparedCaps::apply`] does 1 and 3 for a process whose user does not change.

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
    if !add_all {
        // On top of the default set, or of nothing after `--cap-drop ALL`.
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

/// A bit mask of capabilities: bit n set for capability number n.
pub fn mask_of<'a>(caps: impl IntoIterator<Item = &'a Capability>) -> u64 {
    caps.into_iter()
        .map(|c| number(*c))
        .filter(|n| *n < 64)
        .fold(0, |m, n| m | (1u64 << n))
}

/// The mask of one capability line (`CapEff`, `CapPrm`, `CapBnd`, ...) of a
/// /proc/<pid>/status text.
pub fn status_mask(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

fn proc_mask(pid: i32, field: &str) -> Result<u64, SecurityError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|source| SecurityError::Proc { pid, source })?;
    status_mask(&status, field).ok_or_else(|| SecurityError::Proc {
        pid,
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("no {field} line in its status"),
        ),
    })
}

/// The effective capabilities of a process (`CapEff` of /proc/<pid>/status).
pub fn effective_of(pid: i32) -> Result<u64, SecurityError> {
    proc_mask(pid, "CapEff")
}

/// The bounding set of a process (`CapBnd` of /proc/<pid>/status).
pub fn bounding_of(pid: i32) -> Result<u64, SecurityError> {
    proc_mask(pid, "CapBnd")
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

/// Computes the masks of an OCI capabilities section, before fork. Capabilities this
/// kernel does not know (above /proc/sys/kernel/cap_last_cap) are left out, as runc does.
/// Never fails today; the Result leaves room for checks the caller must not skip.
pub fn prepare(caps: &LinuxCapabilities) -> Result<PreparedCaps, SecurityError> {
    let last_cap = last_cap().min(63);
    let known = if last_cap == 63 {
        u64::MAX
    } else {
        (1u64 << (last_cap + 1)) - 1
    };
    let m = |s: &Option<Capabilities>| s.as_ref().map_or(0, |s| mask_of(s.iter()) & known);
    Ok(PreparedCaps {
        bounding: m(caps.bounding()),
        effective: m(caps.effective()),
        permitted: m(caps.permitted()),
        inheritable: m(caps.inheritable()),
        ambient: m(caps.ambient()),
        last_cap,
    })
}

/// Applies an OCI capabilities section to the calling thread, for a process whose user
/// does not change. Allocates (it calls [`prepare`]): after fork, use
/// [`PreparedCaps::apply`] on a value prepared before.
pub fn apply(caps: &LinuxCapabilities) -> Result<(), SecurityError> {
    prepare(caps)?.apply()
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
    /// The bounding set, as a mask.
    pub fn bounding(&self) -> u64 {
        self.bounding
    }

    /// The effective set, as a mask.
    pub fn effective(&self) -> u64 {
        self.effective
    }

    /// Drops the bounding set, then sets the other sets: for a process whose user does
    /// not change (see the module's notes for one that does). Syscalls only.
    pub fn apply(&self) -> Result<(), SecurityError> {
        self.apply_bounding()?;
        self.apply_sets()
    }

    /// Drops every capability outside the bounding set (needs CAP_SETPCAP, so call it
    /// before the user changes). Syscalls only.
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
    /// changed, with PR_SET_KEEPCAPS so the permitted set survived it). Syscalls only.
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

    #[test]
    fn reads_masks_from_a_status_text() {
        let status = "Name:\tsh\nCapInh:\t0000000000000000\nCapPrm:\t00000000a80425fb\n\
                      CapEff:\t00000000a80425fb\nCapBnd:\t000001ffffffffff\n";
        assert_eq!(status_mask(status, "CapEff"), Some(0xa80425fb));
        assert_eq!(status_mask(status, "CapBnd"), Some(0x1ff_ffff_ffff));
        assert_eq!(status_mask(status, "CapAmb"), None);
        let me = std::process::id() as i32;
        assert!(effective_of(me).is_ok());
        let e = effective_of(-5).expect_err("no such process").to_string();
        assert!(e.contains("process -5"), "{e}");
    }

    /// Forks a child that runs `f` (syscalls only), reports its result byte on a pipe
    /// and waits for the parent to close the other pipe; returns the byte and what
    /// `look` found while the child was waiting.
    fn in_child<T>(f: impl FnOnce() -> u8, look: impl FnOnce(i32) -> T) -> (u8, T) {
        let (result_r, result_w) = nix::unistd::pipe().expect("pipe");
        let (hold_r, hold_w) = nix::unistd::pipe().expect("pipe");
        // SAFETY: the child makes syscalls only and leaves with _exit.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                drop(result_r);
                drop(hold_w);
                let byte = f();
                let _ = nix::unistd::write(&result_w, &[byte]);
                // Blocks until the parent is done looking and closes its end.
                let mut buf = [0u8; 1];
                let _ = nix::unistd::read(&hold_r, &mut buf);
                // SAFETY: ends the forked child.
                unsafe { libc::_exit(0) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(result_w);
                drop(hold_r);
                let mut buf = [0u8; 1];
                let n = nix::unistd::read(&result_r, &mut buf).expect("read the result");
                let seen = look(child.as_raw());
                drop(hold_w);
                let _ = nix::sys::wait::waitpid(child, None);
                assert_eq!(n, 1, "the child died before reporting");
                (buf[0], seen)
            }
        }
    }

    /// Real kernel: a forked child applies the default set minus NET_RAW as root; the
    /// parent reads its CapEff and CapBnd while it waits.
    #[test]
    fn applies_in_a_child() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: needs root to hold capabilities");
            return;
        }
        let lc = linux_capabilities(&resolve(&[], &s(&["NET_RAW"])).expect("resolves"), true);
        let prepared = prepare(&lc).expect("prepares");
        let (ok, seen) = in_child(
            || u8::from(prepared.apply().is_ok()),
            |pid| (effective_of(pid), bounding_of(pid)),
        );
        assert_eq!(ok, 1, "applying failed in the child");
        assert_eq!(seen.0.expect("CapEff"), 0xa80405fb);
        assert_eq!(seen.1.expect("CapBnd"), 0xa80405fb);
    }

    /// Real kernel, the order for a non-root user: bounding set, KEEPCAPS, setuid, sets.
    /// The user ends with no effective capability and the bounding set of the container.
    #[test]
    fn non_root_user_in_a_child() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: needs root to change user");
            return;
        }
        let lc = linux_capabilities(&resolve(&[], &[]).expect("resolves"), false);
        let prepared = prepare(&lc).expect("prepares");
        let (step, seen) = in_child(
            || {
                if prepared.apply_bounding().is_err() {
                    return 1;
                }
                // SAFETY: prctl, setresgid and setresuid take integers only.
                unsafe {
                    libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0);
                    if libc::setresgid(65534, 65534, 65534) != 0
                        || libc::setresuid(65534, 65534, 65534) != 0
                    {
                        return 2;
                    }
                }
                if prepared.apply_sets().is_err() {
                    return 3;
                }
                0
            },
            |pid| (effective_of(pid), bounding_of(pid)),
        );
        assert_eq!(step, 0, "step {step} failed in the child");
        assert_eq!(seen.0.expect("CapEff"), 0);
        assert_eq!(seen.1.expect("CapBnd"), 0xa80425fb);
    }
}
