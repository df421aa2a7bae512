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
#            HYPERFILL_PG_BINDIR, HYPERFILL_TEST_CA,
#            HYPERFILL_TEST_CLIENT_CERT, HYPERFILL_TEST_CLIENT_KEY.
#            Use: eval "$(scripts/lib/clusters.sh env)"
#   destroy  stop both clusters and delete the cluster dir.
#
# Environment:
#   HYPERFILL_PG_BINDIR     PostgreSQL bin dir (default /usr/lib/postgresql/15/bin);
#                           the source cluster's, and the target's too unless
#   HYPERFILL_TARGET_PG_BINDIR  is set: the target cluster's PostgreSQL bin dir
#                           (another major for a cross-major pair; `env` then
#                           also prints it, and the tests take pg_dump/psql
#                           from it)
#   HYPERFILL_CLUSTER_DIR   where the clusters live (default /tmp/hyperfill-clusters)
#   HYPERFILL_SOURCE_PORT   source cluster port (default 55432)
#   HYPERFILL_TARGET_PORT   target cluster port (default 55433)
#
# The clusters listen on 127.0.0.1 only (plus a unix socket in the cluster
# dir), trust authentication for local and 127.0.0.1 connections, superuser
# `postgres`.  Durability is switched off (fsync etc.): test data only.
#
# TLS is on for both clusters (`start` sets it up, also on clusters created
# before this existed).  $HYPERFILL_CLUSTER_DIR/tls holds, generated once
# with openssl (installed with apt-get when missing):
#   ca.crt/ca.key          a throwaway test CA
#   server.crt/server.key  CN=localhost, subjectAltName DNS:localhost only
#                          (no IP SAN: verify-full against 127.0.0.1 fails);
#                          server.key belongs to the server's OS user, 0600
#   client.crt/client.key  CN=postgres, signed by the CA; client.key belongs
#                          to the user running this script, 0600
# Two extra roles for the TLS/authentication tests, each with a pg_hba.conf
# rule placed before the trust rules (a managed block, rewritten on start):
#   hf_certuser  TLS with a client certificate only (`cert`; the certificate
#                CN=postgres maps to it through pg_ident.conf); no plain TCP
#   hf_pwuser    scram-sha-256 password over TCP (tests set the password)
# Everything else keeps trust authentication, with or without TLS.
# A configuration change is applied with a reload; the server restarts only
# when a changed setting needs it.
# PostgreSQL refuses to run as root, so when this script runs as root the
# server runs as the `postgres` OS user, which then owns the cluster dir.
set -euo pipefail

BINDIR="${HYPERFILL_PG_BINDIR:-/usr/lib/postgresql/15/bin}"
TARGET_BINDIR="${HYPERFILL_TARGET_PG_BINDIR:-$BINDIR}"
CLUSTER_DIR="${HYPERFILL_CLUSTER_DIR:-/tmp/hyperfill-clusters}"
SOURCE_PORT="${HYPERFILL_SOURCE_PORT:-55432}"
TARGET_PORT="${HYPERFILL_TARGET_PORT:-55433}"
PG_OS_USER=postgres

TLS_DIR="$CLUSTER_DIR/tls"

log() { printf '[hyperfill-env] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

bin_of() { # name -> that cluster's PostgreSQL bin dir
    case "$1" in
        source) echo "$BINDIR" ;;
        target) echo "$TARGET_BINDIR" ;;
    esac
}

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
    local b d
    for d in "$BINDIR" "$TARGET_BINDIR"; do
        for b in initdb pg_ctl postgres pg_isready psql; do
            [[ -x $d/$b ]] || die "$d/$b not found (set HYPERFILL_PG_BINDIR / HYPERFILL_TARGET_PG_BINDIR or run scripts/lib/ensure-timescaledb.sh)"
        done
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
# TLS with the test CA (scripts/lib/clusters.sh setup_tls)
ssl = on
ssl_cert_file = '$TLS_DIR/server.crt'
ssl_key_file = '$TLS_DIR/server.key'
ssl_ca_file = '$TLS_DIR/ca.crt'
# throwaway test clusters: no durability
fsync = off
synchronous_commit = off
full_page_writes = off
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
EOF
}

is_running() { # name
    run_pg "$(bin_of "$1")/pg_ctl" -D "$CLUSTER_DIR/$1/data" status >/dev/null 2>&1
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
        if "$(bin_of "$name")/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres; then
            return 0
        fi
        sleep 0.5
    done
    show_log_tail "$name"
    die "$name cluster is not accepting connections on 127.0.0.1:$port"
}

# ---- TLS ------------------------------------------------------------------

# openssl, from apt when missing (the same way ensure-timescaledb.sh installs).
ensure_openssl() {
    command -v openssl >/dev/null 2>&1 && return 0
    local -a sudo=()
    if [[ $EUID -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null \
            || die "openssl is not installed and installing it needs root (or passwordless sudo): apt-get install openssl"
        sudo=(sudo -n)
    fi
    log "openssl not found; installing it (apt-get install openssl)"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssl >&2
    command -v openssl >/dev/null 2>&1 || die "openssl still not found after installing it"
}

# openssl with its output kept for the error message only.
ossl() { # what, args...
    local what="$1" out
    shift
    out="$(openssl "$@" 2>&1)" || { printf '%s\n' "$out" | sed 's/^/    /' >&2; die "TLS: $what failed"; }
}

# A key and a certificate signed by the test CA.
issue_cert() { # name cn extensions
    local name="$1" cn="$2" ext="$3" tmp
    tmp="$(mktemp -d "$TLS_DIR/.issue.XXXXXX")"
    printf '[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = %s\n' "$cn" >"$tmp/req.cnf"
    printf '%s\n' "$ext" >"$tmp/ext.cnf"
    ossl "creating the $name key" genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/$name.key"
    ossl "creating the $name request" req -new -config "$tmp/req.cnf" -key "$tmp/$name.key" -out "$tmp/$name.csr"
    ossl "signing the $name certificate" x509 -req -in "$tmp/$name.csr" -CA "$TLS_DIR/ca.crt" -CAkey "$TLS_DIR/ca.key" \
        -set_serial "0x$(openssl rand -hex 8)" -days 3650 -sha256 -extfile "$tmp/ext.cnf" -out "$tmp/$name.crt"
    chmod 0600 "$tmp/$name.key"
    chmod 0644 "$tmp/$name.crt"
    mv -f "$tmp/$name.key" "$TLS_DIR/$name.key"
    mv -f "$tmp/$name.crt" "$TLS_DIR/$name.crt"
    rm -rf "$tmp"
}

# Whether $TLS_DIR/<name>.crt exists, has its key and is signed by the CA.
cert_ok() { # name
    [[ -f $TLS_DIR/$1.crt && -f $TLS_DIR/$1.key ]] \
        && openssl verify -CAfile "$TLS_DIR/ca.crt" "$TLS_DIR/$1.crt" >/dev/null 2>&1
}

# Generate what is missing (once), then fix owners and modes (every start).
# Sets TLS_CHANGED=1 when a certificate or key was (re)generated.
TLS_CHANGED=0
setup_tls() {
    if [[ ! -f $TLS_DIR/ca.crt || ! -f $TLS_DIR/ca.key || ! -f $TLS_DIR/server.crt || ! -f $TLS_DIR/client.crt ]] \
        || ! cert_ok server || ! cert_ok client; then
        ensure_openssl
        mkdir -p "$TLS_DIR"
        if [[ ! -f $TLS_DIR/ca.crt || ! -f $TLS_DIR/ca.key ]]; then
            log "TLS: creating a test CA in $TLS_DIR"
            local tmp
            tmp="$(mktemp -d "$TLS_DIR/.ca.XXXXXX")"
            printf '%s\n' '[req]' 'distinguished_name = dn' 'prompt = no' 'x509_extensions = v3_ca' \
                '[dn]' 'CN = hyperfill test CA' \
                '[v3_ca]' 'basicConstraints = critical,CA:TRUE' 'keyUsage = critical,keyCertSign,cRLSign' \
                'subjectKeyIdentifier = hash' >"$tmp/ca.cnf"
            ossl "creating the CA" req -x509 -new -config "$tmp/ca.cnf" -newkey rsa:2048 -nodes -sha256 \
                -days 3650 -keyout "$tmp/ca.key" -out "$tmp/ca.crt"
            chmod 0600 "$tmp/ca.key"
            chmod 0644 "$tmp/ca.crt"
            mv -f "$tmp/ca.key" "$TLS_DIR/ca.key"
            mv -f "$tmp/ca.crt" "$TLS_DIR/ca.crt"
            rm -rf "$tmp"
        fi
        if ! cert_ok server; then
            log "TLS: issuing the server certificate (CN=localhost, DNS:localhost)"
            issue_cert server localhost "basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid"
        fi
        if ! cert_ok client; then
            log "TLS: issuing the client certificate (CN=postgres)"
            issue_cert client postgres "basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid"
        fi
        TLS_CHANGED=1
    fi
    # The server reads ca.crt and server.*; only its OS user may read
    # server.key. client.key belongs to whoever runs the tests (this user).
    chmod 0755 "$TLS_DIR"
    chmod 0644 "$TLS_DIR/ca.crt" "$TLS_DIR/server.crt" "$TLS_DIR/client.crt"
    chmod 0600 "$TLS_DIR/ca.key" "$TLS_DIR/server.key" "$TLS_DIR/client.key"
    chown "$(id -u):$(id -g)" "$TLS_DIR/client.key" "$TLS_DIR/ca.key"
    if [[ $EUID -eq 0 ]]; then
        chown "$PG_OS_USER:" "$TLS_DIR/server.key"
        runuser -u "$PG_OS_USER" -- test -r "$TLS_DIR/server.key" \
            || die "OS user '$PG_OS_USER' cannot read $TLS_DIR/server.key (is a parent directory closed to it?)"
    fi
}

# The pg_hba.conf rules for the TLS/authentication test roles, placed before
# initdb's trust rules (first match wins).
HBA_BEGIN='# BEGIN hyperfill (scripts/lib/clusters.sh, rewritten on start)'
HBA_END='# END hyperfill'
desired_hba_block() {
    cat <<EOF2
$HBA_BEGIN
hostssl all hf_certuser 127.0.0.1/32 cert map=hyperfill_cert
host    all hf_certuser 127.0.0.1/32 reject
host    all hf_pwuser   127.0.0.1/32 scram-sha-256
$HBA_END
EOF2
}

# Rewrite the managed block at the top of a file (pg_hba.conf or
# pg_ident.conf); sets AUTH_CHANGED=1 when the file changed.
AUTH_CHANGED=0
put_managed_block() { # file block
    local file="$1" block="$2" rest new
    rest="$(awk -v b="$HBA_BEGIN" -v e="$HBA_END" '$0 == b { skip = 1; next } skip && $0 == e { skip = 0; next } !skip' "$file")"
    new="$(printf '%s\n%s' "$block" "$rest")"
    if [[ "$(cat "$file")" != "$new" ]]; then
        printf '%s\n' "$new" | run_pg tee "$file" >/dev/null
        AUTH_CHANGED=1
    fi
}

setup_auth_files() { # name
    local data="$CLUSTER_DIR/$1/data"
    AUTH_CHANGED=0
    put_managed_block "$data/pg_hba.conf" "$(desired_hba_block)"
    put_managed_block "$data/pg_ident.conf" "$HBA_BEGIN
hyperfill_cert  postgres  hf_certuser
$HBA_END"
}

# The roles the pg_hba.conf block names (no password: tests set one).
ensure_roles() { # name
    local port out
    port="$(port_of "$1")"
    out="$("$(bin_of "$1")/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "
        DO \$\$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'hf_certuser') THEN
                CREATE ROLE hf_certuser LOGIN SUPERUSER;
            END IF;
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'hf_pwuser') THEN
                CREATE ROLE hf_pwuser LOGIN SUPERUSER;
            END IF;
        END \$\$" 2>&1)" || die "$1: creating the test roles failed: $out"
}

# Wait until a TLS connection works (after a reload the server takes a moment).
wait_tls() { # name
    local name="$1" port i out=""
    port="$(port_of "$name")"
    for ((i = 0; i < 40; i++)); do
        out="$("$(bin_of "$name")/psql" -X -q -A -t "host=127.0.0.1 port=$port user=postgres dbname=postgres sslmode=require" \
            -c 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()' 2>&1)" && [[ $out == t ]] && return 0
        sleep 0.25
    done
    show_log_tail "$name"
    die "$name: TLS connections do not work on 127.0.0.1:$port: $out"
}

# Settings a reload applies; any other change in hyperfill.conf restarts.
RELOADABLE_SETTINGS=" ssl ssl_cert_file ssl_key_file ssl_ca_file ssl_crl_file password_encryption fsync synchronous_commit full_page_writes log_line_prefix "

# Whether the change from one hyperfill.conf to another needs a restart.
needs_restart() { # old-file new-text
    local key
    while read -r key; do
        [[ -n $key ]] || continue
        [[ $RELOADABLE_SETTINGS == *" $key "* ]] || return 0
    done < <(diff <(grep -E '^[a-z]' "$1" 2>/dev/null | sort) <(printf '%s\n' "$2" | grep -E '^[a-z]' | sort) \
        | sed -nE 's/^[<>] *([a-z_.]+).*/\1/p' | sort -u)
    return 1
}

# A running cluster must run the PostgreSQL (and so the TimescaleDB) asked
# for: a cluster dir started earlier from another installation of the same
# major would otherwise be reused silently.
check_running_binary() { # name
    local name="$1" pid exe want
    pid="$(head -n1 "$CLUSTER_DIR/$name/data/postmaster.pid" 2>/dev/null)" || return 0
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || return 0
    want="$(realpath "$(bin_of "$name")/postgres")"
    [[ $exe == "$want" ]] \
        || die "$name: the server running in $CLUSTER_DIR/$name is $exe, not $want; stop it with the settings it was started with (or set HYPERFILL_CLUSTER_DIR)"
}

start_one() { # name
    local name="$1" dir="$CLUSTER_DIR/$1" data="$CLUSTER_DIR/$1/data" port
    local bin
    bin="$(bin_of "$name")"
    port="$(port_of "$name")"

    if [[ ! -f $data/PG_VERSION ]]; then
        if [[ -d $data ]]; then
            log "$name: removing incomplete data dir $data"
            rm -rf "$data"
        fi
        run_pg mkdir -p "$dir"
        log "$name: initdb $data"
        run_pg "$bin/initdb" -D "$data" -U postgres --auth=trust \
            --encoding=UTF8 --locale=C.UTF-8 --no-sync >"$dir/initdb.log" 2>&1 \
            || { cat "$dir/initdb.log" >&2; die "$name: initdb failed"; }
        printf "\ninclude_if_exists = 'hyperfill.conf'\n" | run_pg tee -a "$data/postgresql.conf" >/dev/null
    else
        local have want
        have="$(cat "$data/PG_VERSION")"
        want="$("$bin/postgres" --version | sed -E 's/.* ([0-9]+)(\.[0-9]+)?.*/\1/')"
        [[ $have == "$want" ]] \
            || die "$name: $data was created by PostgreSQL $have but $bin is PostgreSQL $want; run '$0 destroy' or set HYPERFILL_CLUSTER_DIR"
    fi

    local conf
    conf="$(desired_conf "$name")"
    # restart: a changed setting needs it; reload: only reloadable ones
    # changed, or pg_hba.conf / pg_ident.conf / the certificates did.
    local restart=0 reload=0
    if [[ ! -f $data/hyperfill.conf ]] || [[ "$(cat "$data/hyperfill.conf")" != "$conf" ]]; then
        if needs_restart "$data/hyperfill.conf" "$conf"; then restart=1; else reload=1; fi
        printf '%s\n' "$conf" | run_pg tee "$data/hyperfill.conf" >/dev/null
    fi
    setup_auth_files "$name"
    [[ $AUTH_CHANGED -eq 0 ]] || reload=1
    [[ $TLS_CHANGED -eq 0 ]] || reload=1

    if is_running "$name"; then
        check_running_binary "$name"
        if [[ $restart -eq 1 ]]; then
            log "$name: configuration changed, restarting"
            run_pg "$bin/pg_ctl" -D "$data" -m fast -w -t 60 -l "$dir/postgresql.log" restart >/dev/null \
                || { show_log_tail "$name"; die "$name: restart failed"; }
        elif [[ $reload -eq 1 ]]; then
            log "$name: configuration changed, reloading"
            run_pg "$bin/pg_ctl" -D "$data" reload >/dev/null \
                || { show_log_tail "$name"; die "$name: reload failed"; }
        else
            log "$name: already running on 127.0.0.1:$port"
        fi
    else
        log "$name: starting $bin/postgres on 127.0.0.1:$port (log: $dir/postgresql.log)"
        run_pg "$bin/pg_ctl" -D "$data" -w -t 60 -l "$dir/postgresql.log" start >/dev/null \
            || { show_log_tail "$name"; die "$name: start failed"; }
    fi
    wait_ready "$name"
    wait_tls "$name"
    ensure_roles "$name"
}

stop_one() { # name
    local name="$1" data="$CLUSTER_DIR/$1/data"
    if [[ -f $data/PG_VERSION ]] && is_running "$name"; then
        log "$name: stopping"
        run_pg "$(bin_of "$name")/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null
    else
        log "$name: not running"
    fi
}

psql_q() { # name sql
    "$(bin_of "$1")/psql" -X -q -A -t -h 127.0.0.1 -p "$(port_of "$1")" -U postgres -d postgres -c "$2" 2>&1
}

status_one() { # name -> 0 running, 1 not
    local name="$1" port data="$CLUSTER_DIR/$1/data"
    port="$(port_of "$name")"
    if [[ -f $data/PG_VERSION ]] && is_running "$name"; then
        local ver lic ext ssl
        ver="$(psql_q "$name" 'show server_version')"
        ssl="$(psql_q "$name" 'show ssl')"
        # timescaledb.license only exists once the extension library is
        # loaded in a session: create the extension in a rolled-back
        # transaction to read it without changing anything.
        lic="$("$(bin_of "$name")/psql" -X -q -A -t -h 127.0.0.1 -p "$port" -U postgres -d postgres \
            -c 'begin; create extension if not exists timescaledb; show timescaledb.license; rollback' 2>/dev/null | tail -n1)"
        ext="$(psql_q "$name" "select coalesce(default_version, '-') || ' (installed in db postgres: ' || coalesce(installed_version, 'no') || ')' from pg_available_extensions where name = 'timescaledb'")"
        printf '%s: running  127.0.0.1:%s  PostgreSQL %s  ssl=%s  timescaledb.license=%s  timescaledb available %s  data=%s\n' \
            "$name" "$port" "$ver" "$ssl" "$lic" "${ext:-NOT AVAILABLE}" "$data"
        return 0
    fi
    printf '%s: not running  (port %s, data=%s)\n' "$name" "$port" "$data"
    return 1
}

print_env() {
    printf "export HYPERFILL_PG_BINDIR='%s'\n" "$BINDIR"
    if [[ $TARGET_BINDIR != "$BINDIR" ]]; then
        printf "export HYPERFILL_TARGET_PG_BINDIR='%s'\n" "$TARGET_BINDIR"
    else
        printf 'unset HYPERFILL_TARGET_PG_BINDIR\n'
    fi
    printf "export HYPERFILL_TEST_SOURCE_URL='postgres://postgres@127.0.0.1:%s/postgres'\n" "$SOURCE_PORT"
    printf "export HYPERFILL_TEST_TARGET_URL='postgres://postgres@127.0.0.1:%s/postgres'\n" "$TARGET_PORT"
    printf "export HYPERFILL_TEST_CA='%s'\n" "$TLS_DIR/ca.crt"
    printf "export HYPERFILL_TEST_CLIENT_CERT='%s'\n" "$TLS_DIR/client.crt"
    printf "export HYPERFILL_TEST_CLIENT_KEY='%s'\n" "$TLS_DIR/client.key"
}

[[ $SOURCE_PORT != "$TARGET_PORT" ]] || die "source and target port must differ (both $SOURCE_PORT)"

case "${1:-}" in
    start)
        check_bindir
        prepare_cluster_dir
        setup_tls
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
