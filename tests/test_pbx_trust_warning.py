"""Issue 11, item 2 for calls: the PBX daemons say once, at start-up, when no trust is set."""

from __future__ import annotations

import asyncio
import logging

import pytest

from dgsm_integrations.asterisk.config import Config as AgiConfig
from dgsm_integrations.asterisk.fastagi import FastAgiServer
from dgsm_integrations.freeswitch.config import Config as FsConfig
from dgsm_integrations.freeswitch.server import EslServer

from .conftest import LO


@pytest.mark.parametrize("trusted", [None, ("127.0.0.0/8",)])
def test_fastagi_and_esl_warn_once_without_trust(caplog: pytest.LogCaptureFixture,
                                                 trusted: tuple[str, ...] | None) -> None:
    async def body() -> None:
        agi = FastAgiServer(AgiConfig(interface=LO, listen="127.0.0.1", listen_port=0,
                                      trusted=trusted))
        fs = EslServer(FsConfig(interface=LO, listen="127.0.0.1", listen_port=0,
                                trusted=trusted))
        await agi.start()
        await fs.start()
        await agi.close(grace=0.1)
        await fs.close(grace=0.1)
    with caplog.at_level(logging.INFO):
        asyncio.run(body())
    warned = [r for r in caplog.records
              if r.levelno == logging.WARNING and "no trusted networks" in r.getMessage()]
    if trusted is None:
        assert sorted(r.name for r in warned) == sorted({r.name for r in warned}) and \
            len(warned) == 2, [r.getMessage() for r in warned]
        assert all("set trusted = " in r.getMessage() for r in warned)
    else:
        assert warned == []
