#!/bin/bash
# Service scale-up (issue 3): `shoal service create --replicas N` of busybox `sleep` until
# every replica runs, against the same N containers started by `runc run -d` in a shell
# loop, in one run. Needs root. Usage: tests/perf/service_create.sh [N]
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/perf/common.sh
n=${1:-200}
sh deploy/scripts/install-deps.sh
cargo build --release -q -p shoal-cli
shoal=$PWD/target/release/shoal
work=$(mktemp -d /tmp/shoal-svc-bench-XXXXXX)
daemon=
cleanup() {
    for i in $(seq "$n"); do runc --root "$work/runc" delete -f "bench$i" >/dev/null 2>&1 || true; done
    if [ -n "$daemon" ]; then
        "$shoal" -H "$work/run/shoal.sock" service rm sleepers >/dev/null 2>&1 || true
        for c in $("$shoal" -H "$work/run/shoal.sock" container ls -a -q 2>/dev/null); do
            "$shoal" -H "$work/run/shoal.sock" container rm -f "$c" >/dev/null 2>&1 || true
        done
        kill "$daemon" 2>/dev/null || true
        wait "$daemon" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
sh tests/images/busybox-rootfs.sh "$work/busybox.tar"

# Peer: runc run -d, one container after the other, on one read-only bundle.
runc_bundle "$work/bundle" "$work/busybox.tar" '["sleep", "1000"]' 'c["root"]["readonly"] = True'
t0=$(date +%s%N)
for i in $(seq "$n"); do
    runc --root "$work/runc" run -d --bundle "$work/bundle" "bench$i" </dev/null >/dev/null 2>&1
done
t1=$(date +%s%N)
runc_ms=$(( (t1 - t0) / 1000000 ))
for i in $(seq "$n"); do runc --root "$work/runc" delete -f "bench$i" >/dev/null 2>&1 || true; done

# shoal: a service of N replicas until all run (the CLI waits for convergence).
"$shoal" daemon --data-root "$work/data" --run-root "$work/run" --cgroup-parent shoal-svc-bench >"$work/daemon.log" 2>&1 &
daemon=$!
for i in $(seq 100); do [ -S "$work/run/shoal.sock" ] && break; sleep 0.1; done
S="$shoal -H $work/run/shoal.sock"
$S image import "$work/busybox.tar" busybox >/dev/null
$S init >/dev/null
t0=$(date +%s%N)
$S service create --name sleepers --replicas "$n" busybox sleep 1000 >/dev/null 2>&1
t1=$(date +%s%N)
shoal_ms=$(( (t1 - t0) / 1000000 ))
running=$($S container ls -q | wc -l)

echo "$n containers of busybox sleep until all run:"
echo "  runc run -d, shell loop:            ${runc_ms} ms"
echo "  shoal service create --replicas $n: ${shoal_ms} ms (${running} running; each with a bridge endpoint, overlay root, cgroup and log)"
awk -v a="$shoal_ms" -v b="$runc_ms" 'BEGIN { printf "  ratio shoal/runc: %.2f\n", a / b }'
