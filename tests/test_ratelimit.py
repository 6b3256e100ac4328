"""Per-packet log records are rate-limited: a summary per interval (issue 11, item 10)."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

import pytest

from dgsm_integrations._ratelimit import LogLimiter
from dgsm_integrations.mslookup import AsyncResolver, Outcome, Query, Record, Responder

from .conftest import LO

PORT = 42631


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_record_per_interval_then_a_summary(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("dgsm.test.ratelimit")
    clock = Clock()
    limited = LogLimiter(logger, 10.0, clock=clock)
    with caplog.at_level(logging.DEBUG, logger=logger.name):
        logged = [limited.debug("junk", "dropped junk %d", i) for i in range(10_000)]
        assert logged[0] and not any(logged[1:])
        assert [r.getMessage() for r in caplog.records] == ["dropped junk 0"]
        limited.warning("other", "a different kind is not held back")
        clock.now += 10.0
        assert limited.debug("junk", "dropped junk again")
        messages = [r.getMessage() for r in caplog.records]
        assert messages[1:] == ["a different kind is not held back",
                                '... and 9999 more "junk" in the last 10.0 s',
                                "dropped junk again"]
        clock.now += 1
        limited.debug("junk", "held back")
        limited.flush()
        assert caplog.records[-1].getMessage() == '... and 1 more "junk" in the last 1.0 s'
        assert len(caplog.records) == 5


def test_nothing_is_counted_below_the_log_level(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("dgsm.test.ratelimit2")
    limited = LogLimiter(logger, 10.0, clock=Clock())
    with caplog.at_level(logging.INFO, logger=logger.name):
        for _ in range(100):
            limited.debug("junk", "dropped")
        limited.flush()
    assert caplog.records == []


def test_summary_comes_when_the_interval_ends_on_a_loop() -> None:
    logger = logging.getLogger("dgsm.test.ratelimit3")
    logger.setLevel(logging.DEBUG)
    records: list[logging.LogRecord] = []

    async def body() -> None:
        summary = asyncio.Event()

        class Catch(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                records.append(record)
                if record.getMessage().startswith("..."):
                    summary.set()

        handler = Catch()
        logger.addHandler(handler)
        try:
            limited = LogLimiter(logger, 0.05)
            for i in range(500):
                limited.debug("flood", "packet %d", i)
            await asyncio.wait_for(summary.wait(), 5)
        finally:
            logger.removeHandler(handler)

    asyncio.run(body())
    assert records[0].getMessage() == "packet 0"
    assert records[1].getMessage().startswith('... and 499 more "flood" in the last ')
    assert len(records) == 2


@pytest.mark.slow  # a real resolver under a real flood
def test_resolver_at_debug_under_a_flood_logs_a_few_records(
        caplog: pytest.LogCaptureFixture) -> None:
    """Regression: one debug record per dropped datagram (36k-67k under a flood)."""
    q = Query.parse("sip.voice.1001.msisdn")
    sent = 0

    def sender(source: str) -> socket.socket:
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.bind((source, 0))
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LO))
        tx.setblocking(False)
        return tx

    async def body() -> None:
        nonlocal sent
        # from 127.0.0.1: untrusted; from the trusted site: malformed (each one different,
        # so that none is a cached duplicate)
        senders = [sender("127.0.0.1"), sender("127.0.0.11")]
        async with Responder({str(q): Record.parse("3,10.0.0.2:5060")}, interface=LO,
                             port=PORT, source="127.0.0.11"), \
                AsyncResolver(interface=LO, port=PORT, min_delay=0.3,
                              trusted=["127.0.0.11/32", "10.0.0.0/8"]) as r:
            await r.open()
            deadline = asyncio.get_running_loop().time() + 20
            while r.stats.dropped_untrusted < 300 or r.stats.dropped_malformed < 300:
                assert asyncio.get_running_loop().time() < deadline, r.stats
                for tx in senders:
                    pkt = struct.pack("!HH", sent & 0xFFFF, 0x8400) + b"\x00" * 20
                    try:
                        tx.sendto(pkt, ("239.192.23.42", PORT))
                        sent += 1
                    except BlockingIOError:
                        pass
                await asyncio.sleep(0)
            res = await r.resolve(q)
            assert res.outcome is Outcome.FOUND and res.age == 3
        for tx in senders:
            tx.close()

    with caplog.at_level(logging.DEBUG, logger="dgsm.mslookup"):
        asyncio.run(asyncio.wait_for(body(), 30))
    drops = [r for r in caplog.records if "dropped" in r.getMessage()
             or r.getMessage().startswith("...")]
    assert sent >= 600
    assert len(drops) <= 4, [r.getMessage() for r in drops[:10]]  # first + summary per kind
