#!/usr/bin/env bash
# Reproduces the Kafka Connect + Debezium MongoDB trial (see ../TRIALS.md):
# SecantusDB (27117) -> Debezium MongoDB source in Connect standalone (REST 18083)
# -> a private KRaft broker (19092/19093) -> console consumer.
# Usage: bash infrastructure/connect/trial.sh [schemas-false|schemas-true|apicurio-avro]
#   apicurio-avro: Apicurio's AvroConverter (Confluent framing) against ../apicurio on 8085,
#   read back with confluent-kafka's AvroDeserializer through /apis/ccompat/v7.
# Env: KAFKA_LIB (broker class path; default ~/.cache/catalog-stream/kafka-4.1.1/lib, else built from
#      ../kafka/pom.xml), SECANTUS_VENV (a venv with SecantusDB==0.7.0b3; default: one made here),
#      TRIAL_ROOT (default /tmp/trial-connect), KAFKA_DATA (default /tmp/trial-kafka),
#      CAPTURE_MODE (default change_streams_update_full; change_streams_update_full_with_pre_image
#      also creates the collection with changeStreamPreAndPostImages so events carry "before").
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
MODE=${1:-schemas-false}
ROOT=${TRIAL_ROOT:-/tmp/trial-connect}
KDATA=${KAFKA_DATA:-/tmp/trial-kafka}
KAFKA_LIB=${KAFKA_LIB:-$HOME/.cache/catalog-stream/kafka-4.1.1/lib}
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
now() { date +%s%N; }
ms() { echo $(( ($2 - $1) / 1000000 )); }
wait_port() { for _ in $(seq 240); do (echo > /dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.25; done; echo "port $1 never opened" >&2; return 1; }

mkdir -p "$ROOT"
# 1. Jars: Connect's class path and the Debezium plugin directory.
t0=$(now)
if [ ! -d "$ROOT/lib" ]; then
  mvn -q -B -f "$HERE/pom.xml" dependency:copy-dependencies -DoutputDirectory="$ROOT/lib"
fi
if [ ! -d "$ROOT/plugins/debezium-mongodb" ]; then
  mvn -q -B -f "$HERE/plugin-pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$ROOT/plugins/debezium-mongodb"
fi
if [ ! -d "$KAFKA_LIB" ]; then
  KAFKA_LIB=$ROOT/kafka-lib
  mvn -q -B -f "$HERE/../kafka/pom.xml" dependency:copy-dependencies -DoutputDirectory="$KAFKA_LIB"
fi
if [ "$MODE" = apicurio-avro ] && [ ! -d "$ROOT/plugins-conv/apicurio-converter" ]; then
  mvn -q -B -f "$HERE/converter-pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$ROOT/plugins-conv/apicurio-converter"
fi
echo "jars ready in $(ms "$t0" "$(now)") ms"

# 2. SecantusDB and pymongo.
if [ -z "${SECANTUS_VENV:-}" ]; then
  SECANTUS_VENV=$ROOT/venv
  [ -x "$SECANTUS_VENV/bin/secantusd-py" ] || { python3 -m venv "$SECANTUS_VENV"; "$SECANTUS_VENV/bin/pip" install -q SecantusDB==0.7.0b3 pymongo; }
fi
PY=$SECANTUS_VENV/bin/python
"$PY" -c 'import pymongo' 2>/dev/null || { PY=$ROOT/pyvenv/bin/python; [ -x "$PY" ] || { python3 -m venv "$ROOT/pyvenv"; "$ROOT/pyvenv/bin/pip" install -q pymongo; }; }
"$SECANTUS_VENV/bin/secantusd-py" --host 127.0.0.1 --port 27117 --storage-path :memory: > "$ROOT/secantus.log" 2>&1 &
PIDS+=($!)
wait_port 27117

if [ "$MODE" = apicurio-avro ]; then
  APICURIO_PID=$(bash "$HERE/../apicurio/start.sh" 8085 | tail -1)
  PIDS+=("$APICURIO_PID")
  AVRO_PY=$ROOT/avrovenv/bin/python
  [ -x "$AVRO_PY" ] || { python3 -m venv "$ROOT/avrovenv"; "$ROOT/avrovenv/bin/pip" install -q "confluent-kafka[avro,schemaregistry]==2.16.1"; }
fi

# 3. A private single-node KRaft broker.
rm -rf "$KDATA"; mkdir -p "$KDATA"
t0=$(now)
java -cp "$KAFKA_LIB/*" kafka.tools.StorageTool format --standalone \
  -t "$(java -cp "$KAFKA_LIB/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)" \
  -c "$HERE/broker.properties" > "$KDATA/format.log" 2>&1
java -Xmx512m -Dlog4j2.configurationFile="$HERE/log4j2.properties" -cp "$KAFKA_LIB/*" kafka.Kafka "$HERE/broker.properties" > "$KDATA/broker.log" 2>&1 &
PIDS+=($!)
wait_port 19092
echo "broker up in $(ms "$t0" "$(now)") ms (format included)"

# 4. Seed one document (for the snapshot), then start Connect.
CAPTURE_MODE=${CAPTURE_MODE:-} "$PY" - <<'PYEOF'
import pymongo
c = pymongo.MongoClient("mongodb://127.0.0.1:27117/?replicaSet=secantus")
import os
c.catalog.products.drop()
if "pre_image" in os.environ.get("CAPTURE_MODE", ""):
    c.catalog.create_collection("products", changeStreamPreAndPostImages={"enabled": True})
c.catalog.products.insert_one({"_id": "seed-1", "sku": "SEED-1", "name": "seed", "price": 1.5})
PYEOF
rm -f "$ROOT/connect.offsets"
WORKER=$ROOT/worker.properties
if [ "$MODE" = schemas-true ]; then
  sed 's/schemas.enable=false/schemas.enable=true/' "$HERE/worker.properties" > "$WORKER"
elif [ "$MODE" = apicurio-avro ]; then
  cp "$HERE/worker-apicurio.properties" "$WORKER"
else
  cp "$HERE/worker.properties" "$WORKER"
fi
sed -i "s#/tmp/trial-connect#$ROOT#g" "$WORKER"
CONNECTOR=$ROOT/mongo-source.properties
sed "s/^capture.mode=.*/capture.mode=${CAPTURE_MODE:-change_streams_update_full}/" "$HERE/mongo-source.properties" > "$CONNECTOR"
t0=$(now)
java -Xmx512m -Dlog4j2.configurationFile="$HERE/log4j2.properties" -cp "$ROOT/lib/*" \
  org.apache.kafka.connect.cli.ConnectStandalone "$WORKER" "$CONNECTOR" > "$ROOT/connect.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 240); do
  curl -sf http://127.0.0.1:18083/connectors/catalog-mongo-source/status 2>/dev/null | grep -q '"tasks":\[{"id":0,"state":"RUNNING"' && break
  sleep 0.5
done
echo "connect task RUNNING after $(ms "$t0" "$(now)") ms"
curl -s http://127.0.0.1:18083/connectors/catalog-mongo-source/status; echo
sleep 3

# 5. Insert, update, replace, delete.
"$PY" - <<'PYEOF'
import pymongo, time
p = pymongo.MongoClient("mongodb://127.0.0.1:27117/?replicaSet=secantus").catalog.products
p.insert_one({"_id": "p-1", "sku": "SKU-1", "name": "Widget", "price": 9.99, "tags": ["a", "b"]}); time.sleep(0.5)
p.update_one({"_id": "p-1"}, {"$set": {"price": 12.5}, "$unset": {"tags": ""}}); time.sleep(0.5)
p.replace_one({"_id": "p-1"}, {"sku": "SKU-1", "name": "Widget v2", "price": 13.0}); time.sleep(0.5)
p.delete_one({"_id": "p-1"})
PYEOF
sleep 4

# 6. Consume the topic and summarise.
if [ "$MODE" = apicurio-avro ]; then
  timeout 90 "$AVRO_PY" "$HERE/consume_avro.py" catalog.catalog.products 127.0.0.1:19092 \
    http://127.0.0.1:8085/apis/ccompat/v7 | tee "$ROOT/consumed-$MODE.txt"
  if tail -1 "$ROOT/consumed-$MODE.txt" | grep -q "events: r c u u d tombstone"; then echo "RESULT: PASS"; else echo "RESULT: FAIL"; fi
  curl -s http://127.0.0.1:8085/apis/ccompat/v7/subjects; echo
  exit 0
fi
OUT=$ROOT/consumed-$MODE.txt
timeout 60 java -cp "$KAFKA_LIB/*" org.apache.kafka.tools.consumer.ConsoleConsumer \
  --bootstrap-server 127.0.0.1:19092 --topic catalog.catalog.products --from-beginning \
  --property print.key=true --property print.null=true --property key.separator=' | ' \
  --timeout-ms 8000 2>/dev/null | grep ' | ' > "$OUT" || true
python3 - "$OUT" <<'PYEOF'
import json, sys
ops = []
for line in open(sys.argv[1]):
    key, value = line.rstrip("\n").split(" | ", 1)
    if value == "null":
        ops.append("tombstone"); continue
    v = json.loads(value)
    v = v.get("payload", v)
    ops.append(v["op"] + ("(before)" if v.get("before") else ""))
print("events:", " ".join(ops))
want = ["r", "c", "u", "u", "d", "tombstone"]
plain = [o.split("(")[0] for o in ops]
print("RESULT:", "PASS" if plain == want else "FAIL (wanted %s)" % " ".join(want))
PYEOF
grep -E " ERROR " "$ROOT/connect.log" | cut -c1-240 || true
