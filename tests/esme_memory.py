"""The ESME on a virtual clock with in-memory transports: no sockets, no real time.

- :func:`run` runs a coroutine on :class:`VirtualLoop`, an asyncio loop whose ``time()`` is
  virtual and jumps to the next timer whenever nothing is ready (a budget of 4 s takes no
  wall time, and ``loop.time()`` deltas are exact).
- :class:`MemoryNetwork` is the Opener the ESME's binds connect with: SMSCs "listen" at
  ``(host, port)``, an address with no listener refuses, a ``silent`` host never answers
  the connect.
- :class:`MemorySmsc` speaks SMPP (with the ESME's own :class:`SmppConnection`) as OsmoMSC
  does toward an ESME: binds, submit_sm answered with a status after a delay, deliver_sm sent
  on the OSMPP bind.
- :class:`TableLookup` answers mslookup queries from a table; :class:`MemoryQueue` is a
  store-and-forward queue in memory (the forwarder's :class:`Queue` protocol).
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from dgsm_integrations.esme.connection import SmppConnection
from dgsm_integrations.esme.errors import SmppError
from dgsm_integrations.esme.message import Message
from dgsm_integrations.esme.pdu import Pdu
from dgsm_integrations.esme.status import Status
from dgsm_integrations.esme.store import message_key
from dgsm_integrations.mslookup import Endpoint, Outcome, Query, Result

T = TypeVar("T")

#: wall-clock seconds a fast test may take before it is failed as hung
REAL_LIMIT = 20.0


class _JumpSelector(selectors.BaseSelector):
    """A selector that, instead of blocking, moves the virtual clock to the next timer."""

    def __init__(self, loop: VirtualLoop) -> None:
        self._real = selectors.DefaultSelector()
        self._loop = loop
        self._started = time.monotonic()

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def get_map(self) -> Any:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        loop = self._loop
        if loop.check_conditions():  # someone's condition came true: they run first
            return []
        if time.monotonic() - self._started > REAL_LIMIT:
            raise RuntimeError(f"virtual-clock test ran over {REAL_LIMIT} s of real time")
        if timeout is None:
            raise RuntimeError("deadlock: nothing is ready and no timer is set")
        loop.virtual += timeout
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock only moves when nothing is left to do at this instant."""

    def __init__(self) -> None:
        self.virtual = 0.0
        self.conditions: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        super().__init__(_JumpSelector(self))

    def time(self) -> float:
        return self.virtual

    def check_conditions(self) -> bool:
        """At an idle instant: wake whoever waits for a condition that now holds."""
        woke = False
        for entry in list(self.conditions):
            cond, fut = entry
            if not fut.done():
                try:
                    if not cond():
                        continue
                    fut.set_result(None)
                except Exception as exc:
                    fut.set_exception(exc)
                woke = True
            self.conditions.remove(entry)
        return woke


async def until(cond: Callable[[], bool], timeout: float = 60.0) -> None:
    """Wait until ``cond()`` holds; it is checked whenever the loop has nothing else to do,
    before the clock moves, so the time at which it came true is exact."""
    if cond():
        return
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualLoop)
    fut: asyncio.Future[None] = loop.create_future()
    loop.conditions.append((cond, fut))
    async with asyncio.timeout(timeout):
        await fut


def run(coro: Coroutine[Any, Any, T], limit: float = 600.0) -> T:
    """Run ``coro`` on a virtual clock, failing it after ``limit`` virtual seconds."""
    async def bounded() -> T:
        async with asyncio.timeout(limit):
            return await coro
    with asyncio.Runner(loop_factory=VirtualLoop) as runner:
        return runner.run(bounded())


# -- in-memory byte streams ------------------------------------------------------------------

class _Transport(asyncio.Transport):
    """One end of an in-memory stream: writes arrive at the peer on the next loop turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._loop = loop
        self._protocol = protocol
        self.peer: _Transport | None = None
        self._closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        peer = self.peer
        if not self._closing and peer is not None and not peer._closing:
            self._loop.call_soon(peer._received, bytes(data))

    def _received(self, data: bytes) -> None:
        if not self._closing:
            self._protocol.data_received(data)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.call_soon(self._protocol.connection_lost, None)
        if self.peer is not None:  # after the data already written: FIFO
            self._loop.call_soon(self.peer.close)

    def abort(self) -> None:
        self.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def get_write_buffer_size(self) -> int:
        return 0

    def can_write_eof(self) -> bool:
        return False


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def _end(loop: asyncio.AbstractEventLoop) -> tuple[Streams, _Transport]:
    reader = asyncio.StreamReader()
    protocol = asyncio.StreamReaderProtocol(reader)
    transport = _Transport(loop, protocol)
    protocol.connection_made(transport)
    return (reader, asyncio.StreamWriter(transport, protocol, reader, loop)), transport


def stream_pair() -> tuple[Streams, Streams]:
    loop = asyncio.get_running_loop()
    a, ta = _end(loop)
    b, tb = _end(loop)
    ta.peer, tb.peer = tb, ta
    return a, b


class MemoryNetwork:
    """Who listens where. ``await net.open(host, port)`` is the ESME's Opener."""

    def __init__(self) -> None:
        self.listeners: dict[tuple[str, int], Callable[[Streams], Coroutine[Any, Any, None]]] = {}
        #: hosts whose connect never completes (a black hole: the connect timeout ends it)
        self.silent: set[str] = set()
        self.connects: list[tuple[str, int]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self, host: str, port: int) -> Streams:
        self.connects.append((host, port))
        if host in self.silent:
            await asyncio.get_running_loop().create_future()
        serve = self.listeners.get((host, port))
        if serve is None:
            raise ConnectionRefusedError(111, f"Connect call failed ('{host}', {port})")
        ours, theirs = stream_pair()
        task = asyncio.get_running_loop().create_task(serve(theirs))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return ours


class MemorySmsc:
    """An SMSC as OsmoMSC is one: accepts binds with ``password``, answers each submit_sm with
    ``submit_status`` after ``submit_delay`` (never, if ``answer`` is False), and sends
    deliver_sm on the newest OSMPP bind_transceiver."""

    def __init__(self, net: MemoryNetwork, host: str, port: int = 2775,
                 password: str = "foo") -> None:  # noqa: S107 - OsmoMSC's example config
        self.host, self.password = host, password
        self.submits: list[Pdu] = []
        self.submit_status = Status.ROK
        self.submit_delay = 0.0
        self.answer = True
        self.binds: list[tuple[str, str, int]] = []
        self.conns: list[SmppConnection] = []
        self.osmpp: SmppConnection | None = None
        self.late: set[asyncio.Task[None]] = set()
        net.listeners[(host, port)] = self._serve

    async def _serve(self, streams: Streams) -> None:
        conn = SmppConnection(*streams, self._request, name=f"smsc:{self.host}")
        self.conns.append(conn)
        try:
            await conn.serve()
        finally:
            self.conns.remove(conn)
            if self.osmpp is conn:
                self.osmpp = None

    def _request(self, conn: SmppConnection, pdu: Pdu) -> None:
        if pdu.command.startswith("bind_"):
            system_id = bytes(pdu.get("system_id") or b"").decode("latin-1")
            password = bytes(pdu.get("password") or b"").decode("latin-1")
            status = Status.ROK if password == self.password else Status.RINVPASWD
            self.binds.append((system_id, pdu.command, status))
            conn.respond(pdu, status, system_id="OsmoMSC")
            if status == Status.ROK and pdu.command == "bind_transceiver":
                self.osmpp = conn
        elif pdu.command == "submit_sm":
            self.submits.append(pdu)
            task = asyncio.get_running_loop().create_task(self._answer(conn, pdu))
            self.late.add(task)
            task.add_done_callback(self.late.discard)
        elif pdu.command in ("enquire_link", "unbind"):
            conn.respond(pdu)
            if pdu.command == "unbind":
                conn.close()

    async def _answer(self, conn: SmppConnection, pdu: Pdu) -> None:
        if self.submit_delay:
            await asyncio.sleep(self.submit_delay)
        if self.answer:
            conn.respond(pdu, self.submit_status, message_id="" if self.submit_status
                         else f"m{len(self.submits)}")

    @staticmethod
    async def wait_for(cond: Callable[[], bool], timeout: float = 60.0) -> None:
        await until(cond, timeout)

    async def bound(self) -> SmppConnection:
        await self.wait_for(lambda: self.osmpp is not None and not self.osmpp.closed)
        assert self.osmpp is not None
        return self.osmpp

    async def deliver(self, fields: dict[str, Any], timeout: float = 10.0) -> int:
        """Send one deliver_sm on the OSMPP bind: its answer's command_status."""
        conn = await self.bound()
        try:
            resp = await conn.request("deliver_sm", timeout, **fields)
        except SmppError as exc:
            return exc.status
        return resp.status


class TableLookup:
    """mslookup from a table: ``place(msisdn, host, age)``; unknown: not found."""

    def __init__(self) -> None:
        self.table: dict[str, Result] = {}
        self.delay = 0.0
        self.error: BaseException | None = None
        self.queries: list[str] = []
        self.opened = False

    def place(self, msisdn: str, host: str, age: int = 0, site: str | None = None) -> None:
        query = Query.parse(f"smpp.sms.{msisdn}.msisdn")
        self.table[str(query)] = Result(query, Outcome.FOUND, age=age,
                                        v4=Endpoint(host, 2775), site=site or host)

    async def open(self) -> None:
        self.opened = True

    async def close(self) -> None:
        self.opened = False

    async def resolve(self, query: str) -> Result:
        self.queries.append(query)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        parsed = Query.parse(query)
        return self.table.get(str(parsed)) or Result(parsed, Outcome.NOT_FOUND)


class MemoryQueue:
    """Store-and-forward in memory: what the forwarder hands over, and its outcome."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.stored: list[tuple[Message, str]] = []
        self.fail: BaseException | None = None
        self.seen_delay = 0.0

    async def seen(self, msg: Message, wait: float = 0.25) -> bool:
        if self.seen_delay:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await asyncio.sleep(self.seen_delay)
                    return self.states.get(message_key(msg)) in ("pending", "inflight",
                                                                 "delivered")
            return False
        return self.states.get(message_key(msg)) in ("pending", "inflight", "delivered")

    async def enqueue(self, msg: Message, reason: str,
                      attempt: asyncio.Future[int] | None = None,
                      wait: float | None = None) -> bool:
        if self.fail is not None:
            raise self.fail
        key = message_key(msg)
        if key in self.states:
            return True
        self.states[key] = "pending" if attempt is None else "inflight"
        self.stored.append((msg, reason))
        if attempt is not None:
            attempt.add_done_callback(lambda f: self._attempt_done(key, f))
        return True

    def _attempt_done(self, key: str, fut: asyncio.Future[int]) -> None:
        ok = not fut.cancelled() and fut.exception() is None and fut.result() == Status.ROK
        self.states[key] = "delivered" if ok else "pending"

    async def record_delivered(self, msg: Message) -> None:
        self.states[message_key(msg)] = "delivered"
