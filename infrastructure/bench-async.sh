#!/usr/bin/env bash
# The async-step benchmark (SPEC §8, issue 7 `async`): the real image collector in the engine on
# the embedded log, storing ~20 KiB images to the real S3 (moto) from an image host with a fixed
# 50 ms latency; `key`, `unordered` and one-at-a-time runs, plus S3 alone for its ceiling. Also
# runs `key` against s3s-fs (crates.io `s3s-fs`, an S3 server in Rust that checks signatures,
# installed once under ~/.cache/catalog-stream/s3s-fs and serving a tmpfs directory), which
# keeps up far better than moto; set ASYNC_S3S=0 to skip it.
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
if [ "${ASYNC_S3S:-1}" != 0 ]; then
    # 0.14.1: later releases need a newer rustc (SPEC §7). --locked: the versions it was
    # released with, not whatever is newest today.
    S3S_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/catalog-stream/s3s-fs"
    S3S_BIN="$S3S_ROOT/bin/s3s-fs"
    if [ ! -x "$S3S_BIN" ]; then
        echo "installing s3s-fs 0.14.1 into $S3S_ROOT" >&2
        cargo install s3s-fs@=0.14.1 --features binary --locked --root "$S3S_ROOT" >&2
    fi
    S3S_DATA="$(mktemp -d -p "$([ -d /dev/shm ] && echo /dev/shm || echo "${TMPDIR:-/tmp}")" s3s-fs.XXXXXX)"
    S3S_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    "$S3S_BIN" --host 127.0.0.1 --port "$S3S_PORT" \
        --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" "$S3S_DATA" \
        >"$S3S_DATA.log" 2>&1 &
    S3S_PID=$!
    # `|| true`: under `set -e` a failing kill or wait (the server's exit status after the
    # signal) would end the trap before the directory is removed.
    trap 'kill "$S3S_PID" 2>/dev/null || true; wait "$S3S_PID" 2>/dev/null || true; rm -rf "$S3S_DATA" "$S3S_DATA.log"' EXIT
    for _ in $(seq 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$S3S_PORT") 2>/dev/null && break
        kill -0 "$S3S_PID" 2>/dev/null || { cat "$S3S_DATA.log" >&2; echo "s3s-fs did not start" >&2; exit 1; }
        sleep 0.1
    done
    export ASYNC_S3S_ENDPOINT="http://127.0.0.1:$S3S_PORT" ASYNC_S3S_PID="$S3S_PID"
fi
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
cargo bench -p catalog-stream --bench async_step -- "$@"
