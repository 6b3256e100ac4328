"""The call-server skeleton: what ``dgsm-fastagi`` and ``dgsm-fs-esl`` do around one call.

A PBX connects once per call, the two sides talk (FastAGI or outbound ESL), the call is
looked up and routed, the connection closes. Everything but the talk is the same for both
protocols and lives here, in :class:`CallServer`:

- listening, through :mod:`._listen` (below the open-file limit, a first-byte deadline,
  silent connections making room, an optional greeting the server sends first);
- a bound on concurrent calls (``max_calls``): beyond it a connection is closed at once
  (the PBX reads EOF and takes its failure branch, it never hangs), counted as ``busy`` and
  logged rate-limited;
- one record per call (:class:`Call`), one deadline per call (``call_timeout``, around
  :meth:`CallServer.converse`), and the one place where a call ends, whatever ended it: the
  deadline, the peer leaving (:class:`_End`), the peer breaking the protocol (the protocol's
  own :class:`~dgsm_integrations.errors.DgsmError`), the network, the shutdown, or a bug;
- the counters (:class:`ServerStats`) and one log line per call, written when it ends;
- the graceful stop: stop accepting, let calls finish for ``grace`` s, cancel the rest.

A protocol subclasses :class:`CallServer` and supplies only what one call says and does:
:meth:`~CallServer.open_call` (its record), :meth:`~CallServer.converse` (the talk, under the
deadline), optionally :meth:`~CallServer.follow` (watching a call after it was routed, off
the deadline), :meth:`~CallServer.close_call` and :meth:`~CallServer.finished`, and
:meth:`~CallServer.line`, the call's log line. :func:`race` runs a lookup against the peer
leaving, as both protocols do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Generic, Self, TypeVar

from ._listen import Listener, accepted_at, connection_budget, start_stream_server
from ._ratelimit import LogLimiter
from .errors import DgsmError
from .mslookup import AsyncResolver
from .settings import CallServerOptions

__all__ = ["Call", "CallServer", "ServerStats", "peer_text", "race", "with_headroom"]

T = TypeVar("T")


@dataclass
class ServerStats:
    """A call server's counters (monotonic); a protocol may add its own by subclassing.

    ``calls`` counts every call that started (a refused connection is ``busy`` only); each
    call that ended with a routing result counts once in ``found``, ``not_found``, ``errors``
    or ``invalid`` (:meth:`count`).
    """

    #: result word -> the counter it counts in
    RESULTS: ClassVar[dict[str, str]] = {"found": "found", "not-found": "not_found",
                                         "error": "errors", "invalid": "invalid"}
    #: where a call with no result word from :data:`RESULTS` counts (None: nowhere)
    UNRESOLVED: ClassVar[str | None] = None

    calls: int = 0
    found: int = 0
    not_found: int = 0
    errors: int = 0
    invalid: int = 0
    timeouts: int = 0
    protocol_errors: int = 0
    busy: int = 0

    def count(self, result: str) -> None:
        name = self.RESULTS.get(result, self.UNRESOLVED)
        if name is not None:
            setattr(self, name, getattr(self, name) + 1)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class _End(Exception):
    """End this call now; the message says why (for the log line). Raised by a protocol
    when the peer left or refused what it was sent."""


@dataclass(eq=False)
class Call:
    """One call's record: the skeleton's part; a protocol adds its own fields."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer: str
    #: loop time the call's handler started (the peer's first byte had arrived)
    start: float
    #: loop time the connection was accepted (earlier than ``start`` by the first byte's wait)
    accepted: float
    #: the routing result (``found``, ``not-found``, ``error``, ``invalid``, a protocol's own)
    result: str = "none"
    #: how the conversation ended, for the log line; set by the protocol or on the way out
    ended: str = "-"
    #: seconds spent in the lookup (also when the peer's leaving cut it short)
    lookup_s: float = 0.0
    #: what the peer got wrong, if it broke the protocol (counted once)
    protocol_error: str | None = None
    #: loop time the call ended (set on the way out, before :meth:`CallServer.finished`)
    end: float | None = None


C = TypeVar("C", bound=CallServerOptions)
K = TypeVar("K", bound=Call)


class CallServer(Generic[C, K]):
    """Serve calls on ``config.listen``:``config.listen_port``; subclass per protocol.

    ``resolver``: share an existing AsyncResolver (not closed by the server); by default the
    server makes one from the config and closes it on :meth:`close`.
    """

    #: the program's name, for the listening line and the listener's log
    name: ClassVar[str]
    #: the protocol's logger (tests and operators filter on its name)
    log: ClassVar[logging.Logger]
    #: the peer broke the protocol: counted in ``protocol_errors``, ``protocol-error(...)``
    protocol_errors: ClassVar[tuple[type[Exception], ...]] = ()
    #: what the trust warning says happens to calls (``sent``, ``bridged``)
    routed: ClassVar[str] = "sent"

    def __init__(self, config: C, resolver: AsyncResolver | None = None) -> None:
        self.config = config
        self._own_resolver = resolver is None
        self.resolver = resolver or AsyncResolver(**config.resolver_kwargs())
        self.stats = self.new_stats()
        self._server: Listener | None = None
        self._calls: set[asyncio.Task[None]] = set()
        self._limited = LogLimiter(self.log)
        self.port: int | None = None

    # -- the protocol's part ----------------------------------------------------------------

    def new_stats(self) -> ServerStats:
        return ServerStats()

    def greeting(self) -> bytes:
        """Sent the moment a connection is accepted (a protocol where the server speaks
        first); such a connection is refused at ``max_calls`` before it is greeted."""
        return b""

    def describe(self) -> str:
        """What the listening line says about the settings (route, profiles ...)."""
        return ""

    def open_call(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  peer: str, start: float, accepted: float) -> K:
        raise NotImplementedError

    async def converse(self, call: K) -> None:
        """The call's conversation up to its routing, within ``call_timeout``."""
        raise NotImplementedError

    async def follow(self, call: K) -> None:
        """After :meth:`converse`, off the deadline (a bridged call watched to its end)."""

    async def close_call(self, call: K) -> None:
        """On the way out, whatever happened, before the connection closes (stop readers)."""

    def finished(self, call: K) -> None:
        """The call is over and counted (``call.end`` is set), just before its log line."""

    def line(self, call: K) -> str:
        """The call's log line."""
        raise NotImplementedError

    # -- the skeleton -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.resolver.open()
        greeting = self.greeting()
        max_calls = self.config.max_calls
        self._server = await start_stream_server(
            self._accept, self.config.listen, self.config.listen_port, name=self.name,
            log=self.log, greeting=greeting,
            # a greeted connection must be refused before it is greeted; one where the peer
            # speaks first is refused once it has (it then reads EOF to what it sent)
            admit=self._admit if greeting else None,
            first_byte_timeout=min(self.config.first_byte_timeout, self.config.call_timeout),
            max_connections=connection_budget(with_headroom(max_calls),
                                              f"max-calls {max_calls}", self.log))
        self.port = self._server.sockets[0].getsockname()[1]
        detail = self.describe()
        self.log.info("%s listening on %s:%s (%sresolver %s)", self.name, self.config.listen,
                      self.port, f"{detail}, " if detail else "",
                      self.resolver.config.describe())
        if self.config.trusted is None:
            self.log.warning("no trusted networks: any host on the mslookup group can answer "
                             "and have calls %s to the address it names; set trusted = <your "
                             "mesh networks> in the config file", self.routed)

    @property
    def listener(self) -> Listener | None:
        """The accepting side (its ``stats``: silent, evicted, refused, fd_exhausted)."""
        return self._server

    @property
    def active(self) -> int:
        """Calls in progress."""
        return len(self._calls)

    async def close(self, grace: float | None = None) -> None:
        """Stop accepting, let calls in progress finish for ``grace`` s, end the rest."""
        if self._server is not None:
            self._server.close()
        grace = self.config.grace if grace is None else grace
        if self._calls:
            _, pending = await asyncio.wait(set(self._calls), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        if self._own_resolver:
            await self.resolver.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _admit(self) -> bool:
        if len(self._calls) < self.config.max_calls:
            return True
        self._refused()
        return False

    def _refused(self) -> None:
        self.stats.busy += 1
        self._limited.warning("busy", "call refused: %d calls in progress (max-calls)",
                              len(self._calls))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._calls) >= self.config.max_calls:
            self._refused()
            writer.close()
            return
        self._calls.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._calls.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        now = asyncio.get_running_loop().time()
        call = self.open_call(reader, writer, peer_text(writer.get_extra_info("peername")),
                              now, accepted_at.get(now))
        self.stats.calls += 1
        try:
            async with asyncio.timeout(self.config.call_timeout):
                await self.converse(call)
            await self.follow(call)
        except TimeoutError:
            self.stats.timeouts += 1
            call.ended = "call-timeout"
        except _End as exc:
            call.ended = f"ended({exc})"
        except self.protocol_errors as exc:
            call.protocol_error = call.protocol_error or str(exc)
            call.ended = f"protocol-error({exc})"
        except DgsmError as exc:  # ours, but not the peer's fault: say so, end this call
            call.ended = f"error({type(exc).__name__}: {exc})"
            self._limited.warning("error", "error in a call from %s: %s: %s", call.peer,
                                  type(exc).__name__, exc)
        except (ConnectionError, OSError) as exc:
            call.ended = f"connection-error({exc})"
        except asyncio.CancelledError:
            call.ended = "cancelled(shutdown)"
            raise
        except Exception as exc:  # a bug: this call ends (the PBX reads EOF), the server lives
            call.ended = f"internal-error({type(exc).__name__})"
            self._limited.log(logging.ERROR, "bug", "internal error in a call from %s",
                              call.peer, exc_info=exc)
        finally:
            with contextlib.suppress(Exception):
                await self.close_call(call)
            writer.close()
            if call.protocol_error is not None:
                self.stats.protocol_errors += 1
            self.stats.count(call.result)
            call.end = asyncio.get_running_loop().time()
            self.finished(call)
            self.log.info("%s", self.line(call))


async def race(lookup: Awaitable[T], leaving: Awaitable[Any]
               ) -> tuple[asyncio.Future[T], asyncio.Future[Any], float]:
    """Run ``lookup`` while watching for the peer ``leaving``; the first to end wins.

    The other is cancelled and awaited (its outcome dropped). Returns both futures (the
    winner done; look at it with ``done()`` / ``cancelled()`` / ``result()``) and the seconds
    the lookup ran, also when the peer's leaving cut it short.
    """
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    found = asyncio.ensure_future(lookup)
    gone = asyncio.ensure_future(leaving)
    try:
        await asyncio.wait({found, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        seconds = loop.time() - t0
        losers = {f for f in (found, gone) if not f.done()}
        for f in losers:
            f.cancel()
        if losers:
            await asyncio.wait(losers)  # an outer cancel still propagates: never suppressed
            for f in losers:
                if not f.cancelled():
                    f.exception()  # retrieved: it ended as it was cancelled; not ours now
    return found, gone, seconds


def with_headroom(calls: int) -> int:
    """Connections to hold for ``calls`` calls: room for silent ones and refusals too."""
    return calls + calls // 4 + 16


def peer_text(peer: object) -> str:
    """A peer address for the log: ``host:port``."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
