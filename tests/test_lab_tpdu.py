"""The lab phone's own TPDU codec (TS 23.040): what it sends must be what pycrate (and so a
real MSC) reads, and what it parses must be exactly what was packed, UDH and fill bits too."""

from __future__ import annotations

import pytest
from pycrate_mobile import TS23040_SMS

from dgsm_integrations.lab.netns import LabError
from dgsm_integrations.lab.phone import (
    PhoneError,
    concat_udh,
    gsm7_septets,
    gsm7_text,
    pack_septets,
    parse_sms_deliver,
    sms_submit,
    unpack_septets,
)


def test_sms_submit_is_byte_identical_to_pycrate_without_udh() -> None:
    # what the earlier phone sent with pycrate's encoder (and osmo-msc turned into deliver_sm)
    assert sms_submit("4343", "Hello", tp_ref=42).hex() == "012a04913434000005c8329bfd06"
    assert sms_submit("4343", "Hi", ucs2=True, tp_ref=42).hex() == "012a0491343400080400480069"


@pytest.mark.parametrize("text", ["x" * 153, "A{€}[~]|^\\ @ok", ""])
def test_sms_submit_with_concat_udh_reads_back_in_pycrate(text: str) -> None:
    raw = sms_submit("1001", text, udh=concat_udh(7, 3, 2), status_report=True)
    parsed = TS23040_SMS.SMS_SUBMIT()
    parsed.from_bytes(raw)
    assert parsed["TP_UDHI"].get_val() == 1 and parsed["TP_SRR"].get_val() == 1
    assert parsed["TP_UD"]["UD"].decode() == text


@pytest.mark.parametrize("fill", range(7))
def test_septet_packing_round_trips_at_every_fill(fill: int) -> None:
    septets = bytes(range(0, 128, 3))
    assert unpack_septets(pack_septets(septets, fill), len(septets), fill) == septets


def test_gsm7_alphabet_round_trip_and_refusal() -> None:
    text = "@£$¥ Hello {x} €5 ~ü"
    assert gsm7_text(gsm7_septets(text)) == text
    with pytest.raises(LabError):
        gsm7_septets("你好")


def deliver(ud: bytes, udl: int, dcs: int = 0, first: int = 0x00) -> bytes:
    return bytes([first, 4, 0xB1, 0x01, 0x20, 0, dcs]) + bytes(7) + bytes([udl]) + ud


def test_parse_sms_deliver_with_udh_and_fill_bits() -> None:
    udh = concat_udh(0x42, 3, 1)
    head = bytes([len(udh)]) + udh  # 6 octets = 48 bits: 7 septets, 1 fill bit
    septets = gsm7_septets("part one")
    raw = deliver(head + pack_septets(septets, 1), 7 + len(septets), first=0x40)
    got = parse_sms_deliver(raw, 5)
    assert (got.sender, got.text, got.udh, got.user_data, got.rp_ref) == (
        "1002", "part one", udh, septets, 5)


@pytest.mark.parametrize("raw", [
    b"",
    bytes([0x00, 30]),  # 30-digit originator
    deliver(b"\x01\x02", 9),  # UDL larger than the data
    deliver(b"\x05\x00", 2, first=0x40, dcs=0x04),  # UDH longer than the user data
    bytes([0x01]) + bytes(20),  # an SMS-SUBMIT is not for a phone to receive
], ids=["empty", "long-address", "udl", "udh", "submit"])
def test_parse_sms_deliver_refuses_malformed(raw: bytes) -> None:
    with pytest.raises(PhoneError):
        parse_sms_deliver(raw, 0)
