"""The ESME against a real osmo-msc (started with the SCTP shim), once per Osmocom generation:
``[osmo-msc-1.9.0]`` (Debian 12's) and ``[osmo-msc-1.16.0]`` (Debian sid's).

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
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dgsm_integrations.esme.config import EsmeConfig
from dgsm_integrations.esme.connection import SmppConnection
from dgsm_integrations.esme.forwarder import Esme
from dgsm_integrations.esme.pdu import Pdu, Status
from dgsm_integrations.esme.trust import TrustPolicy
from dgsm_integrations.lab.distro import Distro
from dgsm_integrations.lab.smsc import SmscPeer, mo_sms
from dgsm_integrations.mslookup import AsyncResolver, Record, Responder

from .conftest import LO
from .peers.osmomsc import OsmoMsc, unpack_septets

pytestmark = pytest.mark.slow  # real sockets and real time (or a real peer)

MSC_PORT = 42790
MDNS_PORT = 42800
LOCAL = "127.0.0.2"
T = TypeVar("T")


def run(coro: Awaitable[T], limit: float = 60) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, limit)
    return asyncio.run(bounded())


@pytest.fixture
def msc(tmp_path: Path, msc_distro: Distro) -> Any:
    with OsmoMsc(tmp_path / "msc", MSC_PORT, distro=msc_distro) as real:
        yield real


@contextlib.asynccontextmanager
async def village(**cfg: Any) -> AsyncIterator[tuple[SmscPeer, Responder, Esme]]:
    """Test SMSC as the local MSC, one HLR stand-in, a resolver and the ESME."""
    local = SmscPeer(LOCAL)
    hlr = Responder({}, interface=LO, port=MDNS_PORT, source="127.0.0.12")
    resolver = AsyncResolver(interface=LO, port=MDNS_PORT, min_delay=0.1,
                             allow_loopback=True)
    base: dict[str, Any] = dict(src_host=LOCAL, backoff_min=0.05, backoff_max=0.2,
                                connect_timeout=1.0, trust=TrustPolicy.build(["127.0.0.0/8"]))
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
                               backoff_max=0.2, connect_timeout=1.0,
                               trust=TrustPolicy.build(["127.0.0.0/8"])), resolver)
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
                               connect_timeout=1.0, trust=TrustPolicy.build(["127.0.0.0/8"])),
                    resolver)
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


def test_the_sctp_shim_binds_sgs_where_configured(msc: OsmoMsc) -> None:
    """The shim (built with this host's gcc) works in each generation's osmo-msc, whatever its
    glibc: SCTP sockets are TCP ones, and libsctp's bindx becomes a bind to the configured
    address (as a no-op, SGs listened on a random port)."""
    deadline = time.monotonic() + 5  # SGs starts after the SMPP port that start() awaits
    while True:
        try:
            socket.create_connection(("127.0.0.1", 29118), timeout=1).close()  # as TCP
            break
        except ConnectionRefusedError:
            assert time.monotonic() < deadline and msc.running, msc.log_tail()
            time.sleep(0.02)  # polls a port: osmo-msc signals nothing when SGs is up
    assert "SGs socket bound to r=NULL<->l=0.0.0.0:29118" in msc.log_text()
    assert msc.running


def test_osmo_msc_answers_the_esmes_enquire_link(
        msc: OsmoMsc, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ESME closes a link whose enquire_link goes unanswered: each generation's osmo-msc
    must answer them. Time passes on purpose: a dozen keepalive intervals are the test."""
    answered: list[int] = []
    real_request = SmppConnection.request

    async def counting(self: SmppConnection, command: str, timeout: float,
                       **fields: Any) -> Pdu:
        resp = await real_request(self, command, timeout, **fields)
        if command == "enquire_link":
            answered.append(resp.status)
        return resp
    monkeypatch.setattr(SmppConnection, "request", counting)

    async def body() -> None:
        resolver = AsyncResolver(interface=LO, port=MDNS_PORT, min_delay=0.1)
        esme = Esme(EsmeConfig(src_host="127.0.0.1", src_port=MSC_PORT, enquire_interval=0.05,
                               response_timeout=0.5, backoff_min=0.05, backoff_max=0.2,
                               connect_timeout=1.0), resolver)
        await resolver.open()
        task = asyncio.get_running_loop().create_task(esme.run())
        try:
            await asyncio.wait_for(esme.osmpp.bound.wait(), 10)
            await asyncio.sleep(0.6)  # 12 enquire_link intervals
            assert esme.osmpp.bound.is_set() and esme.osmpp.binds == 1
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await resolver.close()
    with caplog.at_level(logging.INFO, logger="dgsm.esme"):
        run(body())
    assert "enquire_link failed" not in caplog.text
    assert "lost the bind" not in caplog.text
    assert len(answered) >= 5 and set(answered) == {Status.ROK}, answered


# -- osmo-msc's SMPP PDU by PDU: the answers docs/lab.md records, the same in both generations --

def _pdu(command: int, seq: int, body: bytes = b"") -> bytes:
    return struct.pack(">IIII", 16 + len(body), command, 0, seq) + body


def _bind(system_id: str, password: str) -> bytes:  # bind_transceiver, interface version 3.4
    return _pdu(0x09, 1, system_id.encode() + b"\0" + password.encode() + b"\0\0\x34\0\0\0")


def _submit(seq: int, dest: str, data_coding: int = 0) -> bytes:
    body = (b"\0" + b"\x01\x011001\0" + b"\x01\x01" + dest.encode() + b"\0" + b"\0\0\0" + b"\0\0"
            + bytes([0, 0, data_coding, 0, 2]) + b"hi")
    return _pdu(0x04, seq, body)


def _read_pdu(sock: socket.socket) -> tuple[int, int, int, bytes]:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "osmo-msc closed the connection"
            data += chunk
        return data
    length, command, status, seq = struct.unpack(">IIII", exactly(16))
    return command, status, seq, exactly(length - 16)


def _ask(sock: socket.socket, pdu: bytes) -> tuple[int, int, int, bytes]:
    sock.sendall(pdu)
    return _read_pdu(sock)


def test_osmo_msc_smpp_answers_pdu_by_pdu(msc: OsmoMsc) -> None:
    def connect() -> socket.socket:
        return socket.create_connection(("127.0.0.1", MSC_PORT), timeout=5)
    for system_id, password, status in (("OSMPP", "wrong", 0x0E), ("NOBODY", "foo", 0x0F)):
        with connect() as s:
            assert _ask(s, _bind(system_id, password))[:3] == (0x80000009, status, 1)
    with connect() as s:
        assert _ask(s, _submit(2, "2002"))[:3] == (0x80000004, 0x04, 2)  # not bound yet
    with connect() as s:
        assert _ask(s, _bind("ISMPP", "foo")) == (0x80000009, 0, 1, b"\0")  # empty system_id
        assert _ask(s, _pdu(0x15, 3)) == (0x80000015, 0, 3, b"")  # enquire_link
        assert _ask(s, _submit(4, "2002")) == (0x80000004, 0, 4, b"msg_id_not_implemented\0")
        assert _ask(s, _submit(5, "2002", data_coding=0x06))[:3] == (0x80000004, 0xFF, 5)
        # an unknown command: generic_nack RINVCMDID, whose sequence_number is not ours but the
        # command_length of what we sent (20), in 1.9.0 and 1.16.0 alike
        assert _ask(s, _pdu(0x77, 6, b"abcd"))[:3] == (0x80000000, 0x03, 20)
        assert _ask(s, _bind("ISMPP", "foo"))[:3] == (0x80000009, 0x05, 1)  # RALYBND
        # never answered: query_sm, and a submit_sm to 21 digits; the next answer (osmo-msc
        # answers in order) is the enquire_link's
        s.sendall(_pdu(0x03, 7, b"1\0\x01\x011001\0"))
        s.sendall(_submit(8, "1" * 21))
        assert _ask(s, _pdu(0x15, 9)) == (0x80000015, 0, 9, b"")
    assert [r["dest_addr"] for r in msc.stored_sms()] == ["2002"]
