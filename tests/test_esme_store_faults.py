"""Issue 11, items 3, 4, 5 and 9: the queue's faults, reproduced for real.

- a locked file: another connection holds ``BEGIN EXCLUSIVE`` (what ``sqlite3 queue.db`` with
  an open write transaction, or a backup tool, does);
- a full disk: SQLite's ``PRAGMA max_page_count`` capped at the file's size, so the next
  page the queue needs fails with SQLITE_FULL ("database or disk is full"), as on a full disk;
- kill -9: a real ``esme_dgsm`` subprocess, a real SMPP peer, SIGKILL while it retries;
- a corrupt file: garbage where the queue should be, before the daemon starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dgsm_integrations.esme.pdu import Status
from dgsm_integrations.esme.store import Store
from dgsm_integrations.lab.smsc import SmscPeer, mo_sms
from dgsm_integrations.mslookup import Responder

from .conftest import LO
from .test_esme import DOWN, LOCAL, PORT, SITE3, Village, rec, run
from .test_esme_store import _daemon, _metrics

pytestmark = pytest.mark.slow  # real sockets and real time (or a real peer)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[sqlite3.Connection]:
    """Another process's write transaction on the queue file, held until the block ends.

    Taking it waits (bounded) for a write of the store's own that may be under way: the
    store writes at any moment (its retry loop), and a lock not taken is no test."""
    other = sqlite3.connect(path, isolation_level=None, timeout=5)
    other.execute("BEGIN EXCLUSIVE")
    other.execute("UPDATE sms SET attempts=attempts WHERE 0")
    try:
        yield other
    finally:
        other.execute("ROLLBACK")
        other.close()


async def until(predicate: Any, timeout: float) -> bool:
    """Poll a condition without an event to wait on (a counter, a file), bounded."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.05)
            return True
    return False


# -- item 3: the retry loop survives every store error -------------------------------------

def test_retry_loop_survives_a_locked_database(tmp_path: Path) -> None:
    """Before: the first failed store call (after SQLite's 5 s busy wait) ended the retry
    loop for good, so the stored SMS was never delivered."""
    db = tmp_path / "q.db"

    async def body() -> None:
        store = Store(str(db), retry_min=0.1, retry_max=0.2)
        async with Village() as v, store.attach(v.esme):
            v.place("2002", (0, DOWN, 0))
            assert await v.msc.deliver(mo_sms("1001", "2002", b"kept", msg_ref=5)) == 0
            with locked(db):
                # held until the loop has failed twice (or 6 s: longer than the old 5 s wait)
                await until(lambda: getattr(store, "errors", 0) >= 2, timeout=6.0)
                v.place("2002", (0, SITE3, 0))
            await v.site3.wait_for(lambda: len(v.site3.submits) == 1, timeout=15)
            assert v.site3.submits[0].get("short_message") == b"kept"
            assert store.errors >= 2
            assert await until(lambda: store.delivered == 1, timeout=5)
            assert (await store.counts()) == {"delivered": 1}
    run(body())


def test_full_disk_refuses_only_what_needs_the_queue(tmp_path: Path) -> None:
    """With the disk full, an SMS that must be stored is answered RSYSERR (never ROK and
    then lost); one that can be delivered directly still is; once there is room again,
    storing works, and everything that was answered ROK is delivered exactly once."""
    async def body() -> None:
        store = Store(str(tmp_path / "q.db"), retry_min=0.1, retry_max=0.2)
        async with Village() as v, store.attach(v.esme):
            v.place("2002", (0, DOWN, 0))
            v.place("3003", (1, SITE3, 0))

            def cap(db: sqlite3.Connection, pages: int | None) -> None:
                now = db.execute("PRAGMA page_count").fetchone()[0]
                db.execute(f"PRAGMA max_page_count={now if pages is None else pages}")

            await store._write(cap, None)
            answers = []
            for i in range(60):  # fill the pages the file has; then it is full
                st = await v.msc.deliver(mo_sms("1001", "2002", b"q%d" % i + b"x" * 120,
                                                msg_ref=i))
                answers.append(st)
                if st != Status.ROK:
                    break
            assert answers[-1] == Status.RSYSERR and answers.count(Status.ROK) >= 1
            accepted = answers.count(Status.ROK)
            assert v.esme.stats.store_errors >= 1
            assert await v.msc.deliver(mo_sms("1001", "3003", b"direct")) == Status.ROK
            await store._write(cap, 1 << 30)  # room again
            assert await v.msc.deliver(mo_sms("1001", "2002", b"later", msg_ref=99)) == 0
            v.place("2002", (0, SITE3, 0))
            await v.site3.wait_for(lambda: len(v.site3.submits) == accepted + 2, timeout=15)
            got = sorted(s.get("user_message_reference") for s in v.site3.submits
                         if s.get("destination_addr") == b"2002")
            assert got == [*range(accepted), 99]
    run(body())


# -- item 5: a locked store never holds up what can be delivered -----------------------------

def test_locked_database_does_not_stop_deliverable_sms(tmp_path: Path) -> None:
    """Before: each store call waited SQLite's 5 s busy timeout on the one store thread
    before any routing, so deliverable SMS were answered after OsmoMSC's 5 s (None here)."""
    db = tmp_path / "q.db"

    async def body() -> None:
        store = Store(str(db), retry_min=0.1, retry_max=0.2)
        async with Village() as v, store.attach(v.esme):
            v.place("3003", (1, SITE3, 0))
            v.place("2002", (0, DOWN, 0))
            with locked(db):
                sent = [mo_sms("1001", "3003", b"m%d" % i, msg_ref=i) for i in range(5)]
                for sms in sent:  # one after the other, as a phone sends them
                    assert await v.msc.deliver(sms, timeout=5.0) == Status.ROK
                # a resend of one already delivered: answered, not delivered again
                assert await v.msc.deliver(sent[0], timeout=5.0) == Status.ROK
                # one that needs the (locked) queue: refused in time, not accepted
                budget = v.esme.config.budget
                assert await v.msc.deliver(mo_sms("1001", "2002", b"q"),
                                           timeout=budget + 0.5) == Status.RSYSERR
            refs = [s.get("user_message_reference") for s in v.site3.submits]
            assert refs == [0, 1, 2, 3, 4]
    run(body(), limit=90)


# -- item 9: a corrupt queue file at start-up --------------------------------------------

def test_corrupt_queue_file_is_moved_aside_and_sms_keep_flowing(tmp_path: Path) -> None:
    """Before: the daemon exited at start (with Restart=always: a loop, no SMS routed)."""
    db = tmp_path / "q.db"
    junk = b"this was a queue before the SD card failed\n" * 200
    db.write_bytes(junk)

    async def body() -> None:
        async with SmscPeer(LOCAL) as msc, SmscPeer(SITE3) as site3, \
                Responder({"smpp.sms.3003.msisdn": rec(f"0,{SITE3}:2775")}, interface=LO,
                          port=PORT, source="127.0.0.12"):
            proc = _daemon(db, 42773)
            try:
                await msc.wait_for(lambda: msc.route() is not None, timeout=15)
                assert await msc.deliver(mo_sms("1001", "3003", b"direct")) == Status.ROK
                # the new, empty queue works: an unknown recipient is stored
                assert await msc.deliver(mo_sms("1001", "4040", b"stored")) == Status.ROK
                assert "esme_dgsm_queued_total 1" in await _metrics(42773)
            finally:
                proc.send_signal(signal.SIGTERM)
                _, err = await asyncio.get_running_loop().run_in_executor(
                    None, proc.communicate, None)
            assert proc.returncode == 0
            aside = list(tmp_path.glob("q.db.corrupt-*"))
            assert [p.read_bytes() for p in aside if not p.name.endswith(("-wal", "-shm"))] \
                == [junk]
            text = err.decode()
            assert "ERROR" in text and "is unusable" in text and str(aside[0]) in text
            assert [s.get("short_message") for s in site3.submits] == [b"direct"]
    run(body(), limit=60)


def test_queue_that_cannot_be_opened_routes_directly_until_it_can(tmp_path: Path) -> None:
    where = tmp_path / "not-yet"

    async def body() -> None:
        store = Store(str(where / "q.db"), retry_min=0.1, retry_max=0.2)
        async with Village() as v, store.attach(v.esme):
            assert v.esme.store is None  # no queue: nothing is accepted that needs it
            v.place("3003", (1, SITE3, 0))
            v.place("2002", (0, DOWN, 0))
            assert await v.msc.deliver(mo_sms("1001", "3003", b"direct")) == Status.ROK
            assert await v.msc.deliver(mo_sms("1001", "2002", b"no")) == Status.RSYSERR
            where.mkdir()
            async with asyncio.timeout(10):
                await store.opened.wait()
            assert v.esme.store is store
            assert await v.msc.deliver(mo_sms("1001", "2002", b"yes")) == Status.ROK
            assert (await store.counts()) == {"pending": 1}
    run(body())


# -- item 4: kill -9 while retrying duplicates at most the window -----------------------------

def _delivered_rows(db: Path) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
    try:
        return int(con.execute("SELECT COUNT(*) FROM sms WHERE state='delivered'")
                   .fetchone()[0])
    except sqlite3.OperationalError:
        return -1
    finally:
        con.close()


def test_kill_9_during_retries_duplicates_at_most_the_window(tmp_path: Path) -> None:
    """200 SMS stored while their recipient was unknown; the daemon killed with SIGKILL twice
    while retrying them. Nothing may be lost, and each kill may duplicate at most the
    --retry-window (default 8) SMS that were in flight at that instant. Before: up to 200
    were submitted at once while still "pending" (76 of 451 duplicated in the report)."""
    db = tmp_path / "q.db"
    n, window = 200, 8

    async def body() -> None:
        async with SmscPeer(LOCAL) as msc, SmscPeer(SITE3) as site3, \
                Responder({}, interface=LO, port=PORT, source="127.0.0.12") as hlr:
            def distinct() -> int:
                return len({s.get("user_message_reference") for s in site3.submits})

            proc = _daemon(db, 42774)
            try:
                await msc.wait_for(lambda: msc.route() is not None, timeout=15)
                res = await asyncio.gather(*(msc.deliver(mo_sms(
                    "1001", "2002", b"k%d" % i, msg_ref=i)) for i in range(n)))
                assert res == [Status.ROK] * n
                site3.submit_delay = 0.05  # so that retries are in flight when it dies
                hlr.set("smpp.sms.2002.msisdn", rec(f"0,{SITE3}:2775"))
                kills = 0
                for threshold in (40, 120):
                    await site3.wait_for(lambda t=threshold: distinct() >= t,
                                         timeout=30)
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(10)
                    kills += 1
                    proc = _daemon(db, 42774)
                await site3.wait_for(lambda: distinct() == n, timeout=60)
                assert await until(lambda: _delivered_rows(db) == n, timeout=30)
            finally:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(10) == 0
            copies = len(site3.submits)
            assert distinct() == n  # nothing lost
            assert copies - n <= window * kills, f"{copies - n} duplicates after {kills} kills"
    run(body(), limit=150)
