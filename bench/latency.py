"""Latency of an age-0 lookup: the in-process resolver vs one osmo-mslookup-client per lookup.

Both ask the same responder (ours, in its own process, on loopback), which answers every
query with age 0, so a lookup ends as soon as the answer arrives:

- in-process: ``await AsyncResolver.resolve("sip.voice.<msisdn>.msisdn")`` in a loop, one
  lookup at a time, a distinct MSISDN each (nothing cached, no flight shared); also the
  blocking ``Resolver`` (one thread hop) and the asyncio one asking ``gsup.hlr.<imsi>.imsi``,
  the exact query the C client asks;
- ``osmo-mslookup-client -f json -t 1000 -T 1000 gsup.hlr.<imsi>.imsi``: wall time from
  spawn to exit, a distinct IMSI each run.

Targets: in-process median at most 1 ms, and at least 4x faster than the C client's median.

Runs inside a fresh private network namespace (re-executes itself under ``unshare -rn``, with
lo up and 224.0.0.0/4 routed to it), so no packet leaves the machine. ``--quick`` for a short
run. The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import MARK, enter_private_netns, only_loopback, pct  # noqa: E402

from dgsm_integrations.mslookup import (  # noqa: E402
    AsyncResolver,
    Record,
    Resolver,
    Responder,
    Result,
)

LO = "127.0.0.1"
SITE = "127.0.0.11"  # the responder answers from here
ANSWER = "0,10.23.0.1:5060"  # age 0: a lookup ends at the first answer
TARGET_MEDIAN_MS = 1.0
TARGET_RATIO = 4.0
LIFETIME = 600.0  # no child outlives this, whatever happens to the parent


# -- private network namespace ------------------------------------------------------------

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


# -- the responder, in its own process ----------------------------------------------------

async def serve(answer: str, source: str) -> None:
    """Answer every query with ``answer`` until stdin closes (or LIFETIME passes)."""
    record = Record.parse(answer)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def wait_stdin() -> None:
        sys.stdin.buffer.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait_stdin, daemon=True).start()
    responder = Responder(interface=LO, source=source, handler=lambda _q: record)
    async with responder:
        print("ready", flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), LIFETIME)
    print(json.dumps({"queries": responder.queries, "answered": responder.answered}),
          flush=True)


class ResponderProcess:
    """Our Responder in a child process (stops when we close its stdin)."""

    def __init__(self, answer: str, source: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", answer, source],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"responder did not start: {line!r}")

    def stop(self) -> dict[str, int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        try:
            out = self.proc.stdout.read()
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return {}
        counters: dict[str, int] = json.loads(out.strip().splitlines()[-1])
        return counters


# -- the measurements ---------------------------------------------------------------------

def check(result: Result) -> None:
    if not (result.found and result.age == 0 and result.site == SITE):
        raise RuntimeError(f"wrong result: {result.describe()}")


async def bench_async(warm: list[str], queries: list[str]) -> list[float]:
    times: list[float] = []
    async with AsyncResolver(interface=LO) as resolver:
        for q in warm:  # warm-up: socket, first-call paths
            check(await resolver.resolve(q))
        for q in queries:
            t0 = time.perf_counter()
            result = await resolver.resolve(q)
            times.append(time.perf_counter() - t0)
            check(result)
        if resolver.stats.coalesced:
            raise RuntimeError("lookups were coalesced: the MSISDNs were not distinct")
    return times


def bench_blocking(warm: list[str], queries: list[str]) -> list[float]:
    times: list[float] = []
    with Resolver(interface=LO) as resolver:
        for q in warm:
            check(resolver.resolve(q))
        for q in queries:
            t0 = time.perf_counter()
            result = resolver.resolve(q)
            times.append(time.perf_counter() - t0)
            check(result)
    return times


def bench_c_client(queries: list[str]) -> tuple[list[float], int]:
    """Wall time spawn-to-exit of osmo-mslookup-client, and how many printed a wrong result."""
    exe = shutil.which("osmo-mslookup-client")
    if exe is None:
        raise RuntimeError("osmo-mslookup-client not found: apt-get install osmo-mslookup-utils")
    times: list[float] = []
    wrong = 0
    for q in queries:
        t0 = time.perf_counter()
        proc = subprocess.run([exe, "-f", "json", "-t", "1000", "-T", "1000", q],
                              capture_output=True, text=True, timeout=10, check=False)
        times.append(time.perf_counter() - t0)
        try:
            out = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            out = {}
        if not (out.get("result") == "result" and out.get("age") == 0
                and out.get("v4") == ["10.23.0.1", "5060"]):
            wrong += 1
    return times, wrong


def main_bench(quick: bool) -> int:
    n_ours = 100 if quick else 500
    n_c = 15 if quick else 50
    def msisdns(first: int, n: int) -> list[str]:
        return [f"sip.voice.{first + i}.msisdn" for i in range(n)]

    def imsis(first: int, n: int) -> list[str]:
        return [f"gsup.hlr.{first + i}.imsi" for i in range(n)]

    responder = ResponderProcess(ANSWER, SITE)
    try:
        ours = asyncio.run(bench_async(msisdns(49100000000, 20), msisdns(49300000000, n_ours)))
        ours_imsi = asyncio.run(bench_async(imsis(901700000000000, 20),
                                            imsis(901700000100000, n_ours)))
        blocking = bench_blocking(msisdns(49200000000, 20), msisdns(49400000000, n_ours))
        bench_c_client(imsis(901700000300000, 3))  # warm-up: page cache
        c_times, c_wrong = bench_c_client(imsis(901700000200000, n_c))
    finally:
        counters = responder.stop()

    s_ours, s_imsi, s_block = summary(ours), summary(ours_imsi), summary(blocking)
    s_c = summary(c_times)
    ratio = s_c["median_ms"] / s_ours["median_ms"]
    ok_median = s_ours["median_ms"] <= TARGET_MEDIAN_MS
    ok_ratio = ratio >= TARGET_RATIO and c_wrong == 0

    rows = []
    for label, s in (("AsyncResolver, sip.voice MSISDN", s_ours),
                     ("AsyncResolver, gsup.hlr IMSI", s_imsi),
                     ("blocking Resolver, sip.voice MSISDN", s_block),
                     ("osmo-mslookup-client per lookup", s_c)):
        rows.append([label, str(int(s["n"])), f"{s['median_ms']:.3f}", f"{s['p90_ms']:.3f}",
                     f"{s['p99_ms']:.3f}", f"{s['max_ms']:.3f}"])
    print("mslookup latency, age-0 answer, responder in its own process on lo "
          f"({os.cpu_count()} cores)")
    print(table(["client", "n", "median ms", "p90 ms", "p99 ms", "max ms"], rows))
    print(f"osmo-mslookup-client wrong/missing results: {c_wrong}; responder {counters}")
    print(f"median in-process {s_ours['median_ms']:.3f} ms "
          f"(target <= {TARGET_MEDIAN_MS} ms): {'PASS' if ok_median else 'FAIL'}")
    print(f"ratio C client / in-process median {ratio:.1f}x "
          f"(target >= {TARGET_RATIO:.0f}x): {'PASS' if ok_ratio else 'FAIL'}")
    print(json.dumps({
        "bench": "latency", "quick": quick, "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "async_msisdn": s_ours, "async_imsi": s_imsi, "blocking_msisdn": s_block,
        "osmo_mslookup_client": s_c, "osmo_wrong": c_wrong, "responder": counters,
        "ratio": round(ratio, 2),
        "targets": {"median_ms": TARGET_MEDIAN_MS, "ratio": TARGET_RATIO},
        "pass": {"median": ok_median, "ratio": ok_ratio},
    }))
    return 0 if ok_median and ok_ratio else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run (CI smoke test)")
    parser.add_argument("--serve", nargs=2, metavar=("ANSWER", "SOURCE"),
                        help=argparse.SUPPRESS)  # internal: the responder process
    args = parser.parse_args()
    if args.serve:
        if os.environ.get(MARK) != Path(__file__).name or not only_loopback():
            sys.exit("bench: --serve runs only inside the benchmark's own namespace")
        asyncio.run(serve(*args.serve))
        return
    enter_private_netns(__file__)
    sys.exit(main_bench(args.quick))


if __name__ == "__main__":
    main()
