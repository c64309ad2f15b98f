#!/usr/bin/env bash
# Builds the Kafka Streams programs of this folder and prints their class path.
#
#   KAFKA_STREAMS_CLASSPATH="$(infrastructure/kafka-streams/build.sh)"
#
# Fetches Kafka Streams 4.1.1 and its dependencies from Maven Central (pom.xml) into
# $CATALOG_STREAM_CACHE/kafka-streams-4.1.1/lib (default cache ~/.cache/catalog-stream) when they
# are missing or pom.xml changed, compiles src/*.java with javac into .../classes when the sources
# changed, and prints exactly one line on stdout: `<classes>:<lib>/*` with absolute paths, for
# `java -cp`. Everything else goes to stderr. Cached runs take a few milliseconds; concurrent runs
# are serialised with a lock in the cache.
set -euo pipefail

KS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_DIR="${CATALOG_STREAM_CACHE:-$HOME/.cache/catalog-stream}"
OUT_DIR="$CACHE_DIR/kafka-streams-4.1.1"
LIB="$OUT_DIR/lib"
CLASSES="$OUT_DIR/classes"

log() { printf '[kafka-streams] %s\n' "$*" >&2; }

for tool in java javac mvn; do
    command -v "$tool" >/dev/null || { log "$tool is required (a Java 17 JDK and Maven)"; exit 1; }
done
mkdir -p "$OUT_DIR"
exec 9>"$OUT_DIR/.lock"
flock 9

# The jars: fetched once per pom.xml content (the marker holds the pom's hash).
pom_hash="$(sha256sum "$KS_DIR/pom.xml" | cut -d' ' -f1)"
if [[ "$(cat "$LIB/.complete" 2>/dev/null)" != "$pom_hash" ]]; then
    log "fetching Kafka Streams 4.1.1 from Maven Central into $LIB"
    rm -rf "$LIB"
    mkdir -p "$LIB"
    if ! (cd "$KS_DIR" && mvn -B -q -Dstyle.color=never dependency:copy-dependencies \
        -DoutputDirectory="$LIB") >"$OUT_DIR/fetch.log" 2>&1; then
        log "mvn dependency:copy-dependencies failed; last lines of $OUT_DIR/fetch.log:"
        tail -n 40 "$OUT_DIR/fetch.log" >&2
        exit 1
    fi
    echo "$pom_hash" >"$LIB/.complete"
fi

# The classes: compiled again when a source (or the jar set) changed. Compiled into a fresh
# directory that then replaces the old one, so a failed compile leaves no half-built classes.
src_hash="$( (cd "$KS_DIR" && sha256sum src/*.java && echo "$pom_hash") | sha256sum | cut -d' ' -f1)"
if [[ "$(cat "$CLASSES/.sources" 2>/dev/null)" != "$src_hash" ]]; then
    log "compiling $KS_DIR/src into $CLASSES"
    rm -rf "$CLASSES.new"
    mkdir -p "$CLASSES.new"
    javac --release 17 -nowarn -encoding UTF-8 -cp "$LIB/*" -d "$CLASSES.new" "$KS_DIR"/src/*.java >&2 ||
        { log "javac failed"; rm -rf "$CLASSES.new"; exit 1; }
    echo "$src_hash" >"$CLASSES.new/.sources"
    rm -rf "$CLASSES"
    mv "$CLASSES.new" "$CLASSES"
fi

echo "$CLASSES:$LIB/*"
