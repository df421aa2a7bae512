#!/usr/bin/env bash
# End-to-end demo of hyperfill's dual-write-and-backfill flow on the local
# throwaway clusters (scripts/lib/clusters.sh):
#
#   1. ensure PostgreSQL 15 + TimescaleDB, start the clusters, build release
#   2. fresh databases hyperfill_demo_source (source cluster) and
#      hyperfill_demo_target (target cluster); load scripts/demo/dataset.sql
#      into the source
#   3. clone the schema (+ relational data, + TimescaleDB catalog, no chunk
#      data) to the target with pg_dump/psql, the way the migration docs do,
#      and disable user background jobs on the target
#   4. simulate dual-write: rows at/after the completion point T go to both
#   5. hyperfill stage / copy / verify / clean
#   6. per-table row counts: source rows < T vs target rows < T
#
# Usage: scripts/demo.sh [--prepare-only]
#   --prepare-only  stop after step 4 (no cargo build, no hyperfill run);
#                   prints the hyperfill commands to run by hand.
# Environment: HYPERFILL_DEMO_UNTIL (default 2025-01-29T18:30:00Z), plus
# the variables of scripts/lib/ensure-timescaledb.sh and clusters.sh.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"

log() { printf '[hyperfill-env] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

prepare_only=0
case "${1:-}" in
    "") ;;
    --prepare-only) prepare_only=1 ;;
    *) echo "usage: $0 [--prepare-only]" >&2; exit 2 ;;
esac

if ! command -v cargo >/dev/null 2>&1 && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi

# Completion point of the backfill: dual-write started at T, so hyperfill
# copies rows with time < T.  Deliberately not chunk-aligned.
T="${HYPERFILL_DEMO_UNTIL:-2025-01-29T18:30:00Z}"
export PGTZ=UTC

# ---- 1. environment -------------------------------------------------------
"$here/lib/ensure-timescaledb.sh"
"$here/lib/clusters.sh" start
eval "$("$here/lib/clusters.sh" env)"
BIN="$HYPERFILL_PG_BINDIR"

SRC="${HYPERFILL_TEST_SOURCE_URL%/*}/hyperfill_demo_source"
TGT="${HYPERFILL_TEST_TARGET_URL%/*}/hyperfill_demo_target"
SRC_ADMIN="$HYPERFILL_TEST_SOURCE_URL"
TGT_ADMIN="$HYPERFILL_TEST_TARGET_URL"

hyperfill="${CARGO_TARGET_DIR:-$root/target}/release/hyperfill"
if [[ $prepare_only -eq 0 ]]; then
    log "cargo build --release"
    (cd "$root" && cargo build --release)
fi

# Print a command (shell-quoted) to stderr, then run it.
run() {
    local a line="+"
    for a in "$@"; do
        if [[ $a =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
            line+=" $a"
        else
            line+=" '${a//\'/\'\\\'\'}'"
        fi
    done
    printf '\n%s\n' "$line" >&2
    "$@"
}

psql_() { "$BIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
# same, without NOTICEs ("does not exist, skipping", TimescaleDB's banner)
psql_quiet() { PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning" psql_ "$@"; }

work="$(mktemp -d "${TMPDIR:-/tmp}/hyperfill-demo.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# ---- 2. fresh databases + dataset ------------------------------------------
log "recreating hyperfill_demo_source / hyperfill_demo_target"
psql_quiet -d "$SRC_ADMIN" -c 'drop database if exists hyperfill_demo_source with (force)' \
    -c 'create database hyperfill_demo_source'
psql_quiet -d "$TGT_ADMIN" -c 'drop database if exists hyperfill_demo_target with (force)' \
    -c 'create database hyperfill_demo_target'

log "loading scripts/demo/dataset.sql into the source (takes a few seconds)"
psql_quiet -d "$SRC" -f "$here/demo/dataset.sql"

# ---- 3. schema to the target (pg_dump without chunk data) -------------------
# The dump's `CREATE EXTENSION IF NOT EXISTS timescaledb` is a no-op when the
# extension already exists, and timescaledb_pre_restore() must exist before the
# dump is restored, so the target gets the extension first (a managed target
# service usually has it already).  _timescaledb_catalog.metadata needs no
# exclusion: its dumped rows exclude the instance uuid and its insert trigger
# merges duplicate keys.
log "pg_dump of the source schema, relational data and TimescaleDB catalog (no chunk data)"
run "$BIN/pg_dump" -d "$SRC" \
    --format=plain \
    --quote-all-identifiers \
    --no-tablespaces \
    --no-owner \
    --no-privileges \
    --exclude-table-data='_timescaledb_internal.*' \
    --file="$work/dump.sql" 2> >(grep -v -E 'circular foreign-key|^pg_dump: (detail|hint):' >&2)
# (pg_dump warns about the circular foreign keys of TimescaleDB's own catalog
# tables; harmless for a full plain dump, filtered above.)

log "restoring into the target"
psql_quiet -d "$TGT" -c 'create extension if not exists timescaledb'
# As the README says: one psql run, and timescaledb_post_restore() in one
# transaction with the disabling of the user background jobs, so that no
# job acts on the half-filled target.
log "restoring, then disabling user background jobs on the target"
run "$BIN/psql" -X -q -d "$TGT" -v ON_ERROR_STOP=1 --echo-errors -o /dev/null \
    -c 'select public.timescaledb_pre_restore();' \
    -f "$work/dump.sql" \
    -f - <<'SQL'
begin;
select public.timescaledb_post_restore();
select public.alter_job(id::integer, scheduled => false)
from _timescaledb_config.bgw_job
where id >= 1000;
commit;
SQL

# ---- 4. simulated dual-write: rows at/after T go to both -------------------
log "simulating dual-write at/after T=$T (same rows into source and target)"
dual_write_sql="
insert into metrics (time, device_id, \"Reading °C\", humidity, status, tags) values
    (timestamptz '$T',                        1, 21.5, 40, 'dual-write', '{\"dw\": true}'),
    (timestamptz '$T' + interval '1 minute',  2, 22.5, 41, 'dual-write', '{\"dw\": true}'),
    (timestamptz '$T' + interval '2 hours',   7, 23.5, 42, 'dual-write', '{\"dw\": true}');
insert into events (time, kind, payload, message) values
    ((timestamptz '$T') at time zone 'UTC',                          'dual-write', '{\"dw\": 1}', 'at T'),
    ((timestamptz '$T' + interval '30 seconds') at time zone 'UTC', 'dual-write', '{\"dw\": 2}', 'after T');
insert into daily_counts (day, site, hits) values
    (((timestamptz '$T') at time zone 'UTC')::date + 1, 'site-dual-write', 1),
    (((timestamptz '$T') at time zone 'UTC')::date + 2, 'site-dual-write', 2);
insert into ticks (ts, symbol, price, volume) values
    ((extract(epoch from timestamptz '$T') * 1000)::bigint,         'DW', 1.2345, 1),
    ((extract(epoch from timestamptz '$T') * 1000)::bigint + 1000,  'DW', 1.2346, 2);
"
psql_ -d "$SRC" -c "$dual_write_sql"
psql_ -d "$TGT" -c "$dual_write_sql"

# ---- 5. hyperfill ----------------------------------------------------------
TIME_FILTER='^public\.(metrics|events|daily_counts)$'
INT_FILTER='^public\.ticks$'
T_MS="$("$BIN/psql" -X -A -t -v ON_ERROR_STOP=1 -d "$SRC" -c "select (extract(epoch from timestamptz '$T') * 1000)::bigint")"
if [[ $prepare_only -eq 1 ]]; then
    log "--prepare-only: databases ready; run hyperfill by hand:"
    cat >&2 <<EOF
  $hyperfill stage --source '$SRC' --target '$TGT' --until '$T' --filter '$TIME_FILTER'
  $hyperfill stage --source '$SRC' --target '$TGT' --until '$T_MS' --filter '$INT_FILTER'
  $hyperfill copy --source '$SRC' --target '$TGT' --parallelism 4
  $hyperfill verify --source '$SRC' --target '$TGT'
  $hyperfill clean --target '$TGT'
EOF
else
    [[ -x $hyperfill ]] || die "$hyperfill not found after cargo build --release"
    # A bound is read as each hypertable's time type: the timestamp-typed
    # hypertables take T, the bigint one (epoch milliseconds) takes T in ms.
    # Two stages fill one queue; one copy runs it.
    run "$hyperfill" stage --source "$SRC" --target "$TGT" --until "$T" --filter "$TIME_FILTER"
    run "$hyperfill" stage --source "$SRC" --target "$TGT" --until "$T_MS" --filter "$INT_FILTER"
    run "$hyperfill" stage --source "$SRC" --target "$TGT" --until "$T" --filter "$TIME_FILTER"
    run "$hyperfill" copy --source "$SRC" --target "$TGT" --parallelism 4
    run "$hyperfill" verify --source "$SRC" --target "$TGT"
    run "$hyperfill" clean --target "$TGT"
fi

# ---- 6. row counts below / at-or-after T -----------------------------------
# "time < T" per time type: timestamptz directly; timestamp (without time
# zone) as T in UTC; date as T cast to date (hyperfill reads a bound as the
# time column's type, so '2025-01-29T18:30Z' means day < 2025-01-29);
# ticks.ts = epoch ms.
counts_sql="
with t as (select timestamptz '$T' as t)
select 'metrics',
       (select count(*) from metrics, t where time < t.t),
       (select count(*) from metrics, t where time >= t.t)
union all
select 'events',
       (select count(*) from events, t where time < (t.t at time zone 'UTC')),
       (select count(*) from events, t where time >= (t.t at time zone 'UTC'))
union all
select 'daily_counts',
       (select count(*) from daily_counts, t where day < (t.t at time zone 'UTC')::date),
       (select count(*) from daily_counts, t where day >= (t.t at time zone 'UTC')::date)
union all
select 'ticks',
       (select count(*) from ticks, t where ts < (extract(epoch from t.t) * 1000)::bigint),
       (select count(*) from ticks, t where ts >= (extract(epoch from t.t) * 1000)::bigint)
"
src_counts="$("$BIN/psql" -X -A -t -F ' ' -v ON_ERROR_STOP=1 -d "$SRC" -c "$counts_sql")"
tgt_counts="$("$BIN/psql" -X -A -t -F ' ' -v ON_ERROR_STOP=1 -d "$TGT" -c "$counts_sql")"

echo
echo "Row counts (T = $T):"
printf '%-14s %14s %14s %6s %16s\n' table 'source < T' 'target < T' match 'target >= T'
mismatch=0
while read -r table s_lt _s_ge; do
    read -r _ t_lt t_ge < <(grep "^$table " <<<"$tgt_counts")
    ok=yes
    [[ $s_lt == "$t_lt" ]] || { ok=NO; mismatch=1; }
    printf '%-14s %14s %14s %6s %16s\n' "$table" "$s_lt" "$t_lt" "$ok" "$t_ge"
done <<<"$src_counts"

if [[ $prepare_only -eq 1 ]]; then
    log "--prepare-only: target has only the dual-written rows so far (mismatch expected)"
    exit 0
fi
if [[ $mismatch -ne 0 ]]; then
    die "row counts below T differ between source and target"
fi
log "demo finished: all tables match below T"
