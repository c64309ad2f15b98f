#!/usr/bin/env bash
# Stops exactly the servers infrastructure/up.sh started (by their PID files), nothing else,
# and removes their runtime state under infrastructure/.run.
set -uo pipefail

INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RUN_DIR="$INFRA_DIR/.run"

stop() {
    local name="$1" pid_file="$RUN_DIR/$1.pid"
    [[ -f "$pid_file" ]] || return 0
    local pid
    pid="$(cat "$pid_file")"
    if kill -0 "$pid" 2>/dev/null; then
        printf '[down] stopping %s (pid %s)\n' "$name" "$pid" >&2
        # up.sh starts each server as a session leader: signal the whole group so children go too.
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 1 60); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$pid" 2>/dev/null; then
            printf '[down] %s did not stop in 30 s; killing it\n' "$name" >&2
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
        fi
    fi
    rm -f "$pid_file"
}

for name in prometheus registry s3 mongo kafka; do stop "$name"; done
rm -rf "$RUN_DIR"
