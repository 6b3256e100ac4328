"""What runs in the villages besides OsmoHLR: endpoints to arrive at, and our integrations.

- every village: a SIP endpoint on ``<addr>:5060`` (:class:`.sip.SipUas`) and an SMSC on
  ``<addr>:2775`` that plays the village's OsmoMSC (:class:`.smsc.SmscPeer`: it records each
  submit_sm it is given, and sends deliver_sm like osmo-msc);
- one village (the caller's, "B" by default) also runs our integrations, for real: the
  FreeSWITCH outbound ESL server (``dgsm-fs-esl``, port 8084), the Asterisk FastAGI server
  (``dgsm-fastagi``, port 4573) and the ESME bound as OSMPP to that village's OsmoMSC;
- and, where the Debian sid root exists (``.ci/bootstrap.sh``), a real Asterisk 22 there
  (:class:`.asterisk.RealAsterisk`) with ``asterisk/extensions.conf`` and ``pjsip.conf`` as
  shipped, on ``<addr>:5060``: the phone side calls it from 127.0.0.1 (osmo-sip-connector's
  place: ``dgsm-out``, FastAGI) or 127.0.0.2 (``dgsm-out-local``, the ``dgsm-agi`` script
  installed in the root), and that village's own subscribers are reached through its
  ``dgsm-in`` context at the ``msc`` endpoint, 127.0.0.1:5069. Without the root, Asterisk is
  played by its AGI protocol peer (:mod:`.pbx`).

All of them trust only the lab's network (:data:`LAB_NETWORK`), as a real site should trust
only its mesh: the ESME forwards nowhere else, the PBX ways and resolvers drop answers from or
naming other addresses.

Everything of a village runs on that village's event loop (:attr:`Village.loop`), so its
sockets live in its namespace; the methods here are blocking, for the demo and the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from ..asterisk.config import Config as AgiConfig
from ..asterisk.fastagi import FastAgiServer
from ..esme.config import EsmeConfig
from ..esme.forwarder import Esme
from ..esme.pdu import Status
from ..esme.trust import TrustPolicy
from ..freeswitch.config import Config as FsConfig
from ..freeswitch.server import EslServer
from ..mslookup import AnswerTrace, AsyncResolver, Result
from .asterisk import RealAsterisk, RealAsteriskError
from .distro import sid_root
from .netns import LabError
from .network import SIP_PORT, SMPP_PORT, SUBNET, Lab, Village
from .osmomsc import AInterface, OsmoMsc, unpack_septets
from .osmostp import OsmoStp
from .pbx import PbxCall, asterisk_call, asterisk_script_call, freeswitch_call
from .phone import LabPhone, PhoneError
from .sip import Invite, SipUas, call
from .smsc import SmscPeer, mo_sms

__all__ = ["ESL_PORT", "FASTAGI_PORT", "LAB_NETWORK", "Services"]

log = logging.getLogger("dgsm.lab.services")

ESL_PORT, FASTAGI_PORT = 8084, 4573
#: the villages' network: the only one our integrations in the lab trust
LAB_NETWORK = f"{SUBNET}.0/24"
#: where the village with a real Asterisk has its "OsmoMSC" SIP side (osmo-sip-connector)
MSC_SIP = ("127.0.0.1", 5069)
#: SIP answer -> the Q.850 cause chan_pjsip was given (docs/asterisk.md)
_CAUSE_OF_SIP = {404: 1, 484: 28, 503: 34}
_RESULT_OF_SIP = {404: "not-found", 484: "invalid", 503: "error"}


@dataclass
class _Endpoints:
    uas: SipUas
    smsc: SmscPeer | None = None  # the stand-in OsmoMSC
    msc: OsmoMsc | None = None  # a real osmo-msc as the village's SMSC
    stp: OsmoStp | None = None  # with phones: the village's osmo-stp (A interface)
    esme: Any = None  # with phones: the ESME bound to this village's osmo-msc


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
    #: "real": Asterisk 22 from the sid root in the caller's village; "peer": its AGI
    #: protocol peer; None: real where the sid root has it
    asterisk: str | None = None
    #: lab phones: every village runs osmo-stp and osmo-msc with the A interface, and an
    #: ESME bound to its osmo-msc (smpp-first, default route); phones attach there
    #: (:meth:`attach_phone`) and their SMS are real. None: if osmo-msc, osmo-stp and gcc
    #: exist (and ``real_msc`` is not False); False: the stand-in sends B's SMS
    phones: bool | None = None
    #: with phones: the ESME of the caller's village stores what it cannot deliver now
    #: (``--queue``) and retries from ``queue_retry`` s
    queue: bool = False
    queue_retry: float = 0.5
    #: the reason phones are off (for the demo), when they are
    phones_off: str = ""
    endpoints: dict[str, _Endpoints] = field(default_factory=dict)
    real_asterisk: RealAsterisk | None = None
    _pbx: list[Any] = field(default_factory=list)
    _phones: list[LabPhone] = field(default_factory=list)
    _bsc_pcs: dict[str, int] = field(default_factory=dict)
    _stacks: list[Any] = field(default_factory=list)

    @property
    def village(self) -> Village:
        return self.lab[self.home]

    def phones_possible(self) -> str:
        """Why lab phones cannot run here ('' when they can)."""
        distro = self.lab.distro
        for program, package in (("osmo-msc", "osmo-msc"), ("osmo-stp", "osmo-stp")):
            if not distro.which(program):
                where = "" if distro.root is None else f" in the {distro.name} root"
                return f"no {program}{where} (apt-get install {package})"
        if not shutil.which("gcc"):
            return "no gcc for the SCTP shim (apt-get install gcc libc6-dev)"
        return ""

    def start(self) -> Services:
        if self.phones is None:
            self.phones_off = ("real_msc=False" if self.real_msc is False
                               else self.phones_possible())
            self.phones = not self.phones_off
        elif self.phones:
            why = self.phones_possible()
            if why:
                raise LabError(f"lab phones need osmo-msc, osmo-stp and gcc: {why}")
        if self.phones:
            self.real_msc = True
        if self.real_msc is None:
            self.real_msc = bool(self.lab.distro.which("osmo-msc") and shutil.which("gcc"))
        sid = sid_root()
        if self.asterisk is None:
            self.asterisk = "real" if sid is not None and sid.which("asterisk") else "peer"
        if self.asterisk not in ("real", "peer"):
            raise ValueError(f"asterisk must be 'real' or 'peer', not {self.asterisk!r}")
        try:
            for v in self.lab:
                real = self.real_msc and (v.name != self.home or bool(self.phones))
                sip_at = (MSC_SIP if self.asterisk == "real" and v.name == self.home
                          else (v.addr, SIP_PORT))
                self.endpoints[v.name] = v.loop.run(
                    self._endpoints(v, stand_in=not real, sip_at=sip_at))
                if real and self.phones:
                    stp = OsmoStp(v.workdir / "osmo-stp", netns=v.ns, distro=self.lab.distro)
                    self.endpoints[v.name].stp = stp
                    stp.start()
                if real:
                    msc = OsmoMsc(v.workdir / "osmo-msc", SMPP_PORT, bind_ip=v.addr,
                                  hlr_ip=v.addr, netns=v.ns, system_id=f"MSC-{v.name}",
                                  distro=self.lab.distro,
                                  a_interface=AInterface(ipa_name=v.msc_name)
                                  if self.phones else None)
                    self.endpoints[v.name].msc = msc
                    msc.start()
            self.village.loop.run(self._integrations())
            if self.phones:
                for v in self.lab:
                    if v.name != self.home:
                        self.endpoints[v.name].esme = v.loop.run(self._esme(v))
            if self.asterisk == "real":
                if sid is None:
                    raise RealAsteriskError("no Debian sid root with Asterisk: run "
                                            ".ci/bootstrap.sh as root (bash .ci/test does)")
                v = self.village
                self.real_asterisk = RealAsterisk(
                    v.workdir / "asterisk", sid, netns=v.ns, sip_bind=(v.addr, SIP_PORT),
                    fastagi=(v.addr, FASTAGI_PORT), mesh=LAB_NETWORK, msc=MSC_SIP,
                    agi_settings=f"interface = {v.addr}\nmin-delay = {self.min_delay}\n"
                                 f"trusted = {LAB_NETWORK}\n")
                self.real_asterisk.start()
        except BaseException:
            self.close()
            raise
        return self

    async def _endpoints(self, v: Village, stand_in: bool,
                         sip_at: tuple[str, int]) -> _Endpoints:
        uas = await SipUas.start(*sip_at)
        if not stand_in:
            return _Endpoints(uas)
        smsc = SmscPeer(v.addr, SMPP_PORT)
        await smsc.__aenter__()
        return _Endpoints(uas, smsc)

    async def _integrations(self) -> None:
        v = self.village
        fs = EslServer(FsConfig(interface=v.addr, listen=v.addr, listen_port=ESL_PORT,
                                min_delay=self.min_delay, trusted=(LAB_NETWORK,)))
        agi = FastAgiServer(self._fastagi_config())
        await fs.start()
        await agi.start()
        esme, task, resolver = await self._esme_parts(v, queue=self.queue)
        self._pbx = [fs, agi, esme, task, resolver]
        self.endpoints[v.name].esme = esme
        await self._bound(v, esme)

    async def _esme_parts(self, v: Village, queue: bool = False) -> tuple[Any, Any, Any]:
        resolver = AsyncResolver(interface=v.addr, min_delay=self.min_delay,
                                 trusted=(LAB_NETWORK,))
        await resolver.open()
        # a village that vanished may come back: tell the phone "temporary" (RSYSERR), not
        # "no such number", when no village knows the recipient right now
        esme = Esme(EsmeConfig(src_host=v.addr, src_port=SMPP_PORT, budget=self.budget,
                               not_found_status=Status.RSYSERR, backoff_min=0.1,
                               backoff_max=1.0, connect_timeout=1.0,
                               trust=TrustPolicy.build([LAB_NETWORK])), resolver)
        if queue:
            from ..esme.store import Store
            stack = contextlib.AsyncExitStack()
            store = Store(str(v.workdir / "esme-queue.db"), retry_min=self.queue_retry,
                          retry_max=2 * self.queue_retry)
            await stack.enter_async_context(store.attach(esme))
            self._stacks.append((v, stack))
        task = asyncio.get_running_loop().create_task(esme.run())
        return esme, task, resolver

    async def _esme(self, v: Village) -> Any:
        """The ESME of a village other than the caller's (with phones): bound as OSMPP to
        its osmo-msc, so that SMS from its phones (and osmo-msc's status reports) travel."""
        esme, task, resolver = await self._esme_parts(v)
        self._stacks.append((v, (esme, task, resolver)))
        await self._bound(v, esme)
        return esme

    async def _bound(self, v: Village, esme: Any) -> None:
        msc = self.endpoints[v.name].smsc
        if msc is not None:
            await msc.wait_for(lambda: msc.route() is not None, timeout=10)
        else:
            await asyncio.wait_for(esme.osmpp.bound.wait(), 10)

    def close(self) -> None:
        for ph in self._phones:
            with contextlib.suppress(Exception):
                ph.close()
        self._phones.clear()
        for v, item in reversed(self._stacks):
            async def stop_item(item: Any = item) -> None:
                if isinstance(item, contextlib.AsyncExitStack):
                    await item.aclose()
                    return
                _esme, task, resolver = item
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await resolver.close()
            with contextlib.suppress(Exception):
                v.loop.run(stop_item(), 15)
        self._stacks.clear()
        if self.real_asterisk is not None:
            self.real_asterisk.stop()
            self.real_asterisk = None
        if self._pbx:
            fs, agi, _esme, task, resolver = self._pbx

            async def stop() -> None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await resolver.close()
                if agi is not None:
                    await agi.close(grace=0.5)
                await fs.close(grace=0.5)
            with contextlib.suppress(Exception):
                self.village.loop.run(stop(), 15)
            self._pbx = []
        for name, ep in self.endpoints.items():
            if ep.msc is not None:
                ep.msc.stop()
            if ep.stp is not None:
                ep.stp.stop()

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

    def _fastagi_config(self, **overrides: Any) -> AgiConfig:
        v = self.village
        kw: dict[str, Any] = {"interface": v.addr, "listen": v.addr,
                              "listen_port": FASTAGI_PORT, "min_delay": self.min_delay,
                              "trusted": (LAB_NETWORK,)}
        return AgiConfig(**{**kw, **overrides})

    @property
    def fastagi(self) -> FastAgiServer | None:
        """The running dgsm-fastagi server (None while stopped)."""
        return self._pbx[1] if self._pbx else None

    def stop_fastagi(self) -> None:
        """Stop dgsm-fastagi, as ``systemctl stop`` would (its port is then closed)."""
        if self._pbx and self._pbx[1] is not None:
            self.village.loop.run(self._pbx[1].close(grace=0.5), 10)
            self._pbx[1] = None

    def start_fastagi(self, **overrides: Any) -> FastAgiServer:
        """(Re)start dgsm-fastagi, with settings changed from the lab's (``max_calls=1``)."""
        self.stop_fastagi()
        server = FastAgiServer(self._fastagi_config(**overrides))
        self.village.loop.run(server.start(), 10)
        self._pbx[1] = server
        return server

    @property
    def asterisk_kind(self) -> str:
        """Which Asterisk the calls go through, for the demo and the test ids."""
        if self.real_asterisk is not None:
            return f"Asterisk {self.real_asterisk.version} (real)"
        return "Asterisk's AGI protocol peer"

    def asterisk_call(self, dest: str, *, guarded: bool = True, **sip: Any) -> PbxCall:
        """A call through ``dgsm-fastagi``: a phone's call into the real Asterisk (context
        ``dgsm-out``), or Asterisk's FastAGI played by its protocol peer."""
        v = self.village
        if self.real_asterisk is not None:
            return self._real_call("Asterisk (dgsm-fastagi)", dest,
                                   "127.0.0.1" if guarded else "127.0.0.3", **sip)
        return v.loop.run(asterisk_call(v.addr, FASTAGI_PORT, dest))

    def asterisk_script_call(self, dest: str, *, guarded: bool = True, **sip: Any) -> PbxCall:
        """A call through the per-call AGI script (``dgsm-agi``): into the real Asterisk
        (context ``dgsm-out-local``), or the script spawned inside the caller's village and
        spoken to by Asterisk's protocol peer."""
        v = self.village
        if self.real_asterisk is not None:
            return self._real_call("Asterisk (dgsm-agi script)", dest,
                                   "127.0.0.2" if guarded else "127.0.0.4", **sip)
        conf = v.workdir / "asterisk.conf"
        conf.write_text(f"interface = {v.addr}\nmin-delay = {self.min_delay}\n"
                        f"trusted = {LAB_NETWORK}\n")
        env = dict(os.environ, DGSM_AGI_CONFIG=str(conf))
        argv = v.ns.argv([sys.executable, "-c", "import sys; from dgsm_integrations.asterisk."
                          "script import main; sys.exit(main())"])
        return v.loop.run(asterisk_script_call(argv, env, dest))

    def _real_call(self, pbx: str, dest: str, caller_host: str, **sip: Any) -> PbxCall:
        """The phone side calls the real Asterisk; its SIP answer says what the dialplan did
        (200 after the site answered the Dial(); 404/484/503 from Hangup(DGSM_CAUSE))."""
        v = self.village
        raw = not (dest.isascii() and dest.isdigit() and 1 <= len(dest) <= 15)
        kw: dict[str, Any] = {"offer_sdp": True, "timeout": 15.0, "any_user": raw, **sip}
        t0 = time.monotonic()
        seen = {name: len(ep.uas.invites) for name, ep in self.endpoints.items()}
        res = v.loop.run(call(dest, v.addr, SIP_PORT, local_host=caller_host, **kw), 30)
        if res.answered:
            # what Dial(${DGSM_DIAL}) did, as the villages saw it: the INVITE that arrived
            new = [i for name, ep in self.endpoints.items()
                   for i in list(ep.uas.invites)[seen[name]:] if i.user == dest]
            dial = (f"PJSIP/dgsm/sip:{dest}@{new[-1].host}" if new
                    else "Dial(${DGSM_DIAL}), no INVITE seen")
            return PbxCall(pbx, dest, dial, "found", res, time.monotonic() - t0)
        cause = _CAUSE_OF_SIP.get(res.code or 0, "?")
        return PbxCall(pbx, dest, f"hangup {cause}", _RESULT_OF_SIP.get(res.code or 0, "none"),
                       res, time.monotonic() - t0)

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
        if msc is None:
            raise LabError("the caller's village runs a real osmo-msc (phones): send SMS "
                           "from a phone (Services.phone) instead")
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

    # -- lab phones (``phones=True``) -------------------------------------------------------

    def phone(self, village: str, imsi: str, *, timeout: float = 10.0) -> LabPhone:
        """A handset of ``imsi`` switched on (M3UA up, BSSMAP reset) at ``village``'s
        osmo-msc; closed with the lab. Each phone in a village gets its own BSC point code.
        ``timeout`` bounds every answer it waits for (osmo-msc registers at osmo-stp about
        2 s after it starts)."""
        if not self.phones:
            raise LabError(f"no lab phones here: {self.phones_off or 'Services(phones=False)'}")
        v = self.lab[village]
        n = self._bsc_pcs.get(village, 0)
        self._bsc_pcs[village] = n + 1
        ph = LabPhone(imsi, netns=v.ns, timeout=timeout, bsc_pc=f"0.{24 + n // 8}.{n % 8}")
        ph.connect()
        self._phones.append(ph)
        return ph

    def attach_phone(self, phone: LabPhone, attempts: int = 3) -> float:
        """Location Updating (IMSI attach) through the phone's osmo-msc; repeated like a
        handset repeats one that failed: OsmoHLR often drops the first roaming LU over a new
        GSUP link (docs/lab.md), and osmo-msc then rejects it (or does not answer). Returns
        the seconds the successful one took."""
        for attempt in range(1, attempts + 1):
            t0 = time.monotonic()
            try:
                phone.location_update()
                return time.monotonic() - t0
            except PhoneError as exc:
                if attempt == attempts:
                    raise
                log.info("phone %s: LU attempt %d failed (%s), repeating it", phone.imsi,
                         attempt, str(exc).splitlines()[0])
        raise AssertionError("unreachable")

    def use_queue(self, on: bool) -> None:
        """Store-and-forward at the caller's village's ESME (``--queue``) on or off: with it,
        an SMS it cannot deliver now is accepted once durably stored (``esme-queue.db`` in
        the village) and retried from ``queue_retry`` s, looking the recipient up again."""
        v = self.village
        esme = self.endpoints[v.name].esme
        if esme is None:
            raise LabError("the ESME is not running")
        mine = [item for item in self._stacks
                if item[0] is v and isinstance(item[1], contextlib.AsyncExitStack)]
        if on and not mine:
            async def attach() -> None:
                from ..esme.store import Store
                stack = contextlib.AsyncExitStack()
                store = Store(str(v.workdir / "esme-queue.db"), retry_min=self.queue_retry,
                              retry_max=2 * self.queue_retry)
                await stack.enter_async_context(store.attach(esme))
                self._stacks.append((v, stack))
            v.loop.run(attach(), 15)
        elif not on and mine:
            for item in mine:
                self._stacks.remove(item)
                v.loop.run(item[1].aclose(), 15)
        self.queue = on

    @property
    def esme_store(self) -> Any:
        """The caller's ESME's store (None without ``--queue``)."""
        esme = self.endpoints[self.home].esme
        return None if esme is None else esme.store
