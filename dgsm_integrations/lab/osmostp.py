"""A real ``osmo-stp`` (Debian's package): the signalling transfer point in front of a
village's osmo-msc, where the lab phone's BSC side (:mod:`.phone`) and osmo-msc meet as M3UA
ASPs.

This kernel has no SCTP. osmo-stp runs with the same LD_PRELOAD shim as osmo-msc
(:func:`.osmomsc.build_shim`): SCTP sockets become TCP ones, libsctp's bind/connect calls
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
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

from .distro import HOST, Distro
from .netns import LabError, Netns, terminate
from .osmomsc import build_shim

__all__ = ["M3UA_PORT", "OsmoStp", "OsmoStpError"]

M3UA_PORT = 2905
VTY_PORT = 4239


class OsmoStpError(LabError):
    """osmo-stp did not start, or exited; the message carries the end of its log."""


class OsmoStp:
    """One osmo-stp process; ``with OsmoStp(workdir) as stp: ...``."""

    def __init__(self, workdir: Path, *, bind_ip: str = "127.0.0.1", point_code: str = "0.23.0",
                 netns: Netns | None = None, binary: str | None = None,
                 start_timeout: float = 10.0, distro: Distro = HOST) -> None:
        self.workdir = Path(workdir)
        self.bind_ip = bind_ip
        self.point_code = point_code
        self.netns = netns
        self.binary = binary
        self.distro = distro
        self.start_timeout = start_timeout
        self.config_path = self.workdir / "osmo-stp.cfg"
        self.log_path = self.workdir / "osmo-stp.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def config_text(self) -> str:
        return (
            "log stderr\n logging filter all 1\n logging color 0\n logging print category 1\n"
            " logging level set-all notice\n logging level lss7 info\n"
            f"line vty\n bind {self.bind_ip}\n"
            f"cs7 instance 0\n point-code {self.point_code}\n"
            " xua rkm routing-key-allocation dynamic-permitted\n"
            f" listen m3ua {M3UA_PORT}\n  accept-asp-connections dynamic-permitted\n"
            f"  local-ip {self.bind_ip}\n")

    def start(self) -> None:
        binary = self.binary or self.distro.need("osmo-stp", "osmo-stp")
        shim = build_shim()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.distro.check_visible(self.workdir)
        self.distro.check_visible(shim)
        self.config_path.write_text(self.config_text())
        self._log = self.log_path.open("ab")
        env = dict(os.environ, LD_PRELOAD=str(shim))
        argv = self.distro.argv([binary, "-c", str(self.config_path)])
        self._proc = subprocess.Popen(
            self.netns.argv(argv) if self.netns is not None else argv, stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir, env=env,
            start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        # ready when its VTY accepts a connection: osmo-stp binds its M3UA server before it
        # opens the VTY (its log: "Created m3ua server" comes before "Available via telnet")
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self.stop()
                raise OsmoStpError(f"osmo-stp exited ({code}) at start:\n" + self.log_tail())
            if self._port_open(VTY_PORT):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise OsmoStpError(f"osmo-stp VTY port {VTY_PORT} not open after "
                                   f"{self.start_timeout}s:\n" + self.log_tail())
            time.sleep(0.02)  # polling a port that has no event to await

    def _port_open(self, port: int) -> bool:
        ctx = self.netns.entered() if self.netns is not None else contextlib.nullcontext()
        with ctx, contextlib.suppress(OSError), \
                socket.create_connection((self.bind_ip, port), timeout=0.2):
            return True
        return False

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

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            terminate(proc)
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> OsmoStp:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


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
