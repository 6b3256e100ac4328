"""Test peers: programs and protocol endpoints that play the other side in tests.

:func:`require_binary` finds an executable a test needs, on this host or inside a Debian
root (:class:`~dgsm_integrations.lab.distro.Distro`). Under ``CI=true`` a missing real peer
fails the test; elsewhere it skips, and the reason names what to install.

The Osmocom matrix: every test against a real osmo-hlr, osmo-mslookup-client or osmo-msc runs
once per Osmocom generation, Debian 12's (``host``: osmo-hlr 1.5.0, osmo-msc 1.9.0) and
Debian sid's (``sid``: the root ``.ci/bootstrap.sh`` makes; osmo-hlr 1.9.4, osmo-msc 1.16.0).
:func:`generations` gives the parameters (ids name the versions, ``[osmo-hlr-1.9.4]``; marker
``osmocom``), :func:`require_generation` the :class:`Distro` to run them with. A generation
that is missing fails under ``CI=true`` and skips elsewhere, like any real peer.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest
from _pytest.mark.structures import ParameterSet

from dgsm_integrations.lab.distro import DEFAULT_SID_ROOT, HOST, Distro, available, sid_root

__all__ = [
    "AGE_GAP",
    "DEBIAN_PACKAGES",
    "GENERATIONS",
    "generations",
    "missing_peer",
    "require_binary",
    "require_generation",
    "require_sid_root",
]

#: Which Debian package provides which executable (for the skip/fail reason).
DEBIAN_PACKAGES: dict[str, str] = {
    "osmo-hlr": "osmo-hlr",
    "osmo-hlr-db-tool": "osmo-hlr",
    "osmo-mslookup-client": "osmo-mslookup-utils",
    "osmo-msc": "osmo-msc",
    "osmo-stp": "osmo-stp",
    "sipp": "sip-tester",
}
#: The program each Osmocom package under test is checked by.
_PROGRAM = {"osmo-hlr": "osmo-hlr", "osmo-mslookup-utils": "osmo-mslookup-client",
            "osmo-msc": "osmo-msc", "osmo-stp": "osmo-stp"}
#: The Osmocom generations every real-peer test runs against: Debian 12's, Debian sid's.
GENERATIONS = ("host", "sid")
#: Seconds between two Location Updatings whose records must not tie. OsmoHLR stores the LU
#: time in whole wall-clock seconds and counts the age when a query reaches it, so two
#: records 1.1 s apart have ages 1 apart counted at one moment, but equal if the younger
#: site counts after a new second began that the older one counted before (its query came
#: later, its earlier copies were lost, or it was busy); on a tie the first answer wins,
#: and that may be the older site's. More than 2 s apart, a tie takes two new seconds
#: between the two sites' answers, longer than these tests' lookups last.
AGE_GAP = 2.1


def missing_peer(reason: str) -> NoReturn:
    """Fail the test under ``CI=true`` (a real peer must be there), skip it elsewhere."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"real peer missing under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require_binary(name: str, distro: Distro = HOST) -> str:
    """The path of executable ``name`` (as seen inside ``distro``), or fail/skip the test."""
    path = shutil.which(name) if distro.root is None else distro.which(name)
    if path is not None:
        return path
    package = DEBIAN_PACKAGES.get(name, name)
    if distro.root is None:
        missing_peer(f"{name!r} not found on PATH; install the Debian package {package!r} "
                     f"(apt-get install {package})")
    missing_peer(f"{name!r} not found in the {distro.name} root {distro.root}: run "
                 "bash .ci/test as root once (.ci/bootstrap.sh installs it there)")


def _label(generation: str, package: str) -> str:
    distro = available().get(generation)
    return distro.label(package) if distro is not None else f"{package}-{generation}"


def generations(*packages: str) -> list[ParameterSet]:
    """One parameter per Osmocom generation (its name), marked ``osmocom``, with an id that
    names the version of each package under test: ``osmo-hlr-1.9.4+osmo-msc-1.16.0``."""
    return [pytest.param(g, id="+".join(_label(g, p) for p in packages),
                         marks=pytest.mark.osmocom) for g in GENERATIONS]


def require_generation(generation: str, *packages: str) -> Distro:
    """The :class:`Distro` of ``generation`` with ``packages`` installed, or fail/skip."""
    distro = available().get(generation)
    if distro is None:
        root = os.environ.get("DGSM_SID_ROOT") or DEFAULT_SID_ROOT
        missing_peer(f"no Debian {generation} root at {root} (the osmo-hlr 1.9.4 / osmo-msc "
                     "1.16 generation): run bash .ci/test as root once, it makes the root")
    for package in packages:
        require_binary(_PROGRAM.get(package, package), distro)
    return distro


def require_sid_root(program: str) -> Distro:
    """The Debian sid root (.ci/bootstrap.sh) with ``program`` in it, or fail (``CI=true``)
    / skip the calling test with what to do."""
    root = sid_root()
    if root is not None and root.which(program):
        return root
    missing_peer(f"no Debian sid root with {program} (made by .ci/bootstrap.sh when run as "
                 "root: sudo bash .ci/test)")
