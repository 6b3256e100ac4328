"""PBX stand-ins that drive our real integration servers, then place the call they decided.

FreeSWITCH and Asterisk are not packaged here. In the lab each is played by its protocol
peer — FreeSWITCH's outbound event socket (:mod:`.esl_peer`) towards a running
``dgsm-fs-esl``, Asterisk's FastAGI (:mod:`.agi_peer`) towards a running ``dgsm-fastagi`` —
and what the integration decided is carried out the way the PBX would: the bridge or
``Dial()`` target gets a real SIP INVITE (:func:`.sip.call`), a hangup keeps its cause.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from .agi_peer import converse, env_block
from .esl_peer import Script, play_call
from .sip import CallResult, call

__all__ = ["PbxCall", "asterisk_call", "asterisk_script_call", "freeswitch_call", "sip_target"]

# sofia/<profile>/sip:<user>@<host>:<port>, PJSIP/<endpoint>/sip:<user>@<host>:<port>
_TARGET = re.compile(r"(?:sofia/[^/|]+|PJSIP/[^/|]+)/sip:([0-9]{1,15})@"
                     r"(\[[0-9a-fA-F:.]+\]|[0-9.]+):([0-9]{1,5})")


def sip_target(dial: str) -> tuple[str, str, int] | None:
    """(user, host, port) of the first target in a FreeSWITCH or Asterisk dial string."""
    m = _TARGET.match(dial.split("|", 1)[0])
    if m is None:
        return None
    return m.group(1), m.group(2).strip("[]"), int(m.group(3))


@dataclass
class PbxCall:
    """One call through an integration: what it decided and what the INVITE got."""

    pbx: str
    dest: str
    decision: str  # the dial string, or "hangup <cause>"
    result: str  # found / not-found / error / invalid (as the integration said)
    #: what the INVITE to the site got (stand-ins), or the caller's call (a real PBX)
    sip: CallResult | None
    elapsed: float

    @property
    def target(self) -> tuple[str, str, int] | None:
        return sip_target(self.decision)

    @property
    def answered(self) -> bool:
        """A call was set up: the INVITE it placed (or, through a real PBX, the caller's
        own call, which needs that INVITE answered) got a 2xx."""
        return self.sip is not None and self.sip.answered


async def freeswitch_call(server_host: str, server_port: int, dest: str, *,
                          timeout: float = 10.0) -> PbxCall:
    """FreeSWITCH's outbound socket to ``dgsm-fs-esl`` for a call to ``dest``; then the
    bridge it asked for, as a SIP INVITE."""
    t0 = time.monotonic()
    record = await play_call(server_port, Script(dest=dest), host=server_host,
                             timeout=timeout)
    bridge = record.bridge
    result = record.variables.get("dgsm_result", "found" if bridge else "none")
    if bridge is None:
        return PbxCall("FreeSWITCH", dest, f"hangup {record.hangup_cause}", result, None,
                       time.monotonic() - t0)
    target = sip_target(bridge)
    sip = await call(*target, timeout=timeout) if target else None
    return PbxCall("FreeSWITCH", dest, bridge, result, sip, time.monotonic() - t0)


async def asterisk_call(server_host: str, server_port: int, dest: str, *,
                        service: str = "sip.voice", timeout: float = 10.0) -> PbxCall:
    """Asterisk's ``AGI(agi://host:port/dgsm?service=...,${EXTEN})`` to ``dgsm-fastagi``;
    then ``Dial(${DGSM_DIAL})`` as a SIP INVITE, or ``Hangup(${DGSM_CAUSE})``."""
    import asyncio

    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection(server_host, server_port)
    try:
        ex = await converse(reader, writer,
                            env_block([dest], network_script=f"dgsm?service={service}",
                                      host=f"{server_host}:{server_port}"),
                            timeout=timeout)
    finally:
        writer.close()
    result = ex.variables.get("DGSM_RESULT", "")
    dial = ex.variables.get("DGSM_DIAL", "")
    if result != "found" or not dial:
        return PbxCall("Asterisk", dest, f"hangup {ex.variables.get('DGSM_CAUSE', '?')}",
                       result or "none", None, time.monotonic() - t0)
    target = sip_target(dial)
    sip = await call(*target, timeout=timeout) if target else None
    return PbxCall("Asterisk", dest, dial, result, sip, time.monotonic() - t0)


async def asterisk_script_call(argv: list[str], env: dict[str, str], dest: str, *,
                               timeout: float = 10.0) -> PbxCall:
    """Asterisk's ``AGI(dgsm-agi,${EXTEN})``: spawn the local AGI script (``argv``), talk AGI
    over its stdin/stdout, then ``Dial()`` or ``Hangup()`` as the dialplan would."""
    import asyncio

    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv, dest, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        ex = await converse(proc.stdout, proc.stdin, env_block([dest]), timeout=timeout)
    finally:
        if proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    result = ex.variables.get("DGSM_RESULT", "")
    dial = ex.variables.get("DGSM_DIAL", "")
    if result != "found" or not dial:
        return PbxCall("Asterisk AGI script", dest,
                       f"hangup {ex.variables.get('DGSM_CAUSE', '?')}", result or "none", None,
                       time.monotonic() - t0)
    target = sip_target(dial)
    sip = await call(*target, timeout=timeout) if target else None
    return PbxCall("Asterisk AGI script", dest, dial, result, sip, time.monotonic() - t0)
