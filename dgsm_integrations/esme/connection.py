"""One SMPP connection over asyncio, for either side (our ESME binds, and the test SMSC).

Requests we send get a fresh sequence number and a future; responses are matched by sequence
number in any order, so any number of requests may be outstanding. Requests we receive go to
``on_request`` at once (the read loop never waits for a handler), so one slow message never
holds up the next. Hostile input: a broken length closes the connection (the framing is lost);
an unknown command is answered generic_nack; a known request whose body does not decode is
answered with its own ``*_resp`` carrying the error, so the peer's timer is stopped at once
(OsmoMSC ignores generic_nack); undecodable or unexpected responses are dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from .._ratelimit import LogLimiter
from .errors import ConnectionLost, PduError, SmppError
from .pdu import GENERIC_NACK, HEADER, MAX_PDU, MIN_PDU, Pdu, Status, build, decode

__all__ = ["SmppConnection"]

log = logging.getLogger("dgsm.esme.smpp")
#: what a peer can repeat per PDU is logged at most once (and a summary) per interval
_limited = LogLimiter(log)

RequestHandler = Callable[["SmppConnection", Pdu], None]


class SmppConnection:
    """An SMPP connection: ``serve()`` runs the read loop until the peer goes away."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_request: RequestHandler,
        *,
        name: str = "smpp",
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.on_request = on_request
        self.name = name
        self.closed = False
        self._seq = 0
        self._pending: dict[int, tuple[str, asyncio.Future[Pdu]]] = {}
        self.malformed = 0
        self.unmatched = 0
        self.closed_event = asyncio.Event()

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    def next_sequence(self) -> int:
        self._seq = self._seq % 0x7FFFFFFF + 1
        return self._seq

    # -- sending ---------------------------------------------------------------------------

    def send_raw(self, data: bytes) -> bool:
        if self.closed or self.writer.is_closing():
            return False
        self.writer.write(data)
        return True

    def respond(self, request: Pdu | tuple[str, int], status: int = Status.ROK,
                **fields: Any) -> bool:
        """Answer a request (a Pdu, or (command, sequence)); False if the connection is gone."""
        cmd, seq = (request.command, request.sequence) if isinstance(request, Pdu) else request
        return self.send_raw(build(cmd + "_resp", seq, status, **fields))

    def nack(self, sequence: int, status: int) -> bool:
        return self.send_raw(build("generic_nack", sequence, status))

    async def request(self, command: str, timeout: float, **fields: Any) -> Pdu:
        """Send a request and wait (at most ``timeout``) for its response.

        Returns the response if its status is ROK; raises SmppError for a non-zero status,
        ConnectionLost, or TimeoutError (the request stays unanswered: the caller decides)."""
        if self.closed:
            raise ConnectionLost(f"{self.name}: connection closed")
        seq = self.next_sequence()
        data = build(command, seq, **fields)
        fut: asyncio.Future[Pdu] = asyncio.get_running_loop().create_future()
        self._pending[seq] = (command, fut)
        try:
            self.writer.write(data)
            async with asyncio.timeout(timeout):
                await self.writer.drain()
                resp = await fut
        except TimeoutError:  # unanswered, but the connection is still up (an OSError too)
            raise
        except (ConnectionError, OSError) as exc:
            raise ConnectionLost(f"{self.name}: {exc}") from None
        finally:
            self._pending.pop(seq, None)
        if resp.status != Status.ROK:
            raise SmppError(resp.status, command)
        return resp

    # -- receiving -------------------------------------------------------------------------

    async def serve(self) -> None:
        """Read and dispatch PDUs until EOF or error; then fail everything outstanding."""
        try:
            while True:
                try:
                    head = await self.reader.readexactly(4)
                except asyncio.IncompleteReadError:
                    return
                length = int.from_bytes(head, "big")
                if not MIN_PDU <= length <= MAX_PDU:
                    self.malformed += 1
                    log.warning("%s: invalid command_length %d: closing", self.name, length)
                    return
                try:
                    rest = await self.reader.readexactly(length - 4)
                except asyncio.IncompleteReadError:
                    return
                self._dispatch(head + rest)
        except (ConnectionError, OSError) as exc:
            log.info("%s: connection error: %s", self.name, exc)
        finally:
            self.close()

    def _dispatch(self, frame: bytes) -> None:
        _length, cid, _status, seq = HEADER.unpack_from(frame)
        if cid & 0x80000000:
            self._response(frame, cid, seq)
            return
        try:
            pdu = decode(frame)
        except PduError as exc:
            self.malformed += 1
            _limited.warning("malformed request", "%s: malformed request seq=%d: %s",
                             self.name, seq, exc)
            name = _request_name(cid)
            if name is not None and exc.status != Status.RINVCMDID:
                self.respond((name, seq), exc.status)
            else:
                self.nack(seq, exc.status)
            return
        try:
            self.on_request(self, pdu)
        except Exception:
            _limited.log(logging.ERROR, "handler", "%s: request handler failed for %s",
                         self.name, pdu.command, exc_info=True)

    def _response(self, frame: bytes, cid: int, seq: int) -> None:
        entry = self._pending.get(seq)
        if entry is None:
            self.unmatched += 1
            _limited.debug("unmatched response", "%s: response 0x%08x seq=%d to nothing we "
                           "asked", self.name, cid, seq)
            return
        command, fut = entry
        try:
            pdu = decode(frame)
        except PduError as exc:
            self.malformed += 1
            _limited.warning("malformed response", "%s: malformed response seq=%d: %s",
                             self.name, seq, exc)
            if not fut.done():
                fut.set_exception(SmppError(exc.status or Status.RSYSERR, command))
            return
        if cid != GENERIC_NACK and pdu.command != command + "_resp":
            self.unmatched += 1
            _limited.warning("mismatched response", "%s: %s answers %s seq=%d", self.name,
                             pdu.command, command, seq)
            return
        if not fut.done():
            if cid == GENERIC_NACK:
                fut.set_exception(SmppError(pdu.status or Status.RSYSERR, command))
            else:
                fut.set_result(pdu)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for command, fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionLost(f"{self.name}: closed before {command}_resp"))
        self._pending.clear()
        with contextlib.suppress(Exception):
            self.writer.close()
        self.closed_event.set()

    async def wait_closed(self) -> None:
        self.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


def _request_name(cid: int) -> str | None:
    from .pdu import command_name
    name = command_name(cid)
    if name is None or name in ("generic_nack", "alert_notification"):
        return None
    return name
