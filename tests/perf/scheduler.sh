#!/bin/sh
# Scheduler core throughput (issue 3): 100,000 tasks on 1,000 nodes and 10,000 on 100.
set -eu
cd "$(dirname "$0")/../.."
cargo bench -q -p shoal-manager --bench scheduler 2>&1 | grep -E 'scheduler:|peer:'
