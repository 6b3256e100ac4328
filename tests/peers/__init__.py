"""Test peers: programs and protocol endpoints that play the other side in tests.

:func:`require_binary` finds an executable a test needs. Under ``CI=true`` a missing real peer
fails the test; elsewhere it skips, and the reason names the Debian package to install.
"""

from __future__ import annotations

import os
import shutil

import pytest

from dgsm_integrations.lab.distro import Distro, sid_root

__all__ = ["DEBIAN_PACKAGES", "require_binary", "require_sid_root"]

#: Which Debian package provides which executable (for the skip/fail reason).
DEBIAN_PACKAGES: dict[str, str] = {
    "osmo-hlr": "osmo-hlr",
    "osmo-hlr-db-tool": "osmo-hlr",
    "osmo-mslookup-client": "osmo-mslookup-utils",
    "osmo-msc": "osmo-msc",
    "osmo-stp": "osmo-stp",
    "sipp": "sip-tester",
}


def require_binary(name: str) -> str:
    """Return the path of executable ``name``, or fail (``CI=true``) / skip the calling test."""
    path = shutil.which(name)
    if path is not None:
        return path
    package = DEBIAN_PACKAGES.get(name, name)
    reason = (f"{name!r} not found on PATH; install the Debian package {package!r} "
              f"(apt-get install {package})")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"real peer missing under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require_sid_root(program: str) -> Distro:
    """The Debian sid root (.ci/bootstrap.sh) with ``program`` in it, or fail (``CI=true``)
    / skip the calling test with what to do."""
    root = sid_root()
    if root is not None and root.which(program):
        return root
    reason = (f"no Debian sid root with {program} (made by .ci/bootstrap.sh when run as root: "
              "sudo bash .ci/test)")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"real peer missing under CI: {reason}", pytrace=False)
    pytest.skip(reason)
