//! Tests of `seccomp`.

use super::*;
use crate::security::caps;

const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

fn allowed(caps: &[Capability]) -> Vec<String> {
    allowed_names(&default_profile(caps))
}

/// What the compiled default profile answers for syscall `name` with `args`.
fn answer(prog: &BpfProgram, name: &str, args: [u64; 6]) -> u32 {
    let nr = syscalls::number(name).expect("a syscall of this architecture");
    let arch = audit_arch().expect("a supported architecture");
    bpf::run(prog, arch, u32::try_from(nr).expect("small"), args)
}

#[test]
fn default_profile_allows_ordinary_and_refuses_dangerous_calls() {
    let plain = allowed(caps::DEFAULT);
    for ok in [
        "read",
        "write",
        "execve",
        "socket",
        "clone",
        "personality",
        "capset",
        "setuid",
        "chroot",
        "ptrace",
    ] {
        assert!(plain.iter().any(|n| n == ok), "{ok} should be allowed");
    }
    for refused in [
        "keyctl",
        "add_key",
        "request_key",
        "unshare",
        "mount",
        "umount2",
        "setns",
        "reboot",
        "init_module",
        "kexec_load",
        "bpf",
        "perf_event_open",
        "io_uring_setup",
        "userfaultfd",
        "clock_settime",
        "open_by_handle_at",
    ] {
        assert!(
            !plain.iter().any(|n| n == refused),
            "{refused} should be refused"
        );
    }
    let admin = allowed(&[Capability::SysAdmin]);
    for ok in [
        "mount",
        "umount2",
        "unshare",
        "setns",
        "clone3",
        "sethostname",
    ] {
        assert!(admin.iter().any(|n| n == ok), "{ok} allowed with SYS_ADMIN");
    }
    assert!(!allowed(&[]).iter().any(|n| n == "chroot"));
    assert!(
        allowed(&[Capability::SysTime])
            .iter()
            .any(|n| n == "clock_settime")
    );
}

#[test]
fn clone_is_checked_for_namespace_flags_without_sys_admin() {
    let profile = default_profile(caps::DEFAULT);
    let clone = profile
        .syscalls()
        .as_ref()
        .expect("rules")
        .iter()
        .find(|s| s.names() == &vec!["clone".to_string()])
        .expect("a clone rule");
    let args = clone.args().as_ref().expect("arguments");
    assert_eq!(args[0].value(), 0x7e02_0000);
    assert_eq!(args[0].value_two(), Some(0));
    let json = serde_json::to_value(&profile).expect("serializes");
    assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(json["defaultErrnoRet"], 1);
    assert_eq!(json["architectures"][0], "SCMP_ARCH_X86_64");
}

#[test]
fn compiled_default_profile_answers_like_dockers() {
    let prog = compile(&default_profile(caps::DEFAULT)).expect("compiles");
    let newuser = libc::CLONE_NEWUSER as u64;
    let sigchld = libc::SIGCHLD as u64;
    assert_eq!(answer(&prog, "read", [0; 6]), ALLOW);
    assert_eq!(answer(&prog, "getpid", [0; 6]), ALLOW);
    assert_eq!(answer(&prog, "keyctl", [0; 6]), EPERM);
    assert_eq!(answer(&prog, "unshare", [newuser, 0, 0, 0, 0, 0]), EPERM);
    assert_eq!(answer(&prog, "mount", [0; 6]), EPERM);
    assert_eq!(answer(&prog, "clone", [sigchld, 0, 0, 0, 0, 0]), ALLOW);
    let threads = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
    assert_eq!(answer(&prog, "clone", [threads, 0, 0, 0, 0, 0]), ALLOW);
    assert_eq!(
        answer(&prog, "clone", [sigchld | newuser, 0, 0, 0, 0, 0]),
        EPERM
    );
    assert_eq!(answer(&prog, "clone3", [0; 6]), ENOSYS);
    assert_eq!(answer(&prog, "personality", [0x0008, 0, 0, 0, 0, 0]), ALLOW);
    assert_eq!(
        answer(&prog, "personality", [0xffff_ffff, 0, 0, 0, 0, 0]),
        ALLOW
    );
    // ADDR_NO_RANDOMIZE would turn off ASLR.
    assert_eq!(
        answer(&prog, "personality", [0x0040000, 0, 0, 0, 0, 0]),
        EPERM
    );
    assert_eq!(
        answer(&prog, "socket", [libc::AF_INET as u64, 1, 0, 0, 0, 0]),
        ALLOW
    );
    assert_eq!(answer(&prog, "socket", [AF_VSOCK, 1, 0, 0, 0, 0]), EPERM);
    let arch = audit_arch().expect("supported");
    // A syscall newer than our table: ENOSYS, so libc falls back.
    assert_eq!(bpf::run(&prog, arch, 1000, [0; 6]), ENOSYS);

    let admin = compile(&default_profile(&[Capability::SysAdmin])).expect("compiles");
    assert_eq!(answer(&admin, "mount", [0; 6]), ALLOW);
    assert_eq!(
        answer(&admin, "clone", [sigchld | newuser, 0, 0, 0, 0, 0]),
        ALLOW
    );
    assert_eq!(answer(&admin, "clone3", [0; 6]), ALLOW);
    assert_eq!(answer(&admin, "keyctl", [0; 6]), EPERM);
}

#[test]
fn unsupported_profiles_are_refused_with_a_reason() {
    let mut profile = default_profile(caps::DEFAULT);
    let mut notify = rule(&["getpid"], LinuxSeccompAction::ScmpActNotify);
    notify.set_errno_ret(None);
    let mut with_notify = profile.clone();
    let mut rules = profile.syscalls().clone().unwrap_or_default();
    rules.push(notify);
    with_notify.set_syscalls(Some(rules));
    let e = compile(&with_notify).expect_err("no agent").to_string();
    assert!(e.contains("SCMP_ACT_NOTIFY") && e.contains("runc"), "{e}");
    profile.set_default_errno_ret(Some(5000));
    let e = compile(&profile).expect_err("errno too big").to_string();
    assert!(e.contains("5000 out of range"), "{e}");
}

#[test]
fn options_are_checked() {
    let opts = |v: &[&str]| security_options(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert!(!unconfined(&[]).expect("empty is fine"));
    assert!(unconfined(&["seccomp=unconfined".into()]).expect("known"));
    assert!(unconfined(&["seccomp:unconfined".into()]).expect("old spelling"));
    let o = opts(&["no-new-privileges"]).expect("known");
    assert!(o.no_new_privileges && !o.seccomp_unconfined);
    assert!(
        !opts(&["no-new-privileges=false"])
            .expect("known")
            .no_new_privileges
    );
    assert!(
        opts(&["no-new-privileges:true"])
            .expect("known")
            .no_new_privileges
    );
    assert!(opts(&["apparmor=unconfined", "label=disable"]).is_ok());
    for bad in [
        "apparmor=docker-default",
        "seccomp=/tmp/p.json",
        "no-new-privileges=maybe",
    ] {
        let e = opts(&[bad]).expect_err(bad).to_string();
        assert!(
            e.contains(&format!("invalid --security-opt \"{bad}\"")),
            "{e}"
        );
        assert!(e.contains("seccomp=unconfined"), "{e}");
    }
}

/// Forks; the child runs `f` (async-signal-safe work only) and exits with its code.
fn in_child(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child runs only syscalls on memory prepared before fork, and
    // leaves with _exit.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            let code = f();
            // SAFETY: ends the forked child without running the parent's atexit work.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            match nix::sys::wait::waitpid(child, None).expect("waitpid") {
                nix::sys::wait::WaitStatus::Exited(_, code) => code,
                other => panic!("child ended with {other:?}"),
            }
        }
    }
}

fn errno_of(rc: libc::c_long) -> i32 {
    if rc == -1 { nix::Error::last_raw() } else { 0 }
}

/// Real kernel: a forked child installs the default filter; unshare and keyctl fail
/// with EPERM, clone3 with ENOSYS, getpid still works.
#[test]
fn filter_refuses_in_a_child() {
    let prog = compile(&default_profile(caps::DEFAULT)).expect("compiles");
    let code = in_child(|| {
        // Without CAP_SYS_ADMIN a filter needs no_new_privs.
        if set_no_new_privs().is_err() || install(&prog).is_err() {
            return 10;
        }
        // SAFETY: raw syscalls with integer arguments.
        let unshare = errno_of(unsafe { libc::unshare(libc::CLONE_NEWUSER) }.into());
        // SAFETY: as above.
        let keyctl = errno_of(unsafe { libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0) });
        // SAFETY: clone3 with a null argument would fail before doing anything.
        let clone3 = errno_of(unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) });
        // SAFETY: as above.
        let vsock = errno_of(unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) }.into());
        // SAFETY: getpid has no arguments.
        let pid = unsafe { libc::getpid() };
        match (unshare, keyctl, clone3, vsock) {
            (libc::EPERM, libc::EPERM, libc::ENOSYS, libc::EPERM) if pid > 0 => 0,
            (e, _, _, _) if e != libc::EPERM => 11,
            (_, e, _, _) if e != libc::EPERM => 12,
            (_, _, e, _) if e != libc::ENOSYS => 13,
            (_, _, _, e) if e != libc::EPERM => 14,
            _ => 15,
        }
    });
    assert_eq!(code, 0, "see the codes in the child");
}

/// Real kernel, the builtin runtime's order: filter first (still holding
/// CAP_SYS_ADMIN, no no_new_privs), then the bounding set, the user, the sets. The
/// filter must let the runtime's own calls through.
#[test]
fn runtime_order_works_under_the_filter() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: needs root");
        return;
    }
    let caps = caps::resolve(&[], &[]).expect("default set");
    let prog = compile(&default_profile(&caps)).expect("compiles");
    let prepared = caps::prepare(&caps::linux_capabilities(&caps, false)).expect("prepares");
    let code = in_child(|| {
        if install(&prog).is_err() {
            return 20;
        }
        if prepared.apply_bounding().is_err() {
            return 21;
        }
        // SAFETY: prctl, setresgid and setresuid take integers only.
        let changed = unsafe {
            libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0);
            libc::setresgid(65534, 65534, 65534) == 0 && libc::setresuid(65534, 65534, 65534) == 0
        };
        if !changed {
            return 22;
        }
        if prepared.apply_sets().is_err() {
            return 23;
        }
        // SAFETY: raw syscall with integer arguments.
        if errno_of(unsafe { libc::unshare(libc::CLONE_NEWNS) }.into()) != libc::EPERM {
            return 24;
        }
        0
    });
    assert_eq!(code, 0, "see the codes in the child");
}
