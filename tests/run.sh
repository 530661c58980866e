#!/bin/bash
# Runs every test of the workspace: installs the packages the kernel tests need, builds the
# shoal binary the end-to-end tests drive, then runs the test suites. Run as root for the
# kernel tests (they print SKIPPED with a reason otherwise).
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 && exec sudo -E bash "$0" "$@"
    echo "$0 needs root (namespaces, mounts, cgroups): run it as root" >&2
    exit 1
fi
cd "$(dirname "$0")/.."
sh deploy/scripts/install-deps.sh --tests
cargo build -p shoal-cli --bin shoal
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# --show-output makes the "SKIPPED: reason" lines of skipped kernel tests visible.
cargo test --workspace --no-fail-fast -- --test-threads="${SHOAL_TEST_THREADS:-4}" --show-output 2>&1 | tee "$log" || status=1
# cargo's last lines are the (empty) doc-test runs; close with the totals of every suite.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s; exit (f > 0) }' "$log" || status=1
grep -h 'SKIPPED' "$log" | sort | uniq -c || true
# The failures again, last, where a truncated CI log still shows them.
if [ "$status" -ne 0 ]; then
    echo "--- failures (first lines of each):"
    grep -h -A12 'panicked at' "$log" | grep -v '^ *[0-9]*: \|^ *at ' | head -150 || true
fi
exit "$status"
