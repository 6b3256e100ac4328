"""Lookups over a lossy link: our resolver (with its re-sends) vs osmo-mslookup-client.

Topology, all inside one private user + network + mount namespace that this script makes
for itself (it re-executes itself under ``unshare -rnm``; a tmpfs on /run keeps the
namespace names off the host), so no packet can leave the machine::

    dgsmbench-client                      dgsmbench-site
    veth-c 10.99.0.2/24  <--- veth --->   veth-s 10.99.0.1/24
    resolver / C client                   Responder (ours), every query: age 5
    224.0.0.0/4 dev veth-c                224.0.0.0/4 dev veth-s
                                          nftables: drop N% of mslookup packets
                                          arriving on veth-s and N% leaving it

For each loss rate (10%, 20%, 30%, and 0% as a sanity check): N lookups with the
resolver's default settings (min_delay 1 s, timeout = min_delay, 7 re-sends), many at once
to keep the run short; then lookups with ``osmo-mslookup-client -f json -t 1000 -T 1000``
spawned per lookup, several in parallel, against the same responder. The share found is
reported with a 95% (Wilson) interval, beside what independent loss predicts and the drop
share nftables actually counted. Target: ours at least 99% found at 20% loss.

``--quick`` for a short run. The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dgsm_integrations.mslookup import AsyncResolver, Endpoint, Record, Responder  # noqa: E402
from dgsm_integrations.mslookup.engine import DEFAULT_RESEND  # noqa: E402

MARK = "DGSM_PERF_NETNS"
NS_SITE, NS_CLIENT = "dgsmbench-site", "dgsmbench-client"
VETH_SITE, VETH_CLIENT = "veth-s", "veth-c"
IP_SITE, IP_CLIENT = "10.99.0.1", "10.99.0.2"
ANSWER = Record(5, v4=Endpoint(IP_SITE, 5060))  # a remote site: the lookup waits min_delay
MDNS_PORT = 4266
TARGET_RATE, TARGET_FOUND = 20, 0.99
BATCH = 500  # our lookups run this many at a time
LIFETIME = 600.0  # no child outlives this, whatever happens to the parent


# -- namespaces ---------------------------------------------------------------------------

def interfaces() -> set[str]:
    return {name for _, name in socket.if_nameindex()}


def enter_private_namespaces(script: str = __file__) -> None:
    """Re-execute ``script`` in fresh user/net/mount namespaces (once)."""
    me = Path(script).name
    if os.environ.get(MARK) != me:
        if shutil.which("unshare") is None or shutil.which("nsenter") is None:
            sys.exit("bench: unshare and nsenter (util-linux) are needed")
        probe = subprocess.run(["unshare", "-rnm", "true"], capture_output=True, check=False)
        flags = "-rnm" if probe.returncode == 0 else "-nm"
        if flags == "-nm" and os.geteuid() != 0:
            sys.exit("bench: cannot create private namespaces (unshare -rnm failed): "
                     "enable unprivileged user namespaces or run as root")
        os.environ[MARK] = me
        argv = ["unshare", flags, "--propagation", "private", sys.executable,
                str(Path(script).resolve()), *sys.argv[1:]]
        os.execvp("unshare", argv)  # noqa: S606 (fixed argv, the script is ours)
    if interfaces() != {"lo"}:
        sys.exit("bench: not in a private network namespace (interfaces besides lo); refusing")


def sh(*argv: str, ns: str | None = None, stdin: str | None = None) -> str:
    """Run a command (inside network namespace ``ns`` if given); raise on failure."""
    cmd = list(argv) if ns is None else ["nsenter", f"--net=/run/netns/{ns}", *argv]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return proc.stdout


def build_topology() -> None:
    # Our own tmpfs on /run (this mount namespace only): `ip netns add` puts its files there.
    sh("mount", "-t", "tmpfs", "-o", "mode=0755,size=1m", "dgsmbench", "/run")
    os.makedirs("/run/netns", exist_ok=True)
    sh("ip", "netns", "add", NS_SITE)
    sh("ip", "netns", "add", NS_CLIENT)
    sh("ip", "link", "add", VETH_SITE, "netns", NS_SITE, "type", "veth",
       "peer", "name", VETH_CLIENT, "netns", NS_CLIENT)
    for ns, dev, ip in ((NS_SITE, VETH_SITE, IP_SITE), (NS_CLIENT, VETH_CLIENT, IP_CLIENT)):
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", dev)


def remove_topology() -> None:
    for ns in (NS_CLIENT, NS_SITE):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30, check=False)


def set_loss(rate: int) -> None:
    """Drop ``rate``% of mslookup packets arriving on and leaving the site's veth."""
    with contextlib.suppress(RuntimeError):
        sh("nft", "delete", "table", "inet", "dgsmbench_loss", ns=NS_SITE)
    # Input: only packets from the client (the site's own answers loop back to it too).
    match_in = f'iifname "{VETH_SITE}" ip saddr != {IP_SITE} udp dport {MDNS_PORT}'
    match_out = f'oifname "{VETH_SITE}" udp dport {MDNS_PORT}'
    sh("nft", "-f", "-", ns=NS_SITE, stdin=f"""
table inet dgsmbench_loss {{
    chain in {{
        type filter hook input priority 0; policy accept;
        {match_in} counter
        {match_in} numgen random mod 100 < {rate} counter drop
    }}
    chain out {{
        type filter hook output priority 0; policy accept;
        {match_out} counter
        {match_out} numgen random mod 100 < {rate} counter drop
    }}
}}
""")


def loss_counters() -> dict[str, int]:
    """Packets seen and dropped by the loss rules, per direction."""
    data = json.loads(sh("nft", "-j", "list", "table", "inet", "dgsmbench_loss", ns=NS_SITE))
    counts: dict[str, list[int]] = {"in": [], "out": []}
    for item in data["nftables"]:
        rule = item.get("rule")
        if rule is None:
            continue
        for expr in rule["expr"]:
            if "counter" in expr:
                counts[rule["chain"]].append(int(expr["counter"]["packets"]))
    return {"queries_in": counts["in"][0], "queries_dropped": counts["in"][1],
            "answers_out": counts["out"][0], "answers_dropped": counts["out"][1]}


# -- the site -----------------------------------------------------------------------------

async def serve_site() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def wait_stdin() -> None:
        sys.stdin.buffer.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait_stdin, daemon=True).start()
    # An answer that nftables drops on the way out fails with EPERM: the Responder logs a
    # warning for each; the drops are what we want here, and nftables counts them.
    logging.getLogger("dgsm.mslookup.responder").setLevel(logging.ERROR)
    responder = Responder(interface=VETH_SITE, handler=lambda _q: ANSWER)
    async with responder:
        print("ready", flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), LIFETIME)
    print(json.dumps({"queries": responder.queries, "answered": responder.answered}),
          flush=True)


# -- the client ---------------------------------------------------------------------------

async def ours(first: int, n: int) -> dict[str, Any]:
    found = wrong = 0
    elapsed: list[float] = []
    async with AsyncResolver(interface=VETH_CLIENT) as resolver:  # default timing, re-sends
        for start in range(0, n, BATCH):
            queries = [f"sip.voice.{first + i}.msisdn" for i in range(start, min(n, start + BATCH))]
            results = await asyncio.gather(*(resolver.resolve(q) for q in queries))
            for r in results:
                elapsed.append(r.elapsed)
                if r.found:
                    found += 1
                    wrong += r.v4 != ANSWER.v4 or r.age != ANSWER.age
        stats = resolver.stats.as_dict()
    return {"n": n, "found": found, "wrong": wrong, "max_elapsed_s": round(max(elapsed), 3),
            "stats": stats, "udp_rcvbuf_errors_so_far": udp_counters()["RcvbufErrors"]}


async def c_client(first: int, n: int, parallel: int) -> dict[str, Any]:
    exe = shutil.which("osmo-mslookup-client")
    if exe is None:
        raise RuntimeError("osmo-mslookup-client not found: apt-get install osmo-mslookup-utils")
    gate = asyncio.Semaphore(parallel)
    outcome: dict[str, int] = {"found": 0, "not_found": 0, "wrong": 0, "failed": 0}

    async def one(i: int) -> None:
        async with gate:
            proc = await asyncio.create_subprocess_exec(
                exe, "-f", "json", "-t", "1000", "-T", "1000", f"sip.voice.{first + i}.msisdn",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                outcome["failed"] += 1
                return
        try:
            line = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            outcome["failed"] += 1
            return
        if line.get("result") == "result":
            ok = line.get("v4") == [IP_SITE, "5060"] and line.get("age") == ANSWER.age
            outcome["found" if ok else "wrong"] += 1
        else:
            outcome["not_found"] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return {"n": n, **outcome, "parallel": parallel,
            "wall_s": round(time.perf_counter() - t0, 2)}


async def run_client(first: int, n_ours: int, n_c: int, parallel: int) -> dict[str, Any]:
    result: dict[str, Any] = {"ours": await ours(first, n_ours)}
    await asyncio.sleep(0.3)  # answers still on their way belong to the lookups above
    result["osmo"] = await c_client(first + 500000, n_c, parallel)
    return result


# -- figures ----------------------------------------------------------------------------

def udp_counters() -> dict[str, int]:
    """This namespace's UDP counters (/proc/net/snmp is per network namespace)."""
    with open("/proc/net/snmp", encoding="ascii") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return dict(zip(rows[0][1:], map(int, rows[1][1:]), strict=True))


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% confidence interval of a share k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def predicted(loss: float, sends: int) -> float:
    """Found share if each packet is lost independently with probability ``loss``."""
    round_trip = (1 - loss) ** 2
    return 1 - (1 - round_trip) ** sends


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) if i else c.ljust(w)
                      for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
    return "\n".join(out)


# -- the run ------------------------------------------------------------------------------

def client_run(first: int, n_ours: int, n_c: int, parallel: int) -> dict[str, Any]:
    cmd = ["nsenter", f"--net=/run/netns/{NS_CLIENT}", sys.executable,
           str(Path(__file__).resolve()), "--role", "client", "--first", str(first),
           "--ours", str(n_ours), "--osmo", str(n_c), "--parallel", str(parallel)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"client run failed: {proc.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main_bench(quick: bool) -> int:
    plan = [(0, 200, 30)] + [(rate, 1000 if quick else 2000, 40 if quick else 300)
                             for rate in (10, 20, 30)]
    parallel = 20 if quick else 30
    for tool in ("ip", "nft", "osmo-mslookup-client"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} not found (apt-get install iproute2 nftables "
                     "osmo-mslookup-utils)")
    runs: list[dict[str, Any]] = []
    site: subprocess.Popen[str] | None = None
    site_counters: dict[str, int] = {}
    try:
        build_topology()
        site = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{NS_SITE}", sys.executable,
             str(Path(__file__).resolve()), "--role", "site"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert site.stdout is not None
        if site.stdout.readline().strip() != "ready":
            raise RuntimeError("the site's responder did not start")
        for i, (rate, n_ours, n_c) in enumerate(plan):
            set_loss(rate)
            t0 = time.perf_counter()
            run = client_run(30000000000 + i * 1000000, n_ours, n_c, parallel)
            run.update(rate=rate, wall_s=round(time.perf_counter() - t0, 1),
                       nft=loss_counters())
            runs.append(run)
            print(f"loss {rate:2d}%: ours {run['ours']['found']}/{n_ours}, "
                  f"osmo-mslookup-client {run['osmo']['found']}/{n_c} "
                  f"({run['wall_s']} s)", flush=True)
    finally:
        if site is not None and site.stdin is not None and site.stdout is not None:
            site.stdin.close()
            try:
                out = site.stdout.read()
                site.wait(10)
                site_counters = json.loads(out.strip().splitlines()[-1])
            except (subprocess.TimeoutExpired, ValueError, IndexError):
                site.kill()
                site.wait()
        remove_topology()

    rows = []
    for run in runs:
        o, c, nft = run["ours"], run["osmo"], run["nft"]
        seen = nft["queries_in"] + nft["answers_out"]
        measured = (nft["queries_dropped"] + nft["answers_dropped"]) / seen if seen else 0.0
        lo_o, hi_o = wilson(o["found"], o["n"])
        lo_c, hi_c = wilson(c["found"], c["n"])
        run["measured_loss"] = round(measured, 4)
        run["ours"]["share"] = round(o["found"] / o["n"], 4)
        run["ours"]["ci95"] = [round(lo_o, 4), round(hi_o, 4)]
        run["osmo"]["share"] = round(c["found"] / c["n"], 4)
        run["osmo"]["ci95"] = [round(lo_c, 4), round(hi_c, 4)]
        sends = 1 + DEFAULT_RESEND  # the first query and the default re-sends
        rows.append([f"{run['rate']}%", f"{measured:.1%}",
                     f"{o['found']}/{o['n']}", f"{o['found'] / o['n']:.2%}",
                     f"{lo_o:.1%}-{hi_o:.1%}", f"{predicted(run['rate'] / 100, sends):.2%}",
                     f"{c['found']}/{c['n']}", f"{c['found'] / c['n']:.1%}",
                     f"{lo_c:.1%}-{hi_c:.1%}", f"{predicted(run['rate'] / 100, 1):.1%}",
                     str(o["wrong"] + c["wrong"])])
    print("found share over a lossy veth link (loss on the site's side, both directions), "
          f"age-5 answers, min_delay 1 s ({os.cpu_count()} cores)")
    print(table(["loss", "nft dropped", "ours found", "share", "95% CI", "predicted",
                 "C client found", "share", "95% CI", "predicted", "wrong"], rows))
    print(f"site responder: {site_counters}")
    target_run = next(r for r in runs if r["rate"] == TARGET_RATE)
    ok = target_run["ours"]["share"] >= TARGET_FOUND
    consistent = target_run["ours"]["ci95"][1] >= TARGET_FOUND
    no_wrong = all(r["ours"]["wrong"] == 0 and r["osmo"]["wrong"] == 0 for r in runs)
    print(f"ours at {TARGET_RATE}% loss: {target_run['ours']['share']:.2%} found "
          f"(target >= {TARGET_FOUND:.0%}): {'PASS' if ok else 'FAIL'}")
    if quick:
        # Even a resolver exactly at the predicted 99.4% falls below 99% in a few percent of
        # short runs; the smoke test fails only when the run is clearly below the target.
        print(f"quick run: 95% CI upper bound {target_run['ours']['ci95'][1]:.2%} "
              f"{'>=' if consistent else '<'} {TARGET_FOUND:.0%}: "
              f"{'consistent with' if consistent else 'clearly below'} the target")
    print(json.dumps({
        "bench": "loss", "quick": quick, "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "runs": runs, "site": site_counters,
        "targets": {"rate": TARGET_RATE, "found": TARGET_FOUND},
        "pass": {"found_at_20": ok, "ci_reaches_target": consistent, "no_wrong": no_wrong},
    }))
    return 0 if (consistent if quick else ok) and no_wrong else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run (CI smoke test)")
    parser.add_argument("--role", choices=("site", "client"), help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--ours", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--osmo", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--parallel", type=int, default=20, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role is not None:  # internal: one end of the link, started by the run above
        veth = VETH_SITE if args.role == "site" else VETH_CLIENT
        if os.environ.get(MARK) != Path(__file__).name or interfaces() != {"lo", veth}:
            sys.exit("bench: --role runs only inside the benchmark's own namespaces")
        if args.role == "site":
            asyncio.run(serve_site())
        else:
            result = asyncio.run(run_client(args.first, args.ours, args.osmo, args.parallel))
            print(json.dumps(result))
        return
    enter_private_namespaces()
    sys.exit(main_bench(args.quick))


if __name__ == "__main__":
    main()
