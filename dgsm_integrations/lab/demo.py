"""``dgsm-lab demo``: the D-GSM story told with real components, in under a minute.

Alice (home village A) switches her phone on at village C; Bob at B calls her through the
FreeSWITCH and the Asterisk integrations and texts her from his phone; C's link goes lossy,
then down, then comes back. Each step says what was asked, which villages answered with which
age, who won, and how long it took. Exit status 0 only if every step behaved as D-GSM must.

The phones are lab phones (:mod:`.phone`: a handset and its BSC on the A interface) at real
osmo-msc and osmo-stp in every village (:class:`.services.Services` with phones): Alice's
switching on is a real Location Updating through C's osmo-msc, roamed to A's OsmoHLR; Bob's SMS
leaves B's osmo-msc as deliver_sm to B's ESME, which submits it to C's osmo-msc, which pages
Alice's phone. Where phones cannot run (no osmo-msc, osmo-stp or gcc), the SMS part is told
with B's stand-in OsmoMSC (:mod:`.smsc`) and the GSUP test MSC, and the demo says why.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

from ..mslookup import AnswerTrace, Result
from ..mslookup.engine import DEFAULT_RESEND
from .distro import Distro, default_osmocom
from .gsup import GsupTimeout
from .network import Lab
from .phone import LabPhone, PhoneError
from .services import Services

__all__ = ["ALICE", "BOB", "CAROL", "run_demo"]

ALICE = ("901700000000001", "1001")  # home A
BOB = ("901700000000002", "1002")  # home B
CAROL = ("901700000000003", "1003")  # home A, visits C before Alice (with phones)
#: RP causes (TS 24.011 8.2.5.4) osmo-msc answers a phone with
_RP_CAUSES = {27: "destination out of order", 1: "unassigned number", 42: "congestion"}


def _bold(text: str) -> str:
    return f"\033[1m{text}\033[0m" if sys.stdout.isatty() else text


class _Story:
    def __init__(self, lab: Lab, services: Services) -> None:
        self.lab, self.s = lab, services
        self.failures: list[str] = []
        self.alice: LabPhone | None = None  # with phones: at C
        self.bob: LabPhone | None = None  # with phones: at B
        self._ref = 0

    def step(self, title: str) -> None:
        print(f"\n{_bold('>> ' + title)}")

    def check(self, ok: bool, what: str) -> None:
        print(f"   {'ok' if ok else 'NOT OK'}: {what}")
        if not ok:
            self.failures.append(what)

    def lookup(self, query: str, at: str = "B") -> Result:
        print(f"   village {at} asks every village: {query}")
        result, seen = self.s.lookup(query, at=at)
        firsts: dict[str, AnswerTrace] = {}
        for t in seen:
            firsts.setdefault(t.site, t)
        for t in firsts.values():
            eps = " ".join(str(e) for e in (t.v4, t.v6) if e is not None)
            print(f"   {t.elapsed * 1000:7.1f} ms  village {self.lab.site_of(t.site)} answers: "
                  f"age {t.age} s, at {eps}")
        if result.found:
            print(f"   {result.elapsed * 1000:7.1f} ms  youngest wins: village "
                  f"{self.lab.site_of(result.site or '')} ({result.v4})")
        else:
            print(f"   {result.elapsed * 1000:7.1f} ms  {result.outcome.value}"
                  f"{': ' + result.reason if result.reason else ' (no village answered)'}")
        return result

    def call(self, how: str, place: Callable[[str], object], expect_at: str | None) -> None:
        c = place(ALICE[1])
        from .pbx import PbxCall
        assert isinstance(c, PbxCall)
        print(f"   {how}: {c.result} -> {c.decision}  ({c.elapsed * 1000:.0f} ms)")
        if expect_at is None:
            self.check(not c.answered and c.decision.startswith("hangup"),
                       f"{how} refused the call cleanly ({c.decision}"
                       + (f", the caller got SIP {c.sip.code})" if c.sip else ")"))
            return
        inv = self.s.invite_at(expect_at, ALICE[1], timeout=2)
        if c.sip is not None:
            what = ("Bob's call into Asterisk" if self.s.real_asterisk is not None
                    and c.pbx.startswith("Asterisk") else "the INVITE")
            print(f"   {what} got {c.sip.code} {c.sip.reason} after {c.sip.invites_sent} "
                  f"send(s)")
        self.check(inv is not None and c.answered,
                   f"{how}: the INVITE for {ALICE[1]} arrived at village {expect_at}'s SIP "
                   f"endpoint")

    def sms(self, text: str, expect_at: str | None, tries: int = 1) -> None:
        """Bob's phone sends; like a phone, it may try again after a temporary error."""
        before = len(self.s.sms_at(expect_at)) if expect_at else 0
        names = {0: "ROK", 8: "RSYSERR", 11: "RINVDSTADR", None: "no answer"}
        status: int | None = None
        for attempt in range(1, tries + 1):
            t0 = time.monotonic()
            status = self.s.send_sms(BOB[1], ALICE[1], text)
            ms = (time.monotonic() - t0) * 1000
            again = f" (attempt {attempt})" if tries > 1 else ""
            print(f"   Bob's SMS '{text}'{again}: B's OsmoMSC -> ESME -> answered "
                  f"{names.get(status, hex(status or 0))} in {ms:.0f} ms")
            if status == 0:
                break
        if expect_at is None:
            self.check(status == 8, "the ESME refused it cleanly with RSYSERR (temporary: "
                       "the phone may retry)")
            return
        got = self.s.sms_at(expect_at)[before:]
        self.check(status == 0 and (ALICE[1], text.encode()) in got,
                   f"the SMS arrived at village {expect_at}'s {self.s.smsc_kind(expect_at)}"
                   + (" and is in its SMS database" if self.s.smsc_kind(expect_at) == "osmo-msc"
                      else ""))

    def switch_on(self, village: str, imsi: str, who: str) -> LabPhone:
        """A lab phone switches on at ``village``: a Location Updating through its osmo-msc,
        repeated after a reject as a handset repeats it."""
        phone = self.s.phone(village, imsi)  # may wait for osmo-msc's M3UA registration
        t0 = time.monotonic()
        took = self.s.attach_phone(phone)
        total = time.monotonic() - t0
        rejects = [line for line in phone.trace if "LOCATION UPDATING REJECT" in line]
        tmsi = f" (new TMSI {phone.tmsi:#010x})" if phone.tmsi is not None else ""
        print(f"   {who}'s phone: LOCATION UPDATING ACCEPT from {village}'s osmo-msc in "
              f"{took * 1000:.0f} ms{tmsi}")
        if rejects or total - took > 1.0:
            what = (f"rejected, {rejects[0].split('(')[-1].rstrip(')')}" if rejects
                    else "not answered")
            print(f"   (its first LU was {what}: OsmoHLR drops the first roaming LU over a new "
                  f"GSUP link; the phone repeated it; {total:.1f} s from switching on)")
        return phone

    def phone_sms(self, text: str, expect_at: str | None, tries: int = 1) -> None:
        """Bob's phone sends; like a phone, it may send again after an RP-ERROR. Where it
        should arrive, Alice's phone must be paged and receive exactly that SMS-DELIVER."""
        assert self.bob is not None and self.alice is not None
        acked, cause, t_sent = False, None, time.monotonic()
        for attempt in range(1, tries + 1):
            self._ref += 1
            t_sent = time.monotonic()
            try:
                res = self.bob.send_sms(ALICE[1], text, rp_ref=self._ref, tp_ref=self._ref)
            except PhoneError as exc:
                self.check(False, f"Bob's phone: {str(exc).splitlines()[0]}")
                return
            acked, cause = res.acked, res.cause
            ms = (time.monotonic() - t_sent) * 1000
            again = f" (attempt {attempt})" if tries > 1 else ""
            answer = "RP-ACK" if acked else \
                f"RP-ERROR cause {cause} ({_RP_CAUSES.get(cause or 0, '?')})"
            print(f"   Bob's phone sends '{text}'{again}: B's osmo-msc -> deliver_sm -> ESME "
                  f"-> Bob's phone got {answer} in {ms:.0f} ms")
            if acked:
                break
        if expect_at is None:
            self.check(not acked and cause == 27,
                       "Bob's phone got RP-ERROR 27: osmo-msc's answer to the ESME's RSYSERR "
                       "(temporary: he may send it again)")
            self.check(not any(d == text.encode() for _, d in self.s.sms_at("C")),
                       "nothing reached C's osmo-msc")
            return
        if not acked:
            self.check(False, f"Bob's SMS '{text}' was refused")
            return
        try:
            got = self.alice.receive_sms(wait=10)
        except PhoneError as exc:
            self.check(False, f"Alice's phone received nothing: {str(exc).splitlines()[0]}")
            return
        after = time.monotonic() - t_sent
        coding = {0x00: "GSM 7-bit", 0x08: "UCS-2"}.get(got.dcs, f"TP-DCS {got.dcs:#04x}")
        print(f"   Alice's phone at {expect_at}: paged, SMS-DELIVER from {got.sender} "
              f"'{got.text}' ({coding}), {after:.1f} s after Bob sent it")
        self.check(got.text == text and got.sender == BOB[1] and got.dcs == 0x00,
                   f"her phone received exactly the text, sender {BOB[1]} and coding "
                   "(GSM 7-bit)")


def _whose(distro: Distro) -> str:
    return "this host's" if distro.root is None else f"Debian {distro.name}'s"


def _warm_link(lab: Lab, result: list[str]) -> None:
    """Carol (home A) switches on at C while the villages start: the first roaming LU from C
    to A opens C's OsmoHLR's GSUP link to A's, and OsmoHLR often drops that first one (docs/
    lab.md); her phone repeats it after 3 s. The GSUP test MSC plays her phone's MSC (C's
    osmo-msc is still starting), under its own IPA name."""
    t0 = time.monotonic()
    for attempt in range(1, 4):
        try:
            lab["C"].attach(CAROL[0], attempts=1, msc_name="MSC-C-2")
        except GsupTimeout:
            continue
        except Exception as exc:  # reported by the story, which goes on without the warm-up
            result.append(f"failed: {exc}")
            return
        took = time.monotonic() - t0
        result.append(f"accepted after {took * 1000:.0f} ms" if attempt == 1 else
                      f"accepted at attempt {attempt}, {took:.1f} s after the first: OsmoHLR "
                      "dropped the first while its link to A came up, her phone repeated it")
        return
    result.append("no answer to 3 attempts")


def run_demo(villages: list[str] | None = None, keep: bool = False,
             cheat_sheet: Callable[[Lab], None] | None = None,
             distro: Distro | None = None, phones: bool | None = None) -> int:
    """The story; ``phones`` as :attr:`Services.phones` (None: where they can run)."""
    names = villages or ["A", "B", "C"]
    distro = distro or default_osmocom()
    t_start = time.monotonic()
    print(_bold("D-GSM, the village lab"))
    print("Each village below is a network namespace on this machine with its own address and a")
    print(f"real OsmoHLR {distro.version('osmo-hlr')} ({_whose(distro)} osmo-hlr, "
          "D-GSM enabled); they share one backhaul bridge.")
    with Lab(names, distro=distro) as lab:
        for v in lab:
            print(f"   village {v.name}: {v.addr}  OsmoHLR HLR-{v.name}, SIP {v.addr}:5060, "
                  f"SMPP {v.addr}:2775")
        lab["A"].provision(*ALICE)
        lab["B"].provision(*BOB)
        warm: list[str] = []
        warmer: threading.Thread | None = None
        services = Services(lab, phones=phones)
        if phones or (phones is None and not services.phones_possible()):
            lab["A"].provision(*CAROL)
            warmer = threading.Thread(target=_warm_link, args=(lab, warm), daemon=True)
            warmer.start()
        try:
            with services as s:
                return _story(lab, s, distro, t_start, warmer, warm, keep, cheat_sheet)
        finally:
            if warmer is not None:
                warmer.join(15)


def _story(lab: Lab, s: Services, distro: Distro, t_start: float,
           warmer: threading.Thread | None, warm: list[str], keep: bool,
           cheat_sheet: Callable[[Lab], None] | None) -> int:
    st = _Story(lab, s)
    print("   village B also runs our FreeSWITCH ESL server, Asterisk FastAGI server "
          "and ESME")
    if s.real_asterisk is not None:
        print(f"   and a real Asterisk {s.real_asterisk.version} (Debian sid's) with "
              "asterisk/extensions.conf and pjsip.conf as shipped: Bob's calls are "
              "SIP calls into it")
    else:
        print("   Asterisk is played by its AGI protocol peer (no Debian sid root here: "
              "sudo bash .ci/test makes one)")
    if s.phones:
        print(f"   every village: osmo-stp {distro.version('osmo-stp')} and osmo-msc "
              f"{distro.version('osmo-msc')} (A interface, SMPP to its own ESME); Bob's "
              "and Alice's phones are lab phones (a handset and its BSC)")
    else:
        kind = s.smsc_kind("C")
        if kind == "osmo-msc":
            kind += f" {distro.version('osmo-msc')}"
        print(f"   no phones here: {s.phones_off}; the SMS part is told with a "
              "stand-in OsmoMSC")
        print(f"   SMSCs: A and C {kind}, B a stand-in OsmoMSC that sends "
              "deliver_sm as if its phones did")
    st.step("Alice's home is A, Bob's is B (provisioned over each OsmoHLR's VTY)")
    if s.phones:
        st.bob = st.switch_on("B", BOB[0], "Bob")
    else:
        t0 = time.monotonic()
        lab["B"].attach(BOB[0])
        print(f"   Bob attaches at B (GSUP Location Updating)  "
              f"{1000 * (time.monotonic() - t0):.0f} ms")
    st.step("Alice travels to C and switches her phone on")
    if s.phones:
        if warmer is not None:
            warmer.join(15)
        print("   (Carol, also from A, switched on at C while the villages started: her LU, "
              "the first from C to A,")
        print(f"   opened C's GSUP link to A's OsmoHLR; {warm[0] if warm else 'it did not end'})")
        print("   her phone's LU goes to C's osmo-msc, whose VLR asks C's OsmoHLR; that does "
              "not know her IMSI:")
        print(f"   it asks for gsup.hlr.{ALICE[0]}.imsi, finds her home HLR at A and proxies "
              "the LU there")
        st.alice = st.switch_on("C", ALICE[0], "Alice")
        hlr = lab["A"].hlr
        shown = hlr.show_subscriber(ALICE[0]) if hlr is not None else ""
        st.check("VLR number: MSC-C" in shown,
                 "A's OsmoHLR shows her at C's osmo-msc (VLR number: MSC-C)")
    else:
        t0 = time.monotonic()
        lu = lab["C"].attach(ALICE[0])
        print(f"   C's OsmoHLR does not know her IMSI: it asks for gsup.hlr.{ALICE[0]}.imsi,")
        print(f"   finds her home HLR at A and proxies the Location Updating there "
              f"({1000 * (time.monotonic() - t0):.0f} ms; MSISDN {lu.msisdn} from A)")
    res = st.lookup(f"sip.voice.{ALICE[1]}.msisdn")
    st.check(res.found and lab.site_of(res.site or "") == "C", "Alice is found at C")
    st.step("Bob calls Alice")
    st.call("FreeSWITCH (dgsm-fs-esl)", s.freeswitch_call, "C")
    st.call("Asterisk (dgsm-fastagi)", s.asterisk_call, "C")
    st.call("Asterisk (the dgsm-agi script)", s.asterisk_script_call, "C")
    st.step("Bob sends Alice an SMS")
    if s.phones:
        print("   (C's osmo-msc stores it, then pages her: its SMS queue runs 1 s after a "
              "new SMS)")
        st.phone_sms("hello Alice", "C")
    else:
        st.sms("hello Alice", "C")
    st.step("C's wifi link turns bad: 20% of packets lost each way")
    lab.lossy("C", 20)
    try:
        res = st.lookup(f"smpp.sms.{ALICE[1]}.msisdn")
        st.check(res.found, f"still found (every query is sent {DEFAULT_RESEND + 1} times "
                 "over the wait)")
        if s.phones:
            st.phone_sms("are you there?", "C", tries=3)
        else:
            st.sms("are you there?", "C", tries=3)
    finally:
        lab.lossy("C", 0)
    st.step("C's link goes down")
    lab.cut("C")
    try:
        res = st.lookup(f"sip.voice.{ALICE[1]}.msisdn")
        st.check(not res.found, "not found, after the wait and no longer: nothing hangs")
        st.call("FreeSWITCH", s.freeswitch_call, None)
        st.call("Asterisk", s.asterisk_call, None)
        if s.phones:
            st.phone_sms("hello?", None)
        else:
            st.sms("hello?", None)
    finally:
        lab.restore("C")
    st.step("C's link comes back")
    res = st.lookup(f"sip.voice.{ALICE[1]}.msisdn")
    st.check(res.found and lab.site_of(res.site or "") == "C",
             "found at C again, on the first lookup")
    st.call("Asterisk", s.asterisk_call, "C")
    if s.phones:
        st.phone_sms("back?", "C")
    took = time.monotonic() - t_start
    if st.failures:
        print(f"\n{_bold('demo FAILED')} ({took:.1f} s): " + "; ".join(st.failures))
    else:
        what = "phone to phone" if s.phones else "through the stand-in"
        print(f"\n{_bold('demo passed')} in {took:.1f} s: calls and SMS ({what}) reached "
              "the village where Alice is, and were refused cleanly while it was cut off.")
    if keep and cheat_sheet is not None:
        cheat_sheet(lab)
    return 1 if st.failures else 0
