//! From the OCI spec's `linux.resources` to the cgroup files to write, for v1 or v2.
//! Pure: every value is checked here, before a directory exists, so a bad limit leaves
//! nothing behind and the error names the limit as the user gave it.

use oci_spec::runtime::{LinuxCpu, LinuxDeviceCgroup, LinuxMemory, LinuxResources};

use super::CgroupError;

/// The smallest memory limit shoal accepts: below it a container cannot even start its
/// first process (Docker uses the same floor).
pub const MIN_MEMORY: i64 = 6 << 20;
/// Kernel bounds of the CFS bandwidth period and the smallest quota, in microseconds.
const CPU_PERIOD_RANGE: std::ops::RangeInclusive<u64> = 1_000..=1_000_000;
const MIN_CPU_QUOTA: i64 = 1_000;
/// The largest quota the kernel takes (2^44 - 1 microseconds).
const MAX_CPU_QUOTA: i64 = (1 << 44) - 1;
/// v1 cpu.shares bounds; outside them the kernel silently clamps, we refuse.
const SHARES_RANGE: std::ops::RangeInclusive<u64> = 2..=262_144;
/// The kernel's PID_MAX_LIMIT: pids.max takes nothing larger.
const MAX_PIDS: i64 = 4 << 20;
/// The CFS period used when only a quota is given.
pub const DEFAULT_CPU_PERIOD: u64 = 100_000;

/// One value for one cgroup file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitWrite {
    /// The controller the file belongs to (the v1 hierarchy to write in; on v2 the
    /// controller that must be enabled for the file to exist).
    pub controller: String,
    /// File name inside the cgroup directory, like `memory.max`.
    pub file: String,
    /// What to write.
    pub value: String,
    /// The limit as a user knows it, for error messages: "memory limit".
    pub limit: &'static str,
    /// Skip quietly when the kernel has no such file or controller (swap accounting
    /// off, no devices controller) instead of failing.
    pub optional: bool,
}

impl LimitWrite {
    fn new(controller: &str, file: &str, value: impl ToString, limit: &'static str) -> Self {
        LimitWrite {
            controller: controller.to_string(),
            file: file.to_string(),
            value: value.to_string(),
            limit,
            optional: false,
        }
    }

    fn optional(mut self) -> Self {
        self.optional = true;
        self
    }
}

/// The v2 `cpu.weight` for v1 `cpu.shares`: the linear map of [2, 262144] onto
/// [1, 10000]. Zero (unset) stays zero.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

/// CFS `(quota, period)` in microseconds for a CPU count given in billionths of a CPU
/// (`--cpus 1.5` is 1_500_000_000), or None when unlimited (zero or negative). The quota
/// never goes below the kernel's minimum of 1ms.
pub fn nano_cpus_to_quota(nano_cpus: i64) -> Option<(i64, u64)> {
    if nano_cpus <= 0 {
        return None;
    }
    let quota = i128::from(nano_cpus) * i128::from(DEFAULT_CPU_PERIOD) / 1_000_000_000;
    let quota = i64::try_from(quota).unwrap_or(MAX_CPU_QUOTA);
    Some((
        quota.clamp(MIN_CPU_QUOTA, MAX_CPU_QUOTA),
        DEFAULT_CPU_PERIOD,
    ))
}

fn invalid(limit: &'static str, value: impl ToString, reason: impl ToString) -> CgroupError {
    CgroupError::InvalidLimit {
        limit,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// Every file write `res` asks for, in the order to write them, for a v2 (`v2`) or v1
/// hierarchy. Fails on the first invalid value.
pub fn plan(v2: bool, res: &LinuxResources) -> Result<Vec<LimitWrite>, CgroupError> {
    let mut out = Vec::new();
    if let Some(mem) = res.memory() {
        memory(v2, mem, &mut out)?;
    }
    if let Some(cpu) = res.cpu() {
        cpu_limits(v2, cpu, &mut out)?;
    }
    if let Some(pids) = res.pids() {
        let limit = pids.limit();
        if limit > MAX_PIDS {
            return Err(invalid(
                "pids limit",
                limit,
                format!(
                    "the kernel allows at most {MAX_PIDS}; give a smaller limit, or 0 for none"
                ),
            ));
        }
        if limit > 0 {
            out.push(LimitWrite::new("pids", "pids.max", limit, "pids limit"));
        }
    }
    if !v2 {
        devices(res.devices().as_deref(), &mut out)?;
    }
    if let Some(unified) = res.unified().as_ref().filter(|u| !u.is_empty()) {
        if !v2 {
            let mut keys: Vec<&str> = unified.keys().map(String::as_str).collect();
            keys.sort_unstable();
            return Err(invalid(
                "unified cgroup setting",
                keys.join(", "),
                "this host uses cgroup v1; drop linux.resources.unified or run on a cgroup v2 host",
            ));
        }
        let mut entries: Vec<_> = unified.iter().collect();
        entries.sort();
        for (file, value) in entries {
            let controller = file.split('.').next().unwrap_or_default();
            if file.contains('/') || controller.is_empty() || !file.contains('.') {
                return Err(invalid(
                    "unified cgroup setting",
                    file,
                    "a key must be a file name of the cgroup, like memory.high",
                ));
            }
            out.push(LimitWrite::new(
                controller,
                file,
                value,
                "unified cgroup setting",
            ));
        }
    }
    let ignored: Vec<&str> = [
        ("blockIO", res.block_io().is_some()),
        ("hugepageLimits", res.hugepage_limits().is_some()),
        ("network", res.network().is_some()),
        ("rdma", res.rdma().is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    if !ignored.is_empty() {
        tracing::warn!(?ignored, "cgroup resources not supported yet, ignored");
    }
    Ok(out)
}

/// Memory. OCI's `swap` is memory plus swap (v1's memsw); v2 limits swap alone, so it
/// gets the difference. Without a `swap`, a container may swap as much as its limit.
fn memory(v2: bool, mem: &LinuxMemory, out: &mut Vec<LimitWrite>) -> Result<(), CgroupError> {
    const LIMIT: &str = "memory limit";
    const SWAP: &str = "memory+swap limit";
    let limit = mem.limit().filter(|l| *l != 0);
    let swap = mem.swap().filter(|s| *s != 0);
    match limit {
        Some(l) if l < -1 => return Err(invalid(LIMIT, l, "give a byte count, or -1 for none")),
        Some(l) if l > 0 && l < MIN_MEMORY => {
            return Err(invalid(
                LIMIT,
                l,
                format!("below the minimum of {MIN_MEMORY} bytes (6 MiB); raise it"),
            ));
        }
        _ => {}
    }
    if let Some(s) = swap {
        if s < -1 {
            return Err(invalid(
                SWAP,
                s,
                "give a byte count, or -1 for unlimited swap",
            ));
        }
        match limit {
            Some(l) if l > 0 && s > 0 && s < l => {
                return Err(invalid(
                    SWAP,
                    s,
                    format!(
                        "below the memory limit {l}; it counts memory and swap together, so give at least the memory limit, or -1 for unlimited swap"
                    ),
                ));
            }
            None | Some(-1) if s > 0 => {
                return Err(invalid(
                    SWAP,
                    s,
                    "a swap limit needs a memory limit; set one",
                ));
            }
            _ => {}
        }
    }
    if let Some(l) = limit {
        if v2 {
            let max = if l < 0 {
                "max".to_string()
            } else {
                l.to_string()
            };
            out.push(LimitWrite::new("memory", "memory.max", max, LIMIT));
            if l > 0 {
                let swap_max = match swap {
                    Some(-1) => "max".to_string(),
                    Some(s) => (s - l).to_string(),
                    None => l.to_string(),
                };
                out.push(LimitWrite::new("memory", "memory.swap.max", swap_max, SWAP).optional());
            }
        } else {
            out.push(LimitWrite::new("memory", "memory.limit_in_bytes", l, LIMIT));
            let memsw = match swap {
                Some(s) => s,
                None if l > 0 => l.saturating_mul(2),
                None => -1,
            };
            out.push(
                LimitWrite::new("memory", "memory.memsw.limit_in_bytes", memsw, SWAP).optional(),
            );
        }
    }
    if let Some(r) = mem.reservation().filter(|r| *r > 0) {
        if let Some(l) = limit.filter(|l| *l > 0 && r > *l) {
            return Err(invalid(
                "memory reservation",
                r,
                format!("above the memory limit {l}; give a reservation no larger than the limit"),
            ));
        }
        let file = if v2 {
            "memory.low"
        } else {
            "memory.soft_limit_in_bytes"
        };
        out.push(LimitWrite::new("memory", file, r, "memory reservation"));
    }
    if let Some(s) = mem.swappiness() {
        if s > 100 {
            return Err(invalid(
                "memory swappiness",
                s,
                "give a value from 0 to 100",
            ));
        }
        if !v2 {
            out.push(LimitWrite::new(
                "memory",
                "memory.swappiness",
                s,
                "memory swappiness",
            ));
        }
    }
    if mem.disable_oom_killer() == Some(true) && !v2 {
        out.push(LimitWrite::new(
            "memory",
            "memory.oom_control",
            1,
            "OOM killer switch",
        ));
    }
    Ok(())
}

fn cpu_limits(v2: bool, cpu: &LinuxCpu, out: &mut Vec<LimitWrite>) -> Result<(), CgroupError> {
    if let Some(p) = cpu.period()
        && !CPU_PERIOD_RANGE.contains(&p)
    {
        return Err(invalid(
            "cpu period",
            p,
            "the kernel takes 1000 to 1000000 microseconds (1ms to 1s)",
        ));
    }
    let quota = cpu.quota().filter(|q| *q != 0);
    if let Some(q) = quota {
        if q < -1 {
            return Err(invalid("cpu quota", q, "give microseconds, or -1 for none"));
        }
        if q > 0 && q < MIN_CPU_QUOTA {
            return Err(invalid(
                "cpu quota",
                q,
                "below the kernel minimum of 1000 microseconds (1ms) per period; raise it",
            ));
        }
        if q > MAX_CPU_QUOTA {
            return Err(invalid(
                "cpu quota",
                q,
                format!("above the kernel maximum of {MAX_CPU_QUOTA} microseconds"),
            ));
        }
    }
    if v2 {
        if quota.is_some() || cpu.period().is_some() {
            let q = match quota {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".to_string(),
            };
            let p = cpu.period().unwrap_or(DEFAULT_CPU_PERIOD);
            out.push(LimitWrite::new(
                "cpu",
                "cpu.max",
                format!("{q} {p}"),
                "cpu quota",
            ));
        }
    } else {
        if let Some(p) = cpu.period() {
            out.push(LimitWrite::new("cpu", "cpu.cfs_period_us", p, "cpu period"));
        }
        if let Some(q) = quota {
            out.push(LimitWrite::new("cpu", "cpu.cfs_quota_us", q, "cpu quota"));
        }
    }
    if let Some(shares) = cpu.shares().filter(|s| *s != 0) {
        if !SHARES_RANGE.contains(&shares) {
            return Err(invalid(
                "cpu shares",
                shares,
                "the kernel takes 2 to 262144 (1024 is one normal share)",
            ));
        }
        if v2 {
            let weight = shares_to_weight(shares);
            out.push(LimitWrite::new("cpu", "cpu.weight", weight, "cpu shares"));
        } else {
            out.push(LimitWrite::new("cpu", "cpu.shares", shares, "cpu shares"));
        }
    }
    for (list, file, limit, what) in [
        (cpu.cpus(), "cpuset.cpus", "cpuset cpus", "CPU"),
        (cpu.mems(), "cpuset.mems", "cpuset mems", "memory node"),
    ] {
        let Some(list) = list.as_deref().map(str::trim).filter(|l| !l.is_empty()) else {
            continue;
        };
        if !is_id_list(list) {
            return Err(invalid(
                limit,
                list,
                format!("not a {what} list; write numbers and ranges like 0-2,4"),
            ));
        }
        out.push(LimitWrite::new("cpuset", file, list, limit));
    }
    Ok(())
}

/// Whether `s` looks like the kernel's list format: `0-3,5,7-8`.
fn is_id_list(s: &str) -> bool {
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
    s.split(',').all(|part| match part.split_once('-') {
        Some((a, b)) => digits(a) && digits(b),
        None => digits(part),
    })
}

/// The v1 device rules: the spec's own, or when it gives none, only the standard
/// character devices and ptys, so a container with CAP_MKNOD cannot open the host's
/// disks. (v2 needs an eBPF program for this; not done yet.)
fn devices(
    rules: Option<&[LinuxDeviceCgroup]>,
    out: &mut Vec<LimitWrite>,
) -> Result<(), CgroupError> {
    const LIMIT: &str = "device rule";
    let Some(rules) = rules.filter(|r| !r.is_empty()) else {
        out.push(LimitWrite::new("devices", "devices.deny", "a", LIMIT).optional());
        for rule in [
            "c 1:3 rwm",    // null
            "c 1:5 rwm",    // zero
            "c 1:7 rwm",    // full
            "c 1:8 rwm",    // random
            "c 1:9 rwm",    // urandom
            "c 5:0 rwm",    // tty
            "c 5:1 rwm",    // console
            "c 5:2 rwm",    // ptmx
            "c 136:* rwm",  // pts
            "c 10:200 rwm", // tun
            "c *:* m",
            "b *:* m",
        ] {
            out.push(LimitWrite::new("devices", "devices.allow", rule, LIMIT).optional());
        }
        return Ok(());
    };
    for r in rules {
        let access = r.access().as_deref().unwrap_or("rwm");
        if access.is_empty() || !access.chars().all(|c| "rwm".contains(c)) {
            return Err(invalid(LIMIT, access, "access must be letters of rwm"));
        }
        let typ = r.typ().unwrap_or_default().as_str().to_string();
        let num = |n: Option<i64>| {
            n.filter(|n| *n >= 0)
                .map_or("*".to_string(), |n| n.to_string())
        };
        let rule = if typ == "a" {
            "a".to_string()
        } else {
            format!("{typ} {}:{} {access}", num(r.major()), num(r.minor()))
        };
        let file = if r.allow() {
            "devices.allow"
        } else {
            "devices.deny"
        };
        out.push(LimitWrite::new("devices", file, rule, LIMIT));
    }
    Ok(())
}

#[cfg(test)]
#[path = "limits_tests.rs"]
mod tests;
