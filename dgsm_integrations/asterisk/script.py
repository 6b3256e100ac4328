"""The local AGI script: one process per call, started by ``AGI(dgsm-agi,${EXTEN})``.

It reads the environment block from stdin, looks the extension up once (the blocking
driver of the lookup engine, :mod:`dgsm_integrations.mslookup.blocking`), writes
``SET VARIABLE`` commands to stdout, each answered by Asterisk before the next, and exits.
It never waits past ``call-timeout``: every read has a deadline, SIGHUP (Asterisk's hangup
signal for local scripts) ends the call at once, and an interval timer is the backstop.
Settings come from ``$DGSM_AGI_CONFIG`` or ``/etc/dgsm-integrations/asterisk.conf`` (Asterisk
gives the script no flags of ours: the arguments come from the dialplan, where the caller
controls ``${EXTEN}``).

One line per call, ``dgsm-agi: ext=... result=... ...``, goes where an Asterisk operator
looks: into Asterisk's own log through the AGI (``asterisk-log = notice``: Asterisk's Log()
application, so ``/var/log/asterisk/messages.log`` and ``asterisk -r``), and to syslog
(``journalctl -t dgsm-agi``), which also has the calls that hung up before it could be sent
to Asterisk. A daemonized Asterisk sends a script's stderr to /dev/null; it gets the line too,
for running the script by hand.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import syslog
import time
from types import FrameType

from ..errors import DgsmError
from ..mslookup import Outcome, Query, Result, TransportError
from ..mslookup.blocking import Resolver
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
from .config import AsteriskConfig, ConfigError, config_from_environment
from .routing import Decision, Routing, log_text, one_line, parse_extension

__all__ = ["main"]


class _Stop(Exception):
    """End the call now (hangup signal, deadline, peer gone)."""


def _lookup(query: Query, config: AsteriskConfig) -> Result:
    """One lookup on the blocking driver: this process is its only caller, so it sends,
    waits in select() and reads by itself (no thread, no asyncio)."""
    try:
        with Resolver(**config.resolver_kwargs()) as resolver:
            return resolver.resolve(query)
    except TransportError as exc:
        return Result(query, Outcome.ERROR, reason=str(exc))


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """The hangup (Asterisk's SIGHUP) or the backstop timer ends the call, wherever the
    script is, even still starting up. Only the first: from then on another hangup is
    ignored and the timer ends the process at once, so the script's own ending (its line
    to the logs) is not cut short by a second _Stop."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, _exit_now)
    raise _Stop("SIGHUP: channel hung up" if signum == signal.SIGHUP else "call-timeout")


def _exit_now(signum: int, frame: FrameType | None) -> None:
    with contextlib.suppress(OSError):
        os.write(2, b"dgsm-agi: stopped: call-timeout while ending the call\n")
    os._exit(0)


class _Pipe:
    """Blocking AGI I/O on two file descriptors, every wait bounded by ``deadline``."""

    def __init__(self, rfd: int, wfd: int, deadline: float) -> None:
        self.rfd, self.wfd, self.deadline = rfd, wfd, deadline
        self.replies = ReplyParser()
        self.hung_up = False

    def _read(self) -> bytes:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _Stop("call-timeout")
        readable, _, _ = select.select([self.rfd], [], [], left)
        if not readable:
            raise _Stop("call-timeout")
        return os.read(self.rfd, 4096)

    def env(self) -> tuple[AgiEnv, bytes]:
        parser = EnvParser()
        while True:
            data = self._read()
            if not data:
                parser.eof()
            env = parser.feed(data)
            if env is not None:
                return env, parser.rest

    def _poll(self) -> None:
        """Before a command: anything already sent must be HANGUP (a reply now is extra)."""
        while select.select([self.rfd], [], [], 0)[0]:
            data = os.read(self.rfd, 4096)
            if not data:
                raise _Stop("Asterisk closed the pipe")
            for event in self.replies.feed(data):
                if not isinstance(event, Hangup):
                    raise AgiProtocolError("a reply to no command")
                self.hung_up = True

    def command(self, line: bytes) -> Reply:
        self._poll()
        if self.hung_up:
            raise _Stop("HANGUP")
        try:
            os.write(self.wfd, line)
        except OSError as exc:
            raise _Stop(f"cannot write to Asterisk: {exc.strerror or exc}") from None
        pending: list[Reply] = []
        while not pending:
            data = self._read()
            if not data:
                raise _Stop("Asterisk closed the pipe")
            for event in self.replies.feed(data):
                if isinstance(event, Hangup):
                    self.hung_up = True
                elif pending:
                    raise AgiProtocolError("a second reply to one command")
                else:
                    pending.append(event)
        return pending[0]


def _write_vars(pipe: _Pipe, decision: Decision) -> str:
    """Send the variables; returns how it ended (``ok``, ``hangup``, ``dead``, ``rejected``)."""
    for name, value in decision.variables:
        reply = pipe.command(set_variable(name, value))
        if reply.dead_channel:
            return "dead"
        if not reply.ok:
            return f"rejected({reply.code})"
        if pipe.hung_up:
            return "hangup"
    return "ok"


def run(config: AsteriskConfig, rfd: int = 0, wfd: int = 1) -> tuple[int, str]:
    """One call. Returns (exit status, log line)."""
    start = time.monotonic()
    pipe = _Pipe(rfd, wfd, start + config.call_timeout)
    ext = "-"
    decision: Decision | None = None
    lookup_ms = 0.0
    ended = "none"
    try:
        env, rest = pipe.env()
        if rest:
            for event in pipe.replies.feed(rest):
                if isinstance(event, Hangup):
                    pipe.hung_up = True
                else:
                    raise AgiProtocolError("a reply before any command")
        extension = env.vars.get("extension")
        ext = log_text(extension) if extension is not None else "-"
        if env.args and env.args != (extension,):
            ext += " arg=" + ",".join(log_text(a) for a in env.args[:3])
        msisdn, why = parse_extension(extension, env.args)
        if msisdn is None:
            decision = config.routing.invalid(why)
        elif pipe.hung_up:
            raise _Stop("HANGUP before the lookup")
        else:
            t0 = time.monotonic()
            try:
                decision = config.routing.decide(
                    msisdn, _lookup(config.routing.query(msisdn), config))
            except _Stop:
                raise
            except Exception as exc:  # a resolver fault or a bug: still the error result
                decision = config.routing.error(f"internal error: {type(exc).__name__}: "
                                                f"{str(exc)[:100]}")
            finally:
                lookup_ms = (time.monotonic() - t0) * 1000
        ended = _write_vars(pipe, decision)
        status = 0
    except _Stop as exc:
        ended, status = f"stopped({exc})", 0
    except AgiProtocolError as exc:
        ended, status = f"protocol-error({exc})", 1
    except DgsmError as exc:
        ended, status = f"error({type(exc).__name__}: {exc})", 1
    total_ms = (time.monotonic() - start) * 1000
    what = decision.result if decision else "none"
    dial = dict(decision.variables).get("DGSM_DIAL", "") if decision else ""
    line = (f"dgsm-agi: ext={ext} result={what}{' dial=' + dial if dial else ''} "
            f"agi={ended} lookup={lookup_ms:.1f}ms total={total_ms:.1f}ms"
            f"{' | ' + decision.detail if decision else ''}")
    if ended == "ok" and config.asterisk_log != "no":
        # into Asterisk's own log, after DGSM_RESULT: a failure here changes nothing
        with contextlib.suppress(_Stop, AgiProtocolError):
            pipe.command(log_command(config.asterisk_log, one_line(line)))
    return status, line


def _log(line: str) -> None:
    """The call's line to stderr (for a person running the script) and to syslog."""
    print(line, file=sys.stderr)
    try:
        syslog.openlog("dgsm-agi", syslog.LOG_PID, syslog.LOG_DAEMON)
        syslog.syslog(syslog.LOG_INFO, line.removeprefix("dgsm-agi: "))
    except OSError:  # no syslog here: stderr has it
        pass


def main() -> int:
    """Entry point of ``asterisk/dgsm-agi``."""
    signal.signal(signal.SIGHUP, _on_signal)
    signal.signal(signal.SIGALRM, _on_signal)
    try:
        status, line = _call()
    except _Stop as exc:  # a hangup or the backstop timer outside run()'s own handling
        status, line = 0, f"dgsm-agi: stopped: {exc}"
    except Exception as exc:  # a bug: one line in the logs, never a traceback to Asterisk
        status, line = 1, f"dgsm-agi: internal error: {type(exc).__name__}: {exc}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    with contextlib.suppress(_Stop):  # a hangup now: the call is over anyway
        _log(line)
    return status


def _call() -> tuple[int, str]:
    """The settings, then the call: (exit status, log line)."""
    try:
        config = config_from_environment()
    except (ConfigError, OSError) as exc:
        # still answer the call: the error decision with the default causes
        with contextlib.suppress(_Stop):
            _log(f"dgsm-agi: bad settings: {exc}")
        config, broken = _fallback_config(), True
    else:
        broken = False
    signal.setitimer(signal.ITIMER_REAL, config.call_timeout + 0.5)
    return _error_only(config) if broken else run(config)


def _fallback_config() -> AsteriskConfig:
    return AsteriskConfig()


def _error_only(config: AsteriskConfig) -> tuple[int, str]:
    pipe = _Pipe(0, 1, time.monotonic() + config.call_timeout)
    try:
        pipe.env()
        ended = _write_vars(pipe, Routing().error("bad settings"))
    except (_Stop, AgiProtocolError) as exc:
        ended = str(exc)
    return 0, f"dgsm-agi: result=error agi={ended} | bad settings"
