"""The asyncio driver: one multicast socket and one :class:`~.engine.Engine` shared by any
number of lookups.

Everything a lookup is (flights, re-sends and pacing, triage, selection, errors) is the
engine's; this module reads the socket when it is readable, sends what the engine hands
out, and keeps one timer at the engine's next wake-up (the driver loop in
:mod:`.engine`'s docstring). Lookups started in one pass of the event loop share one clock
reading and one wake-up after the pass.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncGenerator, Callable, Iterable

from .._ratelimit import LogLimiter
from .driver import configure, read_socket, send_due
from .engine import DEFAULT_RESEND, AnswerTrace, Engine, Lookup, Stats
from .errors import TransportError
from .model import Network, Result, parse_networks
from .pacing import DEFAULT_RATE
from .query import DEFAULT_SUFFIX, Query, as_query
from .selection import Timing
from .transport import DEFAULT_GROUP_V4, DEFAULT_PORT, open_socket

__all__ = ["AnswerTrace", "AsyncResolver", "Stats", "as_query", "parse_networks"]

log = logging.getLogger("dgsm.mslookup")


class EngineLog:
    """The engine's :class:`~.engine.Reporter`: rate-limited records to ``dgsm.mslookup``."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self.logger = logger
        self.limited = LogLimiter(logger)

    def warning(self, kind: str, msg: str, *args: object) -> object:
        return self.limited.warning(kind, msg, *args)

    def debug(self, kind: str, msg: str, *args: object) -> object:
        return self.limited.debug(kind, msg, *args)

    def once(self, msg: str, *args: object) -> object:
        self.logger.warning(msg, *args)
        return None


class _First:
    """A lookup's ``deliver`` for :meth:`AsyncResolver.resolve`: its first result resolves the
    future, later ones (a timeout beyond min_delay) are not wanted. (A closure did the same
    for 150 bytes more per lookup in flight.)"""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[Result]) -> None:
        self.future = future

    def __call__(self, result: Result) -> None:
        if not self.future.done():
            self.future.set_result(result)


class AsyncResolver:
    """Look up subscribers over mslookup mDNS from asyncio code.

    >>> async with AsyncResolver(interface="127.0.0.1", min_delay=0.2) as r:
    ...     result = await r.resolve("sip.voice.12345.msisdn")

    Times are in seconds. ``min_delay`` (default 1 s, as libosmo-mslookup) is how long to
    collect answers before returning the youngest; ``timeout`` (default: min_delay) is when a
    stream of results ends; a query string's own ``[delay-][timeout]@`` (ms) overrides both.
    The other keywords are :class:`~.engine.Settings` (re-sends, pacing, ``trusted``,
    ``allow_loopback``) and :class:`~.transport.MulticastConfig` (where the socket is).
    """

    def __init__(
        self,
        *,
        group: str = DEFAULT_GROUP_V4,
        port: int = DEFAULT_PORT,
        interface: str | None = None,
        ttl: int = 1,
        suffix: str = DEFAULT_SUFFIX,
        min_delay: float = 1.0,
        timeout: float | None = None,
        resend: int = DEFAULT_RESEND,
        resend_interval: float | None = None,
        trusted: Iterable[str | Network] | None = None,
        allow_loopback: bool = False,
        send_rate: float = DEFAULT_RATE,
    ) -> None:
        self.config, self.settings = configure(
            group=group, port=port, interface=interface, ttl=ttl, suffix=suffix,
            min_delay=min_delay, timeout=timeout, resend=resend,
            resend_interval=resend_interval, trusted=trusted, allow_loopback=allow_loopback,
            send_rate=send_rate)
        self._log = EngineLog()
        self.engine = Engine(self.settings, now=time.monotonic(), report=self._log)
        self._destination = self.config.destination()
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._pass_now: float | None = None  # the clock reading of lookups started this pass
        self._closed = False

    # -- settings, as attributes ------------------------------------------------------------

    @property
    def stats(self) -> Stats:
        return self.engine.stats

    @property
    def trust_warning(self) -> str | None:
        """Set while every answer of the last few seconds was dropped as untrusted."""
        return self.engine.trust_warning

    @property
    def suffix(self) -> str:
        return self.settings.suffix

    @property
    def min_delay(self) -> float:
        return self.settings.min_delay

    @property
    def timeout(self) -> float | None:
        return self.settings.timeout

    @property
    def resend(self) -> int:
        return self.settings.resend

    @property
    def trusted(self) -> tuple[Network, ...] | None:
        return self.settings.trusted

    @property
    def allow_loopback(self) -> bool:
        return self.settings.allow_loopback

    @property
    def send_rate(self) -> float:
        return self.settings.send_rate

    # -- life cycle ------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the multicast socket (done implicitly by the first lookup)."""
        self._open_now()

    def _open_now(self) -> asyncio.AbstractEventLoop:
        if self._closed:
            raise TransportError("resolver is closed")
        loop = self._loop
        if self._sock is not None and loop is not None:
            return loop
        loop = asyncio.get_running_loop()
        sock = open_socket(self.config)
        loop.add_reader(sock.fileno(), self._wake)
        self._sock, self._loop = sock, loop
        log.debug("mslookup client listening on %s", self.config.describe())
        return loop

    async def close(self) -> None:
        """End every lookup in progress (with an error result) and close the socket."""
        self._closed = True
        self._log.limited.flush()
        loop = self._loop
        self.engine.close(loop.time() if loop else time.monotonic())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sock is not None and loop is not None:
            loop.remove_reader(self._sock.fileno())
            self._sock.close()
        self._sock = None

    async def __aenter__(self) -> AsyncResolver:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- lookups ---------------------------------------------------------------------------

    def timing(self, query: Query, min_delay: float | None = None,
               timeout: float | None = None) -> Timing:
        """The effective timing of ``query`` with these per-call overrides."""
        return self.settings.timing(query, min_delay, timeout)

    async def resolve(
        self,
        query: str | Query,
        *,
        min_delay: float | None = None,
        timeout: float | None = None,
        on_answer: Callable[[AnswerTrace], None] | None = None,
    ) -> Result:
        """Find the site with the youngest record of the subscriber.

        Returns the first result libosmo-mslookup would deliver (the youngest answer at
        min_delay, or an age-0 answer at once), or a not-found / error result. Never raises
        for anything the network does; raises InvalidQuery for a bad query.
        """
        q = as_query(query)
        timing = self.settings.timing(q, min_delay, timeout)
        loop = self._open_now()
        future: asyncio.Future[Result] = loop.create_future()
        lookup = self._start(loop, q, timing, _First(future), on_answer)
        try:
            return await future
        finally:
            self._end(lookup)

    async def stream(
        self,
        query: str | Query,
        *,
        min_delay: float | None = None,
        timeout: float | None = None,
        on_answer: Callable[[AnswerTrace], None] | None = None,
    ) -> AsyncGenerator[Result, None]:
        """Yield results as libosmo-mslookup delivers them; the last has ``last=True``."""
        q = as_query(query)
        timing = self.settings.timing(q, min_delay, timeout)
        loop = self._open_now()
        queue: asyncio.Queue[Result] = asyncio.Queue()
        lookup = self._start(loop, q, timing, queue.put_nowait, on_answer)
        try:
            while True:
                result = await queue.get()
                yield result
                if result.last:
                    return
        finally:
            self._end(lookup)

    def start(
        self,
        query: str | Query,
        deliver: Callable[[Result], None],
        *,
        min_delay: float | None = None,
        timeout: float | None = None,
        on_answer: Callable[[AnswerTrace], None] | None = None,
    ) -> Lookup:
        """The callback form of :meth:`stream`, for servers that answer from callbacks:
        results go to ``deliver`` as they come, on the loop (the last has ``last=True``);
        :meth:`cancel` ends the lookup early. Must be called on the loop."""
        q = as_query(query)
        timing = self.settings.timing(q, min_delay, timeout)
        return self._start(self._open_now(), q, timing, deliver, on_answer)

    def cancel(self, lookup: Lookup) -> None:
        """End a lookup from :meth:`start` without a further result (its caller left)."""
        self._end(lookup)

    # -- the driver ------------------------------------------------------------------------

    def _start(self, loop: asyncio.AbstractEventLoop, query: Query, timing: Timing,
               deliver: Callable[[Result], None],
               on_answer: Callable[[AnswerTrace], None] | None) -> Lookup:
        now = self._pass_now
        if now is None:
            # The first lookup of this pass of the loop reads the clock and asks for one
            # wake-up (read, send, re-arm) once the pass is over. Every lookup started before
            # that wake-up -- a bulk SMS starts thousands in one pass -- shares the reading,
            # as libuv's loop time: they were all asked at the same moment, and the window of
            # the last must not start only after the others' bookkeeping (docs/mslookup.md,
            # "Pacing"). A lookup whose first copy the pacer holds back still gets time for
            # the answers after it: the engine moves its deadlines (Engine._extend).
            now = self._pass_now = loop.time()
            loop.call_soon(self._wake)
        return self.engine.start(query, now, deliver, timing=timing, on_answer=on_answer)

    def _end(self, lookup: Lookup) -> None:
        if not lookup.done:
            loop = self._loop
            self.engine.cancel(lookup, loop.time() if loop else time.monotonic())

    def _on_timer(self) -> None:
        self._timer = None  # it fired; a wake-up for the socket must not forget a live one
        self._wake()

    def _wake(self) -> None:
        """The socket is readable, the engine's wake-up time came, or lookups started."""
        self._pass_now = None  # a lookup started from here on reads the clock again
        sock, loop = self._sock, self._loop
        if sock is None or loop is None:
            return
        now = loop.time()
        engine = self.engine
        read_socket(sock, engine, now)  # at most a batch: after a flood, the rest next pass
        send_due(sock, engine, now, self._destination)
        engine.advance(now)
        self._rearm()

    def _rearm(self) -> None:
        loop = self._loop
        if loop is None or self._closed:
            return
        wake = self.engine.next_wakeup()
        timer = self._timer
        if timer is not None:
            if wake is not None and self._timer_at <= wake:
                return  # an early wake-up costs one look at the engine
            timer.cancel()
            self._timer = None
        if wake is not None:
            self._timer = loop.call_at(wake, self._on_timer)
            self._timer_at = wake
