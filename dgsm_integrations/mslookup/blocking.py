"""The blocking driver: the same names and keyword arguments as :class:`~.aio.AsyncResolver`,
for threads and for processes that live for one call, with no asyncio.

One socket and one :class:`~.engine.Engine` per resolver; any number of threads may call
:meth:`Resolver.resolve` at once (FreeSWITCH runs each call in its own thread). There is no
background thread: the callers drive the engine themselves. A caller sends its own query
from its own thread; then one waiting caller at a time (the *leader*) waits in ``select()``
on the socket until the engine's next wake-up, and hands every result to the caller it
belongs to; when the leader's own lookup ends, another waiting caller takes over. A lone
caller (the usual case, and the per-call Asterisk AGI script) therefore never switches
threads: send, ``select()``, read, done.

Every call returns by its lookup's end (timeout, plus a grace period after copies that could
not leave on time) and at most :data:`MARGIN` seconds later whatever happens.
:meth:`Resolver.shared` hands out one process-wide instance per configuration, so code that
is re-imported on every call (FreeSWITCH's mod_python3) does not open a socket per call.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from .driver import configure, read_socket, send_due
from .engine import AnswerTrace, Engine, Lookup, Stats
from .errors import TransportError
from .model import Outcome, Result
from .query import Query, as_query
from .selection import Timing
from .transport import MulticastConfig, open_socket

__all__ = ["MARGIN", "Resolver"]

#: Extra time a call may wait beyond its lookup's own end before it gives up.
MARGIN = 2.0


class _Log:
    """The engine's reporter: ``logging``'s ``dgsm.mslookup``, imported only when a record
    is written (a per-call process that has nothing to say never pays for it), at most one
    record of a kind per 10 s."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def _emit(self, level: int, kind: str | None, msg: str, args: tuple[object, ...]) -> None:
        now = time.monotonic()
        if kind is not None:
            if now - self._last.get(kind, -1e9) < 10.0:
                return
            if len(self._last) > 64:
                self._last.clear()
            self._last[kind] = now
        import logging

        logging.getLogger("dgsm.mslookup").log(level, msg, *args)

    def warning(self, kind: str, msg: str, *args: object) -> object:
        self._emit(30, kind, msg, args)
        return None

    def debug(self, kind: str, msg: str, *args: object) -> object:
        return None  # per-packet details: the asyncio driver's, with its summaries

    def once(self, msg: str, *args: object) -> object:
        self._emit(30, None, msg, args)
        return None


class _Call:
    """One caller's results, handed over by whichever thread is leading."""

    __slots__ = ("event", "results")

    def __init__(self) -> None:
        self.results: list[Result] = []
        self.event = threading.Event()

    def put(self, result: Result) -> None:
        self.results.append(result)
        self.event.set()


class Resolver:
    """Blocking mslookup resolver; see :class:`~.aio.AsyncResolver` for the keyword
    arguments. Raises only InvalidQuery (a bad query), InvalidSetting (a bad keyword) and
    TransportError (no socket)."""

    _shared: ClassVar[dict[tuple[tuple[str, Any], ...], Resolver]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, **kwargs: Any) -> None:
        self.config: MulticastConfig
        self.config, self.settings = configure(**kwargs)  # validates the arguments now
        #: the clock the engine runs on (tests replace it)
        self._clock: Callable[[], float] = time.monotonic
        self.engine = Engine(self.settings, now=self._clock(), report=_Log())
        self._destination = self.config.destination()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._poke_r = self._poke_w = -1  # a pipe that interrupts the leader's select()
        self._leading = False
        self._leader_until = 0.0  # when the leader's select() returns at the latest
        self._waiting: list[_Call] = []
        self._closed = False

    @classmethod
    def shared(cls, **kwargs: Any) -> Resolver:
        """The process-wide resolver for this configuration (created on first use)."""
        key = tuple(sorted((k, repr(v)) for k, v in kwargs.items()))
        with cls._shared_lock:
            resolver = cls._shared.get(key)
            if resolver is None or resolver._closed:
                resolver = cls._shared[key] = cls(**kwargs)
            return resolver

    @property
    def stats(self) -> Stats:
        return self.engine.stats

    @property
    def trust_warning(self) -> str | None:
        """Set while every answer of the last few seconds was dropped as untrusted."""
        return self.engine.trust_warning

    def timing(self, query: Query, min_delay: float | None = None,
               timeout: float | None = None) -> Timing:
        """The effective timing of ``query`` with these per-call overrides."""
        return self.settings.timing(query, min_delay, timeout)

    # -- life cycle ------------------------------------------------------------------------

    def open(self) -> None:
        """Open the socket (done by the first lookup too)."""
        with self._lock:
            self._open_locked()

    def _open_locked(self) -> socket.socket:
        if self._closed:
            raise TransportError("resolver is closed")
        if self._sock is None:
            sock = open_socket(self.config)
            try:
                self._poke_r, self._poke_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                sock.close()
                raise TransportError(f"cannot make a pipe: {exc.strerror}") from exc
            self._sock = sock
        return self._sock

    def close(self) -> None:
        """End lookups in progress (their callers get an error result) and close."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.engine.close(self._clock())
            if self._leading:
                self._poke()  # the leader closes the socket when it leaves select()
            else:
                self._release_locked()

    def _release_locked(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for fd in (self._poke_r, self._poke_w):
            if fd >= 0:
                os.close(fd)
        self._poke_r = self._poke_w = -1

    def __enter__(self) -> Resolver:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- lookups ---------------------------------------------------------------------------

    def resolve(
        self,
        query: str | Query,
        *,
        min_delay: float | None = None,
        timeout: float | None = None,
        on_answer: Callable[[AnswerTrace], None] | None = None,
    ) -> Result:
        """Blocking :meth:`AsyncResolver.resolve`: the first result of the lookup."""
        q = as_query(query)
        call, lookup, limit = self._start(q, min_delay, timeout, on_answer)
        try:
            return self._next(call, lookup, limit)
        finally:
            self._end(lookup)

    def stream(
        self,
        query: str | Query,
        *,
        min_delay: float | None = None,
        timeout: float | None = None,
        on_answer: Callable[[AnswerTrace], None] | None = None,
    ) -> Iterator[Result]:
        """Blocking :meth:`AsyncResolver.stream`; the last result has ``last=True``."""
        q = as_query(query)
        call, lookup, limit = self._start(q, min_delay, timeout, on_answer)
        try:
            while True:
                result = self._next(call, lookup, limit)
                yield result
                if result.last:
                    return
        finally:
            self._end(lookup)

    # -- the driver ------------------------------------------------------------------------

    def _start(self, query: Query, min_delay: float | None, timeout: float | None,
               on_answer: Callable[[AnswerTrace], None] | None,
               ) -> tuple[_Call, Lookup, float]:
        timing = self.settings.timing(query, min_delay, timeout)
        call = _Call()
        with self._lock:
            sock = self._open_locked()
            now = self._clock()
            lookup = self.engine.start(query, now, call.put, timing=timing,
                                       on_answer=on_answer)
            read_socket(sock, self.engine, now)
            send_due(sock, self.engine, now, self._destination)
            if self._leading:
                wake = self.engine.next_wakeup()
                if wake is not None and wake < self._leader_until:
                    self._poke()  # the pacer holds our copy: the leader must wake for it
        return call, lookup, now + timing.timeout + timing.window / 2 + MARGIN

    def _end(self, lookup: Lookup) -> None:
        if not lookup.done:
            with self._lock:
                self.engine.cancel(lookup, self._clock())

    def _next(self, call: _Call, lookup: Lookup, limit: float) -> Result:
        """The next result for ``call``: lead while nobody else does, else wait for the
        leader to hand it over (or to hand over the lead)."""
        while True:
            with self._lock:
                if not call.results and not self._leading and self._sock is not None:
                    self._pump()  # what came while this thread was not scheduled counts
                if call.results:
                    return call.results.pop(0)
                call.event.clear()
                now = self._clock()
                if now >= limit:
                    self.engine.cancel(lookup, now)
                    waited = now - lookup.selection.start
                    return Result(lookup.selection.query, Outcome.ERROR, elapsed=waited,
                                  reason=f"no result within {waited:.1f} s")
                lead = not self._leading and not self._closed
                if lead:
                    self._leading = True
                else:
                    self._waiting.append(call)
            if lead:
                try:
                    self._lead(call, limit)
                finally:
                    with self._lock:
                        self._leading = False
                        if self._closed:
                            self._release_locked()
                        elif self._waiting:
                            self._waiting[0].event.set()  # take over the lead
            else:
                call.event.wait(max(0.0, limit - self._clock()))
                with self._lock, contextlib.suppress(ValueError):
                    self._waiting.remove(call)

    def _pump(self) -> None:
        """One pass of the driver loop (the lock held): read, send, deadlines."""
        sock = self._sock
        if sock is None or self._closed:
            return
        now = self._clock()
        engine = self.engine
        read_socket(sock, engine, now)
        send_due(sock, engine, now, self._destination)
        engine.advance(now)

    def _lead(self, call: _Call, limit: float) -> None:
        """Drive the engine until ``call`` has a result (or its limit passes)."""
        while not call.results:
            with self._lock:
                sock = self._sock
                if sock is None or self._closed:
                    return
                wake = self.engine.next_wakeup()
                until = limit if wake is None else min(wake, limit)
                self._leader_until = until
            timeout = until - self._clock()
            if timeout > 0:
                try:
                    readable, _, _ = select.select([sock.fileno(), self._poke_r], [], [], timeout)
                except (OSError, ValueError):
                    return  # closed under us
                if self._poke_r in readable:
                    with contextlib.suppress(OSError):
                        os.read(self._poke_r, 512)
            with self._lock:
                if self._closed:
                    return
                self._pump()
            if self._clock() >= limit:
                return

    def _poke(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._poke_w, b"!")
