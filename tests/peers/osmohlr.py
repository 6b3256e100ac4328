"""A real OsmoHLR as a test peer: the lab's :class:`~dgsm_integrations.lab.osmohlr.OsmoHlr`,
with a missing ``osmo-hlr`` failing the test under CI and skipping it elsewhere."""

from __future__ import annotations

from dgsm_integrations.lab import osmohlr as _lab

from . import require_binary

__all__ = ["DEFAULT_SERVICES", "OsmoHlr", "OsmoHlrError"]

DEFAULT_SERVICES = _lab.DEFAULT_SERVICES
OsmoHlrError = _lab.OsmoHlrError


class OsmoHlr(_lab.OsmoHlr):
    def start(self) -> None:
        if self.binary is None:
            self.binary = require_binary("osmo-hlr", self.distro)
        super().start()
