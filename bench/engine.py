"""The lookup engine alone, on a fake clock: what one lookup costs in CPU and memory when no
socket, kernel or event loop takes its share.

A burst of ``--lookups`` distinct MSISDNs starts at t=0, as in ``osmohlr_burst.py``; three
sites answer every copy that leaves, as OsmoHLR does (echoing its id; age growing by one each
second, so the copies of one site's answer are distinct datagrams once a second passes),
0.5 ms after it left.
The clock advances in 1 ms steps; ``due``, ``receive`` and ``advance`` run exactly as a driver
calls them. Prints CPU per lookup (process time, answers pre-encoded outside the timing) and
the engine's memory per lookup in flight (tracemalloc, peak over the burst, in a second pass:
tracing slows the first).

    python bench/engine.py [--lookups 2000] [--resend 7] [--rounds 3]

The engine imports no I/O, so nothing here touches a socket: no namespace is needed.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dgsm_integrations.mslookup import Endpoint, Query, Result
from dgsm_integrations.mslookup.engine import Engine, Settings
from dgsm_integrations.mslookup.wire import decode_query, encode_answer

SITES = [("198.18.23.11", 30), ("198.18.23.12", 20), ("198.18.23.13", 10)]  # (address, age)
FIRST = 4_000_000


def answers_for(n: int) -> dict[tuple[int, int, int], bytes]:
    """(msisdn, site, second) -> the datagram that site sends in that second."""
    out: dict[tuple[int, int, int], bytes] = {}
    for m in range(FIRST, FIRST + n):
        query = Query.parse(f"sip.voice.{m}.msisdn")
        for k, (addr, age) in enumerate(SITES):
            for second in (0, 1, 2):
                out[m, k, second] = encode_answer(query, 0, age + second,
                                                  v4=Endpoint(addr, 5060))
    return out


def one_round(n: int, resend: int, answers: dict[tuple[int, int, int], bytes],
              trace: bool) -> dict[str, float]:
    engine = Engine(Settings.of(min_delay=1.0, resend=resend), now=0.0)
    results: list[Result] = []
    msisdn_of: dict[bytes, int] = {}
    queries = [Query.parse(f"sip.voice.{m}.msisdn") for m in range(FIRST, FIRST + n)]
    gc.collect()
    if trace:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
    cpu0 = time.process_time()
    for q in queries:
        engine.start(q, 0.0, results.append)
    now, pending = 0.0, []  # (arrival, datagram, source)
    peak = 0
    while len(engine) and now < 10.0:
        for _flight, wire in engine.due(now):
            name = wire[12:-4]
            m = msisdn_of.get(name)
            if m is None:
                m = msisdn_of[name] = int(decode_query(wire)[1].id)
            second = int(now)
            copy_id = wire[:2]  # OsmoHLR echoes each copy's id (the engine judges loss by it)
            for k, (addr, _age) in enumerate(SITES):
                pending.append((now + 0.0005, copy_id + answers[m, k, second][2:], addr))
        keep = []
        for arrival, data, addr in pending:
            if arrival <= now:
                engine.receive(data, addr, now)
            else:
                keep.append((arrival, data, addr))
        pending = keep
        engine.advance(now)
        if trace:
            peak = max(peak, tracemalloc.get_traced_memory()[0] - base)
        now = round(now + 0.001, 6)
    cpu = time.process_time() - cpu0
    if trace:
        tracemalloc.stop()
    finals = [r for r in results if r.last]
    youngest = sum(1 for r in finals if r.found and r.age == SITES[2][1])
    assert len(finals) == n, (len(finals), n)
    return {"cpu_us": cpu / n * 1e6, "kib": peak / n / 1024, "youngest": youngest,
            "sent": engine.stats.queries_sent / n, "wall_s": now}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lookups", type=int, default=2000)
    p.add_argument("--resend", type=int, default=7)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    answers = answers_for(a.lookups)
    cpus = []
    for _ in range(a.rounds):
        r = one_round(a.lookups, a.resend, answers, trace=False)
        cpus.append(r["cpu_us"])
        print(f"round: {r['cpu_us']:.0f} us CPU per lookup, {r['sent']:.1f} queries per lookup, "
              f"youngest {r['youngest']}/{a.lookups}, fake-clock end {r['wall_s']:.3f} s")
    mem = one_round(a.lookups, a.resend, answers, trace=True)
    print(f"engine, {a.lookups} lookups, resend {a.resend}, 3 sites answering every copy: "
          f"CPU median {statistics.median(cpus):.0f} us per lookup "
          f"(min {min(cpus):.0f}); memory {mem['kib']:.2f} KiB per lookup in flight "
          f"(tracemalloc peak)")


if __name__ == "__main__":
    main()
