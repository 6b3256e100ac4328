"""Result selection, as libosmo-mslookup does it, on an injected clock (sans-I/O).

Feed it answers and the current time; it returns the results to deliver and tells when it
next wants to be woken (:attr:`Selection.deadline`). Rules:

- keep the youngest answer; on a tie the first one wins;
- an age-0 answer ends the lookup at once (it cannot get any better);
- otherwise nothing is delivered before ``min_delay``; then the best so far;
- when ``timeout`` is longer than ``min_delay``, younger answers arriving later are delivered
  at once (``last=False``), and the stream ends at ``timeout`` with a ``none`` result
  (or ``not-found`` if nothing came);
- ``timeout`` defaults to ``min_delay``; if both are 0, to 1 s.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .errors import InvalidQuery
from .model import Answer, Outcome, Result
from .query import MAX_DELAY_MS, Query

__all__ = ["Selection", "Timing"]


@dataclass(frozen=True, slots=True)
class Timing:
    """Effective min_delay and timeout of one lookup, in seconds."""

    min_delay: float
    timeout: float

    def __post_init__(self) -> None:
        limit = MAX_DELAY_MS / 1000
        if not (0 <= self.min_delay <= limit and 0 <= self.timeout <= limit):
            raise InvalidQuery(f"min_delay and timeout must be 0..{limit:.0f} s")

    @classmethod
    def of(cls, query: Query, min_delay: float, timeout: float | None) -> Timing:
        """Resolve a query's own timing against defaults, with libosmo-mslookup's rules."""
        if query.min_delay_ms is not None or query.timeout_ms is not None:
            return cls.settle((query.min_delay_ms or 0) / 1000, (query.timeout_ms or 0) / 1000)
        return cls.settle(min_delay, timeout)

    @classmethod
    def settle(cls, min_delay: float, timeout: float | None) -> Timing:
        """libosmo-mslookup's rule: timeout defaults to min_delay, and both 0 mean 1 s.
        (One object per distinct pair: thousands of lookups in flight share a few.)"""
        return _settled(min_delay, timeout)

    @property
    def window(self) -> float:
        """The time in which answers are collected before a first result is due."""
        return self.min_delay if self.min_delay > 0 else self.timeout


@lru_cache(maxsize=64)
def _settled(min_delay: float, timeout: float | None) -> Timing:
    return Timing(min_delay, timeout or min_delay or 1.0)


@dataclass(slots=True)
class _Best:
    answer: Answer
    site: str | None


class Selection:
    """The selection state of one lookup. Not thread-safe; drive it from one place."""

    __slots__ = ("_best", "_deadline", "_waiting", "done", "query", "start",
                 "timing")

    def __init__(self, query: Query, timing: Timing, start: float) -> None:
        self.query = query
        self.timing = timing
        self.start = start
        self.done = False
        self._best: _Best | None = None
        self._waiting = timing.min_delay > 0
        self._deadline = start + (timing.min_delay if self._waiting else timing.timeout)

    @property
    def deadline(self) -> float | None:
        """When :meth:`tick` must be called next; None once done."""
        return None if self.done else self._deadline

    @property
    def best(self) -> Answer | None:
        return self._best.answer if self._best else None

    def _result(self, outcome: Outcome, now: float, last: bool) -> Result:
        best = self._best
        if last:
            self.done = True
        if best is None:
            return Result(self.query, outcome, last=last, elapsed=now - self.start)
        a = best.answer
        return Result(self.query, outcome, last=last, age=a.age, v4=a.v4, v6=a.v6,
                      site=best.site, elapsed=now - self.start)

    def feed(self, answer: Answer, now: float, site: str | None = None) -> list[Result]:
        """Offer one answer (already matched to this query). Returns results to deliver.

        The answer is kept only if it is younger than the best so far; check
        ``selection.best is answer`` afterwards to see whether it won.
        """
        if self.done:
            return []
        if self._best is not None and answer.age >= self._best.answer.age:
            return []
        self._best = _Best(answer, site)
        if answer.age == 0:
            return [self._result(Outcome.FOUND, now, last=True)]
        if self._waiting:
            return []
        return [self._result(Outcome.FOUND, now, last=False)]

    def tick(self, now: float) -> list[Result]:
        """Advance the clock. Returns results that are due."""
        if self.done or now < self._deadline:
            return []
        if self._waiting:
            self._waiting = False
            if self.timing.timeout <= self.timing.min_delay:
                outcome = Outcome.FOUND if self._best else Outcome.NOT_FOUND
                return [self._result(outcome, now, last=True)]
            self._deadline = self.start + self.timing.timeout
            if self._best is not None:
                        return [self._result(Outcome.FOUND, now, last=False)]
            return []
        outcome = Outcome.NONE if self._best is not None else Outcome.NOT_FOUND
        return [self._result(outcome, now, last=True)]

    def cancel(self, now: float, reason: str) -> Result:
        """End the lookup with an error (e.g. the resolver is closing)."""
        self.done = True
        return Result(self.query, Outcome.ERROR, last=True, elapsed=now - self.start,
                      reason=reason)
