//! The default seccomp profile, with the semantics of Docker's: every syscall refused with
//! EPERM unless listed; the listed ones allowed, some only for a capability the container
//! holds, some only with safe arguments; `clone3` answered with ENOSYS so libc falls back
//! to `clone`, whose namespace flags can be checked. The profile is our own table, in the
//! OCI form; `compile` turns any OCI profile into BPF for the builtin runtime.

use std::collections::BTreeMap;

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::SecurityError;
use super::syscalls;

/// Syscalls every container may make.
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
pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64 \
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
utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev";

/// Syscalls allowed only with a capability.
const BY_CAPABILITY: &[(Capability, &str)] = &[
    (
        Capability::SysAdmin,
        "bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie mount \
         mount_setattr move_mount open_tree perf_event_open quotactl quotactl_fd setdomainname \
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
        "kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev",
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

/// Whether `--security-opt` asks for no seccomp filter; rejects options we do not know.
pub fn unconfined(security_opt: &[String]) -> Result<bool, SecurityError> {
    let mut unconfined = false;
    for opt in security_opt {
        match opt.as_str() {
            "seccomp=unconfined" | "seccomp:unconfined" => unconfined = true,
            "no-new-privileges"
            | "no-new-privileges=true"
            | "no-new-privileges:true"
            | "no-new-privileges=false"
            | "no-new-privileges:false" => {}
            other => return Err(SecurityError::UnknownOption(other.to_string())),
        }
    }
    Ok(unconfined)
}

/// A compiled profile: one BPF program per distinct action, installed in order (the
/// kernel applies the most restrictive answer, and the latest filter among equals).
#[derive(Debug, Clone, Default)]
pub struct CompiledSeccomp {
    programs: Vec<BpfProgram>,
}

fn action_of(a: LinuxSeccompAction, errno: Option<u32>, default_errno: u32) -> SeccompAction {
    match a {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno(errno.unwrap_or(default_errno)),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno.unwrap_or(0)),
        // User notification needs a listener we do not run: refuse instead.
        LinuxSeccompAction::ScmpActNotify => SeccompAction::Errno(libc::EPERM as u32),
    }
}

fn condition(a: &oci_spec::runtime::LinuxSeccompArg) -> Result<SeccompCondition, SecurityError> {
    let op = match a.op() {
        LinuxSeccompOperator::ScmpCmpNe => SeccompCmpOp::Ne,
        LinuxSeccompOperator::ScmpCmpLt => SeccompCmpOp::Lt,
        LinuxSeccompOperator::ScmpCmpLe => SeccompCmpOp::Le,
        LinuxSeccompOperator::ScmpCmpEq => SeccompCmpOp::Eq,
        LinuxSeccompOperator::ScmpCmpGe => SeccompCmpOp::Ge,
        LinuxSeccompOperator::ScmpCmpGt => SeccompCmpOp::Gt,
        // libseccomp's order: `value` is the mask, `valueTwo` the expected value.
        LinuxSeccompOperator::ScmpCmpMaskedEq => SeccompCmpOp::MaskedEq(a.value()),
    };
    let value = match a.op() {
        LinuxSeccompOperator::ScmpCmpMaskedEq => a.value_two().unwrap_or(0),
        _ => a.value(),
    };
    let index = u8::try_from(a.index()).map_err(|_| {
        SecurityError::Profile(format!("argument index {} out of range", a.index()))
    })?;
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| SecurityError::Profile(e.to_string()))
}

fn target_arch() -> Result<TargetArch, SecurityError> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else if cfg!(target_arch = "riscv64") {
        Ok(TargetArch::riscv64)
    } else {
        Err(SecurityError::Profile(
            "seccomp filters are not supported on this architecture by the builtin runtime".into(),
        ))
    }
}

/// Compiles an OCI profile into BPF for this architecture. Names this architecture lacks
/// are skipped, as libseccomp does.
pub fn compile(profile: &LinuxSeccomp) -> Result<CompiledSeccomp, SecurityError> {
    let arch = target_arch()?;
    let default_errno = profile.default_errno_ret().unwrap_or(libc::EPERM as u32);
    let default_action = action_of(profile.default_action(), None, default_errno);
    // Group the rules by action; within a group, rules for one syscall are alternatives,
    // and an unconditional one makes the others moot.
    struct Group {
        action: SeccompAction,
        rules: BTreeMap<i64, Vec<SeccompRule>>,
        unconditional: std::collections::BTreeSet<i64>,
    }
    let mut groups: Vec<Group> = Vec::new();
    for s in profile.syscalls().as_deref().unwrap_or_default() {
        let action = action_of(s.action(), s.errno_ret(), default_errno);
        if action == default_action {
            continue;
        }
        let rule = match s.args().as_deref() {
            Some(args) if !args.is_empty() => Some(
                SeccompRule::new(args.iter().map(condition).collect::<Result<Vec<_>, _>>()?)
                    .map_err(|e| SecurityError::Profile(e.to_string()))?,
            ),
            _ => None,
        };
        let idx = match groups.iter().position(|g| g.action == action) {
            Some(i) => i,
            None => {
                groups.push(Group {
                    action: action.clone(),
                    rules: BTreeMap::new(),
                    unconditional: Default::default(),
                });
                groups.len() - 1
            }
        };
        let group = &mut groups[idx];
        for nr in s.names().iter().filter_map(|n| syscalls::number(n)) {
            match &rule {
                None => {
                    group.unconditional.insert(nr);
                }
                Some(r) => group.rules.entry(nr).or_default().push(r.clone()),
            }
        }
    }
    for g in &mut groups {
        for nr in &g.unconditional {
            // seccompiler reads an empty rule list as "always matches".
            g.rules.insert(*nr, Vec::new());
        }
    }
    let mut groups: Vec<(SeccompAction, BTreeMap<i64, Vec<SeccompRule>>)> =
        groups.into_iter().map(|g| (g.action, g.rules)).collect();
    // The allow group (or the default's opposite) goes first with the profile's default
    // as its mismatch action; every other group is a filter of its own that lets
    // everything else through.
    groups.sort_by_key(|(a, _)| usize::from(*a != SeccompAction::Allow));
    let mut programs = Vec::new();
    if groups
        .first()
        .is_none_or(|(a, _)| *a != SeccompAction::Allow)
    {
        // No allow rules at all: one filter with the default for everything.
        groups.insert(0, (SeccompAction::Allow, BTreeMap::new()));
    }
    for (i, (action, rules)) in groups.into_iter().enumerate() {
        let (mismatch, matched) = if i == 0 {
            (default_action.clone(), action)
        } else {
            (SeccompAction::Allow, action)
        };
        let filter = SeccompFilter::new(rules, mismatch, matched, arch)
            .map_err(|e| SecurityError::Profile(e.to_string()))?;
        programs
            .push(BpfProgram::try_from(filter).map_err(|e| SecurityError::Profile(e.to_string()))?);
    }
    Ok(CompiledSeccomp { programs })
}

/// Installs a compiled profile in the calling thread. Without no_new_privs this needs
/// CAP_SYS_ADMIN, so the builtin runtime calls it before dropping capabilities.
pub fn install(compiled: &CompiledSeccomp) -> Result<(), SecurityError> {
    for prog in &compiled.programs {
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: the kernel copies the program it is given; `fprog` points into `prog`,
        // which outlives the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &fprog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(SecurityError::Sys {
                what: "installing the seccomp filter",
                source: nix::Error::last(),
            });
        }
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
mod tests {
    use super::*;

    fn allowed(caps: &[Capability]) -> Vec<String> {
        allowed_names(&default_profile(caps))
    }

    #[test]
    fn default_profile_allows_ordinary_and_refuses_dangerous_calls() {
        let plain = allowed(super::super::caps::DEFAULT);
        for ok in [
            "read",
            "write",
            "execve",
            "socket",
            "clone",
            "personality",
            "capset",
            "setuid",
        ] {
            assert!(plain.iter().any(|n| n == ok), "{ok} should be allowed");
        }
        for refused in [
            "keyctl",
            "add_key",
            "request_key",
            "unshare",
            "mount",
            "setns",
            "reboot",
            "init_module",
            "kexec_load",
        ] {
            assert!(
                !plain.iter().any(|n| n == refused),
                "{refused} should be refused"
            );
        }
        let admin = allowed(&[Capability::SysAdmin]);
        for ok in ["mount", "unshare", "setns", "clone3"] {
            assert!(admin.iter().any(|n| n == ok), "{ok} allowed with SYS_ADMIN");
        }
    }

    #[test]
    fn clone_is_checked_for_namespace_flags_without_sys_admin() {
        let profile = default_profile(super::super::caps::DEFAULT);
        let clone = profile
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .find(|s| s.names() == &vec!["clone".to_string()])
            .expect("a clone rule");
        let args = clone.args().as_ref().unwrap();
        assert_eq!(args[0].value(), 0x7e02_0000);
        assert_eq!(args[0].value_two(), Some(0));
        let json = serde_json::to_value(&profile).unwrap();
        assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(json["defaultErrnoRet"], 1);
    }

    #[test]
    fn options_are_checked() {
        assert!(!unconfined(&[]).unwrap());
        assert!(unconfined(&["seccomp=unconfined".into()]).unwrap());
        assert!(!unconfined(&["no-new-privileges".into()]).unwrap());
        let e = unconfined(&["apparmor=x".into()]).unwrap_err().to_string();
        assert!(e.contains("invalid --security-opt \"apparmor=x\""), "{e}");
    }

    #[test]
    fn compiles_to_one_program_per_action() {
        let compiled = compile(&default_profile(super::super::caps::DEFAULT)).unwrap();
        // Allow-list with EPERM default, plus clone3's ENOSYS.
        assert_eq!(compiled.programs.len(), 2);
        assert!(compiled.programs.iter().all(|p| !p.is_empty()));
    }

    /// Real kernel: a forked child installs the default filter; unshare and keyctl fail
    /// with EPERM, clone3 with ENOSYS, getpid still works.
    #[test]
    fn filter_refuses_in_a_child() {
        let compiled = compile(&default_profile(super::super::caps::DEFAULT)).unwrap();
        // SAFETY: the child makes syscalls only and leaves with _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // Without CAP_SYS_ADMIN (tests may run unprivileged) a filter needs NNP.
                // SAFETY: prctl with integer arguments.
                unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                let code = if install(&compiled).is_err() {
                    10
                } else {
                    // SAFETY: raw syscalls with integer arguments.
                    let unshare = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
                    let unshare_errno = nix::Error::last_raw();
                    // SAFETY: as above.
                    let keyctl = unsafe { libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0) };
                    let keyctl_errno = nix::Error::last_raw();
                    // SAFETY: clone3 with a null argument fails before doing anything.
                    let clone3 = unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) };
                    let clone3_errno = nix::Error::last_raw();
                    // SAFETY: getpid has no arguments.
                    let pid = unsafe { libc::getpid() };
                    if unshare != -1 || unshare_errno != libc::EPERM {
                        11
                    } else if keyctl != -1 || keyctl_errno != libc::EPERM {
                        12
                    } else if clone3 != -1 || clone3_errno != libc::ENOSYS {
                        13
                    } else if pid <= 0 {
                        14
                    } else {
                        0
                    }
                };
                // SAFETY: ends the forked child.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
