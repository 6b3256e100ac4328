"""The golden vectors (``../shared/vectors``, captured from OsmoHLR 1.5.0 and Debian 12's
osmo-mslookup-client) against every Osmocom generation, byte for byte.

Our codec is pinned to those vectors (tests/test_wire.py), so a generation whose bytes equal
them is wire-identical to us; one that differs fails here, at the byte that changed:

- OsmoHLR's answers: the vector's query (the C client's, with its id) is sent to the group; the
  real OsmoHLR's answer must be the vector's answer, id included;
- osmo-mslookup-client's queries: what it sends must be the vector's query but for the random id
  (with the default suffix and with ``-D example.net``);
- ``osmo-mslookup-client --send``: its answers must be the vector's (id 0, v4 + v6, v6 only).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dgsm_integrations.lab.distro import Distro

from .conftest import LO
from .peers import require_binary
from .peers.osmohlr import OsmoHlr
from .vectors import require_vectors, vector

GROUP = "239.192.23.42"
HLR_PORT = 4266  # OsmoHLR's default, as in the captures
CLIENT_PORT = 42671  # the client-only tests keep off OsmoHLR's port
ALICE_IMSI, ALICE_MSISDN = "901700000000001", "1001"


def group_socket(port: int) -> socket.socket:
    """A socket on the group (joined on lo) that sees every datagram sent to it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((GROUP, port))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                    socket.inet_aton(GROUP) + socket.inet_aton(LO))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LO))
    return sock


def receive(sock: socket.socket, wanted: Callable[[bytes], bool], timeout: float = 5.0
            ) -> bytes:
    """The first datagram on ``sock`` that ``wanted`` accepts (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no matching datagram within {timeout} s")
        sock.settimeout(remaining)
        data, _ = sock.recvfrom(4096)
        if wanted(data):
            return data


def is_answer(data: bytes) -> bool:
    return len(data) >= 4 and data[2] & 0x80 != 0


def is_query(data: bytes) -> bool:
    return len(data) >= 4 and data[2] & 0x80 == 0


@pytest.fixture
def alice_hlr(tmp_path: Path, hlr_distro: Distro) -> Iterator[OsmoHlr]:
    """The capture's setup: OsmoHLR on 127.0.0.1, sip.voice at 127.0.0.2:5060, Alice attached."""
    require_vectors()
    with OsmoHlr(tmp_path / "hlr", services={"sip.voice": ("127.0.0.2", 5060)},
                 client_timeout_ms=100, distro=hlr_distro) as hlr:
        hlr.create_subscriber(ALICE_IMSI, ALICE_MSISDN)
        hlr.location_update(ALICE_IMSI)
        yield hlr


@pytest.mark.parametrize(("query", "answer"), [
    ("hlr_query_gsup.hlr.901700000000001.imsi", "hlr_answer_gsup.hlr.901700000000001.imsi_age0"),
    ("hlr_query_sip.voice.1001.msisdn", "hlr_answer_sip.voice.1001.msisdn_age42_v4"),
])
def test_osmohlr_answers_the_golden_query_with_the_golden_bytes(
        alice_hlr: OsmoHlr, query: str, answer: str) -> None:
    alice_hlr.backdate_location_update(ALICE_IMSI, 42)
    golden = vector(answer)
    with group_socket(HLR_PORT) as sock:
        sock.sendto(vector(query), (GROUP, HLR_PORT))
        got = receive(sock, lambda d: is_answer(d) and d[:2] == golden[:2])
    # a wall-clock second may tick between the backdating and the answer: age 42 or 43
    assert got in (golden, golden.replace(b"age=42", b"age=43")), (got.hex(), golden.hex())


@pytest.mark.parametrize(("args", "golden"), [
    ([], "hlr_query_sip.voice.1001.msisdn"),
    (["-D", "example.net"], "client_query_sip.voice.1001.msisdn_suffix_example.net"),
])
def test_the_c_client_sends_the_golden_query(mslookup_utils_distro: Distro, args: list[str],
                                             golden: str) -> None:
    require_vectors()
    tool = require_binary("osmo-mslookup-client", mslookup_utils_distro)
    with group_socket(CLIENT_PORT) as sock:
        proc = subprocess.Popen(
            mslookup_utils_distro.argv([tool, "-q", "-t", "300", "-M", str(CLIENT_PORT), *args,
                                        "sip.voice.1001.msisdn"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            got = receive(sock, is_query)
        finally:
            proc.wait(10)
    want = vector(golden)
    assert got[2:] == want[2:], (got.hex(), want.hex())  # all but the random id


@pytest.mark.parametrize(("send", "golden"), [
    (["gsup.hlr.901700000000001.imsi", "0", "10.0.0.1", "4222", "2001:db8::1", "4222"],
     "send_answer_gsup.hlr.901700000000001.imsi_age0_v4_v6"),
    (["sip.voice.1001.msisdn", "7", "2001:db8::5", "5060"],
     "send_answer_sip.voice.1001.msisdn_age7_v6only"),
])
def test_the_c_client_send_gives_the_golden_answer(mslookup_utils_distro: Distro,
                                                   send: list[str], golden: str) -> None:
    require_vectors()
    tool = require_binary("osmo-mslookup-client", mslookup_utils_distro)
    with group_socket(CLIENT_PORT) as sock:
        sent = subprocess.run(
            mslookup_utils_distro.argv([tool, "-M", str(CLIENT_PORT), "--send", *send]),
            capture_output=True, text=True, timeout=10, check=False)
        assert sent.returncode == 0, sent.stderr
        got = receive(sock, is_answer)
    assert got == vector(golden), got.hex()
