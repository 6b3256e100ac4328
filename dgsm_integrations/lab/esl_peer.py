"""FreeSWITCH's side of an *outbound* event socket, byte for byte (the lab's and the tests' peer).

What FreeSWITCH does when ``<action application="socket" data="HOST:PORT async full"/>``
runs (``mod_event_socket.c``, ``switch_event.c``, ``switch_ivr.c``), and so does this peer:

- it connects and waits for commands: a command is a header block (first line, ``Name: value``
  lines, empty line) with an optional ``Content-Length`` body;
- ``connect`` is answered with the channel data: a serialized ``CHANNEL_DATA`` event whose
  values are all URL-encoded (``switch_url_encode``), with ``Content-Type: command/reply``,
  ``Reply-Text: %2BOK%0A``, ``Socket-Mode: async``, ``Control: full`` at its end;
- other commands get ``Content-Type: command/reply`` / ``Reply-Text: +OK ...`` (or ``-ERR``);
- events go out as ``Content-Length: N`` / ``Content-Type: text/event-plain`` and the
  serialized event as body; ``sendmsg execute`` yields ``CHANNEL_EXECUTE`` and
  ``CHANNEL_EXECUTE_COMPLETE`` carrying ``Application-UUID`` = the command's ``Event-UUID``;
- when the channel hangs up: ``CHANNEL_HANGUP`` (``Hangup-Cause``) and, with linger, a
  ``text/disconnect-notice`` with ``Content-Disposition: linger`` (in either order:
  ``Script.notice_first``); when the socket is closed by
  FreeSWITCH, a ``disconnect`` notice with a goodbye body.

:class:`Script` injects faults: drop the connection before a reply, send a malformed block,
hang up while the lookup runs, make the bridge fail. Written from FreeSWITCH's documented and
observed behaviour; no FreeSWITCH code is copied.
"""

from __future__ import annotations

import asyncio
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["CallRecord", "Script", "event", "play_call", "serialize_event", "url_encode"]

_UNSAFE = set("\r\n #%&+:;<=>?@[\\]^`{|}\"")


def url_encode(value: str) -> str:
    """As ``switch_url_encode``: %XX for control, non-ASCII and unsafe characters -- except a
    ``%`` already followed by two upper-case hex digits, which is copied as it is (no double
    encoding; ``switch_url_encode_opt`` in FreeSWITCH 1.10.12, seen on the wire: a dialled
    ``%31001`` arrives as ``%31001``)."""
    out: list[str] = []
    raw = value.encode("utf-8")
    for i, byte in enumerate(raw):
        c = chr(byte)
        kept = (c == "%" and len(raw) - i > 2
                and all(chr(b) in "0123456789ABCDEF" for b in raw[i + 1:i + 3]))
        if not kept and (byte < 0x20 or byte > 0x7E or c in _UNSAFE):
            out.append(f"%{byte:02X}")
        else:
            out.append(c)
    return "".join(out)


def serialize_event(headers: list[tuple[str, str]], body: str = "") -> bytes:
    """As ``switch_event_serialize(..., SWITCH_TRUE)``."""
    text = "".join(f"{k}: {url_encode(v) if v else '_undef_'}\n" for k, v in headers)
    if body:
        text += f"Content-Length: {len(body.encode())}\n\n{body}"
    else:
        text += "\n"
    return text.encode("utf-8")


def event(headers: list[tuple[str, str]], body: str = "") -> bytes:
    """One ``text/event-plain`` message as the socket carries it."""
    payload = serialize_event(headers, body)
    return (f"Content-Length: {len(payload)}\nContent-Type: text/event-plain\n\n".encode()
            + payload)


def reply(text: str) -> bytes:
    return f"Content-Type: command/reply\nReply-Text: {text}\n\n".encode()


def disconnect_notice(call_uuid: str, linger: bool) -> bytes:
    if linger:
        return (f"Content-Type: text/disconnect-notice\nControlled-Session-UUID: {call_uuid}\n"
                f"Content-Disposition: linger\nChannel-Name: sofia/internal/1000@10.0.0.1\n"
                f"Linger-Time: 30\nContent-Length: 0\n\n").encode()
    body = "Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
    return (f"Content-Type: text/disconnect-notice\nControlled-Session-UUID: {call_uuid}\n"
            f"Content-Disposition: disconnect\nContent-Length: {len(body)}\n\n{body}").encode()


@dataclass
class Script:
    """How this call behaves (faults to inject)."""

    dest: str = "1001"
    variables: dict[str, str] = field(default_factory=dict)
    #: close the socket instead of answering this command ("connect", "myevents", "sendmsg")
    drop_at: str | None = None
    #: send these bytes instead of the reply to connect
    connect_reply: bytes | None = None
    #: hang the channel up once this is set (while the server looks up)
    hangup_when: asyncio.Event | None = None
    #: the bridge fails with this cause (B-leg unreachable)
    bridge_fails: str | None = None
    #: the B-leg answers and the call ends normally after the bridge
    caller_id: str = "1000"
    #: after a hangup, send the linger disconnect notice before CHANNEL_HANGUP: the listener
    #: of mod_event_socket may send either first (it checks the channel before its queue)
    notice_first: bool = False
    #: answer ``connect`` only after this many seconds (FreeSWITCH under load)
    connect_delay: float = 0.0


@dataclass
class CallRecord:
    """What the server did to this call."""

    commands: list[str] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)
    executed: list[tuple[str, str]] = field(default_factory=list)
    hangup_cause: str | None = None
    resumed: bool = False
    closed_by_server: bool = False
    uuid: str = ""

    @property
    def bridge(self) -> str | None:
        return next((arg for app, arg in self.executed if app == "bridge"), None)


async def _read_command(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    block = await reader.readuntil(b"\n\n")
    lines = block.decode().split("\n")
    first = lines[0].strip()
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    return first, headers, body


def channel_data(script: Script, call_uuid: str) -> bytes:
    headers = [
        ("Event-Name", "CHANNEL_DATA"), ("Core-UUID", "6f1c3a2e-0000-4000-8000-000000000001"),
        ("FreeSWITCH-Hostname", "village-a"), ("FreeSWITCH-Switchname", "village-a"),
        ("FreeSWITCH-IPv4", "10.0.0.1"), ("Event-Date-Local", "2024-05-01 12:00:00"),
        ("Event-Calling-Function", "parse_command"), ("Channel-State", "CS_EXECUTE"),
        ("Channel-Call-State", "RINGING"), ("Channel-Name", "sofia/internal/1000@10.0.0.1"),
        ("Unique-ID", call_uuid), ("Call-Direction", "inbound"),
        ("Answer-State", "ringing"), ("Channel-Destination-Number", script.dest),
        ("Caller-Direction", "inbound"), ("Caller-Username", script.caller_id),
        ("Caller-Dialplan", "XML"), ("Caller-Caller-ID-Name", "Alice <a&b>"),
        ("Caller-Caller-ID-Number", script.caller_id),
        ("Caller-Network-Addr", "10.0.0.7"), ("Caller-Destination-Number", script.dest),
        ("Caller-Unique-ID", call_uuid), ("Caller-Source", "mod_sofia"),
        ("Caller-Context", "public"), ("Caller-Channel-Name", "sofia/internal/1000@10.0.0.1"),
        ("variable_direction", "inbound"), ("variable_uuid", call_uuid),
        ("variable_sip_from_user", script.caller_id),
        ("variable_sip_req_uri", f"{script.dest}@10.0.0.1:5060"),
        ("variable_sip_user_agent", "Osmocom osmo-sip-connector 1.6"),
        ("variable_socket_host", "127.0.0.1"), ("variable_empty_one", ""),
    ]
    headers += [(f"variable_{k}", v) for k, v in script.variables.items()]
    headers += [("Content-Type", "command/reply"), ("Reply-Text", "+OK\n"),
                ("Socket-Mode", "async"), ("Control", "full")]
    return serialize_event(headers)


def _exec_events(call_uuid: str, app: str, arg: str, app_uuid: str,
                 extra: list[tuple[str, str]]) -> bytes:
    base = [("Unique-ID", call_uuid), ("Channel-Name", "sofia/internal/1000@10.0.0.1"),
            ("Application", app), ("Application-Data", arg), ("Application-UUID", app_uuid)]
    return (event([("Event-Name", "CHANNEL_EXECUTE"), *base])
            + event([("Event-Name", "CHANNEL_EXECUTE_COMPLETE"), *base,
                     ("Application-Response", "_none_"), *extra]))


def _hangup_events(call_uuid: str, cause: str, notice_first: bool = False) -> bytes:
    hangup = event([("Event-Name", "CHANNEL_HANGUP"), ("Unique-ID", call_uuid),
                    ("Hangup-Cause", cause), ("Channel-State", "CS_HANGUP")])
    notice = disconnect_notice(call_uuid, linger=True)
    return ((notice + hangup if notice_first else hangup + notice)
            + event([("Event-Name", "CHANNEL_HANGUP_COMPLETE"), ("Unique-ID", call_uuid),
                     ("Hangup-Cause", cause)]))


async def play_call(port: int, script: Script | None = None, *, timeout: float = 10.0,
                    on_connect: Callable[[CallRecord], None] | None = None,
                    host: str = "127.0.0.1") -> CallRecord:
    """Connect to the server on ``host``:``port`` and play one call as FreeSWITCH would."""
    script = script or Script()
    record = CallRecord(uuid=str(uuidlib.uuid4()))
    reader, writer = await asyncio.open_connection(host, port)
    if on_connect is not None:
        on_connect(record)
    linger = False
    up = True
    hangup_task: asyncio.Task[None] | None = None

    async def hang_up_later(when: asyncio.Event) -> None:
        nonlocal up
        await when.wait()
        if up:
            up = False
            record.hangup_cause = "NORMAL_CLEARING"
            writer.write(_hangup_events(record.uuid, "NORMAL_CLEARING"))

    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    first, headers, _body = await _read_command(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    record.closed_by_server = True
                    return record
                word = first.split(" ", 1)[0].lower()
                record.commands.append(first)
                if script.drop_at == word:
                    return record
                if word == "connect":
                    if script.connect_delay:
                        await asyncio.sleep(script.connect_delay)  # a busy FreeSWITCH
                    writer.write(script.connect_reply if script.connect_reply is not None
                                 else channel_data(script, record.uuid))
                    if script.hangup_when is not None:
                        hangup_task = asyncio.create_task(hang_up_later(script.hangup_when))
                elif word == "myevents":
                    writer.write(reply("+OK Events Enabled"))
                elif word == "linger":
                    linger = True
                    writer.write(reply(f"+OK will linger {first.split(' ', 1)[1]} seconds"
                                       if " " in first else "+OK will linger"))
                elif word == "resume":
                    record.resumed = True
                    writer.write(reply("+OK"))
                elif word == "exit":
                    writer.write(reply("+OK bye"))
                    await writer.drain()
                    return record
                elif word == "sendmsg":
                    if not up:
                        writer.write(reply("+OK"))  # queued on a dead channel: ignored
                        continue
                    writer.write(reply("+OK"))
                    cmd = headers.get("call-command")
                    if cmd == "execute":
                        app = headers.get("execute-app-name", "")
                        arg = headers.get("execute-app-arg", "")
                        app_uuid = headers.get("event-uuid", str(uuidlib.uuid4()))
                        record.executed.append((app, arg))
                        extra: list[tuple[str, str]] = []
                        if app == "multiset" and arg.startswith("^^"):
                            for pair in arg[3:].split(arg[2]):
                                name, _, value = pair.partition("=")
                                if value:
                                    record.variables[name] = value
                                else:
                                    record.variables.pop(name, None)
                        if app == "bridge" and script.bridge_fails:
                            extra = [("variable_originate_failed_cause", script.bridge_fails)]
                        writer.write(_exec_events(record.uuid, app, arg, app_uuid, extra))
                        if app == "bridge":
                            cont = record.variables.get("continue_on_fail") == "true"
                            if script.bridge_fails and not cont:
                                up = False
                                record.hangup_cause = script.bridge_fails
                                writer.write(_hangup_events(record.uuid, script.bridge_fails))
                            elif not script.bridge_fails and \
                                    record.variables.get("hangup_after_bridge") == "true":
                                up = False
                                record.hangup_cause = "NORMAL_CLEARING"
                                writer.write(_hangup_events(record.uuid, "NORMAL_CLEARING"))
                    elif cmd == "hangup":
                        up = False
                        record.hangup_cause = headers.get("hangup-cause", "NORMAL_CLEARING")
                        writer.write(_hangup_events(record.uuid, record.hangup_cause,
                                                    script.notice_first))
                else:
                    writer.write(reply("-ERR command not found"))
                await writer.drain()
                if not linger and not up:
                    return record
    except (ConnectionError, TimeoutError):
        return record
    finally:
        if hangup_task is not None:
            hangup_task.cancel()
        writer.close()
