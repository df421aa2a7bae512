# shellcheck shell=bash
# Helpers shared by scripts/lib/licensed-install.sh, scripts/lib/combination.sh
# and scripts/matrix.sh (sourced, never run).  Logging goes to stderr with the
# same prefix as the other scripts, so stdout stays free for results.

log() { printf '[hyperfill-env] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Run a command as root: directly, or through passwordless sudo.
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        die "need root (or passwordless sudo) to run: $*"
    fi
}

# Install the Debian packages of the list that are not installed yet
# (apt-get update once per process, only when something is missing).
HYPERFILL_APT_UPDATED=0
apt_ensure() { # pkg...
    local pkg
    local -a missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${db:Status-Status}\n' "$pkg" 2>/dev/null | grep -qx installed \
            || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    if [[ $HYPERFILL_APT_UPDATED -eq 0 ]]; then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq -o DPkg::Lock::Timeout=600 >&2
        HYPERFILL_APT_UPDATED=1
    fi
    log "installing: ${missing[*]}"
    # wait for another apt-get/dpkg rather than fail
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o DPkg::Lock::Timeout=600 "${missing[@]}" >&2
}

# The cache for downloaded PostgreSQL builds and licensed installs.
hyperfill_cache_dir() {
    if [[ -n ${HYPERFILL_CACHE_DIR:-} ]]; then
        printf '%s\n' "$HYPERFILL_CACHE_DIR"
    elif [[ $EUID -eq 0 ]]; then
        printf '%s\n' /var/cache/hyperfill
    else
        printf '%s\n' "${XDG_CACHE_HOME:-$HOME/.cache}/hyperfill"
    fi
}

# The TimescaleDB version of a source tarball or directory (its
# version.config), e.g. 2.28.3.
tsdb_source_version() { # tarball-or-dir
    local src="$1" text
    if [[ -d $src ]]; then
        [[ -f $src/version.config ]] || die "$src has no version.config: not a TimescaleDB source directory"
        text="$(cat "$src/version.config")"
    elif [[ -f $src ]]; then
        text="$(tar -xOf "$src" --wildcards --no-wildcards-match-slash '*/version.config' 2>/dev/null)" \
            || die "$src: cannot read */version.config from it (not a TimescaleDB release tarball?)"
    else
        die "TimescaleDB source $src does not exist (a release tarball or an unpacked source directory)"
    fi
    local ver
    ver="$(printf '%s\n' "$text" | sed -nE 's/^version *= *([0-9A-Za-z.+-]+).*/\1/p' | head -n1)"
    [[ -n $ver ]] || die "$src: no 'version = ...' line in version.config"
    printf '%s\n' "$ver"
}

# Where scripts/lib/licensed-install.sh puts TimescaleDB VERSION built for
# PostgreSQL MAJOR (the key of its cache).
licensed_install_dir() { # version major
    printf '%s/installs/ts%s-pg%s\n' "$(hyperfill_cache_dir)" "$1" "$2"
}
