#!/usr/bin/env bash
# A source/target cluster pair for one combination of TimescaleDB version
# and PostgreSQL majors, on licensed builds (scripts/lib/licensed-install.sh),
# with its own cluster directory and ports.
#
# Usage:
#   scripts/lib/combination.sh start            build what is missing, start
#                                               the pair, print `export` lines
#   scripts/lib/combination.sh env|stop|status|destroy [NAME]
#
# The combination comes from the environment:
#   HYPERFILL_TIMESCALEDB_SOURCE  TimescaleDB release tarball or source dir
#   HYPERFILL_PG_MAJOR            the source cluster's PostgreSQL major (default 15)
#   HYPERFILL_TARGET_PG_MAJOR     the target cluster's (default: the source's)
# or, for env/stop/status/destroy, from NAME: the combination's directory
# name (ts2.28.3-pg15, ts2.28.3-pg15-pg17), as `scripts/matrix.sh status`
# lists them.
#
# Each combination lives in $HYPERFILL_MATRIX_DIR/<NAME> (default
# /tmp/hyperfill-matrix/<NAME>) and gets its own pair of ports from
# HYPERFILL_MATRIX_PORTS (default 55440-55499), chosen once (the first pair
# that no other combination holds and nothing listens on) and kept in
# <NAME>/combination.  HYPERFILL_CLUSTER_DIR and HYPERFILL_SOURCE_PORT /
# HYPERFILL_TARGET_PORT are ignored here: they name the default pair.
# The clusters themselves are scripts/lib/clusters.sh's (TLS, roles, started
# and reused the same way).  `env` prints what `clusters.sh env` prints, with
# HYPERFILL_TARGET_PG_BINDIR for a cross-major pair.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib/common.sh
. "$here/common.sh"

MATRIX_DIR="${HYPERFILL_MATRIX_DIR:-/tmp/hyperfill-matrix}"
PORTS="${HYPERFILL_MATRIX_PORTS:-55440-55499}"
[[ $PORTS =~ ^([0-9]+)-([0-9]+)$ ]] || die "HYPERFILL_MATRIX_PORTS=$PORTS: want FIRST-LAST, e.g. 55440-55499"
PORT_FIRST="${BASH_REMATCH[1]}"
PORT_LAST="${BASH_REMATCH[2]}"

# ---- which combination ------------------------------------------------------

# Sets NAME, VERSION, SRC_MAJOR, TGT_MAJOR from the environment.
from_env() {
    local src="${HYPERFILL_TIMESCALEDB_SOURCE:-}"
    [[ -n $src ]] || die "HYPERFILL_TIMESCALEDB_SOURCE is not set (a TimescaleDB release tarball or source directory)"
    SRC_MAJOR="${HYPERFILL_PG_MAJOR:-15}"
    TGT_MAJOR="${HYPERFILL_TARGET_PG_MAJOR:-$SRC_MAJOR}"
    [[ $SRC_MAJOR =~ ^[0-9]+$ ]] || die "HYPERFILL_PG_MAJOR=$SRC_MAJOR is not a PostgreSQL major (15, 16, 17, 18)"
    [[ $TGT_MAJOR =~ ^[0-9]+$ ]] || die "HYPERFILL_TARGET_PG_MAJOR=$TGT_MAJOR is not a PostgreSQL major (15, 16, 17, 18)"
    VERSION="$(tsdb_source_version "$src")"
    NAME="ts$VERSION-pg$SRC_MAJOR"
    [[ $TGT_MAJOR == "$SRC_MAJOR" ]] || NAME="$NAME-pg$TGT_MAJOR"
}

DIR=""
conf_get() { # key -> value from $DIR/combination (empty when none)
    [[ -f $DIR/combination ]] || return 0
    sed -n "s/^$1=//p" "$DIR/combination" | head -n1
}

# ---- ports ------------------------------------------------------------------

listening() { # port -> 0 when something accepts connections on it
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The first free pair of the range (called with the ports lock held).
allocate_ports() {
    local taken=" " f p
    for f in "$MATRIX_DIR"/*/combination; do
        [[ -f $f && $f != "$DIR/combination" ]] || continue
        taken+="$(sed -n 's/^source_port=//p; s/^target_port=//p' "$f" | tr '\n' ' ')"
    done
    for ((p = PORT_FIRST; p + 1 <= PORT_LAST; p += 2)); do
        [[ $taken == *" $p "* || $taken == *" $((p + 1)) "* ]] && continue
        listening "$p" && continue
        listening "$((p + 1))" && continue
        printf '%s %s\n' "$p" "$((p + 1))"
        return 0
    done
    die "no free pair of ports left in $PORTS: remove combinations you no longer need (scripts/matrix.sh destroy NAME; scripts/matrix.sh status lists them) or set HYPERFILL_MATRIX_PORTS"
}

# ---- clusters.sh with this combination's settings -----------------------------

clusters() { # command
    HYPERFILL_PG_BINDIR="$(conf_get source_bindir)" \
        HYPERFILL_TARGET_PG_BINDIR="$(conf_get target_bindir)" \
        HYPERFILL_CLUSTER_DIR="$DIR" \
        HYPERFILL_SOURCE_PORT="$(conf_get source_port)" \
        HYPERFILL_TARGET_PORT="$(conf_get target_port)" \
        "$here/clusters.sh" "$1"
}

print_env() {
    clusters env
    printf "export HYPERFILL_COMBINATION='%s'\n" "$(conf_get label)"
}

cmd_start() {
    from_env
    DIR="$MATRIX_DIR/$NAME"
    local sbin tbin
    sbin="$("$here/licensed-install.sh" "$SRC_MAJOR")"
    if [[ $TGT_MAJOR == "$SRC_MAJOR" ]]; then
        tbin="$sbin"
    else
        tbin="$("$here/licensed-install.sh" "$TGT_MAJOR")"
    fi
    mkdir -p "$MATRIX_DIR"
    chmod 0755 "$MATRIX_DIR"
    (
        exec 9>"$MATRIX_DIR/.ports.lock"
        flock 9
        local sport tport label
        sport="$(conf_get source_port)"
        tport="$(conf_get target_port)"
        if [[ -z $sport || -z $tport ]]; then
            read -r sport tport < <(allocate_ports)
            [[ -n $sport ]] || exit 1
            log "$NAME: ports $sport (source) and $tport (target)"
        fi
        label="$VERSION/$SRC_MAJOR"
        [[ $TGT_MAJOR == "$SRC_MAJOR" ]] || label="$VERSION/$SRC_MAJOR:$TGT_MAJOR"
        mkdir -p "$DIR"
        printf '%s\n' "# scripts/lib/combination.sh: what this cluster pair runs" \
            "label=$label" "timescaledb=$VERSION" \
            "source_major=$SRC_MAJOR" "target_major=$TGT_MAJOR" \
            "source_bindir=$sbin" "target_bindir=$tbin" \
            "source_port=$sport" "target_port=$tport" >"$DIR/combination.new"
        chmod 0644 "$DIR/combination.new"
        mv -f "$DIR/combination.new" "$DIR/combination"
    )
    log "$(conf_get label): TimescaleDB $VERSION, source PostgreSQL $SRC_MAJOR on 127.0.0.1:$(conf_get source_port), target PostgreSQL $TGT_MAJOR on 127.0.0.1:$(conf_get target_port), clusters in $DIR"
    clusters start
    print_env
}

# env/stop/status/destroy: an existing combination (NAME or the environment).
existing() { # [NAME]
    if [[ -n ${1:-} ]]; then
        NAME="$1"
    else
        from_env
    fi
    DIR="$MATRIX_DIR/$NAME"
    [[ -f $DIR/combination ]] || die "no combination $NAME in $MATRIX_DIR (start it first: scripts/matrix.sh env ...)"
}

case "${1:-}" in
    start)
        [[ $# -eq 1 ]] || die "usage: $0 start (the combination comes from the environment)"
        cmd_start
        ;;
    env)
        existing "${2:-}"
        print_env
        ;;
    stop)
        existing "${2:-}"
        clusters stop
        ;;
    status)
        existing "${2:-}"
        printf '%s (%s):\n' "$(conf_get label)" "$NAME"
        clusters status
        ;;
    destroy)
        existing "${2:-}"
        clusters destroy
        ;;
    *)
        echo "usage: $0 start | env|stop|status|destroy [NAME]" >&2
        exit 2
        ;;
esac
