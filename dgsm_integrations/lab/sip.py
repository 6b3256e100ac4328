"""A small SIP endpoint over UDP, enough to see a routed call arrive at the right village.

- :class:`SipUas` answers OPTIONS 200, INVITE 100 then 200 OK (a tiny SDP, re-sent on the
  RFC 3261 timers until the ACK comes) or a chosen final code, ACK silently, BYE 200; it
  records every INVITE (user, host, From, Call-ID, source) and lets a caller await one for
  a given user. Garbage is counted and dropped.
- :func:`call` is the UAC: INVITE (re-sent on RFC 3261 timer A: 0.5 s, doubling), waits for
  the final answer within ``timeout``, ACKs it, and hangs up with BYE after a 2xx (re-sent
  on timer E until answered).

A subset of RFC 3261 written for the lab and the tests; not a general SIP stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import cast

__all__ = ["CallResult", "Invite", "SipUas", "call"]

_USER = re.compile(r"[0-9]{1,15}")
#: What ``call(..., any_user=True)`` may dial: RFC 3261 user-part characters (hostile tests).
_ANY_USER = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%]{1,64}")
_REQUEST = re.compile(r"([A-Z]+) sip:([^@ ;>]+)@([^ ;>]+) SIP/2\.0")
_STATUS = re.compile(r"SIP/2\.0 ([1-6][0-9]{2}) (.*)")
MAX_DATAGRAM = 4096
T1 = 0.5


def _parse(data: bytes) -> tuple[str, dict[str, str]] | None:
    """First line and headers (lower-case names, first value wins); None if not SIP."""
    if len(data) > MAX_DATAGRAM:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    head, _, _ = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            return None
        headers.setdefault(name.strip().lower(), value.strip())
    return lines[0], headers


@dataclass(frozen=True)
class Invite:
    """One INVITE a UAS received."""

    user: str
    host: str
    from_: str
    call_id: str
    source: tuple[str, int]
    at: float


class SipUas(asyncio.DatagramProtocol):
    """``await SipUas.start(host, port)``; ``await uas.invited(user)``; ``uas.close()``."""

    def __init__(self, final: int = 200, max_records: int = 1000) -> None:
        self.final = final
        self.invites: deque[Invite] = deque(maxlen=max_records)
        self.dropped = 0
        self.transport: asyncio.DatagramTransport | None = None
        self._changed = asyncio.Event()
        #: 2xx answers not yet ACKed, re-sent on RFC 3261 timers (13.3.1.4): call-id -> timer
        self._unacked: dict[str, asyncio.TimerHandle] = {}

    @classmethod
    async def start(cls, host: str, port: int = 5060, final: int = 200) -> SipUas:
        loop = asyncio.get_running_loop()
        uas = cls(final)
        await loop.create_datagram_endpoint(lambda: uas, local_addr=(host, port))
        return uas

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's UDP transport does not subclass DatagramTransport on every version
        self.transport = cast(asyncio.DatagramTransport, transport)

    def close(self) -> None:
        for timer in self._unacked.values():
            timer.cancel()
        self._unacked.clear()
        if self.transport is not None:
            self.transport.close()

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        parsed = _parse(data)
        if parsed is None:
            self.dropped += 1
            return
        first, headers = parsed
        m = _REQUEST.fullmatch(first)
        needed = ("via", "from", "to", "call-id", "cseq")
        if m is None or any(h not in headers for h in needed):
            self.dropped += 1
            return
        method, user, host = m.groups()
        source = (str(addr[0]), int(addr[1]))
        if method == "ACK":
            timer = self._unacked.pop(headers["call-id"], None)
            if timer is not None:
                timer.cancel()
            return
        if method == "INVITE":
            if not any(i.call_id == headers["call-id"] for i in self.invites):
                self.invites.append(Invite(user, host, headers["from"], headers["call-id"],
                                           source, time.monotonic()))
                self._changed.set()
            self._respond(headers, 100, "Trying", source)
            if self.final == 200:
                self._respond(headers, 200, "OK", source, tag=True, sdp=True)
                if headers["call-id"] not in self._unacked:
                    self._resend_ok(headers, source, T1, time.monotonic() + 64 * T1)
            else:
                self._respond(headers, self.final, "Lab Refusal", source, tag=True)
        elif method in ("BYE", "OPTIONS", "CANCEL"):
            self._respond(headers, 200, "OK", source, tag=method != "BYE")
        else:
            self._respond(headers, 405, "Method Not Allowed", source, tag=True)

    def _resend_ok(self, headers: dict[str, str], dest: tuple[str, int], interval: float,
                   give_up: float) -> None:
        """Re-send the 200 OK until its ACK (T1 doubling to T2 = 4 s, for 64*T1): a lost
        2xx would otherwise leave the caller's side waiting for good."""
        loop = asyncio.get_running_loop()
        call_id = headers["call-id"]

        def again() -> None:
            if call_id not in self._unacked:
                return
            if time.monotonic() >= give_up or self.transport is None \
                    or self.transport.is_closing():
                del self._unacked[call_id]
                return
            self._respond(headers, 200, "OK", dest, tag=True, sdp=True)
            self._resend_ok(headers, dest, min(interval * 2, 4.0), give_up)

        self._unacked[call_id] = loop.call_later(interval, again)

    def _respond(self, headers: dict[str, str], code: int, reason: str,
                 dest: tuple[str, int], *, tag: bool = False, sdp: bool = False) -> None:
        assert self.transport is not None
        to = headers["to"]
        if tag and ";tag=" not in to:
            to += f";tag={headers['call-id'][:8]}uas"
        body = ""
        if sdp:
            host = self.transport.get_extra_info("sockname")[0]
            body = (f"v=0\r\no=lab 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
                    "m=audio 4000 RTP/AVP 0\r\n")
        msg = (f"SIP/2.0 {code} {reason}\r\nVia: {headers['via']}\r\nFrom: {headers['from']}\r\n"
               f"To: {to}\r\nCall-ID: {headers['call-id']}\r\nCSeq: {headers['cseq']}\r\n"
               + ("Content-Type: application/sdp\r\n" if body else "")
               + f"Content-Length: {len(body)}\r\n\r\n{body}")
        self.transport.sendto(msg.encode(), dest)

    def count(self, user: str) -> int:
        """How many INVITEs (distinct Call-IDs) for ``user`` arrived so far."""
        return sum(1 for i in self.invites if i.user == user)

    async def until_count(self, user: str, n: int, timeout: float = 5.0) -> bool:
        """Wait (bounded) until ``n`` INVITEs for ``user`` arrived; False if not in time."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.count(user) < n:
                    self._changed.clear()
                    await self._changed.wait()
        return self.count(user) >= n

    async def invited(self, user: str, timeout: float = 5.0) -> Invite:
        """The first INVITE for ``user`` (waits for it, bounded)."""
        async with asyncio.timeout(timeout):
            while True:
                for inv in self.invites:
                    if inv.user == user:
                        return inv
                self._changed.clear()
                await self._changed.wait()


@dataclass
class CallResult:
    """What the UAC saw."""

    code: int | None = None
    reason: str = "no answer"
    provisional: list[int] = field(default_factory=list)
    invites_sent: int = 0
    elapsed: float = 0.0
    cancelled: bool = False
    bye_answered: bool = False

    @property
    def answered(self) -> bool:
        return self.code is not None and 200 <= self.code < 300


class _Uac(asyncio.DatagramProtocol):
    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self.responses: asyncio.Queue[tuple[int, str, dict[str, str]]] = asyncio.Queue()
        self.requests: list[str] = []  # methods the far end sent us (BYE, ...)
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        parsed = _parse(data)
        if parsed is None:
            return
        first, headers = parsed
        if headers.get("call-id") != self.call_id:
            return
        m = _STATUS.fullmatch(first)
        if m is not None:
            self.responses.put_nowait((int(m.group(1)), m.group(2), headers))
            return
        method = first.split(" ", 1)[0]
        self.requests.append(method)
        if method in ("BYE", "OPTIONS") and self.transport is not None:
            # the far end hangs up (a PBX, after its Dial ended): answer as a phone does
            reply = (f"SIP/2.0 200 OK\r\nVia: {headers.get('via', '')}\r\n"
                     f"From: {headers.get('from', '')}\r\nTo: {headers.get('to', '')}\r\n"
                     f"Call-ID: {self.call_id}\r\nCSeq: {headers.get('cseq', '')}\r\n"
                     "Content-Length: 0\r\n\r\n")
            self.transport.sendto(reply.encode(), addr)

    async def invite_response(self) -> tuple[int, str, dict[str, str]]:
        """The next response to our INVITE (a CANCEL's or BYE's own answer is skipped)."""
        while True:
            code, reason, headers = await self.responses.get()
            if headers.get("cseq", "").endswith("INVITE"):
                return code, reason, headers


async def _hang_up(transport: asyncio.DatagramTransport, proto: _Uac, bye: bytes,
                   ack: bytes, limit: float = 16.0) -> bool:
    """Send BYE until it is answered (RFC 3261 timer E: T1 doubling to T2 = 4 s), ACKing
    any 2xx re-sent meanwhile (our ACK was lost). True if the BYE was answered."""
    interval = T1
    try:
        async with asyncio.timeout(limit):
            while True:
                transport.sendto(bye)
                try:
                    async with asyncio.timeout(interval):
                        while True:
                            code, _, headers = await proto.responses.get()
                            cseq = headers.get("cseq", "")
                            if "BYE" in cseq:
                                return True
                            if "INVITE" in cseq and 200 <= code < 300:
                                transport.sendto(ack)
                except TimeoutError:
                    interval = min(interval * 2, 4.0)
    except TimeoutError:
        return False


async def call(user: str, host: str, port: int, *, caller: str = "1000",
               timeout: float = 8.0, offer_sdp: bool = False, any_user: bool = False,
               local_host: str | None = None,
               cancel_after: float | None = None) -> CallResult:
    """Call ``sip:user@host:port`` from a fresh local UDP port; ACK and BYE as a phone would.

    ``offer_sdp``: put an audio offer (PCMU) in the INVITE, as phones do (FreeSWITCH hangs up
    an INVITE without SDP unless its profile enables 3pcc). ``any_user``: dial any RFC 3261
    user part, %-escapes included, not only an MSISDN (to test hostile destinations).
    ``local_host``: the source address. ``cancel_after``: hang up (CANCEL) that many seconds
    after the first provisional answer, before any final one: the result is then normally 487.
    """
    if not (_ANY_USER if any_user else _USER).fullmatch(user):
        raise ValueError(f"not {'a SIP user part' if any_user else 'an MSISDN'}: {user!r}")
    loop = asyncio.get_running_loop()
    call_id = secrets.token_hex(8)
    proto = _Uac(call_id)
    transport, _ = await loop.create_datagram_endpoint(
        lambda: proto, remote_addr=(host, port),
        local_addr=(local_host, 0) if local_host else None)
    local_host, local_port = transport.get_extra_info("sockname")[:2]
    branch = "z9hG4bK" + secrets.token_hex(6)
    tag = secrets.token_hex(4)
    base = (f"Via: SIP/2.0/UDP {local_host}:{local_port};branch={branch}\r\n"
            f"From: <sip:{caller}@{local_host}>;tag={tag}\r\n"
            f"To: <sip:{user}@{host}>\r\nCall-ID: {call_id}\r\n")
    sdp = (f"v=0\r\no=lab 1 1 IN IP4 {local_host}\r\ns=-\r\nc=IN IP4 {local_host}\r\n"
           "t=0 0\r\nm=audio 4002 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n") if offer_sdp else ""
    invite = (f"INVITE sip:{user}@{host}:{port} SIP/2.0\r\n{base}CSeq: 1 INVITE\r\n"
              f"Contact: <sip:{caller}@{local_host}:{local_port}>\r\nMax-Forwards: 70\r\n"
              + ("Content-Type: application/sdp\r\n" if sdp else "")
              + f"Content-Length: {len(sdp)}\r\n\r\n{sdp}").encode()
    cancel = (f"CANCEL sip:{user}@{host}:{port} SIP/2.0\r\n{base}CSeq: 1 CANCEL\r\n"
              "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
    result = CallResult()
    start = loop.time()
    ack = bye = b""
    try:
        async with asyncio.timeout(timeout):
            interval = T1
            while True:
                transport.sendto(invite)
                result.invites_sent += 1
                try:
                    code, reason, headers = await asyncio.wait_for(proto.invite_response(),
                                                                   interval)
                except TimeoutError:
                    interval = min(interval * 2, 4.0)  # timer A
                    continue
                cancel_at = None if cancel_after is None else loop.time() + cancel_after
                while code < 200:  # provisional: now wait for the final answer only
                    result.provisional.append(code)
                    if cancel_at is None:
                        code, reason, headers = await proto.invite_response()
                        continue
                    try:
                        code, reason, headers = await asyncio.wait_for(
                            proto.invite_response(), max(0.0, cancel_at - loop.time()))
                    except TimeoutError:
                        transport.sendto(cancel)  # the caller hangs up before an answer
                        result.cancelled = True
                        cancel_at = None
                        code, reason, headers = await proto.invite_response()
                result.code, result.reason = code, reason
                result.elapsed = loop.time() - start  # INVITE to final answer
                to = headers.get("to", f"<sip:{user}@{host}>")
                dialog = base.replace(f"To: <sip:{user}@{host}>", f"To: {to}")
                # a non-2xx is ACKed in the INVITE's transaction, a 2xx in a new one
                ack_via = dialog if code >= 300 else dialog.replace(
                    branch, "z9hG4bK" + secrets.token_hex(6))
                ack = (f"ACK sip:{user}@{host}:{port} SIP/2.0\r\n{ack_via}"
                       "CSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
                transport.sendto(ack)
                if result.answered:
                    bye = (f"BYE sip:{user}@{host}:{port} SIP/2.0\r\n"
                           f"{dialog.replace(branch, 'z9hG4bK' + secrets.token_hex(6))}"
                           "CSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
                           ).encode()
                break
    except TimeoutError:
        result.reason = f"no final answer within {timeout:.1f}s"
    try:
        if result.answered:
            result.bye_answered = await _hang_up(transport, proto, bye, ack)
    finally:
        if result.code is None:
            result.elapsed = loop.time() - start
        with contextlib.suppress(Exception):
            transport.close()
    return result
