"""Servers out of file descriptors and idle connections (issue 11, items 1 and 6).

The servers run as subprocesses with a low RLIMIT_NOFILE, flooded with connections that
never speak, while a real call (the AGI / ESL peers of ``dgsm_integrations.lab``, byte for
byte as Asterisk and FreeSWITCH) must still be served at once, with a bounded log.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from dgsm_integrations.asterisk.config import Config as AgiConfig
from dgsm_integrations.asterisk.fastagi import FastAgiServer
from dgsm_integrations.freeswitch.config import Config as FsConfig
from dgsm_integrations.freeswitch.server import EslServer
from dgsm_integrations.lab.agi_peer import converse, env_block
from dgsm_integrations.lab.esl_peer import Script, play_call
from dgsm_integrations.mslookup import Record, Responder

from .conftest import LO

PORT = 42751
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T = TypeVar("T")
TABLE = {"sip.voice.1001.msisdn": Record.parse("0,127.0.0.3:5060")}
IDLE = 400  # connections that never speak; the servers get 128 file descriptors


def run(coro: Awaitable[T], limit: float = 60) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, limit)
    return asyncio.run(bounded())


def _limit(n: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    return apply


def _room_for_idle_clients() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < IDLE + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, IDLE + 1000), hard))


class _Server:
    """A server subprocess whose stderr is read all along (a chatty one must not block)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.listening = asyncio.Event()
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.lines.append(line.decode(errors="replace").rstrip("\n"))
            if "listening on" in self.lines[-1]:
                self.listening.set()

    async def stop(self) -> list[str]:
        self.proc.terminate()
        try:
            code = await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        await asyncio.wait_for(self.reader, 5)
        assert code == 0, self.lines[-20:]
        return self.lines


async def _start(module: str, port: int, *flags: str) -> _Server:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, "--interface", LO, "--mdns-port", str(PORT),
        "--listen-port", str(port), "--min-delay", "0.2", "--allow-loopback", "yes",
        "--first-byte-timeout", "1", *flags, stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT, preexec_fn=_limit(128))
    server = _Server(proc)
    await asyncio.wait_for(server.listening.wait(), 10)
    return server


async def _idle(port: int, n: int) -> list[asyncio.StreamWriter]:
    writers = []
    for _ in range(n):
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
    return writers


@pytest.mark.slow
def test_fastagi_serves_a_call_through_an_idle_flood_with_few_fds() -> None:
    """Regression: 600 idle connections, 256 fds: 12,526 log lines, the real call failed."""
    _room_for_idle_clients()

    async def body() -> None:
        async with Responder(TABLE, interface=LO, port=PORT, source="127.0.0.11"):
            proc = await _start("dgsm_integrations.asterisk.fastagi", 42752)
            try:
                idle = await _idle(42752, IDLE)
                started = time.monotonic()
                reader, writer = await asyncio.open_connection("127.0.0.1", 42752)
                ex = await asyncio.wait_for(converse(
                    reader, writer, env_block(["1001"], network_script="dgsm")), 10)
                took = time.monotonic() - started
                writer.close()
                assert ex.variables["DGSM_RESULT"] == "found"
                assert took < 1.0  # an age-0 answer: no waiting for min-delay
                for w in idle:
                    w.close()
            finally:
                lines = await proc.stop()
        assert not any("Traceback" in line or "ERROR" in line for line in lines), lines[:20]
        assert len(lines) <= 12, lines  # start, the fd warning, one call, summaries, stop
        assert sum("result=found" in line for line in lines) == 1
    run(body())


@pytest.mark.slow
def test_esl_serves_a_call_through_an_idle_flood_with_few_fds() -> None:
    _room_for_idle_clients()

    async def body() -> None:
        async with Responder(TABLE, interface=LO, port=PORT, source="127.0.0.11"):
            proc = await _start("dgsm_integrations.freeswitch.server", 42753)
            try:
                idle = await _idle(42753, IDLE)
                started = time.monotonic()
                call = await asyncio.wait_for(play_call(42753, Script(dest="1001")), 10)
                took = time.monotonic() - started
                assert call.bridge == "sofia/external/sip:1001@127.0.0.3:5060"
                assert took < 1.0
                for w in idle:
                    w.close()
            finally:
                lines = await proc.stop()
        assert not any("Traceback" in line or "ERROR" in line for line in lines), lines[:20]
        assert len(lines) <= 12, lines
        assert sum("result=found" in line for line in lines) == 1
    run(body())


@pytest.mark.slow
def test_a_silent_connection_is_closed_at_the_first_byte_deadline() -> None:
    async def body() -> None:
        async with Responder(TABLE, interface=LO, port=PORT, source="127.0.0.11"):
            agi = FastAgiServer(AgiConfig(interface=LO, mdns_port=PORT, listen_port=0,
                                          min_delay=0.2, allow_loopback=True,
                                          first_byte_timeout=0.3))
            esl = EslServer(FsConfig(interface=LO, mdns_port=PORT, listen_port=0,
                                     min_delay=0.2, allow_loopback=True,
                                     first_byte_timeout=0.3))
            async with agi, esl:
                for server, greeting in ((agi, b""), (esl, b"connect\n\n")):
                    assert server.port is not None and server.listener is not None
                    started = time.monotonic()
                    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                    got = await asyncio.wait_for(reader.read(), 5)  # until the server closes
                    assert got.startswith(greeting)
                    assert 0.3 <= time.monotonic() - started < 1.0
                    writer.close()
                    assert server.listener.stats.silent == 1
                    assert server.stats.calls == 0  # never a call, no per-call log line
    run(body())


def test_out_of_fds_pauses_accepting_with_one_line_then_resumes() -> None:
    """The Listener itself, with a cap above what its fd limit can hold: EMFILE happens."""
    script = textwrap.dedent("""
        import asyncio, logging, socket, sys
        from dgsm_integrations._listen import Listener
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        log = logging.getLogger("t")

        async def handler(conn, peer):
            loop = asyncio.get_running_loop()
            data = await loop.sock_recv(conn, 100)
            await loop.sock_sendall(conn, b"echo " + data)
            conn.close()

        async def main():
            srv = socket.create_server(("127.0.0.1", 0), backlog=1024)
            srv.setblocking(False)
            listener = Listener([srv], handler, name="t", log=log, max_connections=100_000,
                                first_byte_timeout=30)
            listener.start()
            print(srv.getsockname()[1], flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            print("stats", listener.stats.as_dict(), flush=True)
            listener.close()
        asyncio.run(main())
    """)
    _room_for_idle_clients()
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT), preexec_fn=_limit(64))
    assert proc.stdout is not None and proc.stdin is not None
    port = int(proc.stdout.readline())
    idle = []
    try:
        for _ in range(200):  # more than 64 fds: the accept queue fills, accept() hits EMFILE
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as real:
            real.sendall(b"hello")
            assert real.recv(100) == b"echo hello"  # the longest-silent one made room
        for s in idle:
            s.close()
        idle.clear()
        for _ in range(3):  # and afterwards it accepts as usual
            with socket.create_connection(("127.0.0.1", port), timeout=10) as real:
                real.sendall(b"again")
                assert real.recv(100) == b"echo again"
        out, err = proc.communicate("stop\n", timeout=15)
    finally:
        for s in idle:
            s.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "'fd_exhausted': 1}" in out, out  # one episode ...
    assert err.count("out of file descriptors") == 1, err  # ... one line
    assert "Traceback" not in err and len(err.splitlines()) <= 8, err


def _unit(path: str) -> dict[str, str]:
    values: dict[str, str] = {}
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        for line in f:
            key, sep, value = line.strip().partition("=")
            if sep and not line.startswith("#"):
                values[key] = value
    return values


def test_units_give_the_servers_the_file_descriptors_they_need() -> None:
    """Regression: dgsm-fastagi.service inherited 1,024 fds for max-sessions 1,000 (plus
    backlog); every unit now states a limit with room for the default maxima."""
    needs = {"asterisk/dgsm-fastagi.service": AgiConfig().max_calls * 5 // 4 + 16,
             "freeswitch/dgsm-fs-esl.service": FsConfig().max_calls * 5 // 4 + 16,
             "esme/esme-dgsm.service": 1024}
    for path, need in needs.items():
        unit = _unit(path)
        assert int(unit["LimitNOFILE"]) >= need + 64, path
    for path, cmd in (("asterisk/dgsm-fastagi.service", "dgsm-fastagi"),
                      ("freeswitch/dgsm-fs-esl.service", "dgsm-fs-esl")):
        unit = _unit(path)
        assert unit["ExecStart"].startswith(f"/opt/dgsm-integrations/bin/{cmd} "), path
        assert unit["Documentation"].startswith(
            "file:///opt/dgsm-integrations/share/doc/dgsm-integrations/"), path
