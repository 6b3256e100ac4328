"""The call-server skeleton (dgsm_integrations/_callserver.py) on a toy protocol, and each
adapter's boundary: whatever goes wrong inside a call ends it with the defined outcome.

Fast: loopback only, no namespace of its own, no real-time waits beyond a 0.2 s deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pytest

from dgsm_integrations._callserver import Call, CallServer, ServerStats, _End, race
from dgsm_integrations._daemon import settings_from_args
from dgsm_integrations.asterisk.cli import build_parser as agi_parser
from dgsm_integrations.asterisk.config import AsteriskConfig
from dgsm_integrations.asterisk.fastagi import FastAgiServer
from dgsm_integrations.errors import ConfigError, DgsmError
from dgsm_integrations.freeswitch.config import FreeswitchConfig
from dgsm_integrations.freeswitch.esl import EslProtocolError
from dgsm_integrations.freeswitch.server import EslServer
from dgsm_integrations.lab.agi_peer import converse, env_block
from dgsm_integrations.lab.esl_peer import Script, play_call
from dgsm_integrations.mslookup import AsyncResolver, MslookupError, Query, Result
from dgsm_integrations.settings import CallServerOptions

from .conftest import LO

PORT = 42760


def run(coro: Any, limit: float = 10) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, limit)
    return asyncio.run(bounded())


class ToyError(DgsmError):
    """The toy peer broke the toy protocol."""


class Toy(CallServer[CallServerOptions, Call]):
    """One line in, one line out: ``found``, or what the line asks the server to suffer."""

    name = "toy"
    log = logging.getLogger("dgsm.test.toy")
    protocol_errors = (ToyError,)

    def __init__(self, config: CallServerOptions) -> None:
        super().__init__(config)
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    def open_call(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  peer: str, start: float, accepted: float) -> Call:
        return Call(reader, writer, peer, start, accepted)

    async def converse(self, call: Call) -> None:
        word = (await call.reader.readline()).decode().strip()
        self.entered.set()
        if word == "wait":  # held until released (or the deadline / shutdown)
            await self.release.wait()
        elif word == "proto":
            raise ToyError("bad toy")
        elif word == "dgsm":
            raise DgsmError("something of ours")
        elif word == "bug":
            raise RuntimeError("a bug")
        elif word == "end":
            raise _End("peer said end")
        call.result = "found"
        call.writer.write(b"found\n")
        await call.writer.drain()
        call.ended = "ok"

    def line(self, call: Call) -> str:
        return f"call peer={call.peer} result={call.result} toy={call.ended}"


def toy(**kw: Any) -> Toy:
    kw.setdefault("call_timeout", 0.2)
    return Toy(CallServerOptions(interface=LO, mdns_port=PORT, min_delay=0.05,
                                 listen="127.0.0.1", **kw))


async def say(server: Toy, word: str) -> bytes:
    assert server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(word.encode() + b"\n")
        await writer.drain()
        return await reader.read()  # to EOF: the server always closes
    finally:
        writer.close()


async def served(server: Toy) -> None:
    """Until every call has ended (and been logged)."""
    while server.active:
        await asyncio.sleep(0.002)


@pytest.mark.parametrize(("word", "ended", "counter"), [
    ("ok", "ok", "found"),
    ("proto", "protocol-error(bad toy)", "protocol_errors"),
    ("dgsm", "error(DgsmError: something of ours)", None),
    ("bug", "internal-error(RuntimeError)", None),
    ("end", "ended(peer said end)", None),
    ("wait", "call-timeout", "timeouts"),
])
def test_every_way_a_call_ends_is_one_line_and_counted_once(
        word: str, ended: str, counter: str | None, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> tuple[bytes, ServerStats]:
        async with toy() as server:
            answer = await say(server, word)
            await served(server)
            answer2 = await say(server, "ok")  # the server goes on serving
            await served(server)
            assert answer2 == b"found\n"
            return answer, server.stats

    with caplog.at_level(logging.INFO, logger="dgsm.test.toy"):
        answer, stats = run(body())
    assert answer == (b"found\n" if word == "ok" else b"")  # EOF: the peer never hangs
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("call peer=")]
    assert len(lines) == 2 and lines[0].endswith(f"toy={ended}"), lines
    assert stats.calls == 2
    counted = {k: v for k, v in stats.as_dict().items() if v and k != "calls"}
    assert counted == ({"found": 2} if word == "ok" else
                       {"found": 1, **({counter: 1} if counter else {})})
    if word == "bug":  # a bug is logged with its traceback, for us, never sent to the PBX
        assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)


def test_max_calls_refuses_at_once_and_frees_the_slot() -> None:
    async def body() -> None:
        async with toy(max_calls=1, call_timeout=5.0) as server:
            held = asyncio.create_task(say(server, "wait"))
            await server.entered.wait()
            # refused: EOF (or a reset: it had sent its line), never a hang
            with contextlib.suppress(ConnectionResetError):
                assert await say(server, "ok") == b""
            assert server.stats.busy == 1 and server.active == 1
            server.release.set()
            assert await held == b"found\n"
            await served(server)
            assert await say(server, "ok") == b"found\n"

    run(body())


def test_close_lets_calls_finish_within_grace_and_cancels_the_rest(
        caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        server = toy(call_timeout=5.0)
        await server.start()
        finishing = asyncio.create_task(say(server, "wait"))
        await server.entered.wait()
        loop = asyncio.get_running_loop()
        loop.call_soon(server.release.set)  # finishes at once, inside the grace period
        await server.close(grace=2.0)
        assert await finishing == b"found\n"

        server = toy(call_timeout=5.0)
        await server.start()
        stuck = asyncio.create_task(say(server, "wait"))
        await server.entered.wait()
        await server.close(grace=0.05)  # never released: cancelled after the grace
        assert await stuck == b"" and server.active == 0

    with caplog.at_level(logging.INFO, logger="dgsm.test.toy"):
        run(body())
    ends = [r.getMessage().rsplit("toy=", 1)[1] for r in caplog.records
            if r.getMessage().startswith("call peer=")]
    assert ends == ["ok", "cancelled(shutdown)"]


def test_race_the_first_to_end_wins_and_the_other_is_cancelled() -> None:
    async def body() -> None:
        never = asyncio.Event()
        found, gone, took = await race(asyncio.sleep(0, "result"), never.wait())
        assert found.result() == "result" and gone.cancelled() and took >= 0

        left = asyncio.Event()
        left.set()
        slow, gone, _ = await race(asyncio.sleep(5), left.wait())
        assert gone.done() and not gone.cancelled() and slow.cancelled()

        async def fails() -> str:
            raise MslookupError("no socket")
        failed, gone, _ = await race(fails(), never.wait())
        with pytest.raises(MslookupError):
            failed.result()

    run(body())


# -- renamed settings -----------------------------------------------------------------------


def test_max_sessions_is_still_read_as_max_calls_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dgsm.settings"):
        config = AsteriskConfig.from_strings({"max-sessions": "7"})
    assert config.max_calls == 7
    assert any("max-sessions is deprecated, use max-calls" in r.getMessage()
               for r in caplog.records)
    args = agi_parser().parse_args(["--max-sessions", "9"])  # the old flag, too
    assert AsteriskConfig.from_strings(settings_from_args(args)).max_calls == 9
    with pytest.raises(ConfigError, match="both max-sessions and max-calls"):
        AsteriskConfig.from_strings({"max_sessions": "7", "max-calls": "8"})
    assert "max-sessions" not in agi_parser().format_help()  # the new name is the one taught
    with pytest.raises(ConfigError, match="unknown setting"):
        FreeswitchConfig.from_strings({"max-sessions": "7"})  # never a FreeSWITCH name


def test_configs_share_one_settings_model() -> None:
    for cls in (AsteriskConfig, FreeswitchConfig):
        assert issubclass(cls, CallServerOptions)
        config = cls(interface=LO, min_delay=0.3)
        assert config.lookup_timeout == 0.3 and config.resolver_kwargs()["min_delay"] == 0.3
        with pytest.raises(ConfigError, match="resend"):
            cls(resend=99)
        with pytest.raises(ConfigError, match="max-calls"):
            cls(max_calls=0)


# -- the adapters' boundaries ---------------------------------------------------------------


class _Broken(AsyncResolver):
    """A resolver whose lookups fail: with our own error, or with a bug."""

    def __init__(self, exc: Exception) -> None:
        super().__init__(interface=LO, port=PORT, min_delay=0.05, allow_loopback=True)
        self.exc = exc

    async def resolve(self, query: Query | str, **kw: Any) -> Result:
        raise self.exc


@pytest.mark.parametrize("exc", [MslookupError("resolver closed"), RuntimeError("a bug")],
                         ids=["dgsm-error", "bug"])
def test_fastagi_gives_the_dialplan_its_error_result_whatever_the_lookup_raised(
        exc: Exception) -> None:
    async def body() -> dict[str, str]:
        config = AsteriskConfig(interface=LO, mdns_port=PORT, min_delay=0.05,
                                listen="127.0.0.1", listen_port=0)
        async with FastAgiServer(config, resolver=_Broken(exc)) as server:
            assert server.port is not None
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                ex = await converse(reader, writer, env_block(
                    ["1001"], network_script="dgsm?service=sip.voice"))
            finally:
                writer.close()
            while server.active:
                await asyncio.sleep(0.002)
            assert server.stats.errors == 1
            return ex.variables

    variables = run(body())
    assert variables["DGSM_RESULT"] == "error" and variables["DGSM_CAUSE"] == "34"


@pytest.mark.parametrize("exc", [MslookupError("resolver closed"), RuntimeError("a bug")],
                         ids=["dgsm-error", "bug"])
def test_esl_hangs_up_with_the_error_cause_whatever_the_lookup_raised(exc: Exception) -> None:
    async def body() -> tuple[str | None, str]:
        config = FreeswitchConfig(interface=LO, mdns_port=PORT, min_delay=0.05,
                                  listen="127.0.0.1", listen_port=0)
        async with EslServer(config, resolver=_Broken(exc)) as server:
            assert server.port is not None
            record = await play_call(server.port, Script(dest="1001"))
            while server.active:
                await asyncio.sleep(0.002)
            assert server.stats.errors == 1
            return record.hangup_cause, record.variables["dgsm_result"]

    assert run(body()) == ("NORMAL_TEMPORARY_FAILURE", "error")


def test_adapter_errors_are_dgsm_errors() -> None:
    from dgsm_integrations.asterisk.agi import AgiProtocolError
    assert issubclass(AgiProtocolError, DgsmError)
    assert issubclass(EslProtocolError, DgsmError) and issubclass(EslProtocolError, ValueError)


@pytest.mark.parametrize("which", ["asterisk", "freeswitch"])
def test_check_prints_a_settings_file_that_reads_back_the_same(
        which: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """``--check`` is what an operator pastes into the settings file: lists, none, yes/no as
    the file writes them, so that the file it prints gives the same settings again."""
    from dgsm_integrations._daemon import run_daemon
    from dgsm_integrations.freeswitch.cli import build_parser as fs_parser
    from dgsm_integrations.settings import read_config_file

    parser, config_type = ((agi_parser, AsteriskConfig) if which == "asterisk"
                           else (fs_parser, FreeswitchConfig))
    argv = ["--check", "--trusted", "10.0.0.0/8,192.168.7.0/24", "--allow-loopback", "yes",
            "--min-delay", "0.4", "--resend", "3"]
    args = parser().parse_args(argv)
    assert run_daemon("t", args, config_type.from_strings, lambda c: None,  # type: ignore[arg-type,return-value]
                      logging.getLogger("t")) == 0
    out = capsys.readouterr().out
    assert "trusted = 10.0.0.0/8,192.168.7.0/24" in out and "allow-loopback = yes" in out
    assert "interface = none" in out
    path = tmp_path / "printed.conf"
    path.write_text(out)
    again = config_type.from_strings(read_config_file(str(path)))
    assert again == config_type.from_strings(settings_from_args(args))
