"""SMPP 3.4 PDUs: framing, a strict validity gate, and smpplib's codec for the fields.

Sans-I/O. smpplib parses and generates the PDU bodies, but it trusts its input: a C-string
without its NUL, a short_message longer than the body, a TLV whose length disagrees with its
type, or a TLV that belongs to another command make it mis-parse silently or raise anything
from ``struct.error`` to ``KeyError``. So every frame first passes :func:`check_body`, a strict
walk of the body driven by smpplib's own field tables; only what passes reaches smpplib, with
the TLVs this command does not know stripped out (and reported). Anything that fails raises
:class:`PduError` carrying the SMPP status to answer with.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import smpplib.command as sm_command
import smpplib.command_codes as command_codes
import smpplib.consts as consts
import smpplib.ptypes as ptypes

from .errors import PduError
from .status import Status

__all__ = [
    "GENERIC_NACK",
    "HEADER",
    "MAX_PDU",
    "MIN_PDU",
    "Pdu",
    "Status",
    "build",
    "command_name",
    "decode",
    "split_header",
]

HEADER = struct.Struct(">IIII")
MIN_PDU = 16
#: OsmoMSC accepts up to 65535 bytes; a deliver_sm/submit_sm is at most a few hundred.
MAX_PDU = 65535
GENERIC_NACK = 0x80000000


_CODES: dict[int, str] = {code: name for name, code in command_codes.commands.items()}
_TLV_NAMES: dict[int, str] = {code: name for name, code in consts.OPTIONAL_PARAMS.items()}
#: Commands whose body smpplib has a class for (others are answered generic_nack RINVCMDID).
_SUPPORTED = {
    "generic_nack", "bind_receiver", "bind_receiver_resp", "bind_transmitter",
    "bind_transmitter_resp", "bind_transceiver", "bind_transceiver_resp", "submit_sm",
    "submit_sm_resp", "deliver_sm", "deliver_sm_resp", "unbind", "unbind_resp",
    "enquire_link", "enquire_link_resp", "alert_notification", "query_sm", "query_sm_resp",
    "data_sm", "data_sm_resp",
}


def command_name(command_id: int) -> str | None:
    """The smpplib name of a command id, or None when smpplib has no class for it."""
    name = _CODES.get(command_id)
    return name if name in _SUPPORTED else None


def split_header(frame: bytes) -> tuple[int, int, int, int]:
    """(command_length, command_id, command_status, sequence_number) of a whole frame."""
    if len(frame) < MIN_PDU:
        raise PduError(f"runt PDU of {len(frame)} bytes", Status.RINVCMDLEN, fatal=True)
    length, cid, status, seq = HEADER.unpack_from(frame)
    if length != len(frame):
        raise PduError(f"command_length {length} != {len(frame)}", Status.RINVCMDLEN, True)
    return length, cid, status, seq


@dataclass(slots=True)
class Pdu:
    """A decoded PDU: header values, smpplib's object for the fields, and the TLVs that were
    stripped because this command does not define them (tag, raw value)."""

    command: str
    command_id: int
    status: int
    sequence: int
    body: Any  # the smpplib Command object
    stripped: list[tuple[int, bytes]] = field(default_factory=list)

    def get(self, name: str) -> Any:
        return getattr(self.body, name, None)

    @property
    def is_response(self) -> bool:
        return bool(self.command_id & 0x80000000)


#: Where smpplib's declared maximum is wrong for us. smpplib 2.2 caps message_payload at 260
#: bytes; SMPP 3.4 (5.3.2.32) lets it carry a whole long message, up to what a TLV's 16-bit
#: length can say. Refusing a longer one would lose a valid SMS (docs/dependencies.md).
_TLV_MAX = {"message_payload": 65535}


def _param_spec(cls: Any, name: str) -> Any:
    return cls.params[name]


def check_body(cls: Any, body: bytes,
               partial: bool = False) -> tuple[bytes, list[tuple[int, bytes]]]:
    """Walk ``body`` as smpplib would, strictly. Returns the body with unknown TLVs removed
    and the removed TLVs. Raises PduError. A request needs every mandatory field; a response
    (``partial``) may end early, as error responses do (submit_sm_resp without message_id)."""
    pos = 0
    n = len(body)
    lengths: dict[str, int] = {}
    optional = [f for f in cls.params_order if f in consts.OPTIONAL_PARAMS
                and not (hasattr(cls, "mandatory_fields") and f in cls.mandatory_fields)]
    mandatory = [f for f in cls.params_order if f not in optional]
    for fname in mandatory:
        if pos == n:
            if not partial:
                raise PduError(f"body ends before {fname}")
            break  # smpplib stops here too; the missing fields stay None
        p = _param_spec(cls, fname)
        if p.type is int:
            if pos + p.size > n:
                raise PduError(f"{fname}: body ends inside the field")
            lengths[fname] = int.from_bytes(body[pos:pos + p.size], "big")
            pos += p.size
        elif p.type is str:
            limit = getattr(p, "max", None) or getattr(p, "size", 0) + 1
            end = body.find(b"\0", pos, pos + limit)
            if end < 0:
                raise PduError(f"{fname}: no NUL within {limit} bytes")
            pos = end + 1
        elif p.type is ptypes.ostr:
            ln = lengths.get(p.len_field, 0)
            if ln > getattr(p, "max", 255) or pos + ln > n:
                raise PduError(f"{fname}: length {ln} beyond the body")
            pos += ln
        else:  # pragma: no cover - smpplib has no other mandatory types
            raise PduError(f"{fname}: unsupported field type")
    if pos < n and not optional:
        raise PduError(f"{n - pos} trailing bytes", Status.RINVMSGLEN)
    kept = bytearray(body[:pos])
    stripped: list[tuple[int, bytes]] = []
    while pos < n:
        if pos + 4 > n:
            raise PduError("truncated TLV header", Status.RINVOPTPARSTREAM)
        tag, ln = struct.unpack_from(">HH", body, pos)
        value = body[pos + 4:pos + 4 + ln]
        if len(value) != ln:
            raise PduError(f"TLV 0x{tag:04x} length {ln} beyond the body",
                           Status.RINVOPTPARSTREAM)
        name = _TLV_NAMES.get(tag)
        if name is None or name not in optional:
            stripped.append((tag, bytes(value)))
        else:
            p = _param_spec(cls, name)
            if p.type is int and ln != p.size:
                raise PduError(f"TLV {name}: length {ln}, need {p.size}", Status.RINVPARLEN)
            if p.type is str and (ln < 1 or value[-1] != 0 or 0 in value[:-1]):
                raise PduError(f"TLV {name}: not a C-string", Status.RINVPARLEN)
            if p.type is ptypes.flag and ln != 0:
                raise PduError(f"TLV {name}: a flag has no value", Status.RINVPARLEN)
            if p.type is ptypes.ostr and ln > _TLV_MAX.get(name, getattr(p, "max", 65535)):
                raise PduError(f"TLV {name}: too long", Status.RINVPARLEN)
            kept += body[pos:pos + 4 + ln]
        pos += 4 + ln
    return bytes(kept), stripped


def decode(frame: bytes) -> Pdu:
    """Decode one whole frame (length prefix included). Raises PduError."""
    _length, cid, status, seq = split_header(frame)
    name = command_name(cid)
    if name is None:
        raise PduError(f"unknown command_id 0x{cid:08x}", Status.RINVCMDID)
    cls = type(sm_command.factory(name, sequence=seq))
    try:
        clean, stripped = check_body(cls, frame[MIN_PDU:], bool(cid & 0x80000000))
        obj = sm_command.factory(name, sequence=seq, allow_unknown_opt_params=True)
        obj.parse(HEADER.pack(MIN_PDU + len(clean), cid, status, seq) + clean)
    except PduError:
        raise
    except Exception as exc:  # smpplib raising anything at all is a malformed PDU
        raise PduError(f"{name}: {type(exc).__name__}: {exc}") from None
    obj.sequence = seq
    return Pdu(name, cid, status, seq, obj, stripped)


def _as_text(value: object) -> object:
    """smpplib generates C-strings from str (latin-1); parsed ones are bytes."""
    if isinstance(value, bytes | bytearray) and not isinstance(value, str):
        return bytes(value).decode("latin-1")
    return value


def build(name: str, sequence: int, status: int = Status.ROK, **fields: Any) -> bytes:
    """Generate one PDU with smpplib. C-string fields may be given as bytes (passed through
    byte for byte) or str; octet strings (short_message, message_payload) as bytes."""
    cls = type(sm_command.factory(name, sequence=sequence))
    args: dict[str, Any] = {}
    for key, value in fields.items():
        if value is None:
            continue
        p = cls.params.get(key)
        if p is None:
            raise ValueError(f"{name} has no field {key!r}")
        args[key] = _as_text(value) if p.type is str else value
    obj = sm_command.factory(name, sequence=sequence, status=status, **args)
    obj.sequence = sequence
    obj.status = status
    data: bytes = obj.generate()
    if len(data) > MAX_PDU:
        raise ValueError(f"{name} of {len(data)} bytes is too long")
    return data
