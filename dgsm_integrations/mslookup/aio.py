"""The asyncio mslookup client: one multicast socket shared by any number of lookups.

How a lookup runs:

- identical queries in flight at the same time share one *flight*: one query id on the wire,
  one re-send schedule, and every answer fanned out to each caller's own :class:`Selection`
  (so each caller keeps its own min_delay/timeout). A caller that joins a flight late is first
  given the answers that already arrived;
- the query is sent at once and re-sent ``resend`` more times, evenly spread over the first
  window (``min_delay``, or ``timeout`` when min_delay is 0), so one lost UDP packet on a
  lossy link does not make a subscriber "not found". When each copy leaves is decided by
  the sans-I/O :class:`~.pacing.Pacer` (one token bucket of ``send_rate`` datagrams/s over
  all flights, first copies first, copies never merged or bunched, re-sends too late to be
  answered skipped); this module only sends what it hands out and wakes when it says. A
  lookup whose first copy the pacer held back counts its window from when it left, and one
  that found nothing after copies failed to leave on time gets one grace period of half a
  window to send them (docs/mslookup.md, "Pacing");
- the receive loop silently drops (and counts) junk, queries (our own looped back, or other
  sites'), answers from or pointing outside the trusted networks, answers naming an address
  no call or SMS can go to (:func:`~.model.unusable_reason`: unspecified, broadcast,
  multicast, IPv6 link-local, port 0, loopback unless ``allow_loopback``), and answers to
  nothing we asked. Answers are matched by the name asked (service, id, id type); the packet
  id is not required to match, since ``osmo-mslookup-client --send`` always sends id 0;
- per-packet log records are rate-limited (:mod:`dgsm_integrations._ratelimit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import socket
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass, field, fields, replace

from .._ratelimit import LogLimiter
from .errors import InvalidQuery, TransportError, WireError
from .model import Answer, Endpoint, Outcome, Result, unusable_reason
from .pacing import DEFAULT_BURST, DEFAULT_RATE, GRID, Pacer
from .query import DEFAULT_SUFFIX, Query, validate_suffix
from .selection import Selection, Timing
from .transport import (
    DEFAULT_GROUP_V4,
    DEFAULT_PORT,
    SO_RXQ_OVFL,
    MulticastConfig,
    open_socket,
)
from .wire import decode_answer, encode_query, is_answer

__all__ = ["AnswerTrace", "AsyncResolver", "Stats", "as_query", "parse_networks"]

log = logging.getLogger("dgsm.mslookup")
#: How many (site, address) pairs of unusable answers are each logged once.
_MAX_WARNED_UNUSABLE = 64

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: How many answers a flight remembers for callers that join it late.
_MAX_REMEMBERED = 64
#: Re-sends of all lookups in progress are aligned to this grid (seconds), see pacing.py.
RESEND_GRID = GRID
#: How many distinct answer packets are remembered, decoded, so that the copies every site
#: sends for each re-sent query cost a dictionary look-up instead of a decode.
_DECODED_CACHE = 4096
_ANCDATA = socket.CMSG_SPACE(4)
#: Seconds over which "every answer was dropped as untrusted" is judged (see _watch_trust).
TRUST_WINDOW = 10.0


@dataclass
class Stats:
    """Counters of one resolver (monotonic; read them, don't write them)."""

    lookups: int = 0
    coalesced: int = 0
    found: int = 0
    not_found: int = 0
    errors: int = 0
    queries_sent: int = 0
    send_errors: int = 0
    resends_deferred: int = 0
    resends_skipped: int = 0
    grace_periods: int = 0
    packets_received: int = 0
    queries_seen: int = 0
    answers_accepted: int = 0
    dropped_malformed: int = 0
    dropped_untrusted: int = 0
    dropped_unusable: int = 0
    dropped_unmatched: int = 0
    duplicates: int = 0
    kernel_drops: int = 0
    #: windows of TRUST_WINDOW s in which answers arrived and every one was dropped as
    #: untrusted (a ``trusted`` that misses the sites: every lookup is "not found")
    untrusted_only_windows: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class AnswerTrace:
    """One answer as it arrived, for tracing: who sent it and whether it is now the best."""

    query: Query
    site: str
    age: int
    v4: Endpoint | None
    v6: Endpoint | None
    won: bool
    elapsed: float


def as_query(query: str | Query) -> Query:
    """Accept a query string or a :class:`Query`; raise InvalidQuery for anything else."""
    if isinstance(query, Query):
        return query
    if isinstance(query, str):
        return Query.parse(query)
    raise InvalidQuery(f"query must be a string or Query, not {type(query).__name__}")


def parse_networks(trusted: Iterable[str | Network] | None) -> tuple[Network, ...] | None:
    """Parse a list of trusted networks (``10.0.0.0/8``, ``fd00::/8``, single addresses)."""
    if trusted is None:
        return None
    nets: list[Network] = []
    for item in trusted:
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except (ValueError, TypeError):
            raise InvalidQuery(f"invalid trusted network {item!r}") from None
    return tuple(nets)


@dataclass(eq=False)
class _Subscriber:
    selection: Selection
    deliver: Callable[[Result], None]
    on_answer: Callable[[AnswerTrace], None] | None
    flight: _Flight
    timer: asyncio.TimerHandle | None = None
    timer_at: float | None = None
    hold: float | None = None  # the end of a grace period (see _grace)
    shift: float = 0.0  # how long the pacer held the flight's first copy back


@dataclass(eq=False)
class _Flight:
    query: Query
    packet_id: int
    wire: bytes
    subscribers: set[_Subscriber] = field(default_factory=set)
    answers: list[tuple[Answer, str]] = field(default_factory=list)
    sent_ok: int = 0
    send_error: str | None = None


class AsyncResolver:
    """Look up subscribers over mslookup mDNS from asyncio code.

    >>> async with AsyncResolver(interface="127.0.0.1", min_delay=0.2) as r:
    ...     result = await r.resolve("sip.voice.12345.msisdn")

    Times are in seconds. ``min_delay`` (default 1 s, as libosmo-mslookup) is how long to
    collect answers before returning the youngest; ``timeout`` (default: min_delay) is when a
    stream of results ends; a query string's own ``[delay-][timeout]@`` (ms) overrides both.
    ``resend`` extra copies of the query are spread over the first window
    (``resend_interval`` apart, default evenly), and all lookups together send at most
    ``send_rate`` datagrams per second (:mod:`.pacing`; first copies first). ``trusted``,
    if given, is a list of networks:
    answers sent from elsewhere, or naming an address elsewhere, are dropped. Answers naming
    an address no call or SMS can go to are always dropped (see
    :func:`~.model.unusable_reason`); loopback addresses only pass with ``allow_loopback``
    (tests and the lab, where every site is on one host).
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
        resend: int = 4,
        resend_interval: float | None = None,
        trusted: Iterable[str | Network] | None = None,
        allow_loopback: bool = False,
        send_rate: float = DEFAULT_RATE,
    ) -> None:
        self.config = MulticastConfig(group, port, interface, ttl)
        self.suffix = validate_suffix(suffix)
        Timing(min_delay, timeout or 0.0)  # validates the ranges
        self.min_delay = float(min_delay)
        self.timeout = None if timeout is None else float(timeout)
        if not 0 <= resend <= 20:
            raise InvalidQuery(f"resend must be 0..20, not {resend}")
        if resend_interval is not None and not 0 < resend_interval <= 60:
            raise InvalidQuery(f"resend_interval must be in (0, 60] s, not {resend_interval}")
        if not (isinstance(send_rate, int | float) and 10 <= send_rate <= 100_000):
            raise InvalidQuery(f"send_rate must be 10..100000 datagrams/s, not {send_rate}")
        self.resend = resend
        self.resend_interval = resend_interval
        self.send_rate = float(send_rate)
        self._pacer = Pacer(self.send_rate, DEFAULT_BURST)
        self._send_timer: asyncio.TimerHandle | None = None
        self._send_timer_at = 0.0
        self.trusted = parse_networks(trusted)
        self.allow_loopback = bool(allow_loopback)
        self.stats = Stats()
        #: set while every answer of the last TRUST_WINDOW s was dropped as untrusted
        self.trust_warning: str | None = None
        self._trust_mark: tuple[float, int, int] | None = None
        self._limited = LogLimiter(log)
        self._warned_unusable: set[tuple[str, str]] = set()
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flights: dict[tuple[object, ...], _Flight] = {}
        self._decoded: dict[bytes, Answer | None] = {}
        self._backlog: list[tuple[bytes, str]] = []
        self._closed = False

    # -- life cycle ------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the multicast socket (done implicitly by the first lookup)."""
        self._open_now()

    def _open_now(self) -> None:
        if self._closed:
            raise TransportError("resolver is closed")
        if self._sock is not None:
            return
        loop = asyncio.get_running_loop()
        sock = open_socket(self.config)
        loop.add_reader(sock.fileno(), self._on_readable)
        self._sock, self._loop = sock, loop
        self._trust_mark = (loop.time(), self.stats.dropped_untrusted,
                            self.stats.answers_accepted)
        log.debug("mslookup client listening on %s", self.config.describe())

    async def close(self) -> None:
        """End every lookup in progress (with an error result) and close the socket."""
        self._closed = True
        self._limited.flush()
        loop = self._loop
        for flight in list(self._flights.values()):
            for sub in list(flight.subscribers):
                now = loop.time() if loop else 0.0
                self._deliver(sub, [sub.selection.cancel(now, "resolver closed")])
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
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
        md = self.min_delay if min_delay is None else min_delay
        to = self.timeout if timeout is None else timeout
        return Timing.of(query, md, to)

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
        async with contextlib.aclosing(
            self.stream(query, min_delay=min_delay, timeout=timeout, on_answer=on_answer)
        ) as results:
            async for result in results:
                if result.outcome is not Outcome.NONE:
                    return result
        raise AssertionError("a lookup stream ended without a last result")  # pragma: no cover

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
        timing = self.timing(q, min_delay, timeout)
        self._open_now()
        queue: asyncio.Queue[Result] = asyncio.Queue()
        sub = self._subscribe(q, timing, queue.put_nowait, on_answer)
        try:
            while True:
                result = await queue.get()
                yield result
                if result.last:
                    return
        finally:
            self._finish(sub)

    # -- internals -------------------------------------------------------------------------

    def _subscribe(self, query: Query, timing: Timing, deliver: Callable[[Result], None],
                   on_answer: Callable[[AnswerTrace], None] | None) -> _Subscriber:
        assert self._loop is not None
        now = self._loop.time()
        self.stats.lookups += 1
        flight = self._flights.get(query.key)
        if flight is None:
            packet_id = secrets.randbits(16)
            flight = _Flight(query, packet_id, encode_query(query, packet_id, self.suffix))
            self._flights[query.key] = flight
        else:
            self.stats.coalesced += 1
        sub = _Subscriber(Selection(query, timing, now), deliver, on_answer, flight)
        flight.subscribers.add(sub)
        for answer, site in list(flight.answers):
            self._feed(sub, answer, site, now)
        if not sub.selection.done:
            self._arm(sub)
            self._schedule_sends(flight, timing, now)
        return sub

    def _schedule_sends(self, flight: _Flight, timing: Timing, now: float) -> None:
        self._pacer.schedule(flight.query.key, flight.wire, now, timing.window,
                             self.resend + 1, self.resend_interval)
        self._send_due()

    def _on_send_timer(self) -> None:
        self._send_timer = None
        self._send_due()

    def _send_due(self) -> None:
        """Send what the pacer hands out now; wake again when it says."""
        assert self._loop is not None and self._sock is not None
        pacer = self._pacer
        deferred, skipped = pacer.deferred, pacer.skipped
        now = self._loop.time()
        out = pacer.due(now)
        if out:
            # Empty the socket first: when thousands of lookups start in one go, their
            # answers must not overflow it while we are still sending. They are only buffered
            # here and decoded in the next pass of the loop, so later lookups start at once.
            self._drain(defer=True)
            destination = self.config.destination()
            for key, wire in out:
                flight = self._flights.get(key)  # type: ignore[call-overload]
                if flight is None:  # pragma: no cover (the pacer forgets ended flights)
                    continue
                if flight.sent_ok == 0 and flight.send_error is None:
                    self._first_copy_left(flight, now)
                try:
                    self._sock.sendto(wire, destination)
                except OSError as exc:
                    self.stats.send_errors += 1
                    flight.send_error = f"cannot send query: {exc.strerror or exc}"
                    self._limited.warning("send error", "%s: %s", flight.query.domain,
                                          flight.send_error)
                else:
                    self.stats.queries_sent += 1
                    flight.sent_ok += 1
        self.stats.resends_deferred += pacer.deferred - deferred
        self.stats.resends_skipped += pacer.skipped - skipped
        self._arm_send()

    def _first_copy_left(self, flight: _Flight, now: float) -> None:
        """A lookup asks the network when its first copy leaves: if the pacer held it back
        (a burst of lookups), its min_delay and timeout count from then. Otherwise a site
        answering a few ms later than another could miss a deadline that falls just after
        the query went out, and an older site would win."""
        for sub in list(flight.subscribers):
            held = now - sub.selection.start
            if held > RESEND_GRID:
                sub.shift = held
                self._arm(sub)

    def _arm_send(self) -> None:
        assert self._loop is not None
        wake = self._pacer.next_wakeup()
        timer = self._send_timer
        if timer is not None:
            if wake is not None and self._send_timer_at <= wake:
                return  # an early wake-up costs one look at the pacer
            timer.cancel()
            self._send_timer = None
        if wake is not None:
            self._send_timer = self._loop.call_at(wake, self._on_send_timer)
            self._send_timer_at = wake

    def _arm(self, sub: _Subscriber) -> None:
        """Make sure a timer fires at the selection's current deadline."""
        assert self._loop is not None
        deadline = sub.selection.deadline
        if deadline is not None:
            deadline += sub.shift
            if sub.hold is not None:
                deadline = max(deadline, sub.hold)
        if sub.timer is not None:
            if sub.timer_at == deadline:
                return
            sub.timer.cancel()
            sub.timer = None
        if deadline is not None:
            sub.timer = self._loop.call_at(deadline, self._tick, sub)
            sub.timer_at = deadline

    def _tick(self, sub: _Subscriber) -> None:
        assert self._loop is not None
        sub.timer = None
        now = self._loop.time()
        deadline = sub.selection.deadline
        if deadline is not None:
            deadline += sub.shift
        if deadline is not None and now < deadline < now + 0.005:
            now = deadline  # call_at may fire up to one clock tick early
        # Answers already waiting (in the socket, or read but not yet decoded) arrived before
        # this lookup's deadline was looked at: count them. Under CPU load the loop wakes
        # late, and answers to the last copies would otherwise be dropped as unmatched.
        self._drain(defer=False)
        if sub.selection.done:
            return
        if self._grace(sub, now):
            return
        self._deliver(sub, sub.selection.tick(now))

    def _grace(self, sub: _Subscriber, now: float) -> bool:
        """At the end of a lookup that found nothing, make up for copies that did not leave on
        time (the process could not run: CPU starved, or the pacer held them back): send
        that many again over half a window more, once, and end the lookup after it.

        "Not found" then means what it says: every promised copy had its chance. Measured on
        the lab's 20%-loss test with two busy loops on the two cores (docs/mslookup.md).
        """
        selection = sub.selection
        timing = selection.timing
        final = (timing.timeout <= timing.min_delay
                 or now >= selection.start + timing.timeout - 0.005)
        if sub.hold is not None or selection.best is not None or not final:
            return False
        flight = sub.flight
        missed = self._pacer.missed(flight.query.key)
        if not missed:
            return False
        extra = timing.window / 2
        sub.hold = now + extra
        self._pacer.schedule(flight.query.key, flight.wire, now, extra, missed)
        self.stats.grace_periods += 1
        self._send_due()
        self._arm(sub)
        return True

    def _deliver(self, sub: _Subscriber, results: list[Result]) -> None:
        for result in results:
            if result.last:
                if result.outcome is Outcome.NOT_FOUND and sub.flight.sent_ok == 0:
                    result = replace(result, outcome=Outcome.ERROR,
                                     reason=sub.flight.send_error or "no query could be sent")
                if result.outcome in (Outcome.FOUND, Outcome.NONE):
                    self.stats.found += 1
                elif result.outcome is Outcome.NOT_FOUND:
                    self.stats.not_found += 1
                else:
                    self.stats.errors += 1
                self._watch_trust()
            sub.deliver(result)
        if sub.selection.done:
            self._finish(sub)
        else:
            self._arm(sub)  # the deadline may have moved, with or without a result

    def _watch_trust(self) -> None:
        """When a lookup ends: if every answer of the last TRUST_WINDOW s was dropped as
        untrusted, say so once (and again only after answers were accepted in between)."""
        assert self._loop is not None
        now, stats = self._loop.time(), self.stats
        assert self._trust_mark is not None  # set when the socket was opened
        start, dropped0, accepted0 = self._trust_mark
        if now - start < TRUST_WINDOW:
            return
        dropped = stats.dropped_untrusted - dropped0
        accepted = stats.answers_accepted - accepted0
        self._trust_mark = (now, stats.dropped_untrusted, stats.answers_accepted)
        if dropped and not accepted:
            stats.untrusted_only_windows += 1
            if self.trust_warning is None:
                nets = ",".join(str(n) for n in self.trusted or ())
                self.trust_warning = (
                    f"all {dropped} answers in the last {now - start:.0f} s dropped as "
                    f"untrusted: check trusted= ({nets}); the sites' addresses, and the "
                    "addresses they announce, must be inside it")
                log.warning("mslookup: %s", self.trust_warning)
        elif accepted and self.trust_warning is not None:
            log.warning("mslookup: answers are accepted again (%d in the last %.0f s)",
                        accepted, now - start)
            self.trust_warning = None

    def _finish(self, sub: _Subscriber) -> None:
        if sub.timer is not None:
            sub.timer.cancel()
            sub.timer = None
        flight = sub.flight
        flight.subscribers.discard(sub)
        if not flight.subscribers and self._flights.get(flight.query.key) is flight:
            self._pacer.cancel(flight.query.key)
            del self._flights[flight.query.key]

    def _feed(self, sub: _Subscriber, answer: Answer, site: str, now: float) -> None:
        before = sub.selection.best
        results = sub.selection.feed(answer, now, site)
        if sub.on_answer is not None:
            won = sub.selection.best is not before  # this answer became the best
            trace = AnswerTrace(answer.query, site, answer.age, answer.v4, answer.v6,
                                won, now - sub.selection.start)
            try:
                sub.on_answer(trace)
            except Exception:
                self._limited.log(logging.ERROR, "on_answer", "on_answer callback failed",
                                  exc_info=True)
        self._deliver(sub, results)

    def _is_trusted(self, host: str) -> bool:
        assert self.trusted is not None
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted)

    def _warn_unusable(self, answer: Answer, source: str, endpoint: Endpoint,
                       reason: str) -> None:
        key = (source, endpoint.host)
        if key in self._warned_unusable or len(self._warned_unusable) >= _MAX_WARNED_UNUSABLE:
            self._limited.debug("unusable address", "dropped answer from %s naming %s", source,
                                endpoint)
            return
        self._warned_unusable.add(key)
        log.warning("dropped the answer from %s for %s: it names %s, %s; no call or SMS can "
                    "go there (logged once per site and address; counted as dropped_unusable)",
                    source, answer.query.domain, endpoint, reason)

    def _remember(self, data: bytes, answer: Answer | None) -> None:
        decoded = self._decoded
        if len(decoded) >= _DECODED_CACHE:
            del decoded[next(iter(decoded))]  # oldest first (dicts keep insertion order)
        decoded[data] = answer

    def _on_readable(self) -> None:
        self._drain(defer=False)

    def _process_backlog(self) -> None:
        backlog, self._backlog = self._backlog, []
        for data, source in backlog:
            self._datagram(data, source)

    def _drain(self, defer: bool) -> None:
        sock = self._sock
        if sock is None:
            return
        if not defer and self._backlog:
            self._process_backlog()  # keep arrival order
        for _ in range(256):
            try:
                data, ancdata, _flags, addr = sock.recvmsg(2048, _ANCDATA)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._limited.debug("recvmsg", "recvmsg failed: %s", exc)
                return
            for level, kind, value in ancdata:
                if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(value) >= 4:
                    drops = int.from_bytes(value[:4], "little")
                    if drops > self.stats.kernel_drops:
                        self._limited.warning(
                            "kernel drops", "kernel dropped %d mslookup datagrams (receive "
                            "buffer full; %d in all)", drops - self.stats.kernel_drops, drops)
                        self.stats.kernel_drops = drops
            source = str(addr[0]).split("%", 1)[0]
            if defer:
                if not self._backlog:
                    assert self._loop is not None
                    self._loop.call_soon(self._process_backlog)
                self._backlog.append((data, source))
            else:
                self._datagram(data, source)

    def _datagram(self, data: bytes, source: str) -> None:
        stats = self.stats
        stats.packets_received += 1
        kind = is_answer(data)
        if kind is None:
            stats.dropped_malformed += 1
            return
        if not kind:
            stats.queries_seen += 1
            return
        if self.trusted is not None and not self._is_trusted(source):
            stats.dropped_untrusted += 1
            self._limited.debug("untrusted source", "dropped answer from untrusted %s", source)
            return
        if data in self._decoded:
            stats.duplicates += 1
            cached = self._decoded[data]
            if cached is None:
                stats.dropped_malformed += 1
                return
            answer = cached
        else:
            try:
                answer = decode_answer(data, self.suffix)
            except WireError as exc:
                stats.dropped_malformed += 1
                self._limited.debug("malformed answer", "dropped malformed answer from %s: %s",
                                    source, exc)
                self._remember(data, None)
                return
            self._remember(data, answer)
        flight = self._flights.get(answer.query.key)
        if flight is None:
            stats.dropped_unmatched += 1
            return
        if self.trusted is not None and not all(
            self._is_trusted(e.host) for e in (answer.v4, answer.v6) if e is not None
        ):
            stats.dropped_untrusted += 1
            self._limited.debug("untrusted address",
                                "dropped answer from %s naming an untrusted address", source)
            return
        for endpoint in (answer.v4, answer.v6):
            reason = None if endpoint is None else unusable_reason(
                endpoint, allow_loopback=self.allow_loopback)
            if reason is not None:
                assert endpoint is not None
                stats.dropped_unusable += 1
                self._warn_unusable(answer, source, endpoint, reason)
                return
        stats.answers_accepted += 1
        assert self._loop is not None
        now = self._loop.time()
        if len(flight.answers) < _MAX_REMEMBERED:
            flight.answers.append((answer, source))
        for sub in list(flight.subscribers):
            self._feed(sub, answer, source, now)
