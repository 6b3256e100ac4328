"""Suite-wide safety net and helpers.

Every test that sends multicast must run inside a private network namespace (the README's
test command, ``bash .ci/test``, makes one). If this process can see any interface besides
loopback and the veth pairs tests make themselves, the suite refuses to run.

Tiers: ``bash .ci/test -m "not slow"`` is the fast tier (engine, codecs, routing, the
adapters' logic on fake clocks and in-memory transports; under 15 s). Everything that runs a
real peer (markers ``osmocom``, ``asterisk``, ``freeswitch``: marked ``slow`` here, once),
builds network namespaces or the lab, or waits on real time is ``slow``, marked in its
module. CI runs every tier.
"""

from __future__ import annotations

import socket

import pytest

from dgsm_integrations.lab.distro import Distro

from .peers import generations, require_generation

LO = "127.0.0.1"


def _foreign_interfaces() -> list[str]:
    return [name for _, name in socket.if_nameindex()
            if name != "lo" and not name.startswith("dgsmt")]


def pytest_configure(config: pytest.Config) -> None:
    foreign = _foreign_interfaces()
    if foreign:
        raise pytest.UsageError(
            "refusing to run: this network namespace has real interfaces "
            f"({', '.join(foreign)}). Run the suite with `bash .ci/test`, which creates a "
            "private network namespace so that no test traffic leaves this machine."
        )


_REAL_PEERS = ("osmocom", "asterisk", "freeswitch")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.get_closest_marker(name) for name in _REAL_PEERS):
            item.add_marker(pytest.mark.slow)


# -- the Osmocom matrix: fixtures that run a test once per generation (tests/peers) ------------

@pytest.fixture(params=generations("osmo-hlr"))
def hlr_distro(request: pytest.FixtureRequest) -> Distro:
    """Debian's osmo-hlr of each generation: ``[osmo-hlr-1.5.0]``, ``[osmo-hlr-1.9.4]``."""
    return require_generation(request.param, "osmo-hlr")


@pytest.fixture(params=generations("osmo-mslookup-utils"))
def mslookup_utils_distro(request: pytest.FixtureRequest) -> Distro:
    """osmo-mslookup-client of each generation."""
    return require_generation(request.param, "osmo-mslookup-utils")


@pytest.fixture(params=generations("osmo-msc"))
def msc_distro(request: pytest.FixtureRequest) -> Distro:
    """osmo-msc of each generation: ``[osmo-msc-1.9.0]``, ``[osmo-msc-1.16.0]``."""
    return require_generation(request.param, "osmo-msc")
