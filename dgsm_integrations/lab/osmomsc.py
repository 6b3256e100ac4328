"""A real ``osmo-msc`` (Debian's package): a village's SMSC in the lab, the ESME's peer in tests.

``distro=`` picks the generation: this host's (Debian 12: osmo-msc 1.9.0) or the Debian sid
root's (1.16.0, run through chroot); the config below is accepted by both.

osmo-msc 1.9.0 exits at start on a kernel without SCTP ("Starting SGs server failed", exit 9):
its SGs server and its M3UA client open SCTP sockets (1.16.0 logs the same failure and keeps
running). :func:`.shimmed.build_shim` compiles ``nosctp.c`` (an LD_PRELOAD shim of ours, next
to this file) with this host's gcc into a temporary directory, once per process; it turns SCTP
sockets into TCP ones (libsctp's bindx/connectx into a real bind/connect, so SGs listens where
configured), SCTP socket options into no-ops, and keeps M3UA's message boundaries on the byte
stream (see the shim's header), so osmo-msc starts in both generations, and its M3UA client
works against osmo-stp (:mod:`.osmostp`) run with the same shim. SMPP tests speak SMPP to it
and read its SMS database (``sms-database``, SQLite); with ``a_interface=`` it also serves
lab phones (:mod:`.phone`) over the A interface, through an osmo-stp in the same namespace.

Without an STP or an HLR osmo-msc keeps running: it retries its M3UA and GSUP connections in
the background. It must run inside a private network namespace (its VTY, CTRL and SGs ports
are fixed here: 4254, 4255, 29118), or in a lab village (``netns=``); the SMPP port is ours.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .distro import HOST, Distro
from .netns import LabError, Netns
from .shimmed import ShimmedProgram, build_shim

__all__ = ["AInterface", "OsmoMsc", "OsmoMscError", "build_shim", "unpack_septets"]

M3UA_PORT = 2905  # osmo-stp's (lab/osmostp.py)


@dataclass(frozen=True)
class AInterface:
    """osmo-msc's A interface for lab phones (:mod:`.phone`): its network's MCC/MNC, no
    authentication or ciphering, TMSI assignment on, and its point code. osmo-msc 1.9's default
    SCCP client then connects as an M3UA ASP to an STP on localhost:2905 (``OsmoStp`` in the
    same namespace) and registers that point code there. ``ipa_name`` is the name osmo-msc
    gives its GSUP link: OsmoHLR shows it as the subscriber's VLR number."""

    point_code: str = "0.23.1"
    mcc: str = "901"
    mnc: str = "70"
    ipa_name: str | None = None


class OsmoMscError(LabError):
    """osmo-msc did not start, or exited; the message carries the end of its log."""


class OsmoMsc(ShimmedProgram):
    """One osmo-msc process with an SMPP interface configured like OsmoMSC's example.

    ``esmes`` maps system-id to (password, default_route). ``policy closed``: only those
    system-ids may bind. Ready when its SMPP port accepts a connection.
    """

    program = "osmo-msc"
    package = "osmo-msc"
    error = OsmoMscError

    def __init__(self, workdir: Path, smpp_port: int, *,
                 esmes: dict[str, tuple[str, bool]] | None = None,
                 system_id: str = "MSC-VILLAGE", start_timeout: float = 10.0,
                 bind_ip: str = "127.0.0.1", hlr_ip: str = "127.0.0.1",
                 netns: Netns | None = None, binary: str | None = None,
                 distro: Distro = HOST, a_interface: AInterface | None = None) -> None:
        super().__init__(workdir, bind_ip=bind_ip, netns=netns, binary=binary, distro=distro,
                         start_timeout=start_timeout)
        self.a_interface = a_interface
        self.smpp_port = smpp_port
        self.system_id = system_id
        self.esmes = esmes if esmes is not None else {"OSMPP": ("foo", True),
                                                      "ISMPP": ("foo", False)}
        self.hlr_ip = hlr_ip
        self.db_path = self.workdir / "sms.db"

    def config_text(self) -> str:
        esmes = "".join(
            f" esme {name}\n  password {password}\n" + ("  default-route\n" if route else "")
            for name, (password, route) in self.esmes.items())
        return (
            "log stderr\n logging filter all 1\n logging color 0\n logging print category 1\n"
            " logging level set-all notice\n logging level smpp info\n"
            f"line vty\n bind {self.bind_ip}\n"
            f"ctrl\n bind {self.bind_ip}\n"
            f"hlr\n remote-ip {self.hlr_ip}\n"
            + (f" ipa-name {self.a_interface.ipa_name}\n"
               if self.a_interface is not None and self.a_interface.ipa_name else "")
            + self._a_config() +
            f"msc\n mncc internal\n sms-database {self.db_path}\n"
            + (" assign-tmsi\n" if self.a_interface is not None else "") +
            f"smpp\n local-tcp-ip {self.bind_ip} {self.smpp_port}\n"
            f" system-id {self.system_id}\n"
            " policy closed\n smpp-first\n" + esmes)

    def _a_config(self) -> str:
        a = self.a_interface
        if a is None:
            return ""
        return (f"network\n network country code {a.mcc}\n mobile network code {a.mnc}\n"
                " authentication optional\n encryption a5 0\n"
                f"cs7 instance 0\n point-code {a.point_code}\n"
                # the ASP osmo-msc's default SCCP client takes (it makes one to "localhost"
                # otherwise, which is ::1 first inside the sid root, where osmo-stp does not
                # listen): osmo-stp on this namespace's 127.0.0.1
                f" asp lab-msc {M3UA_PORT} 0 m3ua\n  remote-ip 127.0.0.1\n"
                "  local-ip 127.0.0.1\n  role asp\n  sctp-role client\n")

    def ready_port(self) -> tuple[int, str]:
        return self.smpp_port, "SMPP"

    def stored_sms(self) -> list[dict[str, Any]]:
        """Every row of osmo-msc's SMS table, as a dict per row."""
        con = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5)
        try:
            con.row_factory = sqlite3.Row
            return [dict(row) for row in con.execute("SELECT * FROM SMS ORDER BY id")]
        finally:
            con.close()


def unpack_septets(data: bytes, count: int) -> bytes:
    """The first ``count`` 7-bit values packed LSB first in ``data`` (GSM 03.38 packing, as
    osmo-msc stores GSM 7-bit user data; on SMPP they travel one septet per byte)."""
    bits = int.from_bytes(data, "little")
    return bytes((bits >> (7 * i)) & 0x7F for i in range(count))
