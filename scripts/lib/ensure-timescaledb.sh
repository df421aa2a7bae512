#!/usr/bin/env bash
# Ensure a PostgreSQL 15 server with TimescaleDB is available for hyperfill's
# tests and demo.
#
# Usage:
#   scripts/lib/ensure-timescaledb.sh          # run it
#   source scripts/lib/ensure-timescaledb.sh   # only defines
#                                              # hyperfill_ensure_timescaledb
#
# What it does (idempotent; a second run only checks and exits):
#   1. Installs (apt-get, only what is missing) postgresql-15,
#      postgresql-server-dev-15 and the build tools.
#   2. If $(pg_config --sharedir)/extension/timescaledb.control does not
#      exist, builds TimescaleDB from Debian's own *source* package in the
#      trixie suite (Apache-2 licensed part only, exactly like Debian does:
#      -DAPACHE_ONLY=ON) against PostgreSQL 15 and runs `make install`.
#      A `deb-src` entry for trixie is written to
#      /etc/apt/sources.list.d/hyperfill-trixie-src.sources; its URI is taken
#      at run time from the machine's existing apt configuration for the main
#      Debian archive, and it uses the same Signed-By keyring.  Only the
#      source package is downloaded: no trixie binary packages or trixie
#      build-dependencies are installed (those would pull trixie's libc);
#      the build tools come from bookworm.
#   3. If a TimescaleDB is already installed it is reused, never overwritten.
#
# Environment:
#   HYPERFILL_PG_BINDIR  PostgreSQL bin dir (default /usr/lib/postgresql/15/bin).
#                        When set to anything else, nothing is installed: the
#                        given installation is used as is.
#   HYPERFILL_TSDB_SRC_DIR  where the TimescaleDB source is unpacked and built
#                        (default /var/cache/hyperfill/timescaledb-src as root,
#                        ${XDG_CACHE_HOME:-$HOME/.cache}/hyperfill/timescaledb-src
#                        otherwise).
#   HYPERFILL_TSDB_SUITE Debian suite to take the source package from
#                        (default trixie).

HYPERFILL_DEFAULT_PG_BINDIR=/usr/lib/postgresql/15/bin

hyperfill_log() { printf '[hyperfill-env] %s\n' "$*" >&2; }

# Body runs in a subshell so that sourcing this file never changes the
# caller's shell options or working directory.
hyperfill_ensure_timescaledb() (
    set -euo pipefail

    local bindir="${HYPERFILL_PG_BINDIR:-$HYPERFILL_DEFAULT_PG_BINDIR}"
    local suite="${HYPERFILL_TSDB_SUITE:-trixie}"
    local srclist=/etc/apt/sources.list.d/hyperfill-${suite}-src.sources
    local build_root
    if [[ $EUID -eq 0 ]]; then
        build_root="${HYPERFILL_TSDB_SRC_DIR:-/var/cache/hyperfill/timescaledb-src}"
    else
        build_root="${HYPERFILL_TSDB_SRC_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hyperfill/timescaledb-src}"
    fi

    die() { hyperfill_log "ERROR: $*"; exit 1; }

    as_root() {
        if [[ $EUID -eq 0 ]]; then
            "$@"
        elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo -n "$@"
        else
            die "need root (or passwordless sudo) to run: $*"
        fi
    }

    apt_env() { as_root env DEBIAN_FRONTEND=noninteractive "$@"; }

    installed_version() { # pkg -> version or empty
        dpkg-query -W -f='${db:Status-Status} ${Version}\n' "$1" 2>/dev/null \
            | awk '$1 == "installed" { print $2 }'
    }

    tsdb_control_installed() {
        local pgc="$1/pg_config" share
        [[ -x $pgc ]] || return 1
        share="$("$pgc" --sharedir)" || return 1
        [[ -f $share/extension/timescaledb.control ]]
    }

    report_existing() {
        local pgc="$1/pg_config" share pkglib ver
        share="$("$pgc" --sharedir)"
        pkglib="$("$pgc" --pkglibdir)"
        ver="$(sed -n "s/^default_version *= *'\(.*\)'.*/\1/p" "$share/extension/timescaledb.control")"
        hyperfill_log "TimescaleDB ${ver:-?} already installed for $("$pgc" --version) (control: $share/extension/timescaledb.control, libs: $pkglib); reusing it"
    }

    # ---- custom installation: use it as is -------------------------------
    if [[ $bindir != "$HYPERFILL_DEFAULT_PG_BINDIR" ]]; then
        [[ -x $bindir/postgres && -x $bindir/initdb && -x $bindir/pg_ctl ]] \
            || die "HYPERFILL_PG_BINDIR=$bindir does not contain postgres/initdb/pg_ctl"
        hyperfill_log "HYPERFILL_PG_BINDIR=$bindir: using that installation, not installing anything"
        if tsdb_control_installed "$bindir"; then
            report_existing "$bindir"
        else
            hyperfill_log "WARNING: no timescaledb.control found for $bindir (pg_config missing or TimescaleDB not installed)"
        fi
        return 0
    fi

    # ---- 1. PostgreSQL 15 + build tools from bookworm ---------------------
    local apt_updated=0
    apt_update_once() {
        if [[ $apt_updated -eq 0 ]]; then
            hyperfill_log "apt-get update"
            apt_env apt-get update -qq
            apt_updated=1
        fi
    }

    local -a want=(postgresql-15 postgresql-server-dev-15
        cmake make gcc libc6-dev libssl-dev libkrb5-dev dpkg-dev xz-utils
        pgbouncer) # pgbouncer: the pooler tests (tests/it/pooler.rs)
    local -a missing=()
    local pkg
    for pkg in "${want[@]}"; do
        [[ -n $(installed_version "$pkg") ]] || missing+=("$pkg")
    done
    local -a to_install=("${missing[@]}")

    if ((${#to_install[@]})); then
        apt_update_once
        # Keep the server headers at the same version as an already
        # installed server (otherwise apt would upgrade the server too).
        local server_ver i
        server_ver="$(installed_version postgresql-15)"
        if [[ -n $server_ver ]]; then
            for i in "${!to_install[@]}"; do
                if [[ ${to_install[$i]} == postgresql-server-dev-15 ]] \
                    && apt-cache madison postgresql-server-dev-15 | awk -F'|' '{gsub(/ /,"",$2); print $2}' | grep -qxF "$server_ver"; then
                    to_install[i]="postgresql-server-dev-15=$server_ver"
                fi
            done
        fi
        hyperfill_log "installing: ${to_install[*]}"
        apt_env apt-get install -y -qq --no-install-recommends "${to_install[@]}" >&2
    else
        hyperfill_log "PostgreSQL 15 $(installed_version postgresql-15), server headers and build tools already installed"
    fi

    [[ -x $bindir/pg_config ]] || die "$bindir/pg_config not found after installing postgresql-15"
    local pgc="$bindir/pg_config"

    # ---- 2. TimescaleDB ----------------------------------------------------
    if tsdb_control_installed "$bindir"; then
        report_existing "$bindir"
        return 0
    fi

    hyperfill_log "no TimescaleDB installed for $("$pgc" --version); building it from Debian's '$suite' source package"

    # -- 2a. find the main Debian archive entry in the existing apt config --
    local codename
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    [[ -n $codename ]] || die "cannot determine the Debian codename from /etc/os-release"

    # Prints "URI<US>SIGNED-BY<US>EXTRA-OPTIONS" (US = \037) for the first enabled entry whose suite is
    # exactly $codename with component main (ignores our own file).
    find_archive() {
        local f
        # deb822 files
        local etc="${HYPERFILL_APT_ETC:-/etc/apt}"   # overridable for testing
        for f in "$etc"/sources.list.d/*.sources; do
            [[ -f $f && $f != "$srclist" ]] || continue
            awk -v want="$codename" -v RS= -F'\n' '
                {
                    types = uris = suites = comps = signed = extra = ""; enabled = "yes"
                    for (i = 1; i <= NF; i++) {
                        line = $i
                        if (line ~ /^[ \t]*#/) continue
                        if (match(line, /^[A-Za-z-]+:/)) {
                            key = tolower(substr(line, 1, RLENGTH - 1))
                            val = substr(line, RLENGTH + 1)
                            gsub(/^[ \t]+|[ \t]+$/, "", val)
                            if (key == "types") types = val
                            else if (key == "uris") uris = val
                            else if (key == "suites") suites = val
                            else if (key == "components") comps = val
                            else if (key == "signed-by") signed = val
                            else if (key == "enabled") enabled = tolower(val)
                            else if (key ~ /^(check-valid-until|check-date|trusted|allow-insecure|allow-weak|allow-downgrade-to-insecure)$/) \
                                extra = extra substr(line, 1, RLENGTH - 1) ": " val ";"
                        }
                    }
                    if (enabled == "no") next
                    if ((" " types " ") !~ / deb /) next
                    if ((" " suites " ") !~ (" " want " ")) next
                    if ((" " comps " ") !~ / main /) next
                    split(uris, u, /[ \t]+/)
                    # Signed-By may be an inline key block; only keep a path.
                    if (signed !~ /^\//) signed = ""
                    printf "%s\037%s\037%s\n", u[1], signed, extra
                    exit
                }' "$f"
        done
        # one-line format
        for f in "$etc"/sources.list "$etc"/sources.list.d/*.list; do
            [[ -f $f ]] || continue
            awk -v want="$codename" '
                /^[ \t]*#/ || NF < 3 { next }
                $1 != "deb" { next }
                {
                    signed = extra = ""; i = 2
                    if ($2 ~ /^\[/) {
                        opts = ""
                        for (; i <= NF; i++) { opts = opts " " $i; if ($i ~ /\]$/) { i++; break } }
                        gsub(/[][]/, " ", opts)
                        n = split(opts, o, /[ \t]+/)
                        for (k = 1; k <= n; k++) {
                            if (o[k] ~ /^signed-by=/) signed = substr(o[k], 11)
                            else if (o[k] ~ /^(check-valid-until|check-date|trusted|allow-insecure|allow-weak|allow-downgrade-to-insecure)=/) {
                                split(o[k], kv, "=")
                                extra = extra kv[1] ": " kv[2] ";"
                            }
                        }
                    }
                    uri = $i; s = $(i + 1)
                    if (s != want) next
                    ok = 0
                    for (j = i + 2; j <= NF; j++) if ($j == "main") ok = 1
                    if (!ok) next
                    printf "%s\037%s\037%s\n", uri, signed, extra
                    exit
                }' "$f"
        done
    }

    local archive uri signed extra
    archive="$(find_archive | head -n1)"
    [[ -n $archive ]] || die "could not find an apt entry for suite '$codename' (component main) in /etc/apt/sources.list{,.d}"
    IFS=$'\037' read -r uri signed extra <<<"$archive"
    hyperfill_log "main Debian archive from apt config: $uri (Signed-By: ${signed:-<apt default trusted keys>})"

    # -- 2b. make sure the keyring knows the trixie archive keys ------------
    # bookworm's debian-archive-keyring >= 2023.3+deb12u1 ships the trixie
    # (Debian 13) archive keys, both inside debian-archive-keyring.gpg and as
    # /usr/share/keyrings/debian-archive-trixie-*.gpg.  If they are missing,
    # upgrade debian-archive-keyring from bookworm (never from trixie).
    if [[ ! -f /usr/share/keyrings/debian-archive-${suite}-automatic.gpg ]]; then
        hyperfill_log "keyring has no '$suite' archive key yet; upgrading debian-archive-keyring from $codename"
        apt_update_once
        apt_env apt-get install -y -qq --no-install-recommends debian-archive-keyring >&2
    fi
    if [[ -n $signed && ! -f $signed ]]; then
        die "Signed-By keyring $signed of the existing entry does not exist"
    fi

    # -- 2c. deb-src entry for trixie (separate file) ------------------------
    local entry
    entry="# Written by hyperfill scripts/lib/ensure-timescaledb.sh.
# Source packages only (deb-src): used to build TimescaleDB from Debian's
# '$suite' source package. No $suite binary packages are installed from here.
Types: deb-src
URIs: $uri
Suites: $suite
Components: main"
    [[ -n $signed ]] && entry+=$'\n'"Signed-By: $signed"
    # carry over options such as Check-Valid-Until (snapshot mirrors)
    local opt
    while IFS= read -r -d ';' opt; do
        [[ -n $opt ]] && entry+=$'\n'"$opt"
    done <<<"$extra"
    if [[ ! -f $srclist ]] || [[ "$(cat "$srclist")" != "$entry" ]]; then
        hyperfill_log "writing $srclist"
        printf '%s\n' "$entry" | as_root tee "$srclist" >/dev/null
    fi
    # Refresh only this source (fast; leaves the other lists alone).
    hyperfill_log "apt-get update (only $srclist)"
    apt_env apt-get update -qq \
        -o Dir::Etc::sourcelist="$srclist" \
        -o Dir::Etc::sourceparts=- \
        -o APT::Get::List-Cleanup=0

    # -- 2d. download + unpack the source package ---------------------------
    local srcver
    srcver="$(apt-cache showsrc timescaledb 2>/dev/null | awk '/^Package: /{p=$2} /^Version: /{ if (p=="timescaledb") print $2 }' | sort -V | tail -n1)"
    [[ -n $srcver ]] || die "apt-cache showsrc timescaledb found nothing in $suite"
    local upstream="${srcver#*:}"; upstream="${upstream%-*}"; upstream="${upstream%%+*}"
    hyperfill_log "Debian $suite source package timescaledb $srcver (upstream $upstream)"

    as_root mkdir -p "$build_root"
    [[ $EUID -eq 0 ]] || as_root chown "$(id -u):$(id -g)" "$build_root"
    local srcdir
    srcdir="$(find "$build_root" -mindepth 1 -maxdepth 1 -type d -name "timescaledb-${upstream}*" | head -n1)"
    if [[ -z $srcdir || ! -f $srcdir/CMakeLists.txt ]]; then
        [[ -n $srcdir ]] && rm -rf "$srcdir"
        hyperfill_log "apt-get source timescaledb=$srcver into $build_root"
        # _apt must be able to write the download dir, otherwise apt falls
        # back to an unsandboxed download and warns.
        (
            cd "$build_root"
            if [[ $EUID -eq 0 ]] && id _apt >/dev/null 2>&1; then
                chown _apt "$build_root"
            fi
            apt-get source -qq "timescaledb=$srcver" >&2
            [[ $EUID -eq 0 ]] && chown root "$build_root"
        )
        srcdir="$(find "$build_root" -mindepth 1 -maxdepth 1 -type d -name "timescaledb-${upstream}*" | head -n1)"
        [[ -n $srcdir && -f $srcdir/CMakeLists.txt ]] || die "unpacked source not found under $build_root"
    else
        hyperfill_log "reusing unpacked source $srcdir"
    fi

    # -- 2e. build + install (Apache-only, like Debian's package) -----------
    local builddir="$srcdir/build-pg15"
    local jobs
    jobs="$(nproc 2>/dev/null || echo 2)"
    hyperfill_log "configuring in $builddir (Apache-only, against $pgc)"
    # Reconfigure from scratch if a previous run was interrupted.
    [[ -f $builddir/CMakeCache.txt ]] || rm -rf "$builddir"
    cmake -S "$srcdir" -B "$builddir" \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DPG_CONFIG="$pgc" \
        -DAPACHE_ONLY=ON \
        -DREGRESS_CHECKS=OFF \
        -DTAP_CHECKS=OFF \
        -DWARNINGS_AS_ERRORS=OFF \
        -DLINTER=OFF \
        -DCLANG_FORMAT=OFF \
        -DSEND_TELEMETRY_DEFAULT=OFF \
        -DUSE_TELEMETRY=OFF \
        -DGENERATE_DOWNGRADE_SCRIPT=OFF \
        -DENABLE_DEBUG_UTILS=OFF >&2
    hyperfill_log "building with make -j$jobs"
    make -C "$builddir" -j"$jobs" >&2
    hyperfill_log "installing (make install)"
    as_root make -C "$builddir" install >&2

    tsdb_control_installed "$bindir" || die "make install did not produce timescaledb.control"
    hyperfill_log "installed TimescaleDB $upstream for $("$pgc" --version):"
    hyperfill_log "  control: $("$pgc" --sharedir)/extension/timescaledb.control"
    local so
    for so in "$("$pgc" --pkglibdir)"/timescaledb*.so; do
        hyperfill_log "  lib:     $so"
    done
)

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    hyperfill_ensure_timescaledb
fi
