"""The lab's own pieces on loopback: the SIP endpoint, the dial-string parser, dgsm-lab's
command line. (The lab itself, with namespaces and OsmoHLRs, is tests/test_lab.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import pytest

from dgsm_integrations.lab.cli import main as lab_main
from dgsm_integrations.lab.distro import HOST, default_osmocom, osmocom_distro
from dgsm_integrations.lab.netns import LabError
from dgsm_integrations.lab.pbx import sip_target
from dgsm_integrations.lab.sip import SipUas, call

from .conftest import LO

T = TypeVar("T")


def run(coro: Awaitable[T], limit: float = 30) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, limit)
    return asyncio.run(bounded())


def test_call_reaches_the_uas_and_is_recorded() -> None:
    async def body() -> None:
        uas = await SipUas.start(LO, 0)
        assert uas.transport is not None
        port = uas.transport.get_extra_info("sockname")[1]
        try:
            res = await call("1001", LO, port, timeout=3)
            assert (res.code, res.provisional, res.invites_sent) == (200, [100], 1)
            inv = await uas.invited("1001", timeout=1)
            assert inv.user == "1001" and inv.source[0] == LO
            uas.final = 486
            busy = await call("1002", LO, port, timeout=3)
            assert busy.code == 486 and not busy.answered
        finally:
            uas.close()
    run(body())


class _DropFirst(asyncio.DatagramProtocol):
    """A UDP relay that loses the first datagram from the caller, like a lossy link."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.seen = 0
        self.transport: asyncio.DatagramTransport | None = None
        self.caller: tuple[str, int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        if addr == self.target:
            if self.caller is not None:
                self.transport.sendto(data, self.caller)
            return
        self.caller = addr
        self.seen += 1
        if self.seen > 1:
            self.transport.sendto(data, self.target)


def test_lost_invite_is_sent_again_on_timer_a() -> None:
    async def body() -> None:
        uas = await SipUas.start(LO, 0)
        assert uas.transport is not None
        target = uas.transport.get_extra_info("sockname")[:2]
        loop = asyncio.get_running_loop()
        relay_t, _ = await loop.create_datagram_endpoint(lambda: _DropFirst(target),
                                                             local_addr=(LO, 0))
        port = relay_t.get_extra_info("sockname")[1]
        try:
            res = await call("1001", LO, port, timeout=4)
            assert res.code == 200 and res.invites_sent == 2
            assert 0.45 <= res.elapsed < 1.5  # timer A: the second INVITE after 0.5 s
            assert len(uas.invites) == 1
        finally:
            relay_t.close()
            uas.close()
    run(body())


@pytest.mark.parametrize("junk", [
    b"\xff\xfe garbage", b"INVITE sip:1001@x SIP/2.0\r\n\r\n",  # no headers
    b"HELLO\r\nVia: x\r\n\r\n", b"x" * 5000,
])
def test_uas_drops_junk_and_keeps_answering(junk: bytes) -> None:
    async def body() -> None:
        uas = await SipUas.start(LO, 0)
        assert uas.transport is not None
        port = uas.transport.get_extra_info("sockname")[1]
        loop = asyncio.get_running_loop()
        t, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                   remote_addr=(LO, port))
        try:
            t.sendto(junk)
            res = await call("1001", LO, port, timeout=3)
            assert res.code == 200
            assert uas.dropped == 1
        finally:
            t.close()
            uas.close()
    run(body())


def test_uac_refuses_a_non_msisdn() -> None:
    with pytest.raises(ValueError, match="not an MSISDN"):
        run(call("1001@evil", LO, 5060))


@pytest.mark.parametrize(("dial", "want"), [
    ("sofia/external/sip:1001@198.18.23.13:5060", ("1001", "198.18.23.13", 5060)),
    ("PJSIP/dgsm/sip:1001@10.0.0.1:5070", ("1001", "10.0.0.1", 5070)),
    ("sofia/external-ipv6/sip:1001@[fd00::2]:5060|sofia/external/sip:1001@10.0.0.1:5060",
     ("1001", "fd00::2", 5060)),
    ("sofia/external/sip:10a1@10.0.0.1:5060", None),
    ("hangup UNALLOCATED_NUMBER", None),
])
def test_sip_target(dial: str, want: tuple[str, str, int] | None) -> None:
    assert sip_target(dial) == want


def test_dgsm_lab_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        lab_main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "dgsm-lab demo" in out and "private network" in out and "osmo-hlr" in out
    assert "--osmocom" in out and "1.9.4" in out
    for bad in (["demo", "--villages", "A,B"], ["demo", "--villages", "A,B,B,C"], ["fly"],
                ["demo", "--osmocom", "bookworm"]):
        with pytest.raises(SystemExit) as exc:
            lab_main(bad)
        assert exc.value.code == 2, bad
    assert "--villages must name A, B and C" in capsys.readouterr().err


def test_an_osmocom_generation_that_is_not_here_says_what_to_do(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DGSM_SID_ROOT", str(tmp_path / "no-root"))
    assert default_osmocom() is HOST  # the demo's default falls back to this host's
    with pytest.raises(LabError, match=r"no Debian sid root at .*no-root.*--osmocom host"):
        osmocom_distro("sid")
    with pytest.raises(LabError, match="unknown Osmocom generation"):
        osmocom_distro("bookworm")
    (tmp_path / "no-root" / ".dgsm-root-packages").parent.mkdir()
    (tmp_path / "no-root" / ".dgsm-root-packages").write_text("v1\n")  # a root without it
    with pytest.raises(LabError, match="osmo-hlr not found in the sid root"):
        osmocom_distro("sid")
