"""Store-and-forward (``--queue PATH``): accept an SMS once it is durably stored, then retry.

SQLite in WAL mode with ``synchronous=FULL``: a commit has reached the disk (fsync) before the
deliver_sm is answered ROK, so nothing accepted is lost to a crash, a kill -9 or a power cut.
All SQLite work runs on one worker thread; the event loop never blocks on the disk.

- Every message gets a key (sender, recipient, user_message_reference = TP-MR, coding,
  esm_class, and the payload). A phone that did not get its RP-ACK resends the same SMS with
  the same TP-MR: if the key is already stored (pending, delivered or in flight), the copy is
  answered ROK and not delivered again. Direct deliveries are recorded too, for this reason.
- A message whose direct attempt ran out of budget while its submit_sm is still outstanding
  is stored "in flight": it is only retried if that attempt fails.
- The retry loop looks the recipient up again each time (the subscriber may have moved),
  backing off from ``retry_min`` doubling to ``retry_max``, until ``validity`` runs out.
- After a restart, rows left "in flight" are retried (the outcome of their submit_sm is
  unknown: at most that one message may arrive twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from .message import Message
from .pdu import Status

if TYPE_CHECKING:
    from .app import Esme

__all__ = ["Store", "message_key"]

log = logging.getLogger("dgsm.esme.store")
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS sms (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    msisdn TEXT NOT NULL,
    fields TEXT NOT NULL,
    parts TEXT NOT NULL,
    state TEXT NOT NULL,            -- pending | inflight | delivered | expired
    created REAL NOT NULL,
    expires REAL NOT NULL,
    next_try REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_result TEXT
);
CREATE INDEX IF NOT EXISTS sms_due ON sms(state, next_try);
"""


def message_key(msg: Message) -> str:
    f = msg.fields
    h = hashlib.sha256()
    for part in (f.get("source_addr") or b"", msg.msisdn.encode(),
                 str(f.get("user_message_reference")).encode(),
                 str(f.get("data_coding")).encode(), str(f.get("esm_class")).encode(),
                 f.get("short_message") or b"", f.get("message_payload") or b""):
        h.update(len(part).to_bytes(4, "big") + bytes(part))
    return h.hexdigest()


def _dump(fields: dict[str, Any]) -> str:
    return json.dumps({k: {"hex": bytes(v).hex()} if isinstance(v, bytes | bytearray) else v
                       for k, v in fields.items()}, sort_keys=True)


def _load(text: str) -> dict[str, Any]:
    raw = json.loads(text)
    return {k: bytes.fromhex(v["hex"]) if isinstance(v, dict) else v for k, v in raw.items()}


class Store:
    """The durable queue. ``async with store.attach(esme):`` wires it in and runs retries."""

    def __init__(self, path: str, *, validity: float = 24 * 3600.0, retry_min: float = 30.0,
                 retry_max: float = 1800.0, keep_delivered: float = 3600.0) -> None:
        self.path = path
        self.validity = validity
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.keep_delivered = keep_delivered
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="esme-store")
        self._db: sqlite3.Connection | None = None
        self.wake = asyncio.Event()
        self.delivered = 0
        self.expired = 0
        self.duplicates = 0
        self.retries = 0
        self._bg: set[asyncio.Task[Any]] = set()

    # -- the database, on its own thread -----------------------------------------------------

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _open(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        db.execute("UPDATE sms SET state='pending' WHERE state='inflight'")
        self._db = db

    def _tx(self, sql: str, args: tuple[Any, ...]) -> int:
        assert self._db is not None
        cur = self._db.execute(sql, args)
        return cur.rowcount

    def _insert(self, key: str, msg: Message, state: str, now: float, next_try: float) -> bool:
        assert self._db is not None
        try:
            self._db.execute(
                "INSERT INTO sms(key, msisdn, fields, parts, state, created, expires, next_try)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (key, msg.msisdn, _dump(msg.fields), json.dumps(msg.parts), state, now,
                 now + self.validity, next_try))
        except sqlite3.IntegrityError:
            return False
        return True

    def _state(self, key: str) -> str | None:
        assert self._db is not None
        row = self._db.execute("SELECT state FROM sms WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _due(self, now: float, limit: int) -> list[tuple[int, str, str, str, float, int]]:
        assert self._db is not None
        self.expired += self._db.execute(
            "UPDATE sms SET state='expired' WHERE state='pending' AND expires<=?",
            (now,)).rowcount
        self._db.execute("DELETE FROM sms WHERE state IN ('delivered','expired') AND created<?",
                         (now - max(self.keep_delivered, self.validity),))
        return list(self._db.execute(
            "SELECT id, msisdn, fields, parts, expires, attempts FROM sms"
            " WHERE state='pending' AND next_try<=? ORDER BY next_try LIMIT ?", (now, limit)))

    def _next_due(self) -> float | None:
        assert self._db is not None
        row = self._db.execute("SELECT MIN(next_try) FROM sms WHERE state='pending'").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def _counts(self) -> dict[str, int]:
        assert self._db is not None
        return {str(s): int(n) for s, n in
                self._db.execute("SELECT state, COUNT(*) FROM sms GROUP BY state")}

    async def counts(self) -> dict[str, int]:
        return dict(await self._run(self._counts))

    # -- what the ESME calls -------------------------------------------------------------------

    async def seen(self, msg: Message) -> bool:
        """True if this very SMS was already accepted (a phone's retry): don't deliver it."""
        state = await self._run(self._state, message_key(msg))
        if state is not None and state != "expired":
            self.duplicates += 1
            return True
        return False

    async def record_delivered(self, msg: Message) -> None:
        now = time.time()
        await self._run(self._insert, message_key(msg), msg, "delivered", now, now)

    async def enqueue(self, msg: Message, reason: str,
                      attempt: asyncio.Future[int] | None = None) -> bool:
        """Store durably (True once committed). With ``attempt`` (a direct submit still
        outstanding) the row stays "in flight" until that attempt has failed."""
        key = message_key(msg)
        now = time.time()
        state = "pending" if attempt is None else "inflight"
        inserted = await self._run(self._insert, key, msg, state, now, now + self.retry_min)
        if not inserted:
            self.duplicates += 1
        elif attempt is not None:
            attempt.add_done_callback(lambda f: self._attempt_done(key, f))
        self.wake.set()
        return True

    def _attempt_done(self, key: str, fut: asyncio.Future[int]) -> None:
        ok = not fut.cancelled() and fut.exception() is None and fut.result() == Status.ROK
        sql = ("UPDATE sms SET state='delivered' WHERE key=?" if ok else
               "UPDATE sms SET state='pending' WHERE key=? AND state='inflight'")
        task = asyncio.get_running_loop().create_task(self._run(self._tx, sql, (key,)))
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
        if ok:
            self.delivered += 1

    # -- retrying ------------------------------------------------------------------------------

    async def retry_loop(self, esme: Esme) -> None:
        while True:
            now = time.time()
            rows = await self._run(self._due, now, 200)
            await asyncio.gather(*(self._retry(esme, *row) for row in rows))
            if len(rows) == 200:
                continue
            nxt = await self._run(self._next_due)
            wait = 60.0 if nxt is None else min(60.0, max(0.0, nxt - time.time()))
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.wake.wait()

    async def _retry(self, esme: Esme, row_id: int, msisdn: str, fields: str, parts: str,
                     expires: float, attempts: int) -> None:
        msg = Message(0, _load(fields), msisdn, tuple(json.loads(parts)))
        self.retries += 1
        try:
            async with asyncio.timeout(esme.config.response_timeout + 2):
                verdict = await esme.forward(msg)
            status, result = verdict.status, verdict.result
        except TimeoutError:
            status, result = Status.RSYSERR, "timeout"
        if status == Status.ROK:
            self.delivered += 1
            await self._run(self._tx, "UPDATE sms SET state='delivered', attempts=attempts+1,"
                            " last_result=? WHERE id=?", (result, row_id))
            log.info("stored sms id=%d to=%s delivered after %d retries", row_id, msisdn,
                     attempts + 1)
            return
        delay = min(self.retry_max, self.retry_min * 2 ** min(attempts, 20))
        await self._run(self._tx, "UPDATE sms SET attempts=attempts+1, next_try=?,"
                        " last_result=? WHERE id=?", (time.time() + delay, result, row_id))
        log.info("stored sms id=%d to=%s retry %d: %s, next in %.0fs", row_id, msisdn,
                 attempts + 1, result, delay)

    @contextlib.asynccontextmanager
    async def attach(self, esme: Esme) -> AsyncIterator[Store]:
        await self._run(self._open)
        esme.store = self
        task = asyncio.get_running_loop().create_task(self.retry_loop(esme))
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            esme.store = None
            await asyncio.gather(*self._bg, return_exceptions=True)
            if self._db is not None:
                await self._run(self._db.close)
            self._pool.shutdown(wait=True)
