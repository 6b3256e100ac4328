"""SMS throughput end to end through the ESME, against the old proof of concept's flow.

Set-up (all on loopback inside a private network namespace; nothing leaves the machine):

- the ESME as deployed: its own process (``python -m dgsm_integrations.esme``), mslookup
  min-delay 1 s, bound as OSMPP to a stand-in OsmoMSC that sends deliver_sm exactly as osmo-msc
  does (``dgsm_integrations.lab.smsc``, in this process) and measures each deliver_sm_resp;
- three villages' HLRs answering ``smpp.sms`` (``dgsm-mslookup serve``, one process each,
  from 127.0.0.11-13) with ages 30, 12 and 2 s in rotation: only the youngest points at the
  destination SMSC (127.0.0.3:2775, in this process, counting what it receives); the older
  ones point at addresses where nothing listens, so a wrong choice cannot go unseen.

Figures:

1. Sustained: deliver_sm offered at a steady rate for some seconds (distinct recipients), the
   rate of ROK answers over the whole run, p50/p99 of the deliver_sm answer time (targets:
   >= 300 SMS/s on 2 cores; p99 <= min_delay + 100 ms), every SMS received exactly once.
2. Memory: 1,000 SMS handed over at once (1,000 in flight through the lookup); the ESME
   process's peak RSS (VmHWM; target <= 100 MB).
3. Baseline, same run: the old proof of concept's flow (one SMS at a time; spawn
   ``osmo-mslookup-client`` for each lookup; a new smpplib bind_transmitter, submit_sm and
   unbind per SMS), over a few messages; the ratio of the two rates.

``--quick`` for a short run. Exit status 0 only when every target is met.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import smpplib.client  # noqa: E402
from _common import enter_private_netns, pct, peak_rss_mib  # noqa: E402

from dgsm_integrations.lab.smsc import SmscPeer, mo_sms  # noqa: E402

LOCAL, DEST = "127.0.0.2", "127.0.0.3"
NOWHERE = ("127.0.0.4", "127.0.0.5")
SITES = ("127.0.0.11", "127.0.0.12", "127.0.0.13")
AGES = (30, 12, 2)
MIN_DELAY = 1.0
RECIPIENTS = 3000
TARGET_RATE, TARGET_RSS_MB = 300.0, 100.0


def msisdn(i: int) -> str:
    return str(4_000_000 + i)


async def start_sites() -> list[asyncio.subprocess.Process]:
    """Three HLR stand-ins; for each recipient exactly one answers with the youngest age."""
    procs = []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for k, site in enumerate(SITES):
        answers = []
        for i in range(RECIPIENTS):
            age = AGES[(i + k) % 3]
            host = DEST if age == min(AGES) else NOWHERE[k % 2]
            answers.append(f"--answer=smpp.sms.{msisdn(i)}.msisdn={age},{host}:2775")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dgsm_integrations.mslookup", "serve", "--interface",
            "127.0.0.1", "--source", site, *answers, stdout=asyncio.subprocess.PIPE, env=env)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.startswith(b"answering"), line
        procs.append(proc)
    return procs


async def start_esme() -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dgsm_integrations.esme", "--src-host", LOCAL,
        "--mslookup-interface", "127.0.0.1", "--allow-loopback", "--min-delay", str(MIN_DELAY),
        "--trusted", "127.0.0.0/8",
        "--window", "64", "--log-level", "WARNING", stderr=asyncio.subprocess.DEVNULL,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))


async def offer(msc: SmscPeer, first: int, count: int, rate: float | None
                ) -> tuple[list[float], list[int | None], float]:
    """Send ``count`` deliver_sm (at ``rate`` per second, or all at once); answer times."""
    times: list[float] = []
    statuses: list[int | None] = []
    start = time.perf_counter()

    async def one(i: int) -> None:
        if rate is not None:
            # load shaping: the arrival time of this SMS, not synchronisation
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        t0 = time.perf_counter()
        st = await msc.deliver(mo_sms("1001", msisdn((first + i) % RECIPIENTS),
                                      f"sms {first + i}".encode(), msg_ref=i & 0xFF))
        times.append(time.perf_counter() - t0)
        statuses.append(st)

    await asyncio.gather(*(one(i) for i in range(count)))
    return times, statuses, time.perf_counter() - start


def old_poc_one(i: int, port: int) -> float:
    """The proof of concept's flow for one SMS: C client per lookup, a bind per message."""
    t0 = time.perf_counter()
    query = f"smpp.sms.{msisdn(i)}.msisdn"
    exe = shutil.which("osmo-mslookup-client")
    assert exe is not None, "apt-get install osmo-mslookup-utils"
    out = subprocess.run([exe, "-f", "json", "-t", str(int(MIN_DELAY * 1000)), query],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    row = json.loads(out.strip().splitlines()[-1])
    host, smpp_port = row["v4"][0], int(row["v4"][1])
    assert host == DEST, row
    client = smpplib.client.Client(host, smpp_port, timeout=5, allow_unknown_opt_params=True)
    client.set_message_sent_handler(lambda **_kw: None)  # smpplib prints otherwise
    client.connect()
    try:
        client.bind_transmitter(system_id="ISMPP", password="foo")  # noqa: S106 - the example config
        client.send_message(source_addr_ton=3, source_addr_npi=1, source_addr="1001",
                            dest_addr_ton=1, dest_addr_npi=1, destination_addr=msisdn(i),
                            short_message=b"old flow", esm_class=0x01, data_coding=0x01)
        client.read_once()  # submit_sm_resp
        client.unbind()
    finally:
        client.disconnect()
    return time.perf_counter() - t0


async def main_async(args: argparse.Namespace) -> int:
    seconds = 4.0 if args.quick else 10.0
    rate = args.rate
    n_old = 3 if args.quick else 6
    sites = await start_sites()
    failures: list[str] = []
    try:
        async with SmscPeer(LOCAL) as msc, SmscPeer(DEST) as dest:
            esme = await start_esme()
            try:
                await msc.wait_for(lambda: msc.route() is not None, timeout=20)
                await offer(msc, 0, 20, None)  # warm-up: binds, first lookups
                dest.submits.clear()
                count = int(rate * seconds)
                times, statuses, wall = await offer(msc, 100, count, rate)
                ok = sum(s == 0 for s in statuses)
                got = sorted(bytes(s.get("short_message")) for s in dest.submits)
                want = sorted(f"sms {100 + i}".encode() for i in range(count))
                exact = got == want
                sustained = ok / wall
                p50, p99 = pct(times, 50) * 1000, pct(times, 99) * 1000
                print(f"sustained: {count} SMS offered at {rate:.0f}/s for {seconds:.0f} s, "
                      f"{ok} answered ROK, {len(dest.submits)} received "
                      f"({'each exactly once' if exact else 'NOT exactly once'})")
                print(f"  rate {sustained:6.1f} SMS/s over {wall:.2f} s   (target >= "
                      f"{TARGET_RATE:.0f})")
                print(f"  deliver_sm answer p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  max "
                      f"{max(times) * 1000:6.1f} ms   (target p99 <= "
                      f"{MIN_DELAY * 1000 + 100:.0f} ms)")
                if sustained < TARGET_RATE or not exact or ok != count:
                    failures.append("sustained rate")
                if p99 > MIN_DELAY * 1000 + 100:
                    failures.append("p99 answer time")
                dest.submits.clear()
                b_times, b_statuses, b_wall = await offer(msc, 1000, 1000, None)
                rss = peak_rss_mib(esme.pid)
                b_ok = sum(s == 0 for s in b_statuses)
                print(f"memory: 1000 SMS handed over at once, {b_ok} ROK in {b_wall:.2f} s "
                      f"(p99 {pct(b_times, 99) * 1000:.0f} ms); ESME peak RSS {rss:.1f} MiB "
                      f"(target <= {TARGET_RSS_MB:.0f} MB)")
                if rss > TARGET_RSS_MB or b_ok != 1000:
                    failures.append("memory")
            finally:
                esme.terminate()
                await asyncio.wait_for(esme.wait(), 15)
            dest.submits.clear()
            old = [await asyncio.to_thread(old_poc_one, 50 + i, 2775) for i in range(n_old)]
            assert len(dest.submits) == n_old
            old_rate = n_old / sum(old)
            print(f"old proof of concept (one at a time, osmo-mslookup-client + a new bind per "
                  f"SMS): {n_old} SMS, {old_rate:.2f} SMS/s "
                  f"(median {pct(old, 50) * 1000:.0f} ms each)")
            print(f"ratio: {sustained / old_rate:.0f}x the old flow's rate")
            print(json.dumps({"sustained_sms_per_s": round(sustained, 1), "p50_ms": round(p50, 1),
                              "p99_ms": round(p99, 1), "peak_rss_mib": round(rss, 1),
                              "old_sms_per_s": round(old_rate, 3),
                              "ratio": round(sustained / old_rate, 1)}))
    finally:
        for p in sites:
            p.terminate()
        for p in sites:
            await asyncio.wait_for(p.wait(), 15)
    print("PASS" if not failures else f"FAIL: {', '.join(failures)}")
    return 0 if not failures else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run (about 15 s)")
    parser.add_argument("--rate", type=float, default=400.0,
                        help="deliver_sm offered per second in the sustained run (default 400)")
    args = parser.parse_args()
    enter_private_netns(__file__)
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
