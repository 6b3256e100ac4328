"""The lab phone against real Osmocom programs: osmo-stp, osmo-msc and OsmoHLR in one village.

Layout: one lab village (its own network namespace, address 198.18.23.11) runs OsmoHLR on the
village address, osmo-stp on the village's loopback (M3UA port 2905, SCTP shimmed to TCP)
and osmo-msc (A interface through that osmo-stp, GSUP to the village's OsmoHLR, no
authentication or ciphering, TMSI assignment on). The phone (:class:`LabPhone`) connects to
osmo-stp from inside the village as an M3UA ASP with its own point code, and does what a
handset behind a BSC does: Location Updating, then IMSI detach.

What is checked is what the real programs did: the MSC's GSUP Location Updating at OsmoHLR
(``show subscriber``: the VLR number is the MSC's IPA name), the mslookup answer (found at
this village, its age reset by each LU the phone makes), and what the MSC tells OsmoHLR
when the phone switches off.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dgsm_integrations.lab.network import Lab, Village
from dgsm_integrations.lab.osmohlr import OsmoHlr
from dgsm_integrations.lab.osmomsc import AInterface
from dgsm_integrations.lab.osmomsc import OsmoMsc as LabMsc
from dgsm_integrations.lab.osmostp import OsmoStp
from dgsm_integrations.lab.phone import LabPhone, PhoneError
from dgsm_integrations.mslookup import AsyncResolver, Result

from .peers import require_binary
from .peers.osmomsc import OsmoMsc

MSC_NAME = "MSC-A"
IMSI, MSISDN = "901700000004242", "4242"


@dataclass
class Site:
    village: Village
    hlr: OsmoHlr
    stp: OsmoStp
    msc: LabMsc


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    for program in ("osmo-hlr", "osmo-stp", "osmo-msc", "gcc"):
        require_binary(program)
    work = tmp_path_factory.mktemp("phone")
    with Lab(["A"], workdir=work) as lab:
        v = lab["A"]
        assert v.hlr is not None
        v.provision(IMSI, MSISDN)
        with OsmoStp(Path(v.workdir) / "stp", netns=v.ns) as stp, \
                OsmoMsc(Path(v.workdir) / "msc", 42790, hlr_ip=v.addr, netns=v.ns,
                        a_interface=AInterface(ipa_name=MSC_NAME)) as msc:
            yield Site(v, v.hlr, stp, msc)


def lookup(village: Village, query: str) -> Result:
    async def body() -> Result:
        resolver = AsyncResolver(interface=village.addr, min_delay=0.3, timeout=2.0)
        try:
            return await resolver.resolve(query)
        finally:
            await resolver.close()
    return village.loop.run(body())


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
        assert (found.found, found.age) == (True, 0), found
        assert str(found.v4) == f"{site.village.addr}:5060"

        site.hlr.backdate_location_update(IMSI, 300)  # as if that LU were 5 minutes old
        old = lookup(site.village, query)
        assert old.age is not None and 300 <= old.age <= 302, old
        again = handset.location_update(attach=False)  # normal LU, identified by its TMSI
        assert again.tmsi is not None
        assert lookup(site.village, query).age == 0  # the phone's LU made the record young
        assert "LOCATION UPDATING ACCEPT" in "\n".join(handset.trace)
        assert "TMSI REALLOCATION COMPLETE" in "\n".join(handset.trace)


def test_imsi_detach_is_cleared_and_osmohlr_keeps_answering(site: Site) -> None:
    """Switching off: osmo-msc 1.9 clears the connection and tells OsmoHLR nothing (no GSUP
    Purge MS: the subscriber is unchanged there), so OsmoHLR 1.5 keeps answering mslookup
    for the switched-off phone at this village (measured; issue 15 asks this documented)."""
    imsi, msisdn = "901700000004343", "4343"
    site.village.provision(imsi, msisdn)
    with phone(site, imsi) as handset:
        handset.location_update()
        before = site.hlr.show_subscriber(imsi)
        handset.imsi_detach()
        after = site.hlr.show_subscriber(imsi)
        assert handset.trace[-5:] == [
            "phone -> MSC  CR + COMPLETE LAYER 3 (IMSI DETACH INDICATION)",
            "MSC -> phone  CC", "MSC -> phone  BSSMAP 0x20", "phone -> MSC  CLEAR COMPLETE",
            "MSC -> phone  RLSD; phone -> MSC  RLC"]
    assert after == before and f"VLR number: {MSC_NAME}" in after
    assert lookup(site.village, f"sip.voice.{msisdn}.msisdn").found


def test_unknown_subscriber_is_rejected(site: Site) -> None:
    """An IMSI OsmoHLR does not know: the MSC answers LOCATION UPDATING REJECT (not silence)."""
    with phone(site, "901700000009999") as handset, \
            pytest.raises(PhoneError, match="LOCATION UPDATING REJECT"):
        handset.location_update()

