"""A real Asterisk 22 (Debian sid's package, in the sid root) with our sample configuration.

    with RealAsterisk(workdir, distro, netns=village.ns, sip_bind=(addr, 5060),
                      fastagi=(addr, 4573), mesh="198.18.23.0/24") as ast:
        ...                                  # SIP calls to addr:5060 run asterisk/extensions.conf
        ast.rx("core show channels")        # the CLI, over Asterisk's control socket
        ast.messages()                       # messages.log, as Debian's logger.conf writes it

``asterisk/extensions.conf`` and ``asterisk/pjsip.conf`` are used as shipped: only the
addresses they mark for the operator to change are replaced (the SIP bind, the mesh network,
the FastAGI address, osmo-sip-connector's address), each of which must occur exactly once.
For the tests' callers endpoints are appended (:data:`CALLERS`): calls from 127.0.0.1 match
the shipped ``msc`` endpoint and land in ``dgsm-out`` (FastAGI); from 127.0.0.2 in
``dgsm-out-local`` (the local AGI script); 127.0.0.3 and 127.0.0.4 reach copies of those two
without their first line, the dialplan's own number check, so the AGI's check is tested too.

The rest of what an installed Asterisk has is written here, small: ``asterisk.conf`` with
every directory under ``workdir`` (the control socket under a short temporary directory: a
Unix socket path has at most 107 bytes), ``modules.conf`` loading only what these contexts use,
``logger.conf`` with Debian's stock ``messages.log => notice,warning,error`` (plus a
``full.log`` with verbose for debugging). Asterisk's AGI directory holds a link to the
project's ``dgsm-agi`` in a venv in the root (this checkout's,
``/opt/dgsm-integrations-<key>``, pip-installed by .ci/bootstrap.sh), as docs/asterisk.md
tells operators; the script finds its settings through ``DGSM_AGI_CONFIG``.

Asterisk runs as root inside our user namespace and chroot, in the village's network
namespace; ``stop()`` asks it to stop, then terminates and kills it (bounded).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

from .distro import Distro
from .netns import LabError, Netns, terminate

__all__ = ["RealAsterisk", "RealAsteriskError", "render_shipped", "shipped"]

REPO = Path(__file__).resolve().parents[2]


#: What the shipped contexts use (chan_pjsip and what it needs, AGI, Dial, Log, REGEX).
MODULES = (
    "res_sorcery_config", "res_sorcery_memory", "res_sorcery_astdb", "res_timing_timerfd",
    "res_pjproject", "res_pjsip", "res_pjsip_pubsub", "res_pjsip_session",
    "res_pjsip_sdp_rtp", "res_pjsip_endpoint_identifier_ip",
    "res_pjsip_endpoint_identifier_user", "res_pjsip_nat", "res_pjsip_caller_id",
    "res_rtp_asterisk", "chan_pjsip", "res_agi", "pbx_config", "app_dial", "app_verbose",
    "func_strings", "func_logic", "func_channel", "codec_ulaw", "codec_alaw", "codec_gsm",
    "bridge_simple", "bridge_native_rtp", "res_speech", "res_clioriginate",
)


#: (endpoint, context, caller's source address): the shipped msc endpoint, then the lab's.
#: The "unguarded" contexts are the shipped ones without their first check (a plain number
#: only), so that a test sees what the AGI itself makes of what Asterisk hands it.
CALLERS = (
    ("msc", "dgsm-out", "127.0.0.1"),
    ("phones-local", "dgsm-out-local", "127.0.0.2"),
    ("phones-unguarded", "dgsm-out-unguarded", "127.0.0.3"),
    ("phones-local-unguarded", "dgsm-out-local-unguarded", "127.0.0.4"),
)
_GUARD = 'exten => _X.,1,GotoIf($[${REGEX("^[0-9]{1,15}$" ${EXTEN})}]?lookup)'


def _unguarded(extensions: str, context: str) -> str:
    """A copy of ``[context]`` named ``[context-unguarded]`` that skips the number check."""
    start = extensions.index(f"\n[{context}]\n") + 1
    end = extensions.find("\n[", start + 1)
    block = extensions[start:end if end >= 0 else None]
    if block.count(_GUARD) != 1:
        raise LabError(f"[{context}] in asterisk/extensions.conf no longer starts with the "
                       "number check: update dgsm_integrations/lab/asterisk.py with it")
    block = block.replace(_GUARD, "exten => _X.,1,Goto(lookup)")
    return "\n; --- added by the lab\n" + block.replace(f"[{context}]",
                                                         f"[{context}-unguarded]", 1)


class RealAsteriskError(LabError):
    """Asterisk did not start or stopped answering; carries the end of its output."""


def shipped(name: str) -> str:
    """The text of a sample file in ``asterisk/`` (the repository's, as an operator gets it)."""
    path = REPO / "asterisk" / name
    if not path.is_file():
        raise LabError(f"{path} not found: the lab runs from a checkout of dgsm-integrations")
    return path.read_text()


def render_shipped(text: str, replace: Mapping[str, str]) -> str:
    """``text`` with each key replaced; every key must occur exactly once (no silent drift)."""
    for old, new in replace.items():
        count = text.count(old)
        if count != 1:
            raise LabError(f"the sample config has {count} occurrences of {old!r}, expected 1: "
                           "update dgsm_integrations/lab/asterisk.py with the sample")
        text = text.replace(old, new)
    return text


class RealAsterisk:
    """One Asterisk process from ``distro`` (the sid root), in ``netns``."""

    def __init__(self, workdir: Path, distro: Distro, *, netns: Netns | None,
                 sip_bind: tuple[str, int], fastagi: tuple[str, int], mesh: str,
                 msc: tuple[str, int] = ("127.0.0.1", 5069),
                 agi_settings: str = "", start_timeout: float = 30.0) -> None:
        if distro.root is None or distro.which("asterisk") is None:
            raise RealAsteriskError(f"no Asterisk in {distro.name}: run .ci/bootstrap.sh as "
                                    "root to make the Debian sid root")
        self.root: Path = distro.root
        self.workdir = Path(workdir)
        self.distro, self.netns = distro, netns
        self.sip_bind, self.fastagi, self.mesh, self.msc = sip_bind, fastagi, mesh, msc
        self.agi_settings = agi_settings
        self.start_timeout = start_timeout
        self.etc = self.workdir / "etc"
        self.logdir = self.workdir / "log"
        self.rundir = Path(tempfile.mkdtemp(prefix="ast-"))  # short: the control socket
        self.agi_config = self.workdir / "dgsm-agi.conf"
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    # -- configuration --------------------------------------------------------------------

    def extensions_conf(self) -> str:
        host, port = self.fastagi
        text = render_shipped(shipped("extensions.conf"), {
            "agi://127.0.0.1:4573/": f"agi://{host}:{port}/"})
        return text + "".join(_unguarded(text, name) for name in ("dgsm-out", "dgsm-out-local"))

    def pjsip_conf(self) -> str:
        host, port = self.sip_bind
        text = render_shipped(shipped("pjsip.conf"), {
            "bind = 0.0.0.0:5060": f"bind = {host}:{port}",
            "match = 10.23.0.0/16": f"match = {self.mesh}",
            "contact = sip:127.0.0.1:5069": f"contact = sip:{self.msc[0]}:{self.msc[1]}",
        })
        text += "\n; --- added by the lab: the tests' callers for the other contexts\n"
        for endpoint, context, source in CALLERS[1:]:
            text += (f"[{endpoint}]\ntype = endpoint\ntransport = transport-udp\n"
                     f"context = {context}\ndisallow = all\nallow = gsm,ulaw,alaw\n"
                     f"direct_media = no\n\n[{endpoint}-identify]\ntype = identify\n"
                     f"endpoint = {endpoint}\nmatch = {source}\n\n")
        return text

    def _write_config(self) -> None:
        for d in (self.etc, self.logdir, self.workdir / "lib", self.workdir / "spool",
                  self.workdir / "cache", self.workdir / "agi-bin"):
            d.mkdir(parents=True, exist_ok=True)
        w = self.workdir
        (self.etc / "asterisk.conf").write_text(
            "[directories]\n"
            f"astetcdir => {self.etc}\n"
            "astmoddir => /usr/lib/x86_64-linux-gnu/asterisk/modules\n"
            f"astvarlibdir => {w}/lib\nastdbdir => {w}/lib\nastkeydir => {w}/lib\n"
            "astdatadir => /usr/share/asterisk\n"
            f"astagidir => {w}/agi-bin\nastspooldir => {w}/spool\n"
            f"astrundir => {self.rundir}\nastlogdir => {self.logdir}\n"
            f"astcachedir => {w}/cache\nastsbindir => /usr/sbin\n"
            "[options]\nverbose = 3\nmaxcalls = 500\n")
        (self.etc / "modules.conf").write_text(
            "[modules]\nautoload = no\n" + "".join(f"load = {m}.so\n" for m in MODULES))
        (self.etc / "logger.conf").write_text(
            "[general]\n[logfiles]\n"
            "messages.log => notice,warning,error\n"  # Debian's stock logger.conf
            "full.log => notice,warning,error,verbose\n")
        (self.etc / "extensions.conf").write_text(self.extensions_conf())
        (self.etc / "pjsip.conf").write_text(self.pjsip_conf())
        link = w / "agi-bin" / "dgsm-agi"
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        script = f"{self.distro.project_venv}/bin/dgsm-agi"
        if not (self.root / script.lstrip("/")).exists():
            raise RealAsteriskError(f"{script} is not in the sid root: run .ci/bootstrap.sh "
                                    "(bash .ci/test does) to install this checkout there")
        link.symlink_to(script)  # resolved inside the root, as installed there
        self.agi_config.write_text(self.agi_settings)

    # -- life cycle -----------------------------------------------------------------------

    def _argv(self, *args: str) -> list[str]:
        argv = self.distro.argv(["asterisk", "-C", str(self.etc / "asterisk.conf"), *args])
        return self.netns.argv(argv) if self.netns is not None else argv

    def start(self) -> RealAsterisk:
        if self._proc is not None:
            raise RealAsteriskError("already started")
        self._write_config()
        self._out = (self.workdir / "asterisk.out").open("wb")
        env = dict(os.environ, DGSM_AGI_CONFIG=str(self.agi_config))
        try:
            self._proc = subprocess.Popen(self._argv("-f", "-n"), stdin=subprocess.DEVNULL,
                                          stdout=self._out, stderr=subprocess.STDOUT,
                                          env=env, start_new_session=True)
            self._wait_booted()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_booted(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RealAsteriskError(f"asterisk exited with {self._proc.returncode} at "
                                        f"start{self._tail()}")
            if (self.rundir / "asterisk.ctl").exists():
                out = self._run_rx("core waitfullybooted", timeout=max(1.0, deadline -
                                                                      time.monotonic()))
                if out is not None and "fully booted" in out:
                    return
            if time.monotonic() > deadline:
                raise RealAsteriskError(f"asterisk not booted within {self.start_timeout} s"
                                        f"{self._tail()}")
            time.sleep(0.05)  # poll for the control socket, which has no event of its own

    def _run_rx(self, command: str, timeout: float = 10.0) -> str | None:
        proc = subprocess.run(self._argv("-rx", command), capture_output=True, text=True,
                              timeout=timeout, check=False)
        if proc.returncode != 0:
            return None
        return "\n".join(line for line in proc.stdout.splitlines()
                         if "seeding global EID" not in line)

    def rx(self, command: str, timeout: float = 10.0) -> str:
        """Run one CLI command (``asterisk -rx``) and return what it printed."""
        out = self._run_rx(command, timeout)
        if out is None:
            raise RealAsteriskError(f"asterisk -rx {command!r} failed{self._tail()}")
        return out

    @property
    def version(self) -> str:
        return self.distro.version("asterisk")

    def stop(self) -> None:
        """``core stop now``, then SIGTERM, then SIGKILL, each bounded. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(Exception):
                self._run_rx("core stop now", timeout=5)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                terminate(proc)
        if self._out is not None:
            self._out.close()
            self._out = None
        shutil.rmtree(self.rundir, ignore_errors=True)

    def __enter__(self) -> RealAsterisk:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- what it said ---------------------------------------------------------------------

    def messages(self) -> str:
        """``messages.log``: what an operator with Debian's logger.conf finds."""
        return _read(self.logdir / "messages.log")

    def output(self) -> str:
        """What Asterisk and the AGI scripts it ran wrote to stdout and stderr."""
        return _read(self.workdir / "asterisk.out")

    def full_log(self) -> str:
        return _read(self.logdir / "full.log")

    def _tail(self, lines: int = 30) -> str:
        text = _read(self.workdir / "asterisk.out") + _read(self.logdir / "full.log")
        tail = text.splitlines()[-lines:]
        return "\n--- asterisk output (last lines) ---\n" + "\n".join(tail)

    def lines_matching(self, pattern: str) -> list[str]:
        """Lines of messages.log that match ``pattern`` (a regular expression)."""
        rx = re.compile(pattern)
        return [line for line in self.messages().splitlines() if rx.search(line)]


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
