"""The ESL codec (golden framing, hostile bytes) and the ``dgsm-fs-esl`` server, driven by a
peer that speaks FreeSWITCH's outbound event-socket bytes, against real responders through
the resolver on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import pytest

from dgsm_integrations.freeswitch.cli import build_parser
from dgsm_integrations.freeswitch.config import Config
from dgsm_integrations.freeswitch.esl import (
    EslProtocolError,
    Parser,
    command,
    parse_event,
    sendmsg_execute,
    sendmsg_hangup,
    url_decode,
)
from dgsm_integrations.freeswitch.server import EslServer
from dgsm_integrations.lab.esl_peer import (
    CallRecord,
    Script,
    channel_data,
    event,
    play_call,
    url_encode,
)
from dgsm_integrations.mslookup import AsyncResolver, Query, Record, Responder

from .conftest import LO

PORT = 42741
T = TypeVar("T")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE = {
    "sip.voice.1001.msisdn": Record.parse("0,127.0.0.3:5060"),
    "sip.voice.1002.msisdn": Record.parse("7,127.0.0.4:5070,[fd00::4]:5080"),
}
HOSTILE = ["10a1", "1001@evil", "1001;x=1", "1001,2", "1001|sofia/x", "{x=1}1001", "10/01",
           "10 01", "1" * 40, "", "1001\n", "١٢٣",
           # FreeSWITCH sends these unescaped; decoded they would read "1001" (issue 12)
           "%31001", "%31%30%30%31", "1%30%301"]


def run(coro: Awaitable[T], limit: float = 60) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, limit)
    return asyncio.run(bounded())


def config(**kw: Any) -> Config:
    kw.setdefault("min_delay", 0.1)
    kw.setdefault("allow_loopback", True)  # every test site is on this host
    return Config(interface=LO, mdns_port=PORT, listen="127.0.0.1", listen_port=0, **kw)


@contextlib.asynccontextmanager
async def lab(table: dict[str, Record] | None = None, handler: Any = None,
              **kw: Any) -> AsyncIterator[tuple[EslServer, Responder]]:
    async with Responder(TABLE if table is None else table, handler=handler, interface=LO,
                         port=PORT, source="127.0.0.11") as resp, \
            EslServer(config(**kw)) as server:
        yield server, resp


async def settle(server: EslServer) -> None:
    """Wait (bounded) until the server has finished every connection."""
    async with asyncio.timeout(5):
        while server.active:
            await asyncio.sleep(0.005)


# -- codec --------------------------------------------------------------------------------

CONNECT_REPLY = channel_data(Script(dest="1001", variables={"dgsm_profile": "a b"}), "u-1")


def test_parser_frames_at_every_split_point() -> None:
    ev = event([("Event-Name", "CHANNEL_EXECUTE_COMPLETE"), ("Application-Data", "a|b c:d")],
               body="hello\nworld")
    stream = CONNECT_REPLY + b"Content-Type: command/reply\nReply-Text: +OK\n\n" + ev
    for cut in range(len(stream) + 1):
        parser = Parser()
        messages = parser.feed(stream[:cut]) + parser.feed(stream[cut:])
        assert len(messages) == 3, cut
        assert not parser.pending
    channel = messages[0].decoded()
    assert channel.content_type == "command/reply" and channel.reply_text == "+OK"
    assert channel.get("variable_dgsm_profile") == "a b"
    assert channel.get("caller-caller-id-name") == "Alice <a&b>"
    assert channel.get("variable_empty_one") == "_undef_"
    assert messages[1].ok
    assert messages[2].content_type == "text/event-plain"
    inner = parse_event(messages[2].body)
    assert inner.get("Application-Data") == "a|b c:d" and inner.body == b"hello\nworld"


def test_golden_bytes_of_what_we_send() -> None:
    assert sendmsg_execute("bridge", "sofia/external/sip:1@[fd00::1]:5060", "ab") == (
        b"sendmsg\ncall-command: execute\nexecute-app-name: bridge\n"
        b"execute-app-arg: sofia/external/sip:1@[fd00::1]:5060\nevent-lock: true\n"
        b"Event-UUID: ab\n\n")
    assert sendmsg_hangup("UNALLOCATED_NUMBER") == (
        b"sendmsg\ncall-command: hangup\nhangup-cause: UNALLOCATED_NUMBER\n\n")
    assert command("linger 30") == b"linger 30\n\n"
    for bad in ("a\nb", "a\rb", "a\x00"):
        with pytest.raises(ValueError):
            sendmsg_execute("set", bad)
    with pytest.raises(ValueError):
        command("sendmsg", [("bad name", "x")])


def test_url_decoding_as_freeswitch_encodes() -> None:
    for text in ("+OK\n", "Alice <a&b>", "ü€ %4 %a1 100%", "a:b;c=d|e{f}g", ""):
        assert url_decode(url_encode(text)) == text
    # FreeSWITCH copies a '%' before two upper-case hex digits as it is: that is lossy
    assert url_encode("%41 %4a") == "%41%20%254a"
    assert url_decode(url_encode("%41")) == "A"
    assert url_decode("%2BOK%0A") == "+OK\n"
    assert url_decode("100%") == "100%" and url_decode("%zz%4") == "%zz%4"
    assert url_decode("%FF") == "\ufffd"


@pytest.mark.parametrize("bad", [
    b"no colon here\n\n",
    b"Content-Length: -1\n\n",
    b"Content-Length: 12abc\n\n",
    b"Content-Length: 99999999999\n\n",
    b"Content-Length: 5\nContent-Length: 6\n\nhello",
    b"Bad Name: x\n\n",
    b"A" * (300 * 1024),
])
def test_parser_refuses_what_it_cannot_frame(bad: bytes) -> None:
    parser = Parser()
    with pytest.raises(EslProtocolError):
        parser.feed(bad)
    with pytest.raises(EslProtocolError):  # and stays broken
        parser.feed(b"Content-Type: command/reply\n\n")


def test_parser_eof_inside_a_message() -> None:
    parser = Parser()
    assert parser.feed(b"Content-Length: 10\n\nabc") == []
    with pytest.raises(EslProtocolError):
        parser.eof()
    done = Parser()
    done.feed(b"Content-Type: command/reply\nReply-Text: +OK\n\n\n")
    done.eof()


# -- the server ---------------------------------------------------------------------------

def test_found_not_found_ipv6_failover() -> None:
    async def go() -> tuple[CallRecord, CallRecord, CallRecord, EslServer]:
        async with lab() as (server, _):
            assert server.port is not None
            a = await play_call(server.port, Script(dest="1001"))
            b = await play_call(server.port, Script(dest="1002"))
            c = await play_call(server.port, Script(dest="2000"))
            await settle(server)
            return a, b, c, server

    a, b, c, server = run(go())
    assert a.commands[:3] == ["connect", "myevents", "linger 30"]
    assert a.bridge == "sofia/external/sip:1001@127.0.0.3:5060"
    assert (a.variables["dgsm_result"], a.variables["dgsm_sip_host"], a.variables["dgsm_age"],
            a.variables["dgsm_site"]) == ("found", "127.0.0.3", "0", "127.0.0.11")
    assert a.variables["hangup_after_bridge"] == "true"
    assert a.hangup_cause == "NORMAL_CLEARING" and not a.resumed and a.closed_by_server
    assert b.bridge == ("sofia/external/sip:1002@127.0.0.4:5070|"
                        "sofia/external-ipv6/sip:1002@[fd00::4]:5080")
    assert c.bridge is None and c.hangup_cause == "UNALLOCATED_NUMBER"
    assert c.variables["dgsm_result"] == "not-found"
    assert (server.stats.found, server.stats.not_found, server.active) == (2, 1, 0)


def test_lookup_failure_is_temporary_failure() -> None:
    async def go() -> CallRecord:
        resolver = AsyncResolver(interface=LO, port=PORT, min_delay=0.1, allow_loopback=True)
        async with EslServer(config(), resolver=resolver) as server:
            assert server.port is not None
            await resolver.close()  # the resolver can no longer look anything up
            record = await play_call(server.port, Script(dest="1001"))
            await settle(server)
            assert server.stats.errors == 1
            return record

    record = run(go())
    assert record.hangup_cause == "NORMAL_TEMPORARY_FAILURE"
    assert record.variables["dgsm_result"] == "error"


@pytest.mark.parametrize("notice_first", [False, True])
def test_hangup_line_names_the_cause_whatever_comes_first(
        notice_first: bool, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 12 item 6: the line always says which cause was sent, also when FreeSWITCH's
    disconnect notice comes before the CHANNEL_HANGUP event."""
    async def go() -> CallRecord:
        async with lab() as (server, _):
            assert server.port is not None
            record = await play_call(server.port, Script(dest="2000",
                                                         notice_first=notice_first))
            await settle(server)
            return record

    with caplog.at_level("INFO", logger="dgsm.freeswitch.esl"):
        record = run(go())
    assert record.hangup_cause == "UNALLOCATED_NUMBER"
    [line] = [m for m in caplog.messages if m.startswith("call peer=")]
    assert "result=not-found hangup=UNALLOCATED_NUMBER esl=hangup-sent(UNALLOCATED_NUMBER) " \
        in line, line


def test_the_line_splits_added_into_freeswitch_wait_and_our_own(
        caplog: pytest.LogCaptureFixture) -> None:
    """A real FreeSWITCH under load answers ``connect`` slowly (1.6 s p50 at 200 new calls
    at once on 2 cores): ``fs-wait`` says how much of ``added`` was FreeSWITCH's."""
    async def go() -> None:
        async with lab() as (server, _):
            assert server.port is not None
            await play_call(server.port, Script(dest="1001", connect_delay=0.25))
            await settle(server)

    with caplog.at_level("INFO", logger="dgsm.freeswitch.esl"):
        run(go())
    [line] = [m for m in caplog.messages if m.startswith("call peer=")]
    added = re.search(r" added=([0-9.]+)ms fs-wait=([0-9.]+)ms ", line)
    assert added is not None, line
    total, waited = float(added.group(1)), float(added.group(2))
    assert waited >= 250 and total >= waited


@pytest.mark.parametrize("dest", HOSTILE)
def test_hostile_destination_ends_with_invalid_number(dest: str) -> None:
    async def go() -> tuple[CallRecord, int]:
        async with lab() as (server, resp):
            assert server.port is not None
            record = await play_call(server.port, Script(dest=dest))
            await settle(server)
            return record, resp.queries

    record, queries = run(go())
    assert record.bridge is None and record.hangup_cause == "INVALID_NUMBER_FORMAT"
    assert record.variables["dgsm_result"] == "invalid"
    assert queries == 0


def test_channel_variables_and_continue_on_fail_resume() -> None:
    async def go() -> tuple[CallRecord, CallRecord, CallRecord]:
        async with lab() as (server, _):
            assert server.port is not None
            shaped = await play_call(server.port, Script(dest="1001", variables={
                "dgsm_profile": "trunk-a", "dgsm_codec_string": "PCMA,PCMU",
                "dgsm_continue_on_fail": "yes"}, bridge_fails="NO_ROUTE_DESTINATION"))
            plain_fail = await play_call(server.port, Script(
                dest="1001", bridge_fails="USER_BUSY"))
            bad = await play_call(server.port, Script(dest="1001", variables={
                "dgsm_cause_not_found": "BOGUS"}))
            await settle(server)
            return shaped, plain_fail, bad

    shaped, plain_fail, bad = run(go())
    assert shaped.bridge == ("{absolute_codec_string='PCMA,PCMU'}"
                             "sofia/trunk-a/sip:1001@127.0.0.3:5060")
    assert shaped.variables["continue_on_fail"] == "true"
    assert shaped.resumed and shaped.hangup_cause is None  # the dialplan goes on
    assert plain_fail.hangup_cause == "USER_BUSY" and not plain_fail.resumed
    assert bad.hangup_cause == "NORMAL_TEMPORARY_FAILURE" and bad.bridge is None


def test_hangup_mid_lookup_ends_the_call_at_once() -> None:
    async def go() -> tuple[CallRecord, float, EslServer]:
        queried = asyncio.Event()

        def slow(query: Query) -> Record | None:
            if query.id == "1005":
                queried.set()
            return None  # silence: only the 2 s timeout would end the lookup

        async with lab(handler=slow) as (server, _):
            assert server.port is not None
            t0 = time.monotonic()
            record = await play_call(server.port, Script(
                dest="1005", hangup_when=queried, variables={"dgsm_min_delay": "2"}))
            await settle(server)
            return record, time.monotonic() - t0, server

    record, elapsed, server = run(go())
    assert elapsed < 1.5
    assert not any(c.startswith("sendmsg") for c in record.commands)
    assert record.closed_by_server
    assert server.stats.gone == 1


@pytest.mark.parametrize("drop_at", ["connect", "myevents", "linger", "sendmsg"])
def test_freeswitch_dropping_the_connection_anywhere(drop_at: str) -> None:
    async def go() -> tuple[CallRecord, CallRecord, EslServer]:
        async with lab() as (server, _):
            assert server.port is not None
            dropped = await play_call(server.port, Script(dest="1001", drop_at=drop_at))
            await settle(server)
            after = await play_call(server.port, Script(dest="1001"))
            await settle(server)
            return dropped, after, server

    dropped, after, server = run(go())
    assert dropped.commands[-1].startswith(drop_at)
    assert after.bridge == "sofia/external/sip:1001@127.0.0.3:5060"
    assert server.active == 0


@pytest.mark.parametrize("garbage", [
    b"this is not a header block\n\n",
    b"Content-Type: command/reply\nContent-Length: banana\n\n",
    b"Content-Type: command/reply\nReply-Text: -ERR nope\n\n",
    b"Content-Type: text/rude-rejection\nContent-Length: 24\n\nAccess Denied, go away.\n",
    b"Content-Length: 10\nContent-Type: text/event-plain\n\n\x00\x01\x02 bad:",
    b"Content-Type: command/reply\n",  # and then silence: cut off by call-timeout
])
@pytest.mark.slow
def test_malformed_input_ends_only_that_connection(garbage: bytes) -> None:
    async def go() -> tuple[CallRecord, CallRecord, EslServer]:
        async with lab(call_timeout=0.5) as (server, _):
            assert server.port is not None
            bad = await play_call(server.port, Script(dest="1001", connect_reply=garbage))
            await settle(server)
            good = await play_call(server.port, Script(dest="1001"))
            await settle(server)
            return bad, good, server

    bad, good, server = run(go())
    assert bad.closed_by_server and bad.bridge is None
    assert not any(c.startswith("sendmsg") for c in bad.commands)
    assert good.bridge == "sofia/external/sip:1001@127.0.0.3:5060"
    assert server.active == 0 and server.stats.calls == 2


@pytest.mark.slow
def test_thousands_of_sequential_calls_do_not_leak() -> None:
    async def go() -> tuple[int, int, int, int, EslServer]:
        async with lab() as (server, _):
            assert server.port is not None
            for _ in range(50):  # warm up
                await play_call(server.port, Script(dest="1001"))
            await settle(server)
            fds0, tasks0 = len(os.listdir("/proc/self/fd")), len(asyncio.all_tasks())
            for i in range(2000):
                record = await play_call(server.port, Script(dest="1001" if i % 3 else "10a1"))
                assert record.closed_by_server
            await settle(server)
            return fds0, len(os.listdir("/proc/self/fd")), tasks0, len(asyncio.all_tasks()), \
                server

    fds0, fds1, tasks0, tasks1, server = run(go(), limit=120)
    assert fds1 <= fds0 + 2 and tasks1 <= tasks0
    assert server.stats.calls == 2050 and server.active == 0
    assert server.stats.found + server.stats.invalid == 2050


@pytest.mark.slow
def test_200_simultaneous_calls_are_all_served() -> None:
    table = {f"sip.voice.{3000 + i}.msisdn": Record.parse(f"{i % 5 + 1},127.0.1.{i % 250 + 1}:5060")
             for i in range(200)}

    async def go() -> tuple[list[CallRecord], float]:
        async with lab(table) as (server, _):
            assert server.port is not None
            t0 = time.monotonic()
            records = await asyncio.gather(*(play_call(server.port, Script(dest=str(3000 + i)))
                                             for i in range(200)))
            elapsed = time.monotonic() - t0
            await settle(server)
            return list(records), elapsed

    records, elapsed = run(go())
    for i, record in enumerate(records):
        assert record.bridge == f"sofia/external/sip:{3000 + i}@127.0.1.{i % 250 + 1}:5060"
    assert elapsed < 5


def test_max_calls_refuses_extra_connections() -> None:
    async def go() -> CallRecord:
        blocker = asyncio.Event()
        async with lab(max_calls=1) as (server, _):
            assert server.port is not None
            first = asyncio.create_task(play_call(server.port, Script(
                dest="1005", hangup_when=blocker, variables={"dgsm_min_delay": "2"})))
            async with asyncio.timeout(5):
                while not server.active:
                    await asyncio.sleep(0.005)
            refused = await play_call(server.port, Script(dest="1001"))
            blocker.set()
            await first
            await settle(server)
            assert server.stats.busy == 1
            return refused

    refused = run(go())
    assert refused.commands == [] and refused.closed_by_server


@pytest.mark.slow
def test_help_teaches() -> None:
    text = build_parser().format_help()
    for needle in ("socket", "async full", "UNALLOCATED_NUMBER", "NORMAL_TEMPORARY_FAILURE",
                   "INVALID_NUMBER_FORMAT", "dgsm_result", "journalctl", "SIGTERM",
                   "--profile-v6", "--codec-string", "--continue-on-fail", "--trusted"):
        assert needle in text, needle
    check = subprocess.run(
        [sys.executable, "-m", "dgsm_integrations.freeswitch.server", "--check",
         "--codec-string", "PCMA,PCMU"], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert check.returncode == 0 and "codec-string = PCMA,PCMU" in check.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "dgsm_integrations.freeswitch.server", "--cause-error", "OOPS"],
        capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert bad.returncode == 2 and "OOPS" in bad.stderr


def test_sigterm_stops_and_exits_0() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dgsm_integrations.freeswitch.server", "--listen-port", "0",
         "--interface", LO, "--mdns-port", str(PORT), "--min-delay", "0.1",
          "--allow-loopback", "yes"],
        stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # blocks until the server logs that it listens
        assert "dgsm-fs-esl listening on 127.0.0.1:" in line, line
        port = int(line.split("listening on 127.0.0.1:")[1].split()[0])

        async def one() -> CallRecord:
            async with Responder(TABLE, interface=LO, port=PORT, source="127.0.0.11"):
                return await play_call(port, Script(dest="1001"))

        record = run(one())
        assert record.bridge == "sofia/external/sip:1001@127.0.0.3:5060"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        rest = proc.stderr.read()
        assert "result=found" in rest and "stopped after" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
