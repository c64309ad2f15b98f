#!/usr/bin/env bash
# Soak (SPEC §9, issue 8): 10k products through the distributed services while the image
# pipeline is killed with SIGKILL at 5 random points and restarted each time; then the same
# against the standalone process. Prints one line per run:
#   products=N collected=N lost=0 duplicate_uploads=0 orphan_objects=0
# and exits non-zero when any of those is not met.
#
#   infrastructure/soak.sh [distributed|standalone|all] [--products N] [--kills K]
#
# Uses the shared Kafka, MongoDB and registry of infrastructure/up.sh (started if needed) with
# unique topics and database, and its own moto S3 server, whose request log counts the uploads.
set -euo pipefail
INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$INFRA_DIR/.." && pwd)"
CACHE_DIR="${CATALOG_STREAM_CACHE:-$HOME/.cache/catalog-stream}"

"$INFRA_DIR/up.sh" kafka mongo registry >/dev/null
(cd "$REPO_DIR" && cargo build --release -q -p catalog-stream --bin catalog-stream)
exec "$CACHE_DIR/venv/bin/python" "$INFRA_DIR/soak.py" \
    --binary "${CARGO_TARGET_DIR:-$REPO_DIR/target}/release/catalog-stream" \
    --env "$INFRA_DIR/.env" --moto "$CACHE_DIR/venv/bin/moto_server" \
    --image "$INFRA_DIR/sample-images/mug.png" "$@"
