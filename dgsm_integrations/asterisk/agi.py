"""The AGI byte protocol, sans-I/O: the environment block, replies and commands.

What Asterisk (res_agi) sends, and what this codec accepts:

- first an environment block: lines ``agi_<name>: <value>``, ended by an empty line;
- then, for each command the script writes (one line, arguments split on blanks, ``"``
  quotes, ``\\`` escapes), exactly one reply:
  ``200 result=<r>[ (<data>)][ <key>=<value>...]``, ``510 Invalid or unknown command``,
  ``511 Command Not Permitted on a dead channel or intercept routine``, a single-line
  ``520 ...``, or a multi-line usage text that starts with ``520-`` and ends with a line that
  starts with ``520 `` (the lines in between are free text, and may look like replies);
  ``100 ...`` lines (``Trying...``) may come before the final reply;
- at any time, a line ``HANGUP`` when the channel hangs up (FastAGI; a local script gets
  SIGHUP instead). It is *not* a reply: the pending command still gets its own.

Anything else is a protocol error: the caller must stop talking to that peer, never guess.
Every limit (line length, lines in a block) is enforced, since the peer is not trusted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import DgsmError

__all__ = [
    "MAX_ENV_LINES",
    "MAX_LINE",
    "AgiEnv",
    "AgiProtocolError",
    "EnvParser",
    "Hangup",
    "Reply",
    "ReplyParser",
    "log_command",
    "quote",
    "set_variable",
]

#: Longest line accepted from Asterisk (res_agi's own buffer is 2048 bytes).
MAX_LINE = 8192
#: Most lines accepted in the environment block (Asterisk sends about 30).
MAX_ENV_LINES = 256
#: Most lines accepted in a multi-line 520 usage text.
MAX_USAGE_LINES = 200

_ENV_LINE = re.compile(r"agi_([a-z0-9_]{1,64}): ?(.*)")
_REPLY = re.compile(r"([1-5][0-9][0-9])([ -])(.*)")
_RESULT = re.compile(r"result=(-?[0-9]*)(?: \((.*?)\))?(?: (.*))?")
_VARNAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,79}")


class AgiProtocolError(DgsmError):
    """The peer broke the AGI protocol (or a limit): stop talking to it."""


@dataclass(frozen=True, slots=True)
class AgiEnv:
    """The environment block: ``vars`` without the ``agi_`` prefix, ``args`` in order."""

    vars: dict[str, str]
    args: tuple[str, ...]

    def get(self, name: str, default: str = "") -> str:
        return self.vars.get(name, default)

    @property
    def network_script(self) -> str | None:
        """FastAGI: the part of the URL after ``host:port/`` (path and ``?query``)."""
        return self.vars.get("network_script")


def _decode(raw: bytes) -> str:
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    if b"\0" in raw:
        raise AgiProtocolError("NUL byte in a line")
    return raw.decode("utf-8", errors="replace")


class _Lines:
    """Split a byte stream into lines, refusing any line longer than MAX_LINE."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[str]:
        self._buf += data
        lines: list[str] = []
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > MAX_LINE:
                    raise AgiProtocolError(f"line longer than {MAX_LINE} bytes")
                return lines
            if end > MAX_LINE:
                raise AgiProtocolError(f"line longer than {MAX_LINE} bytes")
            lines.append(_decode(bytes(self._buf[:end])))
            del self._buf[:end + 1]

    def take_rest(self) -> bytes:
        rest = bytes(self._buf)
        self._buf.clear()
        return rest

    @property
    def pending(self) -> bool:
        return bool(self._buf)


class EnvParser:
    """Collect the environment block. ``feed()`` returns the AgiEnv once the blank line came.

    Bytes after the blank line are kept in :attr:`rest` (hand them to the ReplyParser).
    ``eof()`` raises: an environment block cut short is a protocol error.
    """

    def __init__(self) -> None:
        self._lines = _Lines()
        self._vars: dict[str, str] = {}
        self._count = 0
        self.env: AgiEnv | None = None
        self.rest = b""

    def feed(self, data: bytes) -> AgiEnv | None:
        if self.env is not None:
            self.rest += data
            return self.env
        for line in self._lines.feed(data):
            if self.env is not None:
                self.rest += line.encode() + b"\n"
                continue
            if line == "":
                self.env = self._finish()
                continue
            self._count += 1
            if self._count > MAX_ENV_LINES:
                raise AgiProtocolError(f"environment block longer than {MAX_ENV_LINES} lines")
            m = _ENV_LINE.fullmatch(line)
            if m is None:
                raise AgiProtocolError(f"not an AGI environment line: {line[:80]!r}")
            if m.group(1) in self._vars:
                raise AgiProtocolError(f"agi_{m.group(1)} given twice")
            self._vars[m.group(1)] = m.group(2)
        if self.env is not None:
            self.rest += self._lines.take_rest()
        return self.env

    def eof(self) -> None:
        if self.env is None:
            raise AgiProtocolError("connection closed before the end of the environment block")

    def _finish(self) -> AgiEnv:
        if "request" not in self._vars:
            raise AgiProtocolError("environment block without agi_request")
        args: list[str] = []
        for n in range(1, MAX_ENV_LINES + 1):
            value = self._vars.get(f"arg_{n}")
            if value is None:
                break
            args.append(value)
        extra = [k for k in self._vars if k.startswith("arg_") and k not in
                 {f"arg_{n}" for n in range(1, len(args) + 1)}]
        if extra:
            raise AgiProtocolError(f"agi_{extra[0]} out of order")
        return AgiEnv(dict(self._vars), tuple(args))


@dataclass(frozen=True, slots=True)
class Reply:
    """The final reply to one command."""

    code: int
    result: str | None = None
    data: str | None = None
    extra: str | None = None
    text: str = ""
    lines: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.code == 200

    @property
    def dead_channel(self) -> bool:
        return self.code == 511


@dataclass(frozen=True, slots=True)
class Hangup:
    """Asterisk's asynchronous ``HANGUP`` line: the channel is gone (not a reply)."""


Event = Reply | Hangup


class ReplyParser:
    """Turn the bytes after the environment block into Reply and Hangup events."""

    def __init__(self) -> None:
        self._lines = _Lines()
        self._usage: list[str] | None = None

    @property
    def in_reply(self) -> bool:
        """True while a multi-line reply is only partly received."""
        return self._usage is not None or self._lines.pending

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        for line in self._lines.feed(data):
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> Event | None:
        if self._usage is not None:
            # inside a 520 usage text: only "520 <text>" ends it, anything else is text
            if line.startswith("520 "):
                lines = (*self._usage, line)
                self._usage = None
                return Reply(520, text="\n".join(lines), lines=lines)
            self._usage.append(line)
            if len(self._usage) > MAX_USAGE_LINES:
                raise AgiProtocolError(f"520 usage text longer than {MAX_USAGE_LINES} lines")
            return None
        if line == "HANGUP":
            return Hangup()
        m = _REPLY.fullmatch(line)
        if m is None:
            raise AgiProtocolError(f"not an AGI reply: {line[:80]!r}")
        code, sep, rest = int(m.group(1)), m.group(2), m.group(3)
        if sep == "-":
            if code != 520:
                raise AgiProtocolError(f"unexpected multi-line reply {line[:80]!r}")
            self._usage = [line]
            return None
        if code == 100:
            return None  # "100 result=0 Trying...": the final reply follows
        if code == 200:
            r = _RESULT.fullmatch(rest)
            if r is None:
                raise AgiProtocolError(f"malformed 200 reply {line[:80]!r}")
            return Reply(200, r.group(1), r.group(2), r.group(3), line, (line,))
        if code in (510, 511, 520) or 500 <= code <= 599:
            return Reply(code, text=line, lines=(line,))
        raise AgiProtocolError(f"unexpected reply code in {line[:80]!r}")


def quote(value: str) -> str:
    """Quote one command argument as res_agi's parser reads it back: ``"..."`` with
    ``\\`` before ``\\`` and ``"``. Line breaks and NUL cannot be carried: ValueError."""
    if any(c in value for c in "\r\n\0"):
        raise ValueError("an AGI argument cannot contain a line break or NUL")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def set_variable(name: str, value: str) -> bytes:
    """The ``SET VARIABLE`` command line for one channel variable."""
    if not _VARNAME.fullmatch(name):
        raise ValueError(f"invalid channel variable name {name!r}")
    return f"SET VARIABLE {name} {quote(value)}\n".encode()


def log_command(level: str, text: str) -> bytes:
    """The command that puts one line into Asterisk's own log (``messages.log``, consoles).

    ``notice``: ``EXEC Log "NOTICE,<text>"``: Asterisk's Log() application, at a level that
    Debian's stock ``logger.conf`` writes to ``/var/log/asterisk/messages.log``; ``verbose``:
    the AGI ``VERBOSE "<text>" 1`` command (consoles, and log files that include
    ``verbose``). ``text`` must already be safe (see :func:`.routing.log_text`).
    """
    if level == "notice":
        return f"EXEC Log {quote('NOTICE,' + text)}\n".encode()
    if level == "verbose":
        return f"VERBOSE {quote(text)} 1\n".encode()
    raise ValueError(f"no Asterisk log level {level!r}: notice or verbose")
