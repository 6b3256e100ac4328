"""A lab phone: a subscriber's handset and the smallest BSC in front of it, on the A interface.

It speaks to a real osmo-msc (:mod:`.osmomsc`, ``a_interface=``) through a real osmo-stp
(:mod:`.osmostp`) in the same namespace::

    LabPhone --M3UA/TCP--> osmo-stp :2905 <--M3UA/TCP-- osmo-msc --GSUP--> osmo-hlr

Layers, and who encodes them:

- M3UA (RFC 4666): pycrate's ``pycrate_mobile.M3UA``. The phone is an ASP: ASP UP, REG REQ
  for its own point code (osmo-stp allocates a routing context: dynamic RKM), ASP ACTIVE,
  then DATA. Framing on TCP: one M3UA message after another (the SCTP shim reads them back
  by the length in the header; see :mod:`.osmostp`).
- SCCP (ITU-T Q.713): pycrate's ``pycrate_mobile.SCCP``: UDT for the BSSMAP RESET, and a
  connection (CR, CC, DT1, RLSD, RLC) per transaction, addressed by point code and SSN 254.
- BSSAP (TS 48.006/48.008): written here (pycrate has BSSMAP information elements, not the
  messages): RESET/RESET ACKNOWLEDGE, COMPLETE LAYER 3 INFORMATION, CLEAR COMMAND/COMPLETE,
  and the DTAP header.
- DTAP MM (TS 24.008) and RR PAGING RESPONSE (TS 44.018): pycrate's ``TS24008_MM`` and
  ``TS44018_RR`` build the uplink messages and ``NAS.parse_NAS_MT`` decodes the downlink ones.
- SMS (TS 24.011 CP/RP, TS 23.040 SMS-SUBMIT/SMS-DELIVER, SAPI 3): pycrate's
  ``TS24011_PPSMS`` and ``TS23040_SMS``.

Procedures: :meth:`LabPhone.location_update`, :meth:`~LabPhone.imsi_detach`,
:meth:`~LabPhone.send_sms` (MO), :meth:`~LabPhone.receive_sms` (MT: paging first) and
:meth:`~LabPhone.pagings` (out of coverage: pagings seen, not answered).

Every receive has a deadline (``timeout``); anything that does not parse, or a message that
does not fit the procedure, raises :class:`PhoneError` saying what came instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

# pycrate warns on import that without CryptoMobile it cannot do LTE and 5G NAS security; a
# lab phone speaks GSM only, and the warning was the first thing the demo printed
for _quiet in ("pycrate_mobile.TS24301_EMM", "pycrate_mobile.TS24501_FGMM"):
    logging.getLogger(_quiet).setLevel(logging.ERROR)

from pycrate_mobile import M3UA, NAS, SCCP  # noqa: E402
from pycrate_mobile import TS24008_MM as MM  # noqa: E402
from pycrate_mobile import TS24011_PPSMS as PPSMS  # noqa: E402
from pycrate_mobile import TS44018_RR as RR  # noqa: E402
from pycrate_mobile.TS24008_IE import ID  # noqa: E402

from .netns import LabError, Netns  # noqa: E402

__all__ = ["LabPhone", "LuResult", "PhoneError", "ReceivedSms", "SmsResult", "concat_udh",
           "gsm7_septets", "gsm7_text", "pack_septets", "parse_sms_deliver", "point_code",
           "sms_submit", "unpack_septets"]

log = logging.getLogger("dgsm.lab.phone")

SSN_BSSAP = 254
SI_SCCP = 3
#: M3UA network indicator: osmo-stp 2.3 discards DATA whose NI differs from its instance's
#: (default international, 0); 1.6 did not look
NI_INTERNATIONAL = 0
MAX_M3UA = 4096  # our peers send a few hundred bytes at most; larger is refused
T = M3UA.M3UATag

# BSSMAP message types (TS 48.008 3.2.2.1) and information elements (3.2.2)
BSSMAP_RESET, BSSMAP_RESET_ACK = 0x30, 0x31
BSSMAP_CLEAR_COMMAND, BSSMAP_CLEAR_COMPLETE = 0x20, 0x21
BSSMAP_COMPLETE_L3 = 0x57
BSSMAP_PAGING = 0x52
IE_IMSI = 0x08
IE_CAUSE, IE_CELL_ID, IE_L3_INFO = 0x04, 0x05, 0x17
CAUSE_OM_INTERVENTION = 0x08


class PhoneError(LabError):
    """The network did not answer as a procedure expects (or not in time)."""


def point_code(text: str) -> int:
    """An ITU point code written 3-8-3 (osmo's ``0.23.1``) as its 14-bit number."""
    try:
        a, b, c = (int(x) for x in text.split("."))
    except ValueError:
        raise LabError(f"bad point code {text!r}: write it as 0.23.1") from None
    if not (0 <= a < 8 and 0 <= b < 256 and 0 <= c < 8):
        raise LabError(f"bad point code {text!r}: each part out of range (3-8-3 bits)")
    return a << 11 | b << 3 | c


def _plmn(mcc: str, mnc: str) -> bytes:
    """MCC/MNC as TS 24.008 10.5.1.3 packs them (BCD, F filler for a 2-digit MNC)."""
    if not (len(mcc) == 3 and mcc.isdigit() and len(mnc) in (2, 3) and mnc.isdigit()):
        raise LabError(f"bad MCC/MNC {mcc}/{mnc}")
    d = [int(x) for x in mcc + mnc] + ([0xF] if len(mnc) == 2 else [])
    return bytes([d[1] << 4 | d[0], d[5] << 4 | d[2], d[4] << 4 | d[3]])


def _ie(tag: int, value: bytes) -> bytes:
    if len(value) > 255:
        raise LabError("BSSMAP information element too long")
    return bytes([tag, len(value)]) + value


def _bssmap(payload: bytes) -> bytes:
    return bytes([0x00, len(payload)]) + payload


def _dtap(l3: bytes, sapi: int = 0) -> bytes:
    """BSSAP DTAP: discriminator, DLCI (TS 48.006 9.3.2: SAPI 0 for MM/CC, 3 for SMS), length."""
    return bytes([0x01, sapi & 0x07, len(l3)]) + l3


def _addr(pc: int) -> dict[str, Any]:
    """An SCCP party address routed on point code and SSN (BSSAP)."""
    return {"Value": {"AddrInd": {"RoutingInd": 1, "GTInd": 0, "SSNInd": 1, "PCInd": 1},
                      "PC": pc, "SSN": SSN_BSSAP}}


def _param(msg: Any, tag: int) -> Any:
    """The value part of M3UA parameter ``tag`` in a parsed message, or None."""
    for prm in msg[1]:
        if prm[0].get_val() == tag:
            return prm[2]
    return None


#: GSM 03.38 default alphabet (septet value = index) and its extension table (after ESC 0x1B)
GSM7 = ("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
        "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM7_EXT = {"\f": 0x0A, "^": 0x14, "{": 0x28, "}": 0x29, "\\": 0x2F, "[": 0x3C, "~": 0x3D,
            "]": 0x3E, "|": 0x40, "€": 0x65}
MAX_UD = 140  # octets of TP-User-Data (TS 23.040 9.2.3.24)


def gsm7_septets(text: str) -> bytes:
    """``text`` in the GSM 7-bit default alphabet, one septet value per byte (an extension
    character as ESC and its value); LabError for a character it does not have."""
    out = bytearray()
    for ch in text:
        if ch in GSM7_EXT:
            out += bytes([0x1B, GSM7_EXT[ch]])
            continue
        i = GSM7.find(ch)
        if i < 0 or ch == "\x1b":
            raise LabError(f"{ch!r} is not in the GSM 7-bit default alphabet: send UCS-2")
        out.append(i)
    return bytes(out)


def gsm7_text(septets: bytes) -> str:
    ext = {v: k for k, v in GSM7_EXT.items()}
    out, esc = [], False
    for v in septets:
        if v > 0x7F:
            raise PhoneError(f"not a septet: 0x{v:02x}")
        if esc:
            out.append(ext.get(v, " "))
            esc = False
        elif v == 0x1B:
            esc = True
        else:
            out.append(GSM7[v])
    return "".join(out)


def pack_septets(septets: bytes, fill: int = 0) -> bytes:
    """GSM 03.38 packing, LSB first, after ``fill`` zero bits (the fill after a UDH)."""
    bits = 0
    for i, v in enumerate(septets):
        bits |= (v & 0x7F) << (fill + 7 * i)
    return bits.to_bytes((fill + 7 * len(septets) + 7) // 8, "little")


def unpack_septets(data: bytes, count: int, fill: int = 0) -> bytes:
    if fill + 7 * count > 8 * len(data):
        raise PhoneError(f"{count} septets do not fit in {len(data)} octets")
    bits = int.from_bytes(data, "little") >> fill
    return bytes((bits >> (7 * i)) & 0x7F for i in range(count))


def _bcd(digits: str) -> bytes:
    d = [int(x) for x in digits] + ([0xF] if len(digits) % 2 else [])
    return bytes(d[i + 1] << 4 | d[i] for i in range(0, len(d), 2))


def _unbcd(data: bytes, count: int) -> str:
    out = []
    for b in data:
        out += [b & 0x0F, b >> 4]
    digits = out[:count]
    if any(x > 9 for x in digits):
        raise PhoneError(f"not BCD digits: {data.hex()}")
    return "".join(str(x) for x in digits)


def concat_udh(ref: int, total: int, seq: int) -> bytes:
    """The UDH of part ``seq`` of ``total`` of a concatenated SMS (IEI 0x00, 8-bit ref)."""
    if not (0 <= ref < 256 and 1 <= seq <= total < 256):
        raise LabError(f"bad concatenation {ref}/{seq}/{total}")
    return bytes([0x00, 3, ref, total, seq])


def sms_submit(destination: str, text: str, *, ucs2: bool = False, tp_ref: int = 0,
               udh: bytes = b"", status_report: bool = False) -> bytes:
    """An SMS-SUBMIT TPDU (TS 23.040 9.2.2.2) to an international number; GSM 7-bit or UCS-2,
    with an optional user data header (``udh`` without its length octet)."""
    if not (destination.isdigit() and 1 <= len(destination) <= 20):
        raise LabError(f"bad destination {destination!r}: 1 to 20 digits")
    first = 0x01 | (0x20 if status_report else 0) | (0x40 if udh else 0)
    head = bytes([len(udh)]) + udh if udh else b""
    if ucs2:
        ud = head + text.encode("utf-16-be")
        udl = len(ud)
    else:
        septets = gsm7_septets(text)
        head_septets = (len(head) * 8 + 6) // 7
        ud = head + pack_septets(septets, head_septets * 7 - len(head) * 8)
        udl = head_septets + len(septets)
    if len(ud) > MAX_UD:
        raise LabError(f"user data of {len(ud)} octets: at most {MAX_UD} in one SMS")
    return (bytes([first, tp_ref % 256, len(destination), 0x91]) + _bcd(destination)
            + bytes([0x00, 0x08 if ucs2 else 0x00, udl]) + ud)


@dataclass(frozen=True)
class LuResult:
    """What LOCATION UPDATING ACCEPT gave: the LAI bytes and the TMSI (None if none)."""

    lai: bytes
    tmsi: int | None


@dataclass(frozen=True)
class SmsResult:
    """How the network answered an MO SMS: RP-ACK (``cause`` None) or RP-ERROR with its
    cause (TS 24.011 8.2.5.4)."""

    acked: bool
    cause: int | None
    rp_ref: int


@dataclass(frozen=True)
class ReceivedSms:
    """An SMS-DELIVER (or SMS-STATUS-REPORT) as the phone received it: originator, TP-DCS,
    the decoded text, the user data after its header (GSM 7-bit: one septet value per byte;
    otherwise the octets), the user data header (without its length octet), the RP message
    reference and the whole TPDU as it came. A status report has ``report`` set: the
    message reference it reports on, and its TP-Status in ``status``."""

    sender: str
    dcs: int
    text: str
    user_data: bytes
    rp_ref: int
    udh: bytes = b""
    tpdu: bytes = b""
    report: int | None = None
    status: int | None = None
    #: what the phone answered: None for RP-ACK, else its RP-ERROR cause
    refused: int | None = None


def parse_sms_deliver(tpdu: bytes, rp_ref: int) -> ReceivedSms:
    """TS 23.040 9.2.2.1 SMS-DELIVER (or 9.2.2.3 SMS-STATUS-REPORT), every length checked."""
    def need(n: int) -> None:
        if len(tpdu) < n:
            raise PhoneError(f"truncated TPDU: {tpdu.hex()}")

    need(1)
    first = tpdu[0]
    mti = first & 0x03
    if mti == 2:  # SMS-STATUS-REPORT: first, MR, RA, SCTS, DT, ST
        need(4)
        mr, ndig = tpdu[1], tpdu[2]
        end = 4 + (ndig + 1) // 2
        need(end + 15)
        ra = _unbcd(tpdu[4:end], ndig)
        st = tpdu[end + 14]
        return ReceivedSms(ra, 0, "", b"", rp_ref, tpdu=tpdu, report=mr, status=st)
    if mti != 0:
        raise PhoneError(f"TPDU type {mti}, not SMS-DELIVER: {tpdu.hex()}")
    need(3)
    ndig = tpdu[1]
    if ndig > 20:
        raise PhoneError(f"originating address of {ndig} digits")
    pos = 3 + (ndig + 1) // 2
    oa = _unbcd(tpdu[3:pos], ndig)
    need(pos + 10)
    dcs = tpdu[pos + 1]
    udl = tpdu[pos + 9]
    ud = tpdu[pos + 10:]
    udhi = bool(first & 0x40)
    seven = dcs & 0xEC == 0x00 or dcs & 0xF4 == 0xF0  # GSM 7-bit (TS 23.038 4)
    if len(ud) > MAX_UD or (not seven and udl != len(ud)) or \
            (seven and len(ud) != (udl * 7 + 7) // 8):
        raise PhoneError(f"TP-UDL {udl} does not match {len(ud)} octets: {tpdu.hex()}")
    udh = b""
    head = 0
    if udhi:
        if not ud or ud[0] + 1 > len(ud):
            raise PhoneError(f"bad user data header: {tpdu.hex()}")
        udh = ud[1:1 + ud[0]]
        head = 1 + ud[0]
    if seven:
        head_septets = (head * 8 + 6) // 7
        septets = unpack_septets(ud[head:], udl - head_septets, head_septets * 7 - head * 8)
        return ReceivedSms(oa, dcs, gsm7_text(septets), septets, rp_ref, udh, tpdu)
    body = ud[head:]
    text = body.decode("utf-16-be", errors="replace") if dcs & 0x0C == 0x08 else \
        body.decode("latin-1")
    return ReceivedSms(oa, dcs, text, body, rp_ref, udh, tpdu)


@dataclass(frozen=True)
class _Sccp:
    kind: str  # "UDT", "CC", "CREF", "DT1", "RLSD", "RLC", ...
    dst_ref: int | None
    src_ref: int | None
    data: bytes


class LabPhone:
    """One handset with its BSC, attached to an osmo-stp at ``stp_ip``.

    ``with LabPhone(imsi, netns=village.ns) as phone: phone.location_update()``.
    ``bsc_pc`` is this BSC's point code (each phone in one village needs its own).
    """

    def __init__(self, imsi: str, *, stp_ip: str = "127.0.0.1", stp_port: int = 2905,
                 bsc_pc: str = "0.23.3", msc_pc: str = "0.23.1", mcc: str = "901",
                 mnc: str = "70", lac: int = 23, cell_id: int = 1, timeout: float = 5.0,
                 netns: Netns | None = None) -> None:
        if not (imsi.isdigit() and 6 <= len(imsi) <= 15):
            raise LabError(f"bad IMSI {imsi!r}: 6 to 15 digits")
        if not (0 < lac < 0xFFFE and 0 <= cell_id <= 0xFFFF):
            raise LabError(f"bad LAC/CI {lac}/{cell_id}")
        self.imsi = imsi
        self.stp = (stp_ip, stp_port)
        self.opc, self.dpc = point_code(bsc_pc), point_code(msc_pc)
        self.plmn = _plmn(mcc, mnc)
        self.lac, self.cell_id = lac, cell_id
        self.timeout = timeout
        self.netns = netns
        self.tmsi: int | None = None
        self._sock: socket.socket | None = None
        self._rctx: int | None = None
        self._next_ref = 1
        self._nsd = 0  # N(SD) of uplink MM/CC/SS messages on this connection (TS 24.007 11.2.3.2)
        self.trace: list[str] = []  # what went over the A interface, in order (for docs/tests)
        #: SMS that came on one connection after the first, for the next receive_sms()
        self.pending: list[ReceivedSms] = []

    # -- life cycle ------------------------------------------------------------------------

    def connect(self) -> None:
        """M3UA ASP up, our routing key registered, ASP active; then BSSMAP RESET/ACK."""
        ctx = self.netns.entered() if self.netns is not None else contextlib.nullcontext()
        with ctx:
            self._sock = socket.create_connection(self.stp, timeout=self.timeout)
        try:
            self._m3ua_up()
            self._reset()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> LabPhone:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- procedures ------------------------------------------------------------------------

    def location_update(self, attach: bool = True) -> LuResult:
        """LOCATION UPDATING REQUEST (IMSI attach, or normal) in COMPLETE LAYER 3; the MSC
        does the GSUP LU at its HLR and accepts. A new TMSI is answered with TMSI
        REALLOCATION COMPLETE. Ends when the MSC has cleared the connection."""
        self._nsd = 0  # a new RR connection
        lu = MM.MMLocationUpdatingRequest()
        lu["LocUpdateType"]["V"].set_val(2 if attach else 0)
        lu["LAI"]["V"].from_bytes(self.plmn + struct.pack(">H", self.lac))
        lu["MSCm1"]["V"].from_bytes(b"\x33")  # phase 2, early classmark, A5/1, class 4
        lu["ID"].from_bytes(self._identity())
        conn = self._open(self._seq(lu))
        result: LuResult | None = None
        reject: int | None = None
        while True:
            kind, msg = self._dtap_or_bssmap(conn)
            if kind == "BSSMAP" and msg[0] == BSSMAP_CLEAR_COMMAND:
                self._clear(conn)
                if reject is not None:
                    # raised only now: a repeat on a connection the MSC has not cleared
                    # finds its LU "already pending" and is rejected with cause 22 at once
                    raise PhoneError(f"LOCATION UPDATING REJECT, cause {reject}")
                if result is None:
                    raise PhoneError("the MSC cleared the connection before LOCATION UPDATING "
                                     "ACCEPT")
                return result
            if kind != "DTAP":
                continue  # e.g. BSSMAP COMMON ID: nothing to answer
            nas, name = msg
            if name == "MMLocationUpdatingReject":
                reject = int(nas["RejectCause"].get_val()[0])
                self.trace[-1] += f" (cause {reject})"
                continue
            if name == "MMLocationUpdatingAccept":
                lai = bytes(nas["LAI"].to_bytes())
                tmsi = self._tmsi_of(nas)
                result = LuResult(lai, tmsi)
                if tmsi is not None:
                    self.tmsi = tmsi
                    self._send_dt1(conn, _dtap(self._seq(MM.MMTMSIReallocationComplete())))
                    self.trace.append("phone -> MSC  TMSI REALLOCATION COMPLETE")
            elif name == "MMInformation":
                continue
            elif name == "MMIdentityRequest":
                self._identity_response(conn, nas)
            elif name == "CP_DATA":
                # osmo-msc delivers what it holds for us on the LU's connection, right after
                # the accept: kept for the next receive_sms()
                self.pending.append(self._take_mt_sms(conn, nas, None))
            elif name == "CP_ACK":
                continue
            else:
                raise PhoneError(f"unexpected {name} during Location Updating")

    def imsi_detach(self) -> None:
        """IMSI DETACH INDICATION (switching off) in COMPLETE LAYER 3; returns when the MSC
        has cleared the connection (it sends nothing else for a detach)."""
        self._nsd = 0
        det = MM.MMIMSIDetachIndication()
        det["MSCm1"]["V"].from_bytes(b"\x33")
        det["ID"].from_bytes(self._identity())
        conn = self._open(self._seq(det))
        while True:
            kind, msg = self._dtap_or_bssmap(conn)
            if kind == "BSSMAP" and msg[0] == BSSMAP_CLEAR_COMMAND:
                self._clear(conn)
                return

    def send_sms(self, destination: str, text: str, *, ucs2: bool = False,
                 rp_ref: int = 1, tp_ref: int = 1, udh: bytes = b"",
                 status_report: bool = False) -> SmsResult:
        """An MO SMS: CM SERVICE REQUEST (short message service), then on SAPI 3 CP-DATA with
        RP-DATA carrying an SMS-SUBMIT of ``text`` (GSM 7-bit, or UCS-2) to ``destination``
        (international, E.164, as a handset sends it; :func:`sms_submit`: ``udh`` a user data
        header, e.g. :func:`concat_udh`; ``status_report`` sets TP-SRR). The network's
        CP-ACK, then its CP-DATA with RP-ACK or RP-ERROR (answered with CP-ACK); ends when
        the MSC has cleared. Needs a Location Updating first (the MSC knows the subscriber
        by then)."""
        tpdu = sms_submit(destination, text, ucs2=ucs2, tp_ref=tp_ref, udh=udh,
                          status_report=status_report)
        self._nsd = 0
        req = MM.MMCMServiceRequest()
        req["CKSN"]["V"].set_val(7)  # no key: osmo-msc here does no authentication
        req["Service"]["V"].set_val(4)  # short message service
        req["MSCm2"].from_bytes(bytes.fromhex("03331982"))
        req["ID"].from_bytes(self._identity())
        conn = self._open(self._seq(req))
        while True:
            kind, msg = self._dtap_or_bssmap(conn)
            if kind == "BSSMAP" and msg[0] == BSSMAP_CLEAR_COMMAND:
                self._clear(conn)
                raise PhoneError("the MSC cleared the connection instead of CM SERVICE ACCEPT")
            if kind != "DTAP":
                continue
            if msg[1] == "MMCMServiceAccept":
                break
            raise PhoneError(f"{msg[1]} instead of CM SERVICE ACCEPT: {msg[0].show()}")
        rp = PPSMS.RP_DATA_MO(val={"Ref": rp_ref % 256})
        rp["RPUserData"].from_bytes(bytes([len(tpdu)]) + tpdu)
        rpdu = bytes(rp.to_bytes())
        cp = PPSMS.CP_DATA()
        cp["CPUserData"].from_bytes(bytes([len(rpdu)]) + rpdu)
        self._send_dt1(conn, _dtap(bytes(cp.to_bytes()), sapi=3))
        self.trace.append(f"phone -> MSC  CP-DATA (RP-DATA, SMS-SUBMIT to {destination})")
        result: SmsResult | None = None
        while True:
            kind, msg = self._dtap_or_bssmap(conn)
            if kind == "BSSMAP" and msg[0] == BSSMAP_CLEAR_COMMAND:
                self._clear(conn)
                if result is None:
                    raise PhoneError("the MSC cleared the connection before RP-ACK/RP-ERROR")
                return result
            if kind != "DTAP":
                continue
            nas, name = msg
            if name == "CP_ACK":
                continue
            if name == "CP_ERROR":
                raise PhoneError(f"CP-ERROR from the MSC: {nas.show()}")
            if name != "CP_DATA":
                raise PhoneError(f"unexpected {name} during an MO SMS")
            rp_msg = nas["CPUserData"][-1]
            mti = rp_msg["MTI"].get_val()
            ref = rp_msg["Ref"].get_val()
            if ref != rp_ref % 256:
                raise PhoneError(f"RP message for reference {ref}, ours is {rp_ref % 256}")
            if mti == 3:
                result = SmsResult(True, None, ref)
                self.trace[-1] += " (RP-ACK)"
            elif mti == 5:
                cause = int(rp_msg["RPCause"][-1]["Value"].get_val())
                result = SmsResult(False, cause, ref)
                self.trace[-1] += f" (RP-ERROR cause {cause})"
            else:
                raise PhoneError(f"RP message type {mti} during an MO SMS")
            ack = PPSMS.CP_ACK()
            ack["CPHeader"]["TIPD"]["TIO"].set_val(nas["CPHeader"]["TIPD"]["TIO"].get_val())
            self._send_dt1(conn, _dtap(bytes(ack.to_bytes()), sapi=3))
            self.trace.append("phone -> MSC  CP-ACK")

    def receive_sms(self, wait: float, *, refuse: int | None = None) -> ReceivedSms:
        """An MT SMS: wait at most ``wait`` s for the MSC's BSSMAP PAGING for our IMSI, answer
        with PAGING RESPONSE in COMPLETE LAYER 3, take CP-DATA with RP-DATA (SMS-DELIVER or
        SMS-STATUS-REPORT), answer CP-ACK and CP-DATA with RP-ACK (or, with ``refuse``,
        RP-ERROR with that cause, TS 24.011 8.2.5.4: 22 "memory capacity exceeded");
        ends when the MSC has cleared. Several SMS on one connection: the first is returned,
        the others are kept for the next call (:attr:`pending`)."""
        if self.pending:
            return self.pending.pop(0)
        deadline = time.monotonic() + wait
        while True:
            sccp = self._recv_sccp(deadline)
            if sccp.kind == "UDT" and self._paging_for_us(sccp.data):
                break
            log.info("phone %s: waiting for PAGING, ignoring SCCP %s %s", self.imsi, sccp.kind,
                     sccp.data.hex())
        self.trace.append("MSC -> BSC  BSSMAP PAGING")
        resp = RR.RRPagingResponse()
        resp["CKSN"]["V"].set_val(7)
        resp["MSCm2"].from_bytes(bytes.fromhex("03331982"))
        resp["ID"].from_bytes(self._identity())
        conn = self._open(bytes(resp.to_bytes()))
        got: list[ReceivedSms] = []
        while True:
            kind, msg = self._dtap_or_bssmap(conn)
            if kind == "BSSMAP" and msg[0] == BSSMAP_CLEAR_COMMAND:
                self._clear(conn)
                if not got:
                    raise PhoneError("the MSC cleared the connection before an SMS-DELIVER")
                self.pending.extend(got[1:])
                return got[0]
            if kind != "DTAP":
                continue
            nas, name = msg
            if name == "CP_ACK":
                continue
            if name != "CP_DATA":
                raise PhoneError(f"unexpected {name} during an MT SMS")
            got.append(self._take_mt_sms(conn, nas, refuse))

    def pagings(self, within: float) -> list[float]:
        """Out of coverage: every BSSMAP PAGING for our IMSI that comes within ``within`` s,
        none answered (the BSC pages, the handset does not hear it); the monotonic time each
        arrived. Anything else the MSC sends meanwhile is ignored."""
        deadline = time.monotonic() + within
        seen: list[float] = []
        while True:
            try:
                sccp = self._recv_sccp(deadline)
            except PhoneError:
                if time.monotonic() >= deadline:
                    return seen
                raise
            if sccp.kind == "UDT" and self._paging_for_us(sccp.data):
                seen.append(time.monotonic())
                self.trace.append("MSC -> BSC  BSSMAP PAGING (not answered)")

    def _take_mt_sms(self, conn: int, nas: Any, refuse: int | None) -> ReceivedSms:
        """CP-DATA with RP-DATA from the MSC: answered CP-ACK, then RP-ACK or RP-ERROR."""
        rpdu = bytes(nas["CPUserData"].to_bytes())[1:]  # the LV's value: RP-DATA (MT)
        sms = self._rp_data_mt(rpdu)
        tio = nas["CPHeader"]["TIPD"]["TIO"].get_val()
        ack = PPSMS.CP_ACK()
        ack["CPHeader"]["TIPD"]["TIFlag"].set_val(1)  # the MSC allocated this transaction
        ack["CPHeader"]["TIPD"]["TIO"].set_val(tio)
        self._send_dt1(conn, _dtap(bytes(ack.to_bytes()), sapi=3))
        if refuse is None:
            answer = bytes(PPSMS.RP_ACK_MO(val={"Ref": sms.rp_ref}).to_bytes())
            what = "RP-ACK"
        else:
            if not 0 < refuse < 128:
                raise LabError(f"bad RP cause {refuse}")
            # RP-ERROR (MS to network, MTI 4): reference, cause IE (length 1, value)
            answer = bytes([0x04, sms.rp_ref, 1, refuse])
            what = f"RP-ERROR cause {refuse}"
            sms = dataclasses.replace(sms, refused=refuse)
        kind_of = "SMS-STATUS-REPORT" if sms.report is not None else "SMS-DELIVER"
        self.trace[-1] += f" (RP-DATA, {kind_of} from {sms.sender})"
        cp = PPSMS.CP_DATA()
        cp["CPHeader"]["TIPD"]["TIFlag"].set_val(1)
        cp["CPHeader"]["TIPD"]["TIO"].set_val(tio)
        cp["CPUserData"].from_bytes(bytes([len(answer)]) + answer)
        self._send_dt1(conn, _dtap(bytes(cp.to_bytes()), sapi=3))
        self.trace.append(f"phone -> MSC  CP-ACK; CP-DATA ({what})")
        return sms

    @staticmethod
    def _rp_data_mt(rpdu: bytes) -> ReceivedSms:
        """RP-DATA network to MS (TS 24.011 7.3.1.1): MTI 1, reference, originator (the SMSC,
        LV), destination (empty, LV), RP-User-Data (LV: the TPDU), nothing after it."""
        if len(rpdu) < 3 or rpdu[0] & 0x07 != 1:
            raise PhoneError(f"not RP-DATA (network to MS): {rpdu.hex()}")
        ref, pos = rpdu[1], 2
        for _ in range(2):  # RP-Originator, RP-Destination addresses
            if pos >= len(rpdu) or pos + 1 + rpdu[pos] > len(rpdu):
                raise PhoneError(f"truncated RP-DATA: {rpdu.hex()}")
            pos += 1 + rpdu[pos]
        if pos >= len(rpdu) or pos + 1 + rpdu[pos] != len(rpdu):
            raise PhoneError(f"bad RP-User-Data in RP-DATA: {rpdu.hex()}")
        return parse_sms_deliver(rpdu[pos + 1:], ref)

    def _paging_for_us(self, data: bytes) -> bool:
        """BSSMAP PAGING (TS 48.008 3.2.1.19) whose IMSI (its first, mandatory IE) is ours."""
        if len(data) < 5 or data[0] != 0x00 or len(data) != 2 + data[1]:
            return False
        if data[2] != BSSMAP_PAGING or data[3] != IE_IMSI:
            return False
        value = data[5:5 + data[4]]
        if len(value) != data[4]:
            raise PhoneError(f"truncated BSSMAP PAGING: {data.hex()}")
        ident = ID()
        ident.from_bytes(value)
        kind, imsi = ident.decode()
        return bool(kind == 1 and imsi == self.imsi)

    # -- MM helpers ------------------------------------------------------------------------

    def _identity_response(self, conn: int, request: Any) -> None:
        """IDENTITY REQUEST (TS 24.008 9.2.10) for our IMSI: answered with it (osmo-msc asks
        when it does not know the TMSI the phone used, e.g. after an IMSI detach)."""
        kind = int(request["IDType"]["V"].get_val())
        if kind != 1:
            raise PhoneError(f"IDENTITY REQUEST for identity type {kind}: only IMSI is known")
        ident = ID()
        ident.encode(1, self.imsi)
        raw = bytes(ident.to_bytes())
        resp = MM.MMIdentityResponse()
        resp["ID"].from_bytes(bytes([len(raw)]) + raw)
        self._send_dt1(conn, _dtap(self._seq(resp)))
        self.trace.append("phone -> MSC  IDENTITY RESPONSE (IMSI)")

    def _identity(self) -> bytes:
        """Mobile identity (TS 24.008 10.5.1.4) as LV: the TMSI once we have one."""
        ident = ID()
        if self.tmsi is not None:
            ident.encode(4, self.tmsi)
        else:
            ident.encode(1, self.imsi)
        raw = bytes(ident.to_bytes())
        return bytes([len(raw)]) + raw

    def _seq(self, nas: Any) -> bytes:
        nas["MMHeader"]["Seqn"].set_val(self._nsd)
        # modulo 2: our classmark says phase 2 (revision level 1), and for such a phone
        # TS 24.007 11.2.3.2.3 counts N(SD) in one bit; osmo-msc 1.16 rejects a message type
        # with bit 8 set ("MSG 0x9b not defined for PD"), 1.9 did not look
        self._nsd = (self._nsd + 1) % 2
        return bytes(nas.to_bytes())

    @staticmethod
    def _tmsi_of(nas: Any) -> int | None:
        """The TMSI in LOCATION UPDATING ACCEPT's optional Mobile Identity, if any."""
        names = [e._name for e in nas]
        if "ID" not in names or nas["ID"].get_trans():
            return None
        kind, value = nas["ID"][-1].decode()
        return int(value) if kind == 4 else None

    # -- BSSMAP / SCCP connection ----------------------------------------------------------

    def _reset(self) -> None:
        """BSSMAP RESET until RESET ACKNOWLEDGE. osmo-msc registers its own point code at
        osmo-stp a moment after it connects (measured: about 2 s after start), and until then
        osmo-stp answers our DATA with M3UA ERR: the RESET is sent again when osmo-stp says
        the MSC's point code is available (DAVA), all within ``timeout``."""
        reset = _bssmap(bytes([BSSMAP_RESET]) + _ie(IE_CAUSE, bytes([CAUSE_OM_INTERVENTION])))
        self._send_udt(reset)
        self.trace.append("BSC -> MSC  BSSMAP RESET (UDT)")
        deadline = time.monotonic() + self.timeout
        while True:
            msg = self._recv_m3ua(deadline)
            cls_type = (msg[0]["Class"].get_val(), msg[0]["Type"].get_val())
            if cls_type == (0, 0):  # ERR: no route to the MSC yet
                log.info("phone %s: osmo-stp could not deliver our RESET (M3UA ERR %s); "
                         "waiting for the MSC's point code", self.imsi, msg.to_bytes().hex())
                continue
            if cls_type == (2, 2):  # DAVA
                affected = _param(msg, T.AffectedPC)
                pcs = {int(pc["PC"].get_val()) for pc in affected} if affected is not None \
                    else set()
                if self.dpc in pcs:
                    self._send_udt(reset)
                    self.trace.append("BSC -> MSC  BSSMAP RESET again (MSC now available)")
                continue
            if cls_type != (1, 1):
                continue
            sccp = self._data_to_sccp(msg)
            if sccp.kind == "UDT" and sccp.data[:1] == b"\x00" and sccp.data[2:3] == \
                    bytes([BSSMAP_RESET_ACK]):
                self.trace.append("MSC -> BSC  BSSMAP RESET ACKNOWLEDGE")
                return
            log.info("phone %s: before RESET ACK, ignoring SCCP %s", self.imsi, sccp.kind)

    def _open(self, l3: bytes) -> int:
        """CR carrying COMPLETE LAYER 3 INFORMATION; returns the MSC's local reference."""
        ref = self._next_ref
        self._next_ref = self._next_ref % 0xFFFFFF + 1
        cgi = self.plmn + struct.pack(">HH", self.lac, self.cell_id)
        cl3 = _bssmap(bytes([BSSMAP_COMPLETE_L3]) + _ie(IE_CELL_ID, b"\x00" + cgi)
                      + _ie(IE_L3_INFO, l3))
        cr = SCCP.SCCPConnectionRequest(val={"SrcLocalRef": ref, "ProtocolClass": {"Class": 2},
                                             "CalledPartyAddr": _addr(self.dpc)})
        opt = cr["Opt"]
        for name, value in (("CallingPartyAddr", _addr(self.opc)), ("Data", {"Value": cl3})):
            opt[name].set_trans(False)
            opt[name][1].set_val(value)
        opt["EOO"].set_trans(False)
        self._send_sccp(cr.to_bytes())
        self.trace.append(f"phone -> MSC  CR + COMPLETE LAYER 3 ({self._nas_name(l3)})")
        deadline = time.monotonic() + self.timeout
        while True:
            sccp = self._recv_sccp(deadline)
            if sccp.kind == "CC" and sccp.dst_ref == ref and sccp.src_ref is not None:
                self.trace.append("MSC -> phone  CC")
                return sccp.src_ref
            if sccp.kind == "CREF" and sccp.dst_ref == ref:
                raise PhoneError("the MSC refused the SCCP connection (CREF)")
            log.info("phone %s: waiting for CC, ignoring SCCP %s", self.imsi, sccp.kind)

    def _dtap_or_bssmap(self, conn: int) -> tuple[str, Any]:
        """The next BSSAP message on our connection: ("DTAP", (nas, name)) or ("BSSMAP",
        bytes from the message type on)."""
        deadline = time.monotonic() + self.timeout
        while True:
            sccp = self._recv_sccp(deadline)
            if sccp.kind == "RLSD":
                raise PhoneError("the MSC released the SCCP connection unasked (RLSD)")
            if sccp.kind != "DT1":
                log.info("phone %s: ignoring SCCP %s", self.imsi, sccp.kind)
                continue
            data = sccp.data
            if len(data) >= 2 and data[0] == 0x00 and len(data) == 2 + data[1] and data[1]:
                self.trace.append(f"MSC -> phone  BSSMAP 0x{data[2]:02x}")
                return "BSSMAP", data[2:]
            if len(data) >= 3 and data[0] == 0x01 and len(data) == 3 + data[2]:
                nas, err = NAS.parse_NAS_MT(data[3:])
                if err or nas is None:
                    raise PhoneError(f"undecodable DTAP from the MSC: {data[3:].hex()}")
                name = str(nas._name)
                self.trace.append(f"MSC -> phone  {self._pretty(name)}")
                return "DTAP", (nas, name)
            raise PhoneError(f"undecodable BSSAP from the MSC: {data.hex()}")

    def _clear(self, conn: int) -> None:
        """Answer CLEAR COMMAND, then the MSC's RLSD with RLC."""
        self._send_dt1(conn, _bssmap(bytes([BSSMAP_CLEAR_COMPLETE])))
        self.trace.append("phone -> MSC  CLEAR COMPLETE")
        deadline = time.monotonic() + self.timeout
        while True:
            sccp = self._recv_sccp(deadline)
            if sccp.kind == "RLSD":
                rlc = SCCP.SCCPReleaseComplete(val={"DstLocalRef": sccp.src_ref or 0,
                                                    "SrcLocalRef": sccp.dst_ref or 0})
                self._send_sccp(rlc.to_bytes())
                self.trace.append("MSC -> phone  RLSD; phone -> MSC  RLC")
                self._nsd = 0
                return

    def _send_dt1(self, conn: int, data: bytes) -> None:
        dt1 = SCCP.SCCPDataForm1(val={"DstLocalRef": conn, "Data": {"Value": data}})
        self._send_sccp(dt1.to_bytes())

    def _send_udt(self, data: bytes) -> None:
        udt = SCCP.SCCPUnitData(val={"ProtocolClass": {"Class": 0},
                                     "CalledPartyAddr": _addr(self.dpc),
                                     "CallingPartyAddr": _addr(self.opc),
                                     "Data": {"Value": data}})
        self._send_sccp(udt.to_bytes())

    @staticmethod
    def _nas_name(l3: bytes) -> str:
        nas, err = NAS.parse_NAS_MO(l3)
        return LabPhone._pretty(str(nas._name)) if nas is not None and not err else l3.hex()

    @staticmethod
    def _pretty(name: str) -> str:
        words = {"MMLocationUpdatingRequest": "LOCATION UPDATING REQUEST",
                 "MMLocationUpdatingAccept": "LOCATION UPDATING ACCEPT",
                 "MMLocationUpdatingReject": "LOCATION UPDATING REJECT",
                 "MMIMSIDetachIndication": "IMSI DETACH INDICATION",
                 "MMInformation": "MM INFORMATION",
                 "MMCMServiceRequest": "CM SERVICE REQUEST",
                 "RRPagingResponse": "PAGING RESPONSE",
                 "MMCMServiceAccept": "CM SERVICE ACCEPT", "CP_ACK": "CP-ACK",
                 "MMIdentityRequest": "IDENTITY REQUEST",
                 "CP_DATA": "CP-DATA", "CP_ERROR": "CP-ERROR"}
        return words.get(name, name)

    # -- SCCP over M3UA --------------------------------------------------------------------

    def _send_sccp(self, sccp: bytes) -> None:
        if self._rctx is None:
            raise PhoneError("M3UA is not active")
        msg = M3UA.M3UA_DATA()
        prms = msg[1]
        prms.clear()
        prms.add_prm(T.RoutingContext, [self._rctx])
        prms.add_prm(T.ProtocolData, {"OPC": self.opc, "DPC": self.dpc, "SI": SI_SCCP,
                                      "NI": NI_INTERNATIONAL, "MP": 0, "SLS": 0,
                                      "Data": bytes(sccp)})
        self._send(msg.to_bytes())

    def _recv_sccp(self, deadline: float) -> _Sccp:
        while True:
            msg = self._recv_m3ua(deadline)
            cls_type = (msg[0]["Class"].get_val(), msg[0]["Type"].get_val())
            if cls_type != (1, 1):
                log.info("phone %s: M3UA %s ignored: %s", self.imsi, msg._name,
                         msg.to_bytes().hex())
                continue
            return self._data_to_sccp(msg)

    def _data_to_sccp(self, msg: Any) -> _Sccp:
        pd = _param(msg, T.ProtocolData)
        if pd is None or pd["SI"].get_val() != SI_SCCP or pd["DPC"].get_val() != self.opc:
            raise PhoneError(f"M3UA DATA not SCCP for us: {msg.to_bytes().hex()}")
        return _parse_sccp(pd["Data"].to_bytes())

    def _m3ua_up(self) -> None:
        deadline = time.monotonic() + self.timeout
        self._send(M3UA.M3UA_ASPUp().to_bytes())
        self._expect(deadline, (3, 4), "ASP UP ACK")
        reg = M3UA.M3UA_REGREQ()
        reg[1].clear()
        reg[1].add_prm(T.RoutingKey, None)
        key = reg[1][-1][2]
        key.clear()
        key.add_prm(T.LocalRKId, 1)
        key.add_prm(T.DPC, {"Mask": 0, "PC": self.opc})
        self._send(reg.to_bytes())
        rsp = self._expect(deadline, (9, 2), "REG RSP")
        result = _param(rsp, T.RegResult)
        if result is None:
            raise PhoneError(f"REG RSP without a result: {rsp.to_bytes().hex()}")
        status = _param_in(result, T.RegStatus)
        rctx = _param_in(result, T.RoutingContext)
        if status is None or status.get_val() != 0 or rctx is None:
            raise PhoneError(f"osmo-stp refused our routing key: {rsp.show()}")
        self._rctx = int(rctx.get_val()[0])
        act = M3UA.M3UA_ASPAct()
        act[1].clear()
        act[1].add_prm(T.TrafficModeType, 1)  # override
        act[1].add_prm(T.RoutingContext, [self._rctx])
        self._send(act.to_bytes())
        self._expect(deadline, (4, 3), "ASP ACTIVE ACK")
        self.trace.append(f"BSC -> STP  M3UA ASP UP, REG REQ (PC {self.opc}), ASP ACTIVE "
                          f"(routing context {self._rctx})")

    def _expect(self, deadline: float, cls_type: tuple[int, int], what: str) -> Any:
        while True:
            msg = self._recv_m3ua(deadline)
            got = (msg[0]["Class"].get_val(), msg[0]["Type"].get_val())
            if got == cls_type:
                return msg
            if got == (0, 0):
                raise PhoneError(f"osmo-stp answered M3UA ERR while we waited for {what}: "
                                 f"{msg.show()}")
            log.info("phone %s: waiting for %s, M3UA %s ignored", self.imsi, what, msg._name)

    def _send(self, data: bytes) -> None:
        if self._sock is None:
            raise PhoneError("the phone is not connected")
        self._sock.settimeout(self.timeout)
        self._sock.sendall(data)

    def _recv_m3ua(self, deadline: float) -> Any:
        head = self._read(8, deadline)
        length = struct.unpack(">I", head[4:8])[0]
        if head[0] != 1 or not 8 <= length <= MAX_M3UA:
            raise PhoneError(f"not an M3UA message from osmo-stp: {head.hex()}")
        raw = head + self._read(length - 8, deadline)
        msg, err = M3UA.parse_M3UA(raw)
        if msg is None or err:
            raise PhoneError(f"undecodable M3UA from osmo-stp (error {err}): {raw.hex()}")
        if (msg[0]["Class"].get_val(), msg[0]["Type"].get_val()) == (3, 3):  # BEAT
            ack = M3UA.M3UA_BEATAck()
            ack[1].clear()
            data = _param(msg, T.HeartbeatData)
            if data is not None:
                ack[1].add_prm(T.HeartbeatData, data.to_bytes())
            self._send(ack.to_bytes())
        return msg

    def _read(self, n: int, deadline: float) -> bytes:
        if self._sock is None:
            raise PhoneError("the phone is not connected")
        buf = b""
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PhoneError(f"phone {self.imsi}: no answer from the network in "
                                 f"{self.timeout}s; so far: {'; '.join(self.trace[-3:])}")
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(n - len(buf))
            except TimeoutError:
                continue
            if not chunk:
                raise PhoneError("osmo-stp closed the M3UA connection")
            buf += chunk
        return buf


def _param_in(params: Any, tag: int) -> Any:
    for prm in params:
        if prm[0].get_val() == tag:
            return prm[2]
    return None


_SCCP_KINDS = {1: "CR", 2: "CC", 3: "CREF", 4: "RLSD", 5: "RLC", 6: "DT1", 9: "UDT",
               16: "IT"}


def _parse_sccp(raw: bytes) -> _Sccp:
    if not raw or raw[0] not in SCCP.SCCPTypeClasses:
        raise PhoneError(f"unknown SCCP message: {raw.hex()}")
    msg = SCCP.SCCPTypeClasses[raw[0]]()
    try:
        msg.from_bytes(raw)
    except Exception as exc:
        raise PhoneError(f"undecodable SCCP {raw.hex()}: {exc}") from None
    kind = _SCCP_KINDS.get(raw[0], f"type {raw[0]}")
    names = {e._name for e in msg}
    dst = msg["DstLocalRef"].get_val() if "DstLocalRef" in names else None
    src = msg["SrcLocalRef"].get_val() if "SrcLocalRef" in names else None
    data = b""
    if "Data" in names:
        data = bytes(msg["Data"]["Value"].to_bytes())
    elif "Opt" in names:
        opt = msg["Opt"]
        with contextlib.suppress(Exception):
            if not opt["Data"].get_trans():
                data = bytes(opt["Data"][1]["Value"].to_bytes())
    return _Sccp(kind, dst, src, data)
