"""dgsm-mslookup: output, exit status, daemon mode, serve, and interop with the C tool."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dgsm_integrations.lab.distro import Distro
from dgsm_integrations.mslookup.cli import CSV_HEADERS, _printable

from .conftest import LO
from .peers import require_binary

# dgsm-mslookup and the C tools as subprocesses, on real time
pytestmark = pytest.mark.slow

PORT = 42661
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
ALICE = "sip.voice.1001.msisdn"
HLR = "gsup.hlr.901700000000001.imsi"


def cli(*args: str, port: int = PORT, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dgsm_integrations.mslookup", "--interface", LO, "-M", str(port),
         "--allow-loopback", *args],
        capture_output=True, text=True, timeout=timeout, env=ENV, cwd=ROOT)


def c_tool(distro: Distro) -> list[str]:
    """osmo-mslookup-client of ``distro``'s generation, as the start of a command line."""
    return distro.argv([require_binary("osmo-mslookup-client", distro)])


@pytest.fixture
def serve() -> Iterator[subprocess.Popen[str]]:
    """`dgsm-mslookup serve` as a site: Alice at age 5 (v4+v6), and her home HLR."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dgsm_integrations.mslookup", "serve", "--interface", LO,
         "-M", str(PORT), "--answer", f"{ALICE}=5,127.0.0.2:5060,[fd00::2]:5060",
         "--answer", f"{HLR}=0,127.0.0.1:4222"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("answering 2 queries")  # ready
    yield proc
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "served" in out


def test_csv_and_exit_status(serve: subprocess.Popen[str]) -> None:
    r = cli("-t", "200", "-T", "200", ALICE, "sip.voice.1002.msisdn")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == CSV_HEADERS
    assert sorted(lines[1:]) == [
        f"{ALICE}\tresult\tlast\t5\t127.0.0.2\t5060\tfd00::2\t5060",
        "sip.voice.1002.msisdn\tnot-found\tlast\t0\t\t\t\t\t",
    ]
    r = cli("-H", "--fail-not-found", "-t", "100", "sip.voice.1002.msisdn")
    assert r.returncode == 3 and not r.stdout.startswith("query")


def test_stream_with_timeout_longer_than_min_delay(serve: subprocess.Popen[str]) -> None:
    r = cli("-f", "json", "--trace", "100-300@" + ALICE)
    assert r.returncode == 0
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["result"], x["last"]) for x in rows] == [("result", False), ("none", True)]
    assert rows[0]["v4"] == ["127.0.0.2", "5060"] and rows[0]["query"] == ALICE
    traces = [line for line in r.stderr.splitlines() if line.startswith("trace")]
    assert traces and "from 127.0.0.1" in traces[0] and "best so far" in traces[0]
    assert sum("best so far" in t for t in traces) == 1  # re-sent copies are not "new best"


def test_invalid_query_is_an_error_not_a_hang() -> None:
    started = time.monotonic()
    r = cli("sip.voice.12a;x.msisdn")
    assert r.returncode == 1
    assert r.stdout.splitlines()[1] == "sip.voice.12a;x.msisdn\tERROR\t\t\t\t\t\t"
    assert "invalid" in r.stderr and time.monotonic() - started < 5
    r = cli("-f", "json", "-q", "5000@x.y")
    assert r.returncode == 1 and json.loads(r.stdout) == {"query": "x.y", "result": "ERROR"}
    assert r.stderr == ""
    assert cli("--bogus").returncode == 1
    assert cli("-f", "xml", ALICE).returncode == 1


@pytest.mark.parametrize(("text", "shown"), [
    ("sip.voice.12345.msisdn", "sip.voice.12345.msisdn"),
    ("sip.voice.1\t2.msisdn", "sip.voice.1?2.msisdn"),  # a tab would split a CSV row
    ("a\x00b\x1bc\u200bd\u00e9", "a?b?c?d\u00e9"),  # controls and a format char; é stays
    ("x" * 300, "x" * 200),
    ("\n" * 250, "?" * 200),
])
def test_query_text_is_shown_printable_and_bounded(text: str, shown: str) -> None:
    """What a client or the command line sent is echoed in result rows and logs: never
    a control character, never more than 200 characters."""
    assert _printable(text) == shown


def test_help_teaches() -> None:
    r = cli("--help")
    assert r.returncode == 0
    for word in ("examples:", "exit status", "--trace", "serve", "-s /run/mslookup.sock"):
        assert word in r.stdout


def _daemon_query(path: str, query: str) -> tuple[str, list[str]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.connect(path)  # blocking: a unix socket with a timeout fails at once when busy
        s.settimeout(10)
        header = s.recv(1024).decode()
        s.sendall(query.encode())
        rows = []
        while packet := s.recv(1024):
            rows.append(packet.decode())
        return header, rows


def _start_daemon(cmd: list[str], path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV, cwd=ROOT)
    deadline = time.monotonic() + 10
    while not path.exists():  # the daemon is ready once its socket exists
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    return proc


def test_daemon_keeps_clients_apart(serve: subprocess.Popen[str], tmp_path: Path) -> None:
    path = tmp_path / "mslookup.sock"
    proc = _start_daemon([sys.executable, "-m", "dgsm_integrations.mslookup", "--interface",
                          LO, "-M", str(PORT), "--allow-loopback", "-t", "200", "-s",
                          str(path), "-d"], path)
    try:
        from concurrent.futures import ThreadPoolExecutor
        queries = [ALICE, ALICE, "sip.voice.1002.msisdn", HLR, "sip.voice.x.msisdn"]
        with ThreadPoolExecutor(len(queries)) as pool:
            answers = list(pool.map(lambda q: _daemon_query(str(path), q), queries))
        for query, (header, rows) in zip(queries, answers, strict=True):
            assert header == CSV_HEADERS
            assert rows, query
            assert all(row.startswith(query + "\t") for row in rows), (query, rows)
        assert answers[0][1][-1] == f"{ALICE}\tnone\tlast\t5\t\t\t\t\t"
        assert answers[2][1] == ["sip.voice.1002.msisdn\tnot-found\tlast\t0\t\t\t\t\t"]
        assert answers[3][1] == [f"{HLR}\tresult\tlast\t0\t127.0.0.1\t4222\t\t"]
        assert answers[4][1] == ["sip.voice.x.msisdn\tERROR\t\t\t\t\t\t"]
        # a client that goes away mid-lookup does not disturb the daemon
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.connect(str(path))
            s.sendall(b"5000@sip.voice.1003.msisdn")
        assert _daemon_query(str(path), HLR)[1][0].startswith(HLR + "\tresult")
        # a second daemon on the same path refuses to start
        second = cli("-s", str(path), "-d")
        assert second.returncode == 2 and "already listens" in second.stderr
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert proc.returncode == 0 and not path.exists()


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_c_tool_against_our_serve(serve: subprocess.Popen[str], mslookup_utils_distro: Distro,
                                  fmt: str) -> None:
    """The same lookups by the C tool and by ours give the same lines (order aside: the
    lookups run at the same time)."""
    tool = c_tool(mslookup_utils_distro)
    args = ["-f", fmt, "-t", "200", "-T", "200", "-M", str(PORT), ALICE, HLR,
            "sip.voice.1002.msisdn"]
    theirs = subprocess.run([*tool, *args], capture_output=True, text=True, timeout=15)
    ours = cli(*args)
    assert theirs.returncode == ours.returncode == 0, (theirs.stderr, ours.stderr)
    assert sorted(theirs.stdout.splitlines()) == sorted(ours.stdout.splitlines())
    assert len(ours.stdout.splitlines()) == 3 + (fmt == "csv")  # one line a query (+ header)
    if fmt == "json":
        results = {json.loads(x)["result"] for x in ours.stdout.splitlines()}
        assert results == {"result", "not-found"}


def _group_listener() -> socket.socket:
    """A plain socket on the group, to see a query go out before answering it."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("239.192.23.42", PORT))
    listener.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                        socket.inet_aton("239.192.23.42") + socket.inet_aton(LO))
    listener.settimeout(10)
    return listener


def test_our_client_against_c_tool_send(mslookup_utils_distro: Distro) -> None:
    tool = c_tool(mslookup_utils_distro)
    # wait for our query on the group, then answer it with the C tool's --send
    listener = _group_listener()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dgsm_integrations.mslookup", "--interface", LO, "-M",
         str(PORT), "--allow-loopback", "-f", "json", "-t", "2000", ALICE],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
    try:
        listener.recvfrom(2048)  # our query went out
        sent = subprocess.run([*tool, "-M", str(PORT), "--send", ALICE, "7", "127.0.0.7", "5060",
                               "fd00::7", "5061"], capture_output=True, text=True, timeout=10)
        assert sent.returncode == 0, sent.stderr
        out, _err = proc.communicate(timeout=15)
    finally:
        listener.close()
        if proc.poll() is None:
            proc.kill()
    assert json.loads(out) == {"query": ALICE, "result": "result", "last": True, "age": 7,
                               "v4": ["127.0.0.7", "5060"], "v6": ["fd00::7", "5061"]}


def test_our_send_reaches_the_c_tool(mslookup_utils_distro: Distro) -> None:
    tool = c_tool(mslookup_utils_distro)
    listener = _group_listener()  # joined before the C tool asks
    proc = subprocess.Popen([*tool, "-f", "json", "-t", "3000", "-M", str(PORT), HLR],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        listener.recvfrom(2048)  # the C tool's query went out
        assert cli("-S", HLR, "0", "127.0.0.9", "4222").returncode == 0
        out, _ = proc.communicate(timeout=15)
    finally:
        listener.close()
        if proc.poll() is None:
            proc.kill()
    assert json.loads(out) == {"query": HLR, "result": "result", "last": True, "age": 0,
                               "v4": ["127.0.0.9", "4222"]}


# -- the daemon against hostile or careless clients (issue 11, items 1 and 7) -------------


def _low_fd_limit(soft: int, hard: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return apply


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _wait_fds(pid: int, at_most: int, limit: float) -> int:
    """Poll the daemon's open fds (another process: no event to await) until <= at_most."""
    deadline = time.monotonic() + limit
    while (n := _fds(pid)) > at_most and time.monotonic() < deadline:
        time.sleep(0.02)
    return n


def _daemon(path: Path, *extra: str, soft: int = 64, hard: int = 96) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "dgsm_integrations.mslookup", "--interface", LO, "-M",
           str(PORT), "--allow-loopback", "-t", "100", "-s", str(path), "-d", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV, cwd=ROOT, preexec_fn=_low_fd_limit(soft, hard))
    assert proc.stderr is not None
    # ready once it says so: the socket file exists from bind(), before listen()
    while "serving mslookup queries" not in (line := proc.stderr.readline()):
        assert line, proc.communicate()
    return proc


def _connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(str(path))
    s.settimeout(10)
    return s


def test_daemon_survives_more_idle_clients_than_fds(serve: subprocess.Popen[str],
                                                    tmp_path: Path) -> None:
    """Regression: EMFILE out of accept() ended the daemon (and removed its socket)."""
    path = tmp_path / "mslookup.sock"
    proc = _daemon(path)  # soft limit 64, raised to the hard limit 96 at start
    idle: list[socket.socket] = []
    try:
        for i in range(300):  # more clients than the daemon has fds
            try:
                idle.append(_connect(path))
            except OSError as exc:
                raise AssertionError(f"connect #{i}: {exc}; daemon {proc.poll()}") from exc
        assert proc.poll() is None and path.exists()
        # a real client is still served at once: a client silent longest makes room
        started = time.monotonic()
        header, rows = _daemon_query(str(path), HLR)
        assert header == CSV_HEADERS
        assert rows == [f"{HLR}\tresult\tlast\t0\t127.0.0.1\t4222\t\t"]
        assert time.monotonic() - started < 2
        assert _fds(proc.pid) <= 96
        for s in idle:
            s.close()
        idle.clear()
        # and once they are gone, many clients at once are served again
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: _daemon_query(str(path), HLR), range(40)))
        assert all(rows and rows[0].startswith(HLR + "\tresult") for _, rows in answers)
    finally:
        for s in idle:
            s.close()
        proc.terminate()
        _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and not path.exists(), err
    assert "Traceback" not in err
    assert err.count("out of file descriptors") <= 1


def test_departed_clients_release_their_lookups_at_once(serve: subprocess.Popen[str],
                                                        tmp_path: Path) -> None:
    """Regression: a client that left kept its lookup (and fd) until the lookup ended."""
    path = tmp_path / "mslookup.sock"
    proc = _daemon(path, "--max-wait", "3600000", soft=512, hard=512)
    try:
        baseline = _fds(proc.pid)
        for _ in range(50):
            with _connect(path) as s:
                assert s.recv(1024) == CSV_HEADERS.encode()
                s.sendall(b"3600000-3600000@sip.voice.1003.msisdn")
        # each lookup would wait an hour; the 50 sockets must be closed now, not then
        assert _wait_fds(proc.pid, baseline, 1.0) <= baseline
        assert _daemon_query(str(path), HLR)[1][0].startswith(HLR + "\tresult")
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert proc.returncode == 0


def test_daemon_caps_the_wait_a_client_asks_for(serve: subprocess.Popen[str],
                                                tmp_path: Path) -> None:
    path = tmp_path / "mslookup.sock"
    proc = _daemon(path, "--max-wait", "2000", soft=512, hard=512)
    try:
        started = time.monotonic()
        _, rows = _daemon_query(str(path), "3600000@" + ALICE)
        assert rows == [f"{ALICE}\tERROR\t\t\t\t\t\t"]
        assert time.monotonic() - started < 1
        _, rows = _daemon_query(str(path), "100-2000@" + ALICE)  # within the cap: served
        assert rows[0].startswith(ALICE + "\tresult\tnot-last\t5")
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert proc.returncode == 0
    bad = cli("-s", str(tmp_path / "x.sock"), "-d", "-T", "5000", "--max-wait", "2000")
    assert bad.returncode == 1 and "exceed --max-wait" in bad.stderr


def test_loopback_answers_are_dropped_unless_allowed(serve: subprocess.Popen[str]) -> None:
    """The C tool prints any address; ours drops unusable ones (loopback only when allowed)."""
    args = [sys.executable, "-m", "dgsm_integrations.mslookup", "--interface", LO, "-M",
            str(PORT), "-f", "json", "-t", "200", "-T", "200"]
    strict = subprocess.run([*args, ALICE], capture_output=True, text=True, timeout=15,
                            env=ENV, cwd=ROOT)
    assert strict.returncode == 0
    assert json.loads(strict.stdout)["result"] == "not-found"  # it names 127.0.0.2
    assert "loopback" in strict.stderr and "allow_loopback" in strict.stderr
    lab = cli("-f", "json", "-t", "200", "-T", "200", ALICE)  # cli() adds --allow-loopback
    assert json.loads(lab.stdout)["v4"] == ["127.0.0.2", "5060"]
