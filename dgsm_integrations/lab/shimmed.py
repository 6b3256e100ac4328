"""An Osmocom program that needs SCTP, run on a kernel without it: osmo-msc, osmo-stp.

:func:`build_shim` compiles ``nosctp.c`` (an LD_PRELOAD shim of ours, next to this file) with
this host's gcc, once per process, into a temporary directory removed at exit: SCTP sockets
become TCP ones, libsctp's bindx/connectx a plain bind/connect, SCTP socket options no-ops,
and M3UA keeps its message boundaries on the byte stream (the shim's header says how).
:class:`ShimmedProgram` is one such program's life: its config file and log in a work
directory, started (through its :class:`~.distro.Distro`, inside a lab village's namespace
if given) with the shim preloaded, ready when a port of its accepts a connection (polled,
bounded), stopped with :func:`~.netns.terminate`. :mod:`.osmomsc` and :mod:`.osmostp` add
their configuration.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, ClassVar, Self

from .distro import HOST, Distro
from .netns import LabError, Netns, need, terminate

__all__ = ["SHIM_SOURCE", "ShimmedProgram", "build_shim"]

SHIM_SOURCE = Path(__file__).with_name("nosctp.c")
_shim_cache: dict[str, Path] = {}


def build_shim(error: type[LabError] = LabError) -> Path:
    """Compile the SCTP shim once per process; returns the .so path (``error`` if gcc fails)."""
    cached = _shim_cache.get("so")
    if cached is not None and cached.exists():
        return cached
    gcc = need("gcc", "gcc")
    tmp = tempfile.mkdtemp(prefix="dgsm-nosctp-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # loaded by children only
    out = Path(tmp) / "nosctp.so"
    proc = subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-o", str(out), str(SHIM_SOURCE),
                           "-ldl"], check=False, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise error(f"compiling the SCTP shim {SHIM_SOURCE} failed (gcc exit "
                    f"{proc.returncode}; is libc6-dev installed?):\n{proc.stderr[-2000:]}")
    _shim_cache["so"] = out
    return out


class ShimmedProgram:
    """One process of :attr:`program` (Debian package :attr:`package`) with the SCTP shim.

    A subclass gives :meth:`config_text` and :meth:`ready_port` (and may set
    :attr:`new_session`: the child in a session of its own, out of reach of the terminal's
    Ctrl-C, which the lab's own clean-up then handles)."""

    program: ClassVar[str]
    package: ClassVar[str]
    error: ClassVar[type[LabError]] = LabError
    new_session: ClassVar[bool] = False

    def __init__(self, workdir: Path, *, bind_ip: str, netns: Netns | None,
                 binary: str | None, distro: Distro = HOST, start_timeout: float = 10.0) -> None:
        self.workdir = Path(workdir)
        self.bind_ip = bind_ip
        self.netns = netns
        self.binary = binary
        self.distro = distro
        self.start_timeout = start_timeout
        self.config_path = self.workdir / f"{self.program}.cfg"
        self.log_path = self.workdir / f"{self.program}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def config_text(self) -> str:
        raise NotImplementedError

    def ready_port(self) -> tuple[int, str]:
        """The port that accepts connections once the program is up, and its name."""
        raise NotImplementedError

    def start(self) -> None:
        binary = self.binary or self.distro.need(self.program, self.package)
        shim = build_shim(self.error)
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
            start_new_session=self.new_session)
        port, what = self.ready_port()
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self.stop()
                raise self.error(f"{self.program} exited ({code}) at start:\n"
                                 + self.log_tail())
            if self.port_open(port):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise self.error(f"{self.program} {what} port {port} not open after "
                                 f"{self.start_timeout}s:\n" + self.log_tail())
            time.sleep(0.02)  # polling a port that has no event to await

    def port_open(self, port: int) -> bool:
        """Whether ``port`` on the program's address accepts a connection now."""
        ctx = self.netns.entered() if self.netns is not None else contextlib.nullcontext()
        with ctx, contextlib.suppress(OSError), \
                socket.create_connection((self.bind_ip, port), timeout=0.2):
            return True
        return False

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

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _read_log(self) -> str | None:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return None

    def log_text(self) -> str:
        """Everything the program logged so far."""
        return self._read_log() or ""

    def log_tail(self, lines: int = 30) -> str:
        text = self._read_log()
        if text is None:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
