"""The lab phone against real Osmocom programs: osmo-stp, osmo-msc and OsmoHLR in one village.

Layout: one lab village (its own network namespace, address 198.18.23.11) runs OsmoHLR on the
village address, osmo-stp on the village's loopback (M3UA port 2905, SCTP shimmed to TCP)
and osmo-msc (A interface through that osmo-stp, GSUP to the village's OsmoHLR, no
authentication or ciphering, TMSI assignment on). The phone (:class:`LabPhone`) connects to
osmo-stp from inside the village as an M3UA ASP with its own point code, and does what a
handset behind a BSC does: Location Updating, then IMSI detach.

What is checked is what the real programs did: the MSC's GSUP Location Updating at OsmoHLR
(``show subscriber``: the VLR number is the MSC's IPA name), the mslookup answer (found at
this village, its age reset by each LU the phone makes), what the MSC tells OsmoHLR when
the phone switches off, the deliver_sm osmo-msc makes of the phone's MO SMS (read by an ESME
bound as OSMPP, the default route), and the SMS-DELIVER the phone receives after osmo-msc
pages it for a submit_sm.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dgsm_integrations.lab.distro import Distro
from dgsm_integrations.lab.network import Lab, Village
from dgsm_integrations.lab.osmohlr import OsmoHlr
from dgsm_integrations.lab.osmomsc import AInterface
from dgsm_integrations.lab.osmomsc import OsmoMsc as LabMsc
from dgsm_integrations.lab.osmostp import OsmoStp
from dgsm_integrations.lab.phone import LabPhone, PhoneError
from dgsm_integrations.lab.smsc import mo_sms, parse, pdu
from dgsm_integrations.mslookup import AsyncResolver, Result

from .peers import generations, require_binary, require_generation
from .peers.osmomsc import OsmoMsc

pytestmark = pytest.mark.slow

MSC_NAME = "MSC-A"
IMSI, MSISDN = "901700000004242", "4242"
SMPP_PORT = 42790
RSYSERR = 0x08


@dataclass
class Site:
    village: Village
    hlr: OsmoHlr
    stp: OsmoStp
    msc: LabMsc
    distro: Distro


@pytest.fixture(scope="module", params=generations("osmo-hlr", "osmo-msc", "osmo-stp"))
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Site]:
    """One village per Osmocom generation (ids name the versions), shared by the module."""
    distro = require_generation(request.param, "osmo-hlr", "osmo-msc", "osmo-stp")
    require_binary("gcc")
    work = tmp_path_factory.mktemp("phone")
    with Lab(["A"], workdir=work, distro=distro) as lab:
        v = lab["A"]
        assert v.hlr is not None
        v.provision(IMSI, MSISDN)
        with OsmoStp(Path(v.workdir) / "stp", netns=v.ns, distro=distro) as stp, \
                OsmoMsc(Path(v.workdir) / "msc", SMPP_PORT, hlr_ip=v.addr, netns=v.ns,
                        a_interface=AInterface(ipa_name=MSC_NAME), distro=distro) as msc:
            yield Site(v, v.hlr, stp, msc, distro)


def lookup(village: Village, query: str) -> Result:
    async def body() -> Result:
        resolver = AsyncResolver(interface=village.addr, min_delay=0.3, timeout=2.0)
        try:
            return await resolver.resolve(query)
        finally:
            await resolver.close()
    return village.loop.run(body())


def without_ago(shown: str) -> str:
    return re.sub(r"\([^()]*ago\)", "", shown)


def phone(site: Site, imsi: str = IMSI) -> LabPhone:
    # 10 s: osmo-msc registers its point code at osmo-stp about 2 s after it starts
    return LabPhone(imsi, netns=site.village.ns, timeout=10.0)


def test_location_updating_through_real_msc_reaches_osmohlr_and_moves_the_age(site: Site) -> None:
    query = f"sip.voice.{MSISDN}.msisdn"
    assert not lookup(site.village, query).found  # provisioned, never attached
    with phone(site) as handset:
        asps = site.stp.vty("show cs7 instance 0 asp")
        assert asps.count("ASP_ACTIVE") == 2, asps  # osmo-msc's ASP and the phone's
        lu = handset.location_update()
        assert lu.tmsi is not None  # assign-tmsi: answered with TMSI REALLOCATION COMPLETE
        assert lu.lai == bytes.fromhex("09f1070017")  # MCC 901, MNC 70, LAC 23
        shown = site.hlr.show_subscriber(IMSI)
        assert f"VLR number: {MSC_NAME}" in shown, shown  # the MSC's real GSUP LU
        found = lookup(site.village, query)
        # OsmoHLR keeps last_lu_seen in whole seconds: a LU at x.9 s asked about at x+1.0 s
        # is 1 s old, so "just now" is age 0 or 1
        assert found.found and found.age in (0, 1), found
        assert str(found.v4) == f"{site.village.addr}:5060"

        site.hlr.backdate_location_update(IMSI, 300)  # as if that LU were 5 minutes old
        old = lookup(site.village, query)
        assert old.age is not None and 300 <= old.age <= 302, old
        again = handset.location_update(attach=False)  # normal LU, identified by its TMSI
        assert again.tmsi is not None
        young = lookup(site.village, query)
        assert young.age in (0, 1), young  # the phone's LU made the record young again
        assert "LOCATION UPDATING ACCEPT" in "\n".join(handset.trace)
        assert "TMSI REALLOCATION COMPLETE" in "\n".join(handset.trace)


def purges_on_detach(distro: Distro) -> bool:
    """osmo-msc 1.16 sends OsmoHLR a GSUP Purge MS when a phone detaches; 1.9 sends nothing
    (measured here, both generations)."""
    return distro.version("osmo-msc") not in ("1.9.0", "")


def test_imsi_detach_is_cleared_and_osmohlr_keeps_answering(site: Site) -> None:
    """Switching off. osmo-msc 1.9 clears the connection and tells OsmoHLR nothing (the
    subscriber is unchanged there); osmo-msc 1.16 also purges her at OsmoHLR (GSUP Purge MS:
    ``show subscriber`` says "CS purged"). Either way OsmoHLR (1.5 and 1.9.4) **keeps
    answering mslookup** for the switched-off phone at this village: a purge does not stop
    its mDNS answers (measured; issue 15 asks this documented)."""
    imsi, msisdn = "901700000004343", "4343"
    site.village.provision(imsi, msisdn)
    with phone(site, imsi) as handset:
        handset.location_update()
        before = site.hlr.show_subscriber(imsi)
        handset.imsi_detach()
        assert handset.trace[-5:] == [
            "phone -> MSC  CR + COMPLETE LAYER 3 (IMSI DETACH INDICATION)",
            "MSC -> phone  CC", "MSC -> phone  BSSMAP 0x20", "phone -> MSC  CLEAR COMPLETE",
            "MSC -> phone  RLSD; phone -> MSC  RLC"]
        if purges_on_detach(site.distro):
            # the Purge MS is sent after the clear: wait for OsmoHLR to show it
            deadline = time.monotonic() + 5
            while "CS purged" not in (after := site.hlr.show_subscriber(imsi)):
                assert time.monotonic() < deadline, after
                time.sleep(0.05)  # polling OsmoHLR's VTY: no event to await
        else:
            after = site.hlr.show_subscriber(imsi)
    if purges_on_detach(site.distro):
        assert without_ago(after) == without_ago(before).replace(
            f"VLR number: {MSC_NAME}\n", f"VLR number: {MSC_NAME}\n    CS purged\n"), after
    else:
        # the same record (the "(N s ago)" that OsmoHLR adds moves with the clock: left out)
        assert without_ago(after) == without_ago(before)
        assert "purged" not in after.lower()
    assert f"VLR number: {MSC_NAME}" in after
    found = lookup(site.village, f"sip.voice.{msisdn}.msisdn")
    assert found.found and str(found.v4) == f"{site.village.addr}:5060", found


def test_unknown_subscriber_is_rejected(site: Site) -> None:
    """An IMSI OsmoHLR does not know: the MSC answers LOCATION UPDATING REJECT (not silence)."""
    with phone(site, "901700000009999") as handset, \
            pytest.raises(PhoneError, match="LOCATION UPDATING REJECT"):
        handset.location_update()



# -- MO SMS: the phone's SMS leaves the real osmo-msc as deliver_sm ------------------------


def read_pdu(sock: socket.socket, deadline: float) -> Any:
    """One SMPP PDU from osmo-msc (at most 4 KiB), by ``deadline``."""
    buf = b""
    need = 4
    while len(buf) < need:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no SMPP PDU from osmo-msc in time")
        sock.settimeout(left)
        chunk = sock.recv(need - len(buf))
        if not chunk:
            raise ConnectionError("osmo-msc closed the SMPP connection")
        buf += chunk
        if len(buf) == 4 and need == 4:
            need = struct.unpack(">I", buf)[0]
            assert 16 <= need <= 4096, need
    return parse(buf)


@dataclass
class Osmpp:
    """The ESME's side of osmo-msc's default route: binds OSMPP as a transceiver (inside the
    village), answers the next deliver_sm with ``status`` and keeps it. Every read has a
    deadline; it runs on a thread while the phone's MO SMS waits for osmo-msc's RP-ACK."""

    village: Village
    password: str
    status: int = 0
    delivered: list[Any] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        with self.village.entered():
            self.sock = socket.create_connection(("127.0.0.1", SMPP_PORT), timeout=10)
        self.sock.sendall(pdu("bind_transceiver", 1, system_id="OSMPP", password=self.password,
                              interface_version=0x34))
        resp = self._read(time.monotonic() + 10)
        assert (resp.command, resp.status) == ("bind_transceiver_resp", 0), resp
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _read(self, deadline: float) -> Any:
        return read_pdu(self.sock, deadline)

    def _serve(self) -> None:
        deadline = time.monotonic() + 20
        try:
            while True:
                got = self._read(deadline)
                if got.command == "deliver_sm":
                    self.sock.sendall(pdu("deliver_sm_resp", got.sequence, status=self.status,
                                          message_id=""))
                    self.delivered.append(got)
                    return
                if got.command == "enquire_link":
                    self.sock.sendall(pdu("enquire_link_resp", got.sequence))
                self.other.append(str(got.command))
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> Osmpp:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(25)
        with contextlib.suppress(OSError):
            self.sock.close()


def osmpp_password(site: Site) -> str:
    return site.msc.esmes["OSMPP"][0]  # the default route's ESME, as the MSC is configured


_next = iter(range(100, 1000))


def new_phone(site: Site) -> tuple[LabPhone, str]:
    """A phone for a newly provisioned subscriber, and its MSISDN."""
    n = next(_next)
    imsi, msisdn = f"90170000000{n:04d}", f"77{n:04d}"
    site.village.provision(imsi, msisdn)
    return phone(site, imsi), msisdn


@pytest.mark.parametrize(("text", "ucs2", "coding", "payload"), [
    ("Hello Alice, it's Bob @ B", False, 0x01, b"Hello Alice, it's Bob \x00 B"),
    ("Привет, Алиса", True, 0x08, "Привет, Алиса".encode("utf-16-be")),
], ids=["gsm7", "ucs2"])
def test_mo_sms_leaves_real_osmo_msc_as_deliver_sm_with_exact_text_sender_coding(
        site: Site, text: str, ucs2: bool, coding: int, payload: bytes) -> None:
    bob, msisdn = new_phone(site)
    with bob:
        bob.location_update()
        with Osmpp(site.village, osmpp_password(site)) as esme:
            result = bob.send_sms("4343", text, ucs2=ucs2, rp_ref=9, tp_ref=42)
    assert esme.error is None, esme.error
    assert (result.acked, result.cause, result.rp_ref) == (True, None, 9)
    (got,) = esme.delivered
    want = mo_sms(msisdn, "4343", payload, data_coding=coding, msg_ref=42)
    assert {k: getattr(got, k) for k in want} == {
        k: (v.encode() if isinstance(v, str) else v) for k, v in want.items()}
    assert bob.trace[-7:-3] == ["phone -> MSC  CP-DATA (RP-DATA, SMS-SUBMIT to 4343)",
                                "MSC -> phone  CP-ACK", "MSC -> phone  CP-DATA (RP-ACK)",
                                "phone -> MSC  CP-ACK"]


def test_mo_sms_refused_by_the_esme_reaches_the_phone_as_rp_error(site: Site) -> None:
    """The ESME's RSYSERR (what ours answers for a village it cannot reach) becomes RP-ERROR
    cause 27, "destination out of order", at the sending phone (osmo-msc 1.9, measured)."""
    bob, _ = new_phone(site)
    with bob:
        bob.location_update()
        with Osmpp(site.village, osmpp_password(site), status=RSYSERR) as esme:
            result = bob.send_sms("4343", "will not arrive", rp_ref=3)
    assert esme.error is None, esme.error
    assert len(esme.delivered) == 1
    assert (result.acked, result.cause, result.rp_ref) == (False, 27, 3)
    assert "MSC -> phone  CP-DATA (RP-ERROR cause 27)" in bob.trace


def test_shim_keeps_m3ua_boundaries_two_messages_in_one_tcp_write(site: Site) -> None:
    """TCP has no message boundaries; the shim makes osmo-stp read one M3UA message per
    sctp_recvmsg(). Two messages in one write are answered as two."""
    from pycrate_mobile import M3UA

    beat = M3UA.M3UA_BEAT()
    beat[1].clear()
    beat[1].add_prm(M3UA.M3UATag.HeartbeatData, b"dgsm-lab-beat")
    with site.village.entered():
        sock = socket.create_connection(("127.0.0.1", 2905), timeout=5)
    with sock:
        sock.sendall(bytes(M3UA.M3UA_ASPUp().to_bytes()) + bytes(beat.to_bytes()))
        answers: list[Any] = []
        deadline = time.monotonic() + 5
        buf = b""
        while len([m for m in answers if m._name != "M3UA_BEAT"]) < 2:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(4096)
            assert chunk, f"osmo-stp closed the connection after {answers}"
            buf += chunk
            while len(buf) >= 8 and len(buf) >= struct.unpack(">I", buf[4:8])[0]:
                n = struct.unpack(">I", buf[4:8])[0]
                msg, err = M3UA.parse_M3UA(buf[:n])
                assert err == 0 and msg is not None, buf[:n].hex()
                answers.append(msg)
                buf = buf[n:]
    # osmo-stp 2.3 also sends heartbeats of its own (M3UA_BEAT): not answers to ours
    ours = [m for m in answers if m._name != "M3UA_BEAT"]
    assert [m._name for m in ours] == ["M3UA_ASPUpAck", "M3UA_BEATAck"]
    assert b"dgsm-lab-beat" in bytes(ours[1].to_bytes())


# -- MT SMS: osmo-msc pages the phone and delivers -----------------------------------------


def submit_sm(site: Site, source: str, destination: str, payload: bytes,
              data_coding: int) -> int:
    """One submit_sm from an ESME bound as ISMPP (how our ESME forwards to this village);
    returns osmo-msc's submit_sm_resp status."""
    with site.village.entered():
        sock = socket.create_connection(("127.0.0.1", SMPP_PORT), timeout=10)
    with sock:
        deadline = time.monotonic() + 10
        sock.sendall(pdu("bind_transceiver", 1, system_id="ISMPP",
                         password=site.msc.esmes["ISMPP"][0], interface_version=0x34))
        resp = read_pdu(sock, deadline)
        assert (resp.command, resp.status) == ("bind_transceiver_resp", 0), resp
        sock.sendall(pdu("submit_sm", 2, source_addr_ton=1, source_addr_npi=1,
                         source_addr=source, dest_addr_ton=1, dest_addr_npi=1,
                         destination_addr=destination, data_coding=data_coding,
                         short_message=payload))
        while True:
            got = read_pdu(sock, deadline)
            if got.command == "submit_sm_resp":
                return int(got.status)


@pytest.mark.parametrize(("payload", "coding", "text", "dcs"), [
    (b"Hi Bob, Alice here", 0x01, "Hi Bob, Alice here", 0x00),
    ("Привет, Боб".encode("utf-16-be"), 0x08, "Привет, Боб", 0x08),
], ids=["gsm7", "ucs2"])
def test_mt_sms_pages_the_phone_which_receives_exact_text_sender_coding(
        site: Site, payload: bytes, coding: int, text: str, dcs: int) -> None:
    alice, msisdn = new_phone(site)
    with alice:
        alice.location_update()
        assert submit_sm(site, "4242", msisdn, payload, coding) == 0
        got = alice.receive_sms(wait=15)
    assert (got.sender, got.dcs, got.text) == ("4242", dcs, text)
    if dcs == 0x08:
        assert got.user_data == payload  # UCS-2 byte for byte
    assert alice.trace[-10:] == [
        "MSC -> BSC  BSSMAP PAGING",
        "phone -> MSC  CR + COMPLETE LAYER 3 (PAGING RESPONSE)", "MSC -> phone  CC",
        "MSC -> phone  BSSMAP 0x2f",  # COMMON ID
        "MSC -> phone  CP-DATA (RP-DATA, SMS-DELIVER from 4242)",
        "phone -> MSC  CP-ACK; CP-DATA (RP-ACK)", "MSC -> phone  CP-ACK",
        "MSC -> phone  BSSMAP 0x20", "phone -> MSC  CLEAR COMPLETE",  # CLEAR COMMAND
        "MSC -> phone  RLSD; phone -> MSC  RLC"]
