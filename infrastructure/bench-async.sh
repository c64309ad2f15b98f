#!/usr/bin/env bash
# The async-step benchmark (SPEC §8, issue 7 `async`): the real image collector in the engine on
# the embedded log, storing ~20 KiB images to the real S3 (moto) from an image host with a fixed
# 50 ms latency; `key`, `unordered` and one-at-a-time runs, plus S3 alone for its ceiling.
# Starts S3 if needed (infrastructure/up.sh starts nothing twice), builds in release, prints a
# markdown table and `RESULT async_*` lines. Extra arguments go to the benchmark, e.g.
#   infrastructure/bench-async.sh --events 5000 --keys 1000 --concurrency 256 --sequential-events 200
set -euo pipefail

INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$INFRA_DIR/.."

"$INFRA_DIR/up.sh" s3
set -a
# shellcheck source=/dev/null # written by up.sh
source "$INFRA_DIR/.env"
set +a
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
cargo bench -p catalog-stream --bench async_step -- "$@"
