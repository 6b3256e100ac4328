"""Loss with three REAL OsmoHLR sites of different ages behind the lossy link (issue 13).

bench/loss.py's topology, with three real ``osmo-hlr`` processes as the far end instead of one
Python responder. Everything runs in one private user + network + mount namespace (the
script re-executes itself under ``unshare -rnm``; a tmpfs on /run holds the namespace names)::

    dgsmbench-client                      dgsmbench-site
    veth-c 10.99.0.2/24  <--- veth --->   veth-s 10.99.0.1/24
    AsyncResolver(interface="veth-c")     three osmo-hlr (GSUP/VTY on 127.0.0.2-4), logging
    a passive listener on the group         at notice; each knows every subscriber, each
      (what crossed the link, and when)     with a DIFFERENT age (youngest varies)
                                          nftables on veth-s: drop N% of the queries arriving
                                            and N% of the answers leaving, per datagram

Subscribers are provisioned as bench/osmohlr_burst.py does (one attached over a real GSUP
Location Updating per HLR, its row cloned with a backdated ``last_lu_seen``): for MSISDN m,
HLR k's record is ``10 + 20 * ((m + k) % 3)`` s old. Every lookup asks for a MSISDN not asked
before, so no answer of one lookup can be taken for another's.

A lookup is **right** only if the youngest HLR's service address and age won; an older site
is a failure (a call or SMS to the wrong village), and so is "not found". Lookups start at a
steady ``--rate`` per second (default 100, below the resolver's send_rate at every copy
count tried: the figures are about loss, not about bursts); ``--burst`` starts them all at once,
a bulk SMS over the lossy link, where the resolver's bucket and not the schedule paces the
copies (bench/osmohlr_burst.py does bursts without loss).

Per configuration (``--configs``: ``default`` = the resolver's defaults, ``R`` = resend=R,
``R/S`` = resend=R and resend_interval=S seconds) and loss rate (20%: 1,000 lookups, 30%: 500;
``--quick``: 300 and 150), the table gives: youngest / older / not found, the share with its
95% Wilson interval, what independent loss predicts for the copies planned and for the copies
that really left (``1-(1-(1-p)^2)^k``), query datagrams per lookup (``stats.queries_sent``
delta / lookups), and the bytes the link carried per lookup (nftables' byte counters, IP
packets). The passive listener sees every copy we sent (multicast loop) and every answer that
crossed the link, with kernel timestamps, so each failure is explained: the youngest site's
answers all lost on the link, or heard in time and still not chosen, or heard too late.
OsmoHLR's socket drops (/proc/PID/net/udp of the site namespace) say whether a real HLR
overflowed.

``--fade-ms B``: instead of losing each datagram with probability N%, the link is down (both
ways) N% of the time in exponential spells of mean B ms, as a wifi hop fades; every
configuration of a run meets the same fades, the prediction is the two-state model's (the
link down at every copy), and no target applies.

Targets (issue 13), at the default settings: youngest wins in >= 99.9% at 20% loss (at most
2 failures in 1,000) and >= 99% at 30% (at most 7 in 500), at most 8 query datagrams per
lookup on average. ``--quick`` judges the share by its Wilson interval instead (a short run
fails only when clearly below). Exit status 0 only if every target of every configuration
run passes. The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loss import (  # noqa: E402
    IP_CLIENT,
    IP_SITE,
    LIFETIME,
    MARK,
    MDNS_PORT,
    NS_CLIENT,
    NS_SITE,
    VETH_CLIENT,
    VETH_SITE,
    build_topology,
    enter_private_namespaces,
    interfaces,
    predicted,
    remove_topology,
    set_loss,
    sh,
    table,
    wilson,
)
from osmohlr_burst import (  # noqa: E402
    FIRST_MSISDN,
    PROVISIONED,
    SITES,
    age,
    service,
    start_hlrs,
    youngest,
)

from dgsm_integrations.mslookup import AsyncResolver, Endpoint  # noqa: E402
from dgsm_integrations.mslookup.engine import DEFAULT_RESEND  # noqa: E402  (the prediction only)

GROUP = "239.192.23.42"
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python does not export it
#: rate -> (lookups, at most this many failures, at least this share): issue 13's targets
TARGETS: dict[int, tuple[int, int, float]] = {20: (1000, 2, 0.999), 30: (500, 7, 0.99)}
QUICK_LOOKUPS = {20: 300, 30: 150}
MAX_DATAGRAMS = 8.0

LINGER = 0.5  # after the last lookup: answers to its last copies still cross the link


# -- namespaces ---------------------------------------------------------------------------

def link_counters() -> dict[str, int]:
    """Packets and bytes (IP) seen and dropped by loss.py's nftables rules, per direction."""
    data = json.loads(sh("nft", "-j", "list", "table", "inet", "dgsmbench_loss", ns=NS_SITE))
    counts: dict[str, list[tuple[int, int]]] = {"in": [], "out": []}
    for item in data["nftables"]:
        rule = item.get("rule")
        if rule is None:
            continue
        for expr in rule["expr"]:
            if "counter" in expr:
                c = expr["counter"]
                counts[rule["chain"]].append((int(c["packets"]), int(c["bytes"])))
    (q_in, qb_in), (q_drop, qb_drop) = counts["in"]
    (a_out, ab_out), (a_drop, ab_drop) = counts["out"]
    return {"queries_in": q_in, "queries_dropped": q_drop, "query_bytes": qb_in,
            "query_bytes_dropped": qb_drop, "answers_out": a_out, "answers_dropped": a_drop,
            "answer_bytes": ab_out, "answer_bytes_dropped": ab_drop}


def ns_udp(pid: int) -> dict[str, int]:
    """UDP drops in the network namespace of process ``pid``: the drops column of every
    socket there (/proc/PID/net/udp) and the namespace's RcvbufErrors (/proc/PID/net/snmp)."""
    drops = 0
    with open(f"/proc/{pid}/net/udp", encoding="ascii") as f:
        next(f)
        drops = sum(int(line.split()[12]) for line in f)
    with open(f"/proc/{pid}/net/snmp", encoding="ascii") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    snmp = dict(zip(rows[0][1:], map(int, rows[1][1:]), strict=True))
    return {"socket_drops": drops, "rcvbuf_errors": snmp["RcvbufErrors"]}


def set_fades() -> None:
    """Like loss.py's ``set_loss``, but nothing is dropped at random: the link drops every
    mslookup datagram, both ways, while port 4266 is in the set ``down`` (a fade, see
    :class:`Fades`). Same table and counters, so :func:`link_counters` reads both."""
    with contextlib.suppress(RuntimeError):
        sh("nft", "delete", "table", "inet", "dgsmbench_loss", ns=NS_SITE)
    match_in = f'iifname "{VETH_SITE}" ip saddr != {IP_SITE} udp dport {MDNS_PORT}'
    match_out = f'oifname "{VETH_SITE}" udp dport {MDNS_PORT}'
    sh("nft", "-f", "-", ns=NS_SITE, stdin=f"""
table inet dgsmbench_loss {{
    set down {{ type inet_service; }}
    chain in {{
        type filter hook input priority 0; policy accept;
        {match_in} counter
        {match_in} udp dport @down counter drop
    }}
    chain out {{
        type filter hook output priority 0; policy accept;
        {match_out} counter
        {match_out} udp dport @down counter drop
    }}
}}
""")


class Fades:
    """Loss in bursts, as a wifi link fades: the link is down for exponentially distributed
    spells of mean ``mean_down`` seconds and up in between for spells of mean
    ``mean_down * (1 - share) / share``, so that it is down ``share`` of the time. Runs on a
    thread while a batch of lookups runs; each change is one ``nft`` command."""

    def __init__(self, share: float, mean_down: float, seed: int) -> None:
        self.share, self.mean_down = share, mean_down
        self.random = random.Random(seed)
        self.stop = threading.Event()
        self.down_s = self.total_s = 0.0
        self.spells = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _set(self, down: bool) -> None:
        verb = "add" if down else "delete"
        sh("nft", verb, "element", "inet", "dgsmbench_loss", "down", f"{{ {MDNS_PORT} }}",
           ns=NS_SITE)

    def _run(self) -> None:
        mean_up = self.mean_down * (1 - self.share) / self.share
        down = self.random.random() < self.share
        t0 = time.monotonic()
        while not self.stop.is_set():
            if down:
                self._set(True)
                self.spells += 1
            spell = self.random.expovariate(1 / (self.mean_down if down else mean_up))
            start = time.monotonic()
            self.stop.wait(spell)  # the schedule of the fades, ended early by stop
            if down:
                self.down_s += time.monotonic() - start
                self._set(False)
            down = not down
        self.total_s = time.monotonic() - t0

    def __enter__(self) -> Fades:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


# -- the sites: three real OsmoHLRs -------------------------------------------------------

def serve_sites(n: int) -> None:
    """Start three OsmoHLRs here (the site namespace), provision ``n`` subscribers each,
    print one JSON line (``ready``), and stop them when stdin closes."""
    stop = threading.Event()

    def wait_stdin() -> None:
        sys.stdin.buffer.read()
        stop.set()

    threading.Thread(target=wait_stdin, daemon=True).start()
    with tempfile.TemporaryDirectory(prefix="dgsm-loss3-") as tmp, \
            contextlib.ExitStack() as stack:
        t = time.perf_counter()
        hlrs = start_hlrs(stack, Path(tmp), n)
        version = subprocess.run(["osmo-hlr", "--version"], capture_output=True, text=True,
                                 check=False).stdout.split("\n")[0].strip()
        print(json.dumps({"ready": True, "provisioned": PROVISIONED, "version": version,
                          "provision_s": round(time.perf_counter() - t, 1)}), flush=True)
        stop.wait(LIFETIME)
        for k, hlr in enumerate(hlrs):
            if not hlr.running:
                print(json.dumps({"dead": k}), flush=True)


# -- the client ---------------------------------------------------------------------------

@dataclass(slots=True)
class Heard:
    """What the passive listener received: our own query copies (multicast loop) and the
    answers that crossed the link, with the kernel's receive time."""

    t: float
    msisdn: int
    is_answer: bool
    site: int | None = None  # which HLR (by the service address it names)
    age: int | None = None
    size: int = 0


def _name(data: bytes, pos: int) -> tuple[list[bytes], int]:
    labels: list[bytes] = []
    while data[pos]:
        n = data[pos]
        labels.append(data[pos + 1:pos + 1 + n])
        pos += 1 + n
    return labels, pos + 1


def parse_heard(t: float, data: bytes) -> Heard | None:
    """Decode just enough of an mslookup datagram (no compression, as OsmoHLR sends)."""
    try:
        _, flags, qd, an = struct.unpack_from("!HHHH", data)
        labels, pos = _name(data, 12)
        msisdn = int(labels[2])
        if not flags & 0x8000:
            return Heard(t, msisdn, False, size=len(data)) if qd == 1 else None
        site: int | None = None
        rec_age: int | None = None
        pos = 12
        for _ in range(an):
            _, pos = _name(data, pos)
            rtype, _, _, rdlen = struct.unpack_from("!HHIH", data, pos)
            rdata = data[pos + 10:pos + 10 + rdlen]
            pos += 10 + rdlen
            if rtype == 1 and rdlen == 4:
                ip = socket.inet_ntoa(rdata)
                site = next((k for k in range(SITES) if service(k)[0] == ip), None)
            elif rtype == 16 and rdata[1:5] == b"age=":
                rec_age = int(rdata[5:1 + rdata[0]])
        return Heard(t, msisdn, True, site, rec_age, len(data))
    except (struct.error, IndexError, ValueError):
        return None


def open_listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind((GROUP, MDNS_PORT))
    mreq = socket.inet_aton(GROUP) + socket.inet_aton(IP_CLIENT)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    sock.setblocking(False)
    return sock


def drain_listener(sock: socket.socket, into: list[tuple[float, bytes]]) -> None:
    while True:
        try:
            data, anc, _, _ = sock.recvmsg(2048, socket.CMSG_SPACE(16))
        except BlockingIOError:
            return
        t = time.time()
        for level, kind, value in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                sec, nsec = array.array("q", value[:16])
                t = sec + nsec / 1e9
        into.append((t, data))


async def run_lookups(first: int, n: int, rate: float, kwargs: dict[str, Any]
                      ) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    raw: list[tuple[float, bytes]] = []
    listener = open_listener()
    loop.add_reader(listener.fileno(), drain_listener, listener, raw)
    lookups: list[dict[str, Any]] = []
    try:
        async with AsyncResolver(interface=VETH_CLIENT, **kwargs) as resolver:
            await resolver.open()
            stats0 = resolver.stats.as_dict()
            print("go", flush=True)  # the parent starts its fades (if any) now
            t0 = loop.time() + 0.05

            async def one(i: int) -> None:
                await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))  # a schedule
                m = first + i
                start = time.time()
                result = await resolver.resolve(f"sip.voice.{m}.msisdn")
                site = next((k for k in range(SITES)
                             if result.v4 == Endpoint(*service(k))), None)
                lookups.append({"m": m, "start": start, "elapsed": result.elapsed,
                                "found": result.found, "site": site, "age": result.age})

            cpu0 = time.process_time()
            await asyncio.gather(*(one(i) for i in range(n)))
            cpu = time.process_time() - cpu0
            stats = {k: v - stats0.get(k, 0) for k, v in resolver.stats.as_dict().items()}
        # Answers to the last lookups' last copies may still cross the link: let them in,
        # so that the listener can tell "lost" from "late".
        await asyncio.sleep(LINGER)
        drain_listener(listener, raw)
    finally:
        loop.remove_reader(listener.fileno())
        listener.close()
    heard = [h for h in (parse_heard(t, d) for t, d in raw) if h is not None]
    return {"lookups": lookups, "heard": [[h.t, h.msisdn, h.is_answer, h.site, h.age, h.size]
                                          for h in heard],
            "stats": stats, "cpu_s": round(cpu, 3),
            "client_udp": ns_udp(os.getpid())}


# -- analysis -----------------------------------------------------------------------------

def fade_success(loss: float, mean_down: float, copy_times: list[float]) -> float:
    """Chance that a lookup whose copies left at ``copy_times`` gets through a link that is
    down ``loss`` of the time in exponential spells of mean ``mean_down`` s (a two-state
    Markov chain): it fails only if the link is down at every copy (an answer follows its
    query within ms, so it crosses when the query did)."""
    rate = 1 / (mean_down * (1 - loss))  # how fast the chain forgets its state
    down_all = loss
    for a, b in itertools.pairwise(sorted(copy_times)):
        down_all *= loss + (1 - loss) * math.exp(-(b - a) * rate)
    return 1 - down_all


def analyse(raw: dict[str, Any], rate: int, copies_planned: int, since: float,
            fade_s: float | None = None) -> dict[str, Any]:
    """Judge every lookup and explain every failure from what the listener heard.
    Predictions assume independent loss per datagram, or with ``fade_s`` fades of that mean
    length (:func:`fade_success`)."""
    loss = rate / 100
    per: dict[int, dict[str, Any]] = {}
    for t, m, is_answer, site, rec_age, size in raw["heard"]:
        entry = per.setdefault(m, {"copies": [], "answers": []})
        if is_answer:
            entry["answers"].append((t, site, rec_age, size))
        else:
            entry["copies"].append((t, size))
    ok = older = not_found = 0
    causes = {"youngest_all_lost": 0, "youngest_heard_in_time": 0, "youngest_heard_late": 0}
    copies_hist: dict[int, int] = {}
    young_hist: dict[int, int] = {}  # answers of the youngest site heard in time, per lookup
    pred_real = 0.0
    late_answers = 0
    disp_num = disp_den = silent_expected = 0.0
    silent_seen = 0
    offsets: list[float] = []  # youngest's answers: when they arrived, after the lookup began
    failures: list[dict[str, Any]] = []
    for lk in raw["lookups"]:
        m = lk["m"]
        k = youngest(m)
        entry = per.get(m, {"copies": [], "answers": []})
        end = lk["start"] + lk["elapsed"]
        copies = len(entry["copies"])
        copies_hist[copies] = copies_hist.get(copies, 0) + 1
        if fade_s is None:
            pred_real += 1 - (1 - (1 - loss) ** 2) ** copies
        else:
            pred_real += fade_success(loss, fade_s, [t for t, _ in entry["copies"]])
        young = [t for t, s, _, _ in entry["answers"] if s == k]
        in_time = [t for t in young if t <= end]
        late_answers += sum(1 for t, _, _, _ in entry["answers"] if t > end)
        offsets += [t - lk["start"] for t in young]
        young_hist[len(in_time)] = young_hist.get(len(in_time), 0) + 1
        # Independence, copy by copy: the youngest's answers heard vs Binomial(k, (1-p)^2).
        q = (1 - loss) ** 2
        disp_num += (len(in_time) - copies * q) ** 2
        disp_den += copies * q * (1 - q)
        # Did the youngest HLR stay silent for a copy the other HLRs answered (so the copy
        # reached the site)? Each answer belongs to the last copy sent before it (copies are
        # >= 100 ms apart, answers come back within a few ms). With independent loss the
        # youngest's answer to such a copy is lost with probability p, so a lookup with E
        # such copies and none answered by the youngest has probability p^E.
        sent = sorted(t for t, _ in entry["copies"])
        reached: dict[int, set[int | None]] = {}
        for t, s, _, _ in entry["answers"]:
            i = max((j for j, c in enumerate(sent) if c <= t + 0.001), default=None)
            if i is not None:
                reached.setdefault(i, set()).add(s)
        evidenced = [who for who in reached.values() if who - {k}]
        if evidenced:
            silent_expected += loss ** len(evidenced)
            silent_seen += not any(k in who for who in evidenced)
        right = (lk["found"] and lk["site"] == k and lk["age"] is not None
                 and 0 <= lk["age"] - age(k, m) <= since + 2)
        if right:
            ok += 1
            continue
        if lk["found"]:
            older += 1
        else:
            not_found += 1
        cause = ("youngest_heard_in_time" if in_time else
                 "youngest_heard_late" if young else "youngest_all_lost")
        causes[cause] += 1
        failures.append({"m": m, "cause": cause, "won": lk["site"], "copies": copies,
                         "copy_offsets_ms": [round((t - lk["start"]) * 1000)
                                             for t, _ in entry["copies"]],
                         "answers_ms": [[round((t - lk["start"]) * 1000), s]
                                        for t, s, _, _ in entry["answers"]],
                         "elapsed_ms": round(lk["elapsed"] * 1000)})
    n = len(raw["lookups"])
    mean_copies = sum(c * v for c, v in copies_hist.items()) / n if n else 0.0
    # Under independent loss, the youngest's answers heard per lookup are Binomial(k, (1-p)^2):
    # compare the share with none (the failures) and the mean with what that predicts.
    heard_mean = sum(c * v for c, v in young_hist.items()) / n if n else 0.0
    return {
        "n": n, "youngest": ok, "older_site": older, "not_found": not_found,
        "failures": n - ok, "share": round(ok / n, 5) if n else 0.0,
        "ci95": [round(x, 5) for x in wilson(ok, n)],
        "predicted_planned": round(predicted(loss, copies_planned), 5),
        "predicted_sent": round(pred_real / n, 5) if n else 0.0,
        "expected_failures_sent": round(n - pred_real, 2),
        "copies_per_lookup_heard": round(mean_copies, 3), "copies_hist": copies_hist,
        "youngest_answers_in_time_hist": young_hist,
        "youngest_answers_in_time_mean": round(heard_mean, 3),
        "youngest_answers_expected_mean": round(mean_copies * (1 - loss) ** 2, 3),
        # ~1 if the youngest's answers are lost independently copy by copy; > 1: correlated
        "dispersion": round(disp_num / disp_den, 3) if disp_den else None,
        # lookups where the youngest answered none of the copies that reached the site
        "youngest_silent_seen": silent_seen, "youngest_silent_expected": round(silent_expected, 2),
        "causes": causes, "late_answers": late_answers,
        "youngest_answer_latest_ms": round(max(offsets) * 1000) if offsets else None,
        "failure_detail": failures[:20],
    }


# -- the run ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Config:
    label: str
    resend: int | None
    interval: float | None

    @classmethod
    def parse(cls, text: str) -> Config:
        if text == "default":
            return cls("default", None, None)
        resend, _, interval = text.partition("/")
        return cls(text, int(resend), float(interval) if interval else None)

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.resend is not None:
            out["resend"] = self.resend
        if self.interval is not None:
            out["resend_interval"] = self.interval
        return out

    @property
    def copies(self) -> int:
        return (DEFAULT_RESEND if self.resend is None else self.resend) + 1


def client_run(first: int, n: int, rate: float, config: Config,
               fades: Fades | None = None) -> dict[str, Any]:
    """One batch of lookups in the client namespace. The client says ``go`` just before its
    first lookup; the fades (if any) start then, so that every configuration of a run meets
    the same fades at the same moments of its batch."""
    cmd = ["nsenter", f"--net=/run/netns/{NS_CLIENT}", sys.executable,
           str(Path(__file__).resolve()), "--role", "client", "--first", str(first),
           "--n", str(n), "--rate", str(rate), "--kwargs", json.dumps(config.kwargs())]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        go = proc.stdout.readline()
        with fades if fades is not None and go == "go\n" else contextlib.nullcontext():
            try:
                out, err = proc.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
    if proc.returncode != 0 or go != "go\n":
        raise RuntimeError(f"client run failed: {err.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def pace(args: argparse.Namespace) -> str:
    return "all at once (--burst)" if args.burst else f"at {args.rate:g}/s"


def judge(row: dict[str, Any], quick: bool) -> dict[str, bool]:
    n_target, max_fail, share = TARGETS[row["rate"]]
    if row["n"] == n_target and not quick:
        found_ok = row["failures"] <= max_fail
    else:
        found_ok = row["ci95"][1] >= share  # a short run: not clearly below the target
    return {"youngest": found_ok, "datagrams": row["datagrams_per_lookup"] <= MAX_DATAGRAMS}


def main_bench(args: argparse.Namespace) -> int:
    configs = [Config.parse(c) for c in args.configs]
    default_sizes = QUICK_LOOKUPS if args.quick else {r: t[0] for r, t in TARGETS.items()}
    sizes: dict[int, int] = args.lookups or default_sizes
    plan = [(run, c, rate) for run in range(args.runs) for c in configs for rate in args.loss]
    total = sum(sizes[rate] for _, _, rate in plan)
    estimate = total / args.rate + 3 * len(plan)  # lookups, plus start-up and linger per row
    if estimate > 0.9 * LIFETIME:
        sys.exit(f"bench: this plan takes about {estimate:.0f} s, and the OsmoHLRs stop after "
                 f"{LIFETIME:.0f} s: run fewer --configs or --runs at a time")
    load0 = os.getloadavg()
    build_topology()
    sites: subprocess.Popen[str] | None = None
    rows: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    try:
        sites = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{NS_SITE}", sys.executable,
             str(Path(__file__).resolve()), "--role", "sites", "--n", str(total)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert sites.stdout is not None
        line = sites.stdout.readline()
        if not line:
            raise RuntimeError("the OsmoHLRs did not start")
        info = json.loads(line)
        provisioned = {int(k): v for k, v in info["provisioned"].items()}
        print(f"{SITES} x {info['version']}, {total} subscribers each (ages 10/30/50 s, "
              f"youngest varies), provisioned in {info['provision_s']} s; lookups "
              f"{pace(args)}; load {load0[0]:.2f}", flush=True)
        first = FIRST_MSISDN
        for run, config, rate in plan:
            n = sizes[rate]
            fades: Fades | None = None
            if args.fade_ms is None:
                set_loss(rate)
            else:
                set_fades()
                # the same fades for every configuration of this run and loss rate
                fades = Fades(rate / 100, args.fade_ms / 1000, seed=run * 1000 + rate)
            udp0 = ns_udp(sites.pid)
            t0 = time.perf_counter()
            raw = client_run(first, n, args.rate, config, fades)
            wall = time.perf_counter() - t0
            first += n
            link, udp1 = link_counters(), ns_udp(sites.pid)
            since = time.monotonic() - min(provisioned.values())
            row = analyse(raw, rate, config.copies, since,
                          None if args.fade_ms is None else args.fade_ms / 1000)
            stats = raw["stats"]
            seen = link["queries_in"] + link["answers_out"]
            row.update(
                loss_model="independent" if fades is None else f"fades {args.fade_ms:g} ms",
                fade_time_share=None if fades is None else round(
                    fades.down_s / max(fades.total_s, 1e-9), 4),
                fade_spells=None if fades is None else fades.spells,
                run=run + 1, config=config.label, resend=config.resend,
                resend_interval=config.interval, copies_planned=config.copies, rate=rate,
                wall_s=round(wall, 1), loadavg=round(os.getloadavg()[0], 2),
                datagrams_per_lookup=round(stats["queries_sent"] / n, 3),
                stats={k: v for k, v in stats.items() if v}, client_cpu_s=raw["cpu_s"],
                link=link, measured_loss=round(
                    (link["queries_dropped"] + link["answers_dropped"]) / seen, 4) if seen
                else 0.0,
                link_bytes_per_lookup=round(
                    (link["query_bytes"] + link["answer_bytes"]) / n),
                query_bytes_per_lookup=round(link["query_bytes"] / n),
                answer_bytes_per_lookup=round(link["answer_bytes"] / n),
                answers_sent_per_query_heard=round(
                    link["answers_out"] / max(1, link["queries_in"] - link["queries_dropped"]),
                    3),
                osmohlr_socket_drops=udp1["socket_drops"] - udp0["socket_drops"],
                site_rcvbuf_errors=udp1["rcvbuf_errors"] - udp0["rcvbuf_errors"],
                client_rcvbuf_errors=raw["client_udp"]["rcvbuf_errors"])
            row["pass"] = judge(row, args.quick) if fades is None else {}
            rows.append(row)
            print(f"run {run + 1} {config.label:>8} loss {rate}%: youngest {row['youngest']}/"
                  f"{n}, older {row['older_site']}, not found {row['not_found']}; "
                  f"{row['datagrams_per_lookup']} queries/lookup; causes {row['causes']}; "
                  f"HLR drops {row['osmohlr_socket_drops']}; {row['wall_s']} s, "
                  f"load {row['loadavg']}", flush=True)
    finally:
        if sites is not None and sites.stdin is not None and sites.stdout is not None:
            sites.stdin.close()
            try:
                rest = sites.stdout.read()
                sites.wait(30)
                if '"dead"' in rest:
                    print(f"an OsmoHLR died during the run: {rest.strip()}", flush=True)
            except subprocess.TimeoutExpired:
                sites.kill()
                sites.wait()
        remove_topology()

    print()
    print(f"youngest of three real OsmoHLRs over a lossy veth link (N% each way), lookups "
          f"{pace(args)}, min_delay 1 s ({os.cpu_count()} cores, load "
          f"{load0[0]:.2f} -> {os.getloadavg()[0]:.2f})")
    print(table(
        ["run", "config", "loss", "nft", "youngest", "older", "none", "share", "95% CI",
         "pred k", "pred sent", "copies", "q/lookup", "skipped", "B/lookup", "disp",
         "silent", "HLR drops", "target"],
        [[str(r["run"]), r["config"], f"{r['rate']}%", f"{r['measured_loss']:.1%}",
          f"{r['youngest']}/{r['n']}", str(r["older_site"]), str(r["not_found"]),
          f"{r['share']:.2%}", f"{r['ci95'][0]:.2%}-{r['ci95'][1]:.2%}",
          f"{r['predicted_planned']:.2%} ({r['copies_planned']})",
          f"{r['predicted_sent']:.2%}", f"{r['copies_per_lookup_heard']:.2f}",
          f"{r['datagrams_per_lookup']:.2f}", str(r["stats"].get("resends_skipped", 0)),
          str(r["link_bytes_per_lookup"]), f"{r['dispersion']}",
          f"{r['youngest_silent_seen']}/{r['youngest_silent_expected']}",
          str(r["osmohlr_socket_drops"]),
          "n/a" if not r["pass"] else "PASS" if all(r["pass"].values()) else
          "FAIL " + ",".join(k for k, v in r["pass"].items() if not v)] for r in rows]))
    print("pred k: 1-(1-(1-p)^2)^k for the copies configured; pred sent: the same per lookup "
          "for the copies the listener saw leave; copies: mean copies seen per lookup; "
          "skipped: re-sends the pacer dropped;\nB/lookup: IP bytes on the link (queries and "
          "answers, as sent); disp: dispersion of the youngest's answers heard per lookup "
          "against Binomial(copies, (1-p)^2) (1: independent);\nsilent: lookups where the "
          "youngest answered none of the copies another HLR answered, seen/expected (p^E)")
    for r in rows:
        if r["failures"]:
            print(f"run {r['run']} {r['config']} {r['rate']}%: failures {r['causes']}; "
                  f"youngest's answers heard in time per lookup "
                  f"{r['youngest_answers_in_time_mean']}"
                  f" (independent loss: {r['youngest_answers_expected_mean']}), histogram "
                  f"{dict(sorted(r['youngest_answers_in_time_hist'].items()))}")
    all_ok = all(all(r["pass"].values()) for r in rows)
    if args.fade_ms is not None:
        print(f"loss in fades of mean {args.fade_ms:g} ms (the link down N% of the time): "
              "'pred k' assumes independent loss; 'pred sent' is the fade model's (down at "
              "every copy); the targets do not apply")
    for rate in args.loss if args.fade_ms is None else ():
        n_t, max_f, share = TARGETS[rate]
        for c in configs:
            mine = [r for r in rows if r["config"] == c.label and r["rate"] == rate]
            y = all(r["pass"]["youngest"] for r in mine)
            d = all(r["pass"]["datagrams"] for r in mine)
            how = (f"at most {max_f} failures in {n_t}"
                   if not args.quick and all(r["n"] == n_t for r in mine)
                   else "short run: the 95% interval reaches it")
            print(f"{c.label}, {rate}% loss: youngest >= {share:.1%} ({how}): "
                  f"{'PASS' if y else 'FAIL'} "
                  f"({', '.join(str(r['failures']) for r in mine)} failures in "
                  f"{', '.join(str(r['n']) for r in mine)}); <= {MAX_DATAGRAMS:g} queries per "
                  f"lookup: {'PASS' if d else 'FAIL'} "
                  f"({', '.join(str(r['datagrams_per_lookup']) for r in mine)})")
    print(json.dumps({
        "bench": "loss_osmohlr", "quick": args.quick, "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "osmohlr": info.get("version"),
        "rate": args.rate, "burst": args.burst, "loadavg": [load0[0], os.getloadavg()[0]],
        "targets": {str(k): {"lookups": v[0], "max_failures": v[1], "share": v[2]}
                    for k, v in TARGETS.items()} | {"max_datagrams": MAX_DATAGRAMS},
        "rows": rows, "pass": all_ok}))
    return 0 if all_ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="300 and 150 lookups, judged by the 95%% interval")
    parser.add_argument("--configs", nargs="+", default=["default"], metavar="CFG",
                        help="default | RESEND | RESEND/INTERVAL_S (default: default)")
    parser.add_argument("--loss", nargs="+", type=int, default=[20, 30], choices=(20, 30))
    parser.add_argument("--lookups", type=lambda s: dict.fromkeys(TARGETS, int(s)),
                        default=None, help="lookups per loss rate (default 1000 / 500)")
    parser.add_argument("--rate", type=float, default=100.0, help="lookups started per second")
    parser.add_argument("--burst", action="store_true",
                        help="start all lookups of a loss rate at once (a bulk SMS over the "
                        "lossy link), instead of at --rate")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--fade-ms", type=float, default=None, metavar="MS",
                        help="loss in fades instead of per datagram: the link is down N%% of "
                        "the time, in spells of mean MS ms (no target applies)")
    parser.add_argument("--role", choices=("sites", "client"), help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--kwargs", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role is not None:  # internal: one end of the link, started by the run above
        veth = VETH_SITE if args.role == "sites" else VETH_CLIENT
        if os.environ.get(MARK) != Path(__file__).name or interfaces() != {"lo", veth}:
            sys.exit("bench: --role runs only inside the benchmark's own namespaces")
        if args.role == "sites":
            serve_sites(args.n)
        else:
            kwargs = json.loads(args.kwargs)
            print(json.dumps(asyncio.run(run_lookups(args.first, args.n, args.rate, kwargs))))
        return
    if not 1 <= args.rate <= 1000 or args.runs < 1:
        sys.exit("bench: --rate must be 1..1000 lookups/s, --runs at least 1")
    if args.burst:
        args.rate = 1e6  # every lookup within a few ms: the bucket, not the schedule, paces
    for tool, package in (("ip", "iproute2"), ("nft", "nftables"), ("osmo-hlr", "osmo-hlr"),
                          ("unshare", "util-linux"), ("nsenter", "util-linux")):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} not found (apt-get install {package})")
    enter_private_namespaces(__file__)
    sys.exit(main_bench(args))


if __name__ == "__main__":
    main()
