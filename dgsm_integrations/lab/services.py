"""What runs in the villages besides OsmoHLR: endpoints to arrive at, and our integrations.

- every village: a SIP endpoint on ``<addr>:5060`` (:class:`.sip.SipUas`) and an SMSC on
  ``<addr>:2775`` that plays the village's OsmoMSC (:class:`.smsc.SmscPeer`: it records each
  submit_sm it is given, and sends deliver_sm like osmo-msc);
- one village (the caller's, "B" by default) also runs our integrations, for real: the
  FreeSWITCH outbound ESL server (``dgsm-fs-esl``, port 8084), the Asterisk FastAGI server
  (``dgsm-fastagi``, port 4573) and the ESME bound as OSMPP to that village's OsmoMSC.

Everything of a village runs on that village's event loop (:attr:`Village.loop`), so its
sockets live in its namespace; the methods here are blocking, for the demo and the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import Any

from ..asterisk.config import Config as AgiConfig
from ..asterisk.fastagi import FastAgiServer
from ..esme.app import Esme, EsmeConfig
from ..esme.pdu import Status
from ..freeswitch.config import Config as FsConfig
from ..freeswitch.server import EslServer
from ..mslookup import AnswerTrace, AsyncResolver, Result
from .network import SIP_PORT, SMPP_PORT, Lab, Village
from .osmomsc import OsmoMsc, unpack_septets
from .pbx import PbxCall, asterisk_call, asterisk_script_call, freeswitch_call
from .sip import Invite, SipUas
from .smsc import SmscPeer, mo_sms

__all__ = ["ESL_PORT", "FASTAGI_PORT", "Services"]

ESL_PORT, FASTAGI_PORT = 8084, 4573


@dataclass
class _Endpoints:
    uas: SipUas
    smsc: SmscPeer | None = None  # the stand-in OsmoMSC
    msc: OsmoMsc | None = None  # a real osmo-msc as the village's SMSC


@dataclass
class Services:
    """``with Services(lab) as s: s.freeswitch_call("1001") ...``"""

    lab: Lab
    home: str = "B"
    min_delay: float = 0.5
    budget: float = 4.0
    #: a real osmo-msc as the SMSC of the other villages (None: if osmo-msc and gcc exist);
    #: the caller's village keeps the stand-in, which sends deliver_sm as if phones did
    real_msc: bool | None = None
    endpoints: dict[str, _Endpoints] = field(default_factory=dict)
    _pbx: list[Any] = field(default_factory=list)

    @property
    def village(self) -> Village:
        return self.lab[self.home]

    def start(self) -> Services:
        if self.real_msc is None:
            self.real_msc = bool(self.lab.distro.which("osmo-msc") and shutil.which("gcc"))
        try:
            for v in self.lab:
                real = self.real_msc and v.name != self.home
                self.endpoints[v.name] = v.loop.run(self._endpoints(v, stand_in=not real))
                if real:
                    msc = OsmoMsc(v.workdir / "osmo-msc", SMPP_PORT, bind_ip=v.addr,
                                  hlr_ip=v.addr, netns=v.ns, system_id=f"MSC-{v.name}",
                                  distro=self.lab.distro)
                    msc.start()
                    self.endpoints[v.name].msc = msc
            self.village.loop.run(self._integrations())
        except BaseException:
            self.close()
            raise
        return self

    async def _endpoints(self, v: Village, stand_in: bool) -> _Endpoints:
        uas = await SipUas.start(v.addr, SIP_PORT)
        if not stand_in:
            return _Endpoints(uas)
        smsc = SmscPeer(v.addr, SMPP_PORT)
        await smsc.__aenter__()
        return _Endpoints(uas, smsc)

    async def _integrations(self) -> None:
        v = self.village
        fs = EslServer(FsConfig(interface=v.addr, listen=v.addr, listen_port=ESL_PORT,
                                min_delay=self.min_delay))
        agi = FastAgiServer(AgiConfig(interface=v.addr, listen=v.addr,
                                      listen_port=FASTAGI_PORT, min_delay=self.min_delay))
        await fs.start()
        await agi.start()
        resolver = AsyncResolver(interface=v.addr, min_delay=self.min_delay)
        await resolver.open()
        # a village that vanished may come back: tell the phone "temporary" (RSYSERR), not
        # "no such number", when no village knows the recipient right now
        esme = Esme(EsmeConfig(src_host=v.addr, src_port=SMPP_PORT, budget=self.budget,
                               not_found_status=Status.RSYSERR, backoff_min=0.1,
                               backoff_max=1.0, connect_timeout=1.0), resolver)
        task = asyncio.get_running_loop().create_task(esme.run())
        msc = self.endpoints[v.name].smsc
        assert msc is not None
        await msc.wait_for(lambda: msc.route() is not None, timeout=10)
        self._pbx = [fs, agi, esme, task, resolver]

    def close(self) -> None:
        if self._pbx:
            fs, agi, _esme, task, resolver = self._pbx

            async def stop() -> None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await resolver.close()
                await agi.close(grace=0.5)
                await fs.close(grace=0.5)
            with contextlib.suppress(Exception):
                self.village.loop.run(stop(), 15)
            self._pbx = []
        for name, ep in self.endpoints.items():
            if ep.msc is not None:
                ep.msc.stop()

            async def stop_endpoint(ep: _Endpoints = ep) -> None:
                ep.uas.close()
                if ep.smsc is not None:
                    await ep.smsc.close()
            with contextlib.suppress(Exception):
                self.lab[name].loop.run(stop_endpoint(), 10)
        self.endpoints.clear()

    def __enter__(self) -> Services:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the demo and the tests do ------------------------------------------------------

    def lookup(self, query: str, *, at: str | None = None, min_delay: float | None = None,
               timeout: float | None = None) -> tuple[Result, list[AnswerTrace]]:
        """Resolve ``query`` from village ``at`` (default: the caller's); every answer seen."""
        v = self.lab[at or self.home]
        seen: list[AnswerTrace] = []

        async def body() -> Result:
            resolver = AsyncResolver(interface=v.addr, timeout=timeout,
                                     min_delay=self.min_delay if min_delay is None
                                     else min_delay)
            try:
                return await resolver.resolve(query, on_answer=seen.append)
            finally:
                await resolver.close()
        return v.loop.run(body()), seen

    def freeswitch_call(self, dest: str) -> PbxCall:
        v = self.village
        return v.loop.run(freeswitch_call(v.addr, ESL_PORT, dest))

    def asterisk_call(self, dest: str) -> PbxCall:
        v = self.village
        return v.loop.run(asterisk_call(v.addr, FASTAGI_PORT, dest))

    def asterisk_script_call(self, dest: str) -> PbxCall:
        """The per-call AGI script (``dgsm-agi``), spawned inside the caller's village."""
        v = self.village
        conf = v.workdir / "asterisk.conf"
        conf.write_text(f"interface = {v.addr}\nmin-delay = {self.min_delay}\n")
        env = dict(os.environ, DGSM_AGI_CONFIG=str(conf))
        argv = v.ns.argv([sys.executable, "-c", "import sys; from dgsm_integrations.asterisk."
                          "script import main; sys.exit(main())"])
        return v.loop.run(asterisk_script_call(argv, env, dest))

    def invite_at(self, village: str, user: str, timeout: float = 5.0) -> Invite | None:
        """The INVITE for ``user`` that reached ``village``'s SIP endpoint, if any."""
        ep = self.endpoints[village]
        for inv in ep.uas.invites:
            if inv.user == user:
                return inv
        with contextlib.suppress(TimeoutError):
            return self.lab[village].loop.run(ep.uas.invited(user, timeout), timeout + 1)
        return None

    def send_sms(self, src: str, dst: str, text: str) -> int | None:
        """A phone at the caller's village sends an SMS: its OsmoMSC hands it to the ESME as
        deliver_sm; the deliver_sm_resp status (None: none within 5 s, like osmo-msc)."""
        msc = self.endpoints[self.home].smsc
        assert msc is not None
        fields = mo_sms(src, dst, text.encode("ascii", "replace"))
        return self.village.loop.run(msc.deliver(fields), 10)

    def sms_at(self, village: str) -> list[tuple[str, bytes]]:
        """(recipient, user data) of every SMS ``village``'s SMSC was given so far: read from
        the real osmo-msc's database (GSM 7-bit unpacked), or the stand-in's records."""
        ep = self.endpoints[village]
        if ep.msc is not None:
            out = []
            for row in ep.msc.stored_sms():
                data = bytes(row["user_data"] or b"")
                if row["data_coding_scheme"] == 0:  # packed by osmo-msc: one septet a byte
                    data = unpack_septets(data, len(data) * 8 // 7).rstrip(b"\0")
                out.append((str(row["dest_addr"]), data))
            return out
        assert ep.smsc is not None
        return [(bytes(s.get("destination_addr") or b"").decode("latin-1"),
                 bytes(s.get("short_message") or b"")) for s in ep.smsc.submits]

    def smsc_kind(self, village: str) -> str:
        return "osmo-msc" if self.endpoints[village].msc is not None else "SMSC stand-in"
