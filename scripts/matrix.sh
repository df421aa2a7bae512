#!/usr/bin/env bash
# hyperfill's test suite on several TimescaleDB x PostgreSQL combinations
# (see README: Supported versions).
#
#   scripts/matrix.sh run [--keep] [--skip-missing] COMBO... [-- cargo test args]
#   scripts/matrix.sh ci                 what .ci/run runs (the CI list below)
#   scripts/matrix.sh env COMBO          build and start COMBO, print `export` lines:
#                                        eval "$(scripts/matrix.sh env 2.28.3/15:17)"
#   scripts/matrix.sh stop|status|destroy [COMBO...]   (default: every combination
#                                        that has clusters)
#   scripts/matrix.sh list               the releases and majors known to build
#
# COMBO is one of
#   VERSION/MAJOR          TimescaleDB VERSION (Timescale license) on PostgreSQL
#                          MAJOR, both clusters: 2.28.3/15, 2.25.2/18
#   VERSION/SRC:TGT        the source cluster on PostgreSQL SRC, the target on
#                          TGT, the same TimescaleDB on both: 2.28.3/15:17
#   debian                 the README's test command as it is (scripts/test.sh
#                          without HYPERFILL_TIMESCALEDB_SOURCE: Debian's
#                          PostgreSQL 15 and the Apache-only TimescaleDB)
#
# Each licensed combination runs scripts/test.sh (same cargo invocation and
# counting) with HYPERFILL_TIMESCALEDB_SOURCE, HYPERFILL_PG_MAJOR,
# HYPERFILL_TARGET_PG_MAJOR and HYPERFILL_REQUIRE_LICENSED=1,
# HYPERFILL_REQUIRE_DB=1, HYPERFILL_REQUIRE_TLS=1 (nothing may be skipped);
# the builds and clusters come from scripts/lib/licensed-install.sh and
# scripts/lib/combination.sh.  The test binaries are built once, before the
# first combination, and reused by all.  After a combination its clusters
# are stopped (--keep leaves them running); their data directories stay and
# are reused next time.
#
# The TimescaleDB source of VERSION is the first that exists of
#   $HYPERFILL_TIMESCALEDB_SOURCE, if its version.config says VERSION
#   $SOURCES/timescaledb-VERSION.tar.xz (.tar.gz, .tgz), $SOURCES/timescaledb-VERSION/
# where SOURCES is $HYPERFILL_TIMESCALEDB_SOURCES, default ../shared/timescaledb
# beside the repository's root.  A missing source is an error, or with
# --skip-missing a combination reported loudly as NOT RUN.
#
# At the end: one line per combination with its passed / failed / skipped
# counts, then `hyperfill: N passed, N failed, N skipped` (the sums).  The
# exit code is 0 only when every combination that ran had no failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=scripts/lib/common.sh
. "$here/lib/common.sh"

# What CI runs (.ci/run): the newcomer's path, then the licensed matrix.
CI_COMBINATIONS=(debian 2.19.3/15 2.28.3/15 2.29.2/17 2.28.3/15:17)

# The PostgreSQL majors (of 15..18) each release series in the table of
# README: Supported versions builds for; empty when not in the table.
known_majors() { # version -> majors
    case "$1" in
        2.16.*) echo "15 16" ;;
        2.19.* | 2.22.*) echo "15 16 17" ;;
        2.25.* | 2.28.*) echo "15 16 17 18" ;;
        2.29.*) echo "16 17 18" ;;
        *) echo "" ;;
    esac
}

SOURCES="$(realpath -m "${HYPERFILL_TIMESCALEDB_SOURCES:-$root/../shared/timescaledb}")"

if ! command -v cargo >/dev/null 2>&1 && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi

# ---- combinations -------------------------------------------------------------

# Sets C_VERSION, C_SRC, C_TGT, C_NAME, C_TITLE from a COMBO.
parse_combo() { # combo
    if [[ $1 =~ ^([0-9]+\.[0-9]+\.[0-9]+[A-Za-z0-9.+-]*)/([0-9]+)(:([0-9]+))?$ ]]; then
        C_VERSION="${BASH_REMATCH[1]}"
        C_SRC="${BASH_REMATCH[2]}"
        C_TGT="${BASH_REMATCH[4]:-$C_SRC}"
    else
        die "'$1' is not a combination: VERSION/MAJOR (2.28.3/15) or VERSION/SOURCE:TARGET (2.28.3/15:17)"
    fi
    C_NAME="ts$C_VERSION-pg$C_SRC"
    C_TITLE="TimescaleDB $C_VERSION, PostgreSQL $C_SRC"
    if [[ $C_TGT != "$C_SRC" ]]; then
        C_NAME="$C_NAME-pg$C_TGT"
        C_TITLE="TimescaleDB $C_VERSION, PostgreSQL $C_SRC -> $C_TGT"
    fi
}

# Warn about a major the release is not known to build for.
check_known() {
    local majors m
    majors="$(known_majors "$C_VERSION")"
    if [[ -z $majors ]]; then
        log "note: TimescaleDB $C_VERSION is not in the supported-versions table; trying anyway"
        return 0
    fi
    for m in "$C_SRC" "$C_TGT"; do
        [[ " $majors " == *" $m "* ]] \
            || log "WARNING: TimescaleDB $C_VERSION is not known to build for PostgreSQL $m (it builds for: $majors); trying anyway"
    done
}

# The source for C_VERSION, or empty.
find_source() {
    local f
    if [[ -n ${HYPERFILL_TIMESCALEDB_SOURCE:-} && -e $HYPERFILL_TIMESCALEDB_SOURCE ]] \
        && [[ "$(tsdb_source_version "$HYPERFILL_TIMESCALEDB_SOURCE" 2>/dev/null)" == "$C_VERSION" ]]; then
        realpath "$HYPERFILL_TIMESCALEDB_SOURCE"
        return 0
    fi
    for f in "$SOURCES/timescaledb-$C_VERSION.tar.xz" "$SOURCES/timescaledb-$C_VERSION.tar.gz" \
        "$SOURCES/timescaledb-$C_VERSION.tgz" "$SOURCES/timescaledb-$C_VERSION"; do
        if [[ -e $f ]]; then
            realpath "$f"
            return 0
        fi
    done
}

combo_env() { # source -> runs the rest of the arguments with the combination's environment
    local src="$1"
    shift
    HYPERFILL_TIMESCALEDB_SOURCE="$src" HYPERFILL_PG_MAJOR="$C_SRC" HYPERFILL_TARGET_PG_MAJOR="$C_TGT" "$@"
}

# ---- run ----------------------------------------------------------------------

# Build the installations the licensed combinations need, one after the
# other, in the background: while one combination's tests run (they wait on
# the servers more than they compute), the next one's TimescaleDB compiles
# (niced).  A combination that starts before its build is done waits for it
# (scripts/lib/licensed-install.sh locks each build); a build that failed
# here is tried again, visibly, when its combination starts.
PREBUILD_PID=""
start_prebuild() { # combo...
    local c src m logf
    local -a jobs=()
    for c in "$@"; do
        [[ $c != debian ]] || continue
        parse_combo "$c"
        src="$(find_source)"
        [[ -n $src ]] || continue
        for m in "$C_SRC" "$C_TGT"; do
            [[ " ${jobs[*]} " == *" $m=$src "* ]] || jobs+=("$m=$src")
        done
    done
    ((${#jobs[@]})) || return 0
    logf="$(hyperfill_cache_dir)/installs/prebuild.log"
    mkdir -p "$(dirname "$logf")"
    log "building the TimescaleDB installations in the background (log: $logf)"
    (
        for c in "${jobs[@]}"; do
            HYPERFILL_TIMESCALEDB_SOURCE="${c#*=}" "$here/lib/licensed-install.sh" "${c%%=*}" >/dev/null || true
        done
    ) >"$logf" 2>&1 &
    PREBUILD_PID=$!
}

fmt_time() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

cmd_run() {
    local keep=0 skip_missing=0
    local -a combos=() cargo_args=()
    while (($#)); do
        case "$1" in
            --keep) keep=1 ;;
            --skip-missing) skip_missing=1 ;;
            --) shift; cargo_args=("$@"); break ;;
            -*) die "unknown option $1 (see the top of $0)" ;;
            *) combos+=("$1") ;;
        esac
        shift
    done
    ((${#combos[@]})) || die "no combination given (e.g. $0 run 2.28.3/15 2.28.3/15:17; CI's list: $0 ci)"
    local c
    for c in "${combos[@]}"; do
        [[ $c == debian ]] || parse_combo "$c"
    done
    command -v cargo >/dev/null 2>&1 || die "cargo not found (install rustup)"

    local t_all=$SECONDS
    RESULTS="$(mktemp -d "${TMPDIR:-/tmp}/hyperfill-matrix.XXXXXX")"
    # An interrupted run stops the background builder (a build it has
    # started finishes into its staging directory, harmlessly).
    trap 'rm -rf "$RESULTS"; [[ -z $PREBUILD_PID ]] || kill "$PREBUILD_PID" 2>/dev/null || true' EXIT

    log "building the test binaries once for every combination: cargo test --all-targets --no-run"
    (cd "$root" && cargo test --all-targets --no-run) || die "the tests do not build"

    local -a lines=()
    local i=0 bad=0 not_run=0 sum_p=0 sum_f=0 sum_s=0
    for c in "${combos[@]}"; do
        i=$((i + 1))
        local title src="" rf="$RESULTS/$i" t0=$SECONDS rc=0
        if [[ $c == debian ]]; then
            title="the README's test command: Debian PostgreSQL 15, Apache TimescaleDB"
        else
            parse_combo "$c"
            title="$C_TITLE"
            check_known
            src="$(find_source)"
            if [[ -z $src ]]; then
                local why="no TimescaleDB $C_VERSION source (HYPERFILL_TIMESCALEDB_SOURCE, or timescaledb-$C_VERSION.tar.xz or a directory in $SOURCES)"
                lines+=("*** NOT RUN  $c  ($title): $why ***")
                not_run=$((not_run + 1))
                [[ $skip_missing -eq 1 ]] || bad=1
                log "*** NOT RUN: $c: $why ***"
                continue
            fi
        fi
        # after the newcomer's run: its apt-get and builds come first
        if [[ $c != debian && -z $PREBUILD_PID ]]; then
            start_prebuild "${combos[@]}"
            parse_combo "$c"
        fi
        printf '\n===== [%d/%d] %s  (%s) =====\n' "$i" "${#combos[@]}" "$c" "$title" >&2
        set +e
        if [[ $c == debian ]]; then
            (cd "$root" && env -u HYPERFILL_TIMESCALEDB_SOURCE -u HYPERFILL_PG_MAJOR -u HYPERFILL_TARGET_PG_MAJOR \
                HYPERFILL_RESULT_FILE="$rf" "$here/test.sh" "${cargo_args[@]}")
        else
            (cd "$root" && HYPERFILL_RESULT_FILE="$rf" HYPERFILL_REQUIRE_LICENSED=1 HYPERFILL_REQUIRE_DB=1 \
                HYPERFILL_REQUIRE_TLS=1 combo_env "$src" "$here/test.sh" "${cargo_args[@]}")
        fi
        rc=$?
        set -e
        if [[ $c != debian && $keep -eq 0 ]]; then
            HYPERFILL_MATRIX_DIR="${HYPERFILL_MATRIX_DIR:-/tmp/hyperfill-matrix}" \
                "$here/lib/combination.sh" stop "$C_NAME" >/dev/null 2>&1 || true
        fi
        local dt=$((SECONDS - t0)) p f s crc
        if [[ -s $rf ]]; then
            read -r p f s crc <"$rf"
            sum_p=$((sum_p + p))
            sum_f=$((sum_f + f))
            sum_s=$((sum_s + s))
            local line
            line="$(printf '%-14s %4d passed, %3d failed, %3d skipped  %8s  (%s)' "$c" "$p" "$f" "$s" "$(fmt_time "$dt")" "$title")"
            if [[ $f -gt 0 || $crc -ne 0 ]]; then
                bad=1
                [[ $f -gt 0 ]] || line="$line  *** cargo exited with $crc ***"
            fi
            lines+=("$line")
        else
            bad=1
            lines+=("*** FAILED   $c  ($title): no test results, the environment or the build failed (exit $rc; see above)  $(fmt_time "$dt") ***")
        fi
    done

    echo
    echo "===== hyperfill matrix: ${#combos[@]} combination(s) in $(fmt_time $((SECONDS - t_all))) ====="
    printf '%s\n' "${lines[@]}"
    if [[ $not_run -gt 0 ]]; then
        echo
        echo "*** $not_run combination(s) NOT RUN (see above): their results are not in the totals ***"
    fi
    echo
    echo "hyperfill: $sum_p passed, $sum_f failed, $sum_s skipped"
    return "$bad"
}

# ---- env / stop / status / destroy / list -------------------------------------

cmd_env() {
    [[ $# -eq 1 ]] || die "usage: $0 env COMBO (e.g. 2.28.3/15:17)"
    parse_combo "$1"
    check_known
    local src
    src="$(find_source)"
    [[ -n $src ]] || die "no TimescaleDB $C_VERSION source: set HYPERFILL_TIMESCALEDB_SOURCE, or put timescaledb-$C_VERSION.tar.xz in $SOURCES (or set HYPERFILL_TIMESCALEDB_SOURCES)"
    combo_env "$src" "$here/lib/combination.sh" start
    log "licensed-only tests fail rather than skip with: export HYPERFILL_REQUIRE_LICENSED=1"
}

cmd_each() { # command [combo...]
    local what="$1" matrix_dir="${HYPERFILL_MATRIX_DIR:-/tmp/hyperfill-matrix}" c rc=0
    shift
    local -a names=()
    if (($#)); then
        for c in "$@"; do
            if [[ $c == ts* ]]; then names+=("$c"); else parse_combo "$c"; names+=("$C_NAME"); fi
        done
    else
        for c in "$matrix_dir"/*/combination; do
            [[ -f $c ]] && names+=("$(basename "$(dirname "$c")")")
        done
        ((${#names[@]})) || { log "no combinations in $matrix_dir"; return 0; }
    fi
    for c in "${names[@]}"; do
        "$here/lib/combination.sh" "$what" "$c" || rc=$?
    done
    return "$rc"
}

cmd_list() {
    local v
    echo "TimescaleDB sources in $SOURCES:"
    if [[ -d $SOURCES ]]; then
        for v in "$SOURCES"/timescaledb-*; do
            [[ -e $v ]] || continue
            v="$(basename "$v")"
            v="${v#timescaledb-}"
            v="${v%.tar.xz}"
            v="${v%.tar.gz}"
            v="${v%.tgz}"
            printf '  %-8s PostgreSQL %s\n' "$v" "$(known_majors "$v" | sed 's/ /, /g')"
        done
    else
        echo "  (none: $SOURCES does not exist)"
    fi
    echo "CI runs: ${CI_COMBINATIONS[*]}"
}

case "${1:-}" in
    run) shift; cmd_run "$@" ;;
    ci)
        shift
        [[ $# -eq 0 ]] || die "usage: $0 ci"
        if [[ ! -d $SOURCES ]]; then
            log "***************************************************************************"
            log "*** $SOURCES does not exist: the licensed combinations"
            log "*** ${CI_COMBINATIONS[*]:1}"
            log "*** will NOT be run, only the README's test command (debian)"
            log "***************************************************************************"
        fi
        cmd_run --skip-missing "${CI_COMBINATIONS[@]}"
        ;;
    env) shift; cmd_env "$@" ;;
    stop | status | destroy) c="$1"; shift; cmd_each "$c" "$@" ;;
    list) cmd_list ;;
    *)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
        exit 2
        ;;
esac
