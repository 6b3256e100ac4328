"""mslookup over mDNS: bytes on the wire, exactly as OsmoHLR writes and reads them.

Answers are packed with dnslib (in ``_dnslib_answer``, imported only when an answer is
written), with one work-around: dnslib compresses repeated names when it packs a message, and
OsmoHLR's decoder rejects compression; so names are written through a buffer that never
compresses (see docs/dependencies.md). A query is 12 header bytes and one question, written
here by hand so that a process that only asks (the per-call AGI script) never imports dnslib.
Decoding is strict and our own: dnslib follows compression pointers and ignores trailing
bytes, both of which OsmoHLR rejects.

Answers are accepted exactly when OsmoHLR (libosmo-mslookup 1.5) would accept them, except
that the numbers in ``age=`` and ``port=`` must be plain digits (C's strtoll would also take
``age=`` as 0, or a sign or leading blanks).
"""

from __future__ import annotations

import ipaddress
import re
import struct
from functools import lru_cache

from .errors import InvalidAnswer, InvalidQuery, WireError
from .model import Answer, Endpoint
from .query import DEFAULT_SUFFIX, Query

__all__ = [
    "QTYPE_ANY",
    "decode_answer",
    "decode_answer_to",
    "decode_query",
    "encode_answer",
    "encode_query",
    "is_answer",
    "query_name",
]

QTYPE_ANY = 255
TYPE_A = 1
TYPE_TXT = 16
TYPE_AAAA = 28
CLASS_IN = 1
HEADER_LEN = 12
MAX_PACKET = 1024  # OsmoHLR reads at most this much


def _encode_name(name: str) -> bytes:
    """``name`` as uncompressed DNS labels (OsmoHLR rejects compression)."""
    out = bytearray()
    for label in name.split("."):
        raw = label.encode("ascii", "strict") if label.isascii() else b""
        if not 0 < len(raw) < 64:
            raise InvalidQuery(f"cannot encode DNS label {label!r} of {name!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise InvalidQuery(f"DNS name too long ({len(out)} > 255 bytes): {name!r}")
    return bytes(out)


@lru_cache(maxsize=256)
def _labels(text: str) -> bytes:
    """``text`` (a service or a domain suffix) as labels, without the name's final zero:
    a handful of distinct values, each encoded once."""
    return _encode_name(text)[:-1]


_QUESTION_TAIL = struct.pack("!HH", QTYPE_ANY, CLASS_IN)
_QUERY_HEADER = struct.Struct("!6H")


def query_name(query: Query, suffix: str = DEFAULT_SUFFIX) -> bytes:
    """``query.name(suffix)`` as the DNS name on the wire (uncompressed labels), put
    together from the once-encoded service and suffix and the id's digits (a :class:`Query`
    holds 1 to 15). One name per (service, id, id type): what an answer repeats."""
    ident = query.id.encode("ascii")
    name = b"".join((_labels(query.service), bytes((len(ident),)), ident,
                     _labels(query.id_type.value), _labels(suffix), b"\0"))
    if len(name) > 255:
        raise InvalidQuery(f"DNS name too long ({len(name)} > 255 bytes): "
                           f"{query.name(suffix)!r}")
    return name


def encode_query(query: Query, packet_id: int, suffix: str = DEFAULT_SUFFIX,
                 name: bytes | None = None) -> bytes:
    """A query as OsmoHLR's client sends it: one ANY/IN question, flags 0 (``name``:
    :func:`query_name`'s, if the caller has it already).

    Written by hand rather than through dnslib: the per-call AGI script sends one query and
    must not pay dnslib's import (about 9 ms); ``test_wire`` checks it against dnslib's bytes
    and the OsmoHLR captures.
    """
    if name is None:
        name = query_name(query, suffix)
    return _QUERY_HEADER.pack(packet_id & 0xFFFF, 0, 1, 0, 0, 0) + name + _QUESTION_TAIL


def encode_answer(
    query: Query,
    packet_id: int,
    age: int,
    v4: Endpoint | None = None,
    v6: Endpoint | None = None,
    suffix: str = DEFAULT_SUFFIX,
) -> bytes:
    """An answer as OsmoHLR sends it: TXT age, [A, TXT port], [AAAA, TXT port]; TTL 0."""
    if v4 is None and v6 is None:
        raise InvalidAnswer("an answer needs an IPv4 or an IPv6 endpoint")
    if not 0 <= age <= 0xFFFFFFFF:
        raise InvalidAnswer(f"age {age} out of range 0..4294967295")
    if v4 is not None and v4.family != 4:
        raise InvalidAnswer(f"{v4} is not an IPv4 endpoint")
    if v6 is not None and v6.family != 6:
        raise InvalidAnswer(f"{v6} is not an IPv6 endpoint")
    from ._dnslib_answer import pack_answer  # dnslib only where answers are written

    return pack_answer(query.name(suffix), packet_id & 0xFFFF, age, v4, v6)


def is_answer(data: bytes) -> bool | None:
    """True for a response (QR set), False for a query, None if too short to tell."""
    if len(data) < HEADER_LEN:
        return None
    return bool(data[2] & 0x80)


#: One label's bytes: printable ASCII without blank and dot.
_LABEL_BYTES = re.compile(rb"[\x21-\x2d\x2f-\x7e]+")


def _read_name(data: bytes, offset: int) -> tuple[str, int]:
    """Read an uncompressed name; return it (dotted) and the offset after it."""
    labels: list[str] = []
    total = 0
    while True:
        if offset >= len(data):
            raise WireError("name runs past the end of the packet")
        length = data[offset]
        offset += 1
        if length == 0:
            break
        if length & 0xC0:
            raise WireError("compressed or extended label (OsmoHLR rejects these)")
        label = data[offset:offset + length]
        if len(label) != length:
            raise WireError("label runs past the end of the packet")
        if not _LABEL_BYTES.fullmatch(label):
            raise WireError("label with a dot, blank or non-ASCII byte")
        labels.append(label.decode("ascii"))
        offset += length
        total += length + 1
        if total > 255:
            raise WireError("name longer than 255 bytes")
    if not labels:
        raise WireError("empty name")
    return ".".join(labels), offset


@lru_cache(maxsize=4096)
def _query_from_name(name: str, suffix: str) -> Query:
    tail = "." + suffix
    if not name.endswith(tail) or len(name) <= len(tail):
        raise WireError(f"name {name!r} does not end in the domain suffix {suffix!r}")
    if "@" in name:
        raise WireError(f"name {name!r} contains '@'")
    try:
        return Query.parse(name[: -len(tail)])
    except InvalidQuery as exc:
        raise WireError(f"name {name!r} is no valid query: {exc}") from None


def decode_query(data: bytes, suffix: str = DEFAULT_SUFFIX) -> tuple[int, Query]:
    """Decode a query as OsmoHLR's server does; return (packet id, query).

    Like OsmoHLR, the question type and class are not checked (it answers any).
    """
    if len(data) < HEADER_LEN + 6:
        raise WireError(f"query too short ({len(data)} bytes)")
    if len(data) > MAX_PACKET:
        raise WireError(f"query too long ({len(data)} bytes)")
    packet_id, flags, qdcount = struct.unpack_from("!HHH", data)
    if flags & 0x8000:
        raise WireError("not a query (QR bit set)")
    if qdcount != 1:
        raise WireError(f"query with {qdcount} questions")
    name, offset = _read_name(data, HEADER_LEN)
    if offset + 4 != len(data):
        raise WireError("bytes after the question")
    return packet_id, _query_from_name(name, suffix)


def _txt_key_value(rdata: bytes) -> tuple[str, str]:
    if len(rdata) < 2 or rdata[0] != len(rdata) - 1:
        raise WireError("TXT record is not exactly one character-string")
    text = rdata[1:]
    if b"=" not in text:
        raise WireError("TXT record without '='")
    key, _, value = text.partition(b"=")
    try:
        return key.decode("ascii"), value.decode("ascii")
    except UnicodeDecodeError:
        raise WireError("TXT record with non-ASCII bytes") from None


def _number(value: str, what: str, maximum: int) -> int:
    if not (value.isascii() and value.isdigit()) or len(value) > 10 or int(value) > maximum:
        raise WireError(f"invalid {what} value {value!r}")
    return int(value)


#: Endpoints decoded lately, by (address bytes, port): a site names the same one in every
#: answer, so each answer shares one object (and its text) instead of building its own.
_ENDPOINTS: dict[tuple[bytes, int], Endpoint] = {}
_MAX_ENDPOINTS = 256


def _endpoint(address: bytes, port: int) -> Endpoint:
    """The endpoint of an A (4 bytes) or AAAA (16) record's data and a port."""
    key = (address, port)
    endpoint = _ENDPOINTS.get(key)
    if endpoint is None:
        if len(_ENDPOINTS) >= _MAX_ENDPOINTS:
            _ENDPOINTS.clear()  # a flood of distinct addresses: bounded, and rare
        # the same canonical text as Endpoint() gives (inet_ntop differs for ::ffff:a.b.c.d)
        host = (f"{address[0]}.{address[1]}.{address[2]}.{address[3]}" if len(address) == 4
                else str(ipaddress.IPv6Address(address)))
        endpoint = _ENDPOINTS[key] = Endpoint.trusted(host, port)
    return endpoint


_HEADER = struct.Struct("!HHHH")
_RR = struct.Struct("!HHIH")


def decode_answer(data: bytes, suffix: str = DEFAULT_SUFFIX) -> Answer:
    """Decode an answer, accepting exactly what OsmoHLR's client accepts (see module doc)."""
    packet_id, ancount = _answer_header(data)
    name, end = _read_name(data, HEADER_LEN)
    query = _query_from_name(name, suffix)
    return _records(data, data[HEADER_LEN:end], query, packet_id, ancount)


def decode_answer_to(data: bytes, name: bytes, query: Query) -> Answer:
    """:func:`decode_answer` for a datagram whose first record names ``query``, encoded as
    ``name`` (the bytes of the question we sent): the same acceptance, without parsing and
    validating a name already known (the lookup engine's path for every new answer)."""
    packet_id, ancount = _answer_header(data)
    return _records(data, name, query, packet_id, ancount)


def _answer_header(data: bytes) -> tuple[int, int]:
    if len(data) < HEADER_LEN:
        raise WireError(f"packet too short ({len(data)} bytes)")
    if len(data) > MAX_PACKET:
        raise WireError(f"packet too long ({len(data)} bytes)")
    packet_id, flags, qdcount, ancount = _HEADER.unpack_from(data)
    if not flags & 0x8000:
        raise WireError("not an answer (QR bit clear)")
    if qdcount:
        raise WireError("answer with a question section")
    return packet_id, ancount


def _records(data: bytes, name: bytes, query: Query, packet_id: int, ancount: int) -> Answer:
    """The records of an answer, every one of which must carry exactly ``name`` (OsmoHLR
    writes the one name uncompressed each time, and rejects anything else)."""
    size = len(data)
    offset = HEADER_LEN
    count = 0
    age: int | None = None
    v4: Endpoint | None = None
    v6: Endpoint | None = None
    has_a = has_aaaa = False
    pending: bytes | None = None  # an address record's data, waiting for its port
    while offset < size:
        if not data.startswith(name, offset):
            raise WireError("a record for another name, or a compressed name")
        offset += len(name)
        if offset + 10 > size:
            raise WireError("truncated resource record")
        rtype, _rclass, _ttl, rdlength = _RR.unpack_from(data, offset)
        offset += 10
        end = offset + rdlength
        if end > size:
            raise WireError("record data runs past the end of the packet")
        rdata = data[offset:end]
        offset = end
        count += 1
        if rtype == TYPE_TXT:
            key, value = _txt_key_value(rdata)
            if key == "age":
                if age is not None:
                    raise WireError("duplicate age")
                age = _number(value, "age", 0xFFFFFFFF)
            elif key == "port":
                if pending is None:
                    raise WireError("port without an address record before it")
                endpoint = _endpoint(pending, _number(value, "port", 65535))
                if len(pending) == 4:
                    v4 = endpoint
                else:
                    v6 = endpoint
                pending = None
            else:
                raise WireError(f"unknown TXT key {key!r}")
        elif rtype in (TYPE_A, TYPE_AAAA):
            is_a = rtype == TYPE_A
            if pending is not None:
                raise WireError("address record while a port is still expected")
            if has_a if is_a else has_aaaa:
                raise WireError(f"duplicate {'A' if is_a else 'AAAA'} record")
            if rdlength != (4 if is_a else 16):
                raise WireError(f"address record of {rdlength} bytes")
            if is_a:
                has_a = True
            else:
                has_aaaa = True
            pending = rdata
        else:
            raise WireError(f"unexpected record type {rtype}")
    if count != ancount:
        raise WireError(f"{count} records but the header says {ancount}")
    if age is None or (v4 is None and v6 is None) or pending is not None:
        raise WireError("answer lacks age, address or port")
    return Answer(packet_id, query, age, v4, v6)
