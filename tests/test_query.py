from __future__ import annotations

import pytest

from dgsm_integrations.mslookup import IdType, InvalidQuery, Query, Timing

VALID = [
    # text, service, id, id type, min_delay_ms, timeout_ms
    ("sip.voice.1001.msisdn", "sip.voice", "1001", IdType.MSISDN, None, None),
    ("gsup.hlr.901700000000001.imsi", "gsup.hlr", "901700000000001", IdType.IMSI, None, None),
    ("smpp.sms.1.MSISDN", "smpp.sms", "1", IdType.MSISDN, None, None),
    ("foo.123456.IMSI", "foo", "123456", IdType.IMSI, None, None),
    ("a.b.c.d.5.msisdn", "a.b.c.d", "5", IdType.MSISDN, None, None),
    ("5000@gsup.hlr.1234567.imsi", "gsup.hlr", "1234567", IdType.IMSI, 0, 5000),
    ("1000-5000@sip.voice.123.msisdn", "sip.voice", "123", IdType.MSISDN, 1000, 5000),
    ("10000-@smpp.sms.567.msisdn", "smpp.sms", "567", IdType.MSISDN, 10000, 0),
    ("@sip.voice.123.msisdn", "sip.voice", "123", IdType.MSISDN, 0, 0),
    ("-@sip.voice.123.msisdn", "sip.voice", "123", IdType.MSISDN, 0, 0),
    ("a" * 31 + "." + "b" * 32 + ".123.msisdn", "a" * 31 + "." + "b" * 32, "123", IdType.MSISDN,
     None, None),
    ("sip.voice.123456789012345.msisdn", "sip.voice", "123456789012345", IdType.MSISDN,
     None, None),
]


@pytest.mark.parametrize(("text", "service", "ident", "kind", "delay", "timeout"), VALID)
def test_parse_valid(text: str, service: str, ident: str, kind: IdType,
                     delay: int | None, timeout: int | None) -> None:
    q = Query.parse(text)
    assert (q.service, q.id, q.id_type, q.min_delay_ms, q.timeout_ms) == (
        service, ident, kind, delay, timeout)
    assert Query.parse(str(q)) == q


INVALID = [
    "", "sip", "sip.voice", "1001.msisdn", ".1001.msisdn", "sip.voice..msisdn",
    "sip.voice.1001.email", "sip.voice.1001.", "sip.voice.10a1.msisdn",
    "sip.voice.1234567890123456.msisdn",  # 16 digits
    "sip.voice.12345.imsi",  # IMSI needs 6..15
    "sip.voice.1234567890123456.imsi",
    "x" * 65 + ".123.msisdn", "x" * 64 + ".123.msisdn", "a" * 32 + "." + "b" * 32 + ".1.msisdn",
    "sip..voice.1.msisdn", "sip voice.1.msisdn", "sip;x.1.msisdn", "sip/x.1.msisdn",
    "s\u00e9p.1.msisdn", "sip.voice.+1001.msisdn", "sip.voice.-1.msisdn",
    "abc@sip.voice.1.msisdn", "1-2-3@sip.voice.1.msisdn", "99999999999999@sip.voice.1.msisdn",
    "sip.voice.1001.msisdn\n", "sip.voice.1001.msisdn.mdns.osmocom.org",
    "sip.voice.\u0661\u0662.msisdn",  # Arabic-Indic digits are not digits here
]


@pytest.mark.parametrize("text", INVALID)
def test_parse_invalid(text: str) -> None:
    with pytest.raises(InvalidQuery):
        Query.parse(text)


def test_direct_construction_validates() -> None:
    assert Query("sip.voice", "12", "MSISDN").id_type is IdType.MSISDN  # type: ignore[arg-type]
    with pytest.raises(InvalidQuery):
        Query("sip.voice", "12", "email")  # type: ignore[arg-type]
    with pytest.raises(InvalidQuery):
        Query("", "12", IdType.MSISDN)
    with pytest.raises(InvalidQuery):
        Query("sip.voice", "12", IdType.MSISDN, timeout_ms=-1)


TIMING = [
    # query, default min_delay, default timeout, effective (min_delay, timeout)
    ("sip.voice.1.msisdn", 1.0, None, (1.0, 1.0)),
    ("sip.voice.1.msisdn", 1.0, 3.0, (1.0, 3.0)),
    ("sip.voice.1.msisdn", 0.0, None, (0.0, 1.0)),
    ("5000@sip.voice.1.msisdn", 1.0, None, (0.0, 5.0)),
    ("1000-5000@sip.voice.1.msisdn", 0.2, None, (1.0, 5.0)),
    ("10000-@sip.voice.1.msisdn", 0.2, None, (10.0, 10.0)),
    ("@sip.voice.1.msisdn", 0.2, 0.3, (0.0, 1.0)),
]


@pytest.mark.parametrize(("text", "md", "to", "expected"), TIMING)
def test_timing_follows_libosmo(text: str, md: float, to: float | None,
                                expected: tuple[float, float]) -> None:
    t = Timing.of(Query.parse(text), md, to)
    assert (t.min_delay, t.timeout) == expected
