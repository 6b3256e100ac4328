"""Wire codec: byte-exact against OsmoHLR captures, and strict where OsmoHLR is strict."""

from __future__ import annotations

import struct

import pytest
from dnslib import QTYPE, RR, TXT, A, DNSHeader, DNSQuestion, DNSRecord

from dgsm_integrations.mslookup import Endpoint, IdType, InvalidQuery, Query, WireError
from dgsm_integrations.mslookup import wire as wire_module
from dgsm_integrations.mslookup.wire import (
    decode_answer,
    decode_query,
    encode_answer,
    encode_query,
    is_answer,
)

from .vectors import all_vectors, vector

SIP = Query.parse("sip.voice.1001.msisdn")
NAME = SIP.name()


@pytest.mark.parametrize("name", [v for v in all_vectors() if "query" in v])
def test_query_vectors_roundtrip(name: str) -> None:
    data = vector(name)
    suffix = "example.net" if "example.net" in name else "mdns.osmocom.org"
    packet_id, query = decode_query(data, suffix)
    assert is_answer(data) is False
    assert encode_query(query, packet_id, suffix) == data


@pytest.mark.parametrize("text", [
    "sip.voice.1001.msisdn", "smpp.sms.123456789012345.msisdn", "gsup.hlr.901700000000001.imsi",
    "a.1.MSISDN", "x_y-z." + "9" * 15 + ".msisdn", "s" * 63 + ".123456.imsi",
])
@pytest.mark.parametrize("suffix", ["mdns.osmocom.org", "example.net", "a.b.c.d.e"])
@pytest.mark.parametrize("packet_id", [0, 1, 0x1234, 0xFFFF])
def test_hand_written_query_equals_dnslib_packing(text: str, suffix: str, packet_id: int) -> None:
    """encode_query is written by hand (no dnslib import); it must give dnslib's bytes."""
    query = Query.parse(text)
    reference = DNSRecord(DNSHeader(id=packet_id, bitmap=0, q=1),
                          q=DNSQuestion(query.name(suffix), 255, 1)).pack()
    assert encode_query(query, packet_id, suffix) == reference


@pytest.mark.parametrize("suffix", ["", "a..b", "b" * 64, "ü.org", ".".join(["abcdefgh"] * 30)])
def test_hand_written_query_refuses_names_dns_cannot_carry(suffix: str) -> None:
    with pytest.raises(InvalidQuery):
        encode_query(SIP, 1, suffix)


@pytest.mark.parametrize("name", [v for v in all_vectors() if "answer" in v])
def test_answer_vectors_roundtrip(name: str) -> None:
    data = vector(name)
    answer = decode_answer(data)
    assert is_answer(data) is True
    assert encode_answer(answer.query, answer.packet_id, answer.age, answer.v4, answer.v6) == data


def test_vector_contents() -> None:
    a = decode_answer(vector("hlr_answer_sip.voice.1001.msisdn_age42_v4"))
    assert (a.query, a.age, a.v4, a.v6) == (SIP, 42, Endpoint("127.0.0.2", 5060), None)
    q_id, q = decode_query(vector("hlr_query_sip.voice.1001.msisdn"))
    assert q == SIP
    assert a.packet_id == q_id == 0xAC9E  # OsmoHLR echoes the query id
    g = decode_answer(vector("send_answer_gsup.hlr.901700000000001.imsi_age0_v4_v6"))
    assert g.query.id_type is IdType.IMSI and g.age == 0
    assert g.v4 == Endpoint("10.0.0.1", 4222) and g.v6 == Endpoint("2001:db8::1", 4222)
    v6 = decode_answer(vector("send_answer_sip.voice.1001.msisdn_age7_v6only"))
    assert v6.v4 is None and v6.v6 == Endpoint("2001:db8::5", 5060) and v6.age == 7


# --- dnslib defects that matter to us (why wire.py does not use DNSRecord.pack/parse) -------

def test_dnslib_pack_compresses_names_which_osmohlr_rejects() -> None:
    r = DNSRecord(DNSHeader(id=0xAC9E, qr=1, rd=0))
    r.add_answer(RR(NAME, QTYPE.TXT, ttl=0, rdata=TXT("age=42")))
    r.add_answer(RR(NAME, QTYPE.A, ttl=0, rdata=A("127.0.0.2")))
    r.add_answer(RR(NAME, QTYPE.TXT, ttl=0, rdata=TXT("port=5060")))
    packed = r.pack()
    assert b"\xc0\x0c" in packed  # a compression pointer
    assert packed != vector("hlr_answer_sip.voice.1001.msisdn_age42_v4")
    with pytest.raises(WireError, match="compressed"):
        decode_answer(packed)


def test_dnslib_parse_accepts_trailing_bytes_which_osmohlr_rejects() -> None:
    data = vector("hlr_answer_sip.voice.1001.msisdn_age42_v4") + b"junk"
    assert len(DNSRecord.parse(data).rr) == 3  # dnslib: fine
    with pytest.raises(WireError):
        decode_answer(data)


# --- what OsmoHLR's decoder rejects, we reject ------------------------------------------------

def _rr(rtype: int, rdata: bytes, name: str = NAME, rclass: int = 1, ttl: int = 0) -> bytes:
    wire = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return wire + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def _txt(text: str) -> bytes:
    return bytes([len(text)]) + text.encode()


def _answer(*records: bytes, ancount: int | None = None, qdcount: int = 0,
            flags: int = 0x8000) -> bytes:
    n = len(records) if ancount is None else ancount
    return struct.pack("!HHHHHH", 0x1234, flags, qdcount, n, 0, 0) + b"".join(records)


AGE = _rr(16, _txt("age=3"))
A4 = _rr(1, bytes([10, 9, 8, 7]))
PORT = _rr(16, _txt("port=5060"))
AAAA = _rr(28, bytes(15) + b"\x01")


def test_hand_built_answer_is_accepted() -> None:
    a = decode_answer(_answer(AGE, A4, PORT, AAAA, PORT))
    assert a.age == 3 and a.v4 == Endpoint("10.9.8.7", 5060) and a.v6 == Endpoint("::1", 5060)
    # OsmoHLR checks neither class nor TTL of records, nor the order of age
    assert decode_answer(_answer(A4, PORT, _rr(16, _txt("age=3"), rclass=3, ttl=9))).age == 3


REJECTED = {
    "runt": b"\x12\x34\x80\x00",
    "query not answer": _answer(AGE, A4, PORT, flags=0),
    "question section": _answer(AGE, A4, PORT, qdcount=1),
    "count differs": _answer(AGE, A4, PORT, ancount=4),
    "count differs low": _answer(AGE, A4, PORT, ancount=2),
    "trailing bytes": _answer(AGE, A4, PORT) + b"\0",
    "differing names": _answer(AGE, A4, _rr(16, _txt("port=5060"),
                                            name="sip.voice.1002.msisdn.mdns.osmocom.org")),
    "wrong suffix": _answer(*(_rr(t, d, name="sip.voice.1.msisdn.example.org")
                              for t, d in ((16, _txt("age=1")), (1, b"\1\2\3\4"),
                                           (16, _txt("port=1"))))),
    "unknown TXT key": _answer(AGE, A4, PORT, _rr(16, _txt("foo=1"))),
    "TXT without =": _answer(AGE, A4, PORT, _rr(16, _txt("age"))),
    "TXT two strings": _answer(_rr(16, _txt("age=3") + _txt("x=1")), A4, PORT),
    "TXT empty": _answer(AGE, A4, PORT, _rr(16, b"")),
    "duplicate A": _answer(AGE, A4, PORT, A4, PORT),
    "duplicate AAAA": _answer(AGE, AAAA, PORT, AAAA, PORT),
    "duplicate age": _answer(AGE, A4, PORT, AGE),
    "port before address": _answer(AGE, PORT, A4, PORT),
    "address before port": _answer(AGE, A4, AAAA, PORT, PORT),
    "missing age": _answer(A4, PORT),
    "missing address": _answer(AGE),
    "missing port": _answer(AGE, A4),
    "A of 5 bytes": _answer(AGE, _rr(1, b"\1\2\3\4\5"), PORT),
    "AAAA of 4 bytes": _answer(AGE, _rr(28, b"\1\2\3\4"), PORT),
    "CNAME record": _answer(AGE, A4, PORT, _rr(5, b"\0")),
    "age not a number": _answer(_rr(16, _txt("age=abc")), A4, PORT),
    "age negative": _answer(_rr(16, _txt("age=-1")), A4, PORT),
    "age over 32 bits": _answer(_rr(16, _txt("age=4294967296")), A4, PORT),
    "port over 16 bits": _answer(AGE, A4, _rr(16, _txt("port=65536"))),
    "compression pointer": _answer(AGE, b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 4)
                                   + b"\1\2\3\4", PORT),
    "rdata past end": _answer(AGE, A4, PORT)[:-2],
    "non-digit id": _answer(*(_rr(t, d, name="sip.voice.1x.msisdn.mdns.osmocom.org")
                              for t, d in ((16, _txt("age=1")), (1, b"\1\2\3\4"),
                                           (16, _txt("port=1"))))),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_rejected_like_osmohlr(case: str) -> None:
    with pytest.raises(WireError):
        decode_answer(REJECTED[case])


def test_query_decoding_rejects_junk() -> None:
    good = vector("hlr_query_sip.voice.1001.msisdn")
    for bad in (good + b"\0", good[:-1], b"\0" * 11, good[:2] + b"\x80" + good[3:],
                good[:4] + b"\0\2" + good[6:], vector("hlr_query_sip.voice.1001.msisdn")[:12]):
        with pytest.raises(WireError):
            decode_query(bad)
    with pytest.raises(WireError):
        decode_query(good, suffix="example.net")


def test_queries_of_any_type_decode_like_osmohlr() -> None:
    # OsmoHLR's server does not look at qtype/qclass
    data = bytearray(vector("hlr_query_sip.voice.1001.msisdn"))
    data[-4:] = b"\x00\x01\x00\x03"
    assert decode_query(bytes(data))[1] == SIP


def test_encode_answer_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        encode_answer(SIP, 1, 5)
    with pytest.raises(ValueError):
        encode_answer(SIP, 1, 5, v4=Endpoint("::1", 5))
    with pytest.raises(ValueError):
        encode_answer(SIP, 1, -1, v4=Endpoint("1.2.3.4", 5))


def test_decoded_endpoints_are_canonical_like_endpoint() -> None:
    for v6 in ("::ffff:1.2.3.4", "2001:db8:0:0:1:0:0:1", "fd00::1"):
        data = encode_answer(SIP, 1, 5, Endpoint("10.0.0.1", 5), Endpoint(v6, 6))
        a = decode_answer(data)
        assert a.v6 == Endpoint(v6, 6) and a.v4 == Endpoint("10.0.0.1", 5)


def test_answers_naming_one_endpoint_share_it_and_the_sharing_is_bounded() -> None:
    """Every answer of a site names the same endpoint: the decoder gives them one object
    (and one text) instead of three allocations per answer. Answers naming thousands of
    distinct addresses (a flood) do not grow the table past its bound, and what it gives is
    always the endpoint that answer names."""
    first = decode_answer(encode_answer(SIP, 1, 5, Endpoint("10.0.0.1", 5060)))
    again = decode_answer(encode_answer(SIP, 2, 9, Endpoint("10.0.0.1", 5060)))
    assert first.v4 is again.v4
    other_port = decode_answer(encode_answer(SIP, 3, 9, Endpoint("10.0.0.1", 5061)))
    assert other_port.v4 == Endpoint("10.0.0.1", 5061)
    for n in range(1000):
        v4, v6 = Endpoint(f"10.{n // 256}.{n % 256}.7", 5060), Endpoint(f"fd00::{n:x}", 7)
        a = decode_answer(encode_answer(SIP, n, 1, v4, v6))
        assert (a.v4, a.v6) == (v4, v6)
        assert len(wire_module._ENDPOINTS) <= wire_module._MAX_ENDPOINTS


def test_responder_answers_are_byte_exact_for_any_id() -> None:
    from dgsm_integrations.mslookup import Record, Responder

    golden = vector("hlr_answer_sip.voice.1001.msisdn_age42_v4")
    r = Responder({"sip.voice.1001.msisdn": Record(42, Endpoint("127.0.0.2", 5060))})
    record = r.lookup(SIP)
    assert record is not None
    first = r._encode(SIP, record)
    assert first[2:] == golden[2:]
    assert r._encode(SIP, record) is first  # cached
