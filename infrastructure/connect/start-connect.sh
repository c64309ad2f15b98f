#!/usr/bin/env bash
# Fetches (once) and starts Kafka Connect 4.1.1 with the Debezium MongoDB source connector
# 3.6.1.Final and Apicurio's converters 2.4.2.Final (see ../TRIALS.md, section B), in the
# background. Prints the Connect PID on the last line of stdout; stop it with `kill PID`.
#
# Usage: bash infrastructure/connect/start-connect.sh [--distributed] WORKER.properties [CONNECTOR.properties...]
#        bash infrastructure/connect/start-connect.sh --fetch-only
#   Standalone by default (worker + connector files); `--distributed` runs ConnectDistributed
#   with the worker file only (connectors then go through the REST API).
#   When the worker file sets no `plugin.path`, a copy with the cached plugin directory is used.
#   Waits until the REST API answers (`listeners`, default http://127.0.0.1:8083) and fails
#   (exit 1, with the log's tail on stderr) if Connect exits or does not answer in time.
#
# Env: CONNECT_HOME  where the jars are cached (default ~/.cache/catalog-stream/connect): a
#                    cache only, filled with Maven from the poms next to this script when absent;
#      CONNECT_LOG   the log file (default: next to the worker file, `connect.log`);
#      CONNECT_HEAP  -Xmx (default 384m); JAVA (default java);
#      CONNECT_READY_TIMEOUT seconds to wait for the REST API (default 90).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CONNECT_HOME=${CONNECT_HOME:-$HOME/.cache/catalog-stream/connect}
now() { date +%s%N; }
ms() { echo $(( ($2 - $1) / 1000000 )); }

# Fetches one Maven project's dependencies into DEST, atomically (a concurrent run or an
# interrupted fetch never leaves a half-filled directory behind).
fetch() {
  local pom=$1 dest=$2 scope=${3:-}
  [ -d "$dest" ] && return 0
  mkdir -p "$(dirname "$dest")"
  local tmp
  tmp=$(mktemp -d "$dest.tmp.XXXXXX")
  local args=(-q -B -f "$pom" dependency:copy-dependencies "-DoutputDirectory=$tmp")
  [ -n "$scope" ] && args+=("-DincludeScope=$scope")
  if ! mvn "${args[@]}" >&2; then
    rm -rf "$tmp"
    echo "start-connect: cannot fetch the jars of $pom with Maven" >&2
    return 1
  fi
  mv -T "$tmp" "$dest" 2>/dev/null || rm -rf "$tmp"
}

t0=$(now)
fetch "$HERE/pom.xml" "$CONNECT_HOME/lib"
fetch "$HERE/plugin-pom.xml" "$CONNECT_HOME/plugins/debezium-mongodb" runtime
fetch "$HERE/converter-pom.xml" "$CONNECT_HOME/plugins/apicurio-converter" runtime
echo "start-connect: jars ready in $CONNECT_HOME after $(ms "$t0" "$(now)") ms" >&2

MAIN=org.apache.kafka.connect.cli.ConnectStandalone
if [ "${1:-}" = --fetch-only ]; then
  exit 0
elif [ "${1:-}" = --distributed ]; then
  MAIN=org.apache.kafka.connect.cli.ConnectDistributed
  shift
fi
[ $# -ge 1 ] || { echo "usage: $0 [--distributed] WORKER.properties [CONNECTOR.properties...]" >&2; exit 2; }
WORKER=$1
shift
[ -f "$WORKER" ] || { echo "start-connect: no worker file $WORKER" >&2; exit 2; }
if ! grep -q '^plugin.path=' "$WORKER"; then
  EFFECTIVE="${WORKER%.properties}.effective.properties"
  { cat "$WORKER"; echo; echo "plugin.path=$CONNECT_HOME/plugins"; } > "$EFFECTIVE"
  WORKER=$EFFECTIVE
fi
LISTENER=$(sed -n 's/^listeners=//p' "$WORKER" | head -1 | cut -d, -f1)
LISTENER=${LISTENER:-http://127.0.0.1:8083}
LOG=${CONNECT_LOG:-$(dirname "$WORKER")/connect.log}

t0=$(now)
"${JAVA:-java}" "-Xmx${CONNECT_HEAP:-384m}" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
  -Dlog4j2.configurationFile="$HERE/log4j2.properties" -cp "$CONNECT_HOME/lib/*" \
  "$MAIN" "$WORKER" "$@" > "$LOG" 2>&1 < /dev/null &
PID=$!
deadline=$(( $(date +%s) + ${CONNECT_READY_TIMEOUT:-90} ))
while [ "$(date +%s)" -lt "$deadline" ]; do
  if curl -sf "$LISTENER/" > /dev/null 2>&1; then
    echo "start-connect: REST API on $LISTENER after $(ms "$t0" "$(now)") ms (log $LOG)" >&2
    echo "$PID"
    exit 0
  fi
  if ! kill -0 "$PID" 2>/dev/null; then
    echo "start-connect: Connect exited; last lines of $LOG:" >&2
    tail -30 "$LOG" >&2
    exit 1
  fi
  sleep 0.25
done
echo "start-connect: no REST API on $LISTENER after ${CONNECT_READY_TIMEOUT:-90} s; last lines of $LOG:" >&2
tail -30 "$LOG" >&2
kill "$PID" 2>/dev/null || true
exit 1
