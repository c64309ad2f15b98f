#!/usr/bin/env bash
# cargo deny for CI: licenses, bans and sources always; advisories when an advisory database
# is available locally.
#
#   infrastructure/deny.sh
#
# Installs cargo-deny (pinned; builds on Rust 1.88+) with `cargo install --locked` when it is
# missing or another version; the binary lands in $CARGO_HOME/bin, which persists, so later runs
# skip the build. The RustSec advisory database is fetched from GitHub, which this machine and
# CI cannot reach: advisories are checked only when a copy of the database is already on disk
# (e.g. copied there from a machine that can reach GitHub) under $CARGO_HOME/advisory-dbs, the
# db-path of deny.toml, with --disable-fetch; otherwise the script says so and skips them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CARGO_DENY_VERSION=0.20.2
CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
export PATH="$CARGO_HOME/bin:$PATH"

installed="$(cargo deny --version 2>/dev/null | awk '{print $2}' || true)"
if [[ "$installed" != "$CARGO_DENY_VERSION" ]]; then
    echo "[deny] installing cargo-deny $CARGO_DENY_VERSION (a few minutes, once)" >&2
    cargo install --locked --quiet cargo-deny --version "$CARGO_DENY_VERSION"
fi

cargo deny check licenses bans sources

db="$CARGO_HOME/advisory-dbs"
if compgen -G "$db/*" >/dev/null; then
    cargo deny check --disable-fetch advisories
else
    echo "[deny] advisories skipped: no advisory database under $db and GitHub is not reachable here" >&2
fi
