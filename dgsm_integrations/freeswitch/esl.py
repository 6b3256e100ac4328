"""A sans-I/O codec for FreeSWITCH's event socket (ESL), as mod_event_socket speaks it.

Written from FreeSWITCH's ``mod_event_socket.c`` and ``switch_event.c`` (facts, not code):

- every message FreeSWITCH sends is a *header block*: ``Name: value`` lines ended by ``\\n``
  and closed by an empty line; a ``Content-Length: N`` header means N bytes of body follow;
- ``Content-Type`` says what it is: ``command/reply`` (``Reply-Text: +OK ...`` /
  ``-ERR ...``), ``text/event-plain`` (the body is a serialized event), ``api/response``,
  ``text/disconnect-notice`` (``Content-Disposition: linger`` when the channel hung up and we
  asked to linger; ``disconnect`` with a goodbye text as body when the socket closes),
  ``auth/request``, ``log/data``, ``text/rude-rejection``;
- a serialized event (an event's body, and the whole reply to ``connect`` in outbound mode)
  has its *values* URL-encoded with ``switch_url_encode``: ``%XX`` for control characters,
  non-ASCII bytes and `` #%&+:;<=>?@[\\]^`{|}"`` (so ``Reply-Text: %2BOK%0A``), an empty value
  as ``_undef_``; an event with a body adds ``Content-Length`` and the body after the blank
  line;
- commands we send are a first line, optional ``Name: value`` lines, and an empty line;
  FreeSWITCH does not URL-decode header values of commands (``sendmsg``), so a value must
  never contain a line break: :func:`command` refuses one.

The parser is strict about what it cannot frame (a header line with no ``:``, a bad or huge
``Content-Length``, an endless header block) and raises :class:`EslProtocolError`; it never
guesses where a message ends.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import DgsmError

__all__ = [
    "EslProtocolError",
    "Message",
    "Parser",
    "command",
    "parse_event",
    "sendmsg_execute",
    "sendmsg_hangup",
    "url_decode",
]

#: Largest header block accepted: channel data with hundreds of variables is ~20 KiB.
MAX_HEADER_BLOCK = 256 * 1024
#: Largest body accepted (FreeSWITCH's own limit on what it reads is 10 MiB).
MAX_BODY = 4 * 1024 * 1024
MAX_HEADERS = 4096

_NAME = re.compile(rb"[!-9;-~]+")  # printable ASCII without ':' and space
_PCT = re.compile(rb"%([0-9A-Fa-f]{2})")
_CL_DIGITS = re.compile(r"[0-9]{1,9}")


class EslProtocolError(DgsmError, ValueError):
    """The peer sent something that is not ESL framing."""


def url_decode(value: str) -> str:
    """Undo ``switch_url_encode``: ``%XX`` is a byte (UTF-8 text), anything else as is."""
    if "%" not in value:
        return value
    raw = _PCT.sub(lambda m: bytes((int(m.group(1), 16),)),
                   value.encode("utf-8", "surrogateescape"))
    return raw.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class Message:
    """One message: headers in order (names as sent) and the body (b"" if none)."""

    headers: tuple[tuple[str, str], ...]
    body: bytes = b""

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first header called ``name`` (case-insensitive, as FreeSWITCH looks them up)."""
        lower = name.lower()
        for key, value in self.headers:
            if key.lower() == lower:
                return value
        return default

    @property
    def content_type(self) -> str:
        return (self.get("Content-Type") or "").strip().lower()

    @property
    def reply_text(self) -> str:
        return (self.get("Reply-Text") or "").strip()

    @property
    def ok(self) -> bool:
        """A ``command/reply`` that says ``+OK``."""
        return self.reply_text.startswith("+OK")

    def decoded(self) -> Message:
        """The same message with every header value URL-decoded (a serialized event)."""
        return Message(tuple((k, url_decode(v)) for k, v in self.headers), self.body)


def _parse_block(block: bytes) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for raw in block.split(b"\n"):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not _NAME.fullmatch(name):
            raise EslProtocolError(f"bad header line {line[:60]!r}")
        if len(headers) >= MAX_HEADERS:
            raise EslProtocolError(f"more than {MAX_HEADERS} headers")
        headers.append((name.decode("ascii"),
                        value.lstrip(b" ").decode("utf-8", "replace")))
    return headers


def _content_length(headers: Sequence[tuple[str, str]], limit: int) -> int:
    lengths = {v.strip() for k, v in headers if k.lower() == "content-length"}
    if not lengths:
        return 0
    if len(lengths) != 1:
        raise EslProtocolError("conflicting Content-Length headers")
    text = lengths.pop()
    if not _CL_DIGITS.fullmatch(text) or int(text) > limit:
        raise EslProtocolError(f"bad Content-Length {text[:20]!r}")
    return int(text)


class Parser:
    """Bytes in, :class:`Message` out. Feed whatever the socket gave; call :meth:`eof` at EOF."""

    def __init__(self, max_header_block: int = MAX_HEADER_BLOCK,
                 max_body: int = MAX_BODY) -> None:
        self._buf = bytearray()
        self._headers: list[tuple[str, str]] | None = None
        self._need = 0
        self._max_header = max_header_block
        self._max_body = max_body
        self.broken: str | None = None

    def feed(self, data: bytes) -> list[Message]:
        """Return the messages completed by ``data`` (raises EslProtocolError, then stays so)."""
        if self.broken is not None:
            raise EslProtocolError(self.broken)
        self._buf += data
        out: list[Message] = []
        try:
            while True:
                if self._headers is None:
                    # Blank lines between messages carry nothing; FreeSWITCH's reader skips
                    # them too. A header block ends at the first empty line.
                    while self._buf.startswith((b"\n", b"\r")):
                        del self._buf[:1]
                    end = self._buf.find(b"\n\n")
                    crlf = self._buf.find(b"\r\n\r\n")
                    if crlf != -1 and (end == -1 or crlf < end):
                        end, skip = crlf, 4
                    else:
                        skip = 2
                    if end == -1:
                        if len(self._buf) > self._max_header:
                            raise EslProtocolError("header block too long")
                        return out
                    if end > self._max_header:
                        raise EslProtocolError("header block too long")
                    headers = _parse_block(bytes(self._buf[:end]))
                    del self._buf[:end + skip]
                    if not headers:
                        continue
                    self._need = _content_length(headers, self._max_body)
                    self._headers = headers
                if len(self._buf) < self._need:
                    return out
                body = bytes(self._buf[:self._need])
                del self._buf[:self._need]
                out.append(Message(tuple(self._headers), body))
                self._headers = None
                self._need = 0
        except EslProtocolError as exc:
            self.broken = str(exc)
            raise

    @property
    def pending(self) -> bool:
        """True if a message has started but is not complete."""
        return self._headers is not None or bool(self._buf.strip(b"\r\n"))

    def eof(self) -> None:
        """Raise EslProtocolError if the stream ended inside a message."""
        if self.pending:
            raise EslProtocolError("connection closed inside a message")


def parse_event(body: bytes) -> Message:
    """Parse a ``text/event-plain`` body: URL-decoded headers, and the event's own body."""
    parser = Parser(max_header_block=max(len(body), 1), max_body=max(len(body), 1))
    messages = parser.feed(body if body.endswith(b"\n\n") or b"Content-Length" in body
                           else body + b"\n\n")
    if len(messages) != 1 or parser.pending:
        raise EslProtocolError("event body is not exactly one serialized event")
    return messages[0].decoded()


def _check(text: str, what: str) -> str:
    if "\n" in text or "\r" in text or "\x00" in text:
        raise ValueError(f"{what} contains a line break or NUL: {text[:60]!r}")
    return text


def command(line: str, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """Encode a command: the line, ``Name: value`` lines, an empty line."""
    parts = [_check(line, "command")]
    for name, value in headers:
        if not _NAME.fullmatch(name.encode("utf-8", "replace")):
            raise ValueError(f"bad header name {name[:40]!r}")
        parts.append(f"{name}: {_check(value, name)}")
    return ("\n".join(parts) + "\n\n").encode("utf-8")


def sendmsg_execute(app: str, arg: str, event_uuid: str | None = None) -> bytes:
    """``sendmsg`` asking the controlled channel to run one application, in order."""
    headers = [("call-command", "execute"), ("execute-app-name", app),
               ("execute-app-arg", arg), ("event-lock", "true")]
    if event_uuid is not None:
        headers.append(("Event-UUID", event_uuid))
    return command("sendmsg", headers)


def sendmsg_hangup(cause: str) -> bytes:
    """``sendmsg`` hanging up the controlled channel with a cause name."""
    return command("sendmsg", [("call-command", "hangup"), ("hangup-cause", cause)])
