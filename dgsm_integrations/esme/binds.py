"""Persistent SMPP binds: the OSMPP bind to the local OsmoMSC and the ISMPP pool.

- :class:`OsmppLink` keeps exactly one bind_transceiver to the local OsmoMSC: connect, bind,
  enquire_link every ``enquire_interval``, and after any loss reconnect with exponential
  back-off. The old connection is closed and awaited before the next connect starts, so two
  binds of ours are never alive at once.
- :class:`IsmppLink` is one bind_transmitter to one destination SMSC, made on first use,
  reused for every message, rebound on the next message after it was lost, with a window of
  outstanding submit_sm. After a failed connect or bind the destination is "down" for a
  back-off period, in which submits fail at once instead of eating the caller's budget.
- :class:`IsmppPool` holds one IsmppLink per destination endpoint, each with the credentials
  the ESME chose for that endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..mslookup import Endpoint
from .connection import SmppConnection
from .errors import BindRefused, ConnectionLost, DestinationDown, SmppError
from .pdu import Pdu, Status

__all__ = ["BindConfig", "IsmppLink", "IsmppPool", "Opener", "OsmppLink", "open_tcp"]

log = logging.getLogger("dgsm.esme.binds")

SMPP_VERSION = 0x34

#: How a bind opens its byte stream to ``(host, port)``: TCP, or an in-memory pair in tests.
Opener = Callable[[str, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


async def open_tcp(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The default :data:`Opener`: a TCP connection."""
    return await asyncio.open_connection(host, port)


@dataclass(frozen=True, slots=True)
class BindConfig:
    system_id: str
    password: str
    system_type: str = ""
    connect_timeout: float = 3.0
    enquire_interval: float = 30.0
    response_timeout: float = 10.0
    backoff_min: float = 0.5
    backoff_max: float = 30.0


async def _connect_and_bind(host: str, port: int, cfg: BindConfig, command: str,
                            on_request: Callable[[SmppConnection, Pdu], None],
                            name: str, opener: Opener = open_tcp) -> SmppConnection:
    async with asyncio.timeout(cfg.connect_timeout):
        reader, writer = await opener(host, port)
    conn = SmppConnection(reader, writer, on_request, name=name)
    serve = asyncio.get_running_loop().create_task(conn.serve(), name=f"{name}-serve")
    conn_tasks.add(serve)
    serve.add_done_callback(conn_tasks.discard)
    try:
        await conn.request(command, cfg.response_timeout, system_id=cfg.system_id,
                           password=cfg.password, system_type=cfg.system_type,
                           interface_version=SMPP_VERSION, addr_ton=0, addr_npi=0,
                           address_range="")
    except SmppError as exc:
        await conn.wait_closed()
        raise BindRefused(name, exc.status) from None
    except BaseException:
        await conn.wait_closed()
        raise
    return conn


#: The read loops of all connections (kept referenced until they end).
conn_tasks: set[asyncio.Task[None]] = set()


def answer_link_request(conn: SmppConnection, pdu: Pdu) -> bool:
    """The requests every link answers itself: enquire_link, unbind, alert_notification.
    Returns False for anything else."""
    if pdu.command == "enquire_link":
        conn.respond(pdu)
    elif pdu.command == "unbind":
        conn.respond(pdu)
        conn.close()
    elif pdu.command == "alert_notification":
        pass  # OsmoMSC sends these when a subscriber attaches; no response exists
    else:
        return False
    return True


async def _keepalive(conn: SmppConnection, cfg: BindConfig) -> None:
    """enquire_link every interval; close the connection when one goes unanswered."""
    while not conn.closed:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(cfg.enquire_interval):
                await conn.closed_event.wait()
        if conn.closed:
            return
        try:
            await conn.request("enquire_link", cfg.response_timeout)
        except (TimeoutError, ConnectionLost, SmppError) as exc:
            log.warning("%s: enquire_link failed (%s): closing", conn.name, exc or "timeout")
            conn.close()
            return


class OsmppLink:
    """The one bind_transceiver to the local OsmoMSC, kept up forever by :meth:`run`."""

    def __init__(self, host: str, port: int, cfg: BindConfig,
                 on_request: Callable[[SmppConnection, Pdu], None],
                 opener: Opener = open_tcp) -> None:
        self.host, self.port, self.cfg = host, port, cfg
        self.opener = opener
        self.on_request = on_request
        self.conn: SmppConnection | None = None
        self.binds = 0
        self.bind_failures = 0
        self.last_error: str | None = None
        self.bound = asyncio.Event()

    async def run(self) -> None:
        backoff = self.cfg.backoff_min
        where = f"OsmoMSC {self.host}:{self.port}"
        while True:
            try:
                conn = await _connect_and_bind(self.host, self.port, self.cfg,
                                               "bind_transceiver", self._request,
                                               f"osmpp:{self.host}:{self.port}", self.opener)
            except BindRefused as exc:
                self._failed(str(exc), logging.ERROR)
            except (OSError, TimeoutError, ConnectionLost) as exc:
                self._failed(f"cannot bind to {where}: {exc or 'timeout'}", logging.WARNING)
            except Exception as exc:  # a bug must not end the bind for good: back off, retry
                log.exception("binding to %s failed", where)
                self._failed(f"cannot bind to {where}: {exc!r}", logging.ERROR)
            else:
                backoff = self.cfg.backoff_min
                self.binds += 1
                self.conn = conn
                self.bound.set()
                log.info("bound to %s as %s (bind #%d)", where, self.cfg.system_id, self.binds)
                keepalive = asyncio.get_running_loop().create_task(_keepalive(conn, self.cfg))
                try:
                    await conn.closed_event.wait()
                finally:
                    self.bound.clear()
                    self.conn = None
                    keepalive.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await keepalive
                    await conn.wait_closed()
                log.warning("lost the bind to %s", where)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.cfg.backoff_max)

    def _failed(self, text: str, level: int) -> None:
        self.bind_failures += 1
        self.last_error = text
        log.log(level, "%s", text)

    def _request(self, conn: SmppConnection, pdu: Pdu) -> None:
        if not answer_link_request(conn, pdu):
            self.on_request(conn, pdu)


class IsmppLink:
    """One persistent bind_transmitter to a destination SMSC."""

    def __init__(self, endpoint: Endpoint, cfg: BindConfig, window: int,
                 opener: Opener = open_tcp) -> None:
        self.endpoint = endpoint
        self.opener = opener
        self.cfg = cfg
        self.window = asyncio.Semaphore(window)
        self.conn: SmppConnection | None = None
        self.binds = 0
        self.down_until = 0.0
        self.backoff = cfg.backoff_min
        self._lock = asyncio.Lock()
        self._keepalive: asyncio.Task[None] | None = None
        self.last_error: str | None = None

    @property
    def name(self) -> str:
        return f"ismpp:{self.endpoint}"

    async def connection(self) -> SmppConnection:
        conn = self.conn
        if conn is not None and not conn.closed:
            return conn
        async with self._lock:
            conn = self.conn
            if conn is not None and not conn.closed:
                return conn
            loop = asyncio.get_running_loop()
            if loop.time() < self.down_until:
                raise DestinationDown(f"{self.name}: down ({self.last_error})")
            try:
                conn = await _connect_and_bind(self.endpoint.host, self.endpoint.port, self.cfg,
                                               "bind_transmitter", self._request, self.name,
                                               self.opener)
            except (BindRefused, OSError, TimeoutError, ConnectionLost) as exc:
                self.last_error = str(exc) or "timeout"
                self.down_until = loop.time() + self.backoff
                self.backoff = min(self.backoff * 2, self.cfg.backoff_max)
                log.warning("%s: %s", self.name, self.last_error)
                raise DestinationDown(f"{self.name}: {self.last_error}") from None
            self.backoff = self.cfg.backoff_min
            self.binds += 1
            self.conn = conn
            self._keepalive = loop.create_task(_keepalive(conn, self.cfg))
            log.info("%s: bound as %s (bind #%d)", self.name, self.cfg.system_id, self.binds)
            return conn

    async def submit(self, fields: dict[str, Any],
                     on_late: Callable[[asyncio.Future[Pdu]], None] | None = None) -> Pdu:
        """Forward one submit_sm; raises SmppError, ConnectionLost, DestinationDown,
        TimeoutError (no answer within response_timeout).

        If the caller gives up (is cancelled) once the submit_sm is on the wire, the request
        is not abandoned: the destination may still accept it. With ``on_late`` the request
        runs on until its answer or ``response_timeout`` and ``on_late`` gets its outcome,
        so a late acceptance can be reported instead of going unseen."""
        async with self.window:
            conn = await self.connection()
            req = asyncio.ensure_future(
                conn.request("submit_sm", self.cfg.response_timeout, **fields))
            try:
                return await asyncio.shield(req)
            except asyncio.CancelledError:
                if on_late is None:
                    req.cancel()
                else:
                    req.add_done_callback(on_late)
                raise

    def _request(self, conn: SmppConnection, pdu: Pdu) -> None:
        if not answer_link_request(conn, pdu):
            conn.respond(pdu, Status.RINVBNDSTS)  # a transmitter gets no deliver_sm

    async def close(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
        if self.conn is not None:
            conn, self.conn = self.conn, None
            if not conn.closed:  # a polite unbind, bounded; the peer may be gone
                with contextlib.suppress(Exception):
                    await conn.request("unbind", 1.0)
            await conn.wait_closed()


class IsmppPool:
    """One :class:`IsmppLink` per destination endpoint, made on first use."""

    def __init__(self, cfg: BindConfig, window: int = 16, opener: Opener = open_tcp) -> None:
        self.cfg = cfg
        self.opener = opener
        self.window_size = window
        self.links: dict[Endpoint, IsmppLink] = {}

    def link(self, endpoint: Endpoint, cfg: BindConfig | None = None) -> IsmppLink:
        """The link to ``endpoint``, made with ``cfg`` (default: the pool's) on first use."""
        link = self.links.get(endpoint)
        if link is None:
            link = self.links[endpoint] = IsmppLink(endpoint, cfg or self.cfg,
                                                    self.window_size, self.opener)
        return link

    async def close(self) -> None:
        await asyncio.gather(*(link.close() for link in self.links.values()))
