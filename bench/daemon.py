"""Daemon mode: ``dgsm-mslookup -d`` against ``osmo-mslookup-client -d``, in the same run.

Both daemons run as deployed (``-s PATH -d -f json``, default min-delay and timeout 1000 ms),
each with its own real ``osmo-hlr`` (Debian's, logging at notice as deployed) on its own
mDNS port, identical configs, so neither daemon wakes up for the other's traffic. The query is
``gsup.hlr.<imsi>.imsi``, a home-HLR lookup: OsmoHLR answers it for every subscriber in its
database, always with age 0 (a ``sip.voice`` answer carries the seconds since the subscriber's
Location Updating, which OsmoHLR counts in whole seconds: it is 0 only within the second of
the attach and 1 the next, when both clients would wait their full min-delay). An age-0 answer
ends the lookup at once in both (libosmo-mslookup's ``osmo_mslookup_client_rx_result``).
Every subscriber is provisioned in both HLRs (one through the VTY, the rest cloned from its
database row), and every query asks a new IMSI, so nothing is coalesced or cached.

A client in this process connects to a daemon's ``SOCK_SEQPACKET`` socket, sends one query,
reads result packets until the one with ``"last": true``, and closes; the round trip, from
``socket()`` to that packet, is timed with ``perf_counter``. Ours and C's alternate (A/B,
the first of each pair swapped every time), after a warm-up. Only one query per connection:
the C daemon answers a second query on a connection with an ERROR row (its "Only one query
per client connect is allowed") and closes the connection after the last result; ours does
the same, so there is no persistent-connection mode to compare.

Where the time goes, measured from outside and the same for both: a passive socket on each
mDNS port (``SO_TIMESTAMPNS``) stamps when the daemon's query and the HLR's answer were on
the wire, which splits a round trip into client → query sent (accept, read, parse, start,
encode, ``sendto``), HLR (OsmoHLR's work), and answer → client (wake-up, decode, select,
format, write, the client's wake-up). Also each daemon's CPU time and context switches per
request (``/proc``). ``--profile`` adds, outside the timed A/B run, the system calls per
request of each daemon (``strace -c -f``, a run with queries minus one without) and a
cProfile of ours (functions by own time per request; cProfile slows Python several-fold, so
read it for shares, not absolute figures).

``--lean`` adds bench-only daemons to the same rotation, each with its own OsmoHLR:
``_lean_daemon.py`` (one epoll loop over today's sans-I/O pieces, also ``--eager``: the query
read right after ``accept()``) and ``_floor_daemon.py`` (bytes and dicts only): what a
driver without asyncio, and the least CPython can do, would cost. ``--old COMMIT`` runs that
commit's ``dgsm-mslookup`` (a ``git archive`` export) beside today's.

Target (issue 13): ours' median at most the C daemon's (ratio ours / C <= 1.0). Runs inside
a fresh private network namespace (``unshare -rn``, lo up, 224.0.0.0/4 to lo); nothing
leaves the machine. ``--quick`` for a short run. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import re
import shutil
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import enter_private_netns, pct  # noqa: E402
from osmohlr_burst import QuietOsmoHlr  # noqa: E402

GROUP = "239.192.23.42"
#: Each daemon's mDNS port and its OsmoHLR's address ("lean": the --lean prototype).
PORTS = {"ours": 4266, "c": 4267, "lean": 4268, "eager": 4269, "floor": 4270, "old": 4271}
HLR_IPS = {"ours": "127.0.0.2", "c": "127.0.0.3", "lean": "127.0.0.4", "eager": "127.0.0.5",
           "floor": "127.0.0.6", "old": "127.0.0.7"}
LABELS = {"ours": "dgsm-mslookup -d", "c": "osmo-mslookup-client -d",
          "lean": "prototype: epoll, no asyncio", "eager": "prototype + recv after accept",
          "floor": "floor: bytes only, no objects"}
#: What both HLRs answer gsup.hlr with (a configured service: no loopback address in it).
GSUP_AT = ("10.23.0.1", 4222)
IMSI_BASE = 901700200000000
TARGET_RATIO = 1.0
START_TIMEOUT = 10.0
LOOKUP_TIMEOUT = 5.0  # far beyond min-delay: a lookup that takes this long is broken


# -- figures ------------------------------------------------------------------------------

def summary(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 4),
            "p90_ms": round(pct(ms, 90), 4), "p99_ms": round(pct(ms, 99), 4),
            "min_ms": round(min(ms), 4), "max_ms": round(max(ms), 4)}


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) if i else c.ljust(w)
                      for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
    return "\n".join(out)


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of process ``pid`` so far, in ns (schedstat: exact, where
    /proc/PID/stat counts clock ticks)."""
    return sum(int((task / "schedstat").read_text().split()[0])
               for task in Path(f"/proc/{pid}/task").iterdir())


def ctx_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of process ``pid`` so far."""
    total = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if "ctxt_switches:" in line:
            total += int(line.split()[1])
    return total


# -- the HLRs -----------------------------------------------------------------------------

def provision(hlr: QuietOsmoHlr, imsis: list[int]) -> None:
    """The first IMSI through the VTY, the others as clones of its database row."""
    template = str(imsis[0])
    hlr.create_subscriber(template, str(imsis[0] % 10**9))
    db = sqlite3.connect(hlr.db_path, timeout=10)
    try:
        cur = db.execute("SELECT * FROM subscriber WHERE imsi = ?", (template,))
        cols = [d[0] for d in cur.description]
        row = dict(zip(cols, cur.fetchone(), strict=True))
        keep = [c for c in cols if c not in ("id", "imsi", "msisdn")]
        if not all(c.isidentifier() for c in keep):
            raise RuntimeError(f"unexpected column names in OsmoHLR's database: {keep}")
        sql = (f"INSERT INTO subscriber (imsi, msisdn, {', '.join(keep)}) "  # noqa: S608 (names from the HLR's own schema, checked)
               f"VALUES (?, ?, {', '.join('?' * len(keep))})")
        with db:
            db.executemany(sql, ((str(i), str(i % 10**9), *(row[c] for c in keep))
                                 for i in imsis[1:]))
    finally:
        db.close()
    shown = hlr.show_subscriber(str(imsis[-1]))
    if str(imsis[-1]) not in shown:
        raise RuntimeError(f"cloned subscriber not visible to OsmoHLR: {shown!r}")


# -- the daemons --------------------------------------------------------------------------

@dataclass
class Daemon:
    name: str
    argv: list[str]
    path: str
    proc: subprocess.Popen[bytes] | None = None
    stderr: list[str] = field(default_factory=list)
    traced: bool = False

    def start(self, env: dict[str, str] | None = None, ready_line: str | None = None) -> None:
        """Start, then wait until the socket accepts: for ours, until it says it serves (a
        line on stderr); the C tool says nothing, so its socket is tried until it connects
        (bounded; a poll interval, it has no other signal)."""
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        ready = threading.Event()
        assert self.proc.stderr is not None
        pipe = self.proc.stderr

        def drain() -> None:
            for raw in pipe:
                text = raw.decode(errors="replace").rstrip()
                self.stderr.append(text)
                if ready_line is not None and ready_line in text:
                    ready.set()
            ready.set()  # EOF: it exited

        threading.Thread(target=drain, daemon=True).start()
        if ready_line is not None:
            if not ready.wait(START_TIMEOUT) or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} did not start: {self.stderr[-5:]}")
            return
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.stderr[-5:]}")
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
                try:
                    s.connect(self.path)
                    return
                except (FileNotFoundError, ConnectionRefusedError):
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no socket at {self.path}")
            time.sleep(0.01)  # poll interval, not a wait for readiness

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # SIGINT to the daemon itself (under strace, strace's child): ours exits cleanly
        # (cProfile writes out), the C tool dies of it; strace reports when its child ends
        os.kill(self.pid, 2)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    @property
    def pid(self) -> int:
        """The daemon's pid (under strace, the traced child's)."""
        assert self.proc is not None
        if not self.traced:
            return self.proc.pid
        kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        if len(kids) != 1:
            raise RuntimeError(f"strace {self.proc.pid} has children {kids}, not one")
        return int(kids[0])


def our_argv(path: str, port: int, prefix: list[str] | None = None) -> list[str]:
    return [*(prefix or [sys.executable]), "-m", "dgsm_integrations.mslookup.cli",
            "-s", path, "-d", "-f", "json", "-M", str(port)]


def c_argv(path: str, port: int, prefix: list[str] | None = None) -> list[str]:
    exe = shutil.which("osmo-mslookup-client")
    if exe is None:
        raise RuntimeError("osmo-mslookup-client not found: apt-get install osmo-mslookup-utils")
    return [*(prefix or []), exe, "-s", path, "-d", "-f", "json", "-M", str(port)]


def lean_argv(path: str, port: int, prefix: list[str] | None = None) -> list[str]:
    return [*(prefix or [sys.executable]), str(ROOT / "bench" / "_lean_daemon.py"),
            "-s", path, "-M", str(port)]


def eager_argv(path: str, port: int, prefix: list[str] | None = None) -> list[str]:
    return [*lean_argv(path, port, prefix), "--eager"]


def floor_argv(path: str, port: int, prefix: list[str] | None = None) -> list[str]:
    return [*(prefix or [sys.executable]), str(ROOT / "bench" / "_floor_daemon.py"),
            "-s", path, "-M", str(port)]


#: With --old COMMIT: that commit's package, exported here, runs as daemon "old".
OLD: dict[str, Path] = {}


def old_argv(path: str, port: int, prefix: list[str] | None = None) -> list[str]:
    return our_argv(path, port, prefix)


def export_commit(commit: str, into: Path) -> Path:
    """``git archive`` of the package at ``commit`` (no checkout, no worktree)."""
    into.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "dgsm_integrations"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def argv_of(name: str, path: str, port: int, prefix: list[str] | None = None) -> list[str]:
    """The command line of daemon ``name``; ``prefix`` runs it under strace or cProfile
    (ours and the prototype: the prefix ends with the interpreter)."""
    return {"ours": our_argv, "c": c_argv, "lean": lean_argv,
            "eager": eager_argv, "floor": floor_argv, "old": old_argv}[name](path, port, prefix)


def start_daemon(name: str, path: str, port: int, prefix: list[str] | None = None,
                 traced: bool = False) -> Daemon:
    d = Daemon(name, argv_of(name, path, port, prefix), path, traced=traced)
    d.start(None if name == "c" else our_env(OLD.get(name, ROOT)), READY.get(name))
    return d


def our_env(root: Path = ROOT) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    return env


OUR_READY = "serving mslookup queries on"
READY = {"ours": OUR_READY, "lean": "serving", "eager": "serving", "floor": "serving",
         "old": OUR_READY}


# -- the client and the wire stamps -------------------------------------------------------

def ask(path: str, imsi: int) -> tuple[float, int, int, dict[str, Any]]:
    """One query over a new connection: (seconds, wall ns at start, wall ns at the last
    result, the last result)."""
    w0 = time.time_ns()
    t0 = time.perf_counter()
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(LOOKUP_TIMEOUT)
        s.connect(path)
        s.send(f"gsup.hlr.{imsi}.imsi".encode())
        while True:
            packet = s.recv(4096)
            if not packet:
                raise RuntimeError(f"{path}: connection closed before the last result")
            result: dict[str, Any] = json.loads(packet)
            if result.get("last") or result.get("result") == "ERROR":
                break
        t1 = time.perf_counter()
        w1 = time.time_ns()
    return t1 - t0, w0, w1, result


def right(result: dict[str, Any], imsi: int) -> bool:
    return (result.get("query") == f"gsup.hlr.{imsi}.imsi" and result.get("result") == "result"
            and result.get("age") == 0 and result.get("last") is True
            and result.get("v4") == [GSUP_AT[0], str(GSUP_AT[1])])


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_IMSI = re.compile(rb"\x0f(\d{15})\x04imsi")


class Sniffer:
    """A passive member of the group on one mDNS port: kernel receive stamps (wall ns) of
    every query and answer, by IMSI. Loopback delivers a multicast datagram to every member
    as it is sent, so the stamp is when it was on the wire."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((GROUP, port))
        mreq = socket.inet_aton(GROUP) + socket.inet_aton("0.0.0.0")
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        self.sock.setblocking(False)
        self.queries: dict[int, list[int]] = {}
        self.answers: dict[int, list[int]] = {}

    def drain(self) -> None:
        while True:
            try:
                data, anc, _flags, _src = self.sock.recvmsg(2048, 64)
            except BlockingIOError:
                return
            stamp = next((struct.unpack("qq", d[:16]) for lvl, typ, d in anc
                          if lvl == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS), None)
            m = _IMSI.search(data)
            if stamp is None or m is None or len(data) < 4:
                continue
            ns = stamp[0] * 1_000_000_000 + stamp[1]
            kind = self.answers if data[2] & 0x80 else self.queries
            kind.setdefault(int(m.group(1)), []).append(ns)

    def close(self) -> None:
        self.sock.close()


@dataclass
class Samples:
    times: list[float] = field(default_factory=list)
    to_query: list[float] = field(default_factory=list)
    hlr: list[float] = field(default_factory=list)
    from_answer: list[float] = field(default_factory=list)
    queries_sent: int = 0
    wrong: int = 0
    unstamped: int = 0
    cpu_s: float = 0.0  # the daemon's CPU time per request
    ctx: float = 0.0  # the daemon's context switches per request


def stages(samples: Samples, sniffer: Sniffer, imsi: int, w0: int, w1: int) -> None:
    sniffer.drain()
    q, a = sniffer.queries.pop(imsi, []), sniffer.answers.pop(imsi, [])
    samples.queries_sent += len(q)
    if not q or not a:
        samples.unstamped += 1
        return
    samples.to_query.append((q[0] - w0) / 1e9)
    samples.hlr.append((a[0] - q[0]) / 1e9)
    samples.from_answer.append((w1 - a[0]) / 1e9)


def run_ab(daemons: dict[str, Daemon], sniffers: dict[str, Sniffer],
           imsis: dict[str, Iterator[int]], n: int, warm: int) -> dict[str, Samples]:
    out = {name: Samples() for name in daemons}
    order = list(daemons)
    cpu0: dict[str, int] = {}
    cs0: dict[str, int] = {}
    for i in range(warm + n):
        if i == warm:
            for name, d in daemons.items():
                cpu0[name], cs0[name] = cpu_ns(d.pid), ctx_switches(d.pid)
        k = i % len(order)  # who goes first rotates: A/B, B/A (A/B/C, B/C/A, C/A/B)
        for name in order[k:] + order[:k]:
            imsi = next(imsis[name])
            elapsed, w0, w1, result = ask(daemons[name].path, imsi)
            if i < warm:
                sniffers[name].drain()
                sniffers[name].queries.clear()
                sniffers[name].answers.clear()
                continue
            s = out[name]
            s.times.append(elapsed)
            s.wrong += not right(result, imsi)
            stages(s, sniffers[name], imsi, w0, w1)
    for name, d in daemons.items():
        out[name].cpu_s = (cpu_ns(d.pid) - cpu0[name]) / 1e9 / n
        out[name].ctx = (ctx_switches(d.pid) - cs0[name]) / n
    return out


# -- the profile (outside the timed run) ---------------------------------------------------

_STRACE_ROW = re.compile(r"^\s*[\d.]+\s+([\d.]+)\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")


def strace_counts(text: str) -> dict[str, tuple[int, float]]:
    """strace -c's table: syscall -> (calls, seconds)."""
    counts: dict[str, tuple[int, float]] = {}
    for line in text.splitlines():
        m = _STRACE_ROW.match(line)
        if m and m.group(3) != "total":
            counts[m.group(3)] = (int(m.group(2)), float(m.group(1)))
    return counts


def syscalls_per_request(name: str, path: str, port: int, imsis: Iterator[int],
                         n: int, tmp: Path) -> dict[str, dict[str, float]]:
    """strace -c -f of a fresh daemon serving ``n`` queries, minus one serving none: calls
    per request. (strace's time column is left out: under ptrace it measured more kernel time
    for the C daemon than for ours, the tracing's cost, not the calls'.)"""
    strace = shutil.which("strace")
    if strace is None:
        return {"calls": {}}
    runs: list[dict[str, tuple[int, float]]] = []
    for k in (0, n):
        out = tmp / f"strace-{name}-{k}.txt"
        prefix = [strace, "-f", "-c", "-o", str(out)]
        d = start_daemon(name, path, port, prefix if name == "c" else
                         [*prefix, sys.executable], traced=True)
        try:
            ask(path, next(imsis))  # both runs: start-up and the first lookup's paths
            for _ in range(k):
                ask(path, next(imsis))
        finally:
            d.stop()
        runs.append(strace_counts(out.read_text()))
    base, full = runs
    names = set(full) | set(base)
    calls = {sc: (full.get(sc, (0, 0.0))[0] - base.get(sc, (0, 0.0))[0]) / n for sc in names}
    return {"calls": {sc: round(v, 2) for sc, v in sorted(calls.items(), key=lambda kv: -kv[1])
                      if v >= 0.05}}


def cprofile_ours(path: str, port: int, imsis: Iterator[int], n: int,
                  tmp: Path) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Our daemon under cProfile serving ``n`` queries, minus a run serving none (start-up,
    imports and the first lookup's paths cancel out), per request."""
    runs: list[dict[Any, Any]] = []
    for k in (0, n):
        out = tmp / f"ours-{k}.prof"
        d = Daemon("ours", our_argv(path, port, [sys.executable, "-m", "cProfile", "-o",
                                                 str(out)]), path)
        d.start(our_env(), OUR_READY)
        try:
            ask(path, next(imsis))
            for _ in range(k):
                ask(path, next(imsis))
        finally:
            d.stop()
        runs.append(pstats.Stats(str(out)).stats)  # type: ignore[attr-defined]
    base, full = runs
    rows: list[dict[str, Any]] = []
    buckets: dict[str, float] = {}
    for key, (_cc, ncalls, tottime, cumtime, _callers) in full.items():
        b = base.get(key, (0, 0, 0.0, 0.0, None))
        filename, line, func = key
        calls = (ncalls - b[1]) / n
        if calls <= 0:
            continue
        own = (tottime - b[2]) / n * 1e6
        bucket = bucket_of(filename, func)
        buckets[bucket] = buckets.get(bucket, 0.0) + own
        rows.append({"function": f"{Path(filename).name}:{line}({func})",
                     "calls_per_req": round(calls, 2), "own_us_per_req": round(own, 1),
                     "cum_us_per_req": round((cumtime - b[3]) / n * 1e6, 1)})
    rows.sort(key=lambda r: -float(r["own_us_per_req"]))
    return rows[:40], {k: round(v, 1) for k, v in sorted(buckets.items(), key=lambda kv: -kv[1])}


#: Where a function's own time goes, by the module that defines it.
_CORE = ("engine.py", "wire.py", "query.py", "selection.py", "model.py", "pacing.py", "enum.py")
_GLUE = ("aio.py", "driver.py", "cli.py", "_listen.py", "_ratelimit.py", "transport.py")
_ASYNCIO = ("base_events.py", "events.py", "tasks.py", "futures.py", "selector_events.py",
            "selectors.py", "locks.py", "timeouts.py", "coroutines.py", "base_futures.py",
            "base_tasks.py", "queues.py", "mixins.py")
_SYSCALLS = ("sendto", "send", "recv", "recvmsg", "recvfrom", "_accept", "close",
             "getsockname", "register", "unregister", "modify", "setblocking")


def bucket_of(filename: str, func: str) -> str:
    """A cProfile row's bucket: the sans-I/O core, our asyncio glue (resolver, CLI,
    listener), asyncio itself, system calls (socket and epoll methods), waiting in epoll, or
    the rest. cProfile times are wall-clock: a row with one call per request can carry a
    preemption (a woken HLR or client taking the CPU), so read buckets, not single rows."""
    name = Path(filename).name
    if filename == "~" and "'poll' of 'select.epoll'" in func:
        return "epoll_wait (mostly idle: waiting for the client or the HLR)"
    if name in _CORE:
        return "core (wire, query, selection, pacing, model)"
    if name in _GLUE:
        return "glue (aio, cli, _listen)"
    if name in _ASYNCIO or "_asyncio" in func or "contextvars" in func:
        return "asyncio (loop, tasks, futures, handles, selectors)"
    if filename == "~" and any(f"'{sc}'" in func for sc in _SYSCALLS):
        return "system calls (socket, epoll)"
    return "other (builtins, random, ...)"


def lean_stages(name: str, path: str, port: int, imsis: Iterator[int],
                n: int) -> dict[str, Any]:
    """The prototype with ``--stages``: µs per request in each of its steps, measured inside
    it (a few perf_counter_ns calls per step; no profiler)."""
    d = Daemon(name, [*argv_of(name, path, port), "--stages"], path)
    d.start(our_env(), READY["lean"])
    try:
        ask(path, next(imsis))
        for _ in range(n):
            ask(path, next(imsis))
    finally:
        d.stop()
    line = next((x for x in reversed(d.stderr) if x.startswith("stages ")), None)
    if line is None:
        raise RuntimeError(f"the prototype printed no stages: {d.stderr[-5:]}")
    data = json.loads(line.removeprefix("stages "))
    reqs = data["requests"]
    per = {k: round(v / reqs / 1000, 1) for k, v in data["ns"].items()}
    return {"wakeups_per_request": round(data["wakeups"] / reqs, 2),
            "eager_hits": round(data["eager_hits"] / reqs, 3),
            "us_per_request": dict(sorted(per.items(), key=lambda kv: -kv[1]))}


# -- main ---------------------------------------------------------------------------------

def main_bench(quick: bool, profile: bool, lean: bool, old: str | None) -> int:
    n = 100 if quick else 500
    warm = 20 if quick else 50
    n_prof = 100 if quick else 300
    names = ["ours", "c", *(["lean", "eager", "floor"] if lean else []),
             *(["old"] if old else [])]
    total = (warm + n) + (3 * n_prof + 4 if profile else 0)
    with tempfile.TemporaryDirectory(prefix="dgsm-daemon-") as tmpdir, \
            contextlib.ExitStack() as stack:
        tmp = Path(tmpdir)
        if old:
            OLD["old"] = export_commit(old, tmp / "old")
            LABELS["old"] = f"dgsm-mslookup -d at {old}"
        pools = {name: [IMSI_BASE + k * 1_000_000 + i for i in range(total + 1)]
                 for k, name in enumerate(names)}
        for name in names:
            hlr = stack.enter_context(QuietOsmoHlr(
                tmp / f"hlr-{name}", bind_ip=HLR_IPS[name], mdns_port=PORTS[name],
                services={"gsup.hlr": GSUP_AT}))
            provision(hlr, pools[name])
        imsis = {name: iter(pool[1:]) for name, pool in pools.items()}  # [0]: the template
        paths = {name: str(tmp / f"{name}.sock") for name in names}
        sniffers = {name: Sniffer(PORTS[name]) for name in names}
        for sniffer in sniffers.values():
            stack.callback(sniffer.close)
        daemons: dict[str, Daemon] = {}
        for name in names:
            daemons[name] = start_daemon(name, paths[name], PORTS[name])
            stack.callback(daemons[name].stop)
        load0 = os.getloadavg()
        samples = run_ab(daemons, sniffers, imsis, n, warm)
        load1 = os.getloadavg()
        for d in daemons.values():
            d.stop()
        prof: dict[str, Any] = {}
        if profile:
            prof["syscalls_per_request"] = {
                name: syscalls_per_request(name, paths[name] + ".st", PORTS[name],
                                           imsis[name], n_prof, tmp) for name in names}
            top, buckets = cprofile_ours(paths["ours"] + ".prof", PORTS["ours"],
                                         imsis["ours"], n_prof, tmp)
            prof["cprofile_ours"], prof["cprofile_ours_buckets"] = top, buckets
            if lean:
                prof["lean_stages"] = {name: lean_stages(name, paths[name] + ".stg",
                                                         PORTS[name], imsis[name], n_prof)
                                       for name in ("lean", "eager")}

    s = {name: summary(v.times) for name, v in samples.items()}
    ratio = s["ours"]["median_ms"] / s["c"]["median_ms"]
    wrong = sum(v.wrong for v in samples.values())
    ok = ratio <= TARGET_RATIO and wrong == 0
    stage_med = {name: {k: round(statistics.median(getattr(v, k)) * 1e6, 1) if getattr(v, k)
                        else None for k in ("to_query", "hlr", "from_answer")}
                 for name, v in samples.items()}
    rows = [[LABELS[name], str(int(s[name]["n"])), f"{s[name]['median_ms']:.3f}",
             f"{s[name]['p90_ms']:.3f}", f"{s[name]['p99_ms']:.3f}",
             f"{s[name]['max_ms']:.3f}", f"{samples[name].cpu_s * 1e6:.0f}",
             f"{samples[name].ctx:.1f}"]
            for name in names]
    print("daemon mode, age-0 gsup.hlr lookups, one connection per query, interleaved; "
          f"each daemon its own real OsmoHLR ({os.cpu_count()} cores, load "
          f"{load0[0]:.2f} -> {load1[0]:.2f})")
    print(table(["daemon", "n", "median ms", "p90 ms", "p99 ms", "max ms", "CPU us/req",
                 "ctxsw/req"], rows))
    srows = [[LABELS[name], *(f"{stage_med[name][k]:.0f}" if stage_med[name][k] is not None
                              else "-" for k in ("to_query", "hlr", "from_answer"))]
             for name in names]
    print("medians of the stages, from the wire stamps (us):")
    print(table(["daemon", "client -> query sent", "HLR", "answer -> client"], srows))
    print("wrong results: " + ", ".join(f"{n}: {v.wrong}" for n, v in samples.items())
          + "; queries on the wire per lookup: "
          + ", ".join(f"{n}: {v.queries_sent / len(v.times):.2f}" for n, v in samples.items()))
    if profile:
        print("system calls per request (strace -c -f, a run minus an idle one):")
        for name in names:
            sc = prof["syscalls_per_request"][name]
            print(f"  {LABELS[name]}: {sum(sc['calls'].values()):.1f} calls = "
                  + ", ".join(f"{k} {v:g}" for k, v in sc["calls"].items()))
        print("ours under cProfile, own time per request by bucket (us, inflated by the "
              "profiler, most where calls are many and small): " + ", ".join(
                  f"{k} {v:.0f}" for k, v in prof["cprofile_ours_buckets"].items()))
        print("ours under cProfile, by own time per request:")
        print(table(["function", "calls/req", "own us/req", "cum us/req"],
                    [[r["function"][:70], f"{r['calls_per_req']:g}", f"{r['own_us_per_req']:.1f}",
                      f"{r['cum_us_per_req']:.1f}"] for r in prof["cprofile_ours"][:30]]))
    if profile and lean:
        for name, ls in prof["lean_stages"].items():
            print(f"{LABELS[name]}, steps in us per request ({ls['wakeups_per_request']} "
                  f"wake-ups, query there at accept: {ls['eager_hits']:.0%}): "
                  + ", ".join(f"{k} {v:g}" for k, v in ls["us_per_request"].items()))
    if lean:
        print("floor / C median "
              f"{s['floor']['median_ms'] / s['c']['median_ms']:.2f}; prototype + recv after "
              f"accept / C median {s['eager']['median_ms'] / s['c']['median_ms']:.2f}")
        print(f"prototype / C median {s['lean']['median_ms'] / s['c']['median_ms']:.2f} "
              "(not a target: what a driver without asyncio would cost)")
    print(f"ratio ours / C median {ratio:.2f} (target <= {TARGET_RATIO}): "
          f"{'PASS' if ok else 'FAIL'}")
    print(json.dumps({
        "bench": "daemon", "quick": quick, "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg": [round(load0[0], 2), round(load1[0], 2)],
        **{name: s[name] for name in names}, "ratio": round(ratio, 3),
        **({"ratio_lean": round(s["lean"]["median_ms"] / s["c"]["median_ms"], 3),
            "ratio_eager": round(s["eager"]["median_ms"] / s["c"]["median_ms"], 3),
            "ratio_floor": round(s["floor"]["median_ms"] / s["c"]["median_ms"], 3)}
           if lean else {}),
        "stages_us": stage_med,
        "cpu_us_per_request": {k: round(v.cpu_s * 1e6, 1) for k, v in samples.items()},
        "ctx_switches_per_request": {k: round(v.ctx, 2) for k, v in samples.items()},
        "wrong": {k: v.wrong for k, v in samples.items()},
        "unstamped": {k: v.unstamped for k, v in samples.items()},
        "queries_per_lookup": {k: round(v.queries_sent / len(v.times), 3)
                               for k, v in samples.items()},
        **prof,
        "target": {"ratio": TARGET_RATIO}, "pass": ok,
    }))
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run (CI smoke test)")
    parser.add_argument("--profile", action="store_true",
                        help="also count system calls per request (strace) and profile ours "
                        "(cProfile), outside the timed run")
    parser.add_argument("--old", metavar="COMMIT",
                        help="also run dgsm-mslookup -d from COMMIT (git archive) in the same "
                        "rotation: today's against an earlier one's, same run")
    parser.add_argument("--lean", action="store_true",
                        help="also run bench/_lean_daemon.py, a prototype driver without "
                        "asyncio, in the same rotation (not a target)")
    args = parser.parse_args()
    enter_private_netns(__file__)
    sys.exit(main_bench(args.quick, args.profile, args.lean, args.old))


if __name__ == "__main__":
    main()
