#!/bin/bash
# Failover on the lab (issue 4): five hosts, three managers and two workers, release build.
#  1. leader kill -9 → first write accepted through another manager (TRIALS trials, median
#     and p95);
#  2. a worker cut off the underlay → all of its tasks running on other nodes (TRIALS/4).
# Swarm cannot run here; its documented defaults are printed beside ours for reference.
# Needs root. Usage: tests/perf/failover.sh [TRIALS]
set -euo pipefail
cd "$(dirname "$0")/../.."
trials=${1:-20}
sh deploy/scripts/install-deps.sh >/dev/null
cargo build --release -q -p shoal-cli
export SHOAL_BIN=$PWD/target/release/shoal SHOAL_LAB=sfail SHOAL_LAB_NET=10.79.0
lab=deploy/lab/shoal-lab
trap '$lab down >/dev/null 2>&1 || true' EXIT
$lab down >/dev/null 2>&1 || true
$lab cluster 3 2 >/dev/null
sh tests/images/busybox-rootfs.sh /tmp/shoal-failover-bb.tar >/dev/null
for i in 1 2 3 4 5; do $lab exec "$i" "$SHOAL_BIN" image import /tmp/shoal-failover-bb.tar bb:1 >/dev/null; done
rm -f /tmp/shoal-failover-bb.tar
s() { local h=$1; shift; $lab exec "$h" "$SHOAL_BIN" "$@"; }
now() { date +%s%N; }
until [ "$(s 1 node ls | grep -c Ready)" -eq 5 ]; do sleep 0.2; done
s 1 service create -q --name web --replicas 10 --stop-grace-period 1s bb:1 sleep 100000 >/dev/null 2>&1 \
    || s 1 service create --name web --replicas 10 --stop-grace-period 1s bb:1 sleep 100000 >/dev/null

leader() {
    for i in 1 2 3; do
        if s "$i" node ls 2>/dev/null | grep " h$i " | grep -q Leader; then echo "$i"; return; fi
    done
}
healthy() { # three managers, one leader, from host $1's view
    local ls; ls=$(s "$1" node ls 2>/dev/null) || return 1
    [ "$(echo "$ls" | grep -c Leader)" -eq 1 ] && [ "$(echo "$ls" | grep -c Reachable)" -eq 2 ] \
        && [ "$(echo "$ls" | grep -c Ready)" -eq 5 ]
}

stats() { # name, then values in ms
    local name=$1; shift
    printf '%s\n' "$@" | sort -n | awk -v name="$name" '{ v[NR] = $1 } END {
        p50 = v[int((NR + 1) / 2)]; p95 = v[int(NR * 0.95 + 0.999)]; if (p95 == "") p95 = v[NR]
        printf "  %-44s n=%d  median %d ms  p95 %d ms  min %d  max %d\n", name, NR, p50, p95, v[1], v[NR] }'
}

echo "leader kill -9 → first accepted write ($trials trials):"
times=()
replicas=10
for t in $(seq "$trials"); do
    until healthy 1 || healthy 2; do sleep 0.2; done
    l=$(leader)
    [ -n "$l" ] || { echo "no leader found" >&2; exit 1; }
    other=$(( l % 3 + 1 ))
    replicas=$(( replicas == 10 ? 11 : 10 ))
    # The signal itself, not the lab's kill (which also waits for the process to be reaped).
    t0=$(now)
    kill -9 "$(cat "/tmp/shoal-lab-$SHOAL_LAB/h$l/pid")"
    until s "$other" service scale "web=$replicas" -d >/dev/null 2>&1; do :; done
    t1=$(now)
    times+=($(( (t1 - t0) / 1000000 )))
    $lab kill "$l"
    $lab start "$l"
done
stats "shoal (3 managers, --election-timeout 100ms)" "${times[@]}"
echo "  Swarm defaults (documented, not run here): election after 10-19 s"

echo "worker cut off → its tasks running elsewhere ($(( (trials + 3) / 4 )) trials):"
times=()
for t in $(seq $(( (trials + 3) / 4 ))); do
    until healthy 1 || healthy 2; do sleep 0.2; done
    l=$(leader)
    # Spread the tasks again, so that the worker runs its share.
    s "$l" service update --force -d web >/dev/null
    until [ "$(s "$l" service ps web -f desired-state=running | grep " Running " | grep -c " h5 ")" -ge 2 ] \
        && s "$l" service inspect web --format json | grep -q '"state": "completed"'; do
        sleep 0.2
    done
    t0=$(now)
    $lab cut 5
    while :; do
        ps=$(s "$l" service ps web -f desired-state=running 2>/dev/null || true)
        running=$(echo "$ps" | grep -c " Running " || true)
        if [ "$running" -ge 10 ] && ! echo "$ps" | grep -q " h5 "; then break; fi
    done
    t1=$(now)
    times+=($(( (t1 - t0) / 1000000 )))
    $lab heal 5
    until [ -z "$(s 5 container ls -q)" ]; do sleep 0.2; done
done
stats "shoal (heartbeat 1 s, down after 3 misses)" "${times[@]}"
echo "  Swarm defaults (documented, not run here): node down after 13.5-16.5 s"
