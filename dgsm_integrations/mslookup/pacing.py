"""Pacing of query datagrams: when each copy of each lookup's query leaves (sans-I/O).

A :class:`Pacer` knows nothing of sockets or clocks: a driver tells it about a flight
(:meth:`Pacer.schedule`) and when one ends (:meth:`Pacer.cancel`), asks it at time ``now``
which datagrams to send (:meth:`Pacer.due`), and sleeps until :meth:`Pacer.next_wakeup`.

What it does, and why:

- **Each lookup's copies are spread over its window.** Copy 0 is due at once, copy k at
  ``k * interval`` (default: the last at ``LAST_COPY_AT`` of the window), on a coarse grid
  shared by all flights so that many lookups' copies leave in one wake-up. The copies are
  there for loss: each is another independent chance for the query and its answer to cross
  a lossy link.
- **All flights share one token bucket** (``rate`` datagrams per second, at most ``burst`` at
  once). A burst of lookups (a bulk SMS to every subscriber) would otherwise put every copy
  on the wire in one go: more than a thin link between villages carries, and more than a
  real OsmoHLR's socket buffer holds, which drops whole runs of queries and made lookups
  return an *older* site (issue 13).
- **First copies go first.** When more is due than the bucket allows, copies wait in the
  order (copy number, due time): every lookup's first query leaves before any lookup's
  second, so a burst costs re-sends, not lookups.
- **Never merged, never back to back.** Copies of one lookup leave at least half an interval
  apart. A copy held back (by the bucket, or because the driver woke late after a CPU stall)
  is neither merged with the next one nor sent in a bunch with it: the copies still to go
  are re-spread over the time left before the lookup's last useful moment (the last aimed
  a third of the answer margin before it: a driver that then wakes late does not lose it),
  so one loss burst or one stall at the receiver does not take them all; only when no time
  is left do they leave together (a copy that leaves is a chance, a skipped one none).
  (Before the pacer, a driver that woke late sent one datagram for all overdue copies:
  under CPU load the lab's 20%-loss test lost a fifth of its copies, see docs/mslookup.md.)
- **Re-sends that come too late are skipped.** A re-send that could not leave before its
  lookup's last useful moment (``window - margin``: an answer to it could not arrive in
  time) is dropped and counted in :attr:`Pacer.skipped`; a first copy is never dropped.
  When a lookup's end moves out (its first copy left late, or it waits for its re-sends
  where datagrams get lost: the driver's ``on_late`` is asked before a re-send is skipped,
  :meth:`Pacer.extend`), so does that moment: its re-sends leave in the time it now has.

Imports no socket, asyncio, select, threading or time.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass

__all__ = ["DEFAULT_BURST", "DEFAULT_RATE", "GRID", "MIN_GAP", "Pacer"]

#: Default query datagrams per second over all lookups (see docs/mslookup.md, "Pacing").
DEFAULT_RATE = 5000.0
#: Default bucket depth: this many datagrams may leave at once after a quiet spell.
DEFAULT_BURST = 50
#: Re-sends of all lookups are aligned to this grid (seconds), so that the re-sends of many
#: lookups in progress leave in one wake-up of the driver instead of one wake-up each.
GRID = 0.005
#: By default the last copy of a lookup leaves at this share of its window: clear of the
#: cut-off below (a driver that wakes a few ms late must not lose it), and early enough for
#: its answers to come back (docs/mslookup.md, "What the re-sends buy").
LAST_COPY_AT = 0.8
#: The least time between two copies of one lookup, even when they were held back.
MIN_GAP = 0.0
#: Rounding slack of the token count.
_EPSILON = 1e-9
#: A driver is woken for held-back datagrams once this long's worth of tokens has gathered.
_TICK = 0.002
#: The last re-send of a lookup leaves at least this share of its window before the end...
_MARGIN_SHARE = 0.15
#: ... and at most this long (seconds) before the end: time for the answer to come back.
_MARGIN_MAX = 0.15
#: Copies held back are re-spread to leave by this share of that margin before the last
#: useful moment (for windows up to 1 s, where the plan's own last copy was due), not just
#: before it: a driver that then wakes a little late (a loaded machine, a GC pause) does
#: not lose the last one.
_AIM_SHARE = 1 / 3


@dataclass(eq=False, slots=True)
class _Plan:
    """One flight's copies. Its first schedule (the chain) is kept as a rule, not a list:
    copy k is due at :meth:`at` (k), for k < ``count``; one copy of a flight waits in a
    heap at a time. Copies a later caller added are in ``extra``."""

    key: Hashable
    wire: bytes
    latest: float  # no re-send leaves after this
    gap: float  # least time between two copies of this flight
    origin: float  # when the chain's first copy was due
    step: float  # the chain's interval...
    grid: float  # ... rounded up to this grid
    count: int  # copies in the chain
    extra: list[float] | None = None  # copies later callers added
    numbered: int = 0  # copies of the chain queued so far
    last: float | None = None  # when the last copy left
    sent: int = 0
    pending: int = 0  # copies planned and not yet sent or skipped
    missed: int = 0  # copies skipped, or sent more than half an interval late
    live: bool = True
    aim: float = GRID  # copies held back are re-spread to leave by latest - aim

    def at(self, k: int) -> float:
        """When the chain's copy ``k`` is due."""
        if k == 0:
            return self.origin
        return math.ceil((self.origin + k * self.step) / self.grid - 1e-9) * self.grid

    def planned(self) -> list[float]:
        """Every copy ever planned."""
        return [self.at(k) for k in range(self.count)] + (self.extra or [])


class Pacer:
    """Decide when each query copy of each flight leaves, on an injected clock.

    ``rate`` (datagrams per second, over all flights) and ``burst`` (datagrams at once) form
    one token bucket; the bucket starts full at ``now``.
    """

    def __init__(self, rate: float = DEFAULT_RATE, burst: int = DEFAULT_BURST, *,
                 now: float = 0.0) -> None:
        if not (math.isfinite(rate) and 1 <= rate <= 1_000_000):
            raise ValueError(f"rate must be 1..1000000 datagrams/s, not {rate}")
        if not 1 <= burst <= 100_000:
            raise ValueError(f"burst must be 1..100000 datagrams, not {burst}")
        self.rate = float(rate)
        self.burst = int(burst)
        self._tokens = float(burst)
        self._refilled = now
        self._plans: dict[Hashable, _Plan] = {}
        self._seq = itertools.count()
        # (due time, seq, copy number, planned time, plan): copies not yet due
        self._timed: list[tuple[float, int, int, float, _Plan]] = []
        # (copy number, due time, seq, plan): copies due, waiting for a token
        self._ready: list[tuple[int, float, int, _Plan]] = []
        #: copies sent, copies that left later than planned (bucket, gap or a late driver),
        #: re-sends dropped
        self.sent = 0
        self.deferred = 0
        self.skipped = 0

    def __len__(self) -> int:
        """Flights with copies still to send or wait for."""
        return len(self._plans)

    def schedule(self, key: Hashable, wire: bytes, now: float, window: float, copies: int,
                 interval: float | None = None) -> None:
        """Plan ``copies`` sends of ``wire`` for the flight ``key`` over ``window`` seconds.

        The first is due at ``now``. Called again for a flight in progress (a second caller
        with its own window joined it), copies are added where the caller's plan has none
        within half an interval, and the flight's last re-send moves out to the later window's.
        """
        if copies < 1:
            raise ValueError(f"copies must be >= 1, not {copies}")
        if not window > 0:
            raise ValueError(f"window must be > 0, not {window}")
        step = interval if interval is not None else window * LAST_COPY_AT / max(1, copies - 1)
        if not step > 0:
            raise ValueError(f"interval must be > 0, not {interval}")
        grid = min(GRID, step / 4)
        margin = min(window * _MARGIN_SHARE, _MARGIN_MAX)
        latest = now + window - margin
        # the first copy always; the re-sends due by the last useful moment (copy k is due
        # at most a grid step after now + k * step: start from there, then check)
        mine = _Plan(key, wire, latest, step / 2, now, step, grid,
                     max(1, min(copies, 1 + int((latest - now) / step))),
                     aim=max(GRID, margin * _AIM_SHARE))
        while mine.count > 1 and mine.at(mine.count - 1) > latest:
            mine.count -= 1
        while mine.count < copies and mine.at(mine.count) <= latest:
            mine.count += 1
        plan = self._plans.get(key)
        if plan is None:
            self._plans[key] = mine
            mine.pending = mine.count
            self._queue_next(mine, now)
            return
        if latest >= plan.latest:  # the later window sets the last useful moment
            plan.latest, plan.aim = latest, mine.aim
        plan.gap = min(plan.gap, step / 2)
        planned = plan.planned()
        for number, t in enumerate(mine.planned()):  # a second caller: its own copies,
            if all(abs(t - other) >= step / 2 for other in planned):  # queued now
                planned.append(t)
                if plan.extra is None:
                    plan.extra = []
                plan.extra.append(t)
                plan.pending += 1
                heapq.heappush(self._timed, (t, next(self._seq), number, t, plan))

    def _queue_next(self, plan: _Plan, first: float | None = None) -> None:
        """Put the chain's next copy in the heap (``first``: the first copy, due then)."""
        if first is not None:
            t = first
        elif plan.numbered < plan.count and plan.live:
            t = plan.at(plan.numbered)
        else:
            return
        heapq.heappush(self._timed, (t, next(self._seq), plan.numbered, t, plan))
        plan.numbered += 1

    def extend(self, key: Hashable, end: float, window: float) -> None:
        """The flight's lookup now ends at ``end`` (its deadlines moved: its first copy
        left late): its last useful moment moves with it, so that the re-sends still to go
        leave in the time now left instead of being skipped."""
        plan = self._plans.get(key)
        if plan is not None:
            plan.latest = max(plan.latest, end - min(window * _MARGIN_SHARE, _MARGIN_MAX))

    def cancel(self, key: Hashable) -> None:
        """The flight ended: forget its copies still to send."""
        plan = self._plans.pop(key, None)
        if plan is not None:
            plan.live = False

    def due(self, now: float, on_first: Callable[[Hashable, float], None] | None = None,
            on_late: Callable[[Hashable, float], bool] | None = None
            ) -> list[tuple[Hashable, bytes]]:
        """The ``(key, datagram)`` pairs to send at ``now``, in order. ``on_first(key,
        now)`` is called as a flight's first copy is handed out, before its re-sends are
        looked at; ``on_late(key, now)`` before one of its re-sends is skipped as too late.
        Either may move the flight's end (:meth:`extend`); a re-send that then fits is kept."""
        self._refill(now)
        timed, ready = self._timed, self._ready
        out: list[tuple[Hashable, bytes]] = []
        while True:
            while timed and timed[0][0] <= now:
                _, seq, number, t, plan = heapq.heappop(timed)
                if plan.live:
                    heapq.heappush(ready, (number, t, seq, plan))
            if not ready or self._tokens < 1 - _EPSILON:
                return out
            while ready and self._tokens >= 1 - _EPSILON:
                number, t, seq, plan = heapq.heappop(ready)
                if not plan.live:
                    continue
                if number > 0 and now > plan.latest and not self._kept(plan, now, now,
                                                                       on_late):
                    self._skip(plan, rest=True)
                    continue
                gap = self._gap(plan, now)
                if plan.last is not None and now - plan.last < gap - _EPSILON:
                    later = plan.last + gap
                    if number > 0 and later > plan.latest and not self._kept(plan, later, now,
                                                                             on_late):
                        self._skip(plan, rest=True)
                    else:
                        heapq.heappush(timed, (later, seq, number, t, plan))
                    continue
                self._tokens -= 1
                plan.pending -= 1
                if now > t + GRID:
                    self.deferred += 1
                    if now > t + plan.gap:
                        plan.missed += 1
                plan.last = now
                plan.sent += 1
                self.sent += 1
                out.append((plan.key, plan.wire))
                if plan.sent == 1 and on_first is not None:
                    on_first(plan.key, now)
                self._queue_next(plan)
            if not (timed and timed[0][0] <= now):
                return out

    def next_wakeup(self) -> float | None:
        """When :meth:`due` next has something to hand out (None: nothing planned)."""
        timed, ready = self._timed, self._ready
        while timed and not timed[0][4].live:
            heapq.heappop(timed)
        while ready and not ready[0][3].live:
            heapq.heappop(ready)
        wake = timed[0][0] if timed else None
        if ready:
            want = min(float(len(ready)), max(1.0, self.rate * _TICK))
            at = self._refilled + max(0.0, want - self._tokens) / self.rate
            wake = at if wake is None else min(wake, at)
        return wake

    @staticmethod
    def _kept(plan: _Plan, when: float, now: float,
              on_late: Callable[[Hashable, float], bool] | None) -> bool:
        """Whether a re-send past the flight's last useful moment, due ``when``, may still
        leave: its caller moved the flight's end far enough."""
        return on_late is not None and on_late(plan.key, now) and when <= plan.latest

    def pending(self, key: Hashable) -> int:
        """Copies of flight ``key`` planned and neither sent nor skipped yet."""
        plan = self._plans.get(key)
        return 0 if plan is None else plan.pending

    def _gap(self, plan: _Plan, now: float) -> float:
        """Least time between two copies of ``plan`` now: half an interval, but narrower
        (down to :data:`MIN_GAP`) when copies were held back and must still fit before the
        last useful moment."""
        # the copies still to go (this one too) spread from the last one that left, the
        # last aimed some way before the last useful moment (_AIM_SHARE): a driver that
        # wakes a little late must not lose it
        start = now if plan.last is None else plan.last
        fit = max(0.0, plan.latest - plan.aim - start) / max(1, plan.pending)
        return max(MIN_GAP, min(plan.gap, fit))

    def _skip(self, plan: _Plan, rest: bool = False) -> None:
        """A copy too late to be answered in time; with ``rest``, the chain's later copies
        too (they can only come later still)."""
        count = 1 + (plan.count - plan.numbered if rest else 0)
        if rest:
            plan.count = plan.numbered
        self.skipped += count
        plan.missed += count
        plan.pending -= count

    def missed(self, key: Hashable) -> int:
        """Copies of flight ``key`` that did not leave on time (skipped, or more than half an
        interval late): chances against loss the lookup was promised and did not get."""
        plan = self._plans.get(key)
        if plan is None:
            return 0
        return plan.missed + (1 if plan.sent == 0 else 0)  # not even the first one left yet

    def _refill(self, now: float) -> None:
        if now > self._refilled:
            self._tokens = min(float(self.burst),
                               self._tokens + (now - self._refilled) * self.rate)
            self._refilled = now
