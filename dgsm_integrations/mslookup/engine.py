"""The whole mslookup client as a sans-I/O state machine on an injected clock.

An :class:`Engine` owns everything a lookup is, except the socket and the clock: flights
(identical queries in flight share one), the re-send schedule and pacing (:mod:`.pacing`),
the triage of every datagram that arrives (junk, queries, untrusted, unusable, unmatched,
duplicates) with its counters, libosmo-mslookup's selection (:mod:`.selection`), the rule
that a lookup none of whose queries could be sent is an error and not "not found", the
grace period after copies that did not leave on time, and the watch on ``trusted``.
A driver (asyncio in :mod:`.aio`; threads and ``select()`` in :mod:`.blocking`, which the
per-call AGI script runs too) is glue; it does exactly this, in this order, whenever it
wakes::

    now = clock()
    for data, source in what the socket holds:   # everything that arrived by now
        engine.receive(data, source, now)
    for flight, datagram in engine.due(now):     # what the pacer lets leave now
        try: send(datagram)
        except OSError as exc: engine.send_failed(flight, str(exc))
    engine.advance(now)                          # deadlines: results, ends
    sleep until engine.next_wakeup(), or the socket is readable

Reading the socket before the deadlines are judged matters: a driver that was not scheduled
for a while (a loaded PBX) must count answers that were waiting for it, not call them late.

Results reach each lookup's ``deliver`` callback from inside these calls, in order; the last
has ``last=True``. Nothing here blocks, sleeps, reads a clock or touches a socket; a test
checks that this module and the modules it uses import no socket, asyncio, select,
threading or time.
"""

from __future__ import annotations

import heapq
import itertools
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from typing import Protocol

from .errors import InvalidQuery, InvalidSetting, WireError
from .model import Answer, Endpoint, Network, Outcome, Result, parse_networks, trusted_by
from .model import unusable_reason as _unusable_reason
from .pacing import DEFAULT_BURST, DEFAULT_RATE, GRID, Pacer
from .query import DEFAULT_SUFFIX, Query, validate_suffix
from .selection import Selection, Timing
from .wire import HEADER_LEN, decode_answer, decode_answer_to, encode_query, query_name

__all__ = ["DEFAULT_RESEND", "AnswerTrace", "Engine", "Lookup", "Reporter", "Settings",
           "Stats"]

#: Extra copies of each query by default (see docs/mslookup.md, "What the re-sends buy").
DEFAULT_RESEND = 7
#: Seconds over which "every answer was dropped as untrusted" is judged.
TRUST_WINDOW = 10.0
#: How many distinct answers (datagram and sender) a flight remembers: for callers that
#: join it late, and so that the copies every site sends for each re-sent query cost a
#: hash comparison instead of a decode.
_MAX_SEEN = 64
#: How many (site, address) pairs of unusable answers are each logged once.
_MAX_WARNED_UNUSABLE = 64
#: Remembered verdicts on source addresses (trusted or not).
_MAX_SOURCES = 1024
#: A driver's wake-up this close before a deadline counts as the deadline.
_EARLY = 0.001
#: A lookup whose first copy left late keeps at least this share of its window after it...
FLOOR_SHARE = 0.25
#: ... and at least this many times the answer delay seen lately (up to a whole window):
#: sites that answer slowly must not lose to an older one that answered first.
ANSWER_HEADROOM = 2.0
#: How fast the answer delay seen lately is forgotten: its half-life, in seconds.
DELAY_HALF_LIFE = 2.0
#: When at least this share of the answers a site owes went missing lately (its link or its
#: socket loses datagrams), at any one site that answered, a lookup whose re-sends the
#: bucket held back waits for them instead of losing them...
LOSS_TO_WAIT = 0.05
#: ... for at most this many windows after its first copy left...
WAIT_WINDOWS = 3.0
#: ... and, once its last copy has left, this many times the round trip seen lately (at
#: least ANSWER_MIN_WAIT) for that copy's answers.
ROUND_TRIP_HEADROOM = 2.0
ANSWER_MIN_WAIT = 0.05
#: How fast the loss seen lately is forgotten: its half-life, in seconds. A site's loss is
#: forgotten once less than LOSS_MIN_OWED answers' worth of what it owed is left.
LOSS_HALF_LIFE = 10.0
LOSS_MIN_OWED = 1.0
#: A site that loses datagrams and answers this much (seconds) later than its fastest round
#: trip lately (restarted every QUEUE_BASE_MEMORY s) sits behind a queue that fills: a link
#: thinner than the bursts need. The engine says so (rate-limited); it does not slow down
#: by itself (docs/mslookup.md, "A thin link").
QUEUE_DELAY = 0.1
QUEUE_BASE_MEMORY = 60.0

# verdicts remembered per distinct answer
_OK, _MALFORMED, _UNTRUSTED, _UNUSABLE = range(4)
_ID = struct.Struct("!H")


class Reporter(Protocol):
    """Where the engine's log records go (the drivers pass a rate-limited logger)."""

    def warning(self, kind: str, msg: str, *args: object) -> object: ...

    def debug(self, kind: str, msg: str, *args: object) -> object: ...

    def once(self, msg: str, *args: object) -> object:
        """A record the engine itself already bounds (once per site, or per change)."""


class _Silent:
    def warning(self, kind: str, msg: str, *args: object) -> object:
        return None

    def debug(self, kind: str, msg: str, *args: object) -> object:
        return None

    def once(self, msg: str, *args: object) -> object:
        return None


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
    #: lookups whose deadlines moved out: their first copy left late (a burst), so they
    #: waited FLOOR_SHARE of a window, or twice the answer delay seen lately, after it
    waits_extended: int = 0
    #: lookups that waited for re-sends the bucket held back, on a network that loses
    #: datagrams (docs/mslookup.md, "Pacing")
    waits_for_copies: int = 0
    #: lookups that waited past their deadline for the answers to their latest copy, on a
    #: network that loses datagrams where round trips take longer than the window leaves
    #: them (a slow lossy link; docs/mslookup.md, "Pacing")
    waits_for_answers: int = 0
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


@dataclass(frozen=True, slots=True)
class Settings:
    """What every lookup of one engine shares; validated here, once, for every driver.

    ``min_delay`` / ``timeout`` are defaults (a query string's own ``[delay-][timeout]@``
    and per-call values override them); ``resend`` extra copies of each query are spread
    over the first window (``resend_interval`` apart, default evenly); all lookups together
    send at most ``send_rate`` datagrams per second, ``burst`` at once (:mod:`.pacing`).
    ``trusted``: answers sent from, or naming, an address outside these networks are
    dropped. ``allow_loopback``: answers naming 127.0.0.0/8 or ::1 are accepted (a lab).
    """

    suffix: str = DEFAULT_SUFFIX
    min_delay: float = 1.0
    timeout: float | None = None
    resend: int = DEFAULT_RESEND
    resend_interval: float | None = None
    trusted: tuple[Network, ...] | None = None
    allow_loopback: bool = False
    send_rate: float = DEFAULT_RATE
    burst: int = DEFAULT_BURST

    def __post_init__(self) -> None:
        try:
            validate_suffix(self.suffix)
            Timing(self.min_delay, self.timeout or 0.0)  # validates the ranges
        except InvalidQuery as exc:  # the same rules as a query's own, but this is a setting
            raise InvalidSetting(str(exc)) from None
        if isinstance(self.resend, bool) or not (isinstance(self.resend, int)
                                                 and 0 <= self.resend <= 20):
            raise InvalidSetting(f"resend must be 0..20, not {self.resend}")
        ri = self.resend_interval
        if ri is not None and not (isinstance(ri, int | float) and 0 < ri <= 60):
            raise InvalidSetting(f"resend_interval must be in (0, 60] s, not {ri}")
        rate = self.send_rate
        if isinstance(rate, bool) or not (isinstance(rate, int | float)
                                          and 10 <= rate <= 100_000):
            raise InvalidSetting(f"send_rate must be 10..100000 datagrams/s, not {rate}")
        if isinstance(self.burst, bool) or not (isinstance(self.burst, int)
                                                and 1 <= self.burst <= 10_000):
            raise InvalidSetting(f"burst must be 1..10000 datagrams, not {self.burst}")

    @classmethod
    def of(cls, *, suffix: str = DEFAULT_SUFFIX, min_delay: float = 1.0,
           timeout: float | None = None, resend: int = DEFAULT_RESEND,
           resend_interval: float | None = None,
           trusted: Iterable[str | Network] | None = None, allow_loopback: bool = False,
           send_rate: float = DEFAULT_RATE, burst: int = DEFAULT_BURST) -> Settings:
        """Settings from user-level values (``trusted`` as strings); raises InvalidSetting."""
        if not isinstance(min_delay, int | float) or isinstance(min_delay, bool):
            raise InvalidSetting(f"min_delay must be a number of seconds, not {min_delay!r}")
        if timeout is not None and (not isinstance(timeout, int | float)
                                    or isinstance(timeout, bool)):
            raise InvalidSetting(f"timeout must be a number of seconds, not {timeout!r}")
        return cls(suffix, float(min_delay), None if timeout is None else float(timeout),
                   resend, resend_interval, parse_networks(trusted), bool(allow_loopback),
                   float(send_rate), burst)

    def timing(self, query: Query, min_delay: float | None = None,
               timeout: float | None = None) -> Timing:
        """The effective timing of ``query`` with these per-call overrides."""
        md = self.min_delay if min_delay is None else min_delay
        to = self.timeout if timeout is None else timeout
        return Timing.of(query, md, to)


class Lookup:
    """One caller's lookup: its own selection and timing, on a (maybe shared) flight."""

    __slots__ = ("deliver", "due_at", "flight", "hold", "on_answer", "selection", "shift",
                 "waited")

    def __init__(self, selection: Selection, deliver: Callable[[Result], None],
                 on_answer: Callable[[AnswerTrace], None] | None, flight: _Flight) -> None:
        self.selection = selection
        self.deliver = deliver
        self.on_answer = on_answer
        self.flight: _Flight | None = flight  # None once detached
        self.due_at: float | None = None  # the deadline the engine's heap holds for it
        self.hold: float | None = None  # the end of a grace period
        self.shift = 0.0  # how far its deadlines moved because its first copy left late
        self.waited = False  # ... or because it waited for held-back re-sends

    @property
    def done(self) -> bool:
        return self.flight is None


class _Flight:
    __slots__ = ("first_at", "lookups", "name", "query", "seen", "send_error", "sent_at",
                 "sent_ok", "traced", "waited", "wire")

    def __init__(self, query: Query, name: bytes, wire: bytes) -> None:
        self.query = query
        self.name = name  # the question's name, as an answer repeats it: the flight's key
        # copy 0; copy k carries its random id plus k (OsmoHLR echoes it)
        self.wire = wire
        self.lookups: list[Lookup] = []
        # distinct answers: (hash of the datagram after its id, sender, decoded answer,
        # verdict, the copies it answered as a bit mask). The hash, not the datagram: 200
        # bytes less per answer in flight. Two datagrams from one sender to one flight whose
        # 64-bit hashes (keyed, per process) agree are taken as copies: by chance 1 in
        # 2**64; on purpose only by whoever can send from that site's address, who could as
        # well send any answer.
        self.seen: list[tuple[int, str, Answer | None, int, int]] = []
        # when each copy was handed to the driver (their number: the copies handed out);
        # mostly one float object shared by every datagram of one wake-up
        self.sent_at: list[float] = []
        self.first_at: float | None = None  # when the first copy was handed out
        self.sent_ok = 0  # ... and not reported failed
        self.send_error: str | None = None
        self.traced = False  # a lookup of it wants every answer (on_answer)
        self.waited = False  # its lookups wait for held-back re-sends


def _decayed(value: float, since: float, now: float, half_life: float) -> float:
    """``value`` as of ``since``, halved every ``half_life`` seconds until ``now``."""
    if value and now > since:
        factor: float = 0.5 ** ((now - since) / half_life)
        return value * factor
    return value


def _random_id() -> int:
    return int.from_bytes(os.urandom(2), "big")


def _name_at(data: bytes) -> bytes | None:
    """The bytes from an answer's first record name up to its first zero byte: if they are
    one of our flights' names, they are that record's name (our names' labels hold no zero
    byte); None if there is no zero byte, or none after a first label."""
    end = data.find(b"\x00", HEADER_LEN, HEADER_LEN + 256)
    return data[HEADER_LEN:end + 1] if end > HEADER_LEN else None


class Engine:
    """The lookups of one mslookup client socket, on the driver's clock (seconds)."""

    def __init__(self, settings: Settings | None = None, *, now: float = 0.0,
                 report: Reporter | None = None,
                 packet_id: Callable[[], int] = _random_id) -> None:
        self.settings = settings = settings or Settings()
        self.stats = Stats()
        #: set while every answer of the last TRUST_WINDOW s was dropped as untrusted
        self.trust_warning: str | None = None
        self._report: Reporter = report or _Silent()
        self._packet_id = packet_id
        self._pacer = Pacer(settings.send_rate, settings.burst, now=now)
        # by the question's name on the wire: one per (service, id, id type), and what an
        # answer's first record carries
        self._flights: dict[bytes, _Flight] = {}
        self._deadlines: list[tuple[float, int, Lookup]] = []
        self._seq = itertools.count()
        self._sources: dict[str, bool] = {}
        self._hosts: dict[str, str] = {}
        self._warned_unusable: set[tuple[str, str]] = set()
        self._trust_mark = (now, 0, 0)
        self._delay = 0.0  # the slowest answer seen lately (from its flight's first copy)...
        self._delay_at = now  # ... as of then
        self._rtt = 0.0  # the slowest round trip of a copy seen lately (by its id)...
        self._rtt_at = now  # ... as of then
        # by site: [answers missing, answers owed, as of then] lately (decayed), and [its
        # fastest round trip since, since] (the round trip without a queue), of the sites
        # that answered; the oldest goes first when the table is full
        self._loss: dict[str, list[float]] = {}
        self._lossy_sites: dict[str, None] = {}  # where the share missing >= LOSS_TO_WAIT

    def __len__(self) -> int:
        """Flights in progress."""
        return len(self._flights)

    # -- what a driver calls ----------------------------------------------------------------

    def start(self, query: Query, now: float, deliver: Callable[[Result], None], *,
              timing: Timing | None = None,
              on_answer: Callable[[AnswerTrace], None] | None = None) -> Lookup:
        """Begin a lookup; its results go to ``deliver``. An identical query in flight is
        joined (one query on the wire) and its answers so far are given at once."""
        timing = timing or self.settings.timing(query)
        self.stats.lookups += 1
        name = query_name(query, self.settings.suffix)
        flight = self._flights.get(name)
        if flight is None:
            wire = encode_query(query, self._packet_id(), name=name)
            flight = self._flights[name] = _Flight(query, name, wire)
        else:
            self.stats.coalesced += 1
        lookup = Lookup(Selection(query, timing, now), deliver, on_answer, flight)
        flight.lookups.append(lookup)
        flight.traced = flight.traced or on_answer is not None
        for _data, source, answer, verdict, _heard in flight.seen:
            if verdict == _OK and answer is not None and not lookup.done:
                self._feed(lookup, answer, source, now)
        if not lookup.done:
            self._arm(lookup)
            s = self.settings
            self._pacer.schedule(flight, flight.wire, now, timing.window, s.resend + 1,
                                 s.resend_interval)
        return lookup

    def cancel(self, lookup: Lookup, now: float, reason: str | None = None) -> None:
        """End a lookup: with an error result ``reason``, or silently (its caller left)."""
        if lookup.done:
            return
        if reason is not None:
            self._deliver(lookup, [lookup.selection.cancel(now, reason)], now)
        self._detach(lookup)

    def close(self, now: float, reason: str = "resolver closed") -> None:
        """End every lookup with an error result."""
        for flight in list(self._flights.values()):
            for lookup in list(flight.lookups):
                self.cancel(lookup, now, reason)

    def receive(self, data: bytes, source: str, now: float) -> None:
        """One datagram from the group, sent from ``source`` (an address), arrived by ``now``.
        Junk, queries and unwanted answers are counted and dropped; never raises."""
        stats = self.stats
        stats.packets_received += 1
        if len(data) < HEADER_LEN:
            stats.dropped_malformed += 1
            return
        if not data[2] & 0x80:
            stats.queries_seen += 1
            return
        if self.settings.trusted is not None and not self._source_trusted(source):
            stats.dropped_untrusted += 1
            self._report.debug("untrusted source", "dropped answer from untrusted %s", source)
            return
        name = _name_at(data)
        flight = None if name is None else self._flights.get(name)
        if flight is None:
            self._unmatched(data, source, name, now)
            return
        # one string per site for everything it sent (flights and selections keep it):
        # 58 bytes less for each answer in flight
        known = self._hosts.get(source)
        if known is None:
            if len(self._hosts) >= _MAX_SOURCES:
                self._hosts.clear()
            known = self._hosts[source] = source
        source = known
        first_of_site = True
        # which copy it answers (its id); the rest of it is the answer, the same for all
        wire = flight.wire
        copy = ((data[0] << 8 | data[1]) - (wire[0] << 8 | wire[1])) & 0xFFFF
        bit = 1 << copy if copy < len(flight.sent_at) else 0
        digest = hash(data[2:])
        seen_list = flight.seen
        site_at = -1  # the site's first entry: it keeps the copies the site answered
        for i in range(len(seen_list)):
            seen = seen_list[i]
            if seen[1] != source:
                continue
            if site_at < 0:
                site_at = i
                first_of_site = False
            if seen[0] == digest:
                # a copy of an answer already judged (and, if accepted, already given to
                # every lookup of the flight: only a trace has anything to learn from it)
                stats.duplicates += 1
                answer, verdict = seen[2], seen[3]
                if verdict == _OK and answer is not None:
                    stats.answers_accepted += 1
                    if bit:
                        self._heard(flight, seen_list, site_at, bit, now)
                    if flight.traced:
                        self._fan_out(flight, answer, source, now)
                else:
                    self._count_drop(verdict)
                return
        answer, verdict = self._judge(data, source, flight)
        if len(seen_list) < _MAX_SEEN:
            seen_list.append((digest, source, answer, verdict, 0))
            if site_at < 0:
                site_at = len(seen_list) - 1
        if verdict != _OK or answer is None:
            self._count_drop(verdict)
            return
        stats.answers_accepted += 1
        if bit and site_at >= 0:
            self._heard(flight, seen_list, site_at, bit, now)
        if first_of_site and flight.first_at is not None:
            self._note_delay(now - flight.first_at, now)
        self._fan_out(flight, answer, source, now)

    def _fan_out(self, flight: _Flight, answer: Answer, source: str, now: float) -> None:
        lookups = flight.lookups
        for lookup in lookups[:] if len(lookups) > 1 else lookups:
            self._feed(lookup, answer, source, now)

    def _count_drop(self, verdict: int) -> None:
        stats = self.stats
        if verdict == _MALFORMED:
            stats.dropped_malformed += 1
        elif verdict == _UNTRUSTED:
            stats.dropped_untrusted += 1
        else:
            stats.dropped_unusable += 1

    def kernel_drops(self, total: int) -> None:
        """The socket's count of datagrams the kernel dropped at a full receive buffer."""
        if total > self.stats.kernel_drops:
            self._report.warning(
                "kernel drops", "kernel dropped %d mslookup datagrams (receive buffer full; "
                "%d in all)", total - self.stats.kernel_drops, total)
            self.stats.kernel_drops = total

    def due(self, now: float) -> list[tuple[_Flight, bytes]]:
        """The datagrams to send now, in order (each counted as sent unless the driver then
        reports :meth:`send_failed`)."""
        pacer = self._pacer
        deferred, skipped = pacer.deferred, pacer.skipped
        out: list[tuple[_Flight, bytes]] = []
        for key, wire in pacer.due(now, self._first_copy_left, self._late_copy):
            flight = key
            assert isinstance(flight, _Flight)
            sent_at = flight.sent_at
            copy = len(sent_at)
            if copy:  # each copy its own id: the answers then tell which copies were lost
                wire = _ID.pack(((wire[0] << 8 | wire[1]) + copy) & 0xFFFF) + wire[2:]
            sent_at.append(now)
            flight.sent_ok += 1
            out.append((flight, wire))
            if flight.waited and not pacer.pending(flight):
                self._copies_left(flight, now)
        self.stats.queries_sent += len(out)
        self.stats.resends_deferred += pacer.deferred - deferred
        self.stats.resends_skipped += pacer.skipped - skipped
        return out

    def send_failed(self, flight: _Flight, error: str) -> None:
        """A datagram :meth:`due` handed out could not be sent."""
        self.stats.queries_sent -= 1
        self.stats.send_errors += 1
        flight.sent_ok -= 1
        flight.send_error = f"cannot send query: {error}"
        self._report.warning("send error", "%s: %s", flight.query.domain, flight.send_error)

    def advance(self, now: float) -> None:
        """Deliver what is due by ``now``: results at min_delay and timeout, ends."""
        heap = self._deadlines
        while heap and heap[0][0] <= now + _EARLY:
            at, _seq, lookup = heapq.heappop(heap)
            if lookup.due_at != at or lookup.done:
                continue  # moved or ended since
            lookup.due_at = None
            flight = lookup.flight
            if flight is not None and not flight.sent_at:
                continue  # not asked yet (the pacer holds it): armed when its copy leaves
            if flight is not None and self._extend(lookup, flight, now):
                continue  # sites answer slowly now: it waits for them
            if flight is not None and self._wait_for_copies(lookup, flight, now):
                continue  # datagrams get lost, and its re-sends are still to leave
            when = max(now, at)
            if self._grace(lookup, when):
                continue
            self._deliver(lookup, lookup.selection.tick(when), when)

    def next_wakeup(self) -> float | None:
        """When :meth:`due` or :meth:`advance` next has something to do (None: nothing)."""
        heap = self._deadlines
        while heap and (heap[0][2].due_at != heap[0][0] or heap[0][2].done):
            heapq.heappop(heap)
        wake = self._pacer.next_wakeup()
        if heap and (wake is None or heap[0][0] < wake):
            return heap[0][0]
        return wake

    # -- internals --------------------------------------------------------------------------

    def _source_trusted(self, host: str) -> bool:
        verdict = self._sources.get(host)
        if verdict is None:
            if len(self._sources) >= _MAX_SOURCES:
                self._sources.clear()
            verdict = self._sources[host] = trusted_by(host, self.settings.trusted)
        return verdict

    def _judge(self, data: bytes, source: str,
               flight: _Flight | None = None) -> tuple[Answer | None, int]:
        s = self.settings
        try:
            answer = (decode_answer(data, s.suffix) if flight is None
                      else decode_answer_to(data, flight.name, flight.query))
        except WireError as exc:
            self._report.debug("malformed answer", "dropped malformed answer from %s: %s",
                               source, exc)
            return None, _MALFORMED
        endpoints = [e for e in (answer.v4, answer.v6) if e is not None]
        if s.trusted is not None and not all(self._source_trusted(e.host) for e in endpoints):
            self._report.debug("untrusted address",
                               "dropped answer from %s naming an untrusted address", source)
            return answer, _UNTRUSTED
        for endpoint in endpoints:
            reason = _unusable_reason(endpoint, allow_loopback=s.allow_loopback)
            if reason is not None:
                self._warn_unusable(answer, source, endpoint, reason)
                return answer, _UNUSABLE
        return answer, _OK

    def _unmatched(self, data: bytes, source: str, name: bytes | None, now: float) -> None:
        """An answer whose name is none of our flights': to another site's question, or
        malformed, or (rarely) our question written back in another letter case."""
        stats = self.stats
        if name is not None and name.lower() == name:
            stats.dropped_unmatched += 1  # not decoded: most traffic on a busy group is this
            return
        answer, verdict = self._judge(data, source)
        if verdict == _MALFORMED or answer is None:
            stats.dropped_malformed += 1
            return
        flight = self._flights.get(query_name(answer.query, self.settings.suffix))
        if flight is None:
            stats.dropped_unmatched += 1
            return
        # the id type in another case: libosmo-mslookup matches it, so do we (not remembered)
        if verdict != _OK:
            self._count_drop(verdict)
            return
        stats.answers_accepted += 1
        self._fan_out(flight, answer, source, now)

    def _warn_unusable(self, answer: Answer, source: str, endpoint: Endpoint,
                       reason: str) -> None:
        key = (source, endpoint.host)
        if key in self._warned_unusable or len(self._warned_unusable) >= _MAX_WARNED_UNUSABLE:
            self._report.debug("unusable address", "dropped answer from %s naming %s", source,
                               endpoint)
            return
        self._warned_unusable.add(key)
        self._report.once(
            "dropped the answer from %s for %s: it names %s, %s; no call or SMS can go there "
            "(logged once per site and address; counted as dropped_unusable)",
            source, answer.query.domain, endpoint, reason)

    def _feed(self, lookup: Lookup, answer: Answer, site: str, now: float) -> None:
        selection = lookup.selection
        before = selection.best
        results = selection.feed(answer, now, site)
        if lookup.on_answer is not None:
            won = selection.best is not before  # this answer became the best
            trace = AnswerTrace(answer.query, site, answer.age, answer.v4, answer.v6,
                                won, now - selection.start)
            try:
                lookup.on_answer(trace)
            except Exception as exc:  # a caller's bug must not end the engine
                self._report.warning("on_answer", "on_answer callback failed: %r", exc)
        if results:
            self._deliver(lookup, results, now)

    def _deliver(self, lookup: Lookup, results: list[Result], now: float) -> None:
        flight = lookup.flight
        for result in results:
            if result.last:
                if (result.outcome is Outcome.NOT_FOUND and flight is not None
                        and flight.sent_ok == 0):
                    result = replace(result, outcome=Outcome.ERROR,
                                     reason=flight.send_error or "no query could be sent")
                stats = self.stats
                if result.outcome is Outcome.FOUND or result.outcome is Outcome.NONE:
                    stats.found += 1
                elif result.outcome is Outcome.NOT_FOUND:
                    stats.not_found += 1
                else:
                    stats.errors += 1
                self._watch_trust(now)
            lookup.deliver(result)
        if lookup.selection.done:
            self._detach(lookup)
        else:
            self._arm(lookup)  # the deadline may have moved, with or without a result

    def _arm(self, lookup: Lookup) -> None:
        """Make sure the heap holds the lookup's current deadline."""
        deadline = lookup.selection.deadline
        if deadline is not None:
            deadline += lookup.shift
            if lookup.hold is not None:
                deadline = max(deadline, lookup.hold)
        if deadline != lookup.due_at:
            lookup.due_at = deadline
            if deadline is not None:
                heapq.heappush(self._deadlines, (deadline, next(self._seq), lookup))

    def _detach(self, lookup: Lookup) -> None:
        flight = lookup.flight
        if flight is None:
            return
        lookup.flight = None
        lookup.due_at = None
        flight.lookups.remove(lookup)
        if not flight.lookups and self._flights.get(flight.name) is flight:
            self._pacer.cancel(flight)
            del self._flights[flight.name]

    def _first_copy_left(self, key: object, now: float) -> None:
        """A lookup asks the network when its first copy leaves. If the pacer held it back
        (a burst of lookups) so long that too little of its window is left, its deadlines
        move out (:meth:`_extend`), and its re-sends' cut-off with them. A short hold costs
        nothing: answers need milliseconds, not the window. (The pacer calls this as it
        hands the copy out, before it judges the flight's re-sends.)"""
        flight = key
        assert isinstance(flight, _Flight)
        if flight.first_at is not None:
            return
        flight.first_at = now
        for lookup in flight.lookups:
            self._extend(lookup, flight, now)

    def _extend(self, lookup: Lookup, flight: _Flight, now: float) -> bool:
        """Move the lookup's deadlines out, if need be, so that after its first copy left it
        waits FLOOR_SHARE of its window, and ANSWER_HEADROOM times the answer delay seen
        lately, but never more than a window: a site answering after another must not miss
        a deadline that falls just after the query went out, or that comes before a
        loaded site's answers can (an older site would win). Checked when the first copy
        leaves and again at each deadline, with the delay seen by then. True if moved."""
        first = flight.first_at
        if first is None:
            return False
        selection = lookup.selection
        window = selection.timing.window
        wait = max(window * FLOOR_SHARE, ANSWER_HEADROOM * self._answer_delay(now))
        shift = first + min(window, wait) - (selection.start + window)
        if shift <= lookup.shift + GRID:
            return False
        if lookup.shift == 0.0:
            self.stats.waits_extended += 1
        lookup.shift = shift
        self._arm(lookup)
        # and the re-sends may leave until the new end (less the time for their answers):
        # a site that missed the one late copy must still hear one
        self._pacer.extend(flight, selection.start + window + shift, window)
        return True

    def _answer_delay(self, now: float) -> float:
        """The slowest answer seen lately: the longest time from a flight's first copy to
        the first answer of a site, forgotten with a half-life of DELAY_HALF_LIFE. (An
        answer to a later copy counts from the first: too long, never too short.)"""
        return _decayed(self._delay, self._delay_at, now, DELAY_HALF_LIFE)

    def _note_delay(self, delay: float, now: float) -> None:
        self._delay = max(self._answer_delay(now), delay)
        self._delay_at = now

    def _loss_seen(self, now: float, site: str | None = None) -> tuple[float, float]:
        """(answers missing, answers owed) lately by ``site`` (by all sites together if
        None), forgotten with a half-life of LOSS_HALF_LIFE: for inspection (the engine
        itself decides on :meth:`_lossy`, which keeps the lossy sites apart)."""
        lost = owed = 0.0
        for host, known in self._loss.items():
            if site is None or host == site:
                lost += _decayed(known[0], known[2], now, LOSS_HALF_LIFE)
                owed += _decayed(known[1], known[2], now, LOSS_HALF_LIFE)
        return lost, owed

    def _heard(self, flight: _Flight, seen: list[tuple[int, str, Answer | None, int, int]],
               i: int, bit: int, now: float) -> None:
        """A site answered the copy ``bit`` (one bit per copy, by its id): the site's first
        entry in ``seen`` at ``i`` keeps the copies it answered, and the estimate of loss
        learns what changed. Each copy has its own id, which OsmoHLR echoes, and a site
        answers the copies that reach it in the order they left: a copy it did not answer
        while it answered a later one was lost, on the way there or back, or at a full
        socket; a slow site is not taken for a lossy one. Copies after a site's last
        answer are not judged (their answers may be on the way), nor sites that answered
        none (they may not know the subscriber): an estimate from below. Each site is
        judged on its own: a clean local village must not hide a lossy remote one."""
        entry = seen[i]
        before = entry[4]
        after = before | bit
        if after == before:
            return  # that copy's answer again
        seen[i] = (entry[0], entry[1], entry[2], entry[3], after)
        if now - self._rtt_at > 0.1:  # forget, with the half-life, every tenth of a second
            self._rtt = self._round_trip(now)
            self._rtt_at = now
        # that copy's round trip (its id says which copy, sent_at when it left): a site on a
        # slow link answers a copy after later ones left, and must still be measured
        rtt = now - flight.sent_at[bit.bit_length() - 1]
        if rtt > self._rtt:
            self._rtt = rtt
        # judged: the copies below the latest one the site answered (that one was answered
        # by choice: counting it would take a site heard once per flight, as in a burst
        # where the bucket let one copy leave, for one that loses nothing)
        span0, span1 = before.bit_length(), after.bit_length()
        owed = span1 - max(span0, 1)
        lost = (span1 - after.bit_count()) - (span0 - before.bit_count())
        site = entry[1]
        table = self._loss
        known = table.get(site)
        if known is None:
            if len(table) >= _MAX_SOURCES:
                oldest = next(iter(table))
                del table[oldest]
                self._lossy_sites.pop(oldest, None)
            known = table[site] = [0.0, 0.0, now, rtt, now]
        elif now - known[2] > 0.1:  # forget, with the half-life, every tenth of a second
            del table[site]  # and to the end: the oldest first
            known = table[site] = [_decayed(known[0], known[2], now, LOSS_HALF_LIFE),
                                   _decayed(known[1], known[2], now, LOSS_HALF_LIFE), now,
                                   known[3], known[4]]
        site_lost = known[0] = max(0.0, known[0] + lost)
        site_owed = known[1] = known[1] + owed
        if rtt < known[3] or now - known[4] > QUEUE_BASE_MEMORY:
            known[3], known[4] = rtt, now
        if site_lost >= LOSS_TO_WAIT * site_owed and site_lost > 0:
            self._lossy_sites[site] = None
            if rtt - known[3] > QUEUE_DELAY:
                self._warn_queue(site, rtt - known[3], known[3],
                                 site_lost / max(site_owed, 1.0))
        elif self._lossy_sites:
            self._lossy_sites.pop(site, None)

    def _warn_queue(self, site: str, queued: float, base: float, share: float) -> None:
        """A lossy site answered ``queued`` s later than its fastest round trip lately."""
        self._report.warning(
            "link queues", "mslookup: answers from %s come %.0f ms later than its fastest "
            "(%.0f ms) and %.0f%% of what it owed lately went missing: a queue on the way "
            "fills. If lookups in bursts (a bulk SMS) go to the wrong site, the link is "
            "thinner than send_rate needs: lower send_rate (docs/mslookup.md, \"A thin "
            "link\")", site, queued * 1000, base * 1000, 100 * share)

    def _round_trip(self, now: float) -> float:
        """The slowest round trip seen lately, from a copy leaving to a site's answer to that
        copy (by its id), halved every DELAY_HALF_LIFE."""
        return _decayed(self._rtt, self._rtt_at, now, DELAY_HALF_LIFE)

    def _answer_wait(self, now: float) -> float:
        """How long the answers to a copy that just left may take."""
        return max(ANSWER_MIN_WAIT, ROUND_TRIP_HEADROOM * self._round_trip(now))

    def _lossy(self, now: float) -> bool:
        """Whether, at some site, at least LOSS_TO_WAIT of the answers it owed lately went
        missing (the share does not change as both are forgotten; a site is forgotten once
        less than LOSS_MIN_OWED of what it owed is left)."""
        lossy = self._lossy_sites
        for site in list(lossy):
            known = self._loss.get(site)
            if known is not None and _decayed(known[1], known[2], now,
                                              LOSS_HALF_LIFE) >= LOSS_MIN_OWED:
                return True
            del lossy[site]
        return False

    def _late_copy(self, key: object, now: float) -> bool:
        """The pacer is about to skip one of the flight's re-sends as too late for an answer
        (the bucket held it back: a burst). Where datagrams get lost, the lookup needs it:
        the flight's end moves out (at most WAIT_WINDOWS windows after its first copy) and
        the copy stays; :meth:`_wait_for_copies` keeps the lookup waiting for it. On a
        network that loses nothing, the copy is skipped: the answers are in already."""
        flight = key
        assert isinstance(flight, _Flight)
        if flight.first_at is None or not flight.lookups or not self._lossy(now):
            return False
        self._keep_copies(flight, flight.first_at,
                          max(lookup.selection.timing.window for lookup in flight.lookups))
        return True

    def _keep_copies(self, flight: _Flight, first: float, window: float) -> float:
        """Let the flight's re-sends leave until WAIT_WINDOWS windows after its first copy
        (less the time for their answers), and mark its lookups as waiting for them.
        Returns that cap."""
        cap = first + WAIT_WINDOWS * window
        self._pacer.extend(flight, cap, window)
        flight.waited = True
        return cap

    def _wait_for_copies(self, lookup: Lookup, flight: _Flight, now: float) -> bool:
        """At a deadline of a lookup on a network that loses datagrams: if the bucket still
        holds its re-sends, it waits for them, until WAIT_WINDOWS windows after its first
        copy at most (:meth:`_copies_left` ends the wait sooner, once the last has left and
        its answers had time); if its latest copy left too recently for the round trips
        seen lately, it waits for that copy's answers (a slow lossy link: the only answer
        of the youngest site may be on the way). True if the deadline moved."""
        first = flight.first_at
        if first is None:
            return False
        selection = lookup.selection
        window = selection.timing.window
        if self._pacer.pending(flight):
            if not (flight.waited or self._lossy(now)):
                return False  # nothing gets lost: the answers are in already
            end = self._keep_copies(flight, first, window)
        elif flight.waited or self._lossy(now):
            # the latest copy (a re-send kept past the old cut-off, or one on time on a slow
            # link) may have left just now: its answers
            end = min(first + WAIT_WINDOWS * window, flight.sent_at[-1] + self._answer_wait(now))
        else:
            return False  # nothing gets lost: the first copy's answers are in already
        shift = end - (selection.start + window)
        if shift <= lookup.shift + GRID / 2:
            return False
        if not lookup.waited:
            lookup.waited = True
            if flight.waited:
                self.stats.waits_for_copies += 1
            else:
                self.stats.waits_for_answers += 1
        lookup.shift = shift
        self._arm(lookup)
        return True

    def _copies_left(self, flight: _Flight, now: float) -> None:
        """The last copy of a flight whose lookups wait for their copies has left: they
        end ROUND_TRIP_HEADROOM times the round trip seen lately after it (at least
        ANSWER_MIN_WAIT), instead of at the cap."""
        end = now + self._answer_wait(now)
        for lookup in flight.lookups:
            if not lookup.waited:
                continue
            selection = lookup.selection
            shift = max(0.0, end - (selection.start + selection.timing.window))
            if shift < lookup.shift:
                lookup.shift = shift
                self._arm(lookup)

    def _grace(self, lookup: Lookup, now: float) -> bool:
        """At the end of a lookup that found nothing, make up for copies that did not leave
        on time (the process could not run: CPU starved, or the pacer held them back): send
        that many again over half a window more, once, and end the lookup after it.
        "Not found" then means what it says: every promised copy had its chance."""
        selection = lookup.selection
        timing = selection.timing
        flight = lookup.flight
        if lookup.hold is not None or selection.best is not None or flight is None:
            return False
        final = (timing.timeout <= timing.min_delay
                 or now >= selection.start + lookup.shift + timing.timeout - 0.005)
        if not final:
            return False
        missed = self._pacer.missed(flight)
        if not missed:
            return False
        extra = timing.window / 2
        lookup.hold = now + extra
        self._pacer.schedule(flight, flight.wire, now, extra, missed)
        self.stats.grace_periods += 1
        self._arm(lookup)
        return True

    def _watch_trust(self, now: float) -> None:
        """When a lookup ends: if every answer of the last TRUST_WINDOW s was dropped as
        untrusted, say so once (and again only after answers were accepted in between)."""
        stats = self.stats
        start, dropped0, accepted0 = self._trust_mark
        if now - start < TRUST_WINDOW:
            return
        dropped = stats.dropped_untrusted - dropped0
        accepted = stats.answers_accepted - accepted0
        self._trust_mark = (now, stats.dropped_untrusted, stats.answers_accepted)
        if dropped and not accepted:
            stats.untrusted_only_windows += 1
            if self.trust_warning is None:
                nets = ",".join(str(n) for n in self.settings.trusted or ())
                self.trust_warning = (
                    f"all {dropped} answers in the last {now - start:.0f} s dropped as "
                    f"untrusted: check trusted= ({nets}); the sites' addresses, and the "
                    "addresses they announce, must be inside it")
                self._report.once("mslookup: %s", self.trust_warning)
        elif accepted and self.trust_warning is not None:
            self._report.once("mslookup: answers are accepted again (%d in the last %.0f s)",
                              accepted, now - start)
            self.trust_warning = None
