"""Issue 11, item 2: a spoofed mslookup answer must get neither the SMS nor our credentials.

The attacker here is a real mslookup responder on the group (like ``osmo-mslookup-client
--send``) answering first with age 0 and naming a listening socket of its own; the socket
counts every TCP connection it sees, and the tests require that it sees none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from dgsm_integrations.esme.cli import build_parser, trust_from
from dgsm_integrations.esme.errors import CredentialsError
from dgsm_integrations.esme.pdu import Status
from dgsm_integrations.esme.store import Store
from dgsm_integrations.esme.trust import (
    TrustPolicy,
    parse_credentials_file,
    parse_site_credentials,
)
from dgsm_integrations.lab.smsc import SmscPeer, mo_sms
from dgsm_integrations.mslookup import Responder

from .conftest import LO
from .test_esme import LOCAL, PORT, SITE3, SITE4, Village, rec, run

ATTACKER = "127.0.0.6"
#: the village's SMSCs and its HLRs' answer sources (127.0.0.12..14 in Village)
SITES = ["127.0.0.2/32", "127.0.0.3/32", "127.0.0.4/32", "127.0.0.12/30"]


class Listener:
    """A TCP listener on the attacker's address that counts connections (and says nothing)."""

    def __init__(self, host: str, port: int = 2775) -> None:
        self.host, self.port = host, port
        self.connects = 0
        self._server: asyncio.Server | None = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connects += 1
        writer.close()

    async def __aenter__(self) -> Listener:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.mark.slow
def test_untrusted_smsc_gets_rsyserr_and_no_connection(tmp_path: Path) -> None:
    async def body() -> None:
        async with Listener(ATTACKER) as spy, \
                Village(trust=TrustPolicy.build(SITES)) as v:
            v.place("2002", (0, ATTACKER, 0))
            assert await v.msc.deliver(mo_sms("1001", "2002", b"secret")) == Status.RSYSERR
            assert v.esme.stats.untrusted == 1 and ATTACKER not in str(v.esme.pool.links)
            # the configured status, and with a queue: answered, not stored for a retry
            v.esme.config = replace(v.esme.config, untrusted_status=0x45)
            store = Store(str(tmp_path / "q.db"))
            async with store.attach(v.esme):
                assert await v.msc.deliver(mo_sms("1001", "2002", b"again")) == 0x45
                assert await store.counts() == {}
            assert spy.connects == 0
    run(body())


@pytest.mark.slow
def test_answer_from_an_untrusted_source_is_refused() -> None:
    async def body() -> None:
        trust = TrustPolicy.build(["127.0.0.2/32", "127.0.0.3/32", "127.0.0.12/32"])
        async with Village(trust=trust) as v:
            v.place("2002", (2, SITE3, 0))  # HLR 127.0.0.14 (not trusted) names a good SMSC
            assert await v.msc.deliver(mo_sms("1001", "2002", b"x")) == Status.RSYSERR
            assert v.site3.submits == [] and v.site3.binds == []
            v.place("2002", (0, SITE3, 0))  # the trusted HLR names the same SMSC: fine
            v.hlr[2].set("smpp.sms.2002.msisdn", None)
            assert await v.msc.deliver(mo_sms("1001", "2002", b"y")) == Status.ROK
    run(body())


@pytest.mark.slow
def test_nothing_trusted_by_default_forwards_nothing(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        async with Listener(ATTACKER) as spy, Village(trust=TrustPolicy()) as v:
            v.place("2002", (0, ATTACKER, 0))
            v.place("3003", (1, SITE3, 0))
            assert await v.msc.deliver(mo_sms("1001", "2002", b"a")) == Status.RSYSERR
            assert await v.msc.deliver(mo_sms("1001", "3003", b"b")) == Status.RSYSERR
            assert spy.connects == 0 and v.site3.binds == []
    with caplog.at_level(logging.INFO, logger="dgsm.esme"):
        run(body())
    said = [r for r in caplog.records if r.name == "dgsm.esme" and "trusted" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.ERROR
    assert "--trusted NET" in said[0].getMessage()
    assert "--trust-any-site" in said[0].getMessage()


@pytest.mark.slow
def test_trust_any_site_is_the_old_behaviour_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        async with Village(trust=TrustPolicy(any_site=True)) as v:
            v.place("2002", (0, SITE3, 0))
            assert await v.msc.deliver(mo_sms("1001", "2002", b"a")) == Status.ROK
    with caplog.at_level(logging.WARNING, logger="dgsm.esme"):
        run(body())
    said = [r.getMessage() for r in caplog.records if "--trust-any-site" in r.getMessage()]
    assert len(said) == 1 and "unauthenticated" in said[0]


@pytest.mark.slow
def test_per_site_credentials_most_specific_wins() -> None:
    async def body() -> None:
        creds = [parse_site_credentials("127.0.0.3/32=VILLAGE3:pw:3"),
                 parse_site_credentials("127.0.0.0/24=WIDE:wide")]
        trust = TrustPolicy.build(["127.0.0.12/30"], creds)
        async with Village(trust=trust) as v:
            v.site3.acl = {"VILLAGE3": "pw:3"}  # refuses ISMPP/foo
            v.site4.acl = {"WIDE": "wide"}
            v.msc.acl = {**v.msc.acl, "WIDE": "wide"}
            v.place("3", (0, SITE3, 0))
            v.place("4", (1, SITE4, 0))
            assert await v.msc.deliver(mo_sms("1001", "3", b"a")) == Status.ROK
            assert await v.msc.deliver(mo_sms("1001", "4", b"b")) == Status.ROK
            assert [b[:2] for b in v.site3.binds] == [("VILLAGE3", "bind_transmitter")]
            assert [b[:2] for b in v.site4.binds] == [("WIDE", "bind_transmitter")]
            assert v.site3.submits[0].system_id == "VILLAGE3"
    run(body())


@pytest.mark.slow
def test_credentials_parsing(tmp_path: Path) -> None:
    c = parse_site_credentials("10.8.1.7/24=ISMPP:a:b")
    assert (str(c.network), c.system_id, c.password) == ("10.8.1.0/24", "ISMPP", "a:b")
    assert "a:b" not in repr(c)
    for bad in ("10.8.1.0/24", "10.8.1.0/24=ISMPP", "nonsense=ISMPP:x", "10.0.0.0/8=:x",
                "10.0.0.0/8=ISMPP:123456789", "10.0.0.0/8=ISMPP:p\u00e4ss"):
        with pytest.raises(CredentialsError):
            parse_site_credentials(bad)
    f = tmp_path / "creds"
    f.write_text("# site  system-id password\n10.8.1.0/24 V1 one\n\nfd00::/64 V2 two\n")
    got = parse_credentials_file(f)
    assert [(str(c.network), c.system_id, c.password) for c in got] == [
        ("10.8.1.0/24", "V1", "one"), ("fd00::/64", "V2", "two")]
    f.write_text("10.8.1.0/24 V1\n")
    with pytest.raises(CredentialsError, match=":1: expected"):
        parse_credentials_file(f)
    args = build_parser().parse_args(["--trusted", "10.9.0.0/16",
                                      "--site-credentials", "10.8.0.0/16=V:p"])
    t = trust_from(args)
    assert t.allows("10.9.3.4") and t.allows("10.8.3.4") and not t.allows("10.7.0.1")
    assert not t.allows(None) and not TrustPolicy().allows("10.9.3.4")
    assert TrustPolicy(any_site=True).allows("203.0.113.9")


# -- the daemon as shipped: the spoofer answers first, with age 0 ---------------------------

def _daemon(*extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "dgsm_integrations.esme", "--src-host", LOCAL,
         "--mslookup-interface", LO, "--allow-loopback", "--mslookup-port", str(PORT),
         "--min-delay", "0.3",
         "--connect-timeout", "1", "--log-level", "INFO", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@contextlib.asynccontextmanager
async def _spoofed() -> AsyncIterator[tuple[SmscPeer, SmscPeer, Listener]]:
    """The real HLR (127.0.0.12) has 2002 at site 3, age 5; the spoofer (127.0.0.99)
    says age 0 at the attacker's address."""
    async with SmscPeer(LOCAL) as msc, SmscPeer(SITE3) as site3, Listener(ATTACKER) as spy, \
            Responder({"smpp.sms.2002.msisdn": rec(f"5,{SITE3}:2775")}, interface=LO,
                      port=PORT, source="127.0.0.12"), \
            Responder({"smpp.sms.2002.msisdn": rec(f"0,{ATTACKER}:2775")}, interface=LO,
                      port=PORT, source="127.0.0.99"):
        yield msc, site3, spy


async def _stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.get_running_loop().run_in_executor(None, proc.communicate, None)
    return err.decode(errors="replace")


@pytest.mark.slow
def test_daemon_spoofed_answer_loses_to_the_trusted_one() -> None:
    async def body() -> None:
        async with _spoofed() as (msc, site3, spy):
            esme = _daemon("--trusted", "127.0.0.2/31", "--trusted", "127.0.0.12/32")
            try:
                await msc.wait_for(lambda: msc.route() is not None, timeout=15)
                assert await msc.deliver(mo_sms("1001", "2002", b"for 2002")) == Status.ROK
                assert [s.get("short_message") for s in site3.submits] == [b"for 2002"]
                assert spy.connects == 0
            finally:
                err = await _stop(esme)
            assert "forwarding only to SMSCs in: 127.0.0.2/31, 127.0.0.12/32" in err
    run(body())


@pytest.mark.slow
def test_daemon_without_trust_refuses_and_says_what_to_set() -> None:
    async def body() -> None:
        async with _spoofed() as (msc, site3, spy):
            esme = _daemon()
            try:
                await msc.wait_for(lambda: msc.route() is not None, timeout=15)
                assert await msc.deliver(mo_sms("1001", "2002", b"x")) == Status.RSYSERR
                assert spy.connects == 0 and site3.binds == []
            finally:
                err = await _stop(esme)
            assert err.count("no trusted networks") == 1, err
            assert "result=untrusted-destination" in err
    run(body())


def test_shipped_unit_is_safe() -> None:
    """As shipped (no /etc/default/esme-dgsm yet) the unit starts, trusts nothing and so
    forwards nothing; what the operator sets there is added to the command line."""
    unit = (Path(__file__).parent.parent / "esme" / "esme-dgsm.service").read_text()
    start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert start.startswith("ExecStart=/opt/dgsm-integrations/bin/esme_dgsm ")
    assert "--trust-any-site" not in unit.replace("# ", "")
    words = start.split()[1:]
    assert words[-1] == "$ESME_DGSM_TRUST" and "Environment=ESME_DGSM_TRUST=" in unit
    as_shipped = build_parser().parse_args(words[:-1])
    assert trust_from(as_shipped) == TrustPolicy()
    assert as_shipped.queue == "/var/lib/esme-dgsm/queue.db"
    configured = build_parser().parse_args(
        [*words[:-1], "--trusted", "10.23.0.0/16"])
    assert trust_from(configured).allows("10.23.1.2")
    nofile = int(next(line for line in unit.splitlines()
                      if line.startswith("LimitNOFILE=")).split("=")[1])
    assert nofile > build_parser().get_default("max_in_flight") + 1000
    assert os.path.basename(unit.split("Documentation=")[1].split()[0]) == "esme.md"
