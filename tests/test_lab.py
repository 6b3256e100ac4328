"""End to end in the village lab: real OsmoHLRs in three namespaces, real GSUP Location
Updatings (roaming ones proxied by D-GSM to the home HLR), our resolver asking from inside
each village, and link faults made with the kernel (bridge port down, nftables drops).

Who attaches: the roaming, flapping, cut and loss tests use the GSUP test MSC
(``Village.attach``, :mod:`dgsm_integrations.lab.gsup`): what they test is OsmoHLR (D-GSM's
proxied Location Updating, its mslookup records and their ages), which sees the same GSUP
Location Updating from it as from osmo-msc; it attaches 100 subscribers in well under a
second, moves one IMSI between villages without an osmo-stp and osmo-msc per village, and
lets these tests run where osmo-msc is not installed. The calls-and-SMS tests use lab phones
(``Services(phones=True)``: osmo-stp and osmo-msc in every village): Alice switches on with a
real LU through osmo-msc, and Bob's SMS goes phone to phone.

Every test runs once per Osmocom generation: ``[osmo-hlr-1.5.0+osmo-msc-1.9.0]`` (Debian 12's)
and ``[osmo-hlr-1.9.4+osmo-msc-1.16.0]`` (Debian sid's, through chroot).

Time passes on purpose in two places: OsmoHLR ages records in whole seconds, so a test that
needs one record to be older than another lets a second go by (the age is the thing under
test, not a synchronisation).
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dgsm_integrations.lab.demo import run_demo
from dgsm_integrations.lab.distro import Distro, default_osmocom
from dgsm_integrations.lab.netns import LabError
from dgsm_integrations.lab.network import Lab, Village
from dgsm_integrations.lab.phone import LabPhone, SmsResult
from dgsm_integrations.lab.services import Services
from dgsm_integrations.mslookup import AsyncResolver, Outcome, Result

from .peers import AGE_GAP, generations, require_binary, require_generation

# the lab: namespaces, real Osmocom programs, real time
pytestmark = pytest.mark.slow

MIN_DELAY = 0.3
HOME = "A"
_next = iter(range(10, 10_000))


def new_subscriber(lab: Lab, home: str = HOME) -> tuple[str, str]:
    n = next(_next)
    imsi, msisdn = f"90170000000{n:04d}", f"55{n:04d}"
    lab[home].provision(imsi, msisdn)
    return imsi, msisdn


@pytest.fixture(scope="module", params=generations("osmo-hlr", "osmo-msc"))
def lab(request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    distro = require_generation(request.param, "osmo-hlr")
    require_binary("nft")
    with Lab(workdir=tmp_path_factory.mktemp("lab"), distro=distro) as built:
        yield built


def lookup(village: Village, *queries: str, min_delay: float = MIN_DELAY,
           timeout: float | None = None) -> list[Result]:
    """Resolve ``queries`` at the same time from inside ``village``."""
    async def body() -> list[Result]:
        resolver = AsyncResolver(interface=village.addr, min_delay=min_delay, timeout=timeout)
        try:
            return list(await asyncio.gather(*(resolver.resolve(q) for q in queries)))
        finally:
            await resolver.close()
    return village.loop.run(body())


def where(lab: Lab, result: Result) -> str | None:
    return lab.site_of(result.site) if result.found and result.site else None


def test_roaming_lu_is_proxied_home_and_every_village_finds_the_roamer(lab: Lab) -> None:
    imsi, msisdn = new_subscriber(lab)
    lu = lab["C"].attach(imsi)  # unknown at C: C's HLR finds A by mslookup, proxies the LU
    assert lu.msisdn == msisdn  # the subscriber data came from the home HLR
    home_hlr = lab["A"].hlr
    assert home_hlr is not None
    assert "VLR number: MSC-C" in home_hlr.show_subscriber(imsi)  # the home HLR saw C's MSC
    for v in lab:
        sip, sms, home = lookup(v, f"sip.voice.{msisdn}.msisdn", f"smpp.sms.{msisdn}.msisdn",
                                f"gsup.hlr.{imsi}.imsi")
        assert (where(lab, sip), str(sip.v4)) == ("C", f"{lab['C'].addr}:5060"), (v.name, sip)
        assert (where(lab, sms), str(sms.v4)) == ("C", f"{lab['C'].addr}:2775"), (v.name, sms)
        assert (where(lab, home), home.age) == ("A", 0), (v.name, home)


def test_second_lu_elsewhere_the_younger_record_wins(lab: Lab) -> None:
    imsi, msisdn = new_subscriber(lab)
    lab["C"].attach(imsi)
    time.sleep(AGE_GAP)  # C's record must be older (ages are whole seconds: AGE_GAP)
    t_lu = time.time()
    lab["B"].attach(imsi)
    for v in lab:
        (sip,) = lookup(v, f"sip.voice.{msisdn}.msisdn")
        assert where(lab, sip) == "B", (v.name, sip)
        # OsmoHLR stores the LU time in whole seconds and counts wall-clock seconds since: a LU
        # at x.999 s is age 1 a millisecond later. The age is at most the seconds begun since.
        assert sip.age is not None and sip.age <= math.ceil(time.time() - t_lu), sip


def test_flapping_between_two_villages_every_lookup_returns_the_latest(lab: Lab) -> None:
    """One IMSI attaches at B, C, B again, a second apart, with the GSUP test MSC: what is
    tested is the youngest of OsmoHLR's records winning; a phone would need one osmo-msc per
    village and each move its Cancel Location, none of which is under test here."""
    imsi, msisdn = new_subscriber(lab)
    for here in ("B", "C", "B"):
        lab[here].attach(imsi)
        (sip,) = lookup(lab["A"], f"sip.voice.{msisdn}.msisdn")
        assert where(lab, sip) == here, (here, sip)
        time.sleep(AGE_GAP)  # the record just made must age before the next move


def test_link_cut_others_keep_working_cut_village_not_found_then_back(lab: Lab) -> None:
    at_c = new_subscriber(lab)
    at_b = new_subscriber(lab)
    lab["C"].attach(at_c[0])
    lab["B"].attach(at_b[0])
    lab.cut("C")
    try:
        t0 = time.monotonic()
        gone, other = lookup(lab["A"], f"sip.voice.{at_c[1]}.msisdn",
                             f"sip.voice.{at_b[1]}.msisdn", timeout=0.5)
        elapsed = time.monotonic() - t0
        assert gone.outcome is Outcome.NOT_FOUND, gone  # not a hang, not an error
        assert elapsed < 2.0
        assert where(lab, other) == "B"
        # C itself still works inside (its own HLR answers on its side of the cut)
        (inside,) = lookup(lab["C"], f"sip.voice.{at_c[1]}.msisdn")
        assert where(lab, inside) == "C"
    finally:
        lab.restore("C")
    (back,) = lookup(lab["A"], f"sip.voice.{at_c[1]}.msisdn")  # the first lookup after
    assert where(lab, back) == "C", back


def test_twenty_percent_loss_on_a_village_link(lab: Lab) -> None:
    """20% of packets dropped each way on C's link (nftables): a query reaches C's OsmoHLR
    and its answer comes back with probability 0.64, and the resolver sends each query eight
    times, so 99.97% should be found (bench/loss_osmohlr.py measures 99.97% with three real
    OsmoHLRs). 1,000 lookups must find at least 98.5%: at 99.4% (five copies) that fails
    once in 2,000 runs; a resolver that sends each query once (64%) always fails it, one whose
    found rate fell to 98% in 85% of runs. It must pass with two busy loops competing for the
    two cores (issue 13: copies that could not leave on time were once merged or lost).
    The 100 subscribers attach with the GSUP test MSC (well under a second for all; through
    osmo-msc each LU is a phone's connection, ~80 ms): only OsmoHLR's answers are tested."""
    subs = [new_subscriber(lab) for _ in range(100)]
    for imsi, _ in subs:
        lab["C"].attach(imsi)
    lab.lossy("C", 20)
    try:
        found = 0
        total = 0
        for _ in range(10):
            results = lookup(lab["A"], *(f"sip.voice.{m}.msisdn" for _, m in subs),
                             min_delay=0.2)
            found += sum(where(lab, r) == "C" for r in results)
            total += len(results)
    finally:
        lab.lossy("C", 0)
    assert total == 1000
    assert found / total >= 0.985, f"found {found}/{total} at 20% loss"


def test_a_thin_link_is_shaped_on_both_ends_and_made_whole_again(lab: Lab) -> None:
    """``lab.thin`` puts a tbf qdisc on the village's end of its link and on the bridge's;
    None takes both away; a rate or queue out of range is refused before anything changes."""
    def qdiscs() -> list[str]:
        mine = lab["B"].ns.run(["tc", "qdisc", "show", "dev", "eth0"]).stdout
        bridge = lab.backhaul.run(["tc", "qdisc", "show", "dev", lab["B"].link]).stdout \
            if lab.backhaul is not None else ""
        return [mine, bridge]
    lab.thin("B", 2000, 150)
    try:
        assert all("tbf" in q and "rate 2Mbit" in q for q in qdiscs()), qdiscs()
        with pytest.raises(LabError, match="link rate"):
            lab.thin("B", 0)
        with pytest.raises(LabError, match="queue"):
            lab.thin("B", 2000, 0)
        assert all("tbf" in q for q in qdiscs())  # a refused change changed nothing
    finally:
        lab.thin("B", None)
    assert not any("tbf" in q for q in qdiscs()), qdiscs()


def test_lab_leaves_nothing_behind_even_when_the_body_fails(tmp_path: Path,
                                                            hlr_distro: Distro) -> None:
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="boom"), \
            Lab(["X", "Y"], workdir=tmp_path, distro=hlr_distro) as lab2:
        pids = [lab2.backhaul.pid] if lab2.backhaul else []
        pids += [v.ns.pid for v in lab2]
        hlr_pids = [v.hlr._proc.pid for v in lab2 if v.hlr and v.hlr._proc]
        assert len(pids) == 3 and len(hlr_pids) == 2
        raise RuntimeError("boom")
    for pid in [*pids, *hlr_pids]:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), pid
    out = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True,
                         check=False)
    assert out.stdout.strip() == "", out.stdout


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


def test_lab_refuses_to_start_where_other_interfaces_are_visible(
        lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside a village (which has eth0) a lab would touch a real-looking interface: refused,
    and the refused lab leaves no work directory behind."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    async def body() -> str:
        try:
            Lab(["Z"], hlr=False).start()
        except LabError as exc:
            return str(exc)
        return "started"
    assert "private network namespace" in lab["B"].loop.run(body())
    assert list(tmp_path.iterdir()) == []


# -- calls and SMS through our integrations, across villages ---------------------------------

@pytest.fixture(scope="module")
def services(lab: Lab) -> Iterator[Services]:
    """The integrations at B, and lab phones: osmo-stp and osmo-msc (A interface, an ESME
    each) in every village; B's real osmo-msc is the ESME's peer (no stand-in)."""
    require_binary("osmo-msc", lab.distro)
    require_binary("osmo-stp", lab.distro)
    require_binary("gcc")
    with Services(lab, min_delay=MIN_DELAY, phones=True) as s:
        yield s


@pytest.fixture(scope="module")
def bob(lab: Lab, services: Services) -> tuple[LabPhone, str]:
    """Bob's phone, switched on at home (B); and his MSISDN."""
    imsi, msisdn = new_subscriber(lab, home="B")
    phone = services.phone("B", imsi)
    services.attach_phone(phone)
    return phone, msisdn


def text_from(bob: tuple[LabPhone, str], to: str, text: str) -> SmsResult:
    """Bob's phone sends ``text`` to ``to`` (each SMS its own RP and TP reference)."""
    ref = next(_next) % 256
    return bob[0].send_sms(to, text, rp_ref=ref, tp_ref=ref)


def test_calls_and_sms_through_each_integration_land_where_the_callee_is(
        lab: Lab, services: Services, bob: tuple[LabPhone, str]) -> None:
    imsi, msisdn = new_subscriber(lab)
    alice = services.phone("C", imsi)
    services.attach_phone(alice)  # roaming: a real LU through C's osmo-msc, proxied to A
    for place in (services.freeswitch_call, services.asterisk_call,
                  services.asterisk_script_call):
        c = place(msisdn)
        assert c.result == "found" and c.target == (msisdn, lab["C"].addr, 5060), c
        assert c.sip is not None and c.sip.code == 200, c
        inv = services.invite_at("C", msisdn)
        assert inv is not None and inv.source[0] == lab["B"].addr  # placed from B
        assert services.invite_at("A", msisdn, timeout=0.1) is None
    # Bob's phone -> B's osmo-msc -> deliver_sm -> ESME -> submit_sm to C's osmo-msc -> her phone
    res = text_from(bob, msisdn, "to the roamer")
    assert (res.acked, res.cause) == (True, None)
    got = alice.receive_sms(wait=10)
    assert (got.text, got.sender, got.dcs) == ("to the roamer", bob[1], 0x00)
    time.sleep(AGE_GAP)  # C's record must be older than the next one
    home = services.phone("A", imsi)
    services.attach_phone(home)  # back home
    c = services.asterisk_call(msisdn)
    assert c.target == (msisdn, lab["A"].addr, 5060), c
    assert text_from(bob, msisdn, "welcome home").acked
    got = home.receive_sms(wait=10)
    assert (got.text, got.sender) == ("welcome home", bob[1])
    assert (msisdn, b"welcome home") not in services.sms_at("C")  # it did not go to C


def test_cut_village_calls_hang_up_with_their_cause_and_sms_is_refused(
        lab: Lab, services: Services, bob: tuple[LabPhone, str]) -> None:
    imsi, msisdn = new_subscriber(lab)
    alice = services.phone("C", imsi)
    services.attach_phone(alice)
    lab.cut("C")
    try:
        fs = services.freeswitch_call(msisdn)
        agi = services.asterisk_call(msisdn)
        script = services.asterisk_script_call(msisdn)
        sms = text_from(bob, msisdn, "lost?")
    finally:
        lab.restore("C")
    assert (fs.result, fs.decision, fs.answered) == (
        "not-found", "hangup UNALLOCATED_NUMBER", False)
    assert (agi.result, agi.decision, agi.answered) == ("not-found", "hangup 1", False)
    assert (script.result, script.decision, script.answered) == ("not-found", "hangup 1", False)
    # the ESME's RSYSERR (the village may come back), made RP-ERROR 27 by B's osmo-msc
    assert (sms.acked, sms.cause) == (False, 27)
    assert not any(r == msisdn for r, _ in services.sms_at("C"))
    assert services.freeswitch_call(msisdn).target == (msisdn, lab["C"].addr, 5060)


@pytest.fixture(params=generations("osmo-hlr", "osmo-msc", "osmo-stp"))
def lab_distro(request: pytest.FixtureRequest) -> Distro:
    require_binary("gcc")
    return require_generation(request.param, "osmo-hlr", "osmo-msc", "osmo-stp")


def test_the_demo_story_passes(capsys: pytest.CaptureFixture[str], lab_distro: Distro) -> None:
    """What the README's demo command runs (in its own lab), with each generation: the phone
    story (osmo-msc, osmo-stp and gcc are there)."""
    assert run_demo(distro=lab_distro) == 0
    out = capsys.readouterr().out
    assert "demo passed" in out and "(phone to phone)" in out
    assert "village C answers" in out and "youngest wins: village C" in out
    # it says which Osmocom it ran, and that is the one asked for
    hlr, msc = lab_distro.version("osmo-hlr"), lab_distro.version("osmo-msc")
    stp = lab_distro.version("osmo-stp")
    assert f"OsmoHLR {hlr}" in out and f"osmo-msc {msc}" in out, out[:600]
    assert f"osmo-stp {stp}" in out, out[:900]
    # the phones: Alice's real roaming LU at C, Bob's SMS to her phone, RP-ERROR 27 when cut
    assert "Alice's phone: LOCATION UPDATING ACCEPT from C's osmo-msc" in out
    assert "ok: A's OsmoHLR shows her at C's osmo-msc (VLR number: MSC-C)" in out
    for text in ("hello Alice", "are you there?", "back?"):
        assert f"Alice's phone at C: paged, SMS-DELIVER from 1002 '{text}' (GSM 7-bit)" in out
    assert "Bob's phone got RP-ERROR cause 27 (destination out of order)" in out
    assert out.count("ok: her phone received exactly the text") == 3
    assert "NOT OK" not in out


def test_the_demo_without_phones_tells_the_stand_in_story_and_says_why(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Where osmo-stp (or osmo-msc, or gcc) is missing, the demo still runs: the SMS part with
    B's stand-in OsmoMSC, and one line saying why and what to install. Once, with the
    default generation (the fallback is the same code for both)."""
    distro = default_osmocom()
    require_binary("osmo-hlr", distro)
    monkeypatch.setattr(Services, "phones_possible",
                        lambda self: "no osmo-stp (apt-get install osmo-stp)")
    assert run_demo(distro=distro) == 0
    out = capsys.readouterr().out
    assert "no phones here: no osmo-stp (apt-get install osmo-stp); the SMS part is told " \
        "with a stand-in OsmoMSC" in out
    assert "demo passed" in out and "(through the stand-in)" in out
    assert "Bob's SMS 'hello Alice': B's OsmoMSC -> ESME -> answered ROK" in out
    assert "ESME refused it cleanly with RSYSERR" in out
    assert "Alice's phone" not in out and "NOT OK" not in out
