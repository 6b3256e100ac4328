"""A responder that answers mslookup queries as OsmoHLR does.

For tests, the lab and sites that run no OsmoHLR. Like OsmoHLR it answers only when it has a
record (silence means "not here"), by multicast to the group, echoing the query id, from the
group port; the answer bytes are exactly OsmoHLR's. Records come from a table (``set()``) or a
callback; a record may carry a delay, to play a slow site.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .._ratelimit import LogLimiter
from .errors import InvalidAnswer, TransportError, WireError
from .model import Endpoint
from .query import DEFAULT_SUFFIX, Query, as_query, validate_suffix
from .transport import DEFAULT_GROUP_V4, DEFAULT_PORT, MulticastConfig, open_socket
from .wire import decode_query, encode_answer, is_answer

__all__ = ["Record", "Responder"]

log = logging.getLogger("dgsm.mslookup.responder")
_limited = LogLimiter(log)  # per-packet records: at most one (and a summary) per interval

_ENDPOINT = re.compile(r"\[(?P<v6>[0-9A-Fa-f:.]+)\]:(?P<p6>[0-9]+)|(?P<v4>[0-9.]+):(?P<p4>[0-9]+)")


@dataclass(frozen=True, slots=True)
class Record:
    """What to answer for one query: age and endpoints; ``delay`` seconds before answering."""

    age: int
    v4: Endpoint | None = None
    v6: Endpoint | None = None
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.v4 is None and self.v6 is None:
            raise InvalidAnswer("a record needs an IPv4 or an IPv6 endpoint")
        if not 0 <= self.age <= 0xFFFFFFFF:
            raise InvalidAnswer(f"age {self.age} out of range")
        if not 0 <= self.delay <= 60:
            raise InvalidAnswer(f"delay {self.delay} out of range 0..60 s")

    @classmethod
    def parse(cls, text: str) -> Record:
        """Parse ``AGE,IP:PORT[,[IPV6]:PORT]`` (e.g. ``5,10.9.8.7:5060,[fd00::7]:5060``)."""
        age_text, _, rest = text.partition(",")
        if not age_text.isdigit() or not rest:
            raise InvalidAnswer(f"invalid record {text!r}: need AGE,IP:PORT[,[IPV6]:PORT]")
        v4: Endpoint | None = None
        v6: Endpoint | None = None
        for part in rest.split(","):
            m = _ENDPOINT.fullmatch(part.strip())
            if m is None:
                raise InvalidAnswer(f"invalid endpoint {part!r}: need IP:PORT or [IPV6]:PORT")
            if m.group("v6"):
                v6 = Endpoint(m.group("v6"), int(m.group("p6")))
            else:
                v4 = Endpoint(m.group("v4"), int(m.group("p4")))
        if (v4 is not None and v4.family != 4) or (v6 is not None and v6.family != 6):
            raise InvalidAnswer(f"invalid record {text!r}: address family mismatch")
        return cls(int(age_text), v4, v6)


Handler = Callable[[Query], Record | None]


class Responder:
    """Answer mslookup queries from a table and/or a callback (the callback is asked first).

    ``source`` makes the answers leave from that local address (port: the group port),
    to play a site with its own address on a single host.
    """

    def __init__(
        self,
        table: Mapping[str, Record] | None = None,
        *,
        handler: Handler | None = None,
        group: str = DEFAULT_GROUP_V4,
        port: int = DEFAULT_PORT,
        interface: str | None = None,
        ttl: int = 1,
        suffix: str = DEFAULT_SUFFIX,
        source: str | None = None,
    ) -> None:
        self.config = MulticastConfig(group, port, interface, ttl)
        self.suffix = validate_suffix(suffix)
        self.source = source
        self.handler = handler
        self._table: dict[tuple[object, ...], Record] = {}
        for key, record in (table or {}).items():
            self.set(key, record)
        self.queries = 0
        self.answered = 0
        self.malformed = 0
        self.send_errors = 0
        self._warned: set[int | None] = set()
        self._sock: socket.socket | None = None
        self._send_sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[asyncio.TimerHandle] = set()
        # Encoded answers without their 2-byte id: the same record for the same query gives the
        # same bytes but for the id, and every re-sent copy of a query is answered again.
        self._encoded: dict[tuple[tuple[object, ...], Record], bytes] = {}

    def set(self, query: str | Query, record: Record | None) -> None:
        """Answer ``query`` with ``record`` from now on (None: stay silent)."""
        key = as_query(query).key
        if record is None:
            self._table.pop(key, None)
        else:
            self._table[key] = record

    def lookup(self, query: Query) -> Record | None:
        if self.handler is not None:
            record = self.handler(query)
            if record is not None:
                return record
        return self._table.get(query.key)

    async def open(self) -> None:
        if self._sock is not None:
            return
        loop = asyncio.get_running_loop()
        sock = open_socket(self.config)
        try:
            if self.source is not None:
                self._send_sock = open_socket(self.config, bind_source=self.source)
        except TransportError:
            sock.close()
            raise
        self._sock, self._loop = sock, loop
        loop.add_reader(sock.fileno(), self._on_readable)

    async def close(self) -> None:
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        if self._send_sock is not None:
            self._send_sock.close()
        self._sock = self._send_sock = None

    async def __aenter__(self) -> Responder:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(256):
            try:
                data, _addr = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                _limited.debug("recvfrom", "recvfrom failed: %s", exc)
                return
            self._datagram(data)

    def _datagram(self, data: bytes) -> None:
        if is_answer(data) is not False:
            return  # answers (ours looped back, or other sites') and runts
        try:
            packet_id, query = decode_query(data, self.suffix)
        except WireError as exc:
            self.malformed += 1
            _limited.debug("malformed query", "ignored malformed query: %s", exc)
            return
        self.queries += 1
        try:
            record = self.lookup(query)
        except Exception:
            _limited.log(logging.ERROR, "handler", "responder handler failed for %s",
                         query.domain, exc_info=True)
            return
        if record is None:
            return
        packet = packet_id.to_bytes(2, "big") + self._encode(query, record)[2:]
        if record.delay > 0 and self._loop is not None:
            handle: asyncio.TimerHandle | None = None

            def later() -> None:
                if handle is not None:
                    self._pending.discard(handle)
                self._send(packet)

            handle = self._loop.call_later(record.delay, later)
            self._pending.add(handle)
        else:
            self._send(packet)

    def _encode(self, query: Query, record: Record) -> bytes:
        key = (query.key, record)
        packet = self._encoded.get(key)
        if packet is None:
            packet = encode_answer(query, 0, record.age, record.v4, record.v6, self.suffix)
            if len(self._encoded) >= 4096:
                del self._encoded[next(iter(self._encoded))]
            self._encoded[key] = packet
        return packet

    def _send(self, packet: bytes) -> None:
        sock = self._send_sock or self._sock
        if sock is None:
            return
        try:
            sock.sendto(packet, self.config.destination())
            self.answered += 1
        except OSError as exc:
            self.send_errors += 1
            # a firewall dropping every answer must not flood the log: warn once per errno
            if exc.errno in self._warned:
                _limited.debug("send error", "cannot send mslookup answer: %s (%d so far)",
                               exc, self.send_errors)
            else:
                self._warned.add(exc.errno)
                log.warning("cannot send mslookup answer: %s (%d so far)", exc, self.send_errors)
