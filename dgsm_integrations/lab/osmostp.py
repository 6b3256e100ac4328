"""A real ``osmo-stp`` (Debian's package): the signalling transfer point in front of a
village's osmo-msc, where the lab phone's BSC side (:mod:`.phone`) and osmo-msc meet as M3UA
ASPs.

This kernel has no SCTP. osmo-stp runs with the same LD_PRELOAD shim as osmo-msc
(:func:`.shimmed.build_shim`): SCTP sockets become TCP ones, libsctp's bind/connect calls
become plain ones, and each ``sctp_recvmsg`` returns exactly one M3UA message, framed by the
length in its common header (RFC 4666 3.1). So M3UA travels over TCP with no extra framing:
the bytes on the wire are M3UA messages back to back (measured with osmo-stp 1.6.0 and
osmo-msc 1.9.0: see docs/lab.md).

Configuration: ``accept-asp-connections dynamic-permitted`` and dynamic routing-key
allocation, so each ASP (osmo-msc's default SCCP client, the phone) registers its own point
code with an M3UA REG REQ; nothing per peer is configured here. The M3UA port is 2905 and the
VTY port is 4239 (fixed in 1.6.0): one osmo-stp per network namespace (a lab village, or the
private namespace of the tests).
"""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

from .distro import HOST, Distro
from .netns import LabError, Netns
from .shimmed import ShimmedProgram

__all__ = ["M3UA_PORT", "OsmoStp", "OsmoStpError"]

M3UA_PORT = 2905
VTY_PORT = 4239


class OsmoStpError(LabError):
    """osmo-stp did not start, or exited; the message carries the end of its log."""


class OsmoStp(ShimmedProgram):
    """One osmo-stp process; ``with OsmoStp(workdir) as stp: ...``.

    Ready when its VTY accepts a connection: osmo-stp binds its M3UA server before it opens
    the VTY (its log: "Created m3ua server" comes before "Available via telnet")."""

    program = "osmo-stp"
    package = "osmo-stp"
    error = OsmoStpError
    new_session = True

    def __init__(self, workdir: Path, *, bind_ip: str = "127.0.0.1", point_code: str = "0.23.0",
                 netns: Netns | None = None, binary: str | None = None,
                 start_timeout: float = 10.0, distro: Distro = HOST) -> None:
        super().__init__(workdir, bind_ip=bind_ip, netns=netns, binary=binary, distro=distro,
                         start_timeout=start_timeout)
        self.point_code = point_code

    def config_text(self) -> str:
        return (
            "log stderr\n logging filter all 1\n logging color 0\n logging print category 1\n"
            " logging level set-all notice\n logging level lss7 info\n"
            f"line vty\n bind {self.bind_ip}\n"
            f"cs7 instance 0\n point-code {self.point_code}\n"
            " xua rkm routing-key-allocation dynamic-permitted\n"
            f" listen m3ua {M3UA_PORT}\n  accept-asp-connections dynamic-permitted\n"
            f"  local-ip {self.bind_ip}\n")

    def ready_port(self) -> tuple[int, str]:
        return VTY_PORT, "VTY"

    def vty(self, command: str, timeout: float = 3.0) -> str:
        """One VTY command's output (e.g. ``show cs7 instance 0 asp``), read until the prompt."""
        ctx = self.netns.entered() if self.netns is not None else contextlib.nullcontext()
        with ctx:
            sock = socket.create_connection((self.bind_ip, VTY_PORT), timeout=timeout)
        with sock:
            deadline = time.monotonic() + timeout
            _read_prompt(sock, b"", deadline)  # the banner
            sock.sendall(command.encode() + b"\r\n")
            out = _read_prompt(sock, b"", deadline)
        return out.decode(errors="replace")


def _read_prompt(sock: socket.socket, buf: bytes, deadline: float) -> bytes:
    """Read until the VTY prompt ("OsmoSTP> "), bounded by ``deadline``."""
    while not buf.rstrip().endswith(b">"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise OsmoStpError("osmo-stp VTY: no prompt in time")
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            raise OsmoStpError("osmo-stp VTY closed the connection")
        buf += chunk
        if len(buf) > 1 << 20:
            raise OsmoStpError("osmo-stp VTY: answer too long")
    return buf
