"""Phone to phone across villages: every village runs a real osmo-stp, osmo-msc (A interface)
and OsmoHLR, and an ESME of ours bound to its osmo-msc; the phones are lab phones
(:mod:`dgsm_integrations.lab.phone`).

Alice (home A) switches on at C: a real Location Updating through C's osmo-msc, which C's
OsmoHLR proxies to A (D-GSM). Bob (home B) texts her: his phone's SMS-SUBMIT leaves B's real
osmo-msc (``smpp-first``, default route) as deliver_sm to B's ESME, which looks Alice up
(mslookup), submits to C's osmo-msc, which pages Alice's phone; her phone receives the
SMS-DELIVER. What is checked is what the phones got, byte for byte.

One lab per Osmocom generation for the whole module (ids name the versions).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from dgsm_integrations.lab.network import Lab
from dgsm_integrations.lab.phone import LabPhone, PhoneError, concat_udh, gsm7_septets
from dgsm_integrations.lab.services import Services

from .peers import AGE_GAP, generations, require_binary, require_generation

pytestmark = [pytest.mark.slow]

MIN_DELAY = 0.2
ALICE = ("901700000001001", "1001")  # home A
BOB = ("901700000001002", "1002")  # home B
#: osmo-msc waits 5 s for the deliver_sm_resp (smpp_msc.c: response_timer), then answers
#: the phone RP-ERROR as if the ESME had said RSYSERR; the ESME's budget is below it
OSMO_MSC_DELIVER_SM_TIMEOUT = 5.0


@dataclass
class Net:
    lab: Lab
    s: Services
    alice: LabPhone  # at C (roaming)
    bob: LabPhone  # at B (home)
    roaming_lu: float


@pytest.fixture(scope="module", params=generations("osmo-hlr", "osmo-msc", "osmo-stp"))
def net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Net]:
    distro = require_generation(request.param, "osmo-hlr", "osmo-msc", "osmo-stp")
    require_binary("gcc")
    with Lab(workdir=tmp_path_factory.mktemp("sms"), distro=distro) as lab, \
            Services(lab, min_delay=MIN_DELAY, phones=True) as s:
        lab["A"].provision(*ALICE)
        lab["B"].provision(*BOB)
        bob = s.phone("B", BOB[0])
        s.attach_phone(bob)
        alice = s.phone("C", ALICE[0])
        took = s.attach_phone(alice)
        yield Net(lab, s, alice, bob, took)


_ref = iter(range(1, 1_000_000))


def send(net: Net, text: str, *, ucs2: bool = False, udh: bytes = b"",
         to: str = ALICE[1]) -> tuple[bool, int | None, float]:
    """Bob's phone sends; (RP-ACK?, RP cause, seconds until the answer)."""
    ref = next(_ref)
    t0 = time.monotonic()
    res = net.bob.send_sms(to, text, ucs2=ucs2, udh=udh, rp_ref=ref % 256, tp_ref=ref % 256)
    return res.acked, res.cause, time.monotonic() - t0


def test_roaming_lu_through_c_real_msc_reaches_home_hlr(net: Net) -> None:
    shown = net.lab["A"].hlr.show_subscriber(ALICE[0])  # type: ignore[union-attr]
    assert "VLR number: MSC-C" in shown, shown  # A's HLR saw C's real osmo-msc
    found, _ = net.s.lookup(f"smpp.sms.{ALICE[1]}.msisdn", at="B")
    assert found.found and str(found.v4) == f"{net.lab['C'].addr}:2775", found
    assert found.age in (0, 1, 2), found


@pytest.mark.parametrize(("text", "ucs2"), [
    ("Hello Alice, it's Bob @ B: 100% {ok} [sure] ~ €5", False),
    ("Привет, Алиса! 你好 👋", True),
], ids=["gsm7", "ucs2"])
def test_phone_to_phone_across_villages_exact_text_sender_coding(
        net: Net, text: str, ucs2: bool) -> None:
    acked, cause, took = send(net, text, ucs2=ucs2)
    assert (acked, cause) == (True, None)
    got = net.alice.receive_sms(wait=10)
    assert got.sender == BOB[1]
    assert got.text == text
    if ucs2:
        assert got.dcs == 0x08 and got.user_data == text.encode("utf-16-be")
    else:
        assert got.dcs == 0x00 and got.user_data == gsm7_septets(text)
    assert got.udh == b""
    assert took < 2.0, took


def test_three_part_concatenated_sms_every_part_byte_exact(net: Net) -> None:
    parts = ["A" * 150 + "xyz", "part two: " + "b" * 143, "the end @ C"]
    assert all(len(gsm7_septets(p)) <= 153 for p in parts)
    for i, part in enumerate(parts, 1):
        acked, cause, _ = send(net, part, udh=concat_udh(0x42, 3, i))
        assert (acked, cause) == (True, None), i
    got = [net.alice.receive_sms(wait=10) for _ in parts]
    by_part = {}
    for g in got:
        assert g.udh[:4] == bytes([0x00, 3, 0x42, 3]), g.udh.hex()
        by_part[g.udh[4]] = g
    assert sorted(by_part) == [1, 2, 3]  # each part once
    for i, part in enumerate(parts, 1):
        assert by_part[i].user_data == gsm7_septets(part), i
        assert by_part[i].text == part and by_part[i].sender == BOB[1]
    assert "".join(by_part[i].text for i in (1, 2, 3)) == "".join(parts)


def test_ucs2_concatenated_parts_reassemble(net: Net) -> None:
    parts = ["Часть первая " * 5, "и вторая."]
    for i, part in enumerate(parts, 1):
        assert send(net, part, ucs2=True, udh=concat_udh(0x43, 2, i))[:2] == (True, None)
    got = [net.alice.receive_sms(wait=10) for _ in parts]
    got.sort(key=lambda g: g.udh[4])
    assert [g.user_data for g in got] == [p.encode("utf-16-be") for p in parts]


def test_cut_link_rp_error_within_osmo_msc_budget(net: Net) -> None:
    net.lab.cut("C")
    try:
        acked, cause, took = send(net, "are you there?")
    finally:
        net.lab.restore("C")
    # the ESME found nobody (RSYSERR, its budget): osmo-msc makes that RP-ERROR 27,
    # "destination out of order", before its own 5 s deliver_sm timer
    assert (acked, cause) == (False, 27)
    assert took < OSMO_MSC_DELIVER_SM_TIMEOUT, took
    assert took >= MIN_DELAY, took  # it did wait for answers, then gave up
    with pytest.raises(PhoneError):
        net.alice.receive_sms(wait=1.0)  # nothing was delivered
    # the link is back: the next SMS goes through
    assert send(net, "back?")[:2] == (True, None)
    assert net.alice.receive_sms(wait=10).text == "back?"


def test_recipient_moves_home_mid_conversation_next_sms_follows_her(net: Net) -> None:
    assert send(net, "at C?")[:2] == (True, None)
    assert net.alice.receive_sms(wait=10).text == "at C?"
    time.sleep(AGE_GAP)  # OsmoHLR ages in whole seconds: C's record must be older than A's
    home = net.s.phone("A", ALICE[0])
    net.s.attach_phone(home)
    found, _ = net.s.lookup(f"smpp.sms.{ALICE[1]}.msisdn", at="B")
    assert found.found and str(found.v4) == f"{net.lab['A'].addr}:2775", found
    assert send(net, "welcome home")[:2] == (True, None)
    got = home.receive_sms(wait=10)
    assert (got.text, got.sender) == ("welcome home", BOB[1])
    # and back to C: the phone there attaches again (a normal LU), the SMS follow
    time.sleep(AGE_GAP)
    net.s.attach_phone(net.alice)
    assert send(net, "back at C")[:2] == (True, None)
    assert net.alice.receive_sms(wait=10).text == "back at C"
    with pytest.raises(PhoneError):
        home.receive_sms(wait=0.5)


def sms_rows(net: Net, village: str, text: bytes) -> list[dict[str, object]]:
    """Rows of ``village``'s osmo-msc SMS database whose user data holds ``text`` (GSM 7-bit
    is stored packed: compared unpacked)."""
    from dgsm_integrations.lab.osmomsc import unpack_septets
    msc = net.s.endpoints[village].msc
    assert msc is not None
    out = []
    for row in msc.stored_sms():
        data = bytes(row["user_data"] or b"")
        if row["data_coding_scheme"] == 0:
            data = unpack_septets(data, len(data) * 8 // 7)
        if text in data:
            out.append(row)
    return out


def test_cut_link_with_queue_accepted_then_delivered_once_after_restore(net: Net) -> None:
    """--queue: the ESME answers ROK once the SMS is stored, so Bob's phone gets RP-ACK
    while C is cut off; after the link returns the store's retry looks Alice up again and
    delivers it: her phone gets it exactly once."""
    net.s.use_queue(True)
    try:
        net.lab.cut("C")
        try:
            acked, cause, took = send(net, "stored for you")
            store = net.s.esme_store
            assert store is not None
        finally:
            net.lab.restore("C")
        assert (acked, cause) == (True, None)  # accepted: durably stored at B
        assert took < OSMO_MSC_DELIVER_SM_TIMEOUT, took
        got = net.alice.receive_sms(wait=15)
        assert (got.text, got.sender) == ("stored for you", BOB[1])
        deadline = time.monotonic() + 5
        while store.delivered < 1:  # the store records the delivery after the submit_sm_resp
            assert time.monotonic() < deadline, "the store never recorded the delivery"
            time.sleep(0.05)  # polling a counter: no event to await from here
        assert store.delivered == 1
        # exactly once: no second paging through two more retry periods, one row at C
        with pytest.raises(PhoneError):
            net.alice.receive_sms(wait=4 * net.s.queue_retry)
        # and nothing left at C to deliver again (osmo-msc removes what it delivered)
        assert [r for r in sms_rows(net, "C", b"stored for you") if r["sent"] is None] == []
    finally:
        net.s.use_queue(False)


def test_recipient_switched_off_sms_waits_at_her_village_until_she_is_back(net: Net) -> None:
    """IMSI DETACH at C. C's OsmoHLR keeps answering mslookup for her (1.5 and 1.9.4; with
    osmo-msc 1.16 even after the Purge MS), so the ESME still submits to C, whose osmo-msc
    accepts and stores it (Bob's phone gets RP-ACK) and does not page a detached phone.
    When she switches on again at C, osmo-msc delivers what it holds."""
    net.alice.imsi_detach()
    found, _ = net.s.lookup(f"smpp.sms.{ALICE[1]}.msisdn", at="B")
    assert found.found and str(found.v4) == f"{net.lab['C'].addr}:2775", found
    assert send(net, "while you were off")[:2] == (True, None)
    with pytest.raises(PhoneError):
        net.alice.receive_sms(wait=2.0)  # not paged: osmo-msc knows she is detached
    (row,) = sms_rows(net, "C", b"while you were off")
    assert row["sent"] is None
    net.s.attach_phone(net.alice)  # switched on again at C
    got = net.alice.receive_sms(wait=15)
    assert got.text == "while you were off"
    # osmo-msc delivers it on the LU's own connection, right after LOCATION UPDATING ACCEPT
    lu_at = max(i for i, line in enumerate(net.alice.trace) if "LOCATION UPDATING ACCEPT" in line)
    assert "MSC -> phone  CP-DATA (RP-DATA, SMS-DELIVER from 1002)" in net.alice.trace[lu_at:]
    if net.lab.distro.version("osmo-msc") == "1.9.0":
        with pytest.raises(PhoneError):
            net.alice.receive_sms(wait=2.0)  # once
    else:
        # osmo-msc 1.16 keeps it as not sent although her phone acknowledged it on the LU's
        # connection, and delivers it again with the next SMS for her: a duplicate
        (row,) = sms_rows(net, "C", b"while you were off")
        assert row["sent"] is None, row
        assert send(net, "after the duplicate")[:2] == (True, None)
        texts = sorted(net.alice.receive_sms(wait=10).text for _ in range(2))
        assert texts == ["after the duplicate", "while you were off"]


def test_mt_refused_by_the_phone_is_delivered_again(net: Net) -> None:
    """Alice's phone answers the SMS-DELIVER with RP-ERROR 22 (memory capacity exceeded):
    Bob had his RP-ACK already (C accepted it); osmo-msc keeps the SMS as not sent (one
    delivery attempt) and pages her again (measured: about 1 s later, both generations);
    once her phone acknowledges, the SMS leaves C's database."""
    assert send(net, "your memory is full")[:2] == (True, None)
    got = net.alice.receive_sms(wait=10, refuse=22)
    assert got.text == "your memory is full" and got.refused == 22
    assert "phone -> MSC  CP-ACK; CP-DATA (RP-ERROR cause 22)" in net.alice.trace
    (row,) = sms_rows(net, "C", b"your memory is full")
    assert row["sent"] is None and row["deliver_attempts"] == 1, row
    again = net.alice.receive_sms(wait=10)
    assert (again.text, again.user_data, again.refused) == (
        "your memory is full", got.user_data, None)
    assert sms_rows(net, "C", b"your memory is full") == []


def test_status_report_requested_by_bob_comes_back_to_his_phone(net: Net) -> None:
    """TP-SRR set: once Alice's phone has acknowledged, C's osmo-msc makes a status report
    for Bob; it leaves C through C's ESME (deliver_sm, esm_class delivery receipt), which
    looks Bob up and submits it to B's osmo-msc, which pages Bob's phone with an
    SMS-STATUS-REPORT: his TP-MR, Alice's number, status 0 (received by the SME)."""
    ref = next(_ref) % 256
    res = net.bob.send_sms(ALICE[1], "report please", rp_ref=ref, tp_ref=ref,
                           status_report=True)
    assert res.acked
    assert net.alice.receive_sms(wait=10).text == "report please"
    report = net.bob.receive_sms(wait=10)
    assert (report.report, report.sender, report.status) == (ref, ALICE[1], 0), report
    assert report.tpdu[0] & 0x03 == 2  # TP-MTI: SMS-STATUS-REPORT


#: osmo-msc's paging response timeout: timer X4 of its GERAN (A interface) timers,
#: ran_infra.c, 10 s by default in 1.9 and 1.16 (``timer geran X4`` on its VTY)
OSMO_MSC_PAGING_TIMEOUT = 10.0


def test_paging_nobody_answers_sms_waits_at_c_for_the_next_sms_for_her(net: Net) -> None:
    """Alice's phone is switched on and attached at C but out of coverage: it does not answer
    the PAGING. C's osmo-msc accepted the ESME's submit_sm when it stored the SMS, before it
    paged (Bob had his RP-ACK first). It pages once (BSSMAP PAGING: the BSC repeats it on the
    air, not the MSC); after X4 (10 s) the paging expires, its SMS queue logs one failed
    attempt and, with its default of one, does not try again: the SMS stays in C's database,
    unsent (one delivery attempt counted), and nothing pages her again by itself. Nobody tells
    the ESME or Bob. The next SMS for her makes osmo-msc run its queue: it pages, her phone
    answers (back in coverage), and she gets both, each once."""
    msc = net.s.endpoints["C"].msc
    assert msc is not None
    acked, cause, _ = send(net, "out of coverage?")
    t_acked = time.monotonic()
    assert (acked, cause) == (True, None)  # C stored it: ROK to the ESME, RP-ACK to Bob
    (row,) = sms_rows(net, "C", b"out of coverage?")
    assert row["sent"] is None, row
    (paged,) = net.alice.pagings(within=3.0)  # its SMS queue runs 1 s after a new SMS
    assert paged > t_acked
    failed = f"Sending SMS {row['id']} failed 1 times"
    deadline = paged + OSMO_MSC_PAGING_TIMEOUT + 3.0
    while failed not in msc.log_text():
        assert time.monotonic() < deadline, f"no '{failed}' in osmo-msc's log:\n" + \
            msc.log_tail()
        time.sleep(0.05)  # polling a log file: no event to await from here
    expired = time.monotonic() - paged
    assert OSMO_MSC_PAGING_TIMEOUT - 0.5 <= expired <= OSMO_MSC_PAGING_TIMEOUT + 1.0, expired
    # no second paging, from the first until 3 s after it expired
    assert net.alice.pagings(within=3.0) == []
    (row,) = sms_rows(net, "C", b"out of coverage?")
    # the one attempt counted when osmo-msc built the SMS-DELIVER for that paging
    assert row["sent"] is None and row["deliver_attempts"] == 1, row
    # back in coverage; the next SMS for her brings the one that waited
    assert send(net, "are you back?")[:2] == (True, None)
    got = [net.alice.receive_sms(wait=10) for _ in range(2)]
    assert sorted(g.text for g in got) == ["are you back?", "out of coverage?"]
    assert all(g.sender == BOB[1] for g in got)
    with pytest.raises(PhoneError):
        net.alice.receive_sms(wait=2.0)  # each once
    for text in (b"out of coverage?", b"are you back?"):
        assert [r for r in sms_rows(net, "C", text) if r["sent"] is None] == [], text
