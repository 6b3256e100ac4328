"""A bulk SMS over a thin, lossy village link: which village wins, at which send_rate.

The village lab (dgsm_integrations/lab), real OsmoHLRs: ``--lookups`` subscribers homed at A
attach at C and, ``--gap`` seconds later, at B, so B's records are the younger ones (the gap
is more than the lookups last plus 1 s: OsmoHLR counts ages in whole seconds, so closer
records can tie, docs/lab.md). B's link loses ``--loss`` % each way (nftables) and carries at
most ``--kbit`` kbit/s each way, queueing up to ``--queue-ms`` (tc tbf: a thin wifi hop with
a deep buffer). Then every lookup at once from A, one AsyncResolver per configuration
(``--configs send_rate:min_delay ...``). A lookup is right only if B won; C (older) is an SMS
to the wrong village.

The peer measured in the same run: the same burst with the link lossy but not thin
(``whole`` rows). Each configuration gets fresh subscribers every round.

Found with it (docs/mslookup.md, "A thin link"): at the default send_rate (5,000/s) a
2 Mbit/s link queues the queries and answers (round trips 2 ms -> 165 ms) and drops what
does not fit, so B answered a third of the copies instead of two thirds and 7-17% of the
lookups went to C; at 1,000/s, none of 400 in three rounds. The resolver does not find a
link's capacity by itself (it logs the sign); an operator with a thin link lowers send_rate.

The last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import enter_private_netns

from dgsm_integrations.lab.distro import default_osmocom
from dgsm_integrations.lab.network import Lab
from dgsm_integrations.mslookup import AnswerTrace, AsyncResolver, Result


def _burst(lab: Lab, msisdns: list[str], send_rate: float, min_delay: float
           ) -> tuple[list[Result], dict[str, int], dict[str, int], float,
                      dict[str, list[str]]]:
    """All lookups at once from A: results, answers heard per village, stats, seconds, and
    by MSISDN the answers heard (village/age@seconds)."""
    heard: dict[str, int] = {}
    answers: dict[str, list[str]] = {}

    def trace(t: AnswerTrace) -> None:
        where = lab.site_of(t.site)
        heard[where] = heard.get(where, 0) + 1
        answers.setdefault(t.query.id, []).append(f"{where}/{t.age}@{t.elapsed:.3f}")

    async def body() -> tuple[list[Result], dict[str, int]]:
        resolver = AsyncResolver(interface=lab["A"].addr, min_delay=min_delay,
                                 send_rate=send_rate)
        try:
            results = await asyncio.gather(*(resolver.resolve(
                f"sip.voice.{m}.msisdn", on_answer=trace) for m in msisdns))
            return list(results), resolver.stats.as_dict()
        finally:
            await resolver.close()
    t0 = time.monotonic()
    results, stats = lab["A"].loop.run(body(), timeout=120.0)
    return results, heard, stats, time.monotonic() - t0, answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lookups", type=int, default=400, help="at once, each round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--kbit", type=int, default=2000, help="B's link, kbit/s each way")
    ap.add_argument("--queue-ms", type=int, default=150, help="B's link's queue (tc tbf)")
    ap.add_argument("--loss", type=int, default=20, help="%% each way on B's link")
    ap.add_argument("--gap", type=float, default=4.1,
                    help="seconds between the LUs at C and at B")
    ap.add_argument("--links", nargs="+", choices=("thin", "whole"), default=["thin", "whole"],
                    help="thin: lossy and shaped; whole: lossy only (the peer)")
    ap.add_argument("--configs", nargs="+", default=["5000:1.0", "1000:1.0", "5000:0.3"],
                    metavar="RATE:MIN_DELAY")
    args = ap.parse_args()
    if not 1 <= args.lookups <= 2000 or not 1 <= args.rounds <= 50:
        ap.error("--lookups must be 1-2000 and --rounds 1-50")
    try:
        configs = [(float(r), float(d)) for r, d in (c.split(":") for c in args.configs)]
    except ValueError:
        ap.error("--configs takes RATE:MIN_DELAY pairs, e.g. 5000:1.0")
    if not all(10 <= r <= 100_000 and 0 < d <= 10 for r, d in configs):
        ap.error("--configs: send_rate 10-100000 datagrams/s, min_delay above 0 and up to 10 s")
    if not (8 <= args.kbit <= 10_000_000 and 1 <= args.queue_ms <= 10_000
            and 0 <= args.loss <= 100 and 0 <= args.gap <= 60):
        ap.error("--kbit 8-10000000, --queue-ms 1-10000, --loss 0-100, --gap 0-60")
    enter_private_netns(__file__)
    serial = itertools.count(1)
    rows = []
    with Lab(distro=default_osmocom()) as lab:
        print(f"osmo-hlr {lab.distro.label('osmo-hlr')}; B's link: {args.loss}% loss each way, "
              f"{args.kbit} kbit/s each way, queue {args.queue_ms} ms; {args.lookups} "
              f"lookups at once from A", flush=True)
        for rnd in range(args.rounds):
            for shape in args.links:
                for send_rate, min_delay in configs:
                    msisdns = []
                    subs = []
                    for _ in range(args.lookups):
                        n = next(serial)
                        imsi, msisdn = f"90170001{rnd:02d}{n:05d}", f"56{n:06d}"
                        lab["A"].provision(imsi, msisdn)
                        subs.append(imsi)
                        msisdns.append(msisdn)
                    for imsi in subs:
                        lab["C"].attach(imsi)
                    time.sleep(args.gap)
                    for imsi in subs:
                        lab["B"].attach(imsi)
                    lab.lossy("B", args.loss)
                    if shape == "thin":
                        lab.thin("B", args.kbit, args.queue_ms)
                    try:
                        results, heard, stats, wall, answers = _burst(
                            lab, msisdns, send_rate, min_delay)
                    finally:
                        lab.thin("B", None)
                        lab.lossy("B", 0)
                    places = [lab.site_of(r.site) if r.found and r.site else None
                              for r in results]
                    sent = stats["queries_sent"]
                    row = {"round": rnd + 1, "link": shape, "send_rate": send_rate,
                           "min_delay": min_delay, "lookups": len(results),
                           "youngest": places.count("B"), "older": places.count("C"),
                           "not_found": places.count(None), "wall_s": round(wall, 2),
                           "copies_per_lookup": round(sent / len(results), 2),
                           "b_answered_share": round(heard.get("B", 0) / max(1, sent), 3),
                           "waits_for_copies": stats["waits_for_copies"],
                           "waits_for_answers": stats["waits_for_answers"],
                           "wrong_examples": [
                               (m, p, r.age, answers.get(m, [])[:10])
                               for m, p, r in zip(msisdns, places, results, strict=True)
                               if p != "B"][:5]}
                    rows.append(row)
                    print(f"round {row['round']} {shape:5} send_rate {send_rate:6.0f} "
                          f"min_delay {min_delay:.1f}: youngest {row['youngest']}/"
                          f"{row['lookups']}, older {row['older']}, not found "
                          f"{row['not_found']}; {row['copies_per_lookup']} copies a lookup, "
                          f"B answered {row['b_answered_share']:.0%} of them; "
                          f"{row['wall_s']} s", flush=True)
    print(json.dumps({"bench": "thin_link", "kbit": args.kbit, "queue_ms": args.queue_ms,
                      "loss": args.loss, "gap_s": args.gap, "rows": rows}))


if __name__ == "__main__":
    main()
