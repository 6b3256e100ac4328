"""Store-and-forward: durable accept, retries, no duplicates, and survival of kill -9."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dgsm_integrations.esme.pdu import Status
from dgsm_integrations.esme.store import Store
from dgsm_integrations.lab.smsc import SmscPeer, mo_sms
from dgsm_integrations.mslookup import Responder

from .conftest import LO
from .test_esme import DOWN, LOCAL, PORT, SITE3, Village, rec, run

pytestmark = pytest.mark.slow  # real sockets and real time (or a real peer)


def test_queued_then_delivered_once_and_resend_not_duplicated(tmp_path: Path) -> None:
    async def body() -> None:
        store = Store(str(tmp_path / "q.db"), retry_min=0.1, retry_max=0.2)
        async with Village() as v, store.attach(v.esme):
            v.place("2002", (0, DOWN, 0))  # known, but its site is down
            sms = mo_sms("1001", "2002", b"keep me", msg_ref=77)
            assert await v.msc.deliver(sms) == Status.ROK  # accepted once stored
            assert v.esme.stats.queued == 1 and v.site3.submits == []
            v.place("2002", (0, SITE3, 0))  # the subscriber moved to a reachable site
            await v.site3.wait_for(lambda: len(v.site3.submits) == 1, timeout=10)
            assert v.site3.submits[0].get("short_message") == b"keep me"
            assert await v.msc.deliver(sms) == Status.ROK  # the phone resends: not again
            assert store.duplicates == 1
            assert (await store.counts()) == {"delivered": 1}
            # a direct delivery is recorded, so its resend is not delivered twice either
            sms2 = mo_sms("1001", "2002", b"direct", msg_ref=78)
            assert await v.msc.deliver(sms2) == Status.ROK
            await v.esme.wait_idle(5)
            assert await v.msc.deliver(sms2) == Status.ROK
            assert [s.get("short_message") for s in v.site3.submits] == [b"keep me", b"direct"]
    run(body())


def test_not_found_is_queued_and_expires(tmp_path: Path) -> None:
    async def body() -> None:
        store = Store(str(tmp_path / "q.db"), validity=0.3, retry_min=0.1, retry_max=0.1)
        async with Village() as v, store.attach(v.esme):
            assert await v.msc.deliver(mo_sms("1001", "4040", b"nobody")) == Status.ROK
            assert await v.msc.deliver(mo_sms("1001", "x", b"junk")) == Status.RINVDSTADR
            async with asyncio.timeout(5):
                while (await store.counts()).get("expired") != 1:
                    store.wake.set()
                    await asyncio.sleep(0.05)  # polling the DB state, bounded by the timeout
            assert store.retries >= 1
    run(body())


def test_resend_after_expiry_is_delivered_not_swallowed(tmp_path: Path) -> None:
    """The duplicate check must not answer ROK for an SMS whose stored copy expired (it
    would be accepted and never delivered); the in-memory check keeps keys for the validity
    only."""
    async def body() -> None:
        store = Store(str(tmp_path / "q.db"), validity=0.3, retry_min=0.1, retry_max=0.1)
        async with Village() as v, store.attach(v.esme):
            sms = mo_sms("1001", "2002", b"late", msg_ref=3)
            assert await v.msc.deliver(sms) == Status.ROK  # nobody knows 2002: stored
            async with asyncio.timeout(5):
                while (await store.counts()).get("expired") != 1:
                    store.wake.set()
                    await asyncio.sleep(0.05)  # polling the DB state, bounded by the timeout
            v.place("2002", (0, SITE3, 0))
            assert await v.msc.deliver(sms) == Status.ROK  # the phone tries again
            assert [s.get("short_message") for s in v.site3.submits] == [b"late"]
    run(body())


def _daemon(db: Path, metrics: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "dgsm_integrations.esme", "--src-host", LOCAL,
         "--mslookup-interface", LO, "--allow-loopback", "--mslookup-port", str(PORT),
         "--min-delay", "0.1", "--trusted", "127.0.0.0/8",
         "--queue", str(db), "--retry-min", "0.2", "--retry-max", "0.5",
         "--metrics-port", str(metrics), "--connect-timeout", "1", "--log-level", "WARNING"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def _metrics(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
    data = await reader.read()
    writer.close()
    return data.decode()


def test_kill_9_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "q.db"

    async def body() -> None:
        async with SmscPeer(LOCAL) as msc, SmscPeer(SITE3) as site3, \
                Responder({}, interface=LO, port=PORT, source="127.0.0.12") as hlr:
            first = _daemon(db, 42770)
            try:
                await msc.wait_for(lambda: msc.route() is not None, timeout=15)
                n = 20
                res = await asyncio.gather(*(msc.deliver(mo_sms("1001", "2002", b"s%d" % i,
                                                                msg_ref=i)) for i in range(n)))
                assert res == [Status.ROK] * n  # nobody knows 2002 yet: all stored
                assert "esme_dgsm_queued_total 20" in await _metrics(42770)
            finally:
                os.kill(first.pid, signal.SIGKILL)
                first.wait(10)
            hlr.set("smpp.sms.2002.msisdn", rec(f"0,{SITE3}:2775"))
            second = _daemon(db, 42771)
            try:
                await site3.wait_for(lambda: len(site3.submits) >= n, timeout=20)
                with contextlib.suppress(TimeoutError):  # give a duplicate the chance to show
                    await site3.wait_for(lambda: len(site3.submits) > n, timeout=1.0)
                refs = sorted(s.get("user_message_reference") for s in site3.submits)
                assert refs == list(range(n))
                assert "esme_dgsm_osmpp_bound 1" in await _metrics(42771)
            finally:
                second.send_signal(signal.SIGTERM)
                assert second.wait(10) == 0
    run(body(), limit=90)
