"""A real osmo-msc as a test peer: the lab's :class:`~dgsm_integrations.lab.osmomsc.OsmoMsc`,
with a missing ``osmo-msc`` or ``gcc`` failing the test under CI and skipping it elsewhere."""

from __future__ import annotations

from dgsm_integrations.lab import osmomsc as _lab

from . import require_binary

__all__ = ["OsmoMsc", "OsmoMscError", "unpack_septets"]

OsmoMscError = _lab.OsmoMscError
unpack_septets = _lab.unpack_septets


class OsmoMsc(_lab.OsmoMsc):
    def start(self) -> None:
        require_binary("gcc")
        if self.binary is None:
            self.binary = require_binary("osmo-msc", self.distro)
        super().start()
