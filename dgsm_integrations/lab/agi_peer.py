"""Asterisk's side of the AGI byte protocol, as res_agi speaks it (the lab's and the tests' peer).

- :func:`env_block` — the environment block Asterisk sends (local script or FastAGI);
- :func:`parse_args` — how res_agi splits a command line into arguments (quotes with ``"``,
  ``\\`` escapes the next character, blanks and tabs separate), so tests check that what we
  quote is read back exactly;
- :func:`converse` — play Asterisk on a (reader, writer) pair: send the block, then read one
  command line at a time and answer it; hooks inject ``HANGUP`` lines, 510/511/520 replies,
  garbage or EOF. Works over TCP (FastAGI) and over a subprocess's pipes (local script).

Written from the protocol's documented behaviour; no Asterisk code is copied.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: A real multi-line 520 reply: the usage text's lines may look like replies themselves.
USAGE_520 = (
    b"520-Invalid command syntax.  Proper usage follows:\n"
    b" Usage: SET VARIABLE <variablename> <value>\n"
    b"Example return code: 200 result=1 (testvariable)\n"
    b"200 result=0\n"
    b"520 End of proper usage.\n"
)
REPLY_OK = b"200 result=1\n"
REPLY_510 = b"510 Invalid or unknown command\n"
REPLY_511 = b"511 Command Not Permitted on a dead channel or intercept routine\n"


def env_block(
    args: list[str],
    *,
    network_script: str | None = None,
    host: str = "127.0.0.1:4573",
    extension: str | None = None,
    extra: dict[str, str] | None = None,
) -> bytes:
    """The environment block for ``AGI(<script>,<args...>)``; FastAGI if network_script."""
    ext = extension if extension is not None else (args[0] if args else "s")
    lines: list[tuple[str, str]] = []
    if network_script is not None:
        lines += [("agi_network", "yes"), ("agi_network_script", network_script),
                  ("agi_request", f"agi://{host}/{network_script}")]
    else:
        lines += [("agi_request", "dgsm-agi")]
    lines += [
        ("agi_channel", "PJSIP/alice-00000001"), ("agi_language", "en"),
        ("agi_type", "PJSIP"), ("agi_uniqueid", "1700000000.1"), ("agi_version", "20.5.0"),
        ("agi_callerid", "1001"), ("agi_calleridname", "Alice"), ("agi_callingpres", "0"),
        ("agi_callingani2", "0"), ("agi_callington", "0"), ("agi_callingtns", "0"),
        ("agi_dnid", ext), ("agi_rdnis", "unknown"), ("agi_context", "dgsm-out"),
        ("agi_extension", ext), ("agi_priority", "2"), ("agi_enhanced", "0.0"),
        ("agi_accountcode", ""), ("agi_threadid", "140000000000000"),
    ]
    lines += list((extra or {}).items())
    lines += [(f"agi_arg_{n}", a) for n, a in enumerate(args, 1)]
    return "".join(f"{k}: {v}\n" for k, v in lines).encode() + b"\n"


def parse_args(line: str) -> list[str]:
    """Split one command line into arguments as res_agi does."""
    args: list[str] = []
    cur: list[str] | None = None
    quoted = escaped = False
    for ch in line:
        if ch == '"' and not escaped:
            quoted = not quoted
            if quoted and cur is None:
                cur = []
            continue
        if ch in " \t" and not quoted and not escaped:
            if cur is not None:
                args.append("".join(cur))
                cur = None
            continue
        if ch == "\\" and not escaped:
            escaped = True
            continue
        if cur is None:
            cur = []
        cur.append(ch)
        escaped = False
    if cur is not None:
        args.append("".join(cur))
    return args


@dataclass
class Exchange:
    """What happened in one call, seen from the Asterisk side."""

    commands: list[list[str]] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)
    closed_by_peer: bool = False
    elapsed: float = 0.0
    raw: list[bytes] = field(default_factory=list)


#: Hook: (command index, parsed args) -> bytes to send *instead of* the normal reply, or None.
Replier = Callable[[int, list[str]], bytes | None]


async def converse(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter | asyncio.StreamWriter,
    env: bytes,
    *,
    reply: Replier | None = None,
    after_env: bytes = b"",
    close_after_env: bool = False,
    timeout: float = 10.0,
) -> Exchange:
    """Play Asterisk for one call; returns when the other side closes (or on timeout)."""
    ex = Exchange()
    start = time.monotonic()
    writer.write(env + after_env)
    await writer.drain()
    if close_after_env:
        writer.close()
    deadline = start + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the AGI side neither closed nor sent a command in time")
        try:
            line = await asyncio.wait_for(reader.readline(), left)
        except (ConnectionError, OSError):
            line = b""
        if not line:
            ex.closed_by_peer = True
            break
        ex.raw.append(line)
        args = parse_args(line.decode().rstrip("\n"))
        n = len(ex.commands)
        ex.commands.append(args)
        custom = reply(n, args) if reply else None
        if custom is None:
            if len(args) == 4 and args[0].upper() == "SET" and args[1].upper() == "VARIABLE":
                ex.variables[args[2]] = args[3]
                custom = REPLY_OK
            else:
                custom = REPLY_510
        try:
            writer.write(custom)
            await writer.drain()
        except (ConnectionError, OSError):
            ex.closed_by_peer = True
            break
    ex.elapsed = time.monotonic() - start
    return ex
