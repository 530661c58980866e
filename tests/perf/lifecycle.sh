#!/bin/bash
# Container lifecycle benchmark: N sequential create -> start -> wait -> delete of busybox
# `true`, on one OCI bundle, with shoal's builtin runtime, runc and crun (crun inside a
# private mount namespace without the cgroup v2 mount on a hybrid host), in one run;
# then the same through the whole engine (`shoal container run --rm`) with the builtin
# runtime and with runc; then the resident memory of an idle shim and of the idle daemon.
# Prints medians and ratios. Needs root. Usage: tests/perf/lifecycle.sh [N]
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/perf/common.sh
n=${1:-50}
sh deploy/scripts/install-deps.sh
cargo build --release -q -p shoal-cli
shoal=$PWD/target/release/shoal
work=$(mktemp -d /tmp/shoal-bench-XXXXXX)
daemon=
cleanup() {
    [ -n "$daemon" ] && { "$shoal" -H "$work/run/shoal.sock" container rm -f idle >/dev/null 2>&1 || true; kill "$daemon" 2>/dev/null || true; wait "$daemon" 2>/dev/null || true; }
    rm -rf "$work"
}
trap cleanup EXIT

# One bundle for every runtime: runc's default spec, running `true`, no terminal.
sh tests/images/busybox-rootfs.sh "$work/busybox.tar"
runc_bundle "$work/bundle" "$work/busybox.tar" '["true"]' 'c["linux"]["cgroupsPath"] = "/shoal-bench/c"'

now_ns() { date +%s%N; }
# median of the numbers on stdin (nanoseconds) printed in milliseconds
median_ms() { sort -n | awk '{a[NR]=$1} END {m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2; printf "%.2f", m / 1e6}'; }

measure() { # name, command...
    local name=$1; shift
    local times=()
    "$@" >/dev/null 2>&1 || { echo "$name: does not run here ($*)" >&2; echo "n/a"; return; }
    for i in $(seq "$n"); do
        local t0; t0=$(now_ns)
        "$@" >/dev/null 2>&1
        local t1; t1=$(now_ns)
        times+=($((t1 - t0)))
    done
    printf '%s\n' "${times[@]}" | median_ms
}

bundle=$work/bundle
builtin_ms=$(measure builtin "$shoal" __run-bundle "$bundle" bench-builtin)
runc_ms=$(measure runc runc --root "$work/runc" run --bundle "$bundle" bench-runc)
crun_run() { unshare -m --propagation slave sh -c 'umount -l /sys/fs/cgroup/unified 2>/dev/null; exec crun --root "$0" run --bundle "$1" bench-crun' "$work/crun" "$bundle"; }
crun_ms=$(measure crun crun_run)
# What the private-namespace wrapper alone costs, so crun is not charged for it.
wrapper_only() { unshare -m --propagation slave sh -c 'umount -l /sys/fs/cgroup/unified 2>/dev/null; exec true'; }
wrapper_ms=$(measure wrapper wrapper_only)
crun_net_ms=$(awk -v a="$crun_ms" -v b="$wrapper_ms" 'BEGIN { if (a == "n/a") print "n/a"; else printf "%.2f", a - b }')

# Through the whole engine: client, daemon, overlay, shim, cgroups.
"$shoal" daemon --data-root "$work/data" --run-root "$work/run" --cgroup-parent shoal-bench >"$work/daemon.log" 2>&1 &
daemon=$!
for i in $(seq 100); do [ -S "$work/run/shoal.sock" ] && break; sleep 0.1; done
S="$shoal -H $work/run/shoal.sock"
$S image import "$work/busybox.tar" busybox >/dev/null
engine_ms=$(measure engine-builtin $S container run --rm --network none busybox true)
$S container run -d --network none --name idle busybox sleep 1000 >/dev/null
sleep 1
shim_pid=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['shim_pid'])" "$work/run/containers/$($S container inspect idle | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["summary"]["id"])')/state.json")
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
shim_kb=$(rss "$shim_pid")
daemon_kb=$(rss "$daemon")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "n/a" || b == "n/a" || b == 0) print "n/a"; else printf "%.2f", a / b }'; }
echo "lifecycle of busybox true, $n runs each, median ms (same bundle):"
printf '  %-34s %8s\n' "builtin (shoal __run-bundle)" "$builtin_ms" "runc run" "$runc_ms" "crun run (in unshare wrapper)" "$crun_ms" "  the wrapper alone" "$wrapper_ms" "crun run, wrapper subtracted" "$crun_net_ms"
printf '  %-34s %8s\n' "shoal container run --rm (engine)" "$engine_ms"
echo "ratios: builtin/runc $(ratio "$builtin_ms" "$runc_ms") (goal <= 0.5), builtin/crun $(ratio "$builtin_ms" "$crun_net_ms") (goal <= 1.0, crun without its wrapper)"
echo "idle RSS: shim ${shim_kb} KiB, daemon ${daemon_kb} KiB"
