#!/bin/sh
# Installs the Debian packages shoal's demo and tests use. Safe to run again.
set -eu
pkgs="busybox-static iproute2 nftables runc crun util-linux"
[ "${1:-}" = "--tests" ] && pkgs="$pkgs docker-registry iperf3"
missing=
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "installing:$missing" >&2
    if [ "$(id -u)" -ne 0 ]; then
        echo "need root to install packages: run with sudo" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
