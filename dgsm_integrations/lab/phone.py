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
:meth:`~LabPhone.send_sms` (MO) and :meth:`~LabPhone.receive_sms` (MT: paging first).

Every receive has a deadline (``timeout``); anything that does not parse, or a message that
does not fit the procedure, raises :class:`PhoneError` saying what came instead.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from pycrate_mobile import M3UA, NAS, SCCP
from pycrate_mobile import TS23040_SMS as TPDU
from pycrate_mobile import TS24008_MM as MM
from pycrate_mobile import TS24011_PPSMS as PPSMS
from pycrate_mobile import TS44018_RR as RR
from pycrate_mobile.TS24008_IE import ID

from .netns import LabError, Netns

__all__ = ["LabPhone", "LuResult", "PhoneError", "ReceivedSms", "SmsResult", "point_code"]

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
    """An SMS-DELIVER as the phone received it: originator, TP-DCS, the decoded text and
    the user data as it came (GSM 7-bit packed, or UCS-2 bytes), and the RP message
    reference."""

    sender: str
    dcs: int
    text: str
    user_data: bytes
    rp_ref: int


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
        while True:
            kind, msg = self._dtap_or_bssmap(conn)
            if kind == "BSSMAP" and msg[0] == BSSMAP_CLEAR_COMMAND:
                self._clear(conn)
                if result is None:
                    raise PhoneError("the MSC cleared the connection before LOCATION UPDATING "
                                     "ACCEPT")
                return result
            if kind != "DTAP":
                continue  # e.g. BSSMAP COMMON ID: nothing to answer
            nas, name = msg
            if name == "MMLocationUpdatingReject":
                raise PhoneError(f"LOCATION UPDATING REJECT: {nas.show()}")
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
                 rp_ref: int = 1, tp_ref: int = 1) -> SmsResult:
        """An MO SMS: CM SERVICE REQUEST (short message service), then on SAPI 3 CP-DATA with
        RP-DATA carrying an SMS-SUBMIT of ``text`` (GSM 7-bit, or UCS-2) to ``destination``
        (international, E.164, as a handset sends it). The network's CP-ACK, then its CP-DATA
        with RP-ACK or RP-ERROR (answered with CP-ACK); ends when the MSC has cleared.
        Needs a Location Updating first (the MSC knows the subscriber by then)."""
        if not (destination.isdigit() and 1 <= len(destination) <= 20):
            raise LabError(f"bad destination {destination!r}: 1 to 20 digits")
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
        submit = TPDU.SMS_SUBMIT(val={
            "TP_MR": tp_ref % 256, "TP_DA": {"Num": destination},
            "TP_DCS": {"Charset": 2 if ucs2 else 0}, "TP_UD": {"UD": text}})
        tpdu = bytes(submit.to_bytes())
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

    def receive_sms(self, wait: float) -> ReceivedSms:
        """An MT SMS: wait at most ``wait`` s for the MSC's BSSMAP PAGING for our IMSI, answer
        with PAGING RESPONSE in COMPLETE LAYER 3, take CP-DATA with RP-DATA (SMS-DELIVER),
        answer CP-ACK and CP-DATA with RP-ACK; ends when the MSC has cleared."""
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
        got: ReceivedSms | None = None
        while True:
            kind, msg = self._dtap_or_bssmap(conn)
            if kind == "BSSMAP" and msg[0] == BSSMAP_CLEAR_COMMAND:
                self._clear(conn)
                if got is None:
                    raise PhoneError("the MSC cleared the connection before an SMS-DELIVER")
                return got
            if kind != "DTAP":
                continue
            nas, name = msg
            if name == "CP_ACK":
                continue
            if name != "CP_DATA":
                raise PhoneError(f"unexpected {name} during an MT SMS")
            rp = nas["CPUserData"][-1]
            if rp["MTI"].get_val() != 1:
                raise PhoneError(f"RP message type {rp['MTI'].get_val()} instead of RP-DATA")
            tpdu = rp["RPUserData"][-1]
            if tpdu._name != "SMS_DELIVER":
                raise PhoneError(f"{tpdu._name} instead of SMS-DELIVER")
            dcs = int.from_bytes(bytes(tpdu["TP_DCS"].to_bytes()), "big")
            ud = tpdu["TP_UD"]["UD"]
            got = ReceivedSms(str(tpdu["TP_OA"]["Num"].decode()), dcs, str(ud.decode()),
                              bytes(ud.get_val()), int(rp["Ref"].get_val()))
            self.trace[-1] += f" (RP-DATA, SMS-DELIVER from {got.sender})"
            tio = nas["CPHeader"]["TIPD"]["TIO"].get_val()
            ack = PPSMS.CP_ACK()
            ack["CPHeader"]["TIPD"]["TIFlag"].set_val(1)  # the MSC allocated this transaction
            ack["CPHeader"]["TIPD"]["TIO"].set_val(tio)
            self._send_dt1(conn, _dtap(bytes(ack.to_bytes()), sapi=3))
            rp_ack = bytes(PPSMS.RP_ACK_MO(val={"Ref": got.rp_ref}).to_bytes())
            cp = PPSMS.CP_DATA()
            cp["CPHeader"]["TIPD"]["TIFlag"].set_val(1)
            cp["CPHeader"]["TIPD"]["TIO"].set_val(tio)
            cp["CPUserData"].from_bytes(bytes([len(rp_ack)]) + rp_ack)
            self._send_dt1(conn, _dtap(bytes(cp.to_bytes()), sapi=3))
            self.trace.append("phone -> MSC  CP-ACK; CP-DATA (RP-ACK)")

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
        self._nsd = (self._nsd + 1) % 4
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
