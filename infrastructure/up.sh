#!/usr/bin/env bash
# Installs (when missing) and starts the real servers the tests and the distributed mode need,
# each on 127.0.0.1, then writes infrastructure/.env with their addresses.
#
#   infrastructure/up.sh [kafka|mongo|s3|registry|prometheus|all]...   (default: all)
#
# Downloads and builds are cached under $CATALOG_STREAM_CACHE (default ~/.cache/catalog-stream),
# outside the checkout; nothing depends on that cache existing. Runtime state (PID files, logs,
# data) lives in infrastructure/.run, which down.sh cleans up. A server whose PID file names a
# live process is not started again.
set -euo pipefail

INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$INFRA_DIR/.." && pwd)"
CACHE_DIR="${CATALOG_STREAM_CACHE:-$HOME/.cache/catalog-stream}"
RUN_DIR="$INFRA_DIR/.run"
ENV_FILE="$INFRA_DIR/.env"

KAFKA_VERSION=4.1.1
SECANTUS_VERSION=0.7.0b3
MOTO_SPEC='moto[server]>=5.1,<6'
PY_CLIENTS='confluent-kafka[avro,schemaregistry]>=2.6,<3 fastavro>=1.9,<2 pymongo>=4.8,<5'

KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
MONGO_PORT="${MONGO_PORT:-27017}"
S3_PORT="${S3_PORT:-5055}"
REGISTRY_PORT="${REGISTRY_PORT:-8081}"
PROMETHEUS_PORT="${PROMETHEUS_PORT:-9090}"

mkdir -p "$CACHE_DIR" "$RUN_DIR"

log() { printf '[up] %s\n' "$*" >&2; }

fail_with_log() {
    local name="$1"
    log "$name failed to start; last lines of $RUN_DIR/$name.log:"
    tail -n 40 "$RUN_DIR/$name.log" >&2 || true
    exit 1
}

is_running() {
    local pid_file="$RUN_DIR/$1.pid"
    [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_until NAME SECONDS COMMAND...: polls COMMAND until it succeeds; fails with the log tail
# when the server died or did not answer in time.
wait_until() {
    local name="$1" deadline=$((SECONDS + $2))
    shift 2
    until "$@" >/dev/null 2>&1; do
        if ! is_running "$name"; then fail_with_log "$name"; fi
        if ((SECONDS > deadline)); then
            log "$name did not answer within the time allowed"
            fail_with_log "$name"
        fi
        sleep 0.5
    done
}

# start NAME COMMAND...: starts COMMAND in the background in its own session, logging to .run.
start() {
    local name="$1"
    shift
    setsid "$@" >"$RUN_DIR/$name.log" 2>&1 </dev/null &
    echo $! >"$RUN_DIR/$name.pid"
}

ensure_port_free() {
    if port_open "$2"; then
        log "port $2 for $1 is taken by a process up.sh did not start; stop it or set ${1^^}_PORT"
        exit 1
    fi
}

ensure_venv() {
    local venv="$CACHE_DIR/venv" marker="$CACHE_DIR/venv/.catalog-stream-$SECANTUS_VERSION-v3"
    if [[ ! -f "$marker" ]]; then
        log "installing SecantusDB $SECANTUS_VERSION, moto and the Python clients into $venv"
        python3 -m venv "$venv"
        # shellcheck disable=SC2086 # word splitting of the client list is intended
        "$venv/bin/pip" install -q "SecantusDB==$SECANTUS_VERSION" "$MOTO_SPEC" $PY_CLIENTS
        touch "$marker"
    fi
}

ensure_kafka_jars() {
    local lib="$CACHE_DIR/kafka-$KAFKA_VERSION/lib"
    if [[ ! -f "$lib/.complete" ]]; then
        log "fetching Apache Kafka $KAFKA_VERSION from Maven Central into $lib"
        mkdir -p "$lib"
        (cd "$INFRA_DIR/kafka" && mvn -B -Dstyle.color=never dependency:copy-dependencies \
            -Dkafka.version="$KAFKA_VERSION" -DoutputDirectory="$lib") >"$RUN_DIR/kafka-fetch.log" 2>&1 ||
            fail_with_log kafka-fetch
        touch "$lib/.complete"
    fi
    KAFKA_LIB="$lib"
}

up_kafka() {
    if is_running kafka; then log "kafka already running"; return; fi
    ensure_port_free kafka "$KAFKA_PORT"
    command -v java >/dev/null || { log "java is required for Kafka (Java 17+)"; exit 1; }
    ensure_kafka_jars
    local dir="$RUN_DIR/kafka"
    mkdir -p "$dir"
    sed -e "s|@DATA_DIR@|$dir/data|" -e "s|@PORT@|$KAFKA_PORT|g" \
        -e "s|@CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" \
        "$INFRA_DIR/kafka/server.properties.in" >"$dir/server.properties"
    sed -e "s|@LOG_DIR@|$dir|" "$INFRA_DIR/kafka/log4j2.properties" >"$dir/log4j2.properties"
    local java_opts=(-Xms256m -Xmx768m -XX:+UseG1GC "-Dlog4j2.configurationFile=$dir/log4j2.properties")
    if [[ ! -f "$dir/data/meta.properties" ]]; then
        # A KRaft cluster id is 16 random bytes in URL-safe base64; `=` form because it may
        # start with '-'.
        local cluster_id
        cluster_id="$(python3 -c 'import base64, uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')"
        java "${java_opts[@]}" -cp "$KAFKA_LIB/*" kafka.tools.StorageTool format --standalone \
            --cluster-id="$cluster_id" --config="$dir/server.properties" \
            >"$RUN_DIR/kafka-format.log" 2>&1 || fail_with_log kafka-format
    fi
    log "starting kafka on 127.0.0.1:$KAFKA_PORT"
    start kafka java "${java_opts[@]}" -cp "$KAFKA_LIB/*" kafka.Kafka "$dir/server.properties"
    wait_until kafka 120 grep -q "Kafka Server started" "$RUN_DIR/kafka.log"
}

up_mongo() {
    if is_running mongo; then log "mongo already running"; return; fi
    ensure_port_free mongo "$MONGO_PORT"
    ensure_venv
    log "starting SecantusDB on 127.0.0.1:$MONGO_PORT"
    start mongo "$CACHE_DIR/venv/bin/secantusd-py" --host 127.0.0.1 --port "$MONGO_PORT" \
        --storage-path :memory:
    wait_until mongo 60 "$CACHE_DIR/venv/bin/python" -c "
import pymongo
pymongo.MongoClient('mongodb://127.0.0.1:$MONGO_PORT', serverSelectionTimeoutMS=1000).admin.command('ping')"
}

up_s3() {
    if is_running s3; then log "s3 already running"; return; fi
    ensure_port_free s3 "$S3_PORT"
    ensure_venv
    log "starting moto_server (S3) on 127.0.0.1:$S3_PORT"
    start s3 "$CACHE_DIR/venv/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT"
    wait_until s3 60 curl -sf "http://127.0.0.1:$S3_PORT/moto-api/"
}

# The registry: Apicurio Registry 2.4.2.Final (built from Maven Central by apicurio/pom.xml; its
# Confluent-compatible API is at /apis/ccompat/v7), a real third-party registry for the tests.
# REGISTRY_IMPL=project starts the project's own services/schema-registry instead.
REGISTRY_IMPL="${REGISTRY_IMPL:-apicurio}"

registry_url() {
    case "$REGISTRY_IMPL" in
        project) echo "http://127.0.0.1:$REGISTRY_PORT" ;;
        *) echo "http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7" ;;
    esac
}

up_registry() {
    if is_running registry; then log "registry already running"; return; fi
    ensure_port_free registry "$REGISTRY_PORT"
    case "$REGISTRY_IMPL" in
        project)
            log "building the project's schema registry"
            (cd "$REPO_DIR" && cargo build -q -p schema-registry --bin schema-registry)
            local target_dir="${CARGO_TARGET_DIR:-$REPO_DIR/target}"
            log "starting schema-registry on 127.0.0.1:$REGISTRY_PORT"
            start registry "$target_dir/debug/schema-registry" --listen "127.0.0.1:$REGISTRY_PORT"
            ;;
        apicurio)
            local jar="$INFRA_DIR/apicurio/target/apicurio-registry-1-runner.jar"
            if [[ ! -f "$jar" ]]; then
                log "building Apicurio Registry 2.4.2.Final from Maven Central (about a minute)"
                mvn -q -B -Dstyle.color=never -f "$INFRA_DIR/apicurio/pom.xml" package \
                    >"$RUN_DIR/registry-build.log" 2>&1 || fail_with_log registry-build
            fi
            log "starting Apicurio Registry on 127.0.0.1:$REGISTRY_PORT"
            start registry java -Xmx512m -Dquarkus.http.host=127.0.0.1 \
                -Dquarkus.http.port="$REGISTRY_PORT" -jar "$jar"
            ;;
        *) log "REGISTRY_IMPL must be apicurio or project"; exit 2 ;;
    esac
    wait_until registry 120 curl -sf "$(registry_url)/subjects"
}

up_prometheus() {
    if is_running prometheus; then log "prometheus already running"; return; fi
    ensure_port_free prometheus "$PROMETHEUS_PORT"
    if ! command -v prometheus >/dev/null; then
        log "installing Debian's prometheus"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus >/dev/null
    fi
    mkdir -p "$RUN_DIR/prometheus"
    log "starting prometheus on 127.0.0.1:$PROMETHEUS_PORT"
    start prometheus prometheus --config.file="$INFRA_DIR/prometheus/prometheus.yml" \
        --storage.tsdb.path="$RUN_DIR/prometheus" \
        --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" --web.enable-lifecycle
    wait_until prometheus 60 curl -sf "http://127.0.0.1:$PROMETHEUS_PORT/-/ready"
}

write_env() {
    cat >"$ENV_FILE" <<EOF
KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT
MONGODB_URI=mongodb://127.0.0.1:$MONGO_PORT
S3_ENDPOINT=http://127.0.0.1:$S3_PORT
AWS_ACCESS_KEY_ID=testing
AWS_SECRET_ACCESS_KEY=testing
AWS_REGION=us-east-1
SCHEMA_REGISTRY_URL=$(registry_url)
PROMETHEUS_URL=http://127.0.0.1:$PROMETHEUS_PORT
EOF
    cat "$ENV_FILE"
}

components=("$@")
if ((${#components[@]} == 0)); then components=(all); fi
for component in "${components[@]}"; do
    case "$component" in
        kafka) up_kafka ;;
        mongo) up_mongo ;;
        s3) up_s3 ;;
        registry) up_registry ;;
        prometheus) up_prometheus ;;
        all) up_mongo; up_s3; up_registry; up_prometheus; up_kafka ;;
        *) log "unknown component '$component' (kafka|mongo|s3|registry|prometheus|all)"; exit 2 ;;
    esac
done
write_env
