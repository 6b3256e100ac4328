"""A minimal IPA + GSUP client that plays an MSC/VLR towards a real OsmoHLR (the lab's test MSC).

Written from the protocol's documented facts (libosmocore's ``ipaccess.h``/``gsup.h`` constants,
the OsmoHLR user manual's GSUP chapter); no Osmocom code is copied.

Wire facts used here:

- IPA framing: ``len:u16be | stream:u8 | payload``, where ``len`` counts the payload only.
  Stream 0xFE is CCM (connection management), stream 0xEE is the Osmocom extension, whose
  payload starts with one extension byte (0x05 = GSUP) that ``len`` includes.
- CCM: PING 0x00 (answer PONG 0x01), ID_GET 0x04, ID_RESP 0x05, ID_ACK 0x06. ID_GET asks for
  tags as ``len:u8 tag:u8`` pairs (len is 1). ID_RESP answers each tag as
  ``len:u16be tag:u8 value`` where ``value`` is a NUL-terminated string and ``len`` counts the
  tag byte plus the value.
- OsmoHLR sends ID_GET as soon as it accepts the TCP connection, and names the peer after the
  **serial number** tag (0x00); it refuses (closes) a peer without one, and a Location Updating
  from a peer without a name fails with "LU without a VLR". We answer every tag, putting the
  unit name into both the serial number and the unit name tags.
- GSUP: ``msg_type:u8`` then ``tag:u8 len:u8 value`` IEs. The IMSI IE (0x01) is TBCD, low
  nibble first, padded with 0xF. A request without a CN Domain IE (0x28) counts as PS; CS is 2.
- CS Location Updating: UPDATE_LOCATION_REQUEST -> OsmoHLR stores the peer's name as the
  subscriber's ``vlr_number`` and answers INSERT_DATA_REQUEST (with the MSISDN) -> we answer
  INSERT_DATA_RESULT -> OsmoHLR answers UPDATE_LOCATION_RESULT (or ``..._ERROR`` with a GMM
  cause IE, 0x02).

Every network wait is bounded by a deadline. The socket is made in the calling thread's
network namespace: the lab connects inside ``Netns.entered()`` to reach a village's HLR.
"""

from __future__ import annotations

import enum
import socket
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType

from ..errors import DgsmError

__all__ = [
    "DEFAULT_UNIT_NAME",
    "GMM_CAUSE_NAMES",
    "GSUP_PORT",
    "CcmType",
    "CnDomain",
    "GsupClient",
    "GsupClosed",
    "GsupError",
    "GsupIe",
    "GsupMessage",
    "GsupMsgType",
    "GsupProtocolError",
    "GsupRejected",
    "GsupTimeout",
    "IdTag",
    "LocationUpdateResult",
    "decode_tbcd",
    "encode_tbcd",
    "id_resp_body",
    "ipa_frame",
    "parse_id_get",
]

GSUP_PORT = 4222
DEFAULT_UNIT_NAME = "MSC-00-00-00-00-00-00"
DEFAULT_TIMEOUT = 5.0

IPA_STREAM_CCM = 0xFE
IPA_STREAM_OSMO = 0xEE
IPA_EXT_GSUP = 0x05
_IPA_HEADER = struct.Struct(">HB")


class CcmType(enum.IntEnum):
    PING = 0x00
    PONG = 0x01
    ID_GET = 0x04
    ID_RESP = 0x05
    ID_ACK = 0x06
    ID_NACK = 0x07


class IdTag(enum.IntEnum):
    SERIAL_NUMBER = 0x00
    UNIT_NAME = 0x01
    LOCATION1 = 0x02
    LOCATION2 = 0x03
    EQUIPMENT_VERSION = 0x04
    SOFTWARE_VERSION = 0x05
    IP_ADDRESS = 0x06
    MAC_ADDRESS = 0x07
    UNIT_ID = 0x08


class GsupMsgType(enum.IntEnum):
    UPDATE_LOCATION_REQUEST = 0x04
    UPDATE_LOCATION_ERROR = 0x05
    UPDATE_LOCATION_RESULT = 0x06
    SEND_AUTH_INFO_REQUEST = 0x08
    SEND_AUTH_INFO_ERROR = 0x09
    SEND_AUTH_INFO_RESULT = 0x0A
    PURGE_MS_REQUEST = 0x0C
    PURGE_MS_ERROR = 0x0D
    PURGE_MS_RESULT = 0x0E
    INSERT_DATA_REQUEST = 0x10
    INSERT_DATA_ERROR = 0x11
    INSERT_DATA_RESULT = 0x12
    DELETE_DATA_REQUEST = 0x14
    DELETE_DATA_ERROR = 0x15
    DELETE_DATA_RESULT = 0x16
    LOCATION_CANCEL_REQUEST = 0x1C
    LOCATION_CANCEL_ERROR = 0x1D
    LOCATION_CANCEL_RESULT = 0x1E
    ROUTING_ERROR = 0x4E


class GsupIe(enum.IntEnum):
    IMSI = 0x01
    CAUSE = 0x02
    PDP_INFO_COMPLETE = 0x04
    PDP_INFO = 0x05
    CANCEL_TYPE = 0x06
    MSISDN = 0x08
    HLR_NUMBER = 0x09
    MESSAGE_CLASS = 0x0A
    CN_DOMAIN = 0x28
    SOURCE_NAME = 0x60
    DESTINATION_NAME = 0x61


class CnDomain(enum.IntEnum):
    PS = 1
    CS = 2


#: GMM causes (3GPP TS 24.008 10.5.5.14) that OsmoHLR uses in GSUP errors.
GMM_CAUSE_NAMES: Mapping[int, str] = {
    2: "IMSI unknown in HLR",
    7: "GPRS services not allowed",
    11: "PLMN not allowed",
    17: "network failure",
    98: "message type not compatible with protocol state",
    111: "protocol error, unspecified",
}


class GsupError(DgsmError):
    """Base class of everything this client raises."""


class GsupTimeout(GsupError):
    """OsmoHLR did not answer before the deadline."""


class GsupClosed(GsupError):
    """OsmoHLR closed the connection (for instance because the IPA identity was refused)."""


class GsupProtocolError(GsupError):
    """OsmoHLR sent bytes that are not valid IPA/GSUP."""


class GsupRejected(GsupError):
    """OsmoHLR answered a request with an ``..._ERROR`` message."""

    def __init__(self, message: GsupMessage) -> None:
        self.message = message
        self.cause: int | None = message.cause
        cause = "no cause IE" if self.cause is None else (
            f"cause {self.cause} ({GMM_CAUSE_NAMES.get(self.cause, 'unknown')})")
        super().__init__(f"OsmoHLR answered {message.type_name} for IMSI {message.imsi}: {cause}")


# -- encoding helpers ---------------------------------------------------------------------


def encode_tbcd(digits: str) -> bytes:
    """TBCD-encode a digit string: two digits per octet, low nibble first, 0xF pads."""
    if not digits or not digits.isdigit() or not digits.isascii():
        raise ValueError(f"not a digit string: {digits!r}")
    padded = digits + ("F" if len(digits) % 2 else "")
    return bytes(int(padded[i + 1], 16) << 4 | int(padded[i], 16) for i in range(0, len(padded), 2))


def decode_tbcd(data: bytes) -> str:
    """Decode TBCD up to the first filler nibble (0xF)."""
    out: list[str] = []
    for octet in data:
        for nibble in (octet & 0x0F, octet >> 4):
            if nibble == 0x0F:
                return "".join(out)
            if nibble > 9:
                raise GsupProtocolError(f"not a TBCD digit: {nibble:#x} in {data.hex()}")
            out.append(str(nibble))
    return "".join(out)


def ipa_frame(stream: int, payload: bytes) -> bytes:
    """Prefix ``payload`` with an IPA header for ``stream``."""
    if len(payload) > 0xFFFF:
        raise ValueError("IPA payload too long")
    return _IPA_HEADER.pack(len(payload), stream) + payload


def _gsup_frame(message: GsupMessage) -> bytes:
    return ipa_frame(IPA_STREAM_OSMO, bytes([IPA_EXT_GSUP]) + message.encode())


def _ccm_frame(msg_type: CcmType, body: bytes = b"") -> bytes:
    return ipa_frame(IPA_STREAM_CCM, bytes([msg_type]) + body)


def parse_id_get(body: bytes) -> list[int]:
    """The tags an ID_GET asks for (``len:u8 tag:u8 [len-1 bytes]`` entries)."""
    tags: list[int] = []
    pos = 0
    while pos + 2 <= len(body):
        length, tag = body[pos], body[pos + 1]
        tags.append(tag)
        pos += 1 + max(length, 1)
    return tags


def id_resp_body(tags: Iterable[int], identity: Mapping[int, str]) -> bytes:
    out = bytearray()
    for tag in tags:
        value = identity.get(tag, "").encode("ascii") + b"\0"
        out += struct.pack(">HB", len(value) + 1, tag) + value
    return bytes(out)


@dataclass(frozen=True, slots=True)
class GsupMessage:
    """One GSUP message: a type and its IEs in wire order."""

    msg_type: int
    ies: tuple[tuple[int, bytes], ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.msg_type <= 0xFF:
            raise ValueError(f"GSUP message type out of range: {self.msg_type}")
        for tag, value in self.ies:
            if not 0 <= tag <= 0xFF or len(value) > 0xFF:
                raise ValueError(f"GSUP IE out of range: tag {tag}, {len(value)} bytes")

    @classmethod
    def build(cls, msg_type: int, imsi: str, *ies: tuple[int, bytes]) -> GsupMessage:
        return cls(msg_type, ((GsupIe.IMSI, encode_tbcd(imsi)), *ies))

    def encode(self) -> bytes:
        out = bytearray([self.msg_type])
        for tag, value in self.ies:
            out += bytes([tag, len(value)]) + value
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> GsupMessage:
        if not data:
            raise GsupProtocolError("empty GSUP message")
        ies: list[tuple[int, bytes]] = []
        pos = 1
        while pos < len(data):
            if pos + 2 > len(data):
                raise GsupProtocolError(f"truncated GSUP IE header: {data.hex()}")
            tag, length = data[pos], data[pos + 1]
            value = data[pos + 2 : pos + 2 + length]
            if len(value) != length:
                raise GsupProtocolError(f"truncated GSUP IE {tag:#04x}: {data.hex()}")
            ies.append((tag, value))
            pos += 2 + length
        return cls(data[0], tuple(ies))

    def get(self, tag: int) -> bytes | None:
        for ie_tag, value in self.ies:
            if ie_tag == tag:
                return value
        return None

    @property
    def type_name(self) -> str:
        try:
            return GsupMsgType(self.msg_type).name
        except ValueError:
            return f"GSUP_{self.msg_type:#04x}"

    @property
    def imsi(self) -> str | None:
        value = self.get(GsupIe.IMSI)
        return None if value is None else decode_tbcd(value)

    @property
    def cause(self) -> int | None:
        value = self.get(GsupIe.CAUSE)
        return value[0] if value else None

    @property
    def msisdn(self) -> str | None:
        """The MSISDN IE's digits. OsmoHLR puts a whole BCD LV in it (a length octet first)."""
        value = self.get(GsupIe.MSISDN)
        if not value:
            return None
        if value[0] == len(value) - 1:
            value = value[1:]
        return decode_tbcd(value)


@dataclass(frozen=True, slots=True)
class LocationUpdateResult:
    """What a successful Location Updating returned."""

    imsi: str
    msisdn: str | None
    insert_data: tuple[GsupMessage, ...] = field(default=())


class GsupClient:
    """A blocking IPA/GSUP client that identifies as an MSC/VLR.

    Use as a context manager: entering connects and answers OsmoHLR's identity request.
    ``timeout`` bounds each operation (connect + identity, one request/answer exchange).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = GSUP_PORT,
        *,
        unit_name: str = DEFAULT_UNIT_NAME,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if not unit_name or not unit_name.isascii() or "\0" in unit_name:
            raise ValueError(f"bad IPA unit name: {unit_name!r}")
        self.host = host
        self.port = port
        self.unit_name = unit_name
        self.timeout = timeout
        self.identity: dict[int, str] = {
            IdTag.SERIAL_NUMBER: unit_name,
            IdTag.UNIT_NAME: unit_name,
            IdTag.LOCATION1: "",
            IdTag.LOCATION2: "",
            IdTag.EQUIPMENT_VERSION: "",
            IdTag.SOFTWARE_VERSION: "dgsm-integrations-lab",
            IdTag.MAC_ADDRESS: "00:00:00:00:00:00",
            IdTag.UNIT_ID: "0/0/0",
        }
        self.identified = False
        self.received_id_ack = False
        self._sock: socket.socket | None = None
        self._buf = bytearray()

    # -- connection ---------------------------------------------------------------------

    def __enter__(self) -> GsupClient:
        if self._sock is None:  # not connected yet (the lab connects inside a namespace)
            self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def connect(self) -> None:
        """Connect and answer OsmoHLR's ID_GET; return once our ID_RESP is sent."""
        deadline = time.monotonic() + self.timeout
        try:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except TimeoutError as exc:
            raise GsupTimeout(f"connecting to GSUP {self.host}:{self.port} timed out") from exc
        except OSError as exc:
            raise GsupError(f"cannot connect to GSUP {self.host}:{self.port}: {exc}") from exc
        while not self.identified:
            stream, payload = self._read_frame(deadline, waiting_for="the IPA CCM ID_GET")
            if stream != IPA_STREAM_CCM:
                raise GsupProtocolError(f"IPA stream {stream:#04x} before the identity exchange")
            self._handle_ccm(payload)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- procedures ---------------------------------------------------------------------

    def update_location(
        self, imsi: str, *, cn_domain: CnDomain = CnDomain.CS, timeout: float | None = None
    ) -> LocationUpdateResult:
        """Perform a Location Updating for ``imsi``; answer each INSERT_DATA_REQUEST.

        Raises :class:`GsupRejected` on UPDATE_LOCATION_ERROR, :class:`GsupTimeout` when no
        result arrives in time.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        request = GsupMessage.build(
            GsupMsgType.UPDATE_LOCATION_REQUEST, imsi, (GsupIe.CN_DOMAIN, bytes([cn_domain]))
        )
        self.send(request)
        inserted: list[GsupMessage] = []
        while True:
            message = self._next_gsup(deadline, waiting_for=f"UPDATE_LOCATION_RESULT for {imsi}")
            if message.imsi != imsi:
                continue
            if message.msg_type == GsupMsgType.INSERT_DATA_REQUEST:
                inserted.append(message)
                self.send(GsupMessage.build(GsupMsgType.INSERT_DATA_RESULT, imsi))
            elif message.msg_type == GsupMsgType.UPDATE_LOCATION_RESULT:
                msisdn = next((m.msisdn for m in inserted if m.msisdn is not None), None)
                return LocationUpdateResult(imsi, msisdn, tuple(inserted))
            elif message.msg_type == GsupMsgType.UPDATE_LOCATION_ERROR:
                raise GsupRejected(message)

    def purge_ms(
        self, imsi: str, *, cn_domain: CnDomain = CnDomain.CS, timeout: float | None = None
    ) -> None:
        """Tell OsmoHLR the VLR purged the subscriber (what an MSC does on IMSI detach expiry)."""
        self._request(
            GsupMessage.build(
                GsupMsgType.PURGE_MS_REQUEST, imsi, (GsupIe.CN_DOMAIN, bytes([cn_domain]))
            ),
            timeout,
        )

    def _request(self, request: GsupMessage, timeout: float | None) -> GsupMessage:
        """Send a request; wait for its RESULT (returned) or ERROR (raised)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        result_type, error_type = request.msg_type | 0b10, request.msg_type | 0b01
        self.send(request)
        while True:
            message = self._next_gsup(deadline, waiting_for=f"the answer to {request.type_name}")
            if message.imsi != request.imsi:
                continue
            if message.msg_type == result_type:
                return message
            if message.msg_type == error_type:
                raise GsupRejected(message)

    # -- frames -------------------------------------------------------------------------

    def send(self, message: GsupMessage) -> None:
        self._send_raw(_gsup_frame(message))

    def _send_raw(self, frame: bytes) -> None:
        if self._sock is None:
            raise GsupError("not connected")
        try:
            self._sock.sendall(frame)
        except OSError as exc:
            raise GsupClosed(f"sending to GSUP {self.host}:{self.port} failed: {exc}") from exc

    def _next_gsup(self, deadline: float, *, waiting_for: str) -> GsupMessage:
        """Return the next GSUP message; answer CCM messages on the way."""
        while True:
            stream, payload = self._read_frame(deadline, waiting_for=waiting_for)
            if stream == IPA_STREAM_CCM:
                self._handle_ccm(payload)
                continue
            if stream == IPA_STREAM_OSMO and payload[:1] == bytes([IPA_EXT_GSUP]):
                return GsupMessage.decode(payload[1:])
            # Other streams/extensions (e.g. OAP) are not ours: skip them.

    def _handle_ccm(self, payload: bytes) -> None:
        if not payload:
            raise GsupProtocolError("empty IPA CCM message")
        kind, body = payload[0], payload[1:]
        if kind == CcmType.PING:
            self._send_raw(_ccm_frame(CcmType.PONG))
        elif kind == CcmType.ID_GET:
            self._send_raw(_ccm_frame(CcmType.ID_RESP, id_resp_body(parse_id_get(body),
                                                                    self.identity)))
            self.identified = True
        elif kind == CcmType.ID_ACK:
            self.received_id_ack = True
        elif kind == CcmType.ID_NACK:
            raise GsupClosed("OsmoHLR refused our IPA identity (ID_NACK)")

    def _read_frame(self, deadline: float, *, waiting_for: str) -> tuple[int, bytes]:
        header = self._read_exact(_IPA_HEADER.size, deadline, waiting_for)
        length, stream = _IPA_HEADER.unpack(header)
        return stream, self._read_exact(length, deadline, waiting_for)

    def _read_exact(self, count: int, deadline: float, waiting_for: str) -> bytes:
        if self._sock is None:
            raise GsupError("not connected")
        while len(self._buf) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GsupTimeout(
                    f"timed out waiting for {waiting_for} from {self.host}:{self.port}")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                raise GsupClosed(f"GSUP connection failed while waiting for {waiting_for}: "
                                 f"{exc}") from exc
            if not chunk:
                raise GsupClosed(f"OsmoHLR closed the GSUP connection while we waited for "
                                 f"{waiting_for}")
            self._buf += chunk
        data = bytes(self._buf[:count])
        del self._buf[:count]
        return data
