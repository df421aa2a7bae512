#!/usr/bin/env bash
# Two throwaway PostgreSQL + TimescaleDB clusters ("source" and "target") for
# hyperfill's tests and demo.
#
# Usage: scripts/lib/clusters.sh start|stop|status|env|destroy
#
#   start    initdb (only if the data dir does not exist yet) and start both
#            clusters (only if not running); waits until they accept
#            connections.  Idempotent; fast when already running.
#   stop     stop both clusters (fast mode).
#   status   whether each cluster runs, timescaledb.license and the
#            TimescaleDB extension version available/installed.
#   env      print `export` lines for the test/demo environment:
#            HYPERFILL_TEST_SOURCE_URL, HYPERFILL_TEST_TARGET_URL,
#            HYPERFILL_PG_BINDIR.  Use: eval "$(scripts/lib/clusters.sh env)"
#   destroy  stop both clusters and delete the cluster dir.
#
# Environment:
#   HYPERFILL_PG_BINDIR     PostgreSQL bin dir (default /usr/lib/postgresql/15/bin)
#   HYPERFILL_CLUSTER_DIR   where the clusters live (default /tmp/hyperfill-clusters)
#   HYPERFILL_SOURCE_PORT   source cluster port (default 55432)
#   HYPERFILL_TARGET_PORT   target cluster port (default 55433)
#
# The clusters listen on 127.0.0.1 only (plus a unix socket in the cluster
# dir), trust authentication for local and 127.0.0.1 connections, superuser
# `postgres`.  Durability is switched off (fsync etc.): test data only.
# PostgreSQL refuses to run as root, so when this script runs as root the
# server runs as the `postgres` OS user, which then owns the cluster dir.
set -euo pipefail

BINDIR="${HYPERFILL_PG_BINDIR:-/usr/lib/postgresql/15/bin}"
CLUSTER_DIR="${HYPERFILL_CLUSTER_DIR:-/tmp/hyperfill-clusters}"
SOURCE_PORT="${HYPERFILL_SOURCE_PORT:-55432}"
TARGET_PORT="${HYPERFILL_TARGET_PORT:-55433}"
PG_OS_USER=postgres

log() { printf '[hyperfill-env] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

port_of() {
    case "$1" in
        source) echo "$SOURCE_PORT" ;;
        target) echo "$TARGET_PORT" ;;
    esac
}

# Run a PostgreSQL server-side tool as the right OS user, from a directory
# that user can read (pg_ctl dislikes an inaccessible cwd).
run_pg() {
    if [[ $EUID -eq 0 ]]; then
        (cd "$CLUSTER_DIR" && runuser -u "$PG_OS_USER" -- "$@")
    else
        (cd "$CLUSTER_DIR" && "$@")
    fi
}

check_bindir() {
    local b
    for b in initdb pg_ctl postgres pg_isready psql; do
        [[ -x $BINDIR/$b ]] || die "$BINDIR/$b not found (set HYPERFILL_PG_BINDIR or run scripts/lib/ensure-timescaledb.sh)"
    done
}

prepare_cluster_dir() {
    mkdir -p "$CLUSTER_DIR"
    if [[ $EUID -eq 0 ]]; then
        id "$PG_OS_USER" >/dev/null 2>&1 \
            || die "running as root but there is no '$PG_OS_USER' OS user to run PostgreSQL as"
        if [[ $(stat -c %U "$CLUSTER_DIR") != "$PG_OS_USER" ]]; then
            chown -R "$PG_OS_USER:" "$CLUSTER_DIR"
        fi
        chmod 0755 "$CLUSTER_DIR"
        runuser -u "$PG_OS_USER" -- test -w "$CLUSTER_DIR" -a -x "$CLUSTER_DIR" \
            || die "OS user '$PG_OS_USER' cannot write $CLUSTER_DIR (is a parent directory closed to it?); set HYPERFILL_CLUSTER_DIR"
    fi
}

desired_conf() { # name
    local name="$1"
    cat <<EOF
# Managed by hyperfill scripts/lib/clusters.sh -- rewritten on start.
listen_addresses = '127.0.0.1'
port = $(port_of "$name")
unix_socket_directories = '$CLUSTER_DIR/$name'
max_connections = 300
shared_preload_libraries = 'timescaledb'
# Debian's Apache-only build has no telemetry code at all (so no such
# parameter; it then stays a harmless placeholder); other builds honour it.
timescaledb.telemetry_level = off
timescaledb.max_background_workers = 4
max_locks_per_transaction = 512
password_encryption = scram-sha-256
# throwaway test clusters: no durability
fsync = off
synchronous_commit = off
full_page_writes = off
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
EOF
}

is_running() { # name
    run_pg "$BINDIR/pg_ctl" -D "$CLUSTER_DIR/$1/data" status >/dev/null 2>&1
}

show_log_tail() {
    local logf="$CLUSTER_DIR/$1/postgresql.log"
    if [[ -f $logf ]]; then
        log "last lines of $logf:"
        tail -n 20 "$logf" | sed 's/^/    /' >&2
    fi
}

wait_ready() { # name
    local name="$1" port i
    port="$(port_of "$name")"
    for ((i = 0; i < 120; i++)); do
        if "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres; then
            return 0
        fi
        sleep 0.5
    done
    show_log_tail "$name"
    die "$name cluster is not accepting connections on 127.0.0.1:$port"
}

start_one() { # name
    local name="$1" dir="$CLUSTER_DIR/$1" data="$CLUSTER_DIR/$1/data" port
    port="$(port_of "$name")"

    if [[ ! -f $data/PG_VERSION ]]; then
        if [[ -d $data ]]; then
            log "$name: removing incomplete data dir $data"
            rm -rf "$data"
        fi
        run_pg mkdir -p "$dir"
        log "$name: initdb $data"
        run_pg "$BINDIR/initdb" -D "$data" -U postgres --auth=trust \
            --encoding=UTF8 --locale=C.UTF-8 --no-sync >"$dir/initdb.log" 2>&1 \
            || { cat "$dir/initdb.log" >&2; die "$name: initdb failed"; }
        printf "\ninclude_if_exists = 'hyperfill.conf'\n" | run_pg tee -a "$data/postgresql.conf" >/dev/null
    else
        local have want
        have="$(cat "$data/PG_VERSION")"
        want="$("$BINDIR/postgres" --version | sed -E 's/.* ([0-9]+)(\.[0-9]+)?.*/\1/')"
        [[ $have == "$want" ]] \
            || die "$name: $data was created by PostgreSQL $have but $BINDIR is PostgreSQL $want; run '$0 destroy' or set HYPERFILL_CLUSTER_DIR"
    fi

    local conf
    conf="$(desired_conf "$name")"
    local changed=0
    if [[ ! -f $data/hyperfill.conf ]] || [[ "$(cat "$data/hyperfill.conf")" != "$conf" ]]; then
        printf '%s\n' "$conf" | run_pg tee "$data/hyperfill.conf" >/dev/null
        changed=1
    fi

    if is_running "$name"; then
        if [[ $changed -eq 1 ]]; then
            log "$name: configuration changed, restarting"
            run_pg "$BINDIR/pg_ctl" -D "$data" -m fast -w -t 60 -l "$dir/postgresql.log" restart >/dev/null \
                || { show_log_tail "$name"; die "$name: restart failed"; }
        else
            log "$name: already running on 127.0.0.1:$port"
        fi
    else
        log "$name: starting on 127.0.0.1:$port (log: $dir/postgresql.log)"
        run_pg "$BINDIR/pg_ctl" -D "$data" -w -t 60 -l "$dir/postgresql.log" start >/dev/null \
            || { show_log_tail "$name"; die "$name: start failed"; }
    fi
    wait_ready "$name"
}

stop_one() { # name
    local name="$1" data="$CLUSTER_DIR/$1/data"
    if [[ -f $data/PG_VERSION ]] && is_running "$name"; then
        log "$name: stopping"
        run_pg "$BINDIR/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null
    else
        log "$name: not running"
    fi
}

psql_q() { # port sql
    "$BINDIR/psql" -X -q -A -t -h 127.0.0.1 -p "$1" -U postgres -d postgres -c "$2" 2>&1
}

status_one() { # name -> 0 running, 1 not
    local name="$1" port data="$CLUSTER_DIR/$1/data"
    port="$(port_of "$name")"
    if [[ -f $data/PG_VERSION ]] && is_running "$name"; then
        local ver lic ext
        ver="$(psql_q "$port" 'show server_version')"
        # timescaledb.license only exists once the extension library is
        # loaded in a session: create the extension in a rolled-back
        # transaction to read it without changing anything.
        lic="$("$BINDIR/psql" -X -q -A -t -h 127.0.0.1 -p "$port" -U postgres -d postgres \
            -c 'begin; create extension if not exists timescaledb; show timescaledb.license; rollback' 2>/dev/null | tail -n1)"
        ext="$(psql_q "$port" "select coalesce(default_version, '-') || ' (installed in db postgres: ' || coalesce(installed_version, 'no') || ')' from pg_available_extensions where name = 'timescaledb'")"
        printf '%s: running  127.0.0.1:%s  PostgreSQL %s  timescaledb.license=%s  timescaledb available %s  data=%s\n' \
            "$name" "$port" "$ver" "$lic" "${ext:-NOT AVAILABLE}" "$data"
        return 0
    fi
    printf '%s: not running  (port %s, data=%s)\n' "$name" "$port" "$data"
    return 1
}

print_env() {
    printf "export HYPERFILL_PG_BINDIR='%s'\n" "$BINDIR"
    printf "export HYPERFILL_TEST_SOURCE_URL='postgres://postgres@127.0.0.1:%s/postgres'\n" "$SOURCE_PORT"
    printf "export HYPERFILL_TEST_TARGET_URL='postgres://postgres@127.0.0.1:%s/postgres'\n" "$TARGET_PORT"
}

[[ $SOURCE_PORT != "$TARGET_PORT" ]] || die "source and target port must differ (both $SOURCE_PORT)"

case "${1:-}" in
    start)
        check_bindir
        prepare_cluster_dir
        start_one source
        start_one target
        ;;
    stop)
        if [[ -d $CLUSTER_DIR ]]; then
            check_bindir
            stop_one source
            stop_one target
        else
            log "no clusters in $CLUSTER_DIR"
        fi
        ;;
    status)
        check_bindir
        rc=0
        if [[ -d $CLUSTER_DIR ]]; then
            status_one source || rc=3
            status_one target || rc=3
        else
            echo "no clusters in $CLUSTER_DIR"
            rc=3
        fi
        exit "$rc"
        ;;
    env)
        print_env
        ;;
    destroy)
        if [[ -d $CLUSTER_DIR ]]; then
            check_bindir
            stop_one source
            stop_one target
            log "removing $CLUSTER_DIR"
            rm -rf "$CLUSTER_DIR"
        fi
        ;;
    *)
        echo "usage: $0 start|stop|status|env|destroy" >&2
        exit 2
        ;;
esac
