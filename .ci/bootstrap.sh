# Shared set-up for the README's commands (sourced, not run).
# Makes .venv with the project installed, and, when run as root on Debian, installs the
# Debian packages the real-peer tests need. Says what to do when it cannot.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT_DIR=$PWD
DEB_PACKAGES="osmo-hlr osmo-mslookup-utils osmo-msc osmo-stp gcc libc6-dev nftables iproute2 util-linux python3-venv debootstrap"

say() { printf '\033[1m[dgsm]\033[0m %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

install_debian_packages() {
    local missing=()
    command -v osmo-hlr >/dev/null || missing+=(osmo-hlr)
    command -v osmo-mslookup-client >/dev/null || missing+=(osmo-mslookup-utils)
    command -v osmo-msc >/dev/null || missing+=(osmo-msc)
    command -v osmo-stp >/dev/null || missing+=(osmo-stp)
    command -v gcc >/dev/null || missing+=(gcc)
    [ -e /usr/include/dlfcn.h ] || missing+=(libc6-dev)
    command -v nft >/dev/null || missing+=(nftables)
    command -v ip >/dev/null || missing+=(iproute2)
    command -v unshare >/dev/null || missing+=(util-linux)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
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
    # an editable install follows the code by itself: pip runs again only when what it
    # installs from changes (pyproject.toml, the extras, the interpreter)
    local stamp
    stamp="$extras $(.venv/bin/python -VV 2>&1 | head -1) $(sha1sum pyproject.toml | cut -c1-40)"
    if [ "$(cat .venv/.dgsm-installed 2>/dev/null)" = "$stamp" ] &&
        .venv/bin/python -I -c 'import importlib.metadata as m; m.distribution("dgsm-integrations")' 2>/dev/null; then
        return 0  # (and still installed: something may have uninstalled it since)
    fi
    say "installing dgsm-integrations into .venv (pip install -e .[$extras])"
    rm -f .venv/.dgsm-installed
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]" \
        || die "pip install failed: check access to PyPI (pip config list) and retry"
    printf '%s' "$stamp" >.venv/.dgsm-installed
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

# --- The Debian sid root: Asterisk 22 and current Osmocom releases -------------------------
# Debian 12 has no Asterisk and only old Osmocom releases (osmo-hlr 1.5.0, osmo-msc 1.9.0);
# sid has Asterisk 22, osmo-hlr 1.9.4 and osmo-msc 1.16. We debootstrap a minimal sid root
# once, install them there, and reuse it; it is made again when the package set below
# changes. Each checkout gets a venv of its own there with the project pip-installed
# (/opt/dgsm-integrations-<key>), for the AGI script Asterisk runs with sid's Python. The
# tests run the root's programs through chroot (dgsm_integrations/lab/distro.py).
SID_ROOT=${DGSM_SID_ROOT:-/var/cache/dgsm-integrations/sid-root}
# The stamp names the package set a root was first made with; packages added to the list
# later (SID_PACKAGES_ADDED) are installed into an existing root instead (seconds, not a new
# root: this keeps roots that CI machines cache, and checkouts of older commits that share
# the root, which still write and expect the v1 stamp)
SID_PACKAGES_V1="asterisk osmo-hlr osmo-mslookup-utils osmo-msc python3 python3-venv ca-certificates"
SID_PACKAGES_ADDED="osmo-stp"
SID_PACKAGES="$SID_PACKAGES_V1 $SID_PACKAGES_ADDED"
# the project's dependencies, and what tests/test_python_next.py runs its unit tests with
SID_PIP="dnslib>=0.9.23 smpplib>=2.2.4 setuptools>=64 pytest>=7.4 pytest-timeout>=2.1 hypothesis>=6.80"
SID_STAMP_FILE=.dgsm-root-packages
SID_STAMP="v1 | $SID_PACKAGES_V1"
SID_APT=(-o Acquire::Check-Valid-Until=false -o APT::Install-Recommends=false -qq)

debian_mirror() {
    # the Debian mirror this machine's apt sources already name (deb822 or one-line format)
    local uri
    uri=$(awk '/^URIs:/ && $2 ~ /debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $2 ~ /debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

make_sid_root() {
    local new="$SID_ROOT.new" mirror
    mirror=$(debian_mirror)
    say "making the Debian sid root in $SID_ROOT from $mirror (about a minute, 700 MB, once)"
    rm -rf "$new"
    mkdir -p "$(dirname "$SID_ROOT")"
    debootstrap --variant=minbase sid "$new" "$mirror" >"$new.log" 2>&1 \
        || { tail -5 "$new.log" >&2; die "debootstrap of Debian sid failed (log: $new.log)"; }
    printf 'Acquire::Check-Valid-Until "false";\n' >"$new/etc/apt/apt.conf.d/99dgsm"
    cp /etc/resolv.conf "$new/etc/resolv.conf" 2>/dev/null || true
    mount --bind /proc "$new/proc"
    local rc=0
    {
        chroot "$new" apt-get "${SID_APT[@]}" update &&
        DEBIAN_FRONTEND=noninteractive chroot "$new" apt-get "${SID_APT[@]}" -y install $SID_PACKAGES &&
        chroot "$new" apt-get clean &&
        # pip inside reads this machine's CA bundle at the same path (PIP_CERT, a proxy's
        # CA): copied after apt, whose ca-certificates would write its own over it
        cp /etc/ssl/certs/ca-certificates.crt "$new/etc/ssl/certs/ca-certificates.crt"
    } >>"$new.log" 2>&1 || rc=$?
    umount "$new/proc"
    [ "$rc" -eq 0 ] || { tail -5 "$new.log" >&2; die "installing packages into the sid root failed (log: $new.log)"; }
    printf '%s\n' "$SID_STAMP" >"$new/$SID_STAMP_FILE"
    rm -rf "$SID_ROOT" && mv "$new" "$SID_ROOT" && mv "$new.log" "$SID_ROOT.log"
}

add_sid_packages() {
    # the packages of $SID_PACKAGES that the root lacks (the ones added since it was made),
    # installed with its own apt
    local missing=() pkg rc=0
    for pkg in $SID_PACKAGES; do
        chroot "$SID_ROOT" dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "adding to the Debian sid root: ${missing[*]}"
        mount --bind /proc "$SID_ROOT/proc"
        {
            chroot "$SID_ROOT" apt-get "${SID_APT[@]}" update &&
            DEBIAN_FRONTEND=noninteractive chroot "$SID_ROOT" apt-get "${SID_APT[@]}" -y install "${missing[@]}" &&
            chroot "$SID_ROOT" apt-get clean &&
            cp /etc/ssl/certs/ca-certificates.crt "$SID_ROOT/etc/ssl/certs/ca-certificates.crt"
        } >>"$SID_ROOT.log" 2>&1 || rc=$?
        umount "$SID_ROOT/proc"
        if [ "$rc" -ne 0 ]; then
            tail -5 "$SID_ROOT.log" >&2
            say "installing ${missing[*]} into the sid root failed (log: $SID_ROOT.log)"
            return 1
        fi
    fi
}

sid_checkout_key() {
    # one venv in the root per checkout (two checkouts may test at once): the same key as
    # dgsm_integrations/lab/asterisk.py computes from the checkout's path
    printf '%s' "$ROOT_DIR" | sha1sum | cut -c1-12
}

install_project_in_sid_root() {
    # this checkout as an operator installs it: a plain (non-editable) pip install into a
    # venv of its own in the root, every run (the dependencies once, when the venv is made)
    local key venv src
    key=$(sid_checkout_key)
    venv="/opt/dgsm-integrations-$key"
    src="/opt/dgsm-src-$key"
    local files=(pyproject.toml README.md dgsm_integrations docs tests asterisk freeswitch esme)
    # the checkout's content, to skip the copy and the reinstall when nothing changed
    local stamp
    stamp=$(find "${files[@]}" -name __pycache__ -prune -o -type f -print0 | sort -z \
            | xargs -0 sha1sum | sha1sum | cut -c1-40)
    if [ -x "$SID_ROOT$venv/bin/python" ] && [ "$(cat "$SID_ROOT$src.stamp" 2>/dev/null)" = "$stamp" ]; then
        return 0
    fi
    rm -f "$SID_ROOT$src.stamp"
    rm -rf "$SID_ROOT$src" && mkdir -p "$SID_ROOT$src"
    cp -r "${files[@]}" "$SID_ROOT$src/"
    find "$SID_ROOT$src" -name __pycache__ -prune -exec rm -rf {} +
    if [ ! -x "$SID_ROOT$venv/bin/python" ]; then
        { chroot "$SID_ROOT" python3 -m venv "$venv" &&
          chroot "$SID_ROOT" "$venv/bin/python" -m pip install -q $SID_PIP; } >"$SID_ROOT$src.log" 2>&1 \
            || { rm -rf "$SID_ROOT$venv"; tail -5 "$SID_ROOT$src.log" >&2; die "making a venv in the sid root failed (log: $SID_ROOT$src.log)"; }
    fi
    chroot "$SID_ROOT" "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation \
        --force-reinstall --no-index "$src" >"$SID_ROOT$src.log" 2>&1 \
        || { tail -5 "$SID_ROOT$src.log" >&2; die "pip install of this checkout into the sid root failed (log: $SID_ROOT$src.log)"; }
    printf '%s' "$stamp" >"$SID_ROOT$src.stamp"
}

provision_sid_root() {
    if [ "$(id -u)" -ne 0 ]; then
        if [ -f "$SID_ROOT/$SID_STAMP_FILE" ]; then
            say "using the Debian sid root in $SID_ROOT (not root: the project installed there may be stale)"
        else
            say "no Debian sid root in $SID_ROOT: the Asterisk 22 and osmo-hlr 1.9.4 tests are skipped"
            say "(they fail under CI=true); make it by running this command once as root"
        fi
        return 0
    fi
    command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
    mkdir -p "$(dirname "$SID_ROOT")"
    exec 9>"$(dirname "$SID_ROOT")/.lock"
    flock -w 600 9 || die "another run holds $(dirname "$SID_ROOT")/.lock for 10 minutes"
    if [ "$(cat "$SID_ROOT/$SID_STAMP_FILE" 2>/dev/null)" != "$SID_STAMP" ]; then
        make_sid_root
    fi
    add_sid_packages || { make_sid_root; add_sid_packages || die "the sid root lacks packages (log: $SID_ROOT.log)"; }
    install_project_in_sid_root
    say "Debian sid root ready: asterisk $(chroot "$SID_ROOT" dpkg-query -W -f '${Version}' asterisk), osmo-hlr $(chroot "$SID_ROOT" dpkg-query -W -f '${Version}' osmo-hlr), osmo-msc $(chroot "$SID_ROOT" dpkg-query -W -f '${Version}' osmo-msc), osmo-stp $(chroot "$SID_ROOT" dpkg-query -W -f '${Version}' osmo-stp)"
    exec 9>&-
}
