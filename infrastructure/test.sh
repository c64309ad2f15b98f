#!/usr/bin/env bash
# The test command: installs what is missing, starts every real server (infrastructure/up.sh,
# which starts nothing twice), builds the Kafka Streams oracle (infrastructure/kafka-streams,
# class path in KAFKA_STREAMS_CLASSPATH), then runs the whole workspace's test suite against them.
# The servers stay up for the next run; infrastructure/down.sh stops them.
set -euo pipefail

INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$INFRA_DIR/.."

"$INFRA_DIR/system-deps.sh"
"$INFRA_DIR/up.sh" all
set -a
# shellcheck source=/dev/null # written by up.sh
source "$INFRA_DIR/.env"
set +a
# The Kafka Streams oracle that the stateful operators' integration tests compare against.
KAFKA_STREAMS_CLASSPATH="$("$INFRA_DIR/kafka-streams/build.sh")"
export KAFKA_STREAMS_CLASSPATH
cargo test --workspace --no-fail-fast --lib --bins --tests "$@"
# Doctests are a separate pass; benchmarks (`cargo bench`, `infrastructure/bench.sh`) are not tests.
cargo test --workspace --doc "$@"
