#!/usr/bin/env bash
# The standalone-mode benchmarks (SPEC §8, issue 5): end-to-end POST → visible in GET at 200
# products/s against an image server with a fixed 10 ms latency; ingest with Debian `wrk`
# against POST /api/v1/products (distinct products from a Lua script; images are collected by
# the same process in the background and compete for the cores); RSS of the process after
# 100k products (VmHWM and VmRSS). Builds in release, prints a markdown table and
# `RESULT standalone_*` lines. Tuning through the environment:
#   E2E_SECONDS=20 WRK_THREADS=2 WRK_CONNECTIONS=32 WRK_SECONDS=15 RSS_PRODUCTS=100000
set -euo pipefail

INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$INFRA_DIR/.."

if ! command -v wrk >/dev/null; then
    echo "wrk is missing: installing Debian's wrk" >&2
    if [ "$(id -u)" = 0 ]; then apt-get install -y wrk >&2; else sudo apt-get install -y wrk >&2; fi
fi
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
cargo bench -p catalog-stream --bench standalone -- "$@"
