#!/bin/bash
# Volume start latency (issue 12): N sequential `container run --rm --network none` of
# busybox `true` without a volume, with a local volume, with a volume of the Python test
# plugin, against the same runs of the real `docker run` (the peer's dockerd) without and
# with a local volume, in one run; prints medians, what a volume adds to each, and the
# plugin's own time for a Mount and an Unmount (asked directly on its socket).
# Needs root. Usage: tests/perf/volumes.sh [N]   (DOCKER_PEER: the peer script)
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/perf/common.sh
n=${1:-30}
peer=${DOCKER_PEER:-../shared/peers/docker-peer.sh}
sh deploy/scripts/install-deps.sh >/dev/null
cargo build --release -q -p shoal-cli
shoal=$PWD/target/release/shoal
work=$(mktemp -d /tmp/shoal-vol-bench-XXXXXX)
daemon=
plugin=
cleanup() {
    [ -n "$plugin" ] && kill "$plugin" 2>/dev/null || true
    if [ -n "$daemon" ]; then
        for c in $("$shoal" -H "$work/run/shoal.sock" container ls -a -q 2>/dev/null); do
            "$shoal" -H "$work/run/shoal.sock" container rm -f "$c" >/dev/null 2>&1 || true
        done
        kill "$daemon" 2>/dev/null || true
        wait "$daemon" 2>/dev/null || true
    fi
    [ -x "$peer" ] && [ -n "${DOCKER_HOST:-}" ] && docker volume rm -f benchvol >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
sh tests/images/busybox-rootfs.sh "$work/busybox.tar"

now_ns() { date +%s%N; }
median_ms() { sort -n | awk '{a[NR]=$1} END {m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2; printf "%.2f", m / 1e6}'; }
# The variants run in turn, one run of each per round, so that the machine's drift (it is
# shared) falls on all of them alike; each variant's times go to $work/times.NAME.
variants=()
variant() { # NAME command...
    local name=$1; shift
    if "$@" >/dev/null 2>&1; then
        variants+=("$name"); printf '%s\n' "$*" >"$work/cmd.$name"; : >"$work/times.$name"
    else
        echo "does not run: $*" >&2
    fi
}
rounds() {
    for i in $(seq "$n"); do
        for v in "${variants[@]}"; do
            local t0; t0=$(now_ns)
            $(cat "$work/cmd.$v") >/dev/null 2>&1
            echo $(($(now_ns) - t0)) >>"$work/times.$v"
        done
    done
}
median() { if [ -s "$work/times.$1" ]; then median_ms <"$work/times.$1"; else echo n/a; fi; }

mkdir -p "$work/plugins"
python3 tests/plugins/volume_plugin.py --socket "$work/plugins/benchplug.sock" --root "$work/pv" --log "$work/calls" >/dev/null 2>&1 &
plugin=$!
for i in $(seq 50); do [ -S "$work/plugins/benchplug.sock" ] && break; sleep 0.1; done
"$shoal" daemon --data-root "$work/data" --run-root "$work/run" --cgroup-parent shoal-vol-bench --plugin-dir "$work/plugins" --listen-addr 127.0.0.1:0 >"$work/daemon.log" 2>&1 &
daemon=$!
for i in $(seq 100); do [ -S "$work/run/shoal.sock" ] && break; sleep 0.1; done
S="$shoal -H $work/run/shoal.sock"
$S image import "$work/busybox.tar" busybox >/dev/null
$S volume create benchvol >/dev/null
$S volume create -d benchplug plugvol >/dev/null
variant base $S run --rm --network none busybox true
variant local $S run --rm --network none -v benchvol:/data busybox true
variant plug $S run --rm --network none --mount type=volume,source=plugvol,target=/data,volume-driver=benchplug busybox true
if [ -x "$peer" ] || [ -f "$peer" ]; then
    eval "$(bash "$peer" up 2>/dev/null | grep '^export DOCKER_HOST=')"
    docker volume create benchvol >/dev/null
    variant dbase docker run --rm --network none busybox:local true
    variant dvol docker run --rm --network none -v benchvol:/data busybox:local true
fi
rounds
base=$(median base); local_vol=$(median local); plug_vol=$(median plug)
d_base=$(median dbase); d_vol=$(median dvol)
# The plugin's own time for one Mount and one Unmount, asked directly.
plugin_ms=$(python3 - "$work/plugins/benchplug.sock" "$n" <<'PY'
import http.client, json, socket, statistics, sys, time
class C(http.client.HTTPConnection):
    def __init__(self, path): super().__init__("plugin"); self.path = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(self.path)
def call(path, name, body):
    c = C(path); c.request("POST", "/" + name, json.dumps(body)); r = c.getresponse(); r.read(); c.close()
times = []
for i in range(int(sys.argv[2])):
    t0 = time.perf_counter()
    call(sys.argv[1], "VolumeDriver.Mount", {"Name": "plugvol", "ID": "bench%d" % i})
    call(sys.argv[1], "VolumeDriver.Unmount", {"Name": "plugvol", "ID": "bench%d" % i})
    times.append(time.perf_counter() - t0)
print("%.2f" % (statistics.median(times) * 1000))
PY
)

add() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "n/a" || b == "n/a") print "n/a"; else printf "%.2f", a - b }'; }
echo "container run --rm --network none busybox true, median of $n (the variants in turn):"
echo "  shoal, no volume:                 $base ms"
echo "  shoal, local volume:              $local_vol ms   (adds $(add "$local_vol" "$base") ms)"
echo "  shoal, plugin volume:             $plug_vol ms   (adds $(add "$plug_vol" "$base") ms; the plugin's own Mount+Unmount: $plugin_ms ms)"
echo "  docker run, no volume:            $d_base ms"
echo "  docker run, local volume:         $d_vol ms   (adds $(add "$d_vol" "$d_base") ms)"
echo "  ratio shoal/docker, local volume: $(awk -v a="$local_vol" -v b="$d_vol" 'BEGIN { if (b == "n/a") print "n/a"; else printf "%.2f", a / b }')"
