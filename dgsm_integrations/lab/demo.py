"""``dgsm-lab demo``: the D-GSM story told with real components, in under a minute.

Alice (home village A) attaches at village C; Bob at B calls her through the FreeSWITCH and
the Asterisk integrations and sends her an SMS through the ESME; C's link goes lossy, then
down, then comes back. Each step says what was asked, which villages answered with which
age, who won, and how long it took. Exit status 0 only if every step behaved as D-GSM must.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from ..mslookup import AnswerTrace, Result
from ..mslookup.engine import DEFAULT_RESEND
from .distro import Distro, default_osmocom
from .network import Lab
from .services import Services

__all__ = ["ALICE", "BOB", "run_demo"]

ALICE = ("901700000000001", "1001")  # home A
BOB = ("901700000000002", "1002")  # home B


def _bold(text: str) -> str:
    return f"\033[1m{text}\033[0m" if sys.stdout.isatty() else text


class _Story:
    def __init__(self, lab: Lab, services: Services) -> None:
        self.lab, self.s = lab, services
        self.failures: list[str] = []

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


def _whose(distro: Distro) -> str:
    return "this host's" if distro.root is None else f"Debian {distro.name}'s"


def run_demo(villages: list[str] | None = None, keep: bool = False,
             cheat_sheet: Callable[[Lab], None] | None = None,
             distro: Distro | None = None) -> int:
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
        # phones (lab/phone.py) are not in the story yet: B's SMS come from the stand-in
        with Services(lab, phones=False) as s:
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
            kind = s.smsc_kind("C")
            if kind == "osmo-msc":
                kind += f" {distro.version('osmo-msc')}"
            print(f"   SMSCs: A and C {kind}, B a stand-in OsmoMSC that sends "
                  "deliver_sm as if its phones did")
            st.step("Alice's home is A, Bob's is B (provisioned over each OsmoHLR's VTY)")
            lab["A"].provision(*ALICE)
            lab["B"].provision(*BOB)
            t0 = time.monotonic()
            lab["B"].attach(BOB[0])
            took_ms = 1000 * (time.monotonic() - t0)
            print(f"   Bob attaches at B (GSUP Location Updating)  {took_ms:.0f} ms")
            st.step("Alice travels to C and switches her phone on")
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
            st.sms("hello Alice", "C")
            st.step("C's wifi link turns bad: 20% of packets lost each way")
            lab.lossy("C", 20)
            res = st.lookup(f"smpp.sms.{ALICE[1]}.msisdn")
            st.check(res.found, f"still found (every query is sent {DEFAULT_RESEND + 1} times "
                     "over the wait)")
            st.sms("are you there?", "C", tries=3)
            lab.lossy("C", 0)
            st.step("C's link goes down")
            lab.cut("C")
            res = st.lookup(f"sip.voice.{ALICE[1]}.msisdn")
            st.check(not res.found, "not found, after the wait and no longer: nothing hangs")
            st.call("FreeSWITCH", s.freeswitch_call, None)
            st.call("Asterisk", s.asterisk_call, None)
            st.sms("hello?", None)
            st.step("C's link comes back")
            lab.restore("C")
            res = st.lookup(f"sip.voice.{ALICE[1]}.msisdn")
            st.check(res.found and lab.site_of(res.site or "") == "C",
                     "found at C again, on the first lookup")
            st.call("Asterisk", s.asterisk_call, "C")
            took = time.monotonic() - t_start
            if st.failures:
                print(f"\n{_bold('demo FAILED')} ({took:.1f} s): " + "; ".join(st.failures))
            else:
                print(f"\n{_bold('demo passed')} in {took:.1f} s: calls and SMS reached the "
                      "village where Alice is, and were refused cleanly while it was cut off.")
            if keep and cheat_sheet is not None:
                cheat_sheet(lab)
            return 1 if st.failures else 0
