#!/bin/sh
# The main job, for now: build shoal, start a daemon on temporary roots, import a busybox
# image, run containers, and clean everything up. Needs root (namespaces, mounts, cgroups).
set -eu
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 && exec sudo -E "$0" "$@"
    echo "$0 needs root (namespaces, mounts, cgroups): run it as root" >&2
    exit 1
fi
cd "$(dirname "$0")/../.."
sh deploy/scripts/install-deps.sh
cargo build --release -p shoal-cli
shoal=$PWD/target/release/shoal
root=$(mktemp -d /tmp/shoal-quickstart-XXXXXX)
sock="$root/run/shoal.sock"
"$shoal" daemon --data-root "$root/data" --run-root "$root/run" >"$root/daemon.log" 2>&1 &
daemon=$!
cleanup() {
    "$shoal" -H "$sock" container rm -f web >/dev/null 2>&1 || true
    kill "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
    rm -rf "$root"
}
trap cleanup EXIT INT TERM
i=0; while [ ! -S "$sock" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
sh tests/images/busybox-rootfs.sh "$root/busybox.tar"
set -x
"$shoal" -H "$sock" image import "$root/busybox.tar" busybox
"$shoal" -H "$sock" image ls
"$shoal" -H "$sock" container run --rm busybox sh -c 'echo "hello from $(hostname), PID $$"; cat /proc/self/status | grep CapEff'
"$shoal" -H "$sock" container run -d --name web -p 18080:80 busybox httpd -f -p 80 -h /etc
"$shoal" -H "$sock" container ls
busybox wget -q -O - http://127.0.0.1:18080/hostname || true
"$shoal" -H "$sock" container exec web ps
"$shoal" -H "$sock" container stop -t 1 web
"$shoal" -H "$sock" container ls -a
