# Shared set-up for the README's commands (sourced, not run).
# Makes .venv with the project installed, and, when run as root on Debian, installs the
# Debian packages the real-peer tests need. Says what to do when it cannot.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT_DIR=$PWD
DEB_PACKAGES="osmo-hlr osmo-mslookup-utils osmo-msc gcc libc6-dev nftables iproute2 util-linux python3-venv"

say() { printf '\033[1m[dgsm]\033[0m %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

install_debian_packages() {
    local missing=()
    command -v osmo-hlr >/dev/null || missing+=(osmo-hlr)
    command -v osmo-mslookup-client >/dev/null || missing+=(osmo-mslookup-utils)
    command -v osmo-msc >/dev/null || missing+=(osmo-msc)
    command -v gcc >/dev/null || missing+=(gcc)
    [ -e /usr/include/dlfcn.h ] || missing+=(libc6-dev)
    command -v nft >/dev/null || missing+=(nftables)
    command -v ip >/dev/null || missing+=(iproute2)
    command -v unshare >/dev/null || missing+=(util-linux)
    python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        say "installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null || die "apt-get update failed: check /etc/apt/sources.list and the network"
        apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
    else
        say "missing Debian packages: ${missing[*]}"
        say "install them with: sudo apt-get install ${missing[*]}"
        say "(tests that need a real OsmoHLR are skipped outside CI and fail under CI=true)"
        python3 -c 'import ensurepip, venv' 2>/dev/null || die "python3 venv support is missing: sudo apt-get install python3-venv"
    fi
}

make_venv() {
    local extras=$1
    command -v python3 >/dev/null || die "python3 not found: sudo apt-get install python3 python3-venv"
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "Python >= 3.11 is needed (found $(python3 -V 2>&1)); on Debian 12 apt-get install python3"
    if [ ! -x .venv/bin/python ]; then
        say "creating .venv"
        python3 -m venv .venv || die "python3 -m venv failed: sudo apt-get install python3-venv"
    fi
    say "installing dgsm-integrations into .venv (pip install -e .[$extras])"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]" \
        || die "pip install failed: check access to PyPI (pip config list) and retry"
}

# Run a command in a private network namespace: only lo, up, with multicast routed to it.
# No packet can leave the machine from inside.
in_private_netns() {
    local setup='ip link set lo up && ip route add 224.0.0.0/4 dev lo && exec "$@"'
    if unshare -rn true 2>/dev/null; then
        unshare -rn sh -c "$setup" sh "$@"
    elif [ "$(id -u)" -eq 0 ] && unshare -n true 2>/dev/null; then
        unshare -n sh -c "$setup" sh "$@"
    else
        die "cannot create a private network namespace (unshare -rn failed). Enable unprivileged user namespaces (sudo sysctl -w kernel.unprivileged_userns_clone=1, or on Ubuntu kernel.apparmor_restrict_unprivileged_userns=0) or run as root."
    fi
}
