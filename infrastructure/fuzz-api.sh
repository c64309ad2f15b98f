#!/usr/bin/env bash
# API fuzzing (SPEC §9): schemathesis against the /openapi.json of every service: the
# standalone binary, and the distributed `product-collector`, `complete-products`,
# `image-pipeline` and `cdc-source` services against the real servers of infrastructure/.env
# (Kafka, the schema registry, MongoDB, S3: `up.sh all` starts them; this script fails when
# they do not answer). Each service's document lists only the routes that service implements
# (the last two serve only the operational routes: health, readiness, metrics, the document).
#
# Installs schemathesis (pinned) into a venv under ${CATALOG_STREAM_CACHE:-~/.cache/catalog-stream},
# builds the binary with cargo, starts each service on a free port (the distributed ones on a
# MongoDB database, Kafka topics, consumer group and S3 bucket of this run's own, so they touch
# nothing of other runs), runs schemathesis with the checks not_a_server_error,
# status_code_conformance, content_type_conformance and response_schema_conformance
# (FUZZ_MAX_EXAMPLES per operation; repeated with fresh seeds until the service's share of
# requests is reached), stops the service, and exits non-zero on any failure, when a service
# died, or when fewer than 1,000 requests were made in total.
#
# Environment: FUZZ_MAX_EXAMPLES (default 120), FUZZ_WORKERS (default 1), FUZZ_SEED (optional,
# for a reproducible run), CARGO_PROFILE (default dev), FUZZ_SERVICES (default
# "standalone product-collector complete-products image-pipeline cdc-source").
set -euo pipefail

INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$INFRA_DIR/.." && pwd)"
CACHE="${CATALOG_STREAM_CACHE:-$HOME/.cache/catalog-stream}"
VENV="$CACHE/fuzz-venv"
SCHEMATHESIS_VERSION="4.32.5"
MAX_EXAMPLES="${FUZZ_MAX_EXAMPLES:-120}"
# One worker: with two threads, CPython 3.11's `ast.parse` (which hypothesis calls to describe
# its filters) now and then fails with "SystemError: AST constructor recursion depth mismatch"
# (python/cpython#106905, a threading bug fixed in later versions), and schemathesis reports
# a runtime error for whichever operation it was generating.
WORKERS="${FUZZ_WORKERS:-1}"
MIN_REQUESTS=1000
PROFILE="${CARGO_PROFILE:-dev}"
SERVICES="${FUZZ_SERVICES:-standalone product-collector complete-products image-pipeline cdc-source}"

# Each service's share of MIN_REQUESTS, by how many operations it documents (8, 5 and 7): one
# schemathesis run generates up to FUZZ_MAX_EXAMPLES per operation with parameters. The
# operational routes alone take no parameters: about 30 requests a round.
declare -A SHARE=([standalone]=450 [product-collector]=200 [complete-products]=350
    [image-pipeline]=20 [cdc-source]=20)

if [[ ! -x "$VENV/bin/schemathesis" ]] ||
    [[ "$("$VENV/bin/schemathesis" --version 2>/dev/null)" != *"$SCHEMATHESIS_VERSION"* ]]; then
    echo "fuzz-api: installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

cd "$ROOT"
cargo build --quiet --profile "$PROFILE" -p catalog-stream --bin catalog-stream
TARGET_SUBDIR="$PROFILE"
[[ "$PROFILE" == dev ]] && TARGET_SUBDIR=debug
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/$TARGET_SUBDIR/catalog-stream"

WORK="$(mktemp -d)"
PID=""
stop_service() {
    if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    PID=""
}
cleanup() {
    stop_service
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# The shared servers' addresses, for the distributed services.
load_env() {
    local env_file="$INFRA_DIR/.env"
    if [[ ! -f "$env_file" ]]; then
        echo "fuzz-api: $env_file is missing: start the servers with infrastructure/up.sh all" >&2
        exit 1
    fi
    set -a
    # shellcheck disable=SC1090
    . "$env_file"
    set +a
}

RUN_ID="fuzz-$(date +%s)-$$"
# The venv of up.sh: its Kafka and MongoDB clients prepare and clean this run's own data.
CLIENTS="$CACHE/venv/bin/python"
TOPICS_CREATED=""

# This run's topics, created up front: a consumer does not create the topics it subscribes to,
# and complete-products stops when its source topic does not exist.
create_topics() {
    [[ -n "$TOPICS_CREATED" ]] && return
    if [[ ! -x "$CLIENTS" ]]; then
        echo "fuzz-api: $CLIENTS is missing: run infrastructure/up.sh all" >&2
        exit 1
    fi
    "$CLIENTS" - "$KAFKA_BOOTSTRAP" "$RUN_ID" <<'PY'
import sys
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, run_id = sys.argv[1], sys.argv[2]
admin = AdminClient({"bootstrap.servers": bootstrap})
names = [f"{run_id}.{suffix}" for suffix in ("cdc", "upserts", "deletes", "image-events")]
for name, future in admin.create_topics([NewTopic(name, 1, 1) for name in names]).items():
    future.result(30)
PY
    TOPICS_CREATED=1
}

# Starts service $1 on $2 with its log in $WORK/$1.log; sets PID.
start_service() {
    local name="$1" port="$2"
    local log="$WORK/$name.log"
    case "$name" in
        standalone)
            RUST_LOG=warn "$BIN" --listen "127.0.0.1:$port" --data-dir "$WORK/data" >"$log" 2>&1 &
            ;;
        product-collector | complete-products | image-pipeline | cdc-source)
            load_env
            create_topics
            local db="${RUN_ID//-/_}"
            # Topics and group of this run only: the shared broker auto-creates the topics.
            cat >"$WORK/$name.yaml" <<EOF
listen: 127.0.0.1:$port
mongodb: {database: $db}
kafka: {group_id: $RUN_ID-$name}
s3: {bucket: $RUN_ID, create_bucket: true}
topics:
  cdc: $RUN_ID.cdc
  upserts: $RUN_ID.upserts
  deletes: $RUN_ID.deletes
  image_events: $RUN_ID.image-events
state_dir: $WORK/state-$name
EOF
            RUST_LOG=warn "$BIN" "$name" --config "$WORK/$name.yaml" >"$log" 2>&1 &
            ;;
        *)
            echo "fuzz-api: unknown service $name" >&2
            exit 1
            ;;
    esac
    PID=$!
}

# Fuzzes service $1 until it alone made ${SHARE[$1]} requests; adds them to TOTAL and to SUMMARY.
TOTAL=0
SUMMARY=""
fuzz_service() {
    local name="$1"
    local port base
    port="$(free_port)"
    base="http://127.0.0.1:$port"
    local started=$SECONDS
    start_service "$name" "$port"
    # /readyz, not /healthz: the distributed services must reach their servers first.
    for _ in $(seq 1 600); do
        if curl -fsS "$base/readyz" >/dev/null 2>&1; then break; fi
        if ! kill -0 "$PID" 2>/dev/null; then
            echo "fuzz-api: $name exited at start:" >&2
            cat "$WORK/$name.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    if ! curl -fsS "$base/readyz"; then
        echo >&2
        echo "fuzz-api: $name not ready in 60 s (are the servers of infrastructure/.env up?):" >&2
        tail -50 "$WORK/$name.log" >&2
        exit 1
    fi
    echo

    # Hypothesis stops generating once it has exhausted what it considers distinct inputs, so
    # one run's count varies with the seed (797 to 1,726 seen on the standalone). Rounds with
    # fresh seeds are run until the service's share is reached; each round must pass on its own.
    local want="${SHARE[$name]:-$MIN_REQUESTS}"
    local made=0 round=0 max_rounds=6
    while [[ "$made" -lt "$want" && "$round" -lt "$max_rounds" ]]; do
        round=$((round + 1))
        local seed_args=()
        [[ -n "${FUZZ_SEED:-}" ]] && seed_args=(--seed "$((FUZZ_SEED + round - 1))")
        local status=0
        "$VENV/bin/schemathesis" run "$base/openapi.json" \
            --url "$base" \
            --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
            --max-examples "$MAX_EXAMPLES" \
            --workers "$WORKERS" \
            --generation-database none \
            --no-color \
            "${seed_args[@]}" \
            2>&1 | tee "$WORK/schemathesis.log" || status=$?

        if ! kill -0 "$PID" 2>/dev/null; then
            echo "fuzz-api: $name died during round $round:" >&2
            tail -50 "$WORK/$name.log" >&2
            exit 1
        fi

        # "Test cases:" summary line, e.g. "Test cases:\n  1234 generated, 1234 passed".
        local requests
        requests="$(grep -Eo '[0-9]+ generated' "$WORK/schemathesis.log" | head -1 | grep -Eo '[0-9]+' || true)"
        echo "fuzz-api: service=$name round=$round requests_generated=${requests:-unknown} schemathesis_exit=$status"
        if [[ "$status" -ne 0 ]]; then
            echo "fuzz-api: $name failed; its log:" >&2
            tail -50 "$WORK/$name.log" >&2
            exit "$status"
        fi
        if [[ -z "$requests" ]]; then
            echo "fuzz-api: could not read the number of generated requests from schemathesis" >&2
            exit 1
        fi
        made=$((made + requests))
    done
    stop_service
    TOTAL=$((TOTAL + made))
    SUMMARY="$SUMMARY $name=$made"
    echo "fuzz-api: service=$name rounds=$round requests_generated=$made seconds=$((SECONDS - started))"
    if [[ "$made" -lt "$want" ]]; then
        echo "fuzz-api: $name: fewer than $want generated requests in $round rounds ($made)" >&2
        exit 1
    fi
}

for service in $SERVICES; do
    fuzz_service "$service"
done

# The distributed services' data: this run's own database and topics, which the shared
# servers would keep otherwise (best effort: a failed clean-up does not fail the fuzzing).
if [[ -n "$TOPICS_CREATED" ]]; then
    "$CLIENTS" - "$MONGODB_URI" "${RUN_ID//-/_}" "$KAFKA_BOOTSTRAP" "$RUN_ID" <<'PY' || true
import sys
import pymongo
from confluent_kafka.admin import AdminClient

uri, database, bootstrap, run_id = sys.argv[1:5]
pymongo.MongoClient(uri, serverSelectionTimeoutMS=3000).drop_database(database)
admin = AdminClient({"bootstrap.servers": bootstrap})
names = [f"{run_id}.{suffix}" for suffix in ("cdc", "upserts", "deletes", "image-events")]
for future in admin.delete_topics(names).values():
    future.result(30)
PY
fi

echo "fuzz-api: requests_generated_total=$TOTAL ($SUMMARY )"
if [[ "$TOTAL" -lt "$MIN_REQUESTS" ]]; then
    echo "fuzz-api: fewer than $MIN_REQUESTS generated requests in total ($TOTAL)" >&2
    exit 1
fi
