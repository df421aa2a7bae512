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
#
# With HYPERFILL_TIMESCALEDB_SOURCE set (a TimescaleDB release tarball or
# source directory), steps 1-2 use a licensed build instead: PostgreSQL
# $HYPERFILL_PG_MAJOR (default 15; the target's: HYPERFILL_TARGET_PG_MAJOR)
# from PyPI with that TimescaleDB, and that combination's own clusters
# (scripts/lib/licensed-install.sh, scripts/lib/combination.sh);
# HYPERFILL_REQUIRE_LICENSED defaults to 1 there.  scripts/matrix.sh runs
# this for a list of combinations.
#
# HYPERFILL_RESULT_FILE, when set, receives one line
# "<passed> <failed> <skipped> <cargo exit code>".
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"

if ! command -v cargo >/dev/null 2>&1 && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || { echo "[hyperfill-env] ERROR: cargo not found (install rustup)" >&2; exit 1; }

if [[ -n ${HYPERFILL_TIMESCALEDB_SOURCE:-} ]]; then
    env_lines="$("$here/lib/combination.sh" start)"
    eval "$env_lines"
    export HYPERFILL_REQUIRE_LICENSED="${HYPERFILL_REQUIRE_LICENSED:-1}"
    echo "[hyperfill-env] combination $HYPERFILL_COMBINATION (HYPERFILL_REQUIRE_LICENSED=$HYPERFILL_REQUIRE_LICENSED)" >&2
else
    "$here/lib/ensure-timescaledb.sh"
    "$here/lib/clusters.sh" start
    eval "$("$here/lib/clusters.sh" env)"
fi
echo "[hyperfill-env] HYPERFILL_TEST_SOURCE_URL=$HYPERFILL_TEST_SOURCE_URL" >&2
echo "[hyperfill-env] HYPERFILL_TEST_TARGET_URL=$HYPERFILL_TEST_TARGET_URL" >&2
echo "[hyperfill-env] HYPERFILL_PG_BINDIR=$HYPERFILL_PG_BINDIR" >&2
if [[ -n ${HYPERFILL_TARGET_PG_BINDIR:-} ]]; then
    echo "[hyperfill-env] HYPERFILL_TARGET_PG_BINDIR=$HYPERFILL_TARGET_PG_BINDIR" >&2
fi

cd "$root"
# Tests that cannot run here (licensed-only features on an Apache build)
# record themselves in this file; they are reported as skipped below, not
# as passed. HYPERFILL_REQUIRE_LICENSED=1 turns such a skip into a failure.
skip_log="$(mktemp "${TMPDIR:-/tmp}/hyperfill-skips.XXXXXX")"
out_log="$(mktemp "${TMPDIR:-/tmp}/hyperfill-test-out.XXXXXX")"
trap 'rm -f "$skip_log" "$out_log"' EXIT
export HYPERFILL_SKIP_LOG="$skip_log"
echo "[hyperfill-env] cargo test --all-targets $*" >&2
set +e
cargo test --all-targets "$@" 2>&1 | tee "$out_log"
rc=${PIPESTATUS[0]}
set -e

sum() { grep -oE "test result: [A-Za-z]+\. [0-9]+ passed; [0-9]+ failed" "$out_log" \
        | awk -v f="$1" '{ n += (f == "passed" ? $4 : $6) } END { print n + 0 }'; }
passed=$(sum passed)
failed=$(sum failed)
skipped=$(sort -u "$skip_log" | wc -l)
if [[ $skipped -gt 0 ]]; then
    echo
    echo "*** $skipped test(s) SKIPPED (counted as passed by cargo above, not below):"
    sort -u "$skip_log" | sed 's/^/***   /'
fi
echo
echo "hyperfill: $((passed - skipped)) passed, $failed failed, $skipped skipped"
if [[ -n ${HYPERFILL_RESULT_FILE:-} ]]; then
    echo "$((passed - skipped)) $failed $skipped $rc" >"$HYPERFILL_RESULT_FILE"
fi
exit "$rc"
