#!/usr/bin/env bash
# hyperfill's test command (see README):
#
#   scripts/test.sh [cargo test args...]     e.g. scripts/test.sh -- --nocapture
#
# 1. makes sure PostgreSQL 15 + TimescaleDB are installed
#    (scripts/lib/ensure-timescaledb.sh; builds TimescaleDB on first run),
# 2. starts the throwaway source/target clusters (scripts/lib/clusters.sh),
# 3. exports HYPERFILL_TEST_SOURCE_URL / HYPERFILL_TEST_TARGET_URL /
#    HYPERFILL_PG_BINDIR,
# 4. runs `cargo test --all-targets "$@"` from the repo root; exits with
#    cargo's exit code.
#
# The clusters are left running (next run is fast); stop them with
# scripts/lib/clusters.sh stop.  See scripts/lib/*.sh for the environment
# variables that change ports, directories and the PostgreSQL installation.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"

if ! command -v cargo >/dev/null 2>&1 && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || { echo "[hyperfill-env] ERROR: cargo not found (install rustup)" >&2; exit 1; }

"$here/lib/ensure-timescaledb.sh"
"$here/lib/clusters.sh" start
eval "$("$here/lib/clusters.sh" env)"
echo "[hyperfill-env] HYPERFILL_TEST_SOURCE_URL=$HYPERFILL_TEST_SOURCE_URL" >&2
echo "[hyperfill-env] HYPERFILL_TEST_TARGET_URL=$HYPERFILL_TEST_TARGET_URL" >&2
echo "[hyperfill-env] HYPERFILL_PG_BINDIR=$HYPERFILL_PG_BINDIR" >&2

cd "$root"
echo "[hyperfill-env] cargo test --all-targets $*" >&2
set +e
cargo test --all-targets "$@"
rc=$?
set -e
exit "$rc"
