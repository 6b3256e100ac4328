"""Benchmark both FreeSWITCH ways against a REAL FreeSWITCH: time we add per call.

Needs an installed FreeSWITCH: ``DGSM_FREESWITCH=<install prefix> python3 bench/freeswitch_real.py``
(the same FreeSWITCH, minimal configuration and shipped dialplan as the real-FreeSWITCH test
tier, tests/peers/freeswitch.py). Runs inside a private network namespace (re-executes itself
under ``unshare -rn``); every socket is on 127.0.0.x.

Calls come from SIP callers (INVITE with SDP) to FreeSWITCH, which runs the shipped dialplan;
a responder answers the lookups (age 5, so every lookup waits the full min-delay, as most
real lookups do) and a SIP endpoint answers the bridged calls. Figures:

- ESL server (``dgsm-fs-esl`` in its own process, as the unit runs it): its own per-call
  ``added=`` (from FreeSWITCH's connect to our bridge/hangup command acknowledged, minus the
  lookup), read from its log lines, for calls one at a time and 200 at once;
- mod_python3: the module's ``added=`` (from the handler's start to the bridge, minus the
  lookup), read from FreeSWITCH's log, for the same two loads;
- the caller's view: INVITE to 200 OK, minus the min-delay.

``--quick`` for a short run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import enter_private_netns, pct  # noqa: E402

from dgsm_integrations.lab.sip import CallResult, SipUas, call  # noqa: E402
from dgsm_integrations.mslookup import Record, Responder  # noqa: E402
from tests.peers.freeswitch import ENV, FreeSwitch, Inbound, prefix_from_env  # noqa: E402

SITE = "127.0.0.22"
SIP_PORT, ESL_PORT = 5080, 8021
_ADDED = re.compile(r" added=([0-9.]+)ms")
_FS_WAIT = re.compile(r" fs-wait=([0-9.]+)ms")


def line(name: str, values: list[float]) -> str:
    if not values:
        return f"  {name:<58} (no values)"
    ms = [v * 1000 for v in values]
    return (f"  {name:<58} n={len(ms):<5} p50 {pct(ms, 50):7.2f} ms  p99 {pct(ms, 99):7.2f} ms"
            f"  max {max(ms):7.2f} ms")


def added_values(lines: list[str], pattern: re.Pattern[str] = _ADDED) -> list[float]:
    out = []
    for text in lines:
        m = pattern.search(text)
        if m is not None and "result=found" in text:
            out.append(float(m.group(1)) / 1000)
    return out


async def calls(numbers: list[str], at_once: int) -> list[CallResult]:
    """Call every number, ``at_once`` calls open at a time."""
    results: list[CallResult] = []
    for start in range(0, len(numbers), at_once):
        batch = numbers[start:start + at_once]
        results += await asyncio.gather(*(
            call(n, "127.0.0.1", SIP_PORT, offer_sdp=True, timeout=30) for n in batch))
    return results


class EslServer:
    def __init__(self, conf: Path, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dgsm_integrations.freeswitch.server", "--config", str(conf)],
            stdin=subprocess.DEVNULL, stdout=log.open("ab"), stderr=subprocess.STDOUT,
            cwd=ROOT)
        deadline = time.monotonic() + 15
        while "listening on" not in self.text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"dgsm-fs-esl did not start:\n{self.text()}")
            time.sleep(0.05)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def lines(self) -> list[str]:
        return [t for t in self.text().splitlines() if " call peer=" in t]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)


async def run(prefix: Path, work: Path, sequential: int, concurrent: int, rounds: int,
              min_delay: float, ways: list[str], keep: Path | None) -> int:
    numbers = [str(30000 + i) for i in range(concurrent)]
    table = {f"sip.voice.{n}.msisdn": Record.parse(f"5,{SITE}:5060") for n in numbers}
    conf = work / "freeswitch.conf"
    conf.write_text(f"interface = 127.0.0.1\nmin-delay = {min_delay}\nlisten-port = 8084\n"
                    "codec-string = PCMU,PCMA\ncall-timeout = 30\nlog-level = info\n"
                    "allow-loopback = yes\n")  # the site is a 127.0.0.x address
    uas = await SipUas.start(SITE, 5060)
    fs = FreeSwitch(prefix, work / "fs", sip_port=SIP_PORT, esl_port=ESL_PORT,
                    environment={"DGSM_FS_CONFIG": str(conf), "DGSM_VENV": sys.prefix})
    failures = 0
    async with Responder(table, interface="127.0.0.1", source="127.0.0.11"):
        await asyncio.to_thread(fs.start)
        esl = EslServer(conf, work / "dgsm-fs-esl.log")
        try:
            print(f"real FreeSWITCH ({prefix}), min-delay {min_delay:.1f} s, SIP callers, "
                  "lookups answered with age 5")
            for way in ways:
                async with Inbound(ESL_PORT) as api:
                    await api.api(f"global_setvar dgsm_way={way}")
                for label, at_once, total in (("1 call at a time", 1, sequential),
                                              (f"{concurrent} calls at once", concurrent,
                                               concurrent * rounds)):
                    before_esl = len(esl.lines())
                    before_py = len(fs.dgsm_lines())
                    wanted = (numbers * (total // len(numbers) + 1))[:total]
                    t0 = time.monotonic()
                    results = await calls(wanted, at_once)
                    wall = time.monotonic() - t0
                    ok = sum(r.code == 200 for r in results)
                    failures += total - ok
                    # the ESL server writes its line when the call is over (bounded wait)
                    deadline = time.monotonic() + 10
                    while way == "esl" and len(esl.lines()) < before_esl + total \
                            and time.monotonic() < deadline:
                        await asyncio.sleep(0.05)
                    if way == "esl":
                        added = added_values(esl.lines()[before_esl:])
                        name = "ESL server (own process): added"
                    else:
                        added = added_values([t for t in fs.dgsm_lines()[before_py:]
                                              if t.startswith("dgsm: call ")])
                        name = "mod_python3 module: added"
                    codes = Counter(str(r.code or r.reason) for r in results)
                    print(f" {way}, {label}: {ok}/{total} answered 200 in {wall:.1f} s "
                          f"({dict(codes)})")
                    print(line(name, added))
                    if way == "esl":
                        waits = added_values(esl.lines()[before_esl:], _FS_WAIT)
                        ours = [a - w for a, w in zip(added, waits, strict=True)]
                        print(line("  of which waiting for FreeSWITCH's replies", waits))
                        print(line("  the server's own time (added - that wait)", ours))
                    print(line("caller: INVITE to final answer, minus min-delay",
                               [r.elapsed - min_delay for r in results if r.code == 200]))
        finally:
            esl.stop()
            await asyncio.to_thread(fs.stop)
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                for log in (esl.log, fs.log_path):
                    shutil.copy(log, keep / log.name)
                print(f"logs kept in {keep}")
            uas.close()
    print(f"INVITEs at the site: {len(uas.invites)} (records kept: {uas.invites.maxlen})")
    return 1 if failures else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="a short run")
    p.add_argument("--min-delay", type=float, default=1.0, help="seconds (default 1.0)")
    p.add_argument("--way", choices=("esl", "python"), action="append",
                   help="only this way (repeatable; default both)")
    p.add_argument("--rounds", type=int, help="rounds of 200 calls at once (5; --quick 1)")
    p.add_argument("--keep-logs", metavar="DIR", type=Path,
                   help="copy dgsm-fs-esl's and FreeSWITCH's logs there")
    args = p.parse_args()
    prefix = prefix_from_env()
    if prefix is None:
        sys.exit(f"bench: set {ENV}=<FreeSWITCH install prefix> (docs/freeswitch.md)")
    enter_private_netns(__file__)
    os.environ.setdefault("DGSM_VENV", sys.prefix)
    with tempfile.TemporaryDirectory(prefix="dgsm-fsbench-") as tmp:
        sequential, rounds = (10, 1) if args.quick else (40, 5)
        rounds = args.rounds or rounds
        return asyncio.run(run(prefix, Path(tmp), sequential, 200, rounds, args.min_delay,
                               args.way or ["esl", "python"], args.keep_logs))


if __name__ == "__main__":
    sys.exit(main())
