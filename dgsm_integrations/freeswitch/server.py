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

import argparse
import asyncio
import contextlib
import logging
import re
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields

from .._daemon import add_mslookup_args, run_daemon
from .._listen import Listener, accepted_at, connection_budget, start_stream_server
from .._ratelimit import LogLimiter
from ..mslookup import AsyncResolver, MslookupError
from ..settings import ConfigError
from .config import Config
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

__all__ = ["EslServer", "ServerStats", "build_parser", "main"]

log = logging.getLogger("dgsm.freeswitch.esl")

_UUID = re.compile(r"[0-9A-Za-z-]{1,64}")
#: How long we wait for FreeSWITCH to report the hangup we asked for (only for the log).
_HANGUP_WAIT = 2.0


@dataclass
class ServerStats:
    """Counters (monotonic)."""

    calls: int = 0
    found: int = 0
    not_found: int = 0
    errors: int = 0
    invalid: int = 0
    gone: int = 0
    timeouts: int = 0
    protocol_errors: int = 0
    dropped: int = 0
    busy: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class _End(Exception):
    """End this connection now; the message says why (for the log line)."""


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


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


def _shown(value: object, limit: int = 40) -> str:
    text = value if isinstance(value, str) else "-"
    return repr(text[:limit])[1:-1]


def _variable(channel: Message, name: str) -> str | None:
    value = channel.get("variable_" + name)
    return None if value == "_undef_" else value  # how FreeSWITCH serializes ""


class EslServer:
    """Serve outbound ESL connections on ``config.listen``:``config.listen_port``.

    ``resolver``: share an existing AsyncResolver (not closed by the server); by default the
    server makes one from the config and closes it on :meth:`close`.
    """

    def __init__(self, config: Config, resolver: AsyncResolver | None = None) -> None:
        self.config = config
        self._own_resolver = resolver is None
        self.resolver = resolver or AsyncResolver(**config.resolver_kwargs(),
                                                  min_delay=config.min_delay,
                                                  timeout=config.timeout)
        self.stats = ServerStats()
        self._server: Listener | None = None
        self._calls: set[asyncio.Task[None]] = set()
        self._limited = LogLimiter(log)
        self.port: int | None = None
        #: the last reports, for tests and the benchmark: (result, lookup_s, added_s)
        self.reports: list[tuple[str, float, float]] = []
        self.keep_reports = 0

    async def start(self) -> None:
        await self.resolver.open()
        # connect, myevents and linger leave the moment a connection is accepted (the
        # listener's greeting); the reply to connect is the first byte we wait for
        greeting = (b"connect\n\n" + command("myevents")
                    + command(f"linger {self.config.linger}"))
        self._server = await start_stream_server(
            self._accept, self.config.listen, self.config.listen_port, name="dgsm-fs-esl",
            log=log, greeting=greeting, admit=self._admit,
            first_byte_timeout=min(self.config.first_byte_timeout, self.config.call_timeout),
            # room beyond max-calls for connections not yet talking, and for refusals
            max_connections=connection_budget(self.config.max_calls * 5 // 4 + 16,
                                              f"max-calls {self.config.max_calls}", log))
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("dgsm-fs-esl listening on %s:%s (profiles %s/%s, service %s, resolver %s)",
                 self.config.listen, self.port, self.config.profile, self.config.profile_v6,
                 self.config.service, self.resolver.config.describe())
        if self.config.trusted is None:
            log.warning("no trusted networks: any host on the mslookup group can answer and "
                        "have calls bridged to the address it names; set trusted = <your "
                        "mesh networks> in the config file")

    @property
    def listener(self) -> Listener | None:
        """The accepting side (its ``stats``: silent, evicted, refused, fd_exhausted)."""
        return self._server

    @property
    def active(self) -> int:
        return len(self._calls)

    async def close(self, grace: float | None = None) -> None:
        """Stop accepting, let calls being routed finish for ``grace`` s, end the rest."""
        if self._server is not None:
            self._server.close()
        grace = self.config.grace if grace is None else grace
        if self._calls:
            _, pending = await asyncio.wait(set(self._calls), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        if self._own_resolver:
            await self.resolver.close()

    async def __aenter__(self) -> EslServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _admit(self) -> bool:
        """A new connection is refused before we send it anything when max-calls are busy."""
        if len(self._calls) < self.config.max_calls:
            return True
        self.stats.busy += 1
        self._limited.warning("busy", "call refused: %d calls in progress (max-calls)",
                              len(self._calls))
        return False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._calls) >= self.config.max_calls:
            self.stats.busy += 1
            self._limited.warning("busy", "call refused: %d calls in progress (max-calls)",
                                  len(self._calls))
            writer.close()
            return
        self._calls.add(task)
        try:
            await self._call(reader, writer)
        finally:
            self._calls.discard(task)

    async def _call(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        # from FreeSWITCH's connect: ``connect`` went out on accept, so the wait for its
        # reply (FreeSWITCH's, often the longest under load) is part of fs-wait
        start = accepted_at.get(loop.time())
        conn = _Conn(reader, writer)
        conn.waited = loop.time() - start
        pump = asyncio.create_task(conn.pump())
        info: dict[str, str] = {"uuid": "-", "dest": "-", "esl": "-"}
        decision: Decision | None = None
        outcome = "none"
        lookup_s = 0.0
        acted = start
        fs_wait = 0.0  # of ``added``: waiting for FreeSWITCH's replies (connect ... bridge)
        self.stats.calls += 1
        try:
            async with asyncio.timeout(self.config.call_timeout):
                decision, lookup_s = await self._route(conn, info)
                if decision is None:
                    outcome = "gone"
                    info["esl"] = f"gone({conn.done_reason})"
                    return
                outcome = decision.result
                await self._act(conn, decision)
                acted = loop.time()
                fs_wait = conn.waited
            info["esl"] = await self._finish(conn, decision)
        except TimeoutError:
            self.stats.timeouts += 1
            info["esl"] = "call-timeout"
        except _End as exc:
            info["esl"] = f"ended({exc})"
        except (ConnectionError, OSError) as exc:
            info["esl"] = f"connection-error({exc})"
        except asyncio.CancelledError:
            info["esl"] = "cancelled(shutdown)"
            raise
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
            if conn.protocol_error is not None:
                self.stats.protocol_errors += 1
            writer.close()
            self._count(outcome)
            end = loop.time()
            added = ((acted if acted > start else end) - start) - lookup_s
            if self.keep_reports:
                self.reports.append((outcome, lookup_s, added))
                del self.reports[:-self.keep_reports]
            action = "-"
            if decision is not None and outcome != "gone":
                action = (f"bridge={decision.data}" if decision.action == "bridge"
                          else f"hangup={decision.data}")
            log.info("call peer=%s uuid=%s dest=%s result=%s %s esl=%s lookup=%.1fms "
                     "added=%.2fms fs-wait=%.2fms total=%.1fms%s",
                     _peer(writer), info["uuid"], info["dest"], outcome, action, info["esl"],
                     lookup_s * 1000, added * 1000, fs_wait * 1000, (end - start) * 1000,
                     f" | {_shown(decision.detail, 200)}" if decision else "")

    def _count(self, outcome: str) -> None:
        name = {"found": "found", "not-found": "not_found", "error": "errors",
                "invalid": "invalid", "gone": "gone"}.get(outcome, "dropped")
        setattr(self.stats, name, getattr(self.stats, name) + 1)

    async def _route(self, conn: _Conn,
                     info: dict[str, str]) -> tuple[Decision | None, float]:
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
        info["uuid"] = uuid if _UUID.fullmatch(uuid) else "?"
        dest = channel.get("Caller-Destination-Number")
        if dest is None:
            dest = channel.get("Channel-Destination-Number")
        info["dest"] = _shown(dest)
        base = self.config
        try:
            config = base.with_channel(lambda name: _variable(channel, name))
        except ConfigError as exc:
            return error(base, str(exc)), 0.0
        # FreeSWITCH does not escape a '%' followed by two hex digits, so a dialled "%31001"
        # and "1001" arrive alike once decoded: digits need no escape, so any '%' in the raw
        # value means the number was not all digits.
        raw_dest = raw.get("Caller-Destination-Number")
        if raw_dest is None:
            raw_dest = raw.get("Channel-Destination-Number")
        escaped = "%" in (raw_dest or "")
        if escaped:
            info["dest"] = _shown(raw_dest)  # as FreeSWITCH sent it
        msisdn = None if escaped else parse_destination(dest)
        if msisdn is None:
            return invalid(config, "destination number is not 1-15 digits"), 0.0
        if conn.gone.is_set():
            return None, 0.0
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        lookup = asyncio.ensure_future(self.resolver.resolve(
            query_for(config, msisdn), min_delay=config.min_delay, timeout=config.timeout))
        watch = asyncio.ensure_future(conn.gone.wait())
        try:
            await asyncio.wait({lookup, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (lookup, watch):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, MslookupError):
                        await task
        lookup_s = loop.time() - t0
        if not lookup.done() or lookup.cancelled():
            return None, lookup_s
        try:
            result = lookup.result()
        except MslookupError as exc:
            return error(config, f"resolver: {exc}", lookup_s), lookup_s
        decision = decide(config, msisdn, result, lookup_s)
        if decision.action == "bridge":
            decision = Decision(decision.result, decision.action, decision.data, (
                ("continue_on_fail", "true" if config.continue_on_fail else "false"),
                ("hangup_after_bridge", "true"),
                ("originate_failed_cause", ""),
                *decision.variables), decision.detail)
        return decision, lookup_s

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


# -- command line ------------------------------------------------------------------------

_DESCRIPTION = """\
Outbound event-socket (ESL) server for D-GSM: FreeSWITCH connects once per call; the server
finds the site where the dialled MSISDN was seen most recently (mslookup over multicast
DNS, like OsmoHLR) and tells FreeSWITCH to bridge the call there, or to hang up with a
clear cause. For FreeSWITCH builds without mod_python3.

In the dialplan (see freeswitch/dialplan/public.xml):

  <action application="socket" data="127.0.0.1:8084 async full"/>
  <action application="hangup" data="NORMAL_TEMPORARY_FAILURE"/>  <!-- server down -->

Outcomes: found -> bridge sofia/<profile>/sip:<msisdn>@<ip>:<port> (IPv6 through
--profile-v6; both families: ordered failover with '|'); not found -> UNALLOCATED_NUMBER;
lookup failed / timed out -> NORMAL_TEMPORARY_FAILURE; not 1-15 digits ->
INVALID_NUMBER_FORMAT. Channel variables set: dgsm_result, dgsm_dial_string,
dgsm_sip_host, dgsm_sip_port, dgsm_age, dgsm_site, dgsm_lookup_ms, dgsm_cause.
A call may override per-call settings with dgsm_<setting> channel variables
(dgsm_profile, dgsm_min_delay, dgsm_codec_string, ...).
"""

_EPILOG = """\
settings: defaults < --config FILE (key = value lines, keys as the long options) < options.
examples:
  dgsm-fs-esl --interface eth0
  dgsm-fs-esl --config /etc/dgsm-integrations/freeswitch.conf --check
  dgsm-fs-esl --interface 127.0.0.1 --min-delay 0.5 --codec-string PCMA,PCMU --log-level debug
Each call logs one line ("call peer=... uuid=... dest=... result=... esl=... added=...ms"):
  journalctl -u dgsm-fs-esl | grep 'result=error'
SIGTERM stops accepting calls, lets calls being routed finish (--grace), then exits 0.
See docs/freeswitch.md for the full guide.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dgsm-fs-esl", description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="read settings from FILE first")
    p.add_argument("--check", action="store_true",
                   help="print the effective settings and exit (0 if they are valid)")
    g = p.add_argument_group("event socket")
    g.add_argument("--listen", metavar="ADDR", help="address to listen on (127.0.0.1)")
    g.add_argument("--listen-port", metavar="PORT",
                   help="TCP port (8084, as in the socket action)")
    g.add_argument("--max-calls", metavar="N", help="connections served at once (2000)")
    g.add_argument("--call-timeout", metavar="S",
                   help="from connect to bridge/hangup sent, lookup included (5.0)")
    g.add_argument("--first-byte-timeout", metavar="S",
                   help="close a connection that has not answered connect this soon (2.0)")
    g.add_argument("--linger", metavar="S",
                   help="ask FreeSWITCH to keep the socket this long after hangup (30)")
    g.add_argument("--bridge-timeout", metavar="S",
                   help="stop watching a bridged call after this long (14400)")
    g.add_argument("--grace", metavar="S", help="on SIGTERM, wait this long for calls (5.0)")
    g.add_argument("--log-level", help="debug, info (one line per call), warning, error")
    r = p.add_argument_group("routing (per call also as dgsm_<name> channel variables)")
    r.add_argument("--service", help="mslookup service (sip.voice)")
    r.add_argument("--profile", help="sofia profile for IPv4 sites (external)")
    r.add_argument("--profile-v6", help="sofia profile for IPv6 sites (external-ipv6)")
    r.add_argument("--prefer-ipv6", metavar="yes|no", help="try IPv6 first (no)")
    r.add_argument("--failover", metavar="yes|no",
                   help="both families in the dial string, '|' separated (yes)")
    r.add_argument("--codec-string", metavar="CODECS",
                   help="B-leg absolute_codec_string, e.g. PCMA,PCMU (none)")
    r.add_argument("--originate-timeout", metavar="S", help="B-leg originate_timeout (none)")
    r.add_argument("--continue-on-fail", metavar="yes|no",
                   help="on a failed bridge, go on in the dialplan instead of hanging up (no)")
    r.add_argument("--cause-not-found", metavar="CAUSE", help="(UNALLOCATED_NUMBER)")
    r.add_argument("--cause-error", metavar="CAUSE",
                   help="lookup failed or timed out (NORMAL_TEMPORARY_FAILURE)")
    r.add_argument("--cause-invalid", metavar="CAUSE",
                   help="destination is not 1-15 digits (INVALID_NUMBER_FORMAT)")
    add_mslookup_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dgsm-fs-esl`` console script."""
    args = build_parser().parse_args(argv)
    return run_daemon("dgsm-fs-esl", args, Config.from_strings, EslServer, log)


if __name__ == "__main__":
    sys.exit(main())
