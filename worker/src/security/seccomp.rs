//! The default seccomp profile, with the semantics of Docker's: every syscall refused with
//! EPERM unless listed; the listed ones allowed, some only for a capability the container
//! holds, some only with safe arguments; `clone3` answered with ENOSYS so libc falls back
//! to `clone`, whose namespace flags can be checked. The profile is our own table, in the
//! OCI form; `compile` turns any OCI profile into BPF for the builtin runtime.

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};
use seccompiler::BpfProgram;

use super::{SecurityError, bpf, syscalls};

/// Syscalls every container may make. As in Docker's profile on kernels from 4.8 on,
/// ptrace and process_vm_* are among them: the kernel's ptrace access checks (and the
/// missing CAP_SYS_PTRACE) keep them to the container's own processes.
const ALLOWED: &str = "accept accept4 access adjtimex alarm bind brk cachestat capget capset \
chdir chmod chown chown32 clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 \
clock_gettime clock_gettime64 clock_nanosleep clock_nanosleep_time64 close close_range connect \
copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old \
epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit \
exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod \
fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock \
fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate \
ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv futex_wake futimesat getcpu \
getcwd getdents getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups \
getgroups32 getitimer getpeername getpgid getpgrp getpid getppid getpriority getrandom \
getresgid getresgid32 getresuid getresuid32 getrlimit get_robust_list getrusage getsid \
getsockname getsockopt get_thread_area gettid gettimeofday getuid getuid32 getxattr \
inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy \
io_getevents io_pgetevents io_pgetevents_time64 ioprio_get ioprio_set io_setup io_submit ipc \
kill landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr \
link linkat listen listxattr llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64 \
madvise map_shadow_stack membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod \
mknodat mlock mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open \
mq_timedreceive mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap msgctl \
msgget msgrcv msgsnd msync munlock munlockall munmap name_to_handle_at nanosleep newfstatat \
_newselect open openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc \
pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl process_vm_readv process_vm_writev pread64 preadv preadv2 prlimit64 \
process_mrelease pselect6 pselect6_time64 ptrace pwrite64 pwritev pwritev2 read readahead \
readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages \
removexattr rename renameat renameat2 restart_syscall rmdir rseq rt_sigaction rt_sigpending \
rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait \
rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam \
sched_get_priority_max sched_get_priority_min sched_getscheduler sched_rr_get_interval \
sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam sched_setscheduler \
sched_yield seccomp select semctl semget semop semtimedop semtimedop_time64 send sendfile \
sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32 \
setgroups setgroups32 setitimer setpgid setpriority setregid setregid32 setresgid setresgid32 \
setresuid setresuid32 setreuid setreuid32 setrlimit set_robust_list setsid setsockopt \
set_thread_area set_tid_address setuid setuid32 setxattr shmat shmctl shmdt shmget shutdown \
sigaltstack signalfd signalfd4 sigprocmask sigreturn socketcall socketpair splice stat stat64 \
statfs statfs64 statx symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time \
timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime \
timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime \
timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat utime \
utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev \
mseal uretprobe getxattrat listxattrat setxattrat removexattrat listmount statmount \
file_getattr file_setattr";

/// Syscalls allowed only with a capability.
const BY_CAPABILITY: &[(Capability, &str)] = &[
    (
        Capability::SysAdmin,
        "bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie mount \
         mount_setattr move_mount open_tree open_tree_attr perf_event_open quotactl quotactl_fd setdomainname \
         sethostname setns syslog umount umount2 unshare",
    ),
    (Capability::SysBoot, "reboot"),
    (Capability::SysChroot, "chroot"),
    (
        Capability::SysModule,
        "delete_module init_module finit_module",
    ),
    (Capability::SysPacct, "acct"),
    (
        Capability::SysPtrace,
        "kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace",
    ),
    (Capability::SysRawio, "iopl ioperm"),
    (
        Capability::SysTime,
        "settimeofday stime clock_settime clock_settime64",
    ),
    (Capability::SysTtyConfig, "vhangup"),
    (
        Capability::SysNice,
        "get_mempolicy mbind set_mempolicy set_mempolicy_home_node",
    ),
    (Capability::Syslog, "syslog"),
    (Capability::Bpf, "bpf"),
    (Capability::Perfmon, "perf_event_open"),
    (Capability::DacReadSearch, "open_by_handle_at"),
];

/// The namespace flags of clone(2): refused without CAP_SYS_ADMIN.
const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// personality(2) values that change nothing dangerous.
const SAFE_PERSONALITIES: &[u64] = &[0x0, 0x0008, 0x20000, 0x20008, 0xffff_ffff];

/// AF_VSOCK: a way out of the container to the host's hypervisor.
const AF_VSOCK: u64 = 40;

fn rule(names: &[&str], action: LinuxSeccompAction) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names.iter().map(|n| n.to_string()).collect())
        .set_action(action);
    s
}

fn arg(
    index: usize,
    value: u64,
    value_two: Option<u64>,
    op: LinuxSeccompOperator,
) -> oci_spec::runtime::LinuxSeccompArg {
    let mut b = LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .op(op);
    if let Some(v2) = value_two {
        b = b.value_two(v2);
    }
    b.build().expect("every field of a seccomp argument is set")
}

/// The default profile for a container holding `caps`.
pub fn default_profile(caps: &[Capability]) -> LinuxSeccomp {
    let allow = LinuxSeccompAction::ScmpActAllow;
    let mut syscalls = vec![rule(&ALLOWED.split_whitespace().collect::<Vec<_>>(), allow)];
    let has_admin = caps.contains(&Capability::SysAdmin);
    for (cap, names) in BY_CAPABILITY {
        if caps.contains(cap) {
            syscalls.push(rule(&names.split_whitespace().collect::<Vec<_>>(), allow));
        }
    }
    if !has_admin {
        // libseccomp's order for a masked compare: `value` is the mask, `valueTwo` the
        // expected result.
        let mut clone = rule(&["clone"], allow);
        clone.set_args(Some(vec![arg(
            0,
            CLONE_NAMESPACE_FLAGS,
            Some(0),
            LinuxSeccompOperator::ScmpCmpMaskedEq,
        )]));
        syscalls.push(clone);
        let mut clone3 = rule(&["clone3"], LinuxSeccompAction::ScmpActErrno);
        clone3.set_errno_ret(Some(libc::ENOSYS as u32));
        syscalls.push(clone3);
    }
    for p in SAFE_PERSONALITIES {
        let mut r = rule(&["personality"], allow);
        r.set_args(Some(vec![arg(
            0,
            *p,
            None,
            LinuxSeccompOperator::ScmpCmpEq,
        )]));
        syscalls.push(r);
    }
    let mut socket = rule(&["socket"], allow);
    socket.set_args(Some(vec![arg(
        0,
        AF_VSOCK,
        None,
        LinuxSeccompOperator::ScmpCmpNe,
    )]));
    syscalls.push(socket);
    if cfg!(target_arch = "x86_64") {
        syscalls.push(rule(&["arch_prctl", "modify_ldt"], allow));
    } else if cfg!(target_arch = "aarch64") {
        syscalls.push(rule(
            &[
                "arm_fadvise64_64",
                "arm_sync_file_range",
                "sync_file_range2",
                "breakpoint",
                "cacheflush",
                "set_tls",
            ],
            allow,
        ));
    }
    let mut profile = LinuxSeccomp::default();
    profile
        .set_default_action(LinuxSeccompAction::ScmpActErrno)
        .set_default_errno_ret(Some(libc::EPERM as u32))
        .set_architectures(Some(architectures()))
        .set_syscalls(Some(syscalls));
    profile
}

fn architectures() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![Arch::ScmpArchNative]
    }
}

/// What `--security-opt` asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SecurityOptions {
    /// `seccomp=unconfined`: no seccomp filter.
    pub seccomp_unconfined: bool,
    /// `no-new-privileges`: set the no_new_privs bit before the program starts.
    pub no_new_privileges: bool,
}

/// Parses `--security-opt` values the way Docker spells them (`key=value`, or the older
/// `key:value`). `apparmor=unconfined` and `label=disable` are accepted as what shoal
/// does anyway; anything else is refused with the list of what is supported.
pub fn security_options(security_opt: &[String]) -> Result<SecurityOptions, SecurityError> {
    let mut out = SecurityOptions::default();
    for opt in security_opt {
        let bad = || SecurityError::UnknownOption(opt.clone());
        let (key, value) = match opt.split_once(['=', ':']) {
            Some((k, v)) => (k, Some(v)),
            None => (opt.as_str(), None),
        };
        match (key, value) {
            ("seccomp", Some("unconfined")) => out.seccomp_unconfined = true,
            ("no-new-privileges", None) => out.no_new_privileges = true,
            ("no-new-privileges", Some(v)) => {
                out.no_new_privileges = match v.to_ascii_lowercase().as_str() {
                    "true" | "1" | "t" => true,
                    "false" | "0" | "f" => false,
                    _ => return Err(bad()),
                }
            }
            ("apparmor", Some("unconfined")) | ("label", Some("disable")) => {}
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

/// Whether `--security-opt` asks for no seccomp filter; rejects options we do not know.
pub fn unconfined(security_opt: &[String]) -> Result<bool, SecurityError> {
    Ok(security_options(security_opt)?.seccomp_unconfined)
}

/// A profile compiled for this architecture, ready to install after fork.
pub type CompiledSeccomp = BpfProgram;

fn profile_error(msg: impl Into<String>) -> SecurityError {
    SecurityError::Profile(msg.into())
}

/// The seccomp return value of an OCI action. A rule's ERRNO without errnoRet means
/// EPERM, as under runc and crun.
fn ret_of(action: LinuxSeccompAction, errno: Option<u32>) -> Result<u32, SecurityError> {
    let data = |what: &str| -> Result<u32, SecurityError> {
        let v = errno.unwrap_or(libc::EPERM as u32);
        if v > 4095 {
            return Err(profile_error(format!(
                "{what} {v} out of range: the kernel accepts 0 to 4095"
            )));
        }
        Ok(v)
    };
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => libc::SECCOMP_RET_ALLOW,
        LinuxSeccompAction::ScmpActErrno => libc::SECCOMP_RET_ERRNO | data("errnoRet")?,
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            libc::SECCOMP_RET_KILL_THREAD
        }
        LinuxSeccompAction::ScmpActKillProcess => libc::SECCOMP_RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActTrap => libc::SECCOMP_RET_TRAP,
        LinuxSeccompAction::ScmpActLog => libc::SECCOMP_RET_LOG,
        LinuxSeccompAction::ScmpActTrace => libc::SECCOMP_RET_TRACE | data("trace value")?,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(profile_error(
                "SCMP_ACT_NOTIFY needs a seccomp agent, which the builtin runtime does not run: use --runtime runc",
            ));
        }
    })
}

fn condition(a: &oci_spec::runtime::LinuxSeccompArg) -> Result<bpf::Condition, SecurityError> {
    let v = a.value();
    let cmp = match a.op() {
        LinuxSeccompOperator::ScmpCmpNe => bpf::Cmp::Ne(v),
        LinuxSeccompOperator::ScmpCmpLt => bpf::Cmp::Lt(v),
        LinuxSeccompOperator::ScmpCmpLe => bpf::Cmp::Le(v),
        LinuxSeccompOperator::ScmpCmpEq => bpf::Cmp::Eq(v),
        LinuxSeccompOperator::ScmpCmpGe => bpf::Cmp::Ge(v),
        LinuxSeccompOperator::ScmpCmpGt => bpf::Cmp::Gt(v),
        // libseccomp's order: `value` is the mask, `valueTwo` the expected result.
        LinuxSeccompOperator::ScmpCmpMaskedEq => bpf::Cmp::MaskedEq {
            mask: v,
            value: a.value_two().unwrap_or(0),
        },
    };
    let index = u8::try_from(a.index())
        .ok()
        .filter(|i| *i <= 5)
        .ok_or_else(|| {
            profile_error(format!(
                "argument index {} out of range: syscalls have arguments 0 to 5",
                a.index()
            ))
        })?;
    Ok(bpf::Condition { index, cmp })
}

/// The AUDIT_ARCH_* value of this machine.
fn audit_arch() -> Result<u32, SecurityError> {
    if cfg!(target_arch = "x86_64") {
        Ok(0xC000_003E)
    } else if cfg!(target_arch = "aarch64") {
        Ok(0xC000_00B7)
    } else if cfg!(target_arch = "riscv64") {
        Ok(0xC000_00F3)
    } else {
        Err(profile_error(
            "the builtin runtime has no seccomp support on this architecture: use --runtime runc or --security-opt seccomp=unconfined",
        ))
    }
}

/// Compiles an OCI profile into one BPF program for this machine's architecture, before
/// fork. Names this architecture lacks are skipped, as libseccomp does. Syscalls of this
/// architecture are filtered; those of its 32-bit companions (listed in the profile for
/// runc and crun) are killed, since the number table is 64-bit only. When the default is
/// an errno, syscalls newer than shoal's table answer ENOSYS instead, so that libc falls
/// back to an older call rather than fail.
pub fn compile(profile: &LinuxSeccomp) -> Result<BpfProgram, SecurityError> {
    if profile.listener_path().is_some() {
        return Err(profile_error(
            "listenerPath needs a seccomp agent, which the builtin runtime does not run: use --runtime runc",
        ));
    }
    if let Some(flags) = profile.flags().as_ref().filter(|f| !f.is_empty()) {
        return Err(profile_error(format!(
            "filter flags {flags:?} are not supported by the builtin runtime: use --runtime runc"
        )));
    }
    let default = ret_of(profile.default_action(), profile.default_errno_ret())?;
    let mut plan = bpf::Plan {
        arch: audit_arch()?,
        default,
        ..Default::default()
    };
    if profile.default_action() == LinuxSeccompAction::ScmpActErrno {
        let highest = u32::try_from(syscalls::highest()).expect("syscall numbers are small");
        plan.newer = Some((highest, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32));
    }
    for s in profile.syscalls().as_deref().unwrap_or_default() {
        let rule = bpf::Rule {
            conditions: s
                .args()
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(condition)
                .collect::<Result<_, _>>()?,
            ret: ret_of(s.action(), s.errno_ret())?,
        };
        for nr in s.names().iter().filter_map(|n| syscalls::number(n)) {
            let nr = u32::try_from(nr).expect("syscall numbers are small");
            plan.rules.entry(nr).or_default().push(rule.clone());
        }
    }
    bpf::assemble(&plan).map_err(profile_error)
}

/// Sets the no_new_privs bit of the calling thread: exec can then gain no privilege
/// (setuid bits and file capabilities are ignored), and a seccomp filter can be installed
/// without CAP_SYS_ADMIN. Syscalls only, safe after fork.
pub fn set_no_new_privs() -> Result<(), SecurityError> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(SecurityError::Sys {
            what: "setting no_new_privs",
            source: nix::Error::last(),
        });
    }
    Ok(())
}

/// Installs a compiled profile in the calling thread; it is inherited across fork and
/// exec and cannot be removed. Syscalls only, safe after fork.
///
/// The kernel accepts a filter from a thread that has no_new_privs set or holds
/// CAP_SYS_ADMIN. This function sets neither, because no_new_privs changes what the
/// container's programs may do (Docker leaves it off unless `no-new-privileges` is
/// asked for). So the caller either installs the filter while it still holds
/// CAP_SYS_ADMIN, before dropping capabilities, or calls [`set_no_new_privs`] first and
/// installs as late as possible, right before exec. Either way, every syscall made after
/// this one must be allowed by the filter; the default profile allows what the runtime
/// needs (prctl, capset, setgroups, setresuid, setresgid, chdir, execve).
pub fn install(prog: &BpfProgram) -> Result<(), SecurityError> {
    let Ok(len) = u16::try_from(prog.len()) else {
        return Err(SecurityError::Sys {
            what: "installing the seccomp filter (the program is too long)",
            source: nix::Error::E2BIG,
        });
    };
    let fprog = libc::sock_fprog {
        len,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: seccompiler's sock_filter has the kernel's layout; the kernel copies the
    // program, and `fprog` points into `prog`, which outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        let source = nix::Error::last();
        let what = if source == nix::Error::EACCES {
            "installing the seccomp filter (set no_new_privs first, or install it before dropping CAP_SYS_ADMIN)"
        } else {
            "installing the seccomp filter"
        };
        return Err(SecurityError::Sys { what, source });
    }
    Ok(())
}

/// The names a profile allows, for tests and `inspect`.
pub fn allowed_names(profile: &LinuxSeccomp) -> Vec<String> {
    profile
        .syscalls()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter(|s| s.action() == LinuxSeccompAction::ScmpActAllow)
        .flat_map(|s| s.names().clone())
        .collect()
}

#[cfg(test)]
#[path = "seccomp_tests.rs"]
mod tests;
