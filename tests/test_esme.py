"""The ESME against test SMSCs that behave like OsmoMSC, and mslookup responders, on loopback.

Village layout: the local OsmoMSC is 127.0.0.2:2775 (sends deliver_sm, and is a destination
too); other sites' SMSCs are 127.0.0.3 and 127.0.0.4; their OsmoHLRs answer mslookup from
127.0.0.12..14. Nothing listens on 127.0.0.5 ("down").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
import subprocess
import sys
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any, TypeVar

import pytest

from dgsm_integrations.esme.config import EsmeConfig
from dgsm_integrations.esme.errors import InvalidNumber, PduError
from dgsm_integrations.esme.forwarder import Esme
from dgsm_integrations.esme.message import normalise_msisdn, parts_of
from dgsm_integrations.esme.pdu import Status, build, decode
from dgsm_integrations.esme.trust import TrustPolicy
from dgsm_integrations.lab.smsc import SmscPeer, mo_sms, pdu
from dgsm_integrations.mslookup import AsyncResolver, Record, Responder

from .conftest import LO

PORT = 42760
T = TypeVar("T")
LOCAL, SITE3, SITE4, DOWN = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"


def run(coro: Awaitable[T], limit: float = 60) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(limit):
            return await coro
    return asyncio.run(bounded())


def rec(text: str) -> Record:
    return Record.parse(text)


class Village:
    """The local MSC, two remote SMSCs, three HLR responders, a resolver and the ESME."""

    def __init__(self, **cfg: Any) -> None:
        self.msc = SmscPeer(LOCAL)
        self.site3 = SmscPeer(SITE3)
        self.site4 = SmscPeer(SITE4)
        self.table: dict[str, Record] = {}
        self.hlr = [Responder({}, interface=LO, port=PORT, source=f"127.0.0.{12 + i}")
                    for i in range(3)]
        self.resolver = AsyncResolver(interface=LO, port=PORT, min_delay=0.1, allow_loopback=True)
        base: dict[str, Any] = dict(
            src_host=LOCAL, enquire_interval=30.0, backoff_min=0.05, backoff_max=0.2,
            connect_timeout=1.0, trust=TrustPolicy.build(["127.0.0.0/8", "192.0.2.0/24"]))
        base.update(cfg)
        self.esme = Esme(EsmeConfig(**base), self.resolver)
        self.task: asyncio.Task[None] | None = None

    def place(self, msisdn: str, *answers: tuple[int, str, int]) -> None:
        """Subscriber ``msisdn`` is known at HLR i with (hlr index, smsc host, age)."""
        for i, host, age in answers:
            self.hlr[i].set(f"smpp.sms.{msisdn}.msisdn", rec(f"{age},{host}:2775"))

    async def __aenter__(self) -> Village:
        for p in (self.msc, self.site3, self.site4):
            await p.__aenter__()
        for h in self.hlr:
            await h.open()
        await self.resolver.open()
        self.task = asyncio.get_running_loop().create_task(self.esme.run())
        await self.bound()
        return self

    async def bound(self, n: int = 1) -> None:
        await self.msc.wait_for(lambda: self.msc.route() is not None
                                and len([b for b in self.msc.binds if b[0] == "OSMPP"
                                         and b[2] == 0]) >= n)

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.resolver.close()
        for h in self.hlr:
            await h.close()
        for p in (self.msc, self.site3, self.site4):
            await p.close()


def field_of(peer: SmscPeer, i: int, name: str) -> Any:
    return peer.submits[i].get(name)


# -- sans-I/O ------------------------------------------------------------------------------

@pytest.mark.parametrize(("ton", "addr", "want"), [
    (1, b"491701234", "491701234"), (1, b"+1001", "1001"), (3, b"1001", "1001"),
    (0, b"1", "1"), (0, b"123456789012345", "123456789012345"),
    (1, b"1234567890123456", None), (1, b"", None), (1, b"12a4", None), (5, b"1001", None),
    (1, b"++1001", None), (3, b"+1001", None), (1, "\uff11\uff12".encode(), None),
    (None, b"1", None),
])
def test_normalise(ton: int | None, addr: bytes, want: str | None) -> None:
    if want is None:
        with pytest.raises(InvalidNumber):
            normalise_msisdn(ton, addr)
    else:
        assert normalise_msisdn(ton, addr) == want


def test_parts() -> None:
    assert parts_of(0x41, bytes([5, 0, 3, 0x2A, 3, 2]) + b"x", (None, None)) == (2, 3)
    assert parts_of(0x41, bytes([6, 8, 4, 1, 2, 255, 255]) + b"x", (None, None)) == (255, 255)
    assert parts_of(0x01, b"plain", (2, 4)) == (2, 4)
    assert parts_of(0x41, bytes([9]), (None, None)) == (1, 1)  # a lying UDH length


GOOD = build("deliver_sm", 5, **{**mo_sms("1001", "2002", b"hi"), "service_type": "CMT"})


@pytest.mark.parametrize("frame", [
    GOOD[:-7] + b"\x00" * 0,  # the TLV cut short
    GOOD[:20],  # body cut inside the mandatory part
    GOOD[:16] + b"CMTCMTCMT" + GOOD[20:],  # service_type without its NUL in 6 bytes
    GOOD[:-6] + b"\x02\x04\x00\x03\x00\x00\x00",  # user_message_reference of length 3
])
def test_decode_rejects(frame: bytes) -> None:
    fixed = len(frame).to_bytes(4, "big") + frame[4:]
    with pytest.raises(PduError):
        decode(fixed)


def test_decode_strips_unknown_tlvs() -> None:
    extra = GOOD + b"\x14\x01\x00\x02\x00\x05" + b"\x00\x1e\x00\x02a\x00"  # osmo_ta, receipted
    frame = len(extra).to_bytes(4, "big") + extra[4:]
    p = decode(frame)
    assert p.get("user_message_reference") == 0
    assert [t for t, _ in p.stripped] == [0x1401]
    assert p.get("receipted_message_id") == b"a"  # deliver_sm defines it


# -- the ESME over SMPP ------------------------------------------------------------------------

CODINGS = [
    ("gsm7", 0x01, b"Hello world", False),
    ("ucs2", 0x08, "Привет ☺".encode("utf-16-be"), False),
    ("8bit", 0x02, bytes(range(256))[:140], False),
    ("gsm7-udh", 0x01, bytes([5, 0, 3, 7, 1, 1]) + b"part one", True),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "dcs", "payload", "udh"), CODINGS,
                         ids=[c[0] for c in CODINGS])
def test_byte_exact_forward_to_youngest(name: str, dcs: int, payload: bytes,
                                        udh: bool) -> None:
    async def body() -> None:
        async with Village() as v:
            v.place("2002", (0, SITE3, 30), (1, SITE4, 5))
            sent = mo_sms("1001", "2002", payload, data_coding=dcs, udh=udh,
                          registered_delivery=1, protocol_id=0x3F, msg_ref=0xBEEF)
            assert await v.msc.deliver(sent) == Status.ROK
            assert v.site3.submits == [] and len(v.site4.submits) == 1
            got = v.site4.submits[0]
            assert got.system_id == "ISMPP"
            for key in ("data_coding", "esm_class", "protocol_id", "registered_delivery",
                        "source_addr_ton", "source_addr_npi", "user_message_reference",
                        "dest_addr_ton", "short_message"):
                want = sent[key].encode() if isinstance(sent[key], str) else sent[key]
                assert got.get(key) == want, key
            assert got.get("source_addr") == b"1001"
            assert got.get("destination_addr") == b"2002"
            assert got.get("dest_addr_npi") == 1
    run(body())


@pytest.mark.slow
def test_plus_number_and_network_specific() -> None:
    async def body() -> None:
        async with Village() as v:
            v.place("2002", (0, SITE3, 1))
            assert await v.msc.deliver(mo_sms("1001", "+2002", b"a", dest_ton=1)) == 0
            assert await v.msc.deliver(mo_sms("1001", "2002", b"b", dest_ton=3)) == 0
            assert [s.get("destination_addr") for s in v.site3.submits] == [b"2002", b"2002"]
            assert [s.get("dest_addr_ton") for s in v.site3.submits] == [1, 3]
    run(body())


@pytest.mark.slow
@pytest.mark.parametrize("dst", ["", "abc", "1234567890123456", "12 34", "+", "*100#"])
def test_junk_numbers_refused_before_lookup(dst: str) -> None:
    async def body() -> None:
        async with Village() as v:
            assert await v.msc.deliver(mo_sms("1001", dst, b"x")) == Status.RINVDSTADR
            alnum = mo_sms("1001", "2002", b"x", dest_ton=5)
            assert await v.msc.deliver(alnum) == Status.RINVDSTADR
            assert v.resolver.stats.lookups == 0 and v.esme.stats.invalid_number == 2
    run(body())


@pytest.mark.slow
def test_concatenated_three_parts_each_routed() -> None:
    async def body() -> None:
        async with Village() as v:
            v.place("2002", (2, SITE4, 0))
            parts = [mo_sms("1001", "2002", bytes([5, 0, 3, 0x42, 3, i]) + f"p{i}".encode(),
                            udh=True, msg_ref=i) for i in (1, 2, 3)]
            res = await asyncio.gather(*(v.msc.deliver(p) for p in parts))
            assert res == [0, 0, 0]
            got = sorted(s.get("short_message") for s in v.site4.submits)
            assert got == sorted(p["short_message"] for p in parts)
            assert all(s.get("esm_class") == 0x41 for s in v.site4.submits)
    run(body())


@pytest.mark.slow
def test_255_part_message_every_part_routed_byte_exact() -> None:
    """The longest concatenated SMS: 255 deliver_sm, all in flight at once, one bind."""
    async def body() -> None:
        async with Village() as v:
            v.place("2002", (0, SITE3, 40), (2, SITE4, 1))
            parts = [mo_sms("1001", "2002",
                            bytes([5, 0, 3, 0x99, 255, i]) + bytes([i % 128]) * 153,
                            udh=True, msg_ref=0x99) for i in range(1, 256)]
            res = await asyncio.gather(*(v.msc.deliver(p) for p in parts))
            assert res == [Status.ROK] * 255
            assert v.site3.submits == []
            got = sorted(bytes(s.get("short_message")) for s in v.site4.submits)
            assert got == sorted(p["short_message"] for p in parts)
            assert {s.get("esm_class") for s in v.site4.submits} == {0x41}
            assert len(v.site4.bound("ISMPP")) == 1
            assert v.esme.stats.delivered == 255
    run(body())


def test_smpplib_caps_message_payload_at_260_bytes_our_gate_does_not() -> None:
    """smpplib 2.2 declares message_payload max 260; SMPP 3.4 allows a whole long message."""
    import smpplib.command

    assert smpplib.command.DeliverSM.params["message_payload"].max == 260
    fields = mo_sms("1001", "2002", b"", data_coding=0x08)
    fields["message_payload"] = bytes(range(256)) * 4
    got = decode(pdu("deliver_sm", 5, **fields))
    assert got.get("message_payload") == bytes(range(256)) * 4


@pytest.mark.slow
def test_message_payload_tlv_passes_through() -> None:
    """A deliver_sm with message_payload (and no short_message) arrives with the same TLV."""
    async def body() -> None:
        async with Village() as v:
            v.place("2002", (1, SITE4, 3))
            payload = "long text in one TLV ☺ ".encode("utf-16-be") * 20  # 920 bytes
            sent = mo_sms("1001", "2002", b"", data_coding=0x08, msg_ref=7)
            sent["message_payload"] = payload
            assert await v.msc.deliver(sent) == Status.ROK
            sub = v.site4.submits[0]
            tlv = struct.pack(">HH", 0x0424, len(payload)) + payload
            assert tlv in sub.frame
            assert sub.get("short_message") in (b"", None)
            assert sub.get("data_coding") == 0x08
    run(body())


@pytest.mark.slow
def test_status_report_forwarded_as_0x08_to_original_sender_site() -> None:
    async def body() -> None:
        async with Village() as v:
            # the report goes to 1001, the original sender, who is now at site 3
            v.place("1001", (0, SITE3, 2))
            v.place("2002", (1, SITE4, 2))
            rep = mo_sms("2002", "1001", b"\x00status", report=True, msg_ref=9)
            assert await v.msc.deliver(rep) == 0
            assert v.site4.submits == []
            assert v.site3.submits[0].get("esm_class") == 0x08
            assert v.esme.stats.reports == 1
    run(body())


@pytest.mark.slow
def test_acceptance_after_the_budget_is_counted_and_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    """Without --queue, a destination that accepts after the budget made the phone hear
    RSYSERR: the SMS may arrive twice if the phone retries. It must not go unseen."""
    async def body() -> None:
        async with Village(budget=0.4) as v:
            v.place("2002", (1, SITE4, 2))
            v.site4.submit_delay = 0.8  # answers ROK, but after the budget
            assert await v.msc.deliver(mo_sms("1001", "2002", b"late", msg_ref=77)) == \
                Status.RSYSERR
            await v.site4.wait_for(lambda: len(v.site4.submits) == 1)
            while v.esme.stats.late_accepted < 1:  # set by the late answer's callback
                await asyncio.sleep(0.01)
            assert v.esme.stats.budget_expired == 1
            # a destination that refuses late is not counted
            v.site4.submit_status = Status.RSYSERR
            assert await v.msc.deliver(mo_sms("1001", "2002", b"no", msg_ref=78)) == \
                Status.RSYSERR
            while v.esme.stats.late_refused < 1:
                await asyncio.sleep(0.01)
            assert v.esme.stats.late_accepted == 1
    with caplog.at_level(logging.WARNING, logger="dgsm.esme"):
        run(body())
    late = [r.getMessage() for r in caplog.records if "after the phone" in r.getMessage()]
    assert len(late) == 1 and "ref=77" in late[0] and "to=2002" in late[0], late


@pytest.mark.slow
def test_local_recipient_goes_to_local_msc_over_ismpp() -> None:
    async def body() -> None:
        async with Village() as v:
            v.place("3003", (0, LOCAL, 0))
            assert await v.msc.deliver(mo_sms("1001", "3003", b"here")) == 0
            assert [s.system_id for s in v.msc.submits] == ["ISMPP"]
            assert len(v.msc.bound("OSMPP")) == 1
    run(body())


@pytest.mark.slow
def test_not_found_refused_configurable() -> None:
    async def body() -> None:
        async with Village() as v:
            assert await v.msc.deliver(mo_sms("1001", "7777", b"x")) == Status.RINVDSTADR
        async with Village(not_found_status=0x45) as v:
            assert await v.msc.deliver(mo_sms("1001", "7777", b"x")) == 0x45
    run(body())


@pytest.mark.slow
def test_destination_down_unreachable_refusing() -> None:
    async def body() -> None:
        async with Village() as v:
            v.place("1", (0, DOWN, 0))          # nothing listens there
            v.place("2", (0, "192.0.2.1", 0))   # no route in the test namespace
            v.place("3", (0, SITE3, 0))
            v.place("4", (0, SITE4, 0))
            v.site3.submit_status = Status.RMSGQFUL
            v.site4.refuse = True
            loop = asyncio.get_running_loop()
            for n in "1234":
                t0 = loop.time()
                st = await v.msc.deliver(mo_sms("1001", n, b"x"))
                assert st == Status.RSYSERR, n
                assert loop.time() - t0 < v.esme.config.budget
            v.site3.submit_status = 0
            assert await v.msc.deliver(mo_sms("1001", "3", b"again")) == 0
    run(body())


@pytest.mark.slow
def test_slow_destination_answered_in_budget_others_keep_flowing() -> None:
    async def body() -> None:
        async with Village() as v:  # default budget 4 s; the slow site answers after 6 s
            v.place("3", (0, SITE3, 0))
            v.place("4", (0, SITE4, 0))
            v.site3.submit_delay = 6.0
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            slow = asyncio.ensure_future(v.msc.deliver(mo_sms("1001", "3", b"slow")))
            fast = [await v.msc.deliver(mo_sms("1001", "4", b"f%d" % i)) for i in range(5)]
            assert fast == [0] * 5 and not slow.done()
            assert await slow == Status.RSYSERR
            assert 4.0 <= loop.time() - t0 < 4.5
            assert v.esme.stats.budget_expired == 1
    run(body())


@pytest.mark.slow
def test_many_in_flight_out_of_order_one_bind_per_destination() -> None:
    async def body() -> None:
        async with Village(window=64) as v:
            for i in range(100):
                v.place(str(5000 + i), (i % 3, (SITE3, SITE4, LOCAL)[i % 3], i % 7))
            v.site3.submit_delay = 0.3  # site 3 answers late, so answers go out of order
            msgs = [mo_sms("1001", str(5000 + i), b"m%d" % i, msg_ref=i) for i in range(100)]
            res = await asyncio.gather(*(v.msc.deliver(m) for m in msgs))
            assert res == [0] * 100
            got = [s.get("user_message_reference") for p in (v.site3, v.site4, v.msc)
                   for s in p.submits]
            assert sorted(got) == list(range(100))
            for p in (v.site3, v.site4, v.msc):
                assert [b for b in p.binds if b[0] == "ISMPP"] == [("ISMPP", "bind_transmitter",
                                                                   0)]
    run(body())


@pytest.mark.slow
def test_nothing_lost() -> None:
    async def body() -> None:
        rnd = random.Random(5)
        async with Village(window=32) as v:
            v.place("100", (0, SITE3, 0))
            v.place("200", (1, SITE4, 3))
            v.place("300", (2, DOWN, 1))
            v.site4.submit_status = Status.RSYSERR
            choices = ["100", "200", "300", "999", "bad!"]
            sent = [(i, rnd.choice(choices)) for i in range(300)]
            res = await asyncio.gather(*(v.msc.deliver(mo_sms("1001", d, b"n%d" % i,
                                                               msg_ref=i)) for i, d in sent))
            await v.esme.wait_idle(5)
            arrived: dict[int, int] = {}
            for p in (v.site3, v.site4, v.msc):
                for sub in p.submits:
                    ref = sub.get("user_message_reference")
                    arrived[ref] = arrived.get(ref, 0) + 1
            for (i, d), st in zip(sent, res, strict=True):
                assert st is not None and st >= 0, (i, d)  # every one answered
                if st == 0:
                    assert arrived.get(i) == 1 and d == "100"
                else:
                    assert i not in arrived
            s = v.esme.stats
            assert s.received == 300 == s.answered_ok + s.answered_error + s.answers_lost
            assert s.answered_ok == sum(1 for _, d in sent if d == "100")
    run(body())


@pytest.mark.slow
def test_malformed_pdus_answered_and_daemon_keeps_serving() -> None:
    async def body() -> None:
        async with Village() as v:
            v.place("2002", (0, SITE3, 0))
            conn = v.msc.route()
            assert conn is not None
            good = pdu("deliver_sm", 900, **mo_sms("1001", "2002", b"ok"))
            cut = good[:30]
            cut = len(cut).to_bytes(4, "big") + cut[4:]
            assert await v.msc.deliver_raw(conn, cut, 900) == Status.RINVMSGLEN
            unknown = (16).to_bytes(4, "big") + (0x77).to_bytes(4, "big") + bytes(4) + \
                (901).to_bytes(4, "big")
            assert await v.msc.deliver_raw(conn, unknown, 901) == Status.RINVCMDID
            assert await v.msc.deliver(mo_sms("1001", "2002", b"after")) == 0
            assert v.esme.stats.received == 1
            # a broken command_length loses the framing: the ESME closes and binds again
            conn.send((3).to_bytes(4, "big") + bytes(12))
            await v.bound(2)
            assert await v.msc.deliver(mo_sms("1001", "2002", b"rebound")) == 0
            assert v.msc.max_bound["OSMPP"] == 1
    run(body())


@pytest.mark.slow
def test_a_flood_of_malformed_pdus_logs_one_record_and_a_summary(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11 item 10: one warning per malformed PDU let a peer flood the log."""
    from dgsm_integrations._ratelimit import LogLimiter
    from dgsm_integrations.esme import connection

    limited = LogLimiter(connection.log)
    monkeypatch.setattr(connection, "_limited", limited, raising=False)

    async def body() -> None:
        async with Village() as v:
            conn = v.msc.route()
            assert conn is not None
            good = pdu("deliver_sm", 900, **mo_sms("1001", "2002", b"ok"))
            cut = good[:30]
            cut = len(cut).to_bytes(4, "big") + cut[4:]
            for seq in range(1000, 1500):
                frame = cut[:12] + seq.to_bytes(4, "big") + cut[16:]
                assert await v.msc.deliver_raw(conn, frame, seq) == Status.RINVMSGLEN
            limited.flush()

    with caplog.at_level("WARNING", logger="dgsm.esme.smpp"):
        run(body())
    messages = [r.getMessage() for r in caplog.records if r.name == "dgsm.esme.smpp"]
    assert sum("malformed request" in m for m in messages) == 2, messages[:5]  # 1 + summary
    assert '... and 499 more "malformed request"' in " ".join(messages)


@pytest.mark.slow
def test_smsc_drops_mid_stream_rebind_with_backoff() -> None:
    async def body() -> None:
        async with Village() as v:
            v.place("2002", (0, SITE3, 0))
            v.site3.submit_delay = 0.5
            inflight = [asyncio.ensure_future(v.msc.deliver(mo_sms("1001", "2002", b"%d" % i)))
                        for i in range(10)]
            await v.site3.wait_for(lambda: len(v.site3.frames_in) >= 11)  # bind + 10 submits
            v.msc.drop_all()
            assert await asyncio.gather(*inflight) == [-1] * 10
            await v.bound(2)
            await v.esme.wait_idle(5)
            s = v.esme.stats
            # answers written before the ESME saw the close count as answered; none vanish
            assert s.received == 10 == s.answered_ok + s.answers_lost and s.answers_lost >= 1
            assert len(v.site3.submits) == 10
            v.site3.submit_delay = 0
            assert await v.msc.deliver(mo_sms("1001", "2002", b"next")) == 0
            assert v.msc.max_bound["OSMPP"] == 1  # never two binds of ours at once
    run(body())


@pytest.mark.slow
def test_second_bind_appearing() -> None:
    async def body() -> None:
        async with Village() as v:
            v.place("2002", (0, SITE3, 0))
            reader, writer = await asyncio.open_connection(LOCAL, 2775)
            writer.write(pdu("bind_transceiver", 1, system_id="OSMPP", password="foo"))  # noqa: S106
            await reader.readexactly(16)
            await reader.read(100)
            assert len(v.msc.bound("OSMPP")) == 2  # OsmoMSC allows it; newest is the route
            writer.close()
            await v.msc.wait_for(lambda: len(v.msc.bound("OSMPP")) == 1)
            # OsmoMSC now has no route until the next bind; our bind is still the only one
            assert v.msc.route() is None and v.esme.osmpp.binds == 1
            assert v.esme.osmpp.conn is not None and not v.esme.osmpp.conn.closed
    run(body())


@pytest.mark.slow
def test_osmpp_bind_refused_reported_clearly() -> None:
    async def body() -> None:
        for cfg, want in ((dict(password="bar"), "wrong password"),  # noqa: S106
                          (dict(system_id="NOPE"), "unknown system-id")):
            v = Village(**cfg)
            for p in (v.msc,):
                await p.__aenter__()
            esme = v.esme
            task = asyncio.get_running_loop().create_task(esme.run())
            msc = v.msc
            await msc.wait_for(lambda: len(msc.binds) >= 2)  # noqa: B023 - it retries
            assert esme.osmpp.last_error is not None and want in esme.osmpp.last_error
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await v.msc.close()
    run(body())


@pytest.mark.slow
def test_enquire_link_and_ismpp_rebind() -> None:
    async def body() -> None:
        async with Village(enquire_interval=0.1) as v:
            v.place("2002", (0, SITE3, 0))
            assert await v.msc.deliver(mo_sms("1001", "2002", b"1")) == 0
            await v.msc.wait_for(lambda: any(c.enquire_links >= 2 for c in v.msc.conns))
            v.site3.drop_all()
            await v.site3.wait_for(lambda: not v.site3.conns)
            assert await v.msc.deliver(mo_sms("1001", "2002", b"2")) == 0
            assert [b[0] for b in v.site3.binds] == ["ISMPP", "ISMPP"]
    run(body())


def test_help_is_complete() -> None:
    out = subprocess.run([sys.executable, "-m", "dgsm_integrations.esme", "--help"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    for opt in ("--src-host", "--src-port", "--system-id", "--password", "--dst-system-id",
                "--budget", "--not-found-status", "--window", "--min-delay", "--queue",
                "--validity", "--metrics-port", "--mslookup-interface", "--trusted",
                "--trust-any-site", "--site-credentials", "--credentials-file",
                "--untrusted-status", "--retry-window"):
        assert opt in out


def test_config_is_frozen() -> None:
    cfg = EsmeConfig()
    assert (cfg.system_id, cfg.password, cfg.src_port, cfg.budget) == ("OSMPP", "foo", 2775, 4.0)
    assert replace(cfg, budget=1.0).budget == 1.0

