#!/bin/bash
# 1,000 tasks on the lab (issue 4): three managers and WORKERS workers (release build), one
# `shoal service create --replicas N` of busybox `sleep` until every replica runs, against
# the same N containers started by `runc run -d`, one shell loop per lab host, all hosts at
# once, in one run. Each shoal task also gets an overlay root, a bridge endpoint, a cgroup,
# a shim and a log, and its placement and status go through Raft; the runc containers get
# none of that. Needs root. Usage: tests/perf/thousand.sh [N] [WORKERS]
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/perf/common.sh
n=${1:-1000}
workers=${2:-5}
hosts=$((3 + workers))
sh deploy/scripts/install-deps.sh >/dev/null
cargo build --release -q -p shoal-cli
export SHOAL_BIN=$PWD/target/release/shoal SHOAL_LAB=sthou SHOAL_LAB_NET=10.76.0
lab=deploy/lab/shoal-lab
work=$(mktemp -d /tmp/shoal-thousand-XXXXXX)
cleanup() {
    for r in "$work"/runc*; do
        [ -d "$r" ] || continue
        for c in $(runc --root "$r" list -q 2>/dev/null); do
            runc --root "$r" delete -f "$c" >/dev/null 2>&1 || true
        done
    done
    $lab down >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
$lab down >/dev/null 2>&1 || true
sh tests/images/busybox-rootfs.sh "$work/busybox.tar" >/dev/null
now() { date +%s%N; }

# Peer: runc run -d, N containers split over the hosts, one loop per host, in parallel.
runc_bundle "$work/bundle" "$work/busybox.tar" '["sleep", "100000"]' 'c["root"]["readonly"] = True'
t0=$(now)
for h in $(seq "$hosts"); do
    (
        for i in $(seq "$h" "$hosts" "$n"); do
            runc --root "$work/runc$h" run -d --bundle "$work/bundle" "b$i" </dev/null >/dev/null 2>&1
        done
    ) &
done
wait
t1=$(now)
runc_ms=$(((t1 - t0) / 1000000))
runc_running=$(for h in $(seq "$hosts"); do runc --root "$work/runc$h" list -q 2>/dev/null; done | wc -l)
for h in $(seq "$hosts"); do
    for c in $(runc --root "$work/runc$h" list -q 2>/dev/null); do
        runc --root "$work/runc$h" delete -f "$c" >/dev/null 2>&1 || true
    done
done

# shoal: the lab, then one service of N replicas until all run (the CLI waits).
$lab cluster 3 "$workers" >/dev/null
s() { local h=$1; shift; $lab exec "$h" "$SHOAL_BIN" "$@"; }
for h in $(seq "$hosts"); do s "$h" image import "$work/busybox.tar" bb:1 >/dev/null; done
until [ "$(s 1 node ls | grep -c Ready)" -eq "$hosts" ]; do sleep 0.2; done
t0=$(now)
if ! s 1 service create --name many --replicas "$n" --stop-grace-period 1s bb:1 sleep 100000 >"$work/create.log" 2>&1; then
    tail -5 "$work/create.log" >&2
    exit 1
fi
t1=$(now)
shoal_ms=$(((t1 - t0) / 1000000))
running=0
for h in $(seq "$hosts"); do running=$((running + $(s "$h" container ls -q | wc -l))); done
rss() { ps -o rss= -p "$(cat "/tmp/shoal-lab-$SHOAL_LAB/h$1/pid")" | awk '{ printf "%d", $1 / 1024 }'; }

echo "$n containers of busybox sleep over $hosts lab hosts (3 managers, $workers workers) until all run:"
echo "  runc run -d, one loop per host, in parallel: ${runc_ms} ms (${runc_running} ran)"
echo "  shoal service create --replicas $n:          ${shoal_ms} ms (${running} running)"
awk -v a="$shoal_ms" -v b="$runc_ms" 'BEGIN { printf "  ratio shoal/runc: %.2f\n", a / b }'
echo "  daemon RSS after: leader host h1 $(rss 1) MiB, manager h2 $(rss 2) MiB, worker h4 $(rss 4) MiB"
