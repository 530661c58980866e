//! Assembles a seccomp filter in classic BPF from per-syscall rules. One program carries
//! every action: for a syscall, the first conditional rule whose conditions all hold
//! decides, then its unconditional rule, then the profile's default. Arguments are
//! compared as 64-bit unsigned values, in two 32-bit halves, as libseccomp does.
//!
//! Layout: check the architecture (any other is killed, so a 32-bit entry cannot slip
//! past a table of 64-bit numbers), load the number, answer syscalls newer than our table
//! (so libc falls back), then one block per syscall in ascending order (the common calls
//! have small numbers and are found first), each ending in a return.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, sock_filter};

/// A comparison of one syscall argument, with libseccomp's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cmp {
    Eq(u64),
    Ne(u64),
    Lt(u64),
    Le(u64),
    Gt(u64),
    Ge(u64),
    /// `arg & mask == value`.
    MaskedEq {
        mask: u64,
        value: u64,
    },
}

/// A comparison of argument `index` (0 to 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Condition {
    pub index: u8,
    pub cmp: Cmp,
}

/// When every condition holds (or there are none), the filter returns `ret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rule {
    pub conditions: Vec<Condition>,
    pub ret: u32,
}

/// Everything a filter decides.
#[derive(Debug, Clone, Default)]
pub(super) struct Plan {
    /// The AUDIT_ARCH_* value of the only architecture let through.
    pub arch: u32,
    /// Rules by syscall number, in the profile's order.
    pub rules: BTreeMap<u32, Vec<Rule>>,
    /// The answer for every syscall without a matching rule.
    pub default: u32,
    /// The highest syscall number known, and the answer for any above it.
    pub newer: Option<(u32, u32)>,
}

// Instruction classes and modes (linux/filter.h); libc types them as u32.
const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const AND_K: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGT_K: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

// Offsets in struct seccomp_data.
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARGS: u32 = 16;

fn insn(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Where a conditional jump goes: on, a fixed number further, or past the rule's return.
#[derive(Debug, Clone, Copy)]
enum To {
    Next,
    Skip(u8),
    Fail,
}

struct Pending {
    code: u16,
    k: u32,
    jt: To,
    jf: To,
}

fn load(k: u32) -> Pending {
    Pending {
        code: LD_W_ABS,
        k,
        jt: To::Next,
        jf: To::Next,
    }
}

fn op(code: u16, k: u32, jt: To, jf: To) -> Pending {
    Pending { code, k, jt, jf }
}

/// The offsets of the low and high halves of argument `index`.
fn halves(index: u8) -> (u32, u32) {
    let base = ARGS + 8 * u32::from(index);
    if cfg!(target_endian = "little") {
        (base, base + 4)
    } else {
        (base + 4, base)
    }
}

fn split(v: u64) -> (u32, u32) {
    (v as u32, (v >> 32) as u32)
}

/// Code that falls through when the condition holds and jumps to `Fail` when not.
fn condition(c: &Condition, out: &mut Vec<Pending>) {
    use To::{Fail, Next, Skip};
    let (lo_at, hi_at) = halves(c.index);
    match c.cmp {
        Cmp::Eq(v) => {
            let (lo, hi) = split(v);
            out.extend([
                load(hi_at),
                op(JEQ_K, hi, Next, Fail),
                load(lo_at),
                op(JEQ_K, lo, Next, Fail),
            ]);
        }
        Cmp::MaskedEq { mask, value } => {
            let ((mlo, mhi), (lo, hi)) = (split(mask), split(value));
            out.extend([
                load(hi_at),
                op(AND_K, mhi, Next, Next),
                op(JEQ_K, hi, Next, Fail),
                load(lo_at),
                op(AND_K, mlo, Next, Next),
                op(JEQ_K, lo, Next, Fail),
            ]);
        }
        Cmp::Ne(v) => {
            let (lo, hi) = split(v);
            out.extend([
                load(hi_at),
                op(JEQ_K, hi, Next, Skip(2)),
                load(lo_at),
                op(JEQ_K, lo, Fail, Next),
            ]);
        }
        Cmp::Gt(v) | Cmp::Ge(v) => {
            let (lo, hi) = split(v);
            let low = if matches!(c.cmp, Cmp::Gt(_)) {
                JGT_K
            } else {
                JGE_K
            };
            out.extend([
                load(hi_at),
                op(JGT_K, hi, Skip(3), Next),
                op(JEQ_K, hi, Next, Fail),
                load(lo_at),
                op(low, lo, Next, Fail),
            ]);
        }
        Cmp::Lt(v) | Cmp::Le(v) => {
            // The negations of Ge and Gt.
            let (lo, hi) = split(v);
            let low = if matches!(c.cmp, Cmp::Lt(_)) {
                JGE_K
            } else {
                JGT_K
            };
            out.extend([
                load(hi_at),
                op(JGT_K, hi, Fail, Next),
                op(JEQ_K, hi, Next, Skip(2)),
                load(lo_at),
                op(low, lo, Fail, Next),
            ]);
        }
    }
}

/// The code of one syscall: each conditional rule, then the fallback return.
fn block(rules: &[Rule], default: u32) -> Result<Vec<sock_filter>, String> {
    let mut out = Vec::new();
    for rule in rules.iter().filter(|r| !r.conditions.is_empty()) {
        let mut pending = Vec::new();
        for c in &rule.conditions {
            if c.index > 5 {
                return Err(format!(
                    "argument index {} out of range: syscalls have arguments 0 to 5",
                    c.index
                ));
            }
            condition(c, &mut pending);
        }
        // `Fail` lands right after this rule's return.
        let fail_at = pending.len() + 1;
        for (i, p) in pending.iter().enumerate() {
            let resolve = |to: To| match to {
                To::Next => Ok(0),
                To::Skip(n) => Ok(n),
                To::Fail => u8::try_from(fail_at - i - 1)
                    .map_err(|_| "a rule has too many argument conditions".to_string()),
            };
            out.push(insn(p.code, p.k, resolve(p.jt)?, resolve(p.jf)?));
        }
        out.push(insn(RET_K, rule.ret, 0, 0));
    }
    let fallback = rules
        .iter()
        .find(|r| r.conditions.is_empty())
        .map_or(default, |r| r.ret);
    out.push(insn(RET_K, fallback, 0, 0));
    Ok(out)
}

/// Assembles the program of a plan.
pub(super) fn assemble(plan: &Plan) -> Result<BpfProgram, String> {
    let mut prog = vec![
        insn(LD_W_ABS, ARCH, 0, 0),
        insn(JEQ_K, plan.arch, 1, 0),
        insn(RET_K, libc::SECCOMP_RET_KILL_PROCESS, 0, 0),
        insn(LD_W_ABS, NR, 0, 0),
    ];
    if let Some((highest, ret)) = plan.newer {
        prog.push(insn(JGT_K, highest, 0, 1));
        prog.push(insn(RET_K, ret, 0, 0));
    }
    for (nr, rules) in &plan.rules {
        let code = block(rules, plan.default)?;
        match u8::try_from(code.len()) {
            Ok(len) => prog.push(insn(JEQ_K, *nr, 0, len)),
            Err(_) => {
                let len = u32::try_from(code.len()).map_err(|_| "a rule is too long")?;
                prog.push(insn(JEQ_K, *nr, 1, 0));
                prog.push(insn(JA, len, 0, 0));
            }
        }
        prog.extend(code);
    }
    prog.push(insn(RET_K, plan.default, 0, 0));
    if prog.len() > libc::BPF_MAXINSNS as usize {
        return Err(format!(
            "the filter has {} instructions, more than the kernel's limit of {}",
            prog.len(),
            libc::BPF_MAXINSNS
        ));
    }
    Ok(prog)
}

/// Runs a program of the instructions `assemble` emits against one syscall, the way the
/// kernel would, so tests can check what a filter answers without installing it.
#[cfg(test)]
pub(super) fn run(prog: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let mut data = Vec::with_capacity(64);
    data.extend(nr.to_ne_bytes());
    data.extend(arch.to_ne_bytes());
    data.extend(0u64.to_ne_bytes());
    for a in args {
        data.extend(a.to_ne_bytes());
    }
    let mut acc = 0u32;
    let mut pc = 0usize;
    loop {
        let i = &prog[pc];
        pc += 1;
        let taken = |c: bool| usize::from(if c { i.jt } else { i.jf });
        match i.code {
            LD_W_ABS => {
                let at = i.k as usize;
                acc = u32::from_ne_bytes(data[at..at + 4].try_into().expect("4 bytes"));
            }
            AND_K => acc &= i.k,
            JA => pc += i.k as usize,
            JEQ_K => pc += taken(acc == i.k),
            JGT_K => pc += taken(acc > i.k),
            JGE_K => pc += taken(acc >= i.k),
            RET_K => return i.k,
            other => panic!("unexpected instruction {other:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ARCH_X: u32 = 0xC000_003E;
    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;

    fn plan(rules: Vec<(u32, Vec<Rule>)>, newer: Option<(u32, u32)>) -> Plan {
        Plan {
            arch: ARCH_X,
            rules: rules.into_iter().collect(),
            default: EPERM,
            newer,
        }
    }

    fn when(conditions: &[(u8, Cmp)], ret: u32) -> Rule {
        Rule {
            conditions: conditions
                .iter()
                .map(|(index, cmp)| Condition {
                    index: *index,
                    cmp: *cmp,
                })
                .collect(),
            ret,
        }
    }

    fn holds(cmp: Cmp, arg: u64) -> bool {
        match cmp {
            Cmp::Eq(v) => arg == v,
            Cmp::Ne(v) => arg != v,
            Cmp::Lt(v) => arg < v,
            Cmp::Le(v) => arg <= v,
            Cmp::Gt(v) => arg > v,
            Cmp::Ge(v) => arg >= v,
            Cmp::MaskedEq { mask, value } => arg & mask == value,
        }
    }

    /// Values whose halves often tie, where comparing in halves could go wrong.
    fn value() -> impl Strategy<Value = u64> {
        prop_oneof![
            any::<u64>(),
            (0u64..3, 0u64..3).prop_map(|(h, l)| (h << 32) | l),
            (0u64..3, 0u64..3).prop_map(|(h, l)| (h << 32) | (u64::from(u32::MAX) - l)),
        ]
    }

    fn cmp() -> impl Strategy<Value = Cmp> {
        prop_oneof![
            value().prop_map(Cmp::Eq),
            value().prop_map(Cmp::Ne),
            value().prop_map(Cmp::Lt),
            value().prop_map(Cmp::Le),
            value().prop_map(Cmp::Gt),
            value().prop_map(Cmp::Ge),
            (value(), value()).prop_map(|(mask, v)| Cmp::MaskedEq {
                mask,
                value: v & mask
            }),
        ]
    }

    proptest! {
        /// Every comparison means what it means on u64, for every argument slot.
        #[test]
        fn comparisons_match_u64_semantics(cmp in cmp(), arg in value(), index in 0u8..6) {
            let prog = assemble(&plan(vec![(7, vec![when(&[(index, cmp)], ALLOW)])], None))
                .expect("assembles");
            let mut args = [0x5555_5555_5555_5555u64; 6];
            args[usize::from(index)] = arg;
            let want = if holds(cmp, arg) { ALLOW } else { EPERM };
            prop_assert_eq!(run(&prog, ARCH_X, 7, args), want);
            // Another syscall is never let through by this rule.
            prop_assert_eq!(run(&prog, ARCH_X, 8, args), EPERM);
        }
    }

    #[test]
    fn other_architectures_are_killed_and_newer_calls_get_enosys() {
        let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        let prog = assemble(&plan(
            vec![(0, vec![when(&[], ALLOW)])],
            Some((400, enosys)),
        ))
        .expect("assembles");
        assert_eq!(run(&prog, ARCH_X, 0, [0; 6]), ALLOW);
        assert_eq!(run(&prog, ARCH_X, 1, [0; 6]), EPERM);
        assert_eq!(run(&prog, ARCH_X, 400, [0; 6]), EPERM);
        assert_eq!(run(&prog, ARCH_X, 401, [0; 6]), enosys);
        // AUDIT_ARCH_I386, with the number of x86_64's read.
        assert_eq!(
            run(&prog, 0x4000_0003, 0, [0; 6]),
            libc::SECCOMP_RET_KILL_PROCESS
        );
    }

    #[test]
    fn first_matching_rule_decides_then_the_unconditional_one() {
        let trap = libc::SECCOMP_RET_TRAP;
        let rules = vec![
            when(&[], trap),
            when(&[(0, Cmp::Eq(1))], ALLOW),
            when(&[(0, Cmp::Ge(1)), (1, Cmp::Eq(9))], EPERM),
        ];
        let prog = assemble(&plan(vec![(3, rules)], None)).expect("assembles");
        assert_eq!(run(&prog, ARCH_X, 3, [1, 9, 0, 0, 0, 0]), ALLOW);
        assert_eq!(run(&prog, ARCH_X, 3, [2, 9, 0, 0, 0, 0]), EPERM);
        assert_eq!(run(&prog, ARCH_X, 3, [2, 8, 0, 0, 0, 0]), trap);
        assert_eq!(run(&prog, ARCH_X, 4, [1, 9, 0, 0, 0, 0]), EPERM);
    }

    #[test]
    fn long_blocks_are_jumped_over_with_a_long_jump() {
        let many = (0..80).map(|v| when(&[(0, Cmp::Eq(v))], ALLOW)).collect();
        let prog =
            assemble(&plan(vec![(5, many), (6, vec![when(&[], ALLOW)])], None)).expect("assembles");
        assert!(prog.len() > 300, "the block must need a long jump");
        assert_eq!(run(&prog, ARCH_X, 5, [79, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(run(&prog, ARCH_X, 5, [80, 0, 0, 0, 0, 0]), EPERM);
        assert_eq!(run(&prog, ARCH_X, 6, [80, 0, 0, 0, 0, 0]), ALLOW);
    }

    #[test]
    fn argument_index_is_checked() {
        let e = assemble(&plan(
            vec![(1, vec![when(&[(6, Cmp::Eq(0))], ALLOW)])],
            None,
        ))
        .expect_err("there is no argument 6");
        assert!(e.contains("argument index 6"), "{e}");
    }
}
