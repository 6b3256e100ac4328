"""Logging that a flood cannot turn into a log storm.

Whatever a peer can repeat (a malformed datagram, a connection refused, a bad PDU) is logged
through a :class:`LogLimiter`: per kind of message, the first record of each interval is
logged as usual; the ones after it in that interval are only counted, and when the interval
ends one summary record says how many there were. Under a flood that is two records per kind
per interval instead of one per packet; the counters (``Stats``) still count every packet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_INTERVAL", "LogLimiter"]

#: Seconds between two records of the same kind (the summary included).
DEFAULT_INTERVAL = 10.0
_MAX_KINDS = 256


@dataclass
class _Window:
    start: float
    level: int
    suppressed: int = 0
    timer: asyncio.TimerHandle | None = None


class LogLimiter:
    """At most one record per ``kind`` per ``interval`` seconds, plus one summary.

    >>> limited = LogLimiter(logging.getLogger("dgsm.mslookup"))
    >>> limited.log(logging.DEBUG, "malformed", "dropped malformed answer from %s", source)

    The summary (``... and 3120 more "malformed" in the last 10 s``) is written when the
    interval ends, by a timer on the running asyncio loop; without a running loop it is
    written with the next record of that kind, or by :meth:`flush`.
    """

    def __init__(self, logger: logging.Logger, interval: float = DEFAULT_INTERVAL, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0, not {interval}")
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def log(self, level: int, kind: str, msg: str, *args: object, **kwargs: Any) -> bool:
        """Log ``msg % args`` unless a record of ``kind`` was logged less than an interval
        ago (then it is counted for the summary). True if it was logged."""
        if not self.logger.isEnabledFor(level):
            return False
        now = self._clock()
        window = self._windows.get(kind)
        if window is not None:
            if now - window.start < self.interval:
                window.suppressed += 1
                if window.suppressed == 1:
                    self._schedule(kind, window, now)
                return False
            self._summarize(kind, now)
        elif len(self._windows) >= _MAX_KINDS:
            self._summarize(next(iter(self._windows)), now)
        self._windows[kind] = _Window(now, level)
        self.logger.log(level, msg, *args, **kwargs)
        return True

    def debug(self, kind: str, msg: str, *args: object, **kwargs: Any) -> bool:
        return self.log(logging.DEBUG, kind, msg, *args, **kwargs)

    def info(self, kind: str, msg: str, *args: object, **kwargs: Any) -> bool:
        return self.log(logging.INFO, kind, msg, *args, **kwargs)

    def warning(self, kind: str, msg: str, *args: object, **kwargs: Any) -> bool:
        return self.log(logging.WARNING, kind, msg, *args, **kwargs)

    def flush(self) -> None:
        """Write every pending summary now (at shutdown, or where no loop runs)."""
        now = self._clock()
        for kind in list(self._windows):
            self._summarize(kind, now)

    def _schedule(self, kind: str, window: _Window, now: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # summarized with the next record of this kind, or by flush()
        delay = max(0.0, window.start + self.interval - now)
        window.timer = loop.call_later(delay, self._expire, kind, window)

    def _expire(self, kind: str, window: _Window) -> None:
        if self._windows.get(kind) is window:
            self._summarize(kind, self._clock())

    def _summarize(self, kind: str, now: float) -> None:
        window = self._windows.pop(kind, None)
        if window is None:
            return
        if window.timer is not None:
            window.timer.cancel()
        if window.suppressed:
            self.logger.log(window.level, '... and %d more "%s" in the last %.1f s',
                            window.suppressed, kind, now - window.start)
