#!/bin/bash
# Overlay networking on the lab: two hosts (a manager and a worker), one overlay network,
# in one run:
#  1. TCP throughput between two task containers on different hosts, over the overlay
#     (iperf3 run from the host inside each container's network namespace, to the other's
#     overlay address), against the same iperf3 host to host over the underlay; ROUNDS
#     rounds, interleaved; medians and the ratio overlay/underlay (aim: >= 0.9);
#  2. DNS lookups of a service name against the embedded server at 127.0.0.11, from inside
#     a task container, against a minimal UDP responder (a canned answer, python) in the
#     same namespace, QUERIES of each, interleaved; median, p95, ratio;
#  3. the VIP following a scale: `service scale web=1 -d` (then `web=3 -d`) until
#     `tasks.web` answers that many addresses and the client container's `shoal_lb` table
#     has that many backends for web's VIP; TRIALS trials each way. Swarm cannot run here,
#     so this one has no peer: absolute figures (aim: within 1 s).
# The underlay is a veth pair and a bridge inside one machine: throughput is bound by the
# CPU (iperf3 and the kernel on both ends share its cores), not by a wire.
# Needs root, iperf3, nft, nsenter, python3, curl. Uses SHOAL_BIN (default: the release build, built first).
# Usage: tests/perf/overlay.sh [ROUNDS] [QUERIES] [TRIALS]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
queries=${2:-200}
trials=${3:-5}
for tool in iperf3 nft nsenter python3 curl; do
    command -v "$tool" >/dev/null || { echo "overlay.sh: $tool is not installed" >&2; exit 1; }
done
if [ -z "${SHOAL_BIN:-}" ]; then
    cargo build --release -q -p shoal-cli --bin shoal
    SHOAL_BIN=$PWD/target/release/shoal
fi
export SHOAL_BIN SHOAL_LAB=perfnet SHOAL_LAB_NET=10.74.0
[ -x "$SHOAL_BIN" ] || { echo "overlay.sh: no $SHOAL_BIN (cargo build --release -p shoal-cli --bin shoal)" >&2; exit 1; }
lab=deploy/lab/shoal-lab
py=$(command -v python3)
work=$(mktemp -d /tmp/shoal-overlay-XXXXXX)
responder=
cleanup() {
    [ -z "$responder" ] || kill "$responder" 2>/dev/null || true
    $lab down >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
$lab down >/dev/null 2>&1 || true

s() { local h=$1; shift; $lab exec "$h" "$SHOAL_BIN" "$@"; }
sock() { echo "/tmp/shoal-lab-$SHOAL_LAB/h$1/run/shoal.sock"; }
in_ns() { local pid=$1; shift; nsenter --net="/proc/$pid/ns/net" -- "$@"; }
wait_for() { # SECONDS COMMAND...: until COMMAND succeeds, or fail
    local deadline=$(( $(date +%s) + $1 )); shift
    until "$@"; do
        [ "$(date +%s)" -lt "$deadline" ] || { echo "overlay.sh: timed out waiting for: $*" >&2; exit 1; }
        sleep 0.1
    done
}

if [ ! -f /tmp/bb.tar ]; then sh tests/images/busybox-rootfs.sh /tmp/bb.tar >/dev/null; fi
$lab cluster 1 1 >/dev/null
for h in 1 2; do s "$h" image import /tmp/bb.tar busybox:test >/dev/null; done
ready() { [ "$(s 1 node ls | grep -c Ready)" -eq 2 ]; }
wait_for 30 ready
s 1 network create -d overlay perf >/dev/null
s 1 service create --name perf --replicas 2 --replicas-max-per-node 1 --network perf \
    --stop-grace-period 1s busybox:test sleep 100000 >/dev/null 2>&1
s 1 service create --name client --constraint node.hostname==h2 --network perf \
    --stop-grace-period 1s busybox:test sleep 100000 >/dev/null 2>&1

# tasks SERVICE: one line per running task: host, container pid, overlay address.
tasks() {
    local line cid addr h pid
    s 1 service ps "$1" --format json | "$py" -c '
import json, sys
for t in json.load(sys.stdin):
    if t["desired_state"] == "running" and t["status"]["state"] == "running":
        print(t["status"]["container_id"], t["networks"][0]["addr"].split("/")[0])' \
    | while read -r cid addr; do
        for h in 1 2; do
            if pid=$("$SHOAL_BIN" -H "$(sock "$h")" container inspect "$cid" 2>/dev/null \
                | "$py" -c 'import json, sys; print(json.load(sys.stdin)[0]["pid"])' 2>/dev/null); then
                echo "$h $pid $addr"
                break
            fi
        done
    done
}
mapfile -t perf_tasks < <(tasks perf | sort -n)
[ "${#perf_tasks[@]}" -eq 2 ] || { echo "overlay.sh: perf has ${#perf_tasks[@]} running tasks, not 2" >&2; exit 1; }
read -r host_a pid_a addr_a <<<"${perf_tasks[0]}"
read -r host_b pid_b addr_b <<<"${perf_tasks[1]}"
[ "$host_a" != "$host_b" ] || { echo "overlay.sh: both perf tasks on host $host_a" >&2; exit 1; }
read -r _ pid_c addr_c <<<"$(tasks client)" || true
[ -n "$pid_c" ] || { echo "overlay.sh: no running client task" >&2; exit 1; }

stats() { # NAME UNIT VALUES...: median and p95
    local name=$1 unit=$2; shift 2
    printf '%s\n' "$@" | sort -g | awk -v name="$name" -v unit="$unit" '{ v[NR] = $1 } END {
        p50 = v[int((NR + 1) / 2)]; p95 = v[int(NR * 0.95 + 0.999)]; if (p95 == "") p95 = v[NR]
        printf "  %-50s n=%-3d median %7.1f %-6s p95 %7.1f %-6s min %.1f  max %.1f\n", name, NR, p50, unit, p95, unit, v[1], v[NR] }'
}
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# 1. Throughput. iperf3 SERVER_NS ADDR CLIENT_NS: received Gbit/s of one 5 s TCP stream.
listening() { nsenter --net="$1" ss -Hltn 'sport = :5201' | grep -q LISTEN; }
iperf() {
    local server=$1 addr=$2 client=$3
    nsenter --net="$server" iperf3 -s -1 -D -B "$addr" >/dev/null
    wait_for 10 listening "$server"
    nsenter --net="$client" iperf3 -c "$addr" -t 5 -J \
        | "$py" -c 'import json, sys; print("%.3f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))'
}
echo "1. TCP throughput, h$host_b → h$host_a, one stream, 5 s, $rounds rounds interleaved:"
overlay=() underlay=()
for r in $(seq "$rounds"); do
    overlay+=("$(iperf "/proc/$pid_a/ns/net" "$addr_a" "/proc/$pid_b/ns/net")")
    underlay+=("$(iperf /run/netns/perfnet-h1 "$SHOAL_LAB_NET.11" /run/netns/perfnet-h2)")
    echo "   round $r: overlay ${overlay[-1]} Gbit/s, underlay ${underlay[-1]} Gbit/s"
done
overlay_med=$(median "${overlay[@]}")
underlay_med=$(median "${underlay[@]}")
tput_ratio=$(awk -v a="$overlay_med" -v b="$underlay_med" 'BEGIN { printf "%.2f", a / b }')
mtu() { sed 's/.* mtu \([0-9]*\).*/\1/'; }
mtu_overlay=$(in_ns "$pid_a" ip -o link show eth1 | mtu)
mtu_underlay=$(ip -n perfnet-h1 -o link show eth0 | mtu)

# 2. DNS. The peer answers every query with the same canned A record, from one python
# process; ours answers from the daemon of the client's host (h2).
cat >"$work/dns.py" <<'PY'
import json, random, socket, struct, sys, time

def query(name):
    tid = random.randrange(65536)
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return tid, struct.pack(">HHHHHH", tid, 0x0100, 1, 0, 0, 0) + q + struct.pack(">HH", 1, 1)

def answers(r):
    """The A records of a reply, or None when it is not a NOERROR answer."""
    _, flags, qd, an, _, _ = struct.unpack(">HHHHHH", r[:12])
    if flags & 0xF:
        return None
    i = 12
    for _ in range(qd):
        while r[i]:
            i += r[i] + 1
        i += 5
    out = []
    for _ in range(an):
        if r[i] & 0xC0 == 0xC0:
            i += 2
        else:
            while r[i]:
                i += r[i] + 1
            i += 1
        kind, _, _, length = struct.unpack(">HHIH", r[i:i + 10])
        i += 10
        if kind == 1:
            out.append(socket.inet_ntoa(r[i:i + 4]))
        i += length
    return out

def ask(sock, server, name):
    tid, m = query(name)
    t0 = time.perf_counter_ns()
    sock.sendto(m, server)
    while True:
        r, _ = sock.recvfrom(4096)
        if struct.unpack(">H", r[:2])[0] == tid:
            return time.perf_counter_ns() - t0, answers(r)

def serve(addr):
    """The peer: the least a DNS server can do, one canned A record for any question."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((addr, 53))
    record = struct.pack(">HHHIH", 0xC00C, 1, 1, 0, 4) + socket.inet_aton("10.0.0.1")
    while True:
        m, peer = sock.recvfrom(4096)
        sock.sendto(m[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + m[12:] + record, peer)

def bench(name, n, ours, peer):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    ours, peer = (ours, 53), (peer, 53)
    for _ in range(20):  # warm up both
        ask(sock, ours, name), ask(sock, peer, name)
    times = {"ours": [], "peer": []}
    for _ in range(n):
        for key, server in (("ours", ours), ("peer", peer)):
            ns, got = ask(sock, server, name)
            if not got:
                sys.exit(f"dns.py: {server[0]} gave no address for {name}")
            times[key].append(ns / 1000)
    print(json.dumps(times))

def count_backends(vip):
    """Backends of VIP in this namespace's shoal_lb table (dnat targets it jumps to)."""
    import subprocess
    text = subprocess.run(["nft", "list", "table", "ip", "shoal_lb"], capture_output=True,
                          text=True).stdout
    chains, chain = {}, None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("chain "):
            chain = line.split()[1]
            chains[chain] = []
        elif chain:
            chains[chain].append(line)
    n = 0
    for line in chains.get("vips", []):
        if line.startswith(f"ip daddr {vip} "):
            words = line.replace(",", " ").replace("}", " ").split()
            n += line.count("dnat to")
            n += sum(1 for i, w in enumerate(words[:-1]) if w == "jump"
                     and any(l.startswith("dnat to") for l in chains.get(words[i + 1], [])))
    return n

def follow(shoal, socket_path, service, want, timeout):
    """Scale SERVICE to WANT, then time until DNS and the VIP's table both show WANT."""
    import subprocess
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    server = ("127.0.0.11", 53)
    _, got = ask(sock, server, service)
    vip = got[0]
    c0 = time.monotonic_ns()
    subprocess.run([shoal, "-H", socket_path, "service", "scale", f"{service}={want}", "-d"],
                   check=True, capture_output=True)
    t0, wall0 = time.monotonic_ns(), time.time_ns()
    dns_ms = nft_ms = None
    while True:
        t = (time.monotonic_ns() - t0) / 1e6
        dns_ok = len(ask(sock, server, f"tasks.{service}")[1] or []) == want
        nft_ok = count_backends(vip) == want
        if dns_ok and dns_ms is None:
            dns_ms = t
        if nft_ok and nft_ms is None:
            nft_ms = t
        if dns_ok and nft_ok:
            break
        if t > timeout * 1000:
            sys.exit(f"dns.py: {service} did not follow to {want} in {timeout} s "
                     f"(dns {'ok' if dns_ok else 'not'}, nft {count_backends(vip)} backends)")
        time.sleep(0.005)
    print(json.dumps({"both": t, "dns": dns_ms, "nft": nft_ms, "cli": (t0 - c0) / 1e6,
                      "wall0": wall0 / 1e6}))

if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "serve":
        serve(sys.argv[2])
    elif cmd == "bench":
        bench(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    elif cmd == "follow":
        follow(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6]))
PY
# Straight from nsenter (which execs python), so that $! is the responder itself.
nsenter --net="/proc/$pid_c/ns/net" -- "$py" "$work/dns.py" serve 127.0.0.12 >/dev/null 2>&1 &
responder=$!
peer_up() { in_ns "$pid_c" ss -Hlun 'sport = :53' | grep -q 127.0.0.12; }
wait_for 10 peer_up
in_ns "$pid_c" "$py" "$work/dns.py" bench perf "$queries" 127.0.0.11 127.0.0.12 >"$work/dns.json"
kill "$responder"
wait "$responder" 2>/dev/null || true
responder=
mapfile -t dns_ours < <("$py" -c 'import json, sys; print(*json.load(open(sys.argv[1]))["ours"], sep="\n")' "$work/dns.json")
mapfile -t dns_peer < <("$py" -c 'import json, sys; print(*json.load(open(sys.argv[1]))["peer"], sep="\n")' "$work/dns.json")
dns_ratio=$(awk -v a="$(median "${dns_ours[@]}")" -v b="$(median "${dns_peer[@]}")" 'BEGIN { printf "%.2f", a / b }')

# 3. The VIP following a scale, seen from the client container on h2 (a worker).
s 1 service create --name web --replicas 3 --network perf --stop-grace-period 1s \
    busybox:test httpd -f -p 80 -h / >/dev/null 2>&1
web_vip=$(in_ns "$pid_c" "$py" -c '
import sys; sys.path.insert(0, sys.argv[1]); import dns, socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
print(dns.ask(s, ("127.0.0.11", 53), "web")[1][0])' "$work")
web_up() { # N: N web containers up, none other still stopping
    local n=0 h
    for h in 1 2; do n=$((n + $(s "$h" container ls | grep -c ' web\.' || true))); done
    [ "$n" -eq "$1" ]
}
down_ms=() up_ms=() down_dns=() up_dns=() down_nft=() up_nft=() up_run=() up_lag=()
# last_running WALL0_MS: ms from WALL0_MS to the last of web's tasks reported running.
last_running() {
    s 1 service ps web --format json | "$py" -c '
import json, sys
ts = [t["status"]["timestamp_ms"] for t in json.load(sys.stdin)
      if t["desired_state"] == "running" and t["status"]["state"] == "running"]
print("%.1f" % (max(ts) - float(sys.argv[1])))' "$1"
}
field() { "$py" -c 'import json, sys; print("%.1f" % json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
for t in $(seq "$trials"); do
    wait_for 30 web_up 3
    r=$(in_ns "$pid_c" "$py" "$work/dns.py" follow "$SHOAL_BIN" "$(sock 1)" web 1 30)
    down_ms+=("$(field "$r" both)") down_dns+=("$(field "$r" dns)") down_nft+=("$(field "$r" nft)")
    wait_for 30 web_up 1
    r=$(in_ns "$pid_c" "$py" "$work/dns.py" follow "$SHOAL_BIN" "$(sock 1)" web 3 30)
    up_ms+=("$(field "$r" both)") up_dns+=("$(field "$r" dns)") up_nft+=("$(field "$r" nft)")
    up_run+=("$(last_running "$(field "$r" wall0)")")
    up_lag+=("$(awk -v a="${up_ms[-1]}" -v b="${up_run[-1]}" 'BEGIN { printf "%.1f", a - b }')")
    echo "   trial $t: 3→1 ${down_ms[-1]} ms, 1→3 ${up_ms[-1]} ms"
done
# The VIP still answers once all is settled: every request through it gets the file.
wait_for 30 web_up 3
ok=0
for i in $(seq 20); do
    code=$(in_ns "$pid_c" curl -s -m 2 -o /dev/null -w '%{http_code}' "http://$web_vip/etc/passwd" || true)
    [ "$code" = 200 ] && ok=$((ok + 1))
done

echo
echo "== overlay networking, lab perfnet (2 hosts), $(basename "$SHOAL_BIN") at $SHOAL_BIN =="
echo "1. TCP throughput, one iperf3 stream, task containers on h$host_a and h$host_b:"
stats "overlay (VXLAN, MTU $mtu_overlay), container to container" "Gbit/s" "${overlay[@]}"
stats "underlay (veth+bridge, MTU $mtu_underlay), host to host" "Gbit/s" "${underlay[@]}"
echo "  ratio overlay/underlay (medians): $tput_ratio   (aim: >= 0.9)"
echo "2. DNS lookup of a service name (A record), from the client container, $queries each:"
stats "shoal's server at 127.0.0.11" "us" "${dns_ours[@]}"
stats "peer: canned-answer python UDP server" "us" "${dns_peer[@]}"
echo "  ratio shoal/peer (medians): $dns_ratio"
echo "3. VIP following a scale of web (httpd), seen from the client on h2, $trials trials:"
stats "3 -> 1: DNS and nft both at 1" "ms" "${down_ms[@]}"
stats "    DNS tasks.web at 1" "ms" "${down_dns[@]}"
stats "    shoal_lb at 1 backend" "ms" "${down_nft[@]}"
stats "1 -> 3: DNS and nft both at 3" "ms" "${up_ms[@]}"
stats "    DNS tasks.web at 3" "ms" "${up_dns[@]}"
stats "    shoal_lb at 3 backends" "ms" "${up_nft[@]}"
stats "    of which: last new task running" "ms" "${up_run[@]}"
stats "    then: both at 3 after it" "ms" "${up_lag[@]}"
echo "  no peer: Swarm cannot run here; aim: within 1 s"
echo "  requests through web's VIP $web_vip after the trials: $ok/20 answered 200"
[ "$ok" -eq 20 ] || { echo "overlay.sh: the VIP did not answer every request" >&2; exit 1; }
