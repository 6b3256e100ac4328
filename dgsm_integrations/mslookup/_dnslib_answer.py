"""Answers packed with dnslib, imported only by code that writes answers (responder, CLI).

Two work-arounds: dnslib compresses repeated names when packing, and OsmoHLR's decoder rejects
compression, so the buffer here writes every name in full; and dnslib cannot parse the
dotted form of IPv4-mapped IPv6 addresses that Python 3.13+ prints, so AAAA gets the bytes
(see docs/dependencies.md).
"""

from __future__ import annotations

import ipaddress

from dnslib import AAAA, QTYPE, RR, TXT, A, DNSBuffer, DNSHeader

from .model import Endpoint

__all__ = ["pack_answer"]

CLASS_IN = 1


class _PlainBuffer(DNSBuffer):  # type: ignore[misc]
    """A dnslib buffer that writes every name in full (OsmoHLR rejects compression)."""

    def encode_name(self, name: object) -> None:
        self.encode_name_nocompress(name)


def pack_answer(
    name: str, packet_id: int, age: int, v4: Endpoint | None, v6: Endpoint | None
) -> bytes:
    """TXT age, [A, TXT port], [AAAA, TXT port], TTL 0, flags 0x8000, as OsmoHLR sends."""
    records = [RR(name, QTYPE.TXT, CLASS_IN, 0, TXT(f"age={age}"))]
    if v4 is not None:
        records += [RR(name, QTYPE.A, CLASS_IN, 0, A(v4.host)),
                    RR(name, QTYPE.TXT, CLASS_IN, 0, TXT(f"port={v4.port}"))]
    if v6 is not None:
        # the 16 bytes, not the text: Python 3.13+ writes IPv4-mapped addresses dotted
        # (::ffff:1.2.3.4), which dnslib's own parser cannot read
        records += [RR(name, QTYPE.AAAA, CLASS_IN, 0,
                       AAAA(tuple(ipaddress.IPv6Address(v6.host).packed))),
                    RR(name, QTYPE.TXT, CLASS_IN, 0, TXT(f"port={v6.port}"))]
    buf = _PlainBuffer()
    DNSHeader(id=packet_id, bitmap=0x8000, q=0, a=len(records), auth=0, ar=0).pack(buf)
    for rr in records:
        rr.pack(buf)
    return bytes(buf.data)
