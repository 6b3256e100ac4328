"""The resolver demo: two villages on this machine, one subscriber, the youngest answer wins.

Runs two responders standing in for the OsmoHLRs of two D-GSM sites, pinned to the loopback
interface (nothing leaves this machine), and resolves a subscriber the way a PBX or the SMS
gateway will. ``bash .ci/demo`` runs it inside a private network namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from .mslookup import AnswerTrace, AsyncResolver, Record, Responder, Result, TransportError

LO = "127.0.0.1"
PORT = 4266
VILLAGES = {"127.0.0.11": "village A", "127.0.0.12": "village B"}


def _bold(text: str) -> str:
    return f"\033[1m{text}\033[0m" if sys.stdout.isatty() else text


async def _lookup(resolver: AsyncResolver, query: str, what: str) -> Result:
    print(f"\n{_bold('>>')} {what}\n   asking every village: {query}")
    seen: set[str] = set()

    def trace(t: AnswerTrace) -> None:
        if t.site in seen:
            return  # the same village answering a re-sent copy of the query
        seen.add(t.site)
        where = VILLAGES.get(t.site, t.site)
        best = "  <- best so far" if t.won else ""
        eps = " ".join(str(e) for e in (t.v4, t.v6) if e is not None)
        print(f"   {t.elapsed * 1000:7.1f} ms  {where} ({t.site}) answers: "
              f"age {t.age} s, at {eps}{best}")

    result = await resolver.resolve(query, on_answer=trace)
    if result.found:
        where = VILLAGES.get(result.site or "", result.site)
        print(f"   {result.elapsed * 1000:7.1f} ms  {_bold('result')}: route to {where}, "
              f"{' '.join(str(e) for e in result.endpoints)} (age {result.age} s)")
    else:
        print(f"   {result.elapsed * 1000:7.1f} ms  {_bold('result')}: {result.outcome.value}"
              f"{' - ' + result.reason if result.reason else ''}")
    return result


async def demo(min_delay: float) -> int:
    print(_bold("D-GSM in one minute"))
    print("Every village runs its own OsmoHLR; nobody keeps a central database. To find where")
    print("a subscriber is now, a village asks all villages at once (mslookup over multicast")
    print("DNS); each village that saw the subscriber answers with the age of its record, and")
    print("the youngest answer wins.\n")
    print("On this machine (loopback only):")
    print("  village A (127.0.0.11): Alice, MSISDN 1001, attached 300 s ago; SIP 127.0.0.21:5060")
    print("  village B (127.0.0.12): Alice attached 12 s ago; SIP 127.0.0.22:5060;")
    print("                          B is also Alice's home HLR (IMSI 901700000000001)")
    alice = "sip.voice.1001.msisdn"
    home = "gsup.hlr.901700000000001.imsi"
    a = Responder({alice: Record.parse("300,127.0.0.21:5060")}, interface=LO, port=PORT,
                  source="127.0.0.11")
    b = Responder({alice: Record.parse("12,127.0.0.22:5060"),
                   home: Record.parse("0,127.0.0.12:4222")}, interface=LO, port=PORT,
                  source="127.0.0.12")
    try:
        async with a, b, AsyncResolver(interface=LO, port=PORT, min_delay=min_delay) as r:
            print(f"\n(min_delay {min_delay * 1000:.0f} ms: answers are collected that long, "
                  "then the youngest wins)")
            found = await _lookup(r, alice, "Bob calls Alice: where is she now?")
            hlr = await _lookup(r, home, "Alice's home HLR (age 0 is final: no waiting)")
            gone = await _lookup(r, "sip.voice.1999.msisdn",
                                 "Calling 1999, whom no village knows (silence = not here)")
            ok = (found.found and found.site == "127.0.0.12" and hlr.found
                  and hlr.elapsed < min_delay and not gone.found)
            print(f"\n{_bold('demo ' + ('passed' if ok else 'FAILED'))}: youngest answer won, "
                  "age 0 returned at once, unknown subscriber not found."
                  if ok else f"\n{_bold('demo FAILED')}")
            print(f"resolver counters: {r.stats.as_dict()}")
            return 0 if ok else 1
    except TransportError as exc:
        print(f"error: {exc}\nThe demo needs multicast on the loopback interface; run it with "
              "`bash .ci/demo`, which makes a private network namespace for it.",
              file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dgsm-demo",
        description="Show a D-GSM lookup: two villages on loopback, the youngest answer wins.",
    )
    parser.add_argument("--min-delay", type=int, default=1000, metavar="MS",
                        help="how long to collect answers, in ms (default 1000, as OsmoHLR)")
    args = parser.parse_args(argv)
    if not 0 <= args.min_delay <= 60000:
        parser.error("--min-delay must be 0..60000 ms")
    return asyncio.run(demo(args.min_delay / 1000))


if __name__ == "__main__":
    sys.exit(main())
