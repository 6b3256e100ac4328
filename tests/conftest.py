"""Suite-wide safety net and helpers.

Every test that sends multicast must run inside a private network namespace (the README's
test command, ``bash .ci/test``, makes one). If this process can see any interface besides
loopback and the veth pairs tests make themselves, the suite refuses to run.
"""

from __future__ import annotations

import socket

import pytest

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
