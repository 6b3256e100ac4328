"""Which Debian's programs the lab runs: this host's, or a Debian sid root's (``chroot``).

Operators run current Osmocom releases (and Asterisk 22), which Debian 12 does not ship; Debian
sid does. ``.ci/bootstrap.sh`` makes a sid root with ``debootstrap`` and installs there
Asterisk, osmo-hlr, osmo-mslookup-utils, osmo-msc and Python with this project in a venv at
``/opt/dgsm-integrations`` (the operator's install path, docs/install.md). Its binaries do not
run outside it (a newer libc), so a :class:`Distro` wraps a command line to run inside:

    unshare -m  (a mount namespace of the program's own: nothing to unmount afterwards)
      mount --rbind /proc, /dev and the temporary directory into the root
      chroot ROOT command...

The temporary directory (``tempfile.gettempdir()``, usually ``/tmp``) is bound at the same path
inside, so configuration files, databases, logs and the SCTP shim the lab and the tests write
there have the same names for both sides. Network namespaces are untouched: wrap the result
with :meth:`.netns.Netns.argv` to run it in a village. Works inside ``unshare -rn`` (a user
namespace of our own may make mount namespaces) and as root.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .netns import LabError

__all__ = [
    "DEFAULT_SID_ROOT",
    "HOST",
    "Distro",
    "available",
    "default_osmocom",
    "osmocom_distro",
    "osmocom_distros",
    "sid_root",
]

#: Where .ci/bootstrap.sh makes the sid root (override with DGSM_SID_ROOT).
DEFAULT_SID_ROOT = "/var/cache/dgsm-integrations/sid-root"
#: The file bootstrap.sh writes last: the package set the root was made with.
STAMP = ".dgsm-root-packages"

_MOUNT_AND_CHROOT = (
    'root=$1; shift; tmp=$1; shift; '
    'mount --rbind /proc "$root/proc" && mount --rbind /dev "$root/dev" && '
    'mkdir -p "$root$tmp" && mount --rbind "$tmp" "$root$tmp" && '
    'exec chroot "$root" "$@"'
)


@dataclass(frozen=True)
class Distro:
    """A set of Debian programs: ``root=None`` is this host's own."""

    name: str
    root: Path | None = None

    def argv(self, command: Sequence[str]) -> list[str]:
        """``command`` wrapped to run with this distribution's programs and libraries."""
        if self.root is None:
            return list(command)
        tmp = os.path.realpath(tempfile.gettempdir())
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", _MOUNT_AND_CHROOT,
                "sh", str(self.root), tmp, *command]

    def check_visible(self, path: Path) -> None:
        """Raise LabError unless ``path`` has the same name inside the root as outside (it
        must be under the temporary directory, the one directory bound into the root)."""
        if self.root is None:
            return
        tmp = Path(os.path.realpath(tempfile.gettempdir()))
        real = Path(os.path.realpath(path))
        if real != tmp and tmp not in real.parents:
            raise LabError(f"{path} is not visible inside the {self.name} root {self.root}: "
                           f"only {tmp} is bound there; use a directory under it")

    def which(self, program: str) -> str | None:
        """The path of ``program`` as seen from inside (None if it is not installed)."""
        if self.root is None:
            return shutil.which(program)
        for d in ("usr/sbin", "usr/bin", "sbin", "bin"):
            if (self.root / d / program).exists():
                return f"/{d}/{program}"
        return None

    def need(self, program: str, package: str) -> str:
        path = self.which(program)
        if path is None:
            where = "" if self.root is None else f" in the {self.name} root {self.root}"
            fix = ("apt-get install " + package if self.root is None
                   else "run .ci/bootstrap.sh as root (bash .ci/test does)")
            raise LabError(f"{program} not found{where}: {fix}")
        return path

    @functools.cache  # noqa: B019 - a handful of frozen instances per process
    def version(self, package: str) -> str:
        """The Debian package's upstream version (``1.9.4`` of ``1.9.4+dfsg-1``), or ''."""
        if self.root is None:
            proc = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package],
                                  capture_output=True, text=True, check=False, timeout=10)
            text = proc.stdout if proc.returncode == 0 else ""
        else:
            text = _status_version(self.root / "var/lib/dpkg/status", package)
        text = text.split(":", 1)[-1]  # epoch
        for sep in ("+", "-", "~"):
            text = text.split(sep, 1)[0]
        return text

    @property
    def project_venv(self) -> str:
        """This checkout's venv inside the root, as .ci/bootstrap.sh makes it (pip-installed,
        not editable): ``/opt/dgsm-integrations-<key>``, the key from the checkout's path, so
        that two checkouts testing at once do not overwrite each other's install."""
        return f"/opt/dgsm-integrations-{_checkout_key()}"

    @property
    def project_source(self) -> str:
        """The copy of this checkout (with its tests) that was installed into the venv."""
        return f"/opt/dgsm-src-{_checkout_key()}"

    def label(self, package: str) -> str:
        """``osmo-hlr-1.9.4``: a test id that names the version under test."""
        return f"{package}-{self.version(package) or self.name}"


def _checkout_key() -> str:
    """The same key as .ci/bootstrap.sh's ``sid_checkout_key``: sha1 of the checkout path."""
    checkout = Path(__file__).resolve().parents[2]
    return hashlib.sha1(str(checkout).encode()).hexdigest()[:12]  # noqa: S324 - a name


def _status_version(status: Path, package: str) -> str:
    try:
        text = status.read_text(errors="replace")
    except OSError:
        return ""
    for stanza in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines()
                      if ": " in line and not line.startswith(" "))
        if fields.get("Package") == package and "installed" in fields.get("Status", ""):
            return fields.get("Version", "")
    return ""


HOST = Distro("host")


def sid_root() -> Distro | None:
    """The Debian sid root .ci/bootstrap.sh made, if it is complete (its stamp exists)."""
    root = Path(os.environ.get("DGSM_SID_ROOT") or DEFAULT_SID_ROOT)
    if not (root / STAMP).is_file():
        return None
    return Distro("sid", root)


def available() -> dict[str, Distro | None]:
    """Both generations the tests run against: ``host`` (Debian 12) and ``sid`` (or None)."""
    return {"host": HOST, "sid": sid_root()}


def osmocom_distros() -> list[Distro]:
    """Every generation present here that has osmo-hlr: the host's first."""
    return [d for d in available().values() if d is not None and d.which("osmo-hlr")]


def default_osmocom() -> Distro:
    """The lab's default Osmocom generation: sid's (current releases) when its root is here,
    else this host's."""
    sid = sid_root()
    return sid if sid is not None and sid.which("osmo-hlr") else HOST


def osmocom_distro(name: str) -> Distro:
    """``host`` or ``sid``, checked: a LabError says what to do when it is not here."""
    if name not in ("host", "sid"):
        raise LabError(f"unknown Osmocom generation {name!r}: host (this Debian's) or sid")
    distro = available()[name]
    if distro is None:
        root = os.environ.get("DGSM_SID_ROOT") or DEFAULT_SID_ROOT
        raise LabError(f"no Debian sid root at {root}: make it with `bash .ci/test` (or "
                       "source .ci/bootstrap.sh; provision_sid_root) as root, or set "
                       "DGSM_SID_ROOT, or use --osmocom host")
    distro.need("osmo-hlr", "osmo-hlr")
    return distro
