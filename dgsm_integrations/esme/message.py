"""What one deliver_sm means, sans-I/O: number normalisation, parts, the submit_sm to forward.

Pass-through is byte for byte: every mandatory field but the destination address is copied
as received (C-strings as bytes), and so are the TLVs that both deliver_sm and submit_sm
define (user_message_reference, ports, sar_*, message_payload, ...). Only two things change:
the destination becomes the normalised MSISDN (numbering plan ISDN, since that is how it was
looked up and how OsmoMSC finds the subscriber), and a status report (esm_class message type
0x04, SMSC delivery receipt) becomes an SME delivery acknowledgement (0x08), which is what
OsmoMSC's submit_sm turns back into a status report for the phone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import InvalidNumber
from .pdu import Pdu

__all__ = [
    "MANDATORY",
    "PASS_TLVS",
    "Message",
    "normalise_msisdn",
    "parts_of",
]

MANDATORY = (
    "service_type", "source_addr_ton", "source_addr_npi", "source_addr", "dest_addr_ton",
    "dest_addr_npi", "destination_addr", "esm_class", "protocol_id", "priority_flag",
    "schedule_delivery_time", "validity_period", "registered_delivery",
    "replace_if_present_flag", "data_coding", "sm_default_msg_id", "short_message",
)
#: TLVs that deliver_sm and submit_sm both define (smpplib's tables): forwarded as they came.
PASS_TLVS = (
    "user_message_reference", "source_port", "destination_port", "sar_msg_ref_num",
    "sar_total_segments", "sar_segment_seqnum", "user_response_code", "privacy_indicator",
    "payload_type", "message_payload", "callback_num", "source_subaddress",
    "dest_subaddress", "language_indicator", "its_session_info", "more_messages_to_send",
)

ESM_TYPE_MASK = 0x3C
ESM_SMSC_RECEIPT = 0x04
ESM_SME_ACK = 0x08
ESM_UDHI = 0x40
#: Type-of-number values we accept: unknown, international, national, network-specific,
#: subscriber number. Alphanumeric (5) and abbreviated (6) are never an MSISDN.
NUMERIC_TONS = frozenset({0, 1, 2, 3, 4})
NPI_ISDN, NPI_PRIVATE = 1, 9


def normalise_msisdn(ton: int | None, addr: bytes | None) -> str:
    """The MSISDN digits of an SMPP address, or InvalidNumber.

    ton 1 (international) arrives from OsmoMSC as digits only; a leading ``+`` is tolerated
    all the same. Anything that is not 1-15 decimal digits afterwards is refused."""
    if ton is None or ton not in NUMERIC_TONS:
        raise InvalidNumber(f"type of number {ton} is not numeric")
    raw = addr or b""
    if raw.startswith(b"+") and ton in (0, 1):
        raw = raw[1:]
    if not 1 <= len(raw) <= 15 or not raw.isdigit() or not raw.isascii():
        raise InvalidNumber(f"{raw[:32]!r} is not 1-15 digits")
    return raw.decode("ascii")


def parts_of(esm_class: int, short_message: bytes, sar: tuple[Any, Any]) -> tuple[int, int]:
    """(part, of) from a concatenation UDH (IE 0x00 or 0x08) or the sar_* TLVs; (1, 1)."""
    if esm_class & ESM_UDHI and short_message:
        udhl = short_message[0]
        udh = short_message[1:1 + udhl]
        i = 0
        while i + 2 <= len(udh):
            iei, iel = udh[i], udh[i + 1]
            ie = udh[i + 2:i + 2 + iel]
            if iei == 0x00 and iel == 3 and len(ie) == 3:
                return ie[2], ie[1]
            if iei == 0x08 and iel == 4 and len(ie) == 4:
                return ie[3], ie[2]
            i += 2 + iel
    seg, total = sar
    if isinstance(seg, int) and isinstance(total, int) and total:
        return seg, total
    return 1, 1


@dataclass(frozen=True, slots=True)
class Message:
    """One received deliver_sm, ready to forward."""

    sequence: int
    fields: dict[str, Any]
    msisdn: str
    parts: tuple[int, int]

    @classmethod
    def from_pdu(cls, pdu: Pdu) -> Message:
        """Raises InvalidNumber for a destination that is not an MSISDN."""
        fields: dict[str, Any] = {}
        for name in (*MANDATORY, *PASS_TLVS):
            value = pdu.get(name)
            if value is not None:
                fields[name] = value
        msisdn = normalise_msisdn(fields.get("dest_addr_ton"), fields.get("destination_addr"))
        esm = int(fields.get("esm_class") or 0)
        parts = parts_of(esm, fields.get("short_message") or b"",
                         (fields.get("sar_segment_seqnum"), fields.get("sar_total_segments")))
        return cls(pdu.sequence, fields, msisdn, parts)

    @property
    def is_report(self) -> bool:
        return (int(self.fields.get("esm_class") or 0) & ESM_TYPE_MASK) == ESM_SMSC_RECEIPT

    @property
    def sender(self) -> str:
        return bytes(self.fields.get("source_addr") or b"").decode("latin-1")

    @property
    def reference(self) -> int | None:
        ref = self.fields.get("user_message_reference")
        return ref if isinstance(ref, int) else None

    def submit_fields(self) -> dict[str, Any]:
        """The fields of the submit_sm that forwards this message."""
        out = dict(self.fields)
        out["destination_addr"] = self.msisdn.encode("ascii")
        if out.get("dest_addr_npi") not in (NPI_ISDN, NPI_PRIVATE):
            out["dest_addr_npi"] = NPI_ISDN
        esm = int(out.get("esm_class") or 0)
        if self.is_report:
            out["esm_class"] = (esm & ~ESM_TYPE_MASK) | ESM_SME_ACK
        return out
