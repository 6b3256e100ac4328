"""A burst against three real OsmoHLRs: 2,000 concurrent lookups of distinct MSISDNs.

What a bulk SMS to every subscriber of a community does. Three real ``osmo-hlr`` processes
(Debian's, D-GSM mslookup on, GSUP/VTY on 127.0.0.2-4) know every subscriber, each with a
DIFFERENT age: for MSISDN m, HLR k's record is ``10 + 20 * ((m + k) % 3)`` seconds old, so the
youngest HLR changes from one MSISDN to the next. One ``AsyncResolver`` (defaults: min_delay
1 s, 7 re-sends, paced) runs all lookups at once; a lookup is right only if it returns the
youngest HLR's service address. An older site is a call or SMS routed to the wrong village.
The age is checked too and counted apart ("age not as provisioned"): OsmoHLR counts it on
the wall clock, and this VM's wall clock was measured moving 0.5% against the monotonic one.
(One round, with a stray busy loop on the machine, counted all 2,000 lookups wrong when the
two were one figure, and the next round's warm-up check failed; OsmoHLR's sockets had dropped
2,042 datagrams, far too few to hide the youngest site from every lookup, so an age off, not
a site, is the likely reading. The figures now say which.)

Subscribers: at each HLR one subscriber is provisioned through the VTY and attached with a
real GSUP Location Updating (as tests/test_osmohlr.py does); its database row is the
template for the other 1,999 (same VLR number and flags, its own IMSI/MSISDN, ``last_lu_seen``
backdated as ``OsmoHlr.backdate_location_update`` does). OsmoHLR reads the row for every
mslookup request, so these are answered exactly like the attached one (checked: the warm-up
lookup of every round is a template subscriber, and every lookup's age is checked).

Figures per round: how many got the youngest site, wrong (older) sites, not found; wall time
of the batch against min_delay (target <= min_delay + 0.1 s); this process's CPU per lookup
(target <= 150 us); RSS per lookup in flight (target <= 4 KiB, judged on the first round:
peak VmRSS during the batch, sampled every 20 ms, over the one before); query datagrams
sent, re-sends skipped by the pacer; and datagrams the kernel dropped at full receive
buffers in the namespace (/proc/net/snmp RcvbufErrors, and the drops column of
/proc/net/udp for OsmoHLRs' sockets). ``--rounds``, ``--lookups``; ``--send-rate``,
``--resend`` and ``--resend-interval`` to try other settings of the resolver. Runs in its own
network namespace (unshare -rn). The last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import enter_private_netns  # noqa: E402

from dgsm_integrations.lab.osmohlr import OsmoHlr  # noqa: E402
from dgsm_integrations.mslookup import AsyncResolver, Endpoint, Result  # noqa: E402

SITES = 3
MIN_DELAY = 1.0
TARGET_SLACK = 0.1  # issue 13's targets: wall <= min_delay + this, ...
TARGET_CPU_US = 150  # ... this process's CPU per lookup, ...
TARGET_RSS_KIB = 4.0  # ... and its RSS per lookup in flight
FIRST_MSISDN = 70000000
IMSI_BASE = 901700100000000


class QuietOsmoHlr(OsmoHlr):
    """OsmoHLR logging as deployed (notice), not at the lab's debug level: OsmoHLR logs every
    mslookup datagram at debug, which would make the HLR, not its socket, the bottleneck."""

    def config_text(self) -> str:
        lines = [line for line in super().config_text().splitlines()
                 if not line.startswith(" logging level ") or "set-all" in line]
        return "\n".join(lines) + "\n"


def service(k: int) -> tuple[str, int]:
    return (f"10.23.{k + 1}.5", 5060)


def age(k: int, msisdn: int) -> int:
    return 10 + 20 * ((msisdn + k) % SITES)


def youngest(msisdn: int) -> int:
    return min(range(SITES), key=lambda k: age(k, msisdn))


def provision(hlr: OsmoHlr, k: int, n: int) -> None:
    """One subscriber attached over GSUP, then ``n`` rows cloned from it, ages backdated."""
    t_imsi, t_msisdn = str(IMSI_BASE + FIRST_MSISDN - 1), str(FIRST_MSISDN - 1)
    hlr.create_subscriber(t_imsi, t_msisdn)
    hlr.location_update(t_imsi)
    db = sqlite3.connect(hlr.db_path, timeout=10)
    try:
        cur = db.execute("SELECT * FROM subscriber WHERE imsi = ?", (t_imsi,))
        cols = [d[0] for d in cur.description]
        row = dict(zip(cols, cur.fetchone(), strict=True))
        if not row.get("vlr_number"):
            raise RuntimeError(f"HLR {k}: the GSUP Location Updating left no VLR number")
        keep = [c for c in cols if c not in ("id", "imsi", "msisdn", "last_lu_seen")]
        if not all(c.isidentifier() for c in keep):
            raise RuntimeError(f"unexpected column names in OsmoHLR's database: {keep}")
        sql = (f"INSERT INTO subscriber (imsi, msisdn, last_lu_seen, {', '.join(keep)}) "  # noqa: S608 (names from the HLR's own schema, checked)
               f"VALUES (?, ?, datetime('now', ?), {', '.join('?' * len(keep))})")
        with db:
            db.execute("UPDATE subscriber SET last_lu_seen = datetime('now', ?) WHERE imsi = ?",
                       (f"-{age(k, FIRST_MSISDN - 1)} seconds", t_imsi))
            db.executemany(sql, ((str(IMSI_BASE + m), str(m), f"-{age(k, m)} seconds",
                                  *(row[c] for c in keep))
                                 for m in range(FIRST_MSISDN, FIRST_MSISDN + n)))
    finally:
        db.close()
    PROVISIONED[k] = time.monotonic()


def start_hlrs(stack: contextlib.ExitStack, workdir: Path, n: int) -> list[OsmoHlr]:
    """The SITES real OsmoHLRs on 127.0.0.2.., each provisioned with ``n`` subscribers of
    its own ages (stopped when ``stack`` closes)."""
    hlrs: list[OsmoHlr] = [
        stack.enter_context(QuietOsmoHlr(workdir / f"hlr{k}", bind_ip=f"127.0.0.{k + 2}",
                                         services={"sip.voice": service(k)},
                                         client_timeout_ms=100))
        for k in range(SITES)]
    for k, hlr in enumerate(hlrs):
        provision(hlr, k, n)
    return hlrs


#: When each HLR's ages were set (records age as time passes; the differences stay 20 s).
PROVISIONED: dict[int, float] = {}


def right_site(result: Result, msisdn: int) -> bool:
    """The youngest HLR's service address won: the call or SMS goes to the right village."""
    return result.found and result.v4 == Endpoint(*service(youngest(msisdn)))


def age_as_provisioned(result: Result, msisdn: int) -> bool:
    """The age is the one provisioned, plus the (monotonic) time since. OsmoHLR counts
    ages on the wall clock, so a step of this VM's clock shows here, not as a wrong site."""
    k = youngest(msisdn)
    since = time.monotonic() - PROVISIONED[k]
    return result.age is not None and 0 <= result.age - age(k, msisdn) <= since + 2


def correct(result: Result, msisdn: int) -> bool:
    return right_site(result, msisdn) and age_as_provisioned(result, msisdn)


def udp_snmp() -> dict[str, int]:
    with open("/proc/net/snmp", encoding="ascii") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return dict(zip(rows[0][1:], map(int, rows[1][1:]), strict=True))


def socket_drops() -> dict[str, int]:
    """The drops column of every UDP socket in this namespace, summed by owner (``ours`` or
    the OsmoHLR's pid), so that a table can say whose socket overflowed."""
    owner: dict[str, str] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        owner[link[8:-1]] = "ours" if int(pid) == os.getpid() else pid
    drops: dict[str, int] = {}
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError), open(name, encoding="ascii") as f:
            next(f)
            for line in f:
                fields = line.split()
                who = owner.get(fields[9], "other")
                drops[who] = drops.get(who, 0) + int(fields[12])
    return drops


def vmrss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def one_round(n: int, extra: dict[str, Any]) -> dict[str, Any]:
    msisdns = list(range(FIRST_MSISDN, FIRST_MSISDN + n))
    async with AsyncResolver(interface="127.0.0.1", min_delay=MIN_DELAY, **extra) as r:
        warm = await r.resolve(f"sip.voice.{FIRST_MSISDN - 1}.msisdn")
        if not right_site(warm, FIRST_MSISDN - 1):
            raise RuntimeError(f"warm-up lookup wrong: {warm.describe()}")
        stats0 = dict(r.stats.as_dict())
        snmp0, drops0 = udp_snmp(), socket_drops()
        rss0 = peak = vmrss_kib()
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, vmrss_kib())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 0.02)

        sampler = asyncio.ensure_future(sample())
        cpu0, t0 = time.process_time(), time.perf_counter()
        results = await asyncio.gather(*(r.resolve(f"sip.voice.{m}.msisdn") for m in msisdns))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        done.set()
        await sampler
        stats = {k: v - stats0.get(k, 0) for k, v in r.stats.as_dict().items()}
        await asyncio.sleep(0.3)  # late answers land (and are counted) before we look
        snmp1, drops1 = udp_snmp(), socket_drops()
    judged = [(m, res, right_site(res, m)) for res, m in zip(results, msisdns, strict=True)]
    ok = sum(right for _, _, right in judged)
    wrong = sum(res.found and not right for _, res, right in judged)  # older: wrong village
    age_off = sum(right and not age_as_provisioned(res, m) for m, res, right in judged)
    wrong_examples = [(m, res.site, res.age) for m, res, right in judged if not right][:5]
    return {
        "lookups": n, "youngest": ok, "older_site": wrong, "not_found": n - ok - wrong,
        "age_off": age_off, "wrong_examples": wrong_examples,
        "wall_s": round(wall, 3), "over_min_delay_s": round(wall - MIN_DELAY, 3),
        "cpu_us_per_lookup": round(cpu / n * 1e6), "rss_kib_per_lookup": round(
            (peak - rss0) / n, 2),
        "queries_sent": stats["queries_sent"], "resends_skipped": stats.get("resends_skipped"),
        "grace_periods": stats.get("grace_periods"),
        "waits_for_copies": stats.get("waits_for_copies"),
        "waits_for_answers": stats.get("waits_for_answers"),
        "waits_extended": stats.get("waits_extended"),
        "rcvbuf_errors": snmp1["RcvbufErrors"] - snmp0["RcvbufErrors"],
        "socket_drops": sum(drops1.values()) - sum(drops0.values()),
        "drops_at_our_socket": drops1.get("ours", 0) - drops0.get("ours", 0),
        "drops_at_osmohlr_sockets": sum(v - drops0.get(k, 0) for k, v in drops1.items()
                                        if k != "ours"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--send-rate", type=float, default=None,
                        help="the resolver's send_rate (default: its default)")
    parser.add_argument("--resend", type=int, default=None,
                        help="the resolver's resend (default: its default)")
    parser.add_argument("--resend-interval", type=float, default=None,
                        help="the resolver's resend_interval in s (default: its default)")
    args = parser.parse_args()
    extra: dict[str, Any] = {name: value for name, value in (
        ("send_rate", args.send_rate), ("resend", args.resend),
        ("resend_interval", args.resend_interval)) if value is not None}
    enter_private_netns(__file__)
    with tempfile.TemporaryDirectory(prefix="dgsm-burst-") as tmp, \
            contextlib.ExitStack() as stack:
        t = time.perf_counter()
        start_hlrs(stack, Path(tmp), args.lookups)
        print(f"{SITES} OsmoHLRs, {args.lookups} subscribers each (ages 10/30/50 s, youngest "
              f"varies), provisioned in {time.perf_counter() - t:.1f} s", flush=True)
        rounds = []
        for i in range(args.rounds):
            res = asyncio.run(one_round(args.lookups, extra))
            rounds.append(res)
            print(f"round {i + 1}: youngest {res['youngest']}/{res['lookups']}, older site "
                  f"{res['older_site']}, not found {res['not_found']} (right site, age not as "
                  f"provisioned: {res['age_off']}); wall {res['wall_s']} s "
                  f"(min_delay + {res['over_min_delay_s']} s); CPU {res['cpu_us_per_lookup']} "
                  f"us/lookup; RSS {res['rss_kib_per_lookup']} KiB/lookup; sent "
                  f"{res['queries_sent']} (skipped {res['resends_skipped']}); drops: "
                  f"rcvbuf {res['rcvbuf_errors']}, at OsmoHLRs "
                  f"{res['drops_at_osmohlr_sockets']}, at ours {res['drops_at_our_socket']}; "
                  f"grace {res['grace_periods']}; lookups that waited for their copies "
                  f"{res['waits_for_copies']}, for their answers {res['waits_for_answers']}",
                  flush=True)
    all_ok = all(r["youngest"] == r["lookups"] for r in rounds)
    wall_ok = all(r["over_min_delay_s"] <= TARGET_SLACK for r in rounds)
    cpu_ok = all(r["cpu_us_per_lookup"] <= TARGET_CPU_US for r in rounds)
    # only the first round's figure means anything: later rounds reuse the memory the first
    # one freed (RSS rarely shrinks)
    rss_ok = rounds[0]["rss_kib_per_lookup"] <= TARGET_RSS_KIB
    verdict = {"youngest": all_ok, "wall": wall_ok, "cpu": cpu_ok, "rss": rss_ok}

    def word(ok: bool) -> str:
        return "PASS" if ok else "FAIL"
    print(f"targets: youngest for all in every round: {word(all_ok)}; wall <= min_delay + "
          f"{TARGET_SLACK} s: {word(wall_ok)}; CPU <= {TARGET_CPU_US} us/lookup: "
          f"{word(cpu_ok)}; RSS <= {TARGET_RSS_KIB} KiB/lookup (first round): "
          f"{word(rss_ok)} ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})")
    print(json.dumps({"bench": "osmohlr_burst", "rounds": rounds, "cpus": os.cpu_count(),
                      "loadavg": os.getloadavg()[0], "send_rate": args.send_rate,
                      "resend": args.resend, "resend_interval": args.resend_interval,
                      "pass": verdict}))
    sys.exit(0 if all(verdict.values()) else 1)


if __name__ == "__main__":
    main()
