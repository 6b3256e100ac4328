"""Store-and-forward (``--queue PATH``): accept an SMS once it is durably stored, then retry.

SQLite in WAL mode with ``synchronous=FULL``: a commit has reached the disk (fsync) before the
deliver_sm is answered ROK, so nothing accepted is lost to a crash, a kill -9 or a power cut.
Writes run on one worker thread, the duplicate check on another (a WAL reader is not blocked
by a writer); the event loop never blocks on the disk. Every store call is bounded: SQLite's
busy wait is capped by the call's deadline, a call that has not started by its deadline is
not run, and the caller stops waiting at the deadline. A store that is locked, full or broken
costs an SMS at most ``store_check`` (the duplicate check) before it is routed directly;
only SMS that need the queue are refused (RSYSERR) when it cannot durably accept them.

- Every message gets a key (sender, recipient, user_message_reference = TP-MR, coding,
  esm_class, and the payload). A phone that did not get its RP-ACK resends the same SMS with
  the same TP-MR: if the key is already stored (pending, delivered or in flight), the copy is
  answered ROK and not delivered again. Direct deliveries are recorded too, for this reason.
- A message whose direct attempt ran out of budget while its submit_sm is still outstanding
  is stored "in flight": it is only retried if that attempt fails.
- The retry loop looks the recipient up again each time (the subscriber may have moved),
  backing off from ``retry_min`` doubling to ``retry_max``, until ``validity`` runs out.
- The retry loop has at most ``window`` (default 8) stored SMS in flight: a row is marked
  "in flight" (committed) before its submit_sm is sent, and its slot is only freed once the
  outcome is committed. After a restart, rows left "in flight" are retried (the outcome of
  their submit_sm is unknown: those, at most ``window`` from the retry loop plus the direct
  attempts that were outstanding, may arrive twice).
- The retry loop survives every store error: it logs it (at most one line per 10 s), backs
  off and carries on. The outcome of a retry is written again until it sticks.
- At start-up a queue file that is not a valid queue (SQLite reports it corrupt, or not a
  database, ``PRAGMA quick_check`` fails, or the table is not ours) is moved aside to
  ``PATH.corrupt-<time>`` (with its -wal and -shm) and a new empty queue is made; any other
  failure to open leaves the ESME routing directly while it retries opening in the
  background. Both are logged at ERROR.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import CorruptQueue
from .message import Message
from .pdu import Status

if TYPE_CHECKING:
    from .forwarder import Esme

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
_COLUMNS = {"id", "key", "msisdn", "fields", "parts", "state", "created", "expires",
            "next_try", "attempts", "last_result"}
#: SQLite primary result codes meaning "this file is not a usable database"
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26
#: back-off after a store error in the retry loop, seconds
_ERR_MIN, _ERR_MAX = 0.5, 30.0
#: seconds between two ERROR lines about store failures
_FAULT_LOG_INTERVAL = 10.0
#: seconds a background write (a delivery record) may wait for the store
_BACKGROUND_WAIT = 10.0


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


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
                 retry_max: float = 1800.0, keep_delivered: float = 3600.0, window: int = 8,
                 busy: float = 1.0, recent: int = 16384,
                 clock: Callable[[], float] | None = None) -> None:
        if window < 1:
            raise ValueError("the retry window must be at least 1")
        self.path = path
        #: durations within this process (call deadlines, the in-memory duplicate check, the
        #: error-log interval): the event loop's clock unless given. What is written to the
        #: file (created, expires, next_try) is wall-clock time: it outlives the process.
        self.clock = clock
        self.validity = validity
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.keep_delivered = keep_delivered
        self.window = window
        #: the longest SQLite busy wait of one call (each call's deadline may cap it lower)
        self.busy = busy
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="esme-store")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="esme-store-r")
        self._db: sqlite3.Connection | None = None
        self._rdb: sqlite3.Connection | None = None
        #: keys of SMS accepted (answered ROK) by this process: the duplicate check that
        #: needs no disk, and the one that still works while the file is locked
        self._recent: OrderedDict[str, float] = OrderedDict()
        self._recent_max = recent
        self.wake = asyncio.Event()
        self.delivered = 0
        self.expired = 0
        self.duplicates = 0
        self.retries = 0
        #: store calls that failed or ran out of time
        self.errors = 0
        #: where a corrupt queue file was moved at start-up
        self.quarantined: str | None = None
        self.opened = asyncio.Event()
        self._failing = False
        self._next_fault_log = float("-inf")
        self._bg: set[asyncio.Task[Any]] = set()

    # -- the database, on its threads --------------------------------------------------------

    async def _call(self, reader: bool, fn: Callable[..., T], *args: Any,
                    wait: float | None = None) -> T:
        """Run ``fn(db, *args)`` on the writer (or reader) thread, bounded by ``wait``."""
        clock = self._clock()
        deadline = None if wait is None else clock() + wait
        pool = self._reader if reader else self._writer
        job = asyncio.get_running_loop().run_in_executor(
            pool, self._bounded, reader, fn, clock, deadline, args)
        try:
            if wait is None:
                result = await job
            else:
                async with asyncio.timeout(wait + 0.05):
                    result = await job
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fault(getattr(fn, "__name__", "store call").strip("_"), exc, not reader)
            raise
        if self._failing and not reader:
            self._failing = False
            log.warning("queue %s: writes work again (%d store errors so far)", self.path,
                        self.errors)
        return result

    def _clock(self) -> Callable[[], float]:
        return self.clock if self.clock is not None else asyncio.get_running_loop().time

    def _bounded(self, reader: bool, fn: Callable[..., T], clock: Callable[[], float],
                 deadline: float | None, args: tuple[Any, ...]) -> T:
        busy = self.busy
        if deadline is not None:
            busy = min(busy, deadline - clock())
            if busy <= 0:
                raise TimeoutError("no time left")  # its caller has given up: don't run it
        if reader and self._rdb is None:
            self._rdb = self._connect(query_only=True)
        db = self._rdb if reader else self._db
        if db is None:
            raise sqlite3.OperationalError("the queue is not open")
        db.execute(f"PRAGMA busy_timeout={max(1, int(busy * 1000))}")
        return fn(db, *args)

    def _fault(self, what: str, exc: BaseException, write: bool = True) -> None:
        self.errors += 1
        self._failing = self._failing or write
        now = self._clock()()
        if now >= self._next_fault_log:
            self._next_fault_log = now + _FAULT_LOG_INTERVAL
            log.error("queue %s: %s failed: %s (%d store errors so far; SMS that need the "
                      "queue are refused RSYSERR while it fails, the others are routed "
                      "directly)", self.path, what, str(exc) or type(exc).__name__,
                      self.errors)

    async def _write(self, fn: Callable[..., T], *args: Any, wait: float | None = None) -> T:
        return await self._call(False, fn, *args, wait=wait)

    def _connect(self, query_only: bool = False) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                             timeout=self.busy)
        if query_only:
            db.execute("PRAGMA query_only=ON")
        return db

    def _open_checked(self) -> sqlite3.Connection:
        db = self._connect()
        try:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                check = db.execute("PRAGMA quick_check").fetchall()
                if check != [("ok",)]:
                    raise CorruptQueue(f"quick_check: {check[0][0] if check else '?'}")
                db.executescript(SCHEMA)
                columns = {str(r[1]) for r in db.execute("PRAGMA table_info(sms)")}
                if not columns >= _COLUMNS:
                    raise CorruptQueue("its table sms is not an esme_dgsm queue (missing "
                                       f"{', '.join(sorted(_COLUMNS - columns))})")
                db.execute("UPDATE sms SET state='pending' WHERE state='inflight'")
            except sqlite3.DatabaseError as exc:
                if _is_corrupt(exc):
                    raise CorruptQueue(str(exc)) from exc
                raise
        except BaseException:
            db.close()
            raise
        return db

    def _open(self) -> None:
        try:
            self._db = self._open_checked()
        except CorruptQueue as exc:
            aside = f"{self.path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(self.path + suffix):
                    os.replace(self.path + suffix, aside + suffix)
            self.quarantined = aside
            log.error("queue %s is unusable (%s): moved it to %s and started an empty queue; "
                      "SMS stored in it are not retried (inspect it with sqlite3)",
                      self.path, exc, aside)
            self._db = self._open_checked()

    @staticmethod
    def _insert(db: sqlite3.Connection, key: str, msg: Message, state: str, now: float,
                expires: float, next_try: float) -> bool:
        try:
            db.execute(
                "INSERT INTO sms(key, msisdn, fields, parts, state, created, expires, next_try)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (key, msg.msisdn, _dump(msg.fields), json.dumps(msg.parts), state, now,
                 expires, next_try))
        except sqlite3.IntegrityError:
            return False
        return True

    @staticmethod
    def _state(db: sqlite3.Connection, key: str) -> str | None:
        row = db.execute("SELECT state FROM sms WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _claim(self, db: sqlite3.Connection, now: float, limit: int
               ) -> list[tuple[int, str, str, str, float, int]]:
        """Expire, prune, and take up to ``limit`` due rows, marked "in flight", in one
        committed transaction: once this returns, a kill leaves them "in flight"."""
        db.execute("BEGIN IMMEDIATE")
        try:
            expired = db.execute(
                "UPDATE sms SET state='expired' WHERE state='pending' AND expires<=?",
                (now,)).rowcount
            db.execute("DELETE FROM sms WHERE state IN ('delivered','expired') AND created<?",
                       (now - max(self.keep_delivered, self.validity),))
            rows = list(db.execute(
                "SELECT id, msisdn, fields, parts, expires, attempts FROM sms"
                " WHERE state='pending' AND next_try<=? ORDER BY next_try LIMIT ?",
                (now, limit)))
            db.executemany("UPDATE sms SET state='inflight' WHERE id=?",
                           [(r[0],) for r in rows])
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self.expired += expired
        return rows

    @staticmethod
    def _settle(db: sqlite3.Connection, row_id: int, ok: bool, result: str,
                next_try: float) -> None:
        if ok:
            db.execute("UPDATE sms SET state='delivered', attempts=attempts+1, last_result=?"
                       " WHERE id=?", (result, row_id))
        else:
            db.execute("UPDATE sms SET state='pending', attempts=attempts+1, next_try=?,"
                       " last_result=? WHERE id=?", (next_try, result, row_id))

    @staticmethod
    def _next_due(db: sqlite3.Connection) -> float | None:
        row = db.execute("SELECT MIN(next_try) FROM sms WHERE state='pending'").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    @staticmethod
    def _counts(db: sqlite3.Connection) -> dict[str, int]:
        return {str(s): int(n) for s, n in
                db.execute("SELECT state, COUNT(*) FROM sms GROUP BY state")}

    async def counts(self) -> dict[str, int]:
        return dict(await self._write(self._counts))

    # -- what the ESME calls -------------------------------------------------------------------

    def _remember(self, key: str) -> None:
        recent = self._recent
        recent[key] = self._clock()()
        recent.move_to_end(key)
        while len(recent) > self._recent_max:
            recent.popitem(last=False)

    async def seen(self, msg: Message, wait: float = 0.25) -> bool:
        """True if this very SMS was already accepted (a phone's retry): don't deliver it.
        Takes at most ``wait``: a store that cannot answer in time counts as "not seen"."""
        key = message_key(msg)
        accepted = self._recent.get(key)
        # within validity: still stored (pending or delivered); older, it may have expired
        if accepted is not None and self._clock()() - accepted < self.validity:
            self.duplicates += 1
            return True
        try:
            state = await self._call(True, self._state, key, wait=wait)
        except Exception:  # logged by _call; route it rather than refuse it
            return False
        if state is not None and state != "expired":
            self.duplicates += 1
            return True
        return False

    async def record_delivered(self, msg: Message) -> None:
        """Remember a direct delivery (so a resend is not delivered again); best effort."""
        key = message_key(msg)
        self._remember(key)
        now = time.time()
        with contextlib.suppress(Exception):  # logged by _call; the key stays in memory
            await self._write(self._insert, key, msg, "delivered", now,
                              now + self.validity, now, wait=_BACKGROUND_WAIT)

    async def enqueue(self, msg: Message, reason: str,
                      attempt: asyncio.Future[int] | None = None,
                      wait: float | None = None) -> bool:
        """Store durably (True once committed; raises if that cannot be done in ``wait``).
        With ``attempt`` (a direct submit still outstanding) the row stays "in flight" until
        that attempt has failed."""
        key = message_key(msg)
        now = time.time()
        state = "pending" if attempt is None else "inflight"
        inserted = await self._write(self._insert, key, msg, state, now, now + self.validity,
                                     now + self.retry_min, wait=wait)
        self._remember(key)
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
        task = asyncio.get_running_loop().create_task(self._until_written(sql, (key,)))
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
        if ok:
            self.delivered += 1

    async def _until_written(self, sql: str, args: tuple[Any, ...]) -> None:
        """Write an outcome, again and again until it sticks (or the store is closed)."""
        backoff = _ERR_MIN
        while True:
            try:
                await self._write(_execute, sql, args)
            except Exception:  # logged by _call
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _ERR_MAX)
            else:
                self.wake.set()
                return

    # -- retrying ------------------------------------------------------------------------------

    async def retry_loop(self, esme: Esme) -> None:
        """Retry due rows, at most ``window`` at once, for ever; store errors back off."""
        running: set[asyncio.Task[None]] = set()
        backoff = _ERR_MIN
        try:
            while True:
                self.wake.clear()
                try:
                    free = self.window - len(running)
                    if free > 0:
                        for row in await self._write(self._claim, time.time(), free):
                            task = asyncio.get_running_loop().create_task(
                                self._retry(esme, *row))
                            running.add(task)
                            task.add_done_callback(running.discard)
                    if len(running) >= self.window:
                        await asyncio.wait(set(running), return_when=asyncio.FIRST_COMPLETED)
                        continue
                    nxt = await self._write(self._next_due)
                except Exception:  # logged by _call
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _ERR_MAX)
                    continue
                backoff = _ERR_MIN
                wait = 60.0 if nxt is None else min(60.0, max(0.0, nxt - time.time()))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self.wake.wait()
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _retry(self, esme: Esme, row_id: int, msisdn: str, fields: str, parts: str,
                     expires: float, attempts: int) -> None:
        self.retries += 1
        try:
            msg = Message(0, _load(fields), msisdn, tuple(json.loads(parts)))
            async with asyncio.timeout(esme.config.response_timeout + 2):
                decision = await esme.forward(msg)
            status, result = decision.status, decision.result
        except TimeoutError:
            status, result = Status.RSYSERR, "timeout"
        except Exception as exc:  # never let one row stop the loop
            log.exception("stored sms id=%d: retry failed", row_id)
            status, result = Status.RSYSERR, f"internal-error {exc!r}"
        ok = status == Status.ROK
        delay = min(self.retry_max, self.retry_min * 2 ** min(attempts, 20))
        backoff = _ERR_MIN
        while True:  # the slot stays taken until the outcome is on disk
            try:
                await self._write(self._settle, row_id, ok, result, time.time() + delay)
                break
            except Exception:  # logged by _call
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _ERR_MAX)
        self.wake.set()
        if ok:
            self.delivered += 1
            log.info("stored sms id=%d to=%s delivered after %d retries", row_id, msisdn,
                     attempts + 1)
        else:
            log.info("stored sms id=%d to=%s retry %d: %s, next in %.0fs", row_id, msisdn,
                     attempts + 1, result, delay)

    async def _keep_opening(self) -> None:
        backoff = 1.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 60.0)
            try:
                await loop.run_in_executor(self._writer, self._open)
            except Exception as exc:
                self._fault("opening the queue", exc)
                continue
            log.warning("queue %s is open now: store-and-forward is on", self.path)
            return

    async def _serve(self, esme: Esme) -> None:
        if self._db is None:
            await self._keep_opening()
        esme.store = self
        self.opened.set()
        await self.retry_loop(esme)

    async def _open_at_start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._writer, self._open)
        except Exception as exc:
            self.errors += 1
            log.error("queue %s cannot be opened (%s): routing directly, without "
                      "store-and-forward, until it can (retrying in the background)",
                      self.path, str(exc) or type(exc).__name__)

    @contextlib.asynccontextmanager
    async def attach(self, esme: Esme) -> AsyncIterator[Store]:
        await self._open_at_start()
        if self._db is not None:
            esme.store = self
            self.opened.set()
        task = asyncio.get_running_loop().create_task(self._serve(esme))
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            esme.store = None
            if self._bg:  # outcomes still being written: a short grace, then give up
                await asyncio.wait(set(self._bg), timeout=2.0)
                for t in self._bg:
                    t.cancel()
                await asyncio.gather(*self._bg, return_exceptions=True)
            loop = asyncio.get_running_loop()
            for pool, db in ((self._writer, self._db), (self._reader, self._rdb)):
                if db is not None:
                    with contextlib.suppress(Exception):
                        await loop.run_in_executor(pool, db.close)
            # jobs not started are dropped; one that runs ends within its busy wait
            self._writer.shutdown(wait=True, cancel_futures=True)
            self._reader.shutdown(wait=True, cancel_futures=True)


def _execute(db: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> None:
    db.execute(sql, args)
