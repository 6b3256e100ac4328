"""The ESME against a real osmo-msc (Debian's package, started with the SCTP shim).

The real osmo-msc is the destination site's SMSC: the ESME binds ISMPP to it and forwards
with submit_sm; the test reads what osmo-msc stored in its SMS database. The deliver_sm side
(an MO SMS from a phone) cannot be produced without a radio network, so the local OsmoMSC
that sends deliver_sm is the test SMSC of ``tests/test_esme.py``, which sends them as
osmo-msc does. The ESME's OSMPP bind, wrong credentials and the bind after a restart are
checked against the real osmo-msc as well.

Layout: real osmo-msc SMPP on 127.0.0.1:42790; the test SMSC (local MSC) on 127.0.0.2:2775;
OsmoHLR stand-ins answer mslookup on port 42800 from 127.0.0.12.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dgsm_integrations.esme.app import Esme, EsmeConfig
from dgsm_integrations.esme.pdu import Status
from dgsm_integrations.lab.smsc import SmscPeer, mo_sms
from dgsm_integrations.mslookup import AsyncResolver, Record, Responder

from .conftest import LO
from .peers.osmomsc import OsmoMsc, unpack_septets

MSC_PORT = 42790
MDNS_PORT = 42800
LOCAL = "127.0.0.2"
T = TypeVar("T")


def run(coro: Awaitable[T], limit: float = 60) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, limit)
    return asyncio.run(bounded())


@pytest.fixture
def msc(tmp_path: Path) -> Any:
    with OsmoMsc(tmp_path / "msc", MSC_PORT) as real:
        yield real


@contextlib.asynccontextmanager
async def village(**cfg: Any) -> AsyncIterator[tuple[SmscPeer, Responder, Esme]]:
    """Test SMSC as the local MSC, one HLR stand-in, a resolver and the ESME."""
    local = SmscPeer(LOCAL)
    hlr = Responder({}, interface=LO, port=MDNS_PORT, source="127.0.0.12")
    resolver = AsyncResolver(interface=LO, port=MDNS_PORT, min_delay=0.1,
                             allow_loopback=True)
    base: dict[str, Any] = dict(src_host=LOCAL, backoff_min=0.05, backoff_max=0.2,
                                connect_timeout=1.0)
    base.update(cfg)
    esme = Esme(EsmeConfig(**base), resolver)
    async with local:
        await hlr.open()
        await resolver.open()
        task = asyncio.get_running_loop().create_task(esme.run())
        try:
            await local.wait_for(lambda: local.route() is not None)
            yield local, hlr, esme
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await resolver.close()
            await hlr.close()


CODINGS = [
    # name, data_coding, payload, udh
    ("gsm7", 0x01, bytes([0x48, 0x65, 0x6C, 0x6C, 0x6F, 0x00, 0x11, 0x7F]), False),
    ("ucs2", 0x08, "Привет ☺".encode("utf-16-be"), False),
    ("8bit-udh", 0x02, bytes([5, 0, 3, 0x42, 2, 1]) + bytes(range(200, 256)), True),
]


@pytest.mark.parametrize(("name", "dcs", "payload", "udh"), CODINGS,
                         ids=[c[0] for c in CODINGS])
def test_forwarded_sms_is_stored_by_real_osmo_msc_byte_exact(
        msc: OsmoMsc, name: str, dcs: int, payload: bytes, udh: bool) -> None:
    async def body() -> None:
        async with village() as (local, hlr, esme):
            hlr.set("smpp.sms.2002.msisdn", Record.parse(f"3,127.0.0.1:{MSC_PORT}"))
            sent = mo_sms("1001", "2002", payload, data_coding=dcs, udh=udh,
                          registered_delivery=1, protocol_id=0x00, msg_ref=0x2A)
            status = await local.deliver(sent)
            assert status == Status.ROK, (status, msc.log_tail())
            link = esme.pool.links[next(iter(esme.pool.links))]
            assert link.binds == 1 and link.cfg.system_id == "ISMPP"
        rows = msc.stored_sms()
        assert len(rows) == 1, rows
        row = rows[0]
        assert row["src_addr"] == "1001" and row["dest_addr"] == "2002"
        if dcs == 0x01:  # GSM 7-bit: the SMPP side carries one septet per byte, osmo-msc
            # stores them packed (GSM 03.38): unpacked they must be exactly what was sent
            assert unpack_septets(row["user_data"], len(payload)) == payload
        else:
            assert row["user_data"] == payload
        assert row["ud_hdr_ind"] == (1 if udh else 0)
        assert row["protocol_id"] == 0x00
        assert row["status_rep_req"] == 1
        assert row["msg_ref"] == 0x2A
        want_dcs = {0x01: 0x00, 0x08: 0x08, 0x02: 0x04}[dcs]  # SMPP coding -> GSM 03.38 DCS
        assert row["data_coding_scheme"] == want_dcs, row
    run(body())


def test_coding_osmo_msc_does_not_know_is_refused_not_lost(msc: OsmoMsc) -> None:
    """osmo-msc refuses data_coding 0x06 at once; the phone is told RSYSERR, nothing stored."""
    async def body() -> None:
        async with village() as (local, hlr, esme):
            hlr.set("smpp.sms.2002.msisdn", Record.parse(f"3,127.0.0.1:{MSC_PORT}"))
            status = await local.deliver(mo_sms("1001", "2002", b"x", data_coding=0x06))
            assert status == Status.RSYSERR
            assert esme.stats.destination_refused == 1
            # the ESME keeps serving: the next SMS goes through
            assert await local.deliver(mo_sms("1001", "2002", b"ok")) == Status.ROK
    run(body())
    assert [r["dest_addr"] for r in msc.stored_sms()] == ["2002"]


def test_esme_binds_osmpp_to_real_osmo_msc_and_rebinds_after_restart(
        msc: OsmoMsc, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        resolver = AsyncResolver(interface=LO, port=MDNS_PORT, min_delay=0.1,
                             allow_loopback=True)
        esme = Esme(EsmeConfig(src_host="127.0.0.1", src_port=MSC_PORT, backoff_min=0.05,
                               backoff_max=0.2, connect_timeout=1.0), resolver)
        await resolver.open()
        task = asyncio.get_running_loop().create_task(esme.run())
        try:
            await asyncio.wait_for(esme.osmpp.bound.wait(), 10)
            assert esme.osmpp.binds == 1
            await asyncio.to_thread(msc.stop)
            await asyncio.to_thread(msc.start)  # a restart: same port, a new process
            while esme.osmpp.binds < 2:  # bounded by run()'s limit
                await asyncio.sleep(0.02)  # polls a counter that has no event of its own
            await asyncio.wait_for(esme.osmpp.bound.wait(), 10)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await resolver.close()
    with caplog.at_level(logging.INFO, logger="dgsm.esme"):
        run(body())
    assert "lost the bind to OsmoMSC 127.0.0.1:42790" in caplog.text


@pytest.mark.parametrize(("system_id", "password", "status", "words"), [
    ("OSMPP", "wrong", Status.RINVPASWD, "wrong password"),
    ("NOBODY", "foo", Status.RINVSYSID, "unknown system-id"),
])
def test_refused_bind_is_reported_and_retried(
        msc: OsmoMsc, caplog: pytest.LogCaptureFixture, system_id: str, password: str,
        status: int, words: str) -> None:
    async def body() -> None:
        resolver = AsyncResolver(interface=LO, port=MDNS_PORT, min_delay=0.1,
                             allow_loopback=True)
        esme = Esme(EsmeConfig(src_host="127.0.0.1", src_port=MSC_PORT, system_id=system_id,
                               password=password, backoff_min=0.05, backoff_max=0.1,
                               connect_timeout=1.0), resolver)
        await resolver.open()
        task = asyncio.get_running_loop().create_task(esme.run())
        try:
            while esme.osmpp.bind_failures < 3:  # retried with back-off, never gives up
                await asyncio.sleep(0.02)
            assert not task.done()
            assert not esme.osmpp.bound.is_set()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await resolver.close()
    with caplog.at_level(logging.ERROR, logger="dgsm.esme"):
        run(body(), 30)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors, caplog.text
    assert all(f"OsmoMSC 127.0.0.1:{MSC_PORT}" in e or "osmpp" in e for e in errors), errors
    assert any(Status.describe(status) in e and words in e for e in errors), errors
    assert msc.running
