"""The lab's network: villages in network namespaces, joined by a backhaul bridge.

::

    village A (netns)          village B (netns)          village C (netns)
    eth0 198.18.23.11          eth0 198.18.23.12          eth0 198.18.23.13
    osmo-hlr HLR-A             osmo-hlr HLR-B             osmo-hlr HLR-C
         |                          |                          |
       bh-a ---------------------- br0 ---------------------- bh-c     backhaul (netns)
                                   |
                                  bh-b

Addresses come from 198.18.0.0/15, the range set aside for network benchmarks (RFC 2544);
they exist only inside the lab's namespaces. The bridge floods multicast (snooping off), so
an mslookup query from any village reaches every other one, as on a flat community network.
A village's link is cut by taking its bridge port down, and made lossy with an nftables
random-drop rule inside the village (``tc netem`` is not available on these kernels).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .distro import HOST, Distro
from .gsup import GsupClient, GsupTimeout, LocationUpdateResult
from .netns import LabError, Netns, NsLoop, in_private_netns, need
from .osmohlr import OsmoHlr

__all__ = ["SUBNET", "Lab", "Village", "village_address"]

log = logging.getLogger("dgsm.lab")

SUBNET = "198.18.23"
SIP_PORT, SMPP_PORT = 5060, 2775
MDNS_GROUP, MDNS_PORT = "239.192.23.42", 4266


def village_address(index: int) -> str:
    return f"{SUBNET}.{11 + index}"


@dataclass
class Village:
    """One site: its namespace, address, OsmoHLR and test MSC identity."""

    name: str
    index: int
    ns: Netns
    workdir: Path
    hlr: OsmoHlr | None = None
    loss: int = 0
    cut: bool = False
    subscribers: dict[str, str] = field(default_factory=dict)  # imsi -> msisdn, homed here
    _loop: NsLoop | None = None

    @property
    def loop(self) -> NsLoop:
        """This village's own event loop (a thread inside the village), made on first use."""
        if self._loop is None:
            self._loop = NsLoop(self.ns)
        return self._loop

    @property
    def addr(self) -> str:
        return village_address(self.index)

    @property
    def link(self) -> str:
        """The village's port on the backhaul bridge."""
        return f"bh-{self.name.lower()}"

    @property
    def msc_name(self) -> str:
        return f"MSC-{self.name}"

    def entered(self) -> contextlib.AbstractContextManager[None]:
        """Open sockets inside this village (see :meth:`Netns.entered`)."""
        return self.ns.entered()

    def provision(self, imsi: str, msisdn: str) -> None:
        """Create a subscriber in this village's OsmoHLR (its home), through the VTY."""
        if self.hlr is None:
            raise LabError(f"village {self.name} has no OsmoHLR")
        self.hlr.create_subscriber(imsi, msisdn)
        self.subscribers[imsi] = msisdn

    def attach(self, imsi: str, timeout: float = 3.0, attempts: int = 3,
               msc_name: str | None = None) -> LocationUpdateResult:
        """A phone attaches here: the village's test MSC does a real GSUP Location Updating
        at the village's OsmoHLR, which proxies it to the home HLR when the IMSI is a
        roamer's (D-GSM: it finds the home by mslookup ``gsup.hlr``).

        Like a phone (which repeats a Location Updating that got no answer), it tries again
        after ``timeout``: OsmoHLR (1.5.0 and 1.9.4 alike) often drops the first roaming LU it
        defers while its GSUP link to that home HLR is still coming up; the repeat goes
        through (measured in the lab, bench/first_roaming_lu.py; see docs/lab.md).

        ``msc_name``: the IPA name the test MSC gives its GSUP link (default ``MSC-<village>``;
        another one where a real osmo-msc of that name is connected to the same OsmoHLR)."""
        for attempt in range(1, attempts + 1):
            client = GsupClient(self.addr, unit_name=msc_name or self.msc_name,
                                timeout=timeout)
            with self.entered():
                client.connect()
            try:
                with client:
                    return client.update_location(imsi)
            except GsupTimeout:
                if attempt == attempts:
                    raise
                log.info("village %s: no answer to the LU of %s (attempt %d), repeating it",
                         self.name, imsi, attempt)
        raise AssertionError("unreachable")


class Lab:
    """Villages in network namespaces with real OsmoHLRs; ``with Lab() as lab: ...``.

    ``distro`` is the Osmocom generation the villages run (:mod:`.distro`): this host's
    packages (the default) or the Debian sid root's; the workdir must then be under the
    temporary directory, which is the one bound into that root.

    Must run in a private network namespace (``dgsm-lab`` re-executes itself under
    ``unshare -rn``; tests run inside one): nothing is created in the host's namespace.
    """

    def __init__(self, names: Sequence[str] = ("A", "B", "C"), *,
                 workdir: Path | None = None, hlr: bool = True,
                 hlr_client_timeout_ms: int = 1000, distro: Distro = HOST) -> None:
        if not 1 <= len(names) <= 200 or len(set(names)) != len(names):
            raise LabError("need 1 to 200 distinct village names")
        for n in names:
            if not (n.isascii() and n.isalnum() and len(n) <= 8):
                raise LabError(f"bad village name {n!r}: letters and digits, at most 8")
        self.names = list(names)
        self.with_hlr = hlr
        self.hlr_client_timeout_ms = hlr_client_timeout_ms
        self.distro = distro
        self._workdir = None if workdir is None else Path(workdir)
        self._own_workdir: Path | None = None  # made by start(), removed by close()
        self.backhaul: Netns | None = None
        self.villages: dict[str, Village] = {}

    @property
    def workdir(self) -> Path:
        """The directory of the villages' files: the one given, or a temporary one made when
        the lab starts (and removed when it closes)."""
        if self._workdir is None:
            raise LabError("the lab has no work directory until it is started")
        return self._workdir

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> Lab:
        if not in_private_netns():
            raise LabError("the lab must run inside a private network namespace (it would see "
                           "this host's interfaces): run it through dgsm-lab, or under "
                           "'unshare -rn' / 'unshare -n' as root")
        need("ip", "iproute2")
        need("nsenter", "util-linux")
        try:
            if self._workdir is None:
                self._own_workdir = self._workdir = Path(tempfile.mkdtemp(prefix="dgsm-lab-"))
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        bh = self.backhaul = Netns("backhaul")
        bh.run(["ip", "link", "set", "lo", "up"])
        bh.run(["ip", "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])
        bh.run(["ip", "link", "set", "br0", "up"])
        for i, name in enumerate(self.names):
            ns = Netns(f"village-{name}")
            v = Village(name, i, ns, self.workdir / f"village-{name}")
            self.villages[name] = v
            v.workdir.mkdir(parents=True, exist_ok=True)
            bh.run(["ip", "link", "add", v.link, "type", "veth", "peer", "name", "eth0",
                    "netns", ns.path])
            bh.run(["ip", "link", "set", v.link, "master", "br0", "up"])
            for cmd in (["ip", "link", "set", "lo", "up"],
                        ["ip", "addr", "add", f"{v.addr}/24", "dev", "eth0"],
                        ["ip", "link", "set", "eth0", "up"],
                        ["ip", "route", "add", "224.0.0.0/4", "dev", "eth0"]):
                ns.run(cmd)
        if self.with_hlr:
            for v in self.villages.values():
                v.hlr = OsmoHlr(v.workdir, bind_ip=v.addr, ipa_name=f"HLR-{v.name}",
                                services={"sip.voice": (v.addr, SIP_PORT),
                                          "smpp.sms": (v.addr, SMPP_PORT)},
                                client_timeout_ms=self.hlr_client_timeout_ms, netns=v.ns,
                                distro=self.distro)
                v.hlr.start()

    def close(self) -> None:
        """Stop every program and remove every namespace (idempotent)."""
        for v in self.villages.values():
            if v._loop is not None:
                v._loop.close()
                v._loop = None
            if v.hlr is not None:
                with contextlib.suppress(Exception):
                    v.hlr.stop()
            v.ns.close()
        if self.backhaul is not None:
            self.backhaul.close()
        if self._own_workdir is not None:
            shutil.rmtree(self._own_workdir, ignore_errors=True)
            self._own_workdir = self._workdir = None

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Village]:
        return iter(self.villages.values())

    def __getitem__(self, name: str) -> Village:
        try:
            return self.villages[name]
        except KeyError:
            raise LabError(f"no village {name!r} (have {', '.join(self.names)})") from None

    def site_of(self, address: str) -> str:
        """The village name for an address seen on the wire (or the address itself)."""
        for v in self.villages.values():
            if v.addr == address:
                return v.name
        return address

    # -- faults --------------------------------------------------------------------------

    def _backhaul(self) -> Netns:
        if self.backhaul is None:
            raise LabError("the lab is not started")
        return self.backhaul

    def cut(self, name: str) -> None:
        """Take the village's link down: it cannot reach, or be reached by, anyone."""
        v = self[name]
        self._backhaul().run(["ip", "link", "set", v.link, "down"])
        v.cut = True

    def restore(self, name: str) -> None:
        v = self[name]
        self._backhaul().run(["ip", "link", "set", v.link, "up"])
        v.cut = False

    def thin(self, name: str, kbit: int | None, queue_ms: int = 150) -> None:
        """Make the village's link carry at most ``kbit`` kbit/s each way, queueing up to
        ``queue_ms`` ms (what does not fit is dropped: a thin, bufferbloated wifi hop);
        None makes it whole again. Linux's tbf qdisc on both ends of the link."""
        if kbit is not None and not 8 <= kbit <= 10_000_000:
            raise LabError(f"link rate must be 8-10000000 kbit/s, not {kbit}")
        if not 1 <= queue_ms <= 10_000:
            raise LabError(f"queue must be 1-10000 ms, not {queue_ms}")
        v = self[name]
        tc = need("tc", "iproute2")
        ends = ((v.ns, "eth0"), (self._backhaul(), v.link))
        for ns, dev in ends:
            ns.run([tc, "qdisc", "del", "dev", dev, "root"], check=False)
            if kbit is not None:
                ns.run([tc, "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{kbit}kbit",
                        "burst", "4kb", "latency", f"{queue_ms}ms"])

    def lossy(self, name: str, percent: int) -> None:
        """Drop ``percent`` % of the packets into and out of the village, at random."""
        if not 0 <= percent <= 100:
            raise LabError(f"loss must be 0-100 %, not {percent}")
        v = self[name]
        nft = need("nft", "nftables")
        v.ns.run([nft, "delete", "table", "inet", "dgsm_lab"], check=False)
        if percent:
            rules = (
                "table inet dgsm_lab {\n"
                " chain input { type filter hook input priority 0; policy accept;\n"
                f"  iifname \"eth0\" numgen random mod 100 < {percent} drop\n }}\n"
                " chain output { type filter hook output priority 0; policy accept;\n"
                f"  oifname \"eth0\" numgen random mod 100 < {percent} drop\n }}\n"
                "}\n")
            path = v.workdir / "loss.nft"
            path.write_text(rules)
            v.ns.run([nft, "-f", str(path)])
        v.loss = percent
