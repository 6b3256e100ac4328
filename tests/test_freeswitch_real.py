"""The real-FreeSWITCH tier: both ways against a real FreeSWITCH and real OsmoHLR sites.

Opt-in: ``DGSM_FREESWITCH=<install prefix> bash .ci/test -m freeswitch`` (FreeSWITCH has no
Debian package, so CI cannot have one; without the variable this module is skipped with one
line, also under CI -- the one exception to the real-peer rule, see DESIGN.md).

What runs, all inside the test run's private network namespace, on 127.0.0.x:

- two real OsmoHLRs (villages A and B) with subscribers attached by real GSUP Location
  Updatings; MSISDN 1001 is at both, younger at B, so its calls must reach B's SIP endpoint
  and nothing A's;
- a SIP endpoint per village (``dgsm_integrations.lab.sip.SipUas``) where OsmoHLR says the
  ``sip.voice`` service is;
- a real FreeSWITCH with a minimal configuration (``tests/peers/freeswitch.py``) whose public
  context is the shipped ``freeswitch/dialplan/public.xml``, included first as the docs say,
  before a copy of the stock ``public_extensions`` (which would take 1001 elsewhere);
- ``dgsm-fs-esl`` as its own process, as the systemd unit runs it; mod_python3 with the
  shim in FreeSWITCH's scripts folder, finding the package through ``DGSM_VENV``.

Calls come from a SIP caller (the answer codes: 200, 404, 484, 503) and from loopback
originates over the inbound event socket. The way is chosen per test with the global
variable ``dgsm_way``, which the shipped dialplan reads.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dgsm_integrations.lab.sip import CallResult, SipUas, call
from dgsm_integrations.mslookup import Query, Record, Responder

from .conftest import LO
from .peers.freeswitch import ENV, FreeSwitch, Inbound, originate_cause, prefix_from_env
from .peers.osmohlr import OsmoHlr

PREFIX = prefix_from_env()
if PREFIX is None:
    pytest.skip(f"real-FreeSWITCH tier not run: set {ENV}=<FreeSWITCH install prefix> "
                "(docs/freeswitch.md, 'Checking an installation')", allow_module_level=True)

pytestmark = [pytest.mark.freeswitch, pytest.mark.slow]
T = TypeVar("T")

WAYS = ["python", "esl"]
SIP_PORT, ESL_PORT = 5080, 8021
SITE_A, SITE_B = "127.0.0.21", "127.0.0.22"
#: (IMSI, MSISDN): 1001 at both sites (B younger), 1002 only at A.
SUB_1001, SUB_1002 = ("901700000001001", "1001"), ("901700000001002", "1002")
MIN_DELAY = 0.5
CAUSE_SIP = {"UNALLOCATED_NUMBER": 404, "INVALID_NUMBER_FORMAT": 484,
             "NORMAL_TEMPORARY_FAILURE": 503}
#: Hostile destinations a SIP caller can put in a well-formed request URI.
HOSTILE_SIP = ["10a1", "abc", "1" * 40, "+1001", "1001*", "1001.5", "1001!", "1'or'1",
               "1001%2C2", "1001(x)", "-1", "1001~1", "x1001"]
#: Hostile destinations through a loopback originate (no '/', ',', '|' or '@': they are
#: FreeSWITCH's own dial-string syntax and never reach the dialplan).
HOSTILE_LOOPBACK = ["10a1", "zzz", "1" * 16, "+1001", "1001#", "1001*1", "1.001", "(1001)",
                    "1001-", "%31001", "1001_", "٣٣٣", "1001;x"]


class Loop:
    """An asyncio loop on a thread: SIP endpoints and callers live there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class EslProcess:
    """``dgsm-fs-esl`` as the unit runs it (its own process), logging to a file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = Path(sys.prefix) / "bin" / "dgsm-fs-esl"
        seen = len(self.text())
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([str(exe), "--config", str(self.config)],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        deadline = time.monotonic() + 15
        while "dgsm-fs-esl listening on" not in self.text()[seen:]:
            assert self.proc.poll() is None, f"dgsm-fs-esl exited:\n{self.text()}"
            assert time.monotonic() < deadline, f"dgsm-fs-esl not listening:\n{self.text()}"
            time.sleep(0.05)  # a separate process logging to a file: bounded polling

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            assert proc.wait(15) == 0

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def calls(self) -> list[str]:
        return [line for line in self.text().splitlines() if " call peer=" in line]


class Tier:
    def __init__(self, fs: FreeSwitch, esl: EslProcess, loop: Loop, sites: dict[str, SipUas],
                 conf: Path) -> None:
        self.fs, self.esl, self.loop, self.sites, self.conf = fs, esl, loop, sites, conf

    def api(self, cmd: str) -> str:
        async def go() -> str:
            async with Inbound(ESL_PORT) as esl:
                return await esl.api(cmd)
        return self.loop.run(go())

    def way(self, way: str) -> None:
        assert self.api(f"global_setvar dgsm_way={way}").startswith("+OK")
        assert self.api("global_getvar dgsm_way").strip() == way

    def sip(self, user: str, **kw: Any) -> CallResult:
        return self.loop.run(call(user, "127.0.0.1", SIP_PORT, offer_sdp=True, timeout=15,
                                  **kw))

    def invites(self, site: str, user: str) -> int:
        return sum(1 for inv in self.sites[site].invites if inv.user == user)

    def new_lines(self, way: str, before: int, count: int) -> list[str]:
        """Wait (bounded) for ``count`` more per-call lines than ``before``; return them. The
        ESL server writes its line when the call is over (it reports how the bridge ended)."""
        _wait_for(lambda: len(self.route_lines(way)) >= before + count,
                  f"{count} more {way} lines")
        return self.route_lines(way)[before:]

    def route_lines(self, way: str) -> list[str]:
        """The per-call lines of this way so far."""
        if way == "python":
            return [line for line in self.fs.dgsm_lines() if line.startswith("dgsm: call ")]
        return self.esl.calls()


def _wait_for(predicate: Any, what: str, timeout: float = 10.0) -> None:
    """Poll something another process writes (a log file), bounded."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _write_conf(path: Path, extra: str = "") -> Path:
    # codec-string: loopback legs carry L16, which the SIP sites do not offer;
    # allow-loopback: the tier's sites answer with 127.0.0.x addresses (one host)
    path.write_text(f"interface = {LO}\nmin-delay = {MIN_DELAY}\nlisten-port = 8084\n"
                    f"call-timeout = 10\ncodec-string = PCMU,PCMA\nallow-loopback = yes\n"
                    f"{extra}")
    return path


@pytest.fixture(scope="module")
def tier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tier]:
    assert PREFIX is not None
    work = tmp_path_factory.mktemp("fs-tier")
    loop = Loop()
    sites = {SITE_A: loop.run(SipUas.start(SITE_A, 5060)),
             SITE_B: loop.run(SipUas.start(SITE_B, 5060))}
    conf = _write_conf(work / "freeswitch.conf")
    esl = EslProcess(conf, work / "dgsm-fs-esl.log")
    with OsmoHlr(work / "hlr-a", services={"sip.voice": (SITE_A, 5060)},
                 client_timeout_ms=100) as a, \
            OsmoHlr(work / "hlr-b", services={"sip.voice": (SITE_B, 5060)},
                    bind_ip="127.0.0.2", client_timeout_ms=100) as b:
        for imsi, msisdn in (SUB_1001, SUB_1002):
            a.create_subscriber(imsi, msisdn)
            a.location_update(imsi)
        b.create_subscriber(*SUB_1001)
        b.location_update(SUB_1001[0])
        a.backdate_location_update(SUB_1001[0], 300)
        b.backdate_location_update(SUB_1001[0], 30)
        fs = FreeSwitch(PREFIX, work / "fs", sip_port=SIP_PORT, esl_port=ESL_PORT,
                        environment={"DGSM_FS_CONFIG": str(conf), "DGSM_VENV": sys.prefix})
        try:
            with fs:
                esl.start()
                try:
                    yield Tier(fs, esl, loop, sites, conf)
                finally:
                    esl.stop()
        finally:
            print(fs.log_tail(200))  # shown only when a test failed
            print(esl.text()[-5000:])
            for uas in sites.values():
                uas.close()
            loop.close()


@pytest.mark.parametrize("way", WAYS)
def test_found_reaches_the_youngest_site_only(tier: Tier, way: str) -> None:
    tier.way(way)
    before_a, before_b = tier.invites(SITE_A, "1001"), tier.invites(SITE_B, "1001")
    lines = len(tier.route_lines(way))
    res = tier.sip("1001")
    assert res.code == 200, res  # 1001 is not taken by the stock public_extensions (item 4)
    assert tier.invites(SITE_B, "1001") == before_b + 1
    assert tier.invites(SITE_A, "1001") == before_a  # the older site gets nothing
    new = tier.new_lines(way, lines, 1)
    assert len(new) == 1 and "result=found" in new[0]
    assert f"sofia/external/sip:1001@{SITE_B}:5060" in new[0]
    res = tier.sip("1002")  # only at A (age 0: answered at once)
    assert res.code == 200 and tier.invites(SITE_A, "1002") >= 1


def test_found_is_logged_while_the_call_is_up(tier: Tier) -> None:
    """Item 2: mod_python3's line is written when the call is routed, not when the bridge
    ends (``session.execute("bridge")`` blocks until then)."""
    way = "python"
    tier.way(way)
    lines = len(tier.route_lines(way))
    reply = tier.api("originate {origination_caller_id_number=1000}loopback/1001/public "
                     "&park()")
    assert originate_cause(reply) == "ANSWERED", reply
    uuid = reply.split()[1]
    try:
        _wait_for(lambda: len(tier.route_lines(way)) > lines, "the routing line")
        [line] = tier.route_lines(way)[lines:]
        assert "result=found" in line
        assert tier.api(f"uuid_exists {uuid}").strip() == "true"  # still up: logged before
        added = re.search(r"added=([0-9.]+)ms", line)
        assert added is not None
    finally:
        tier.api(f"uuid_kill {uuid}")


@pytest.mark.parametrize("way", WAYS)
def test_not_found_is_404_and_unallocated(tier: Tier, way: str) -> None:
    tier.way(way)
    lines = len(tier.route_lines(way))
    assert tier.sip("1999").code == 404
    reply = tier.api("originate loopback/1998/public &park()")
    assert originate_cause(reply) == "UNALLOCATED_NUMBER", reply
    new = tier.new_lines(way, lines, 2)
    assert len(new) == 2 and all("result=not-found" in line for line in new)
    if way == "esl":  # item 6: the cause we sent is in the line
        assert all("esl=hangup-sent(UNALLOCATED_NUMBER)" in line for line in new), new


@pytest.mark.parametrize("way", WAYS)
def test_hostile_destinations_are_484_and_never_looked_up(tier: Tier, way: str) -> None:
    tier.way(way)
    invites = sum(len(uas.invites) for uas in tier.sites.values())
    before = len(tier.route_lines(way))
    for dest in HOSTILE_SIP:
        res = tier.sip(dest, any_user=True)
        assert res.code == CAUSE_SIP["INVALID_NUMBER_FORMAT"], (dest, res)
    for dest in HOSTILE_LOOPBACK:
        reply = tier.api(f"originate loopback/{dest}/public &park()")
        assert originate_cause(reply) == "INVALID_NUMBER_FORMAT", (dest, reply)
    assert sum(len(uas.invites) for uas in tier.sites.values()) == invites
    lines = tier.new_lines(way, before, len(HOSTILE_SIP) + len(HOSTILE_LOOPBACK))
    assert all("result=invalid" in line for line in lines), lines


def test_esl_server_down_is_503(tier: Tier) -> None:
    tier.way("esl")
    tier.esl.stop()
    try:
        res = tier.sip("1001")
        assert res.code == 503, res
        reply = tier.api("originate loopback/1001/public &park()")
        assert originate_cause(reply) == "NORMAL_TEMPORARY_FAILURE", reply
    finally:
        tier.esl.start()
    assert tier.sip("1001").code == 200  # and back


@pytest.mark.parametrize("way", WAYS)
def test_hangup_mid_lookup_sends_nothing_to_any_site(tier: Tier, way: str) -> None:
    tier.way(way)
    seen = threading.Event()

    def watch(query: Query) -> Record | None:
        if query.id == "1001":
            seen.set()
        return None  # only watches; the OsmoHLRs answer

    watcher = tier.loop.run(_open(Responder({}, handler=watch, interface=LO)))
    try:
        invites = tier.invites(SITE_A, "1001") + tier.invites(SITE_B, "1001")
        lines = len(tier.route_lines(way))
        uuid = "dgsm-test-mid-lookup-" + way
        reply = tier.api(f"bgapi originate {{origination_uuid={uuid}}}loopback/1001/public "
                         "&park()")
        assert reply.startswith("+OK Job-UUID"), reply
        assert seen.wait(10), "no mslookup query for 1001"
        assert tier.api(f"uuid_kill {uuid}").startswith("+OK")
        [line] = tier.new_lines(way, lines, 1)
        assert "result=gone" in line, line
        # python: the line is written after the lookup ended and the channel was found gone
        # (no bridge can follow); esl: the server closed the socket without a command
        assert "bridge=" not in line, line
        if way == "esl":
            assert "esl=gone(" in line, line
        assert tier.invites(SITE_A, "1001") + tier.invites(SITE_B, "1001") == invites
    finally:
        tier.loop.run(watcher.close())


async def _open(resp: Responder) -> Responder:
    await resp.open()
    return resp


@pytest.mark.parametrize("way", WAYS)
def test_50_concurrent_sip_calls_all_reach_the_site(tier: Tier, way: str) -> None:
    tier.way(way)
    before = tier.invites(SITE_B, "1001")
    lines = len(tier.route_lines(way))

    async def many() -> list[CallResult]:
        return list(await asyncio.gather(*(
            call("1001", "127.0.0.1", SIP_PORT, offer_sdp=True, timeout=30)
            for _ in range(50))))

    results = tier.loop.run(many(), timeout=90)
    assert [r.code for r in results] == [200] * 50
    assert tier.invites(SITE_B, "1001") == before + 50
    assert sum("result=found" in line for line in tier.new_lines(way, lines, 50)) == 50


def test_fsapi_answers_through_mod_python3(tier: Tier) -> None:
    text = tier.api("python freeswitch_dialplan_dgsm 1001")
    assert text.startswith(f"+OK sip.voice.1001.msisdn found {SITE_B}:5060"), text
    assert f"sofia/external/sip:1001@{SITE_B}:5060" in text
    assert tier.api("python freeswitch_dialplan_dgsm 1999").startswith("-ERR")


def test_check_warns_when_this_hosts_answers_would_be_untrusted(tier: Tier,
                                                                tmp_path: Path) -> None:
    """Item 7: this namespace routes 224.0.0.0/4 to lo without a source, so this host's
    OsmoHLRs answer from 0.0.0.0; ``trusted = 127.0.0.0/8`` would drop them all."""
    conf = _write_conf(tmp_path / "trusted.conf", "trusted = 127.0.0.0/8\n")
    exe = Path(sys.prefix) / "bin" / "dgsm-fs-esl"
    out = subprocess.run([str(exe), "--config", str(conf), "--check"], capture_output=True,
                         text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    assert ("warning: an OsmoHLR on this host answers from 0.0.0.0 (the kernel's source "
            "address toward 239.192.23.42), outside trusted = 127.0.0.0/8") in out.stdout
    assert "ip route replace 224.0.0.0/4 dev lo src 127.0.0.1" in out.stdout
    # and it is true: with that trust, the real sites' answers are all dropped
    fixed = subprocess.run([str(exe), "--config", str(tier.conf), "--check"],
                           capture_output=True, text=True, timeout=30, check=False)
    assert "warning" not in fixed.stdout


def test_without_the_venv_calls_end_503_and_the_log_says_what_to_fix(
        tier: Tier, tmp_path: Path) -> None:
    """Item 3: a FreeSWITCH whose DGSM_VENV names no venv."""
    assert PREFIX is not None
    missing = tmp_path / "no-such-venv"
    fs = FreeSwitch(PREFIX, tmp_path / "fs", sip_port=5090, esl_port=8022,
                    environment={"DGSM_FS_CONFIG": str(tier.conf), "DGSM_VENV": str(missing)})
    with fs:
        async def go() -> tuple[str, str, str]:
            async with Inbound(8022) as esl:
                await esl.api("global_setvar dgsm_way=python")
                api = await esl.api("python freeswitch_dialplan_dgsm 1001")
                reply = await esl.api("originate loopback/1001/public &park()")
            sip = await call("1001", "127.0.0.1", 5090, offer_sdp=True, timeout=15)
            return api, reply, str(sip.code)
        api, reply, sip_code = tier.loop.run(go())
        assert sip_code == "503"
        assert originate_cause(reply) == "NORMAL_TEMPORARY_FAILURE", reply
        assert api.startswith("-ERR dgsm: cannot import dgsm_integrations"), api
        lines = [line for line in fs.dgsm_lines() if "cannot import" in line]
        assert lines, fs.log_tail()
        assert f"{missing}/lib/python3." in lines[0]
        assert "does not exist: install the package there" in lines[0]


def test_placed_after_the_stock_public_extensions_1001_never_reaches_dgsm(
        tier: Tier, tmp_path: Path) -> None:
    """Item 4, the control: included where the stock public.xml includes public/*.xml
    (after public_extensions), MSISDN 1001 goes to the default context and no site sees it;
    placed first, as the docs say (every other test), it is routed."""
    assert PREFIX is not None
    stock_order = """      <extension name="public_extensions">
        <condition field="destination_number" expression="^(10[01][0-9])$">
          <action application="transfer" data="$1 XML default"/>
        </condition>
      </extension>
      <X-PRE-PROCESS cmd="include" data="{xml}"/>""".replace(
        "{xml}", str(Path(__file__).resolve().parent.parent / "freeswitch" / "dialplan"
                     / "public.xml"))
    fs = FreeSwitch(PREFIX, tmp_path / "fs", sip_port=5091, esl_port=8023,
                    public_context=stock_order,
                    environment={"DGSM_FS_CONFIG": str(tier.conf), "DGSM_VENV": sys.prefix})
    invites = tier.invites(SITE_A, "1001") + tier.invites(SITE_B, "1001")
    with fs:
        async def go() -> tuple[CallResult, CallResult]:
            async with Inbound(8023) as esl:
                await esl.api("global_setvar dgsm_way=python")
            trapped = await call("1001", "127.0.0.1", 5091, offer_sdp=True, timeout=15)
            routed = await call("2002", "127.0.0.1", 5091, offer_sdp=True, timeout=15)
            return trapped, routed
        trapped, routed = tier.loop.run(go())
    assert trapped.code == 603, trapped  # CALL_REJECTED in the test's default context
    assert "dgsm-test: call reached context default" in fs.log_text()
    assert tier.invites(SITE_A, "1001") + tier.invites(SITE_B, "1001") == invites
    assert routed.code == 404  # a number public_extensions does not take reaches D-GSM
