"""A real Asterisk 22 (Debian sid's, in the sid root) running asterisk/extensions.conf and
asterisk/pjsip.conf as shipped, in village B of the lab, between real OsmoHLRs.

Calls are real SIP calls into Asterisk from the phone side (our SIP UA plays
osmo-sip-connector: from 127.0.0.1 into ``dgsm-out``, the FastAGI way; from 127.0.0.2 into
``dgsm-out-local``, the dgsm-agi script installed in the root's venv and run by Asterisk with
the root's Python 3.14), and ``channel originate``. What happened is read where it shows:
the SIP answer the caller gets, the INVITEs that reach each village's SIP endpoint, Asterisk's
own messages.log. Nothing is assumed from what our code meant to do.

Time passes on purpose in one place: OsmoHLR ages records in whole seconds, so a record that
must be older than another lets a second go by.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from dgsm_integrations.lab.agi_peer import env_block
from dgsm_integrations.lab.distro import default_osmocom
from dgsm_integrations.lab.network import SIP_PORT, Lab
from dgsm_integrations.lab.pbx import PbxCall
from dgsm_integrations.lab.services import FASTAGI_PORT, MSC_SIP, Services
from dgsm_integrations.lab.sip import CallResult, call

from .peers import AGE_GAP, require_binary, require_sid_root

pytestmark = [pytest.mark.asterisk, pytest.mark.slow]

MIN_DELAY = 0.3
WAYS = ["fastagi", "script"]
_next = iter(range(100, 10_000))


@dataclass
class Net:
    lab: Lab
    s: Services

    def place(self, way: str, dest: str, **kw: object) -> PbxCall:
        fn = self.s.asterisk_call if way == "fastagi" else self.s.asterisk_script_call
        return fn(dest, **kw)  # type: ignore[arg-type]

    def invites(self, user: str) -> dict[str, int]:
        """How many INVITEs for ``user`` reached each village's endpoint so far."""
        return {name: sum(1 for i in ep.uas.invites if i.user == user)
                for name, ep in self.s.endpoints.items()}

    def until_invites(self, village: str, user: str, n: int, timeout: float) -> bool:
        """Wait (bounded) until ``village`` got ``n`` INVITEs for ``user``."""
        uas = self.s.endpoints[village].uas
        return self.lab[village].loop.run(uas.until_count(user, n, timeout), timeout + 5)

    def asterisk_out(self) -> str:
        assert self.s.real_asterisk is not None
        return self.s.real_asterisk.output()

    def all_invites(self) -> int:
        return sum(len(ep.uas.invites) for ep in self.s.endpoints.values())

    def subscriber(self, home: str = "A") -> tuple[str, str]:
        n = next(_next)
        imsi, msisdn = f"90170000001{n:04d}", f"77{n:04d}"
        self.lab[home].provision(imsi, msisdn)
        return imsi, msisdn

    def asterisk_log(self, pattern: str, *, timeout: float = 5.0) -> list[str]:
        """messages.log lines matching ``pattern``, waiting (bounded) for the first one:
        Asterisk writes its log asynchronously from the call."""
        ast = self.s.real_asterisk
        assert ast is not None
        deadline = time.monotonic() + timeout
        while True:
            found = ast.lines_matching(pattern)
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.02)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    require_binary("osmo-hlr")
    require_sid_root("asterisk")
    # the current stack on both sides: Asterisk 22 between sid's OsmoHLR 1.9.4s
    with Lab(workdir=tmp_path_factory.mktemp("lab"), distro=default_osmocom()) as lab, \
            Services(lab, min_delay=MIN_DELAY, asterisk="real", real_msc=False) as s:
        yield Net(lab, s)


@pytest.fixture(scope="module")
def alice(net: Net) -> str:
    """Known to two villages' HLRs, A's and C's (measured: a roamer is answered for only by
    the village she is at, so two answers need two records). She attached at A, then a second
    later at C (AGE_GAP), and a second after that the test starts: C's record (age >= 1) is younger
    than A's (>= 2), and no answer has age 0, so every lookup waits for both."""
    imsi, msisdn = net.subscriber("A")
    net.lab["C"].provision(imsi, msisdn)
    net.lab["A"].attach(imsi)
    time.sleep(AGE_GAP)  # ages are whole seconds: A's record must be older than C's
    net.lab["C"].attach(imsi)
    time.sleep(1.1)  # and C's not 0, which would end a lookup before A's answer came
    return msisdn


def test_this_is_the_real_asterisk(net: Net) -> None:
    ast = net.s.real_asterisk
    assert ast is not None
    assert ast.version.startswith("22.")
    assert "chan_pjsip.so" in ast.rx("module show like chan_pjsip")
    dialplan = ast.rx("dialplan show dgsm-out")
    assert "AGI(${DGSM_FASTAGI})" in dialplan
    assert (f"DGSM_FASTAGI=agi://{net.lab['B'].addr}:4573/dgsm?service=sip.voice"
            in ast.rx("dialplan show globals"))


@pytest.mark.parametrize("way", WAYS)
def test_the_call_reaches_the_youngest_site_only(net: Net, alice: str, way: str) -> None:
    _, seen = net.s.lookup(f"sip.voice.{alice}.msisdn")
    ages = {net.lab.site_of(t.site): t.age for t in seen}
    assert set(ages) >= {"A", "C"} and ages["C"] < ages["A"], ages  # two sites answer
    before = net.invites(alice)
    c = net.place(way, alice)
    assert c.sip is not None and c.sip.code == 200, c
    inv = net.s.invite_at("C", alice, timeout=2)
    assert inv is not None and inv.host == f"{net.lab['C'].addr}:{SIP_PORT}"
    after = net.invites(alice)
    assert after["C"] == before["C"] + 1 and after["A"] == before["A"], (before, after)
    # one line per call in Asterisk's own log, as Debian's logger.conf writes it
    who = "dgsm-fastagi: call" if way == "fastagi" else "dgsm-agi:"
    lines = net.asterisk_log(rf"NOTICE.*{who}.* ext={alice} result=found "
                             rf"dial=PJSIP/dgsm/sip:{alice}@{re.escape(net.lab['C'].addr)}:5060")
    assert lines


@pytest.mark.parametrize("way", WAYS)
def test_unknown_number_is_404_and_nothing_is_dialled(net: Net, way: str) -> None:
    before = net.all_invites()
    c = net.place(way, "5550001")
    assert c.sip is not None and c.sip.code == 404, c
    assert net.all_invites() == before
    assert net.asterisk_log(r"NOTICE.* ext=5550001 result=not-found")


#: what a remote SIP caller can put in the request URI; chan_pjsip decodes %XX into the
#: extension, and each of these starts with a digit, so it reaches the _X. contexts
HOSTILE = ['1%2200%221', '1001%22', '1%221001', '1001%5c', '10%5c01', '10%4001', '1001;x=1',
           '1001&2002', '10%2001', '1001%0a', '1001%0aagi_arg_1%3a%201002', '1' * 16, '9' * 40,
           '1001%24%7bSHELL(id)%7d']


@pytest.mark.parametrize("guarded", [True, False], ids=["dialplan", "agi-alone"])
@pytest.mark.parametrize("way", WAYS)
def test_hostile_numbers_are_484_and_never_dialled(net: Net, alice: str, way: str,
                                                   guarded: bool) -> None:
    """``dialplan``: the shipped contexts; ``agi-alone``: the same without their first
    line, the dialplan's own number check, to see what the AGI itself does with what
    Asterisk hands it (the quotes and backslashes its argument parser strips)."""
    before = net.all_invites()
    codes = {}
    for dest in HOSTILE:
        c = net.place(way, dest, guarded=guarded)
        assert c.sip is not None
        codes[dest] = c.sip.code
    # a line break cuts Asterisk's own AGI environment block short: without the dialplan's
    # check the AGI cannot answer at all, and the dialplan refuses the call with 34 (503)
    broken = {d for d in HOSTILE if "%0a" in d} if not guarded else set()
    assert {d: c for d, c in codes.items() if d not in broken} == dict.fromkeys(
        set(HOSTILE) - broken, 484)
    assert {codes[d] for d in broken} <= {503}
    assert net.all_invites() == before  # nothing reached any village
    if not guarded:
        # the log shows the real extension, not what the argument parser left of it
        assert net.asterisk_log(r'NOTICE.*ext=1"00"1 result=invalid')


@pytest.mark.parametrize("way", WAYS)
def test_caller_hangs_up_mid_lookup(net: Net, alice: str, way: str,
                                    caplog: pytest.LogCaptureFixture) -> None:
    # alice's youngest record is >= 1 s old: the lookup waits the whole min-delay (0.3 s)
    before = net.invites(alice)
    out = net.asterisk_out()
    with caplog.at_level(logging.INFO, logger="dgsm.asterisk.fastagi"):
        c = net.place(way, alice, cancel_after=0.1)
        assert c.sip is not None and c.sip.cancelled and c.sip.code == 487, c
        # had the lookup gone on, its INVITE would come within the 0.3 s wait: none comes
        assert not net.until_invites("C", alice, before["C"] + 1, timeout=1.0)
        assert net.invites(alice) == before
        if way == "fastagi":
            lines = [r.getMessage() for r in caplog.records
                     if "HANGUP during the lookup" in r.getMessage()]
            assert lines, caplog.text
            m = re.search(r"lookup=([0-9.]+)ms total=([0-9.]+)ms added=([0-9.]+)ms", lines[-1])
            assert m is not None
            lookup, _total, added = (float(x) for x in m.groups())
            assert lookup >= 50 and added < 50, lines[-1]  # the wait is not our overhead
    assert "Traceback" not in net.asterisk_out()[len(out):]
    again = net.place(way, alice)  # the next call is served
    assert again.sip is not None and again.sip.code == 200


def test_fastagi_down_and_refusing_give_503(net: Net, alice: str) -> None:
    net.s.stop_fastagi()
    try:
        c = net.place("fastagi", alice)
        assert c.sip is not None and c.sip.code == 503, c
        assert net.asterisk_log(r"WARNING.*the AGI did not run \(AGISTATUS=FAILURE\)")
        # at max-calls the server closes the connection at once: AGISTATUS is SUCCESS,
        # but no DGSM_RESULT came, and the log says so (not "AGI failed: ...SUCCESS").
        # The one session is a call in progress (an idle connection would be dropped to
        # make room): a lookup of an unknown number that waits its whole 3 s min-delay.
        net.s.start_fastagi(max_calls=1, min_delay=3.0)
        b = net.lab["B"]
        with b.entered():
            hold = socket.create_connection((b.addr, FASTAGI_PORT), timeout=5)
        try:
            hold.sendall(env_block([], network_script="dgsm?service=sip.voice",
                                   extension="5550002"))
            fastagi = net.s.fastagi
            assert fastagi is not None
            b.loop.run(_until(lambda: fastagi.active == 1))
            c = net.place("fastagi", alice)
            assert c.sip is not None and c.sip.code == 503, c
            assert net.asterisk_log(r"WARNING.*no result from dgsm-fastagi")
            assert fastagi.stats.busy >= 1
        finally:
            hold.close()
    finally:
        net.s.start_fastagi()
    c = net.place("fastagi", alice)
    assert c.sip is not None and c.sip.code == 200


async def _until(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    """Wait (bounded) for server state that has no event of its own."""
    async with asyncio.timeout(limit):
        while not predicate():
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("way", WAYS)
def test_fifty_concurrent_calls_all_reach_the_site(net: Net, alice: str, way: str) -> None:
    before = net.invites(alice)["C"]
    b = net.lab["B"]
    caller = "127.0.0.1" if way == "fastagi" else "127.0.0.2"

    async def fifty() -> list[CallResult]:
        return list(await asyncio.gather(*(
            call(alice, b.addr, SIP_PORT, local_host=caller, offer_sdp=True, timeout=20)
            for _ in range(50))))
    results = b.loop.run(fifty(), 60)
    assert [r.code for r in results] == [200] * 50
    assert net.invites(alice)["C"] == before + 50


def test_calls_from_other_villages_land_in_dgsm_in(net: Net) -> None:
    """A's PBX found a subscriber at B: B's Asterisk hands the call to its OsmoMSC (the
    msc endpoint, osmo-sip-connector's place), and refuses anything but a number."""
    a, b = net.lab["A"], net.lab["B"]
    msc = net.s.endpoints["B"].uas

    def from_a(dest: str, raw: bool = False) -> CallResult:
        return a.loop.run(call(dest, b.addr, SIP_PORT, local_host=a.addr, offer_sdp=True,
                               any_user=raw, timeout=15), 30)
    assert from_a("4242").code == 200
    inv = b.loop.run(msc.invited("4242", timeout=2))
    assert inv.host == f"{MSC_SIP[0]}:{MSC_SIP[1]}"
    before = len(msc.invites)
    for dest in ("42%2642", "42%2f42", "4%22242", "4" * 16):
        assert from_a(dest, raw=True).code == 484, dest
    assert len(msc.invites) == before


def test_channel_originate_goes_through_the_dialplan(net: Net, alice: str) -> None:
    ast = net.s.real_asterisk
    assert ast is not None
    before = net.invites(alice)["C"]
    ast.rx(f"channel originate Local/{alice}@dgsm-out application Wait 1")
    assert net.until_invites("C", alice, before + 1, timeout=5)
