"""The FastAGI server: one long-lived process, one shared resolver, any number of calls.

Asterisk connects for each call (``AGI(agi://127.0.0.1:4573/dgsm?service=sip.voice)``),
sends the environment block, and waits for commands. For each connection the server:

1. reads the environment block (strictly, see :mod:`.agi`); checks the route (``dgsm``) and
   its query (only ``service=`` is known); takes the number from ``agi_extension`` (an
   argument only if it is exactly that: see :func:`.routing.parse_extension`);
2. looks the MSISDN up with the shared :class:`AsyncResolver` while it keeps reading the
   socket: a ``HANGUP`` line or EOF during the lookup ends the call at once;
3. sends one ``SET VARIABLE`` at a time and reads its reply (a ``HANGUP`` line in between is
   noted, never taken for the reply; ``511`` means the channel is gone; a multi-line ``520``
   is read to its end); anything off-protocol ends the call, never a guess;
4. sends the call's line to Asterisk's own log (``EXEC Log NOTICE,...``), closes the
   connection, and logs the line itself: ``call peer=... ext=... result=... agi=...
   lookup=...ms total=...ms added=...ms``.

Every call ends within ``call-timeout``, whatever the peer does. A connection that sends
nothing within ``first-byte-timeout`` is closed before it counts as a call, and silent
connections make room for new ones; running out of file descriptors pauses accepting with one
log line (see :mod:`dgsm_integrations._listen`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from dataclasses import dataclass, field

from dgsm_integrations.mslookup import InvalidQuery, MslookupError

from .._callserver import Call, CallServer, ServerStats, _End, race
from .agi import (
    AgiEnv,
    AgiProtocolError,
    EnvParser,
    Hangup,
    Reply,
    ReplyParser,
    log_command,
    set_variable,
)
from .config import AsteriskConfig
from .routing import Decision, log_text, one_line, parse_extension

__all__ = ["AgiStats", "FastAgiServer", "ServerStats"]

log = logging.getLogger("dgsm.asterisk.fastagi")


@dataclass
class AgiStats(ServerStats):
    """The call server's counters, and the calls Asterisk hung up before they were done."""

    hangups: int = 0


class _Closed:
    """Queue marker: the peer closed the connection or broke the protocol."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


_Item = Reply | Hangup | _Closed


class _Session:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.parser = ReplyParser()
        self.hung_up = False
        self.protocol_error: str | None = None
        self.awaiting_reply = False
        self.direct = False  # True once the pump is stopped: next_event reads the socket

    async def read_env(self) -> AgiEnv:
        parser = EnvParser()
        while True:
            data = await self.reader.read(4096)
            if not data:
                parser.eof()  # raises: EOF before the blank line
            env = parser.feed(data)
            if env is not None:
                self._feed(parser.rest)
                return env

    def _feed(self, data: bytes) -> None:
        for event in self.parser.feed(data):
            if isinstance(event, Reply):
                if not self.awaiting_reply:  # a reply to nothing: never let it shift replies
                    raise AgiProtocolError(f"a reply to no command: {event.text[:60]!r}")
                self.awaiting_reply = False
            self.queue.put_nowait(event)

    async def _read_once(self) -> bool:
        """Read one chunk into the queue; False once the connection is over (queued)."""
        try:
            data = await self.reader.read(4096)
            if not data:
                self.queue.put_nowait(_Closed("EOF"))
                return False
            self._feed(data)
            return True
        except AgiProtocolError as exc:
            self.protocol_error = str(exc)
            self.queue.put_nowait(_Closed(f"protocol error: {exc}"))
        except (ConnectionError, OSError) as exc:
            self.queue.put_nowait(_Closed(f"connection error: {exc}"))
        return False

    async def pump(self) -> None:
        """Read the socket for the rest of the call, into the queue (during the lookup)."""
        while await self._read_once():
            pass

    async def read_direct(self) -> None:
        """Read the socket into the queue until it holds an event (after the lookup).

        Once the lookup is over the pump task is stopped and replies are read here, by the
        command that waits for them: one task switch less per ``SET VARIABLE``.
        """
        while self.queue.empty() and await self._read_once():
            pass

    async def next_event(self) -> Reply | Hangup:
        if self.direct and self.queue.empty():
            await self.read_direct()
        item = await self.queue.get()
        if isinstance(item, _Closed):
            self.queue.put_nowait(item)  # stays closed for any later reader
            raise _End(item.reason)
        return item

    async def command(self, line: bytes) -> Reply:
        while not self.queue.empty():  # only HANGUP or the end can be waiting here
            if isinstance(await self.next_event(), Hangup):
                self.hung_up = True
        if self.hung_up:
            raise _End("HANGUP")
        self.awaiting_reply = True
        self.writer.write(line)
        await self.writer.drain()
        while True:
            event = await self.next_event()
            if isinstance(event, Hangup):
                self.hung_up = True  # the pending command still gets its own reply
                continue
            return event


@dataclass(eq=False)
class _AgiCall(Call):
    session: _Session = field(kw_only=True)
    ext: str = "-"
    decision: Decision | None = None
    pump: asyncio.Task[None] | None = None


class FastAgiServer(CallServer[AsteriskConfig, _AgiCall]):
    """Serve FastAGI lookups on ``config.listen``:``config.listen_port``: the protocol part
    of :class:`~dgsm_integrations._callserver.CallServer` (what one call says and does).

    ``resolver``: share an existing AsyncResolver (not closed by the server); by default the
    server makes one from the config and closes it on :meth:`close`.
    """

    name = "dgsm-fastagi"
    log = log
    protocol_errors = (AgiProtocolError,)
    stats: AgiStats

    def new_stats(self) -> AgiStats:
        return AgiStats()

    def describe(self) -> str:
        return f"route /{self.config.route}, endpoint {self.config.endpoint}"

    def open_call(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  peer: str, start: float, accepted: float) -> _AgiCall:
        return _AgiCall(reader, writer, peer, start, accepted, session=_Session(reader, writer))

    def line(self, call: _AgiCall) -> str:
        total = asyncio.get_running_loop().time() - call.start
        decision = call.decision
        dial = dict(decision.variables).get("DGSM_DIAL") if decision else None
        return (f"call peer={call.peer} ext={call.ext} result={call.result}"
                f"{f' dial={dial}' if dial else ''} agi={call.ended} "
                f"lookup={call.lookup_s * 1000:.1f}ms total={total * 1000:.1f}ms "
                f"added={(total - call.lookup_s) * 1000:.2f}ms"
                f"{f' | {decision.detail}' if decision else ''}")

    async def converse(self, call: _AgiCall) -> None:
        session = call.session
        env = await session.read_env()
        call.pump = asyncio.create_task(session.pump())
        try:
            call.decision = decision = await self._lookup(call, env)
        except (_End, AgiProtocolError):
            raise
        except Exception as exc:  # a bug must still give the dialplan its error result
            self._limited.log(logging.ERROR, "bug", "internal error routing a call from %s",
                              call.peer, exc_info=exc)
            call.decision = decision = self.config.routing.error(
                f"internal error: {type(exc).__name__}")
        call.result = decision.result
        call.pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call.pump
        session.direct = True
        call.ended = await self._write(session, decision)
        if call.ended == "ok" and self.config.asterisk_log != "no":
            # the call's line into Asterisk's own log, after DGSM_RESULT: whatever happens
            # to it changes nothing for the call
            with contextlib.suppress(_End, AgiProtocolError, ConnectionError, OSError):
                await session.command(log_command(
                    self.config.asterisk_log, one_line("dgsm-fastagi: " + self.line(call))))

    async def close_call(self, call: _AgiCall) -> None:
        if call.pump is not None:
            call.pump.cancel()
        call.protocol_error = call.protocol_error or call.session.protocol_error

    async def _lookup(self, call: _AgiCall, env: AgiEnv) -> Decision:
        session = call.session
        routing = self.config.routing
        extension = env.vars.get("extension")
        call.ext = log_text(extension) if extension is not None else "-"
        if env.args and env.args != (extension,):
            call.ext += " arg=" + ",".join(log_text(a) for a in env.args[:3])
        script = env.network_script
        if script is None:
            raise AgiProtocolError("not a FastAGI request (no agi_network_script)")
        path, _, query = script.partition("?")
        if path.strip("/") != self.config.route:
            return routing.error(f"unknown route {path[:40]!r}")
        service: str | None = None
        for part in query.split("&") if query else ():
            key, sep, value = part.partition("=")
            if key != "service" or not sep or service is not None:
                return routing.error(f"unknown or repeated parameter in {query[:60]!r}")
            service = value
        msisdn, why = parse_extension(extension, env.args)
        if msisdn is None:
            return routing.invalid(why)
        try:
            q = routing.query(msisdn, service)
        except InvalidQuery as exc:
            return routing.error(f"bad service: {exc}")
        if session.hung_up or not session.queue.empty():
            await self._early_event(session)
        lookup, watch, call.lookup_s = await race(self.resolver.resolve(q),
                                                  session.next_event())
        if watch.done() and not watch.cancelled():
            event = watch.result()  # raises _End on EOF / protocol error
            if isinstance(event, Hangup):
                self.stats.hangups += 1
                raise _End("HANGUP during the lookup")
            raise AgiProtocolError("a reply before any command")
        try:
            result = lookup.result()
        except MslookupError as exc:
            return routing.error(f"resolver: {exc}")
        return routing.decide(msisdn, result)

    async def _early_event(self, session: _Session) -> None:
        event = await session.next_event()
        if isinstance(event, Hangup):
            self.stats.hangups += 1
            raise _End("HANGUP before the lookup")
        raise AgiProtocolError("a reply before any command")

    async def _write(self, session: _Session, decision: Decision) -> str:
        for name, value in decision.variables:
            reply = await session.command(set_variable(name, value))
            if reply.dead_channel:
                self.stats.hangups += 1
                return "dead(511)"
            if not reply.ok:
                return f"rejected({reply.code})"
            if session.hung_up:
                self.stats.hangups += 1
                return "hangup"
        return "ok"


if __name__ == "__main__":  # python -m dgsm_integrations.asterisk.fastagi, as before
    from .cli import main
    sys.exit(main())
