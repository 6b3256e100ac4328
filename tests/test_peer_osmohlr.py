"""The OsmoHLR test peer works: a real OsmoHLR, a real GSUP Location Updating, and the real C
client ``osmo-mslookup-client`` as the observer (so these tests do not depend on our resolver).

Facts these tests pin down, for OsmoHLR 1.5.0 and 1.9.4 alike unless said (each test runs
once per generation, with that generation's osmo-mslookup-client):

- ``gsup.hlr`` is answered for every provisioned subscriber, by IMSI or MSISDN, with age 0 and
  the HLR's GSUP address, whether or not it ever attached;
- ``sip.voice``/``smpp.sms`` are answered only after a CS Location Updating at this HLR; the age
  is whole seconds since that LU (0 right after it; it grows by one per wall-clock second,
  computed at query time from the database's ``last_lu_seen``);
- a GSUP Purge MS does not stop the answers (OsmoHLR's mslookup server ignores the purged flag);
- an unknown subscriber or an unconfigured service gets silence (``not-found``);
- a LU for an IMSI no HLR knows is rejected with cause 2 by 1.5.0, cause 17 by 1.9.4;
- 1.5.0 has fixed VTY/CTRL ports, 1.9.4 honours configured ones.

Run inside a private network namespace (the suite's runner makes one).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dgsm_integrations.lab.distro import Distro
from dgsm_integrations.lab.gsup import (
    GsupMessage,
    GsupMsgType,
    GsupRejected,
    IdTag,
    decode_tbcd,
    encode_tbcd,
    id_resp_body,
    parse_id_get,
)

from .peers import generations, require_binary, require_generation
from .peers.osmohlr import OsmoHlr, OsmoHlrError

IMSI = "901700000001234"
MSISDN = "1234"
OTHER_IMSI = "901700000005678"
OTHER_MSISDN = "5678"
# Addresses OsmoHLR only announces; nothing is ever sent to them.
SERVICES = {"sip.voice": ("10.23.42.5", 5060), "smpp.sms": ("10.23.42.6", 2775)}


@pytest.fixture
def hlr(tmp_path: Path, hlr_distro: Distro) -> Iterator[OsmoHlr]:
    require_binary("osmo-mslookup-client", hlr_distro)  # the observer, of the same generation
    peer = OsmoHlr(tmp_path / "hlr", services=SERVICES, client_timeout_ms=100,
                   distro=hlr_distro)
    with peer:
        peer.create_subscriber(IMSI, MSISDN)
        yield peer
    # Shown by pytest only when the test failed.
    print(peer.log_text())


def mslookup(hlr: OsmoHlr, query: str, *, min_delay_ms: int = 200,
             timeout_ms: int = 200) -> dict[str, Any]:
    """Ask with the real ``osmo-mslookup-client``; return its result.

    The client prints one JSON line per result. An age-0 answer ends the lookup at once. An
    older answer is printed at min-delay; if the timeout is longer, it is marked
    ``"last": false`` and a final ``"result": "none"`` line follows at the timeout. Silence
    gives one ``"result": "not-found"`` line. We return the first ``result`` line, else the last.
    """
    binary = require_binary("osmo-mslookup-client", hlr.distro)
    proc = subprocess.run(
        hlr.distro.argv([binary, "-f", "json", "-t", str(min_delay_ms), "-T", str(timeout_ms),
                         "-m", hlr.mdns_group, "-M", str(hlr.mdns_port), "-D", hlr.suffix,
                         query]),
        capture_output=True, text=True, timeout=10, check=False,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, (proc.returncode, proc.stdout, proc.stderr)
    assert all(line["query"] == query for line in lines)
    answers = [line for line in lines if line["result"] == "result"]
    result: dict[str, Any] = answers[0] if answers else lines[-1]
    return result


def test_gsup_hlr_is_answered_with_age_0_for_a_provisioned_subscriber(hlr: OsmoHlr) -> None:
    for query in (f"gsup.hlr.{IMSI}.imsi", f"gsup.hlr.{MSISDN}.msisdn"):
        result = mslookup(hlr, query)
        assert result["result"] == "result"
        assert result["age"] == 0
        assert result["v4"] == [hlr.bind_ip, str(hlr.gsup_port)]


def test_sip_voice_is_answered_only_after_a_location_update(hlr: OsmoHlr) -> None:
    query = f"sip.voice.{MSISDN}.msisdn"
    assert mslookup(hlr, query)["result"] == "not-found"

    lu = hlr.location_update(IMSI)
    assert lu.msisdn == MSISDN  # OsmoHLR's INSERT_DATA_REQUEST carried it
    assert "VLR number: MSC-00-00-00-00-00-00" in hlr.show_subscriber(IMSI)

    result = mslookup(hlr, query)
    assert result["result"] == "result"
    assert result["v4"] == ["10.23.42.5", "5060"]
    # Whole seconds since the LU: 0, or 1 when a wall-clock second boundary fell in between.
    assert 0 <= result["age"] <= 2

    by_imsi = mslookup(hlr, f"smpp.sms.{IMSI}.imsi")
    assert by_imsi["result"] == "result"
    assert by_imsi["v4"] == ["10.23.42.6", "2775"]


def test_age_grows_by_one_per_second_after_the_location_update(hlr: OsmoHlr) -> None:
    hlr.location_update(IMSI)
    lu_done = time.time()
    query = f"sip.voice.{MSISDN}.msisdn"
    ages: list[int] = []
    deadline = time.monotonic() + 3.0
    while not ages or ages[-1] < 1:
        assert time.monotonic() < deadline, f"age never reached 1: {ages}"
        result = mslookup(hlr, query, min_delay_ms=50, timeout_ms=100)
        assert result["result"] == "result"
        ages.append(result["age"])
    elapsed = time.time() - lu_done
    assert ages == sorted(ages)
    assert ages[-1] == 1
    assert elapsed < 2.0  # it turned 1 at the next wall-clock second, not after a full second


def test_a_backdated_location_update_reports_its_age(hlr: OsmoHlr) -> None:
    hlr.location_update(IMSI)
    hlr.backdate_location_update(IMSI, 42)
    result = mslookup(hlr, f"sip.voice.{MSISDN}.msisdn")
    assert result["result"] == "result"
    assert 42 <= result["age"] <= 43
    assert result["last"] is True  # -t == -T: one line


def test_a_location_update_older_than_an_hour_is_not_answered(hlr: OsmoHlr) -> None:
    # OsmoHLR's local_attach_max_age is 3600 s (not configurable in 1.5.0).
    hlr.location_update(IMSI)
    hlr.backdate_location_update(IMSI, 3590)
    assert 3590 <= mslookup(hlr, f"sip.voice.{MSISDN}.msisdn")["age"] <= 3591
    hlr.backdate_location_update(IMSI, 3610)
    assert mslookup(hlr, f"sip.voice.{MSISDN}.msisdn")["result"] == "not-found"
    assert mslookup(hlr, f"gsup.hlr.{IMSI}.imsi")["age"] == 0  # the home HLR still answers


def test_several_results_when_the_timeout_outlasts_min_delay(hlr: OsmoHlr) -> None:
    hlr.location_update(IMSI)
    hlr.backdate_location_update(IMSI, 10)
    result = mslookup(hlr, f"sip.voice.{MSISDN}.msisdn", min_delay_ms=50, timeout_ms=150)
    assert result["result"] == "result"
    assert result["last"] is False  # a "none" line followed at the timeout


def test_unknown_subscriber_and_unconfigured_service_get_silence(hlr: OsmoHlr) -> None:
    assert mslookup(hlr, f"sip.voice.{OTHER_MSISDN}.msisdn")["result"] == "not-found"
    assert mslookup(hlr, f"gsup.hlr.{OTHER_MSISDN}.msisdn")["result"] == "not-found"
    assert mslookup(hlr, f"gsup.hlr.{OTHER_IMSI}.imsi")["result"] == "not-found"
    hlr.location_update(IMSI)
    assert mslookup(hlr, f"no.such.service.{MSISDN}.msisdn")["result"] == "not-found"


def test_purge_ms_does_not_stop_the_answers(hlr: OsmoHlr) -> None:
    hlr.location_update(IMSI)
    hlr.purge_ms(IMSI)
    assert "CS purged" in hlr.show_subscriber(IMSI)
    result = mslookup(hlr, f"sip.voice.{MSISDN}.msisdn")
    assert result["result"] == "result"
    assert result["v4"] == ["10.23.42.5", "5060"]


def test_location_update_for_an_unknown_imsi_is_rejected(hlr: OsmoHlr) -> None:
    """An IMSI no HLR knows: OsmoHLR defers the LU, asks the network for its home HLR
    (``gsup.hlr``), hears nothing within the client timeout and rejects it. 1.5.0 says
    "IMSI unknown in HLR" (cause 2); 1.9.4 says "network failure" (cause 17), so a phone
    treats it as temporary and tries again instead of giving up (measured)."""
    started = time.monotonic()
    with pytest.raises(GsupRejected) as info:
        hlr.location_update(OTHER_IMSI)
    want = 2 if _release(hlr.distro.version("osmo-hlr")) < (1, 9) else 17
    assert info.value.cause == want
    assert time.monotonic() - started >= (hlr.client_timeout_ms or 0) / 1000  # it asked, and waited
    assert mslookup(hlr, f"sip.voice.{OTHER_IMSI}.imsi")["result"] == "not-found"


# -- the peer's own plumbing ----------------------------------------------------------------


def test_configured_vty_and_ctrl_ports_per_generation(tmp_path: Path,
                                                     hlr_distro: Distro) -> None:
    """OsmoHLR 1.5.0 ignores the VTY port in its config (4258 is fixed): the peer says so at
    once instead of timing out; it refuses a CTRL ``bind IP PORT`` line and exits, and the
    peer says what that needs. 1.9.4 honours both (measured)."""
    version = hlr_distro.version("osmo-hlr")
    if _release(version) < (1, 9):
        started = time.monotonic()
        peer = OsmoHlr(tmp_path / "vty", vty_port=4300, distro=hlr_distro)
        with pytest.raises(OsmoHlrError, match="ignores the configured VTY port 4300"):
            peer.start()
        peer = OsmoHlr(tmp_path / "ctrl", ctrl_port=4301, distro=hlr_distro)
        with pytest.raises(OsmoHlrError, match="non-default VTY/CTRL ports need"):
            peer.start()
        assert time.monotonic() - started < 5
        assert not peer.running
        return
    with OsmoHlr(tmp_path / "hlr", vty_port=4300, ctrl_port=4301, distro=hlr_distro) as peer:
        assert peer.vty("show version")[0].startswith(f"OsmoHLR {version}")
        assert "CTRL at 127.0.0.1 4301" in peer.log_text()


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:2])


def test_gsup_port_cannot_be_configured(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="GSUP port"):
        OsmoHlr(tmp_path, gsup_port=4223)


@pytest.mark.parametrize(("digits", "encoded"), [
    ("901700000001234", "09710000001032f4"),  # as OsmoHLR sent it
    ("1234", "2143"),
    ("5", "f5"),
])
def test_tbcd(digits: str, encoded: str) -> None:
    assert encode_tbcd(digits).hex() == encoded
    assert decode_tbcd(bytes.fromhex(encoded)) == digits


def test_gsup_message_round_trip_and_osmohlr_msisdn_ie() -> None:
    # INSERT_DATA_REQUEST as OsmoHLR 1.5.0 sent it: IMSI, MSISDN as a BCD LV, CN domain CS.
    wire = bytes.fromhex("10" "0108097100000010" "32f4" "0803022143" "280102")
    message = GsupMessage.decode(wire)
    assert message.msg_type == GsupMsgType.INSERT_DATA_REQUEST
    assert (message.imsi, message.msisdn) == ("901700000001234", "1234")
    assert message.encode() == wire


def test_ipa_identity_response_answers_every_requested_tag() -> None:
    # OsmoHLR's ID_GET asks for tags 8, 7, 2, 3, 4, 5, 1, 0 (each as "01 <tag>").
    tags = parse_id_get(bytes.fromhex("0108" "0107" "0102" "0103" "0104" "0105" "0101" "0100"))
    assert tags == [8, 7, 2, 3, 4, 5, 1, 0]
    body = id_resp_body([IdTag.SERIAL_NUMBER], {IdTag.SERIAL_NUMBER: "MSC-1"})
    assert body == b"\x00\x07\x00MSC-1\x00"  # u16 length (tag + value + NUL), tag, value


def test_require_binary_skips_outside_ci_and_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="osmo-mslookup-utils"):
        require_binary("osmo-mslookup-client")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="under CI"):
        require_binary("osmo-mslookup-client")


def test_a_missing_generation_skips_outside_ci_and_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.setenv("DGSM_SID_ROOT", str(tmp_path / "none"))
    ids = [p.id for p in generations("osmo-hlr", "osmo-msc")]
    assert ids[1] == "osmo-hlr-sid+osmo-msc-sid"  # no version to name: the generation's name
    assert all(mark.name == "osmocom" for p in generations("osmo-hlr") for mark in p.marks)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"no Debian sid root at .*none"):
        require_generation("sid", "osmo-hlr")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="under CI"):
        require_generation("sid", "osmo-hlr")
