"""The local AGI script ``asterisk/dgsm-agi``, run as Asterisk runs it: a child process
talking AGI on its stdin/stdout pipes, against real responders through the lookup path."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dgsm_integrations.lab.agi_peer import REPLY_511, USAGE_520, Exchange, converse, env_block
from dgsm_integrations.mslookup import Endpoint, Query, Record, Responder

from .conftest import LO

# a child process per test, on real time (about 0.3 s each)
pytestmark = pytest.mark.slow

PORT = 42722
T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "asterisk" / "dgsm-agi"


def run(coro: Awaitable[T], limit: float = 60) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, limit)
    return asyncio.run(bounded())


@contextlib.asynccontextmanager
async def sites(asked: asyncio.Event | None = None) -> AsyncIterator[None]:
    """Village sites on loopback; ``asked`` is set when a query for 1004 reaches them."""

    def handler(query: Query) -> Record | None:
        if asked is not None and query.id == "1004":
            asked.set()
        return None

    table = {"sip.voice.1001.msisdn": Record.parse("0,127.0.0.3:5060"),
             "sip.voice.1004.msisdn": Record(5, Endpoint("127.0.0.4", 5060)),
             "sip.voice.1006.msisdn": Record(2, v6=Endpoint("fd00::6", 5062))}
    async with Responder(table, handler=handler, interface=LO, port=PORT, source="127.0.0.11"):
        yield


def settings(tmp: Path, extra: str = "") -> dict[str, str]:
    conf = tmp / "asterisk.conf"
    conf.write_text(f"interface = 127.0.0.1\nmdns-port = {PORT}\nmin-delay = 0.2\n"
                    f"allow-loopback = yes\n{extra}")
    return dict(os.environ, PYTHONPATH=str(ROOT), DGSM_AGI_CONFIG=str(conf))


async def agi(env: dict[str, str], args: list[str], *, signal_after_env: int | None = None,
              asked: asyncio.Event | None = None, extension: str | None = None,
              **kw: Any) -> tuple[Exchange, str, int, float]:
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        str(SCRIPT), *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        if signal_after_env is not None:
            proc.stdin.write(env_block(args, extension=extension))
            await proc.stdin.drain()
            assert asked is not None
            await asyncio.wait_for(asked.wait(), 5)  # the script is inside its lookup now
            proc.send_signal(signal_after_env)
            ex = await converse(proc.stdout, proc.stdin, b"", **kw)
        else:
            ex = await converse(proc.stdout, proc.stdin, env_block(args, extension=extension),
                                **kw)
        status = await asyncio.wait_for(proc.wait(), 10)
        log = (await proc.stderr.read()).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return ex, log, status, time.monotonic() - t0


def test_script_is_executable_and_light() -> None:
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().startswith("#!/usr/bin/env python3\n")
    code = ("import sys, runpy\n"
            "sys.argv = ['x']\n"
            "import dgsm_integrations.asterisk.script\n"
            "print(sorted(m for m in ('asyncio', 'dgsm_integrations.mslookup.aio', "
            "'argparse', 'logging', 'dnslib') if m in sys.modules))\n")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=30, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_found_not_found_ipv6(tmp_path: Path) -> None:
    async def body() -> None:
        env = settings(tmp_path, "endpoint = trunk\n")
        async with sites():
            ex, log, status, _ = await agi(env, ["1001"])
            assert status == 0 and ex.variables == {
                "DGSM_DIAL": "PJSIP/trunk/sip:1001@127.0.0.3:5060", "DGSM_SIP_HOST": "127.0.0.3",
                "DGSM_SIP_PORT": "5060", "DGSM_AGE": "0", "DGSM_RESULT": "found"}
            assert "result=found" in log and "agi=ok" in log
            # the call's line also goes into Asterisk's own log, after DGSM_RESULT
            assert ex.commands[-2][:3] == ["SET", "VARIABLE", "DGSM_RESULT"]
            assert ex.commands[-1][:2] == ["EXEC", "Log"]
            assert ex.commands[-1][2].startswith("NOTICE,dgsm-agi: ext=1001 result=found dial=")
            ex, log, status, _ = await agi(env, ["1002"])
            assert ex.variables == {"DGSM_CAUSE": "1", "DGSM_RESULT": "not-found"}
            ex, *_ = await agi(env, ["1006"])
            assert ex.variables["DGSM_DIAL"] == "PJSIP/trunk/sip:1006@[fd00::6]:5062"
    run(body())


@pytest.mark.slow
def test_stripped_argument_is_not_dialled(tmp_path: Path) -> None:
    """Real Asterisk 22 for the extension 1"00"1: agi_arg_1 is 1001 (quotes stripped)."""
    async def body() -> None:
        env = settings(tmp_path, "asterisk-log = no\n")
        async with sites():
            ex, log, status, _ = await agi(env, ["1001"], extension='1"00"1')
            assert status == 0 and ex.variables == {"DGSM_CAUSE": "28", "DGSM_RESULT": "invalid"}
            assert 'ext=1"00"1 arg=1001 result=invalid' in log and "strips quotes" in log
            assert [c[0] for c in ex.commands] == ["SET", "SET"]  # no Log with asterisk-log=no
            ex, log, status, _ = await agi(env, [], extension="1001")  # AGI(dgsm-agi)
            assert ex.variables["DGSM_RESULT"] == "found"
    run(body())


def test_loopback_answers_need_allow_loopback(tmp_path: Path) -> None:
    """Issue 11 item 8: the per-call script drops unusable answers as the resolver does."""
    async def body() -> None:
        env = settings(tmp_path, "allow-loopback = no\n")  # the later line wins
        async with sites():
            ex, _log, status, _ = await agi(env, ["1001"])  # answered with 127.0.0.3
            assert status == 0
            assert ex.variables == {"DGSM_CAUSE": "1", "DGSM_RESULT": "not-found"}
    run(body())


@pytest.mark.parametrize("args", [["abc"], ["1001@x"], ["1001;x"], ["1001", "2"], ["1001&x"],
                                  ["1 001"], ['"1001"'], ["1" * 40], []])
def test_hostile_extension(tmp_path: Path, args: list[str]) -> None:
    async def body() -> None:
        ex, _log, status, _ = await agi(settings(tmp_path), args)
        assert status == 0
        assert ex.variables == {"DGSM_CAUSE": "28", "DGSM_RESULT": "invalid"}
        assert all(b"DGSM_DIAL" not in line for line in ex.raw)
    run(body())


def test_sighup_mid_lookup_exits_at_once(tmp_path: Path) -> None:
    async def body() -> None:
        env = settings(tmp_path, "min-delay = 2\n")
        asked = asyncio.Event()
        async with sites(asked):
            ex, log, status, elapsed = await agi(env, ["1004"], signal_after_env=signal.SIGHUP,
                                                 asked=asked)
            assert ex.commands == [] and status == 0 and elapsed < 1.5
            assert "SIGHUP" in log
    run(body())


@pytest.mark.slow
def test_hangup_line_and_dead_channel(tmp_path: Path) -> None:
    async def body() -> None:
        env = settings(tmp_path)
        async with sites():
            ex, log, _, _ = await agi(
                env, ["1001"], reply=lambda n, a: b"HANGUP\n200 result=1\n" if n == 1 else None)
            assert len(ex.commands) == 2 and "hangup" in log.lower()
            ex, log, _, _ = await agi(env, ["1001"], reply=lambda n, a: REPLY_511)
            assert len(ex.commands) == 1 and "agi=dead" in log
            ex, log, _, _ = await agi(
                env, ["1001"], reply=lambda n, a: USAGE_520 if n == 2 else None)
            assert list(ex.variables) == ["DGSM_DIAL", "DGSM_SIP_HOST"]
            assert "rejected(520)" in log
    run(body())


@pytest.mark.parametrize("bad", [b"garbage\n", b"200 result=1\n200 result=1\n"])
def test_garbage_reply(tmp_path: Path, bad: bytes) -> None:
    async def body() -> None:
        async with sites():
            ex, log, status, _ = await agi(settings(tmp_path), ["1001"],
                                           reply=lambda n, a: bad if n == 0 else None)
            assert status == 1 and "protocol-error" in log and len(ex.commands) <= 2
    run(body())


@pytest.mark.slow
def test_eof_and_silence_are_bounded(tmp_path: Path) -> None:
    async def body() -> None:
        env = settings(tmp_path, "call-timeout = 0.8\n")
        t0 = time.monotonic()
        # EOF in the middle of the environment block
        proc = await asyncio.create_subprocess_exec(
            str(SCRIPT), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env)
        assert proc.stdin is not None and proc.stderr is not None
        proc.stdin.write(b"agi_request: dgsm-agi\n")
        proc.stdin.close()
        assert await asyncio.wait_for(proc.wait(), 5) == 1
        assert "protocol-error" in (await proc.stderr.read()).decode()
        # Asterisk never answers the first command: call-timeout ends it
        async with sites():
            _ex, log, _status, elapsed = await agi(
                env, ["1001"], reply=lambda n, a: b"")
            assert "call-timeout" in log and elapsed < 3
        assert time.monotonic() - t0 < 8
    run(body())


def test_bad_settings_still_answer_with_error(tmp_path: Path) -> None:
    async def body() -> None:
        conf = tmp_path / "broken.conf"
        conf.write_text("endpoint = a/b\n")
        env = dict(os.environ, PYTHONPATH=str(ROOT), DGSM_AGI_CONFIG=str(conf))
        ex, log, _status, _ = await agi(env, ["1001"])
        assert ex.variables == {"DGSM_CAUSE": "34", "DGSM_RESULT": "error"}
        assert "bad settings" in log
    run(body())


def test_sighup_while_still_reading_its_settings_is_one_line_not_a_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Found with a real Asterisk 22 (the caller hung up 0.1 s into the call, while Python
    3.14 in the sid root was still starting the script): SIGHUP came while the settings were
    read, before the part of main() that ends a call on it, and Asterisk's console got a
    traceback. Here the hangup comes exactly then; and a second one, while the script ends,
    is ignored."""
    from dgsm_integrations.asterisk import script

    def reading_settings() -> object:
        os.kill(os.getpid(), signal.SIGHUP)  # the handler runs before this returns
        os.kill(os.getpid(), signal.SIGHUP)  # Asterisk's hangup again: ignored
        raise AssertionError("the hangup did not stop the script")

    monkeypatch.setattr(script, "config_from_environment", reading_settings)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGALRM)}
    try:
        assert script.main() == 0
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["dgsm-agi: stopped: SIGHUP: channel hung up"], err
