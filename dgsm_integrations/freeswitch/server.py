"""``dgsm-fs-esl``: the outbound event-socket server (for FreeSWITCH builds without mod_python3).

FreeSWITCH runs ``<action application="socket" data="127.0.0.1:8084 async full"/>`` and
connects to us once per call. For each connection the server:

1. sends ``connect``, ``myevents`` and ``linger <s>`` (in one write) and reads their replies;
   the reply to ``connect`` is the channel data (URL-encoded headers): ``Unique-ID``,
   ``Caller-Destination-Number``, ``variable_dgsm_*`` overrides;
2. looks the number up on the shared :class:`AsyncResolver` while it keeps reading the
   socket: ``CHANNEL_HANGUP``, a disconnect notice or EOF during the lookup ends the call at
   once (``result=gone``);
3. sends ``sendmsg`` ``execute multiset`` (the ``dgsm_*`` variables, ``hangup_after_bridge``,
   ``continue_on_fail``) and then either ``execute bridge <dial string>`` (with an
   ``Event-UUID`` it waits for in ``CHANNEL_EXECUTE_COMPLETE``) or ``hangup <cause>``;
4. after a bridge that returned with the channel still up (failed, ``continue-on-fail``),
   sends ``resume`` so the dialplan goes on after the ``socket`` action; closes; logs one line:
   ``call uuid=... dest=... result=... action=... esl=... lookup=...ms added=...ms``.

Anything off-protocol (a header line without ``:``, a bad Content-Length, a ``-ERR`` reply)
ends that connection with a log line; FreeSWITCH then continues the dialplan after the
``socket`` action, where the sample dialplan hangs up. Every phase has a time limit; a
connection that has not answered ``connect`` within ``first-byte-timeout`` is closed before it
counts as a call, silent connections make room for new ones, and running out of file
descriptors pauses accepting with one log line (see :mod:`dgsm_integrations._listen`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import sys
from dataclasses import dataclass, field
from typing import ClassVar

from .._callserver import Call, CallServer, ServerStats, _End, race
from ..mslookup import AsyncResolver, MslookupError
from ..settings import ConfigError
from .config import FreeswitchConfig
from .esl import (
    EslProtocolError,
    Message,
    Parser,
    command,
    parse_event,
    sendmsg_execute,
    sendmsg_hangup,
)
from .routing import Decision, decide, error, invalid, parse_destination, query_for

__all__ = ["EslServer", "EslStats", "ServerStats"]

log = logging.getLogger("dgsm.freeswitch.esl")

_UUID = re.compile(r"[0-9A-Za-z-]{1,64}")
#: How long we wait for FreeSWITCH to report the hangup we asked for (only for the log).
_HANGUP_WAIT = 2.0


@dataclass
class EslStats(ServerStats):
    """The call server's counters; ``gone``: the caller left before the call was routed;
    ``dropped``: the connection ended before any routing result."""

    RESULTS: ClassVar[dict[str, str]] = {**ServerStats.RESULTS, "gone": "gone"}
    UNRESOLVED: ClassVar[str | None] = "dropped"

    gone: int = 0
    dropped: int = 0


class _Conn:
    """One FreeSWITCH connection: a reader task sorts replies from events."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.parser = Parser()
        self.replies: asyncio.Queue[Message | None] = asyncio.Queue()
        self.gone = asyncio.Event()  # the channel hung up, or the socket is done
        self.done_reason: str | None = None
        self.closed = False
        self.protocol_error: str | None = None
        self.app_uuid: str | None = None
        self.completion: Message | None = None
        self.completed = asyncio.Event()
        self.hangup_cause: str | None = None
        self.hangup_seen = asyncio.Event()  # a CHANNEL_HANGUP event, or the socket is done
        self.waited = 0.0  # seconds spent waiting for FreeSWITCH's replies

    async def pump(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    self.parser.eof()
                    self._close("EOF")
                    return
                for message in self.parser.feed(data):
                    self._dispatch(message)
        except EslProtocolError as exc:
            self.protocol_error = str(exc)
            self._close(f"protocol error: {exc}")
        except (ConnectionError, OSError) as exc:
            self._close(f"connection error: {exc}")

    def _close(self, reason: str) -> None:
        self.closed = True
        self.done_reason = self.done_reason or reason
        self.gone.set()
        self.hangup_seen.set()
        self.completed.set()
        self.replies.put_nowait(None)

    def _dispatch(self, message: Message) -> None:
        kind = message.content_type
        if kind == "command/reply":
            self.replies.put_nowait(message)
        elif kind == "text/event-plain":
            event = parse_event(message.body)
            name = event.get("Event-Name")
            if name in ("CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE"):
                self.hangup_cause = self.hangup_cause or event.get("Hangup-Cause")
                self.done_reason = self.done_reason or f"{name}"
                self.gone.set()
                self.hangup_seen.set()
            elif (name == "CHANNEL_EXECUTE_COMPLETE" and self.app_uuid is not None
                  and event.get("Application-UUID") == self.app_uuid):
                self.completion = event
                self.completed.set()
        elif kind == "text/disconnect-notice":
            disposition = (message.get("Content-Disposition") or "disconnect").strip()
            self.done_reason = self.done_reason or f"disconnect-notice({disposition[:20]})"
            self.gone.set()
        elif kind == "text/rude-rejection":
            raise EslProtocolError("rude rejection (FreeSWITCH ACL)")
        # api/response, log/data, auth/request: nothing we asked for; ignored

    async def send(self, data: bytes) -> None:
        if self.closed:
            raise _End(self.done_reason or "closed")
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self, what: str) -> Message:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            item = await self.replies.get()
        finally:
            self.waited += loop.time() - t0
        if item is None:
            self.replies.put_nowait(None)  # stays closed for any later reader
            raise _End(f"{self.done_reason} (waiting for the reply to {what})")
        return item


def _shown(value: object, limit: int = 40) -> str:
    text = value if isinstance(value, str) else "-"
    return repr(text[:limit])[1:-1]


def _variable(channel: Message, name: str) -> str | None:
    value = channel.get("variable_" + name)
    return None if value == "_undef_" else value  # how FreeSWITCH serializes ""


@dataclass(eq=False)
class _EslCall(Call):
    conn: _Conn = field(kw_only=True)
    pump: asyncio.Task[None] | None = None
    uuid: str = "-"
    dest: str = "-"
    decision: Decision | None = None
    #: loop time the bridge or hangup was acknowledged; fs-wait: FreeSWITCH's part until then
    acted: float | None = None
    fs_wait: float = 0.0


class EslServer(CallServer[FreeswitchConfig, _EslCall]):
    """Serve outbound ESL connections on ``config.listen``:``config.listen_port``: the
    protocol part of :class:`~dgsm_integrations._callserver.CallServer`.

    ``resolver``: share an existing AsyncResolver (not closed by the server); by default the
    server makes one from the config and closes it on :meth:`close`.
    """

    name = "dgsm-fs-esl"
    log = log
    protocol_errors = (EslProtocolError,)
    routed = "bridged"
    stats: EslStats

    def __init__(self, config: FreeswitchConfig, resolver: AsyncResolver | None = None) -> None:
        super().__init__(config, resolver)
        #: the last reports, for tests and the benchmark: (result, lookup_s, added_s)
        self.reports: list[tuple[str, float, float]] = []
        self.keep_reports = 0

    def new_stats(self) -> EslStats:
        return EslStats()

    def greeting(self) -> bytes:
        # connect, myevents and linger leave the moment a connection is accepted; the reply
        # to connect is the first byte we wait for
        return b"connect\n\n" + command("myevents") + command(f"linger {self.config.linger}")

    def describe(self) -> str:
        return (f"profiles {self.config.profile}/{self.config.profile_v6}, "
                f"service {self.config.service}")

    def open_call(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  peer: str, start: float, accepted: float) -> _EslCall:
        conn = _Conn(reader, writer)
        # from FreeSWITCH's connect: ``connect`` went out on accept, so the wait for its
        # reply (FreeSWITCH's, often the longest under load) is part of fs-wait
        conn.waited = start - accepted
        return _EslCall(reader, writer, peer, start, accepted, conn=conn,
                        pump=asyncio.create_task(conn.pump()))

    async def converse(self, call: _EslCall) -> None:
        conn = call.conn
        try:
            decision = await self._route(call)
        except (_End, EslProtocolError):
            raise
        except Exception as exc:  # a bug must still end the call with the error cause
            self._limited.log(logging.ERROR, "bug", "internal error routing a call from %s",
                              call.peer, exc_info=exc)
            decision = error(self.config, f"internal error: {type(exc).__name__}")
        if decision is None:
            call.result = "gone"
            call.ended = f"gone({conn.done_reason})"
            return
        call.decision = decision
        call.result = decision.result
        await self._act(conn, decision)
        call.acted = asyncio.get_running_loop().time()
        call.fs_wait = conn.waited

    async def follow(self, call: _EslCall) -> None:
        if call.decision is not None and call.acted is not None:
            call.ended = await self._finish(call.conn, call.decision)

    async def close_call(self, call: _EslCall) -> None:
        if call.pump is not None:
            call.pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await call.pump
        call.protocol_error = call.protocol_error or call.conn.protocol_error

    def _added(self, call: _EslCall) -> float:
        end = call.end if call.end is not None else asyncio.get_running_loop().time()
        return (call.acted if call.acted is not None else end) - call.accepted - call.lookup_s

    def finished(self, call: _EslCall) -> None:
        if self.keep_reports:
            self.reports.append((call.result, call.lookup_s, self._added(call)))
            del self.reports[:-self.keep_reports]

    def line(self, call: _EslCall) -> str:
        end = call.end if call.end is not None else asyncio.get_running_loop().time()
        decision = call.decision
        action = "-"
        if decision is not None and call.result != "gone":
            action = (f"bridge={decision.data}" if decision.action == "bridge"
                      else f"hangup={decision.data}")
        return (f"call peer={call.peer} uuid={call.uuid} dest={call.dest} result={call.result} "
                f"{action} esl={call.ended} lookup={call.lookup_s * 1000:.1f}ms "
                f"added={self._added(call) * 1000:.2f}ms fs-wait={call.fs_wait * 1000:.2f}ms "
                f"total={(end - call.accepted) * 1000:.1f}ms"
                f"{f' | {_shown(decision.detail, 200)}' if decision else ''}")

    async def _route(self, call: _EslCall) -> Decision | None:
        conn = call.conn
        # connect, myevents and linger were sent on accept (see start)
        raw = await conn.reply("connect")
        channel = raw.decoded()
        if not channel.ok:
            raise _End(f"connect refused: {_shown(channel.reply_text, 60)}")
        for what in ("myevents", "linger"):
            reply = await conn.reply(what)
            if not reply.ok:
                raise _End(f"{what} refused: {_shown(reply.reply_text, 60)}")
        uuid = channel.get("Unique-ID") or ""
        call.uuid = uuid if _UUID.fullmatch(uuid) else "?"
        dest = channel.get("Caller-Destination-Number")
        if dest is None:
            dest = channel.get("Channel-Destination-Number")
        call.dest = _shown(dest)
        base = self.config
        try:
            config = base.with_channel(lambda name: _variable(channel, name))
        except ConfigError as exc:
            return error(base, str(exc))
        # FreeSWITCH does not escape a '%' followed by two hex digits, so a dialled "%31001"
        # and "1001" arrive alike once decoded: digits need no escape, so any '%' in the raw
        # value means the number was not all digits.
        raw_dest = raw.get("Caller-Destination-Number")
        if raw_dest is None:
            raw_dest = raw.get("Channel-Destination-Number")
        escaped = "%" in (raw_dest or "")
        if escaped:
            call.dest = _shown(raw_dest)  # as FreeSWITCH sent it
        msisdn = None if escaped else parse_destination(dest)
        if msisdn is None:
            return invalid(config, "destination number is not 1-15 digits")
        if conn.gone.is_set():
            return None
        lookup, _, call.lookup_s = await race(self.resolver.resolve(
            query_for(config, msisdn), min_delay=config.min_delay, timeout=config.timeout),
            conn.gone.wait())
        if not lookup.done() or lookup.cancelled():
            return None
        try:
            result = lookup.result()
        except MslookupError as exc:
            return error(config, f"resolver: {exc}", call.lookup_s)
        decision = decide(config, msisdn, result, call.lookup_s)
        if decision.action == "bridge":
            decision = Decision(decision.result, decision.action, decision.data, (
                ("continue_on_fail", "true" if config.continue_on_fail else "false"),
                ("hangup_after_bridge", "true"),
                ("originate_failed_cause", ""),
                *decision.variables), decision.detail)
        return decision

    async def _act(self, conn: _Conn, decision: Decision) -> None:
        if conn.gone.is_set():
            raise _End(f"gone before {decision.action}: {conn.done_reason}")
        pairs = ";".join(f"{name}={value}" for name, value in decision.variables)
        data = sendmsg_execute("multiset", "^^;" + pairs)
        if decision.action == "bridge":
            conn.app_uuid = secrets.token_hex(16)
            data += sendmsg_execute("bridge", decision.data, conn.app_uuid)
        else:
            data += sendmsg_hangup(decision.data)
        await conn.send(data)
        for what in ("multiset", decision.action):
            reply = await conn.reply(what)
            if not reply.ok:
                raise _End(f"{what} refused: {_shown(reply.reply_text, 60)}")

    async def _finish(self, conn: _Conn, decision: Decision) -> str:
        if decision.action != "bridge":
            # FreeSWITCH sends its disconnect notice before the CHANNEL_HANGUP event (linger):
            # wait for the event, which carries the cause the channel really ended with
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_HANGUP_WAIT):
                    await conn.hangup_seen.wait()
            seen = conn.hangup_cause
            return (f"hangup-sent({decision.data}"
                    + ("" if seen == decision.data else f",channel={_shown(seen, 40)}")
                    + ")")
        try:
            async with asyncio.timeout(self.config.bridge_timeout):
                await conn.completed.wait()
        except TimeoutError:
            return "bridge-timeout"
        done = conn.completion
        if done is None:
            return f"bridge-unfinished({conn.done_reason})"
        failed = done.get("variable_originate_failed_cause") or ""
        response = done.get("Application-Response") or "_none_"
        state = f"bridge-complete(response={_shown(response, 40)}"
        state += f",failed={_shown(failed, 40)})" if failed else ")"
        if not conn.gone.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_HANGUP_WAIT if not failed else 0.05):
                    await conn.gone.wait()
        if not conn.gone.is_set():
            # the channel is still up after the bridge (continue-on-fail): let the dialplan
            # go on after the socket action
            await conn.send(command("resume"))
            reply = await conn.reply("resume")
            state += "+resume" if reply.ok else "+resume-refused"
        return state


if __name__ == "__main__":  # python -m dgsm_integrations.freeswitch.server, as before
    from .cli import main
    sys.exit(main())
