"""The blocking facade: the same names and keyword arguments as :class:`AsyncResolver`.

One background thread runs an asyncio loop with one :class:`AsyncResolver` (one socket);
any number of threads may call :meth:`Resolver.resolve` at once (FreeSWITCH runs each call in
its own thread). Every call returns within its timeout plus a small margin, whatever happens.
:meth:`Resolver.shared` hands out one process-wide instance per configuration, so code that is
re-imported on every call (FreeSWITCH's mod_python3) does not open a socket per call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from .aio import AnswerTrace, AsyncResolver, Stats, as_query
from .model import Outcome, Result
from .query import Query

__all__ = ["Resolver"]

#: Extra time a blocking call waits beyond the lookup's own timeout before giving up.
_MARGIN = 2.0


class Resolver:
    """Blocking mslookup resolver; see :class:`AsyncResolver` for the keyword arguments."""

    _shared: ClassVar[dict[tuple[tuple[str, Any], ...], Resolver]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, **kwargs: Any) -> None:
        self._async = AsyncResolver(**kwargs)  # validates the arguments now
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def shared(cls, **kwargs: Any) -> Resolver:
        """The process-wide resolver for this configuration (created on first use)."""
        key = tuple(sorted((k, repr(v)) for k, v in kwargs.items()))
        with cls._shared_lock:
            resolver = cls._shared.get(key)
            if resolver is None or resolver._async._closed:
                resolver = cls._shared[key] = cls(**kwargs)
            return resolver

    @property
    def stats(self) -> Stats:
        return self._async.stats

    @property
    def trust_warning(self) -> str | None:
        """Set while every answer of the last few seconds was dropped as untrusted."""
        return self._async.trust_warning

    @property
    def config(self) -> Any:
        return self._async.config

    def open(self) -> None:
        """Start the background loop and open the socket (done by the first lookup too)."""
        with self._lock:
            if self._loop is not None:
                return
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="dgsm-mslookup",
                                      daemon=True)
            thread.start()
            try:
                asyncio.run_coroutine_threadsafe(self._async.open(), loop).result(10)
            except BaseException:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(5)
                loop.close()
                raise
            self._loop, self._thread = loop, thread

    def close(self) -> None:
        """End lookups in progress and stop the background thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            self._async._closed = True
            return
        try:
            asyncio.run_coroutine_threadsafe(self._async.close(), loop).result(5)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            if not thread.is_alive():
                loop.close()

    def __enter__(self) -> Resolver:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        self.open()
        assert self._loop is not None
        return self._loop

    def resolve(
        self,
        query: str | Query,
        *,
        min_delay: float | None = None,
        timeout: float | None = None,
        on_answer: Callable[[AnswerTrace], None] | None = None,
    ) -> Result:
        """Blocking :meth:`AsyncResolver.resolve`; raises only InvalidQuery/TransportError."""
        q = as_query(query)
        limit = self._async.timing(q, min_delay, timeout).timeout + _MARGIN
        loop = self._running_loop()
        future = asyncio.run_coroutine_threadsafe(
            self._async.resolve(q, min_delay=min_delay, timeout=timeout, on_answer=on_answer),
            loop,
        )
        try:
            return future.result(limit)
        except concurrent.futures.TimeoutError:
            future.cancel()
            return Result(q, Outcome.ERROR, elapsed=limit,
                          reason=f"resolver did not answer within {limit:.1f} s")
        except concurrent.futures.CancelledError:
            return Result(q, Outcome.ERROR, reason="resolver closed")

    def stream(
        self,
        query: str | Query,
        *,
        min_delay: float | None = None,
        timeout: float | None = None,
        on_answer: Callable[[AnswerTrace], None] | None = None,
    ) -> Iterator[Result]:
        """Blocking :meth:`AsyncResolver.stream`."""
        q = as_query(query)
        limit = self._async.timing(q, min_delay, timeout).timeout + _MARGIN
        loop = self._running_loop()
        results: queue.Queue[Result] = queue.Queue()

        async def pump() -> None:
            async for result in self._async.stream(q, min_delay=min_delay, timeout=timeout,
                                                   on_answer=on_answer):
                results.put(result)

        future = asyncio.run_coroutine_threadsafe(pump(), loop)
        try:
            while True:
                try:
                    result = results.get(timeout=limit)
                except queue.Empty:
                    yield Result(q, Outcome.ERROR,
                                 reason=f"resolver did not answer within {limit:.1f} s")
                    return
                yield result
                if result.last:
                    return
        finally:
            future.cancel()
