"""Our resolver against a real OsmoHLR in the test's network namespace, once per Osmocom
generation (``[osmo-hlr-1.5.0]`` Debian 12's, ``[osmo-hlr-1.9.4]`` Debian sid's).

OsmoHLR binds its mDNS socket to the default interface; inside the test namespace that is lo
(224.0.0.0/4 is routed there), so our resolver pinned to 127.0.0.1 hears it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dgsm_integrations.lab.distro import Distro
from dgsm_integrations.mslookup import Endpoint, Outcome, Resolver

from .conftest import LO
from .peers.osmohlr import OsmoHlr

IMSI, MSISDN = "901700000004242", "4242"
IMSI_B, MSISDN_B = "901700000004343", "4343"
# Addresses OsmoHLR only announces; nothing is ever sent to them.
SERVICES_A = {"sip.voice": ("10.23.42.5", 5060), "smpp.sms": ("10.23.42.6", 2775)}
SERVICES_B = {"sip.voice": ("10.23.43.5", 5070), "smpp.sms": ("10.23.43.6", 2776)}


@pytest.fixture
def hlr(tmp_path: Path, hlr_distro: Distro) -> Iterator[OsmoHlr]:
    peer = OsmoHlr(tmp_path / "hlr", services=SERVICES_A, client_timeout_ms=100,
                   distro=hlr_distro)
    with peer:
        peer.create_subscriber(IMSI, MSISDN)
        yield peer
    print(peer.log_text())  # shown only when the test failed


@pytest.fixture
def resolver() -> Iterator[Resolver]:
    with Resolver(interface=LO, min_delay=0.3, allow_loopback=True) as r:
        yield r


def test_home_hlr_answers_gsup_with_age_zero_at_once(hlr: OsmoHlr, resolver: Resolver) -> None:
    res = resolver.resolve(f"gsup.hlr.{IMSI}.imsi")
    assert res.outcome is Outcome.FOUND and res.age == 0
    assert res.v4 == Endpoint("127.0.0.1", 4222)
    assert res.elapsed < 0.3  # age 0 ends the lookup before min_delay


def test_sip_voice_after_a_real_location_update(hlr: OsmoHlr, resolver: Resolver) -> None:
    query = f"sip.voice.{MSISDN}.msisdn"
    before = resolver.resolve(query)
    assert before.outcome is Outcome.NOT_FOUND  # OsmoHLR answers only after a LU
    hlr.location_update(IMSI)
    lu_time = time.time()
    res = resolver.resolve(query)
    assert res.found and res.v4 == Endpoint(*SERVICES_A["sip.voice"])
    assert res.age is not None and 0 <= res.age <= int(time.time() - lu_time) + 1
    sms = resolver.resolve(f"smpp.sms.{MSISDN}.msisdn")
    assert sms.found and sms.v4 == Endpoint(*SERVICES_A["smpp.sms"])


def test_age_is_the_time_since_the_recorded_location_update(hlr: OsmoHlr,
                                                             resolver: Resolver) -> None:
    hlr.location_update(IMSI)
    hlr.backdate_location_update(IMSI, 42)  # as if the LU had been 42 s ago
    res = resolver.resolve(f"sip.voice.{MSISDN}.msisdn")
    assert res.found and res.age in (42, 43)


def test_silence_for_unknown_and_unattached(hlr: OsmoHlr, resolver: Resolver) -> None:
    hlr.create_subscriber(IMSI_B, MSISDN_B)  # provisioned, never attached
    for query in ("sip.voice.99999.msisdn", f"sip.voice.{MSISDN_B}.msisdn",
                  f"gsup.hlr.{IMSI[:-1]}9.imsi", f"foo.bar.{MSISDN}.msisdn"):
        res = resolver.resolve(query)
        assert res.outcome is Outcome.NOT_FOUND, query
    # OsmoHLR forgets a LU after one hour (fixed in 1.5.0)
    hlr.location_update(IMSI)
    hlr.backdate_location_update(IMSI, 3700)
    assert resolver.resolve(f"sip.voice.{MSISDN}.msisdn").outcome is Outcome.NOT_FOUND


def test_two_villages_the_younger_record_wins(tmp_path: Path, resolver: Resolver,
                                              hlr_distro: Distro) -> None:
    with OsmoHlr(tmp_path / "a", services=SERVICES_A, client_timeout_ms=100,
                 distro=hlr_distro) as a, \
            OsmoHlr(tmp_path / "b", services=SERVICES_B, bind_ip="127.0.0.2",
                    client_timeout_ms=100, distro=hlr_distro) as b:
        for hlr in (a, b):
            hlr.create_subscriber(IMSI, MSISDN)
            hlr.location_update(IMSI)
        a.backdate_location_update(IMSI, 300)
        b.backdate_location_update(IMSI, 30)
        query = f"sip.voice.{MSISDN}.msisdn"
        res = resolver.resolve(query)
        assert res.found and res.v4 == Endpoint(*SERVICES_B["sip.voice"])
        assert res.age in (30, 31)
        # the subscriber moves back to A: now A is younger
        a.location_update(IMSI)
        res = resolver.resolve(query)
        assert res.found and res.v4 == Endpoint(*SERVICES_A["sip.voice"])
        assert res.age in (0, 1)
