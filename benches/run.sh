#!/usr/bin/env bash
# hyperfill benchmark: `hyperfill copy` against the raw COPY limit
# (`psql -c 'COPY ... TO STDOUT' | psql -c 'COPY ... FROM STDIN'` per chunk).
# Not part of the test suite. See docs/benchmarks.md.
#
#   benches/run.sh [--scale N] [--parallelism 1,2,4] [--backfill-bin PATH]
#                  [--scenarios even,many-small,one-huge,compressed] [--repeat N]
#                  [--hyperfill-bin PATH] [--no-build] [--no-env] [--drop] ...
#   benches/run.sh --help            all options
#
# 1. like scripts/test.sh: ensure PostgreSQL 15 + TimescaleDB
#    (scripts/lib/ensure-timescaledb.sh), start the throwaway clusters
#    (scripts/lib/clusters.sh start) and take their URLs
#    (eval "$(scripts/lib/clusters.sh env)"); the same environment variables
#    apply (HYPERFILL_PG_BINDIR, HYPERFILL_CLUSTER_DIR, HYPERFILL_SOURCE_PORT,
#    HYPERFILL_TARGET_PORT), so set them (as for scripts/test.sh) first to
#    run against another pair of clusters.
#    --no-env skips this and uses HYPERFILL_TEST_SOURCE_URL /
#    HYPERFILL_TEST_TARGET_URL as they are (your own servers).
#    --private-clusters starts (and leaves running) a separate pair of the
#    same clusters for the benchmark alone: directory "$HYPERFILL_CLUSTER_DIR-bench",
#    ports $HYPERFILL_BENCH_SOURCE_PORT / $HYPERFILL_BENCH_TARGET_PORT (default:
#    the shared pair's + 100, so 55532/55533). Other users of the shared
#    clusters then no longer show up in the server CPU figures. Stop them with
#    the same variables and `scripts/lib/clusters.sh stop|destroy`, as printed
#    at the end.
# 2. cargo build --release, with the WAN proxy (benches/wanproxy/main.rs);
#    --no-build or --hyperfill-bin skip the build of hyperfill (the proxy is
#    still built when --wan-rtt asks for it and cargo is there).
# 3. benches/bench.py: datasets (cached in hfbench_* databases on the source),
#    targets, measured runs; results in target/bench/<run>/results.{md,json}.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

build=1
env_setup=1
private=0
args=()
for a in "$@"; do
    case "$a" in
        -h | --help) exec python3 "$here/bench.py" --help ;;
        --report | --report=*) exec python3 "$here/bench.py" "$@" ;;
        --no-build | --hyperfill-bin | --hyperfill-bin=*) build=0 ;;
        --no-env) env_setup=0 ;;
        --drop) build=0 ;;
        --private-clusters) private=1; continue ;;
    esac
    args+=("$a")
done
[[ $private -eq 0 || $env_setup -eq 1 ]] || die "--private-clusters and --no-env exclude each other"
if [[ $private -eq 1 ]]; then
    export HYPERFILL_CLUSTER_DIR="${HYPERFILL_CLUSTER_DIR:-/tmp/hyperfill-clusters}-bench"
    export HYPERFILL_SOURCE_PORT="${HYPERFILL_BENCH_SOURCE_PORT:-$(( ${HYPERFILL_SOURCE_PORT:-55432} + 100 ))}"
    export HYPERFILL_TARGET_PORT="${HYPERFILL_BENCH_TARGET_PORT:-$(( ${HYPERFILL_TARGET_PORT:-55433} + 100 ))}"
    log "private clusters: $HYPERFILL_CLUSTER_DIR, ports $HYPERFILL_SOURCE_PORT/$HYPERFILL_TARGET_PORT"
    # A port taken by something else (not our own cluster from an earlier run)
    # would make initdb succeed and the start fail: say so before.
    for side in source target; do
        port_var="HYPERFILL_${side^^}_PORT"
        if [[ ! -f $HYPERFILL_CLUSTER_DIR/$side/data/postmaster.pid ]] \
            && (exec 3<>"/dev/tcp/127.0.0.1/${!port_var}") 2>/dev/null; then
            die "port ${!port_var} is in use; choose others with HYPERFILL_BENCH_SOURCE_PORT / HYPERFILL_BENCH_TARGET_PORT"
        fi
    done
fi

as_root() { if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
apt_install() { # package (refreshes the package lists once if needed)
    log "installing $1 (apt-get)"
    as_root apt-get install -y -q "$1" >/dev/null 2>&1 \
        || { as_root apt-get update -q >/dev/null && as_root apt-get install -y -q "$1" >/dev/null; } \
        || die "cannot install $1"
}
[[ -x /usr/bin/time ]] || apt_install time
command -v python3 >/dev/null 2>&1 || apt_install python3-minimal

if [[ $env_setup -eq 1 ]]; then
    "$root/scripts/lib/ensure-timescaledb.sh"
    "$root/scripts/lib/clusters.sh" start
    eval "$("$root/scripts/lib/clusters.sh" env)"
fi
: "${HYPERFILL_TEST_SOURCE_URL:?set it, or drop --no-env}"
: "${HYPERFILL_TEST_TARGET_URL:?set it, or drop --no-env}"
export HYPERFILL_PG_BINDIR="${HYPERFILL_PG_BINDIR:-/usr/lib/postgresql/15/bin}"
log "source $HYPERFILL_TEST_SOURCE_URL, target $HYPERFILL_TEST_TARGET_URL, PostgreSQL $HYPERFILL_PG_BINDIR"

if [[ $build -eq 1 ]]; then
    if ! command -v cargo >/dev/null 2>&1 && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
        export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo not found (install rustup), or pass --hyperfill-bin"
    log "cargo build --release (and the WAN proxy, --example wanproxy)"
    (cd "$root" && cargo build --release --bins --example wanproxy) \
        || die "cargo build --release failed (pass --no-build to measure the existing target/release/hyperfill)"
elif [[ " ${args[*]-} " == *" --wan-rtt"* ]] && command -v cargo >/dev/null 2>&1; then
    # A given --hyperfill-bin still gets the Rust proxy (wan.py falls back
    # to the Python one, loudly, when it is not built).
    log "cargo build --release --example wanproxy"
    (cd "$root" && cargo build --release --example wanproxy) || log "building the WAN proxy failed; the Python proxy will be used"
fi

rc=0
python3 "$here/bench.py" ${args[@]+"${args[@]}"} || rc=$?
if [[ $private -eq 1 ]]; then
    log "the private clusters keep running (the datasets stay cached); to stop or remove them:"
    log "  HYPERFILL_PG_BINDIR='$HYPERFILL_PG_BINDIR' HYPERFILL_CLUSTER_DIR='$HYPERFILL_CLUSTER_DIR' HYPERFILL_SOURCE_PORT=$HYPERFILL_SOURCE_PORT HYPERFILL_TARGET_PORT=$HYPERFILL_TARGET_PORT scripts/lib/clusters.sh stop   # or destroy"
fi
exit "$rc"
