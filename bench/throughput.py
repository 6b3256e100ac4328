"""Throughput: 2,000 concurrent lookups of distinct MSISDNs, three sites answering every one.

Three responders (ours, each in its own process, each answering from its own address
127.0.0.11-13, as three sites would) answer every query, with different ages: for MSISDN m,
site k answers age ``1 + 5 * ((m + k) % 3)``, so the youngest site differs from one MSISDN to
the next. One ``AsyncResolver`` (min_delay 1 s, the default re-sends) runs all lookups at
once with ``asyncio.gather`` and must return, for every one, the youngest site's answer.

Figures: wall time of the whole batch (target: at most min_delay + 0.5 s), lookups/s, the
resolver's CPU time, per-lookup elapsed, peak RSS of this process (ru_maxrss) against the
baseline taken just before the lookups start, the resolver's counters and the UDP receive
buffer drops in the namespace. A last round without re-sends (``resend=0``) shows what the
re-sends cost.

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
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import MARK, enter_private_netns, only_loopback  # noqa: E402

from dgsm_integrations.mslookup import (  # noqa: E402
    AsyncResolver,
    Endpoint,
    MulticastConfig,
    Query,
    Record,
    Responder,
    Result,
    WireError,
)
from dgsm_integrations.mslookup.transport import open_socket  # noqa: E402
from dgsm_integrations.mslookup.wire import decode_query, encode_answer, is_answer  # noqa: E402

LO = "127.0.0.1"
SITES = 3
MIN_DELAY = 1.0
TARGET_SLACK = 0.5  # wall time target: min_delay + this
LIFETIME = 600.0  # no child outlives this, whatever happens to the parent


# -- private network namespace ------------------------------------------------------------

# -- the sites ----------------------------------------------------------------------------

def site_address(k: int) -> str:
    return f"127.0.0.{11 + k}"


_RECORDS = [[Record(1 + 5 * i, v4=Endpoint(f"10.23.0.{11 + k}", 5060)) for i in range(SITES)]
            for k in range(SITES)]


def site_record(k: int, msisdn: str) -> Record:
    """What site k answers for an MSISDN: the ages of the three sites are 1, 6 and 11."""
    return _RECORDS[k][(int(msisdn) + k) % SITES]




def youngest_site(msisdn: str) -> int:
    return min(range(SITES), key=lambda k: site_record(k, msisdn).age)


async def serve(k: int) -> None:
    """Be site k, with our Responder, until stdin closes (or LIFETIME passes)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def wait_stdin() -> None:
        sys.stdin.buffer.read()
        loop.call_soon_threadsafe(stop.set)

    def handler(query: Query) -> Record | None:
        return site_record(k, query.id)

    threading.Thread(target=wait_stdin, daemon=True).start()
    responder = Responder(interface=LO, source=site_address(k), handler=handler)
    async with responder:
        print("ready", flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), LIFETIME)
    print(json.dumps({"queries": responder.queries, "answered": responder.answered}),
          flush=True)


def serve_fast(k: int) -> None:
    """Be site k, answering from a cache of encoded answers (about as fast as OsmoHLR).

    The first query for a name is decoded and answered with the same encoder the
    Responder uses; its re-sent copies get the cached bytes with the query id patched in,
    so the site costs a few microseconds per query and the resolver is what is measured.
    """
    stop = threading.Event()

    def wait_stdin() -> None:
        sys.stdin.buffer.read()
        stop.set()

    threading.Thread(target=wait_stdin, daemon=True).start()
    config = MulticastConfig(interface=LO)
    rx = open_socket(config)
    tx = open_socket(config, bind_source=site_address(k))
    rx.setblocking(True)
    rx.settimeout(0.2)
    cache: dict[bytes, bytes] = {}
    queries = answered = 0
    deadline = time.monotonic() + LIFETIME
    print("ready", flush=True)
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                data = rx.recv(2048)
            except TimeoutError:
                continue
            if is_answer(data) is not False:
                continue
            tail = cache.get(data[2:])
            if tail is None:
                try:
                    _, query = decode_query(data)
                except WireError:
                    continue
                rec = site_record(k, query.id)
                tail = cache[data[2:]] = encode_answer(query, 0, rec.age, rec.v4)[2:]
            queries += 1
            try:
                tx.sendto(data[:2] + tail, config.destination())
                answered += 1
            except OSError:
                pass
    finally:
        rx.close()
        tx.close()
    print(json.dumps({"queries": queries, "answered": answered}), flush=True)


class SiteProcess:
    """One site in a child process (stops when we close its stdin)."""

    def __init__(self, k: int, kind: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", kind, str(k)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"site {k} did not start: {line!r}")

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


# -- figures ------------------------------------------------------------------------------

def udp_counters() -> dict[str, int]:
    """This namespace's UDP counters (/proc/net/snmp is per network namespace)."""
    with open("/proc/net/snmp", encoding="ascii") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return dict(zip(rows[0][1:], map(int, rows[1][1:]), strict=True))


def own_socket_drops() -> int:
    """Datagrams the kernel dropped for this process's UDP sockets (full receive buffer)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[len("socket:["):-1])
    drops = 0
    with open("/proc/net/udp", encoding="ascii") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[9] in inodes:
                drops += int(fields[12])
    return drops


def maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) if i else c.ljust(w)
                      for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
    return "\n".join(out)


def correct(result: Result) -> bool:
    k = youngest_site(result.query.id)
    want = site_record(k, result.query.id)
    return (result.found and result.age == want.age and result.v4 == want.v4
            and result.site == site_address(k))


# -- the measurement ----------------------------------------------------------------------

#: (sites, resend): our Responder with the default re-sends is the configuration the targets
#: are for; without re-sends, and with fast sites, show where the time goes.
CONFIGS = {"responder": "sites: our Responder", "fast": "sites: cached answers"}


async def one_round(kind: str, resend: int, first: int, n: int) -> dict[str, Any]:
    queries = [f"sip.voice.{first + i}.msisdn" for i in range(n)]
    sites = [SiteProcess(k, kind) for k in range(SITES)]
    try:
        async with AsyncResolver(interface=LO, min_delay=MIN_DELAY, resend=resend) as resolver:
            warm = await resolver.resolve(f"sip.voice.{first - 1}.msisdn")  # code paths
            if not correct(warm):
                raise RuntimeError(f"warm-up lookup wrong: {warm.describe()}")
            udp0 = udp_counters()
            rss0 = maxrss_kib()
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            results = await asyncio.gather(*(resolver.resolve(q) for q in queries))
            wall = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            rss1 = maxrss_kib()
            stats = resolver.stats.as_dict()
            await asyncio.sleep(0.3)  # late answers land (and are counted) before we close
            udp1 = udp_counters()
            resolver_drops = own_socket_drops()
    finally:
        site_counters = [s.stop() for s in sites]
    elapsed = [r.elapsed for r in results]
    ok = sum(correct(r) for r in results)
    wrong = [r.describe() for r in results if not correct(r)]
    target = MIN_DELAY + TARGET_SLACK
    return {
        "sites": kind, "resend": resend, "lookups": n, "correct": ok,
        "not_found": sum(not r.found for r in results), "wrong_examples": wrong[:3],
        "wall_s": round(wall, 4), "lookups_per_s": round(n / wall, 1), "cpu_s": round(cpu, 3),
        "elapsed_p50_s": round(statistics.median(elapsed), 4),
        "elapsed_max_s": round(max(elapsed), 4),
        "rss_baseline_kib": rss0, "rss_peak_kib": rss1,
        "udp_rcvbuf_errors": udp1["RcvbufErrors"] - udp0["RcvbufErrors"],
        "resolver_socket_drops": resolver_drops,
        "stats": stats, "site_counters": site_counters,
        "pass": ok == n and wall <= target,
    }


def main_bench(quick: bool, n: int) -> int:
    repeat = 1 if quick else 3
    plan = ([("responder", 4)] * repeat + [("responder", 0)] * max(1, repeat - 1)
            + [("fast", 4)] * max(1, repeat - 1))
    rounds: list[dict[str, Any]] = []
    for i, (kind, resend) in enumerate(plan):
        r = asyncio.run(one_round(kind, resend, 40000000000 + i * 100000, n))
        if i == 0:
            print(f"baseline RSS before the lookups: {r['rss_baseline_kib'] / 1024:.1f} MiB "
                  "(ru_maxrss of this process, resolver open; sites in their own processes)",
                  flush=True)
        rounds.append(r)

    target = MIN_DELAY + TARGET_SLACK
    rows = []
    for r in rounds:
        site_q = "/".join(str(c.get("queries", "?")) for c in r["site_counters"])
        rows.append([f"{CONFIGS[r['sites']]}, resend={r['resend']}",
                     f"{r['correct']}/{r['lookups']}", str(r["not_found"]),
                     f"{r['wall_s']:.3f}", f"{r['lookups_per_s']:.0f}", f"{r['cpu_s']:.2f}",
                     f"{r['elapsed_max_s']:.3f}", f"{r['rss_peak_kib'] / 1024:.1f}",
                     str(r["stats"]["queries_sent"]), site_q,
                     str(r["stats"]["answers_accepted"]), str(r["resolver_socket_drops"]),
                     str(r["udp_rcvbuf_errors"]),
                     "PASS" if r["pass"] else "FAIL"])
    print(f"{n} concurrent lookups of distinct MSISDNs, {SITES} sites answering each "
          f"(ages 1/6/11), min_delay {MIN_DELAY:.1f} s ({os.cpu_count()} cores)")
    print(table(["round", "youngest won", "not found", "wall s", "lookups/s", "cpu s",
                 "max elapsed s", "peak RSS MiB", "queries sent", "received by sites",
                 "answers taken", "resolver drops", "all drops", f"<= {target:.1f} s, all ok"],
                rows))
    print("(drops: datagrams the kernel discarded because a receive buffer was full; "
          "'resolver drops' at the resolver's socket, 'all drops' at every socket)")
    main_rounds = [r for r in rounds if r["sites"] == "responder" and r["resend"] == 4]
    all_correct = all(r["correct"] == r["lookups"] for r in main_rounds)
    worst_wall = max(r["wall_s"] for r in main_rounds)
    ok_wall = worst_wall <= target
    base, peak = rounds[0]["rss_baseline_kib"], rounds[0]["rss_peak_kib"]
    print(f"RSS: baseline {base / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB "
          f"(+{(peak - base) / 1024:.1f} MiB for {n} lookups in flight); peak over all rounds "
          f"{max(r['rss_peak_kib'] for r in rounds) / 1024:.1f} MiB")
    print("targets, default settings with our Responder as the sites:")
    print(f"  all correct (youngest wins for every one): {'PASS' if all_correct else 'FAIL'}")
    print(f"  worst wall time {worst_wall:.3f} s (target <= {target:.1f} s): "
          f"{'PASS' if ok_wall else 'FAIL'}")
    print(json.dumps({
        "bench": "throughput", "quick": quick, "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "lookups": n, "sites": SITES,
        "min_delay_s": MIN_DELAY, "rounds": rounds,
        "rss_baseline_kib": base, "rss_peak_kib": peak,
        "targets": {"wall_s": target, "all_correct": True},
        "pass": {"all_correct": all_correct, "wall": ok_wall},
    }))
    return 0 if all_correct and ok_wall else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run (CI smoke test)")
    parser.add_argument("--lookups", type=int, default=2000, help="concurrent lookups")
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "SITE"),
                        help=argparse.SUPPRESS)  # internal: one site
    args = parser.parse_args()
    if args.serve is not None:
        if os.environ.get(MARK) != Path(__file__).name or not only_loopback():
            sys.exit("bench: --serve runs only inside the benchmark's own namespace")
        kind, k = args.serve[0], int(args.serve[1])
        if kind == "fast":
            serve_fast(k)
        else:
            asyncio.run(serve(k))
        return
    enter_private_netns(__file__)
    sys.exit(main_bench(args.quick, args.lookups))


if __name__ == "__main__":
    main()
