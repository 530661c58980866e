#!/bin/sh
# Runs every test of the workspace: installs the packages the kernel tests need, builds the
# shoal binary the end-to-end tests drive, then runs the test suites. Run as root for the
# kernel tests (they print SKIPPED with a reason otherwise).
set -eu
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 && exec sudo -E "$0" "$@"
    echo "$0 needs root (namespaces, mounts, cgroups): run it as root" >&2
    exit 1
fi
cd "$(dirname "$0")/.."
sh deploy/scripts/install-deps.sh --tests
cargo build -p shoal-cli --bin shoal
cargo test --workspace --no-fail-fast -- --test-threads="${SHOAL_TEST_THREADS:-4}"
