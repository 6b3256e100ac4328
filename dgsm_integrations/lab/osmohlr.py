"""Run a real OsmoHLR with D-GSM mslookup enabled (the lab's villages, and tests).

    with OsmoHlr(tmp_path) as hlr:
        hlr.create_subscriber("901700000001234", "1234")
        hlr.location_update("901700000001234")     # a real GSUP CS Location Updating
        ...                                         # sip.voice.1234.msisdn is now answered

It writes an osmo-hlr config (see :meth:`OsmoHlr.config_text`), starts ``osmo-hlr -c CFG -l DB``
with its log in ``workdir/osmo-hlr.log``, waits (bounded) until the VTY answers, and on exit
terminates it (then kills it after a bounded wait), also when the test failed.

OsmoHLR binds its mDNS socket on the default interface: only run this inside a private network
namespace (``unshare -rn``; ``ip link set lo up; ip route add 224.0.0.0/4 dev lo``), or give it
a lab village's :class:`~.netns.Netns` (``netns=``): it then runs there, and every connection
to it (VTY, CTRL, GSUP) is made from inside that namespace.

``distro=`` picks the generation: Debian 12's osmo-hlr 1.5.0 (the default, :data:`.distro.HOST`)
or Debian sid's 1.9.4 (:func:`.distro.sid_root`, run through chroot); the config below is
accepted by both. Port facts (measured): the GSUP port is always 4222; 1.5.0 ignores a VTY port
in its config (4258 is fixed) and refuses a CTRL ``bind IP PORT`` line, while 1.9.4 honours
both. Several OsmoHLRs in one namespace therefore need different ``bind_ip`` addresses
(127.0.0.2, ...) on 1.5.0, not different ports. A port the binary does not honour is reported
at start-up instead of timing out.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import IO, Self

from .distro import HOST, Distro
from .gsup import DEFAULT_UNIT_NAME, GSUP_PORT, CnDomain, GsupClient, LocationUpdateResult
from .netns import LabError, Netns

__all__ = [
    "DEFAULT_SERVICES",
    "OsmoHlr",
    "OsmoHlrError",
]

#: The services a default peer announces, as ``name: (ip, port)``.
DEFAULT_SERVICES: Mapping[str, tuple[str, int]] = MappingProxyType({
    "sip.voice": ("127.0.0.1", 5060),
    "smpp.sms": ("127.0.0.1", 2775),
})

VTY_PORT = 4258
CTRL_PORT = 4259

_DIGITS = re.compile(r"[0-9]+")
_SERVICE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_DOMAIN = re.compile(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*")
_IPA_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_PROMPT = re.compile(rb"[\w.-]+(?:\([\w-]+\))?[>#] $")
_TELNET_IAC = re.compile(rb"\xff\xfa.*?\xff\xf0|\xff[\xfb-\xfe].|\xff[\xf0-\xfa\xff]", re.S)
_LOG_VTY = re.compile(r"Available via telnet (\S+) (\d+)")
_LOG_CTRL = re.compile(r"CTRL at (\S+) (\d+)")


class OsmoHlrError(LabError):
    """OsmoHLR failed to start, refused a command, or misbehaved. Carries the log's tail."""


class _Vty:
    """A blocking telnet session on OsmoHLR's VTY, every read bounded by ``timeout``."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.timeout = timeout
        self._sock = socket.create_connection((host, port), timeout=timeout)
        try:
            self.banner = self._read_until_prompt()
        except BaseException:
            self._sock.close()
            raise

    def close(self) -> None:
        self._sock.close()

    def command(self, line: str) -> str:
        """Run one command line; return its output without the echo and the prompt."""
        if "\n" in line or "\r" in line:
            raise ValueError(f"one VTY line at a time: {line!r}")
        self._sock.sendall(line.encode("ascii") + b"\n")
        text = self._read_until_prompt()
        lines = text.split("\r\n")
        if lines and lines[0].strip() == line.strip():
            lines = lines[1:]  # the echo
        return "\n".join(lines[:-1]).strip()  # drop the prompt line

    def _read_until_prompt(self) -> str:
        deadline = time.monotonic() + self.timeout
        data = b""
        while not _PROMPT.search(data):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no VTY prompt within {self.timeout} s; got {data!r}")
            self._sock.settimeout(remaining)
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"VTY closed the connection; got {data!r}")
            data = _TELNET_IAC.sub(b"", data + chunk)
        return data.decode("utf-8", "replace")


class OsmoHlr:
    """A real ``osmo-hlr`` process with D-GSM mslookup (mDNS server and client) enabled.

    ``client_timeout_ms`` is how long OsmoHLR's own mslookup client waits for a remote home
    HLR (``gsup.hlr``) before it rejects a Location Updating for an IMSI it does not know
    (OsmoHLR's default: 2000 ms). ``ipa_name`` is this HLR's GSUP IPA name (D-GSM wants one
    per site). Ports: see the module docstring.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        mdns_group: str = "239.192.23.42",
        mdns_port: int = 4266,
        suffix: str = "mdns.osmocom.org",
        services: Mapping[str, tuple[str, int]] = DEFAULT_SERVICES,
        gsup_port: int = GSUP_PORT,
        vty_port: int = VTY_PORT,
        ctrl_port: int = CTRL_PORT,
        bind_ip: str = "127.0.0.1",
        ipa_name: str | None = None,
        client_timeout_ms: int | None = None,
        binary: str | None = None,
        netns: Netns | None = None,
        distro: Distro = HOST,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        command_timeout: float = 5.0,
    ) -> None:
        if gsup_port != GSUP_PORT:
            raise ValueError(f"OsmoHLR's GSUP port cannot be configured (always {GSUP_PORT}); "
                             "use another bind_ip or network namespace instead")
        if not ipaddress.ip_address(mdns_group).is_multicast:
            raise ValueError(f"not a multicast group: {mdns_group!r}")
        if ipaddress.ip_address(bind_ip).version != 4:
            raise ValueError(f"OsmoHLR 1.5.0 binds GSUP/VTY/CTRL on IPv4 only: {bind_ip!r}")
        for port in (mdns_port, vty_port, ctrl_port):
            _check_port(port)
        if not _DOMAIN.fullmatch(suffix):
            raise ValueError(f"bad mDNS domain suffix: {suffix!r}")
        if client_timeout_ms is not None and not 1 <= client_timeout_ms <= 100000:
            raise ValueError(f"client_timeout_ms out of range 1..100000: {client_timeout_ms}")
        if ipa_name is not None and not _IPA_NAME.fullmatch(ipa_name):
            raise ValueError(f"bad IPA name: {ipa_name!r}")
        for name, (ip, port) in services.items():
            if not _SERVICE.fullmatch(name):
                raise ValueError(f"bad mslookup service name: {name!r}")
            ipaddress.ip_address(ip)
            _check_port(port)

        self.workdir = Path(workdir)
        self.mdns_group = mdns_group
        self.mdns_port = mdns_port
        self.suffix = suffix
        self.services: dict[str, tuple[str, int]] = dict(services)
        self.gsup_port = gsup_port
        self.vty_port = vty_port
        self.ctrl_port = ctrl_port
        self.bind_ip = bind_ip
        self.ipa_name = ipa_name
        self.client_timeout_ms = client_timeout_ms
        self.binary = binary
        self.netns = netns
        self.distro = distro
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.command_timeout = command_timeout

        self.config_path = self.workdir / "osmo-hlr.cfg"
        self.db_path = self.workdir / "hlr.db"
        self.log_path = self.workdir / "osmo-hlr.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    # -- life cycle ---------------------------------------------------------------------

    def config_text(self) -> str:
        """The osmo-hlr.cfg this peer writes (VTY syntax of OsmoHLR 1.5.0, also 1.9.4's)."""
        vty_bind = self.bind_ip if self.vty_port == VTY_PORT else f"{self.bind_ip} {self.vty_port}"
        ctrl_bind = (self.bind_ip if self.ctrl_port == CTRL_PORT
                     else f"{self.bind_ip} {self.ctrl_port}")
        lines = [
            "! written by dgsm_integrations.lab.osmohlr",
            "log stderr",
            " logging filter all 1",
            " logging color 0",
            " logging print category 1",
            " logging print level 1",
            " logging print file basename",
            " logging print extended-timestamp 1",
            " logging level set-all notice",
            " logging level main info",
            " logging level lu debug",
            " logging level mslookup debug",
            " logging level dgsm debug",
            " logging level lgsup info",
            "line vty",
            f" bind {vty_bind}",
            "ctrl",
            f" bind {ctrl_bind}",
            "hlr",
            " gsup",
            f"  bind ip {self.bind_ip}",
        ]
        if self.ipa_name is not None:
            lines.append(f"  ipa-name {self.ipa_name}")
        lines += [
            "mslookup",
            f" mdns bind {self.mdns_group} {self.mdns_port}",
            f" mdns domain-suffix {self.suffix}",
            " server",
        ]
        lines += [f"  service {name} at {ip} {port}" for name, (ip, port) in self.services.items()]
        if self.client_timeout_ms is not None:
            lines += [" client", f"  timeout {self.client_timeout_ms}"]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        if self._proc is not None:
            raise OsmoHlrError("already started")
        binary = self.binary or self.distro.need("osmo-hlr", "osmo-hlr")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.distro.check_visible(self.workdir)
        self.config_path.write_text(self.config_text())
        self._log_file = self.log_path.open("wb")
        try:
            argv = self.distro.argv(
                [binary, "-c", str(self.config_path), "-l", str(self.db_path)])
            self._proc = subprocess.Popen(
                self.netns.argv(argv) if self.netns is not None else argv,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
            )
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Terminate OsmoHLR (SIGTERM, then SIGKILL after ``stop_timeout``). Idempotent."""
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=self.stop_timeout)
        finally:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @contextlib.contextmanager
    def _inside(self) -> Iterator[None]:
        """Open sockets to this HLR from its namespace (a lab village), if it has one."""
        if self.netns is None:
            yield
        else:
            with self.netns.entered():
                yield

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _wait_ready(self) -> None:
        """Poll until the VTY greets us (OsmoHLR's main loop runs, all sockets are bound)."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self._proc is not None
            rc = self._proc.poll()
            if rc is not None:
                hint = ""
                if (self.vty_port, self.ctrl_port) != (VTY_PORT, CTRL_PORT):
                    hint = (" (non-default VTY/CTRL ports need an OsmoHLR that accepts "
                            "'bind IP PORT': 1.9.4 does, 1.5.0 does not)")
                raise OsmoHlrError(f"osmo-hlr exited with status {rc} during start-up{hint}"
                                   f"{self._log_tail()}")
            self._check_bound_ports()
            remaining = deadline - time.monotonic()
            try:
                with self._inside():
                    vty = _Vty(self.bind_ip, self.vty_port,
                               timeout=max(0.05, min(1.0, remaining)))
                    vty.close()
                    socket.create_connection((self.bind_ip, self.ctrl_port), timeout=1.0).close()
                return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise OsmoHlrError(f"osmo-hlr not ready within {self.start_timeout} s"
                                   f"{self._log_tail()}")
            time.sleep(0.02)  # poll interval, not a wait for readiness

    def _check_bound_ports(self) -> None:
        """Fail fast when the binary bound another VTY/CTRL port than the one we asked for."""
        text = self.log_text()
        for what, pattern, port in (("VTY", _LOG_VTY, self.vty_port),
                                    ("CTRL", _LOG_CTRL, self.ctrl_port)):
            match = pattern.search(text)
            if match and int(match.group(2)) != port:
                raise OsmoHlrError(
                    f"this osmo-hlr ignores the configured {what} port {port} and bound "
                    f"{match.group(1)} {match.group(2)} (OsmoHLR 1.5.0 has fixed ports); use "
                    f"another bind_ip or network namespace instead{self._log_tail()}")

    # -- debugging ----------------------------------------------------------------------

    def log_text(self) -> str:
        """Everything osmo-hlr logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _log_tail(self, lines: int = 40) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return f"\n--- {self.log_path} (last {len(tail)} lines) ---\n" + "\n".join(tail)

    # -- VTY ----------------------------------------------------------------------------

    def vty(self, *commands: str) -> list[str]:
        """Run VTY commands in the ``enable`` node; return each command's output."""
        self._require_running()
        with self._inside():
            session = _Vty(self.bind_ip, self.vty_port, timeout=self.command_timeout)
        try:
            session.command("enable")
            return [session.command(command) for command in commands]
        finally:
            session.close()

    def create_subscriber(self, imsi: str, msisdn: str) -> None:
        """Provision a subscriber (CS and PS access allowed, no auth data) through the VTY."""
        _check_digits("IMSI", imsi, 6, 15)
        _check_digits("MSISDN", msisdn, 1, 15)
        created, updated = self.vty(f"subscriber imsi {imsi} create",
                                    f"subscriber imsi {imsi} update msisdn {msisdn}")
        if "% Created subscriber" not in created:
            raise OsmoHlrError(f"creating IMSI {imsi} failed: {created!r}")
        if "% Updated subscriber" not in updated:
            raise OsmoHlrError(f"setting MSISDN {msisdn} for IMSI {imsi} failed: {updated!r}")

    def show_subscriber(self, imsi: str) -> str:
        _check_digits("IMSI", imsi, 6, 15)
        return self.vty(f"show subscriber imsi {imsi}")[0]

    # -- GSUP ---------------------------------------------------------------------------

    def gsup_client(self, *, unit_name: str = DEFAULT_UNIT_NAME) -> GsupClient:
        """An unconnected GSUP client for this HLR (use it as a context manager)."""
        return GsupClient(self.bind_ip, self.gsup_port, unit_name=unit_name,
                          timeout=self.command_timeout)

    def location_update(
        self, imsi: str, *, unit_name: str = DEFAULT_UNIT_NAME
    ) -> LocationUpdateResult:
        """A real CS Location Updating over GSUP, as the MSC/VLR named ``unit_name``."""
        self._require_running()
        client = self.gsup_client(unit_name=unit_name)
        with self._inside():
            client.connect()
        with client:
            return client.update_location(imsi, cn_domain=CnDomain.CS)

    def purge_ms(self, imsi: str, *, unit_name: str = DEFAULT_UNIT_NAME) -> None:
        """A GSUP Purge MS (CS), as an MSC sends when it drops a detached subscriber."""
        self._require_running()
        client = self.gsup_client(unit_name=unit_name)
        with self._inside():
            client.connect()
        with client:
            client.purge_ms(imsi, cn_domain=CnDomain.CS)

    # -- test helpers -------------------------------------------------------------------

    def backdate_location_update(self, imsi: str, seconds: int) -> None:
        """Make the last CS Location Updating look ``seconds`` old (edits the HLR database).

        OsmoHLR reads ``last_lu_seen`` from its database for every mslookup request, so the
        next answer carries the new age; no restart needed.
        """
        _check_digits("IMSI", imsi, 6, 15)
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        db = sqlite3.connect(self.db_path, timeout=self.command_timeout)
        try:
            with db:
                cursor = db.execute(
                    "UPDATE subscriber SET last_lu_seen = datetime('now', ?) WHERE imsi = ?",
                    (f"-{seconds} seconds", imsi))
            if cursor.rowcount != 1:
                raise OsmoHlrError(f"no subscriber with IMSI {imsi} in {self.db_path}")
        finally:
            db.close()

    def _require_running(self) -> None:
        if not self.running:
            raise OsmoHlrError(f"osmo-hlr is not running{self._log_tail()}")


def _check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise ValueError(f"port out of range: {port}")


def _check_digits(what: str, value: str, shortest: int, longest: int) -> None:
    if not (_DIGITS.fullmatch(value) and shortest <= len(value) <= longest):
        raise ValueError(f"{what} must be {shortest}-{longest} digits: {value!r}")
