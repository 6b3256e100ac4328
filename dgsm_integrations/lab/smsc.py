"""An SMSC that behaves like OsmoMSC's SMPP side (osmo-msc 1.9): the lab's villages and the tests.

Deliberately independent of ``dgsm_integrations.esme``: its own framing, smpplib for bodies.

- Accepts bind_transmitter/receiver/transceiver: interface_version must be 0x34 (else
  RSYSERR), system-id must be in ``acl`` (else RINVSYSID), the password must match (else
  RINVPASWD), a second bind on one connection is RALYBND. The same system-id may bind twice;
  the route to it is the newest bind, and when *any* of its connections drops the route is
  lost until the next bind (as OsmoMSC does). It answers enquire_link, never sends one.
- :meth:`deliver` sends a deliver_sm exactly as OsmoMSC builds it (:func:`mo_sms`) to the
  default route and waits 5 s for deliver_sm_resp (None: no answer, "cause 27").
- Records every submit_sm (:attr:`submits`), answering ROK with message_id
  ``msg_id_not_implemented`` like OsmoMSC's store-and-forward mode, 0x0B at once in
  transaction mode (esm_class mode 2) for a subscriber not in ``known``, RUNKNOWNERR (0xFF) for
  a data_coding it does not know; ``submit_delay`` / ``submit_status`` / ``silent`` /
  ``refuse`` make it slow, refusing, never answering, or closing every new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import smpplib.command as sm_command
import smpplib.command_codes as command_codes

OSMO_VERSION = 0x34
ROK, RALYBND, RSYSERR, RINVDSTADR, RINVPASWD, RINVSYSID, RUNKNOWNERR = (
    0x00, 0x05, 0x08, 0x0B, 0x0E, 0x0F, 0xFF)
RINVCMDID = 0x03
_HDR = struct.Struct(">IIII")
#: Fields smpplib writes as octet strings (bytes); every other C-string goes in as str.
OCTETS = frozenset({"short_message", "message_payload"})
_NAMES = {code: name for name, code in command_codes.commands.items()}


def pdu(name: str, seq: int, status: int = 0, **fields: Any) -> bytes:
    """Generate a PDU with smpplib (C-strings as str or bytes)."""
    conv = {k: (v.decode("latin-1") if isinstance(v, bytes) and k not in OCTETS else v)
            for k, v in fields.items() if v is not None}
    obj = sm_command.factory(name, sequence=seq, **conv)
    obj.sequence = seq
    obj.status = status
    data: bytes = obj.generate()
    return data


def parse(frame: bytes) -> Any:
    """Parse a PDU with smpplib (tests only parse what the ESME sends)."""
    _l, cid, _status, seq = _HDR.unpack_from(frame)
    obj = sm_command.factory(_NAMES[cid], sequence=seq, allow_unknown_opt_params=True)
    obj.parse(frame)
    obj.sequence = seq
    return obj


def mo_sms(src: str, dst: str, payload: bytes, *, data_coding: int = 0x01,
           dest_ton: int = 1, dest_npi: int = 1, udh: bool = False, report: bool = False,
           registered_delivery: int = 0, protocol_id: int = 0, msg_ref: int = 0) -> dict[str, Any]:
    """The fields of a deliver_sm as OsmoMSC builds it for an MO SMS (smpp_msc.c)."""
    esm = 0x04 if report else 0x01
    if udh:
        esm |= 0x40
    return dict(service_type="CMT", source_addr_ton=3, source_addr_npi=1, source_addr=src,
                dest_addr_ton=dest_ton, dest_addr_npi=dest_npi, destination_addr=dst,
                esm_class=esm, protocol_id=protocol_id, priority_flag=0,
                registered_delivery=registered_delivery, data_coding=data_coding,
                short_message=payload, user_message_reference=msg_ref)


@dataclass
class Submitted:
    frame: bytes
    system_id: str
    fields: Any

    def get(self, name: str) -> Any:
        return getattr(self.fields, name, None)


@dataclass(eq=False)
class _Conn:
    peer: SmscPeer
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    system_id: str | None = None
    bind: str | None = None
    seq: int = 0
    pending: dict[int, asyncio.Future[int]] = field(default_factory=dict)
    enquire_links: int = 0

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    async def serve(self) -> None:
        try:
            while True:
                head = await self.reader.readexactly(16)
                length, cid, status, seq = _HDR.unpack(head)
                if not 16 <= length <= 65535:
                    return
                frame = head + await self.reader.readexactly(length - 16)
                self.peer.frames_in.append(frame)
                await self.peer._on_frame(self, frame, cid, status, seq)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self.writer.close()
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_result(-1)
            self.peer._gone(self)


class SmscPeer:
    """The fake OsmoMSC. ``async with SmscPeer(host, port) as msc: ...``."""

    def __init__(self, host: str, port: int = 2775, *,
                 acl: dict[str, str] | None = None, default_route: str = "OSMPP",
                 known: Iterable[str] | None = None) -> None:
        self.host, self.port = host, port
        self.acl = {"OSMPP": "foo", "ISMPP": "foo"} if acl is None else acl
        self.default_route = default_route
        self.known = None if known is None else set(known)
        self.submit_delay = 0.0
        self.submit_status = ROK
        self.silent = False
        self.refuse = False
        self.submits: list[Submitted] = []
        self.binds: list[tuple[str, str, int]] = []
        self.frames_in: list[bytes] = []
        self.conns: set[_Conn] = set()
        self.routes: dict[str, _Conn] = {}
        self.max_bound: dict[str, int] = {}
        self.changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- life cycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> SmscPeer:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.drop_all()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def drop_all(self) -> None:
        """Close every connection at once (the SMSC going away mid-stream)."""
        for conn in list(self.conns):
            conn.writer.close()
            with contextlib.suppress(Exception):
                conn.writer.transport.abort()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.close()
            return
        conn = _Conn(self, reader, writer)
        self.conns.add(conn)
        await conn.serve()

    def _gone(self, conn: _Conn) -> None:
        self.conns.discard(conn)
        if conn.system_id is not None and conn.bind is not None:
            # OsmoMSC: acl->esme = NULL when any connection of this system-id drops
            self.routes.pop(conn.system_id, None)
        self._notify()

    def _notify(self) -> None:
        async def go() -> None:
            async with self.changed:
                self.changed.notify_all()
        self._spawn(go())

    async def wait_for(self, predicate: Any, timeout: float = 5.0) -> None:
        """Wait (bounded) until ``predicate()`` is true; re-checked on every change."""
        async with asyncio.timeout(timeout):
            async with self.changed:
                await self.changed.wait_for(predicate)

    def bound(self, system_id: str) -> list[_Conn]:
        return [c for c in self.conns if c.system_id == system_id and c.bind]

    # -- PDUs ------------------------------------------------------------------------------

    async def _on_frame(self, conn: _Conn, frame: bytes, cid: int, status: int,
                        seq: int) -> None:
        name = _NAMES.get(cid)
        if name is None:
            conn.send(pdu("generic_nack", seq, RINVCMDID))
            return
        if cid & 0x80000000:
            fut = conn.pending.pop(seq, None)
            if fut is not None and not fut.done():
                fut.set_result(status)
            return
        if name.startswith("bind_"):
            self._bind(conn, name, parse(frame), seq)
        elif name == "enquire_link":
            conn.enquire_links += 1
            conn.send(pdu("enquire_link_resp", seq))
            self._notify()
        elif name == "unbind":
            conn.bind = None
            conn.send(pdu("unbind_resp", seq))
        elif name == "submit_sm":
            self._spawn(self._submit(conn, frame, seq))

    def _bind(self, conn: _Conn, name: str, body: Any, seq: int) -> None:
        sysid = bytes(body.system_id or b"").decode("latin-1")
        pw = bytes(body.password or b"").decode("latin-1")
        if body.interface_version != OSMO_VERSION:
            st = RSYSERR
        elif conn.bind is not None:
            st = RALYBND
        elif sysid not in self.acl:
            st = RINVSYSID
        elif self.acl[sysid] and self.acl[sysid] != pw:
            st = RINVPASWD
        else:
            st = ROK
        self.binds.append((sysid, name, st))
        if st == ROK:
            conn.system_id, conn.bind = sysid, name
            self.routes[sysid] = conn
            self.max_bound[sysid] = max(self.max_bound.get(sysid, 0), len(self.bound(sysid)))
        conn.send(pdu(name + "_resp", seq, st, system_id="OsmoMSC"))
        self._notify()

    async def _submit(self, conn: _Conn, frame: bytes, seq: int) -> None:
        body = parse(frame)
        if self.submit_delay:
            await asyncio.sleep(self.submit_delay)  # playing a slow SMSC, not synchronising
        dst = bytes(body.destination_addr or b"").decode("latin-1")
        if self.silent:
            return
        if (body.esm_class or 0) & 0x03 == 2 and self.known is not None and dst not in self.known:
            st = RINVDSTADR
        elif body.data_coding not in (0, 1, 2, 4, 8) and (body.data_coding or 0) & 0xF8 != 0xF0:
            st = RUNKNOWNERR
        else:
            st = self.submit_status
        if st == ROK:
            self.submits.append(Submitted(frame, conn.system_id or "", body))
        conn.send(pdu("submit_sm_resp", seq, st, message_id="msg_id_not_implemented"))
        self._notify()

    # -- sending deliver_sm ----------------------------------------------------------------

    def route(self) -> _Conn | None:
        conn = self.routes.get(self.default_route)
        return conn if conn is not None and conn in self.conns else None

    async def deliver(self, fields: dict[str, Any], timeout: float = 5.0) -> int | None:
        """Send a deliver_sm to the default route like OsmoMSC; the deliver_sm_resp status,
        None after ``timeout`` (OsmoMSC: 5 s), -1 if the connection dropped, -2 no route."""
        conn = self.route()
        if conn is None:
            return -2
        conn.seq += 1
        seq = conn.seq
        return await self.deliver_raw(conn, pdu("deliver_sm", seq, **fields), seq, timeout)

    async def deliver_raw(self, conn: _Conn, frame: bytes, seq: int,
                          timeout: float = 5.0) -> int | None:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        conn.pending[seq] = fut
        conn.send(frame)
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            return None
        finally:
            conn.pending.pop(seq, None)
