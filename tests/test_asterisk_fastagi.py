"""The FastAGI server, driven by a peer that speaks AGI over TCP as Asterisk does, against
real responders through the resolver (loopback, in the test namespace).

The five panoramisk 1.4 defects named in issue 4 are regression tests here against OUR server
(``test_regression_*``); ``test_panoramisk_defect_*`` demonstrate the defects themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import pytest

from dgsm_integrations.asterisk.cli import build_parser
from dgsm_integrations.asterisk.config import Config
from dgsm_integrations.asterisk.fastagi import FastAgiServer
from dgsm_integrations.lab.agi_peer import REPLY_511, USAGE_520, Exchange, converse, env_block
from dgsm_integrations.mslookup import Endpoint, Query, Record, Responder

from .conftest import LO

PORT = 42720
T = TypeVar("T")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOUND_VARS = {"DGSM_DIAL": "PJSIP/dgsm/sip:1001@127.0.0.3:5060", "DGSM_SIP_HOST": "127.0.0.3",
              "DGSM_SIP_PORT": "5060", "DGSM_AGE": "0", "DGSM_RESULT": "found"}


def run(coro: Awaitable[T], limit: float = 60) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, limit)
    return asyncio.run(bounded())


def config(**kw: Any) -> Config:
    kw.setdefault("min_delay", 0.2)
    kw.setdefault("allow_loopback", True)  # every test site is on this host
    return Config(interface=LO, mdns_port=PORT, listen="127.0.0.1", listen_port=0, **kw)


@contextlib.asynccontextmanager
async def lab(records: dict[str, Record] | None = None,
              **kw: Any) -> AsyncIterator[FastAgiServer]:
    table = {"sip.voice.1001.msisdn": Record.parse("0,127.0.0.3:5060")}
    table.update(records or {})
    async with Responder(table, interface=LO, port=PORT, source="127.0.0.11"), \
            FastAgiServer(config(**kw)) as server:
        yield server


async def call(server: FastAgiServer, args: list[str], script: str = "dgsm?service=sip.voice",
               **kw: Any) -> Exchange:
    assert server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        return await converse(reader, writer, env_block(args, network_script=script), **kw)
    finally:
        writer.close()


async def until(predicate: Any, limit: float = 5.0) -> None:
    """Wait (bounded) for a server-side state change that has no event of its own."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.005)


# -- the happy paths ---------------------------------------------------------------------


def test_found_not_found_and_ipv6() -> None:
    async def body() -> None:
        slow6 = Record(4, v6=Endpoint("fd00::5", 5070))
        async with lab({"sip.voice.1003.msisdn": slow6}) as server:
            ex = await call(server, ["1001"])
            assert ex.variables == FOUND_VARS and ex.closed_by_peer
            sets = [c[:3] for c in ex.commands if c[0] == "SET"]
            assert sets[-1] == ["SET", "VARIABLE", "DGSM_RESULT"]
            # then, and only then, the call's line into Asterisk's own log (at NOTICE)
            assert ex.commands[-1][:2] == ["EXEC", "Log"] and len(ex.commands[-1]) == 3
            assert ex.commands[-1][2].startswith("NOTICE,dgsm-fastagi: call peer=")
            assert " ext=1001 result=found dial=PJSIP/dgsm/sip:1001@" in ex.commands[-1][2]
            ex = await call(server, ["1002"], script="dgsm")
            assert ex.variables == {"DGSM_CAUSE": "1", "DGSM_RESULT": "not-found"}
            ex = await call(server, ["1003"])
            assert ex.variables["DGSM_DIAL"] == "PJSIP/dgsm/sip:1003@[fd00::5]:5070"
            assert ex.variables["DGSM_AGE"] == "4"
            assert server.stats.found == 2 and server.stats.not_found == 1
    run(body())


def test_service_from_the_url_and_bad_routes() -> None:
    async def body() -> None:
        rec = {"smpp.sms.1001.msisdn": Record.parse("0,127.0.0.9:2775")}
        async with lab(rec) as server:
            ex = await call(server, ["1001"], script="dgsm?service=smpp.sms")
            assert ex.variables["DGSM_SIP_HOST"] == "127.0.0.9"
            for script in ("other", "dgsm?service=bad service", "dgsm?x=1",
                           "dgsm?service=a&service=b", "dgsm?service"):
                ex = await call(server, ["1001"], script=script)
                assert ex.variables == {"DGSM_CAUSE": "34", "DGSM_RESULT": "error"}, script
    run(body())


@pytest.mark.parametrize("args", [
    ["abc"], ["1001@evil"], ["1001;x"], ["1001", "endpoint=x"], ["1001&PJSIP/x"],
    ["10 01"], ['"1001"'], ["1" * 40], [],
])
def test_hostile_extension_never_reaches_dial(args: list[str]) -> None:
    async def body() -> None:
        async with lab() as server:
            ex = await call(server, args)
            assert ex.variables == {"DGSM_CAUSE": "28", "DGSM_RESULT": "invalid"}
            assert all(b"DGSM_DIAL" not in line for line in ex.raw)
    run(body())


# -- the five panoramisk 1.4 situations, against our server -----------------------------------


def test_regression_eof_before_blank_line_does_not_freeze_the_loop() -> None:
    async def body() -> None:
        async with lab() as server:
            assert server.port is not None
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"agi_network: yes\nagi_request: agi://x/dgsm\n")
            writer.write_eof()
            # the server closes this connection; the loop (shared with us) keeps running
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            ex = await asyncio.wait_for(call(server, ["1001"]), 5)
            assert ex.variables == FOUND_VARS
            assert server.stats.protocol_errors == 1
    run(body())


def test_regression_async_hangup_line_is_not_taken_for_a_reply() -> None:
    async def body() -> None:
        async with lab() as server:
            ex = await call(server, ["1001"],
                            reply=lambda n, a: b"HANGUP\n200 result=1\n" if n == 1 else None)
            # HANGUP came while command 1 was pending: it got its reply, then the server
            # stopped (the channel is gone) -- it did not send command 2 with reply 1's text.
            assert len(ex.commands) == 2
            assert server.stats.hangups == 1
    run(body())


def test_regression_route_matches_path_not_query() -> None:
    async def body() -> None:
        async with lab() as server:
            for script in ("dgsm?service=sip.voice", "dgsm", "/dgsm/?service=sip.voice"):
                ex = await call(server, ["1001"], script=script)
                assert ex.variables == FOUND_VARS, script
    run(body())


def test_regression_multiline_520_read_completely() -> None:
    async def body() -> None:
        async with lab() as server:
            seen: list[str] = []

            def reply(n: int, args: list[str]) -> bytes | None:
                seen.append(args[2])
                return USAGE_520 if n == 0 else None

            ex = await call(server, ["1001"], reply=reply)
            # the 520 ends the call cleanly: no desync, no lines left over as "replies"
            assert seen == ["DGSM_DIAL"] and ex.closed_by_peer
            # and with a 520 on a later command, the earlier ones were read correctly
            seen.clear()
            ex = await call(server, ["1001"],
                            reply=lambda n, a: USAGE_520 if n == 3 else None)
            assert list(ex.variables) == ["DGSM_DIAL", "DGSM_SIP_HOST", "DGSM_SIP_PORT"]
            assert server.stats.protocol_errors == 0
    run(body())


def test_regression_plain_function_style_handlers_work_on_this_python() -> None:
    """panoramisk wraps plain functions with asyncio.coroutine (gone in 3.11). Our routes are
    configuration, not registered callables: the server runs on this interpreter."""
    assert sys.version_info >= (3, 11)

    async def body() -> None:
        async with lab(route="lookup") as server:
            ex = await call(server, ["1001"], script="lookup")
            assert ex.variables == FOUND_VARS
    run(body())


# -- hostile and broken peers -------------------------------------------------------------


def test_hangup_mid_lookup_ends_the_call_at_once() -> None:
    async def body() -> None:
        slow = {"sip.voice.1004.msisdn": Record(5, Endpoint("127.0.0.4", 5060))}
        async with lab(slow, min_delay=2.0) as server:
            t0 = time.monotonic()
            ex = await call(server, ["1004"], after_env=b"HANGUP\n")
            assert ex.commands == [] and ex.closed_by_peer
            assert time.monotonic() - t0 < 1.0  # well before min_delay
            assert server.stats.hangups == 1
            # EOF during the lookup, too
            t0 = time.monotonic()
            ex = await call(server, ["1004"], close_after_env=True)
            assert ex.commands == [] and time.monotonic() - t0 < 1.0
            await until(lambda: server.active == 0)
    run(body())


@pytest.mark.parametrize(
    "bad", [b"garbage\n", b"200 result=1\n200 result=1\n", b"x" * 9000 + b"\n"])
def test_garbage_or_unsolicited_reply_ends_the_call(bad: bytes) -> None:
    async def body() -> None:
        async with lab() as server:
            ex = await call(server, ["1001"], reply=lambda n, a: bad if n == 0 else None)
            assert len(ex.commands) == 1 and ex.closed_by_peer
            await until(lambda: server.stats.protocol_errors == 1)
            ex = await call(server, ["1001"], after_env=bad)
            assert ex.commands == [] and ex.closed_by_peer
    run(body())


def test_511_and_510_stop_the_call() -> None:
    async def body() -> None:
        async with lab() as server:
            ex = await call(server, ["1001"], reply=lambda n, a: REPLY_511 if n == 1 else None)
            assert len(ex.commands) == 2
            ex = await call(server, ["1002"], reply=lambda n, a: b"510 Invalid\n")
            assert len(ex.commands) == 1
    run(body())


@pytest.mark.slow
def test_silent_peer_is_cut_off_by_call_timeout() -> None:
    async def body() -> None:
        async with lab(call_timeout=0.6) as server:
            assert server.port is not None
            t0 = time.monotonic()
            # never sends the blank line
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"agi_request: agi://x/dgsm\n")
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            # never answers a command
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(env_block(["1001"], network_script="dgsm"))
            assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"SET VARIABLE")
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            assert time.monotonic() - t0 < 3.0
            await until(lambda: server.stats.timeouts == 2)
    run(body())


@pytest.mark.slow
def test_200_simultaneous_sessions() -> None:
    async def body() -> None:
        records = {f"sip.voice.{2000 + i}.msisdn": Record(i % 7, Endpoint("127.0.0.5", 5060 + i))
                   for i in range(100)}
        async with lab(records) as server:
            results = await asyncio.gather(*(call(server, [str(2000 + i)], timeout=20)
                                             for i in range(200)))
            for i, ex in enumerate(results):
                if i < 100:
                    assert ex.variables["DGSM_RESULT"] == "found"
                    assert ex.variables["DGSM_SIP_PORT"] == str(5060 + i)
                    assert ex.variables["DGSM_AGE"] == str(i % 7)
                else:
                    assert ex.variables == {"DGSM_CAUSE": "1", "DGSM_RESULT": "not-found"}
            assert server.stats.calls == 200 and server.stats.found == 100
            await until(lambda: server.active == 0)
    run(body(), 120)


@pytest.mark.slow
def test_max_calls_refuses_extra_calls() -> None:
    async def body() -> None:
        slow = {"sip.voice.1004.msisdn": Record(5, Endpoint("127.0.0.4", 5060))}
        async with lab(slow, max_calls=1, min_delay=0.5) as server:
            first = asyncio.create_task(call(server, ["1004"]))
            await until(lambda: server.active == 1)
            ex = await call(server, ["1001"])
            assert ex.commands == [] and server.stats.busy == 1
            assert (await first).variables["DGSM_RESULT"] == "found"
    run(body())


# -- the process: --help, SIGTERM -------------------------------------------------------------


def test_help_teaches() -> None:
    text = build_parser().format_help()
    for needle in ("AGI(agi://127.0.0.1:4573/dgsm?service=sip.voice)", "agi_extension",
                   "--asterisk-log", "DGSM_DIAL",
                   "DGSM_CAUSE", "--config", "--endpoint", "SIGTERM", "docs/asterisk.md"):
        assert needle in text


@pytest.mark.slow
def test_sigterm_lets_the_call_finish_then_exits_0() -> None:
    async def body() -> None:
        slow = {"sip.voice.1004.msisdn": Record(5, Endpoint("127.0.0.4", 5060))}
        asked = asyncio.Event()

        def handler(query: Query) -> Record | None:
            asked.set()
            return None

        async with Responder(slow, handler=handler, interface=LO, port=PORT,
                             source="127.0.0.11"):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "dgsm_integrations.asterisk.fastagi",
                "--interface", LO, "--mdns-port", str(PORT), "--listen-port", "42721",
                "--min-delay", "0.5", "--grace", "5", "--allow-loopback", "yes",
                stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT)
            assert proc.stderr is not None
            try:
                while b"listening on" not in await asyncio.wait_for(proc.stderr.readline(), 10):
                    pass
                reader, writer = await asyncio.open_connection("127.0.0.1", 42721)
                pending = asyncio.create_task(converse(
                    reader, writer, env_block(["1004"], network_script="dgsm")))
                await asyncio.wait_for(asked.wait(), 5)  # the call is in its lookup (0.5 s)
                proc.send_signal(signal.SIGTERM)
                ex = await pending
                assert ex.variables["DGSM_RESULT"] == "found"
                assert await asyncio.wait_for(proc.wait(), 10) == 0
                log = (await proc.stderr.read()).decode()
                assert "call peer=" in log and "result=found" in log and "stopped" in log
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    run(body())


# -- the defects themselves, in panoramisk 1.4 (demonstrations, not our code) ---------------------



def _panoramisk() -> Any:
    try:
        import panoramisk.fast_agi as fa  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        pytest.skip("panoramisk 1.4 not installed: defect demonstrations skipped "
                    "(pip install panoramisk==1.4)")
    return fa


def test_panoramisk_defect_route_includes_query() -> None:
    """DEMONSTRATES A PANORAMISK 1.4 DEFECT: a route only matches the raw script with its
    ``?query``, so ``agi://host/dgsm?service=sip.voice`` finds no ``dgsm`` route."""
    fa = _panoramisk()
    hits: list[str] = []

    async def handler(request: Any) -> None:
        hits.append(request.headers["agi_network_script"])

    async def body() -> None:
        app = fa.Application()
        app.add_route("dgsm", handler)
        server = await asyncio.start_server(app.handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        for script in ("dgsm", "dgsm?service=sip.voice"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(env_block(["1001"], network_script=script))
            await asyncio.wait_for(reader.read(), 5)
            writer.close()
        server.close()
        assert hits == ["dgsm"]  # the ?query request found no route
    run(body())


def test_panoramisk_defect_hangup_line_shifts_replies() -> None:
    """DEMONSTRATES A PANORAMISK 1.4 DEFECT: an asynchronous HANGUP line is returned as the
    pending command's result, and the real reply is then read by the next command."""
    fa = _panoramisk()
    results: list[Any] = []

    async def handler(request: Any) -> None:
        results.append(await request.send_command('SET VARIABLE A "1"'))
        results.append(await request.send_command('GET VARIABLE B'))

    async def body() -> None:
        app = fa.Application()
        app.add_route("dgsm", handler)
        server = await asyncio.start_server(app.handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(env_block(["1"], network_script="dgsm"))
        await reader.readline()
        writer.write(b"HANGUP\n200 result=1\n")
        await reader.readline()
        writer.write(b"200 result=1 (bvalue)\n")
        await asyncio.wait_for(reader.read(), 5)
        writer.close()
        server.close()
        assert results[0].get("error") == "AGIResultHangup"
        assert results[1]["result"] == ("1", "")  # SET's reply, not B's value "(bvalue)"
    run(body())


@pytest.mark.slow
def test_panoramisk_defect_eof_before_blank_line_spins() -> None:
    """DEMONSTRATES A PANORAMISK 1.4 DEFECT: EOF before the blank line makes its handler loop
    on ``reader.read()`` returning b'' without ever yielding: the event loop freezes. Run in a
    child process that is killed after a bounded wait."""
    _panoramisk()
    code = (
        "import asyncio, panoramisk.fast_agi as fa\n"
        "async def main():\n"
        "    app = fa.Application()\n"
        "    s = await asyncio.start_server(app.handler, '127.0.0.1', 0)\n"
        "    port = s.sockets[0].getsockname()[1]\n"
        "    r, w = await asyncio.open_connection('127.0.0.1', port)\n"
        "    w.write(b'agi_request: x\\n'); w.write_eof()\n"
        "    await asyncio.sleep(0.5)\n"
        "    print('loop alive', flush=True)\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        out, _ = proc.communicate(timeout=3)
        frozen = False
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=5)
        frozen = True
    assert frozen and b"loop alive" not in out
