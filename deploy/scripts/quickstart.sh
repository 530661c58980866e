#!/bin/sh
# The main job: build shoal and run `shoal dev`, a one-node cluster in the foreground
# with an embedded demo service (two replicas of busybox-static from this host, logs
# shown live). In another terminal: `shoal service ls`, `shoal service ps hello`,
# `shoal service scale hello=4`. Ctrl-C stops it and removes everything it made.
# SHOAL_DEV_SECONDS=N stops it by itself after N seconds. Needs root.
set -eu
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 && exec sudo -E "$0" "$@"
    echo "$0 needs root (namespaces, mounts, cgroups): run it as root" >&2
    exit 1
fi
cd "$(dirname "$0")/../.."
sh deploy/scripts/install-deps.sh
cargo build --release -p shoal-cli
install -m 0755 target/release/shoal /usr/local/bin/shoal
if [ -n "${SHOAL_DEV_SECONDS:-}" ]; then
    exec shoal dev --exit-after "$SHOAL_DEV_SECONDS"
fi
exec shoal dev
