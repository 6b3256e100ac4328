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

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields

from dgsm_integrations.mslookup import AsyncResolver, InvalidQuery, MslookupError

from .._daemon import add_mslookup_args, run_daemon
from .._listen import Listener, connection_budget, start_stream_server
from .._ratelimit import LogLimiter
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
from .config import Config
from .routing import Verdict, log_text, one_line, parse_extension

__all__ = ["FastAgiServer", "ServerStats", "build_parser", "main"]

log = logging.getLogger("dgsm.asterisk.fastagi")


@dataclass
class ServerStats:
    """Counters (monotonic)."""

    calls: int = 0
    found: int = 0
    not_found: int = 0
    errors: int = 0
    invalid: int = 0
    hangups: int = 0
    timeouts: int = 0
    protocol_errors: int = 0
    busy: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class _Closed:
    """Queue marker: the peer closed the connection or broke the protocol."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class _End(Exception):
    """End this call now; the message says why (for the log line)."""


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
        self.lookup_s = 0.0  # time spent in the lookup, also when a hangup cut it short

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


class FastAgiServer:
    """Serve FastAGI lookups on ``config.listen``:``config.listen_port``.

    ``resolver``: share an existing AsyncResolver (not closed by the server); by default the
    server makes one from the config and closes it on :meth:`close`.
    """

    def __init__(self, config: Config, resolver: AsyncResolver | None = None) -> None:
        self.config = config
        self._own_resolver = resolver is None
        self.resolver = resolver or AsyncResolver(**config.resolver_kwargs())
        self.stats = ServerStats()
        self._server: Listener | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self._limited = LogLimiter(log)
        self.port: int | None = None

    async def start(self) -> None:
        await self.resolver.open()
        self._server = await start_stream_server(
            self._accept, self.config.listen, self.config.listen_port, name="dgsm-fastagi",
            log=log, first_byte_timeout=min(self.config.first_byte_timeout,
                                            self.config.call_timeout),
            max_connections=connection_budget(_with_headroom(self.config.max_sessions),
                                              f"max-sessions {self.config.max_sessions}",
                                              log))
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("dgsm-fastagi listening on %s:%s (route /%s, endpoint %s, resolver %s)",
                 self.config.listen, self.port, self.config.route, self.config.endpoint,
                 self.resolver.config.describe())
        if self.config.trusted is None:
            log.warning("no trusted networks: any host on the mslookup group can answer and "
                        "have calls sent to the address it names; set trusted = <your mesh "
                        "networks> in the config file")

    @property
    def listener(self) -> Listener | None:
        """The accepting side (its ``stats``: silent, evicted, refused, fd_exhausted)."""
        return self._server

    @property
    def active(self) -> int:
        return len(self._sessions)

    async def close(self, grace: float | None = None) -> None:
        """Stop accepting, let calls in progress finish for ``grace`` s, end the rest."""
        if self._server is not None:
            self._server.close()
        grace = self.config.grace if grace is None else grace
        if self._sessions:
            _, pending = await asyncio.wait(set(self._sessions), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        if self._own_resolver:
            await self.resolver.close()

    async def __aenter__(self) -> FastAgiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._sessions) >= self.config.max_sessions:
            self.stats.busy += 1
            self._limited.warning("busy", "call refused: %d calls in progress (max-sessions)",
                                  len(self._sessions))
            writer.close()
            return
        self._sessions.add(task)
        try:
            await self._call(reader, writer)
        finally:
            self._sessions.discard(task)

    async def _call(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        peer = writer.get_extra_info("peername")
        session = _Session(reader, writer)
        fields_: dict[str, str] = {"ext": "-", "result": "none"}
        verdict: Verdict | None = None
        pump: asyncio.Task[None] | None = None
        self.stats.calls += 1

        def line() -> str:
            total = loop.time() - start
            dial = dict(verdict.variables).get("DGSM_DIAL") if verdict else None
            return (f"call peer={_peer(peer)} ext={fields_['ext']} result={fields_['result']}"
                    f"{f' dial={dial}' if dial else ''} agi={fields_.get('agi', '-')} "
                    f"lookup={session.lookup_s * 1000:.1f}ms total={total * 1000:.1f}ms "
                    f"added={(total - session.lookup_s) * 1000:.2f}ms"
                    f"{f' | {verdict.detail}' if verdict else ''}")
        try:
            async with asyncio.timeout(self.config.call_timeout):
                env = await session.read_env()
                pump = asyncio.create_task(session.pump())
                verdict = await self._lookup(session, env, fields_)
                fields_["result"] = verdict.result
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
                session.direct = True
                fields_["agi"] = await self._write(session, verdict)
                if fields_["agi"] == "ok" and self.config.asterisk_log != "no":
                    # the call's line into Asterisk's own log, after DGSM_RESULT: whatever
                    # happens to it changes nothing for the call
                    with contextlib.suppress(_End, AgiProtocolError, ConnectionError, OSError):
                        await session.command(log_command(
                            self.config.asterisk_log, one_line("dgsm-fastagi: " + line())))
        except TimeoutError:
            self.stats.timeouts += 1
            fields_["agi"] = "call-timeout"
        except AgiProtocolError as exc:
            self.stats.protocol_errors += 1
            fields_["agi"] = f"protocol-error({exc})"
        except _End as exc:
            if session.protocol_error:
                self.stats.protocol_errors += 1
            fields_["agi"] = f"ended({exc})"
        except (ConnectionError, OSError) as exc:
            fields_["agi"] = f"connection-error({exc})"
        except asyncio.CancelledError:
            fields_["agi"] = "cancelled(shutdown)"
            raise
        finally:
            if pump is not None:
                pump.cancel()
            writer.close()
            self._count(verdict)
            log.info("%s", line())

    def _count(self, verdict: Verdict | None) -> None:
        if verdict is None:
            return
        name = {"found": "found", "not-found": "not_found", "error": "errors",
                "invalid": "invalid"}[verdict.result]
        setattr(self.stats, name, getattr(self.stats, name) + 1)

    async def _lookup(self, session: _Session, env: AgiEnv,
                      fields_: dict[str, str]) -> Verdict:
        routing = self.config.routing
        extension = env.vars.get("extension")
        fields_["ext"] = log_text(extension) if extension is not None else "-"
        if env.args and env.args != (extension,):
            fields_["ext"] += " arg=" + ",".join(log_text(a) for a in env.args[:3])
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
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        lookup = asyncio.ensure_future(self.resolver.resolve(q))
        watch = asyncio.ensure_future(session.next_event())
        try:
            await asyncio.wait({lookup, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            session.lookup_s = loop.time() - t0
            if not lookup.done():
                lookup.cancel()
                with contextlib.suppress(asyncio.CancelledError, MslookupError):
                    await lookup
            if not watch.done():
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError, _End):
                    await watch
        if watch.done() and not watch.cancelled():
            event = watch.result()  # raises _End on EOF / protocol error
            if isinstance(event, Hangup):
                self.stats.hangups += 1
                raise _End("HANGUP during the lookup")
            raise AgiProtocolError("a reply before any command")
        return routing.verdict(msisdn, lookup.result())

    async def _early_event(self, session: _Session) -> None:
        event = await session.next_event()
        if isinstance(event, Hangup):
            self.stats.hangups += 1
            raise _End("HANGUP before the lookup")
        raise AgiProtocolError("a reply before any command")

    async def _write(self, session: _Session, verdict: Verdict) -> str:
        for name, value in verdict.variables:
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


def _with_headroom(calls: int) -> int:
    """Connections to hold for ``calls`` calls: room for silent ones and refusals too."""
    return calls + calls // 4 + 16


def _peer(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


# -- command line ------------------------------------------------------------------------

_DESCRIPTION = """\
FastAGI server for D-GSM: finds the site where a dialled MSISDN was seen most recently
(mslookup over multicast DNS, like OsmoHLR) and hands the result to the Asterisk dialplan
in channel variables. It only looks up; your dialplan does the Dial().

In extensions.conf (the whole context, with its failure branches, is asterisk/extensions.conf):

  exten => _X.,1,GotoIf($[${REGEX("^[0-9]{1,15}$" ${EXTEN})}]?lookup)
   same => n,Hangup(28)
   same => n(lookup),Set(DGSM_RESULT=)
   same => n,AGI(agi://127.0.0.1:4573/dgsm?service=sip.voice)
   same => n,GotoIf($["${DGSM_RESULT}" = "found"]?dial)
   same => n,Hangup(${IF($["${DGSM_CAUSE}" = ""]?34:${DGSM_CAUSE})})
   same => n(dial),Dial(${DGSM_DIAL},60)

The number looked up is the extension Asterisk routed (agi_extension): anything but
1-15 digits is "invalid" (Asterisk strips quotes and backslashes from AGI arguments, so an
argument is only accepted when it is exactly that extension).

Variables: DGSM_RESULT (found / not-found / error / invalid), DGSM_DIAL
(PJSIP/<endpoint>/sip:<msisdn>@<ip>:<port>), DGSM_SIP_HOST, DGSM_SIP_PORT, DGSM_AGE,
DGSM_CAUSE (Q.850 for Hangup(): 1 -> SIP 404, 34 -> 503, 28 -> 484).
"""

_EPILOG = """\
settings: defaults < --config FILE (key = value lines, keys as the long options) < options.
examples:
  dgsm-fastagi --interface eth0 --endpoint dgsm-trunk
  dgsm-fastagi --config /etc/dgsm-integrations/fastagi.conf --check
  dgsm-fastagi --interface 127.0.0.1 --mdns-port 4266 --min-delay 0.5 --log-level debug
Each call logs one line ("call peer=... ext=... result=... agi=... added=...ms"):
  journalctl -u dgsm-fastagi | grep 'result=error'
SIGTERM stops accepting calls, lets calls in progress finish (--grace), then exits 0.
See docs/asterisk.md for the full guide.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dgsm-fastagi", description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="read settings from FILE first")
    p.add_argument("--check", action="store_true",
                   help="print the effective settings and exit (0 if they are valid)")
    g = p.add_argument_group("FastAGI")
    g.add_argument("--listen", metavar="ADDR", help="address to listen on (127.0.0.1)")
    g.add_argument("--listen-port", metavar="PORT", help="TCP port (4573, Asterisk's default)")
    g.add_argument("--route", help="the script name in the agi:// URL (dgsm)")
    g.add_argument("--max-sessions", metavar="N", help="calls served at once (1000)")
    g.add_argument("--call-timeout", metavar="S",
                   help="a call never takes longer than this, lookup included (5.0)")
    g.add_argument("--first-byte-timeout", metavar="S",
                   help="close a connection that sends no AGI environment this soon (2.0)")
    g.add_argument("--grace", metavar="S", help="on SIGTERM, wait this long for calls (5.0)")
    g.add_argument("--log-level", help="debug, info (one line per call), warning, error")
    g.add_argument("--asterisk-log", metavar="notice|verbose|no",
                   help="also send each call's line to Asterisk's own log: notice (Log(), "
                        "lands in messages.log), verbose (consoles only), no (notice)")
    r = p.add_argument_group("routing")
    r.add_argument("--endpoint", help="PJSIP endpoint used in DGSM_DIAL (dgsm)")
    r.add_argument("--service", help="mslookup service (sip.voice); ?service= overrides")
    r.add_argument("--prefer-ipv6", metavar="yes|no",
                   help="dial the IPv6 endpoint when a site gives both (no)")
    r.add_argument("--cause-not-found", metavar="Q850", help="DGSM_CAUSE when not found (1)")
    r.add_argument("--cause-error", metavar="Q850", help="DGSM_CAUSE when lookup fails (34)")
    r.add_argument("--cause-invalid", metavar="Q850",
                   help="DGSM_CAUSE for an extension that is no MSISDN (28)")
    add_mslookup_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dgsm-fastagi`` console script."""
    args = build_parser().parse_args(argv)
    return run_daemon("dgsm-fastagi", args, Config.from_strings, FastAgiServer, log)


if __name__ == "__main__":
    sys.exit(main())
