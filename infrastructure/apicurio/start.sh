#!/usr/bin/env bash
# Builds (once) and starts Apicurio Registry 2.4.2.Final with in-memory H2 storage, then waits until
# the Confluent-compatible API answers. Prints the PID on the last line; stop it with `kill PID`.
# Usage: bash infrastructure/apicurio/start.sh [PORT]   (default 8085, bound to 127.0.0.1)
# Env: APICURIO_LOG (default /tmp/apicurio-<port>.log), JAVA (default java, Java 17 is enough).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PORT=${1:-8085}
LOG=${APICURIO_LOG:-/tmp/apicurio-$PORT.log}
JAR=$HERE/target/apicurio-registry-1-runner.jar
if [ ! -f "$JAR" ]; then
  t0=$(date +%s)
  mvn -q -B -f "$HERE/pom.xml" package >&2
  echo "built in $(( $(date +%s) - t0 )) s" >&2
fi
t0=$(date +%s%N)
"${JAVA:-java}" -Xmx512m -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$PORT" -jar "$JAR" > "$LOG" 2>&1 &
PID=$!
for _ in $(seq 240); do
  if curl -sf "http://127.0.0.1:$PORT/apis/ccompat/v7/subjects" > /dev/null 2>&1; then
    echo "apicurio ready on 127.0.0.1:$PORT in $(( ($(date +%s%N) - t0) / 1000000 )) ms (log $LOG)" >&2
    echo "$PID"
    exit 0
  fi
  kill -0 "$PID" 2>/dev/null || { echo "apicurio exited; see $LOG" >&2; tail -20 "$LOG" >&2; exit 1; }
  sleep 0.5
done
echo "apicurio not ready after 120 s; see $LOG" >&2
kill "$PID"
exit 1
