#!/usr/bin/env bash
# The side-by-side benchmarks of SPEC §8 (issue 7).
#
#   infrastructure/bench.sh [engine|stateful|state|async|e2e|ingest|all]   (default: all, every
#   one in that order; async runs infrastructure/bench-async.sh; e2e and ingest run the standalone
#   part of infrastructure/bench-standalone.sh, then infrastructure/bench_distributed.py against
#   the four distributed services)
#
# engine: builds the catalog-bench binaries (release), the Kafka Streams contender
# (infrastructure/bench/kafka-streams, jars from Maven Central, compiled with javac) and the Quix
# Streams venv (~/.cache/catalog-stream/bench-venv), starts Kafka and the registry through up.sh,
# fills one input topic per partition count once (BENCH_RECORDS Avro envelopes, default 200k),
# then runs every contender alternately BENCH_RUNS times (default 3), each with a fresh consumer
# group and its own fresh output topic, measured from the outside by `bench-harness measure`.
# Prints a markdown table of medians and `RESULT …` lines. Raw lines go to $BENCH_OUT
# (default infrastructure/.run/bench-engine.txt). BENCH_ENV=/path/to/.env uses servers already
# running instead of starting them with up.sh.
# stateful: the stateful operators against Kafka Streams. Starts Kafka through up.sh (or uses
# BENCH_ENV), builds catalog-bench (release) and the Kafka Streams programs
# (infrastructure/kafka-streams/build.sh), fills `bench.stateful.v1.in.<p>p.<N>` once per partition
# count with `bench-harness produce-keyed` (BENCH_RECORDS records, default 200k, over BENCH_KEYS
# keys, default 10k, timestamps over the last BENCH_SPAN_MS, default 20 minutes), then for
# BENCH_RUNS runs and each scenario of BENCH_SCENARIOS (default `count windowed-count`) runs every
# contender of BENCH_STATEFUL_CONTENDERS (default `ours kafka_streams`) alternately, each with a
# fresh group and output topic, measured by `bench-harness measure --until-count-sum N` (complete
# when the last count per output key sums to N; records/s from the contender's start). `ours` is
# `$BIN/stateful-bench --scenario S --input I --output O --group G`, skipped (with a log line)
# while that binary does not exist; `kafka_streams` is StatefulBench (1 stream thread for 1
# partition, 2 for more). Raw lines go to $BENCH_STATEFUL_OUT (default
# infrastructure/.run/bench-stateful.txt), then a markdown table of medians and `RESULT stateful_…`
# lines.
# state: `cargo bench -p state`.
set -euo pipefail

INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$INFRA_DIR/.." && pwd)"
BENCH_DIR="$INFRA_DIR/bench"
CACHE_DIR="${CATALOG_STREAM_CACHE:-$HOME/.cache/catalog-stream}"
VENV="$CACHE_DIR/bench-venv"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_DIR/target}"
BIN="$TARGET_DIR/release"
RUNS="${BENCH_RUNS:-3}"
N="${BENCH_RECORDS:-200000}"
PARTITIONS="${BENCH_PARTITIONS:-1 4}"
CONTENDERS="${BENCH_CONTENDERS:-ours rdkafka kafka_streams quix ours_tuned ours_passthrough}"
OUT="${BENCH_OUT:-$INFRA_DIR/.run/bench-engine.txt}"
export RUST_BACKTRACE=0

log() { printf '[bench] %s\n' "$*" >&2; }

prepare_engine() {
    # BENCH_ENV=path/to/.env: use servers already running (e.g. started by up.sh in another
    # checkout or worktree) instead of starting them here.
    if [[ -n "${BENCH_ENV:-}" ]]; then
        log "using the servers in $BENCH_ENV (up.sh not run)"
    else
        "$INFRA_DIR/up.sh" kafka registry
    fi
    set -a
    # shellcheck disable=SC1090,SC1091
    source "${BENCH_ENV:-$INFRA_DIR/.env}"
    set +a
    log "building catalog-bench (release)"
    (cd "$REPO_DIR" && cargo build -q --release -p catalog-bench)
    if [[ " $CONTENDERS " == *" kafka_streams "* ]]; then
        local ks="$BENCH_DIR/kafka-streams"
        if [[ ! -f "$ks/lib/kafka-streams-4.1.1.jar" ]]; then
            log "fetching Kafka Streams 4.1.1 and Avro from Maven Central"
            (cd "$ks" && mvn -q dependency:copy-dependencies -DoutputDirectory=lib)
        fi
        mkdir -p "$ks/classes"
        javac -nowarn -cp "$ks/lib/*" -d "$ks/classes" "$ks/src/StreamsBench.java"
        cp "$BENCH_DIR/schemas/product.avsc" "$ks/classes/"
    fi
    if [[ " $CONTENDERS " == *" quix "* && ! -x "$VENV/bin/python" ]]; then
        log "installing quixstreams into $VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q 'quixstreams[avro]==3.28.1'
    fi
}

# run_one CONTENDER PARTITIONS: one measured run; appends its MEASURE line to $OUT.
run_one() {
    local who="$1" p="$2" id="$RANDOM$RANDOM"
    local input="bench.engine.v1.in.${p}p.$N" output="bench.out.$who.${p}p.$id" group="bench-$who-$id"
    local expect=$((N - N / 10)) fields="id,sku,price_cents,source_ts_ms" threads=1
    local cmd
    case "$who" in
        ours) cmd=("$BIN/engine-bench" --input "$input" --output "$output" --group "$group") ;;
        ours_tuned) cmd=("$BIN/engine-bench" --input "$input" --output "$output" --group "$group"
            --max-in-flight 50000 --cache-register --current-thread) ;;
        ours_passthrough)
            # The pipe's work (key and value bytes copied) on the engine.
            expect=$N fields="op,after,source"
            cmd=("$BIN/engine-bench" --input "$input" --output "$output" --group "$group" --passthrough) ;;
        rdkafka)
            expect=$N fields="op,after,source"
            cmd=("$BIN/rdkafka-pipe" --input "$input" --output "$output" --group "$group") ;;
        kafka_streams)
            ((p > 1)) && threads=2
            local ks="$BENCH_DIR/kafka-streams"
            cmd=(java -Xmx1g -cp "$ks/classes:$ks/lib/*" StreamsBench "$input" "$output" "$group" "$threads") ;;
        quix) cmd=("$VENV/bin/python" "$BENCH_DIR/quix/quix_bench.py" "$input" "$output" "$group") ;;
        *) log "unknown contender $who"; exit 2 ;;
    esac
    local line
    line=$("$BIN/bench-harness" measure --label "$who" --output "$output" --partitions "$p" \
        --records "$N" --expect "$expect" --fields "$fields" -- "${cmd[@]}" \
        2>>"$INFRA_DIR/.run/bench-$who.log" | grep '^MEASURE' || true)
    if [[ -z "$line" ]]; then
        line="MEASURE label=$who partitions=$p records=$N failed=1"
        log "$who ($p partitions) failed; see $INFRA_DIR/.run/bench-$who.log"
    fi
    log "$line"
    echo "$line" >>"$OUT"
}

engine() {
    prepare_engine
    mkdir -p "$(dirname "$OUT")"
    : >"$OUT"
    for p in $PARTITIONS; do
        "$BIN/bench-harness" produce --topic "bench.engine.v1.in.${p}p.$N" --partitions "$p" --records "$N"
    done
    for run in $(seq 1 "$RUNS"); do
        for p in $PARTITIONS; do
            for who in $CONTENDERS; do
                log "run $run/$RUNS: $who, $p partition(s)"
                run_one "$who" "$p"
            done
        done
    done
    {
        echo "machine: $(nproc) cores, $(free -m | awk '/^Mem:/{print $2}') MiB RAM, load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "records: $N per run, runs: $RUNS, registry: $SCHEMA_REGISTRY_URL"
    } | tee -a "$OUT"
    python3 "$BENCH_DIR/summarise.py" "$OUT"
}

STATEFUL_OUT="${BENCH_STATEFUL_OUT:-$INFRA_DIR/.run/bench-stateful.txt}"
STATEFUL_CONTENDERS="${BENCH_STATEFUL_CONTENDERS:-ours kafka_streams}"
SCENARIOS="${BENCH_SCENARIOS:-count windowed-count}"
KEYS="${BENCH_KEYS:-10000}"
SPAN_MS="${BENCH_SPAN_MS:-1200000}"

# run_stateful SCENARIO CONTENDER PARTITIONS: one measured run; appends its MEASURE line to
# $STATEFUL_OUT.
run_stateful() {
    local scenario="$1" who="$2" p="$3" id="$RANDOM$RANDOM"
    local input="bench.stateful.v1.in.${p}p.$N" output="bench.out.stateful.$who.${p}p.$id"
    local group="bench-stateful-$who-$id" threads=1 cmd
    case "$who" in
        ours) cmd=("$BIN/stateful-bench" --scenario "$scenario" --input "$input" --output "$output"
            --group "$group") ;;
        kafka_streams)
            ((p > 1)) && threads=2
            cmd=(java -Xmx1g -cp "$KS_CLASSPATH" StatefulBench "$scenario" "$input" "$output" "$group" "$threads") ;;
        *) log "unknown stateful contender $who"; exit 2 ;;
    esac
    local line log="$INFRA_DIR/.run/bench-stateful-$who.log"
    line=$("$BIN/bench-harness" measure --label "$who" --scenario "$scenario" --output "$output" \
        --partitions "$p" --records "$N" --until-count-sum "$N" -- "${cmd[@]}" \
        2>>"$log" | grep '^MEASURE' || true)
    if [[ -z "$line" ]]; then
        line="MEASURE label=$who scenario=$scenario partitions=$p records=$N failed=1"
        log "$who $scenario ($p partitions) failed; see $log"
    fi
    # The contender's internal topics (Kafka Streams: <application id>-…-changelog).
    "$BIN/bench-harness" cleanup --prefix "$group-" 2>>"$log" || true
    log "$line"
    echo "$line" >>"$STATEFUL_OUT"
}

stateful() {
    if [[ -n "${BENCH_ENV:-}" ]]; then
        log "using the servers in $BENCH_ENV (up.sh not run)"
    else
        "$INFRA_DIR/up.sh" kafka
    fi
    set -a
    # shellcheck disable=SC1090,SC1091
    source "${BENCH_ENV:-$INFRA_DIR/.env}"
    set +a
    log "building catalog-bench (release)"
    (cd "$REPO_DIR" && cargo build -q --release -p catalog-bench)
    local contenders=()
    for who in $STATEFUL_CONTENDERS; do
        if [[ "$who" == ours && ! -x "$BIN/stateful-bench" ]]; then
            log "skipping contender ours: $BIN/stateful-bench does not exist (not built by catalog-bench yet)"
            continue
        fi
        contenders+=("$who")
    done
    if [[ " ${contenders[*]} " == *" kafka_streams "* ]]; then
        log "building the Kafka Streams programs (infrastructure/kafka-streams/build.sh)"
        KS_CLASSPATH="$("$INFRA_DIR/kafka-streams/build.sh")"
    fi
    mkdir -p "$(dirname "$STATEFUL_OUT")" "$INFRA_DIR/.run"
    : >"$STATEFUL_OUT"
    for p in $PARTITIONS; do
        "$BIN/bench-harness" produce-keyed --topic "bench.stateful.v1.in.${p}p.$N" --partitions "$p" \
            --records "$N" --keys "$KEYS" --span-ms "$SPAN_MS"
    done
    for run in $(seq 1 "$RUNS"); do
        for scenario in $SCENARIOS; do
            for p in $PARTITIONS; do
                for who in "${contenders[@]}"; do
                    log "run $run/$RUNS: $who, $scenario, $p partition(s)"
                    run_stateful "$scenario" "$who" "$p"
                done
            done
        done
    done
    {
        echo "machine: $(nproc) cores, $(free -m | awk '/^Mem:/{print $2}') MiB RAM, load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "records: $N per run over $KEYS keys, timestamps over $SPAN_MS ms, runs: $RUNS, contenders: ${contenders[*]}"
    } | tee -a "$STATEFUL_OUT"
    python3 "$BENCH_DIR/summarise.py" "$STATEFUL_OUT"
}

# e2e | ingest, for the distributed services (the standalone ones come from bench-standalone.sh).
distributed() {
    [[ -n "${BENCH_ENV:-}" ]] || "$INFRA_DIR/up.sh" kafka mongo registry >/dev/null
    log "building catalog-stream (release)"
    (cd "$REPO_DIR" && cargo build -q --release -p catalog-stream --bin catalog-stream)
    "$CACHE_DIR/venv/bin/python" "$INFRA_DIR/bench_distributed.py" "$1" \
        --binary "$BIN/catalog-stream" --env "${BENCH_ENV:-$INFRA_DIR/.env}" \
        --moto "$CACHE_DIR/venv/bin/moto_server" --image "$INFRA_DIR/sample-images/mug.png"
}

state() {
    log "cargo bench -p state"
    (cd "$REPO_DIR" && cargo bench -p state)
}

end_to_end() {
    BENCH_PARTS="$1" "$INFRA_DIR/bench-standalone.sh"
    distributed "$1"
}

case "${1:-all}" in
    engine) engine ;;
    stateful) stateful ;;
    state) state ;;
    all) engine; stateful; state; "$INFRA_DIR/bench-async.sh"; end_to_end e2e; end_to_end ingest ;;
    async)
        shift
        exec "$INFRA_DIR/bench-async.sh" "$@" ;;
    e2e | ingest) end_to_end "$1" ;;
    *) log "usage: $0 [engine|stateful|state|async|e2e|ingest|all]"; exit 2 ;;
esac
