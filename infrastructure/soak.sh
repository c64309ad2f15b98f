#!/usr/bin/env bash
# Soak (SPEC §9, issue 8): 10k products through the distributed services while the image
# pipeline is killed with SIGKILL at 5 random points and restarted each time; then the same
# against the standalone process. Prints one line per run:
#   products=N collected=N lost=0 duplicate_uploads=0 orphan_objects=0
# and exits non-zero when any of those is not met.
#
# Mode `scale`: products (600) created, updated twice with different image bytes, a quarter
# deleted, while image-pipeline instances go 1 → 3 → 1 (one SIGKILLed, one SIGTERMed) on
# 6-partition topics. Prints
#   products=N live=N deleted=N listed=N objects=N orphan_objects=0 deleted_objects=0 ...
#   duplicate_puts=0 never_uploaded=0 ... seconds_to_converge=S
# and exits non-zero unless every live product shows its latest image, the deleted ones are
# gone, the bucket holds exactly one object per live product and no key was PUT twice.
#
#   infrastructure/soak.sh [distributed|standalone|scale|all] [--products N] [--kills K]
#                          [--scale-products N] [--latency SECONDS]
#
# Uses the shared Kafka, MongoDB and registry of infrastructure/up.sh (started if needed) with
# unique topics and database, and its own moto S3 server, whose request log counts the uploads.
# SOAK_ENV=path/to/.env uses servers already running elsewhere (up.sh is not run);
# SOAK_PROFILE=debug soaks the debug build instead of building the release one.
set -euo pipefail
INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$INFRA_DIR/.." && pwd)"
CACHE_DIR="${CATALOG_STREAM_CACHE:-$HOME/.cache/catalog-stream}"
PROFILE="${SOAK_PROFILE:-release}"

if [[ -n "${SOAK_ENV:-}" ]]; then
    ENV_FILE="$SOAK_ENV"
else
    "$INFRA_DIR/up.sh" kafka mongo registry >/dev/null
    ENV_FILE="$INFRA_DIR/.env"
fi
case "$PROFILE" in
    release) (cd "$REPO_DIR" && cargo build --release -q -p catalog-stream --bin catalog-stream) ;;
    debug) (cd "$REPO_DIR" && cargo build -q -p catalog-stream --bin catalog-stream) ;;
    *) echo "SOAK_PROFILE must be release or debug" >&2; exit 2 ;;
esac
exec "$CACHE_DIR/venv/bin/python" "$INFRA_DIR/soak.py" \
    --binary "${CARGO_TARGET_DIR:-$REPO_DIR/target}/$PROFILE/catalog-stream" \
    --env "$ENV_FILE" --moto "$CACHE_DIR/venv/bin/moto_server" \
    --image "$INFRA_DIR/sample-images/mug.png" "$@"
