"""Benchmark the Asterisk integration; prints figures and ratios measured in the same run.

1. The local AGI script as an operator installs it (``pip install .`` into a fresh venv; the
   ``dgsm-agi`` console script pip writes): wall time from spawn to exit for one call with an
   age-0 answer (target: at most 80 ms), beside a bare ``python -c pass`` of the same venv.
2. The FastAGI server (its own process, as deployed): the time each call adds beyond its
   lookup, from the server's per-call log line (``added=``), at 200 concurrent sessions
   (target: p99 at most 5 ms).

Runs inside a private network namespace (re-executes itself under ``unshare -rn`` with lo up
and 224.0.0.0/4 routed to it) so no packet leaves the machine. ``--quick`` for a short run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import MARK, cpu_seconds, enter_private_netns, pct  # noqa: E402

from dgsm_integrations.lab.agi_peer import converse, env_block  # noqa: E402
from dgsm_integrations.mslookup import Record, Responder  # noqa: E402

LO = "127.0.0.1"
MDNS_PORT = 42738
FASTAGI_PORT = 42737
PROFILE = os.environ.get("DGSM_BENCH_PROFILE", "").split()


async def spawn_wall(argv: list[str], env: dict[str, str], talk: bool) -> float:
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    if talk:
        ex = await converse(proc.stdout, proc.stdin, env_block(["1001"]), timeout=10)
        assert ex.variables.get("DGSM_RESULT") == "found", ex
    else:
        proc.stdin.close()
    await asyncio.wait_for(proc.wait(), 10)
    return time.perf_counter() - t0


OPERATOR_VENV = ROOT / ".bench-operator-venv"


def operator_venv() -> Path:
    """Install the project as an operator would: a venv, a plain (non-editable) ``pip install``.

    Editable installs add import-hook finders, and a PYTHONPATH checkout compiles every module
    on each start when bytecode writing is off; neither is how a deployed script runs. Done
    before entering the private namespace, which has no route to the package index.
    """
    venv = OPERATOR_VENV
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                    "--disable-pip-version-check", str(ROOT)], check=True, timeout=600)
    return venv


async def bench_script(runs: int, tmp: Path) -> tuple[list[float], list[float]]:
    venv = OPERATOR_VENV
    conf = tmp / "asterisk.conf"
    conf.write_text(f"interface = {LO}\nmdns-port = {MDNS_PORT}\nmin-delay = 1.0\n"
                    "allow-loopback = yes\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    env["DGSM_AGI_CONFIG"] = str(conf)
    script = [str(venv / "bin" / "dgsm-agi"), "1001"]  # the console script pip wrote
    bare = [str(venv / "bin" / "python"), "-c", "pass"]
    table = {"sip.voice.1001.msisdn": Record.parse("0,127.0.0.3:5060")}
    async with Responder(table, interface=LO, port=MDNS_PORT, source="127.0.0.11"):
        for _ in range(3):  # warm the page cache
            await spawn_wall(script, env, True)
            await spawn_wall(bare, env, False)
        agi: list[float] = []
        base: list[float] = []
        for _ in range(runs):  # interleaved, so both see the same machine state
            agi.append(await spawn_wall(script, env, True))
            base.append(await spawn_wall(bare, env, False))
    return agi, base


async def one_call(i: int, start_after: float = 0.0) -> dict[str, str]:
    """Play Asterisk for one FastAGI call, as fast as a C peer would answer.

    The full peer (``dgsm_integrations.lab.agi_peer``) checks every line; here each command
    line gets ``200 result=1`` at once, so the figure is the server's, not a slow Python peer's.
    """
    if start_after:
        await asyncio.sleep(start_after)  # load shaping (arrival time), not synchronisation
    reader, writer = await asyncio.open_connection(LO, FASTAGI_PORT)
    variables: dict[str, str] = {}
    try:
        writer.write(env_block([str(3000 + i)], network_script="dgsm?service=sip.voice"))
        while True:
            line = await asyncio.wait_for(reader.readline(), 20)
            if not line:
                return variables
            if line.startswith(b"SET VARIABLE "):
                name, _, value = line[13:].decode().rstrip("\n").partition(" ")
                variables[name] = value.strip('"')
            writer.write(b"200 result=1\n")
    finally:
        writer.close()


async def start_responder(sessions: int) -> asyncio.subprocess.Process:
    """The villages' answers, from a process of their own (``dgsm-mslookup serve``)."""
    answers = [f"--answer=sip.voice.{3000 + i}.msisdn={1 + i % 5},127.0.0.5:5060"
               for i in range(sessions)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dgsm_integrations.mslookup", "serve", "--interface", LO,
        "--mdns-port", str(MDNS_PORT), "--source", "127.0.0.11", *answers,
        stdout=asyncio.subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 10)
    assert line.startswith(b"answering"), line
    return proc


async def bench_fastagi(rounds: int, sessions: int, spread: float,
                        min_delay: float) -> tuple[list[float], list[float], int, float]:
    responder = await start_responder(sessions)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *PROFILE, "-m", "dgsm_integrations.asterisk.fastagi",
            "--interface", LO, "--mdns-port", str(MDNS_PORT), "--listen-port", str(FASTAGI_PORT),
            "--min-delay", str(min_delay), "--log-level", "info", "--allow-loopback", "yes",
            stderr=asyncio.subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert proc.stderr is not None
        added: list[float] = []
        lookup: list[float] = []
        found = 0
        try:
            while b"listening on" not in await asyncio.wait_for(proc.stderr.readline(), 10):
                pass
            await one_call(0)  # warm-up
            await asyncio.wait_for(proc.stderr.readline(), 10)
            cpu0 = cpu_seconds(proc.pid)
            for _ in range(rounds):
                results = await asyncio.gather(*(one_call(i, spread * i / sessions)
                                                 for i in range(sessions)))
                found += sum(r.get("DGSM_RESULT") == "found" for r in results)
                for _ in range(sessions):
                    line = (await asyncio.wait_for(proc.stderr.readline(), 10)).decode()
                    m = re.search(r"lookup=([0-9.]+)ms total=[0-9.]+ms added=([0-9.]+)ms", line)
                    assert m, line
                    lookup.append(float(m.group(1)))
                    added.append(float(m.group(2)))
            cpu = cpu_seconds(proc.pid) - cpu0
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 15)
    finally:
        responder.terminate()
        await asyncio.wait_for(responder.wait(), 15)
    return added, lookup, found, cpu / max(1, len(added))


async def main_async(args: argparse.Namespace) -> None:
    import tempfile

    runs = 10 if args.quick else 40
    rounds = 1 if args.quick else 5
    with tempfile.TemporaryDirectory() as tmp:
        agi, base = await bench_script(runs, Path(tmp))
    a50, b50 = statistics.median(agi) * 1000, statistics.median(base) * 1000
    print(f"local AGI script, age-0 answer, {runs} runs (spawn to exit), installed with "
          f"pip into a venv of {sys.executable}:")
    print(f"  dgsm-agi           median {a50:6.1f} ms  p90 {pct(agi, 90) * 1000:6.1f} ms"
          f"  min {min(agi) * 1000:6.1f} ms   (target <= 80 ms)")
    print(f"  python3 -c pass    median {b50:6.1f} ms  p90 {pct(base, 90) * 1000:6.1f} ms"
          f"  min {min(base) * 1000:6.1f} ms")
    print(f"  ratio {a50 / b50:.2f}x, script cost beyond the bare interpreter {a50 - b50:.1f} ms")
    shapes = (
        (0.0, 0.2, "burst: all start at once, all lookups end together"),
        (0.19, 0.2, "arrivals over 190 ms (~1,000 calls/s), all open at once"),
        (0.95, 1.0, "default min-delay 1 s, arrivals over 950 ms (~200 calls/s), all open "
                    "at once"),
    )
    for spread, min_delay, label in shapes:
        added, lookup, found, cpu = await bench_fastagi(rounds, args.sessions, spread,
                                                        min_delay)
        print(f"FastAGI server, {args.sessions} concurrent sessions x {rounds} rounds, {label} "
              f"({found}/{len(added)} found), time added beyond the lookup:")
        print(f"  added    p50 {pct(added, 50):6.2f} ms  p99 {pct(added, 99):6.2f} ms"
              f"  max {max(added):6.2f} ms   (target p99 <= 5 ms)")
        print(f"  lookup   p50 {pct(lookup, 50):6.1f} ms  p99 {pct(lookup, 99):6.1f} ms"
              f"  (min-delay {min_delay * 1000:.0f} ms); added p99 / lookup p50 "
              f"{pct(added, 99) / pct(lookup, 50):.3f}")
        print(f"  server CPU per call {cpu * 1000:.2f} ms (its whole process: lookup, AGI, log)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--sessions", type=int, default=200, help="concurrent FastAGI calls")
    args = parser.parse_args()
    if os.environ.get(MARK) != Path(__file__).name:  # before entering: no index in there
        print(f"installing the project into {OPERATOR_VENV} (as an operator would)")
        operator_venv()
    enter_private_netns(__file__)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
