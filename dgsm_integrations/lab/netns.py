"""Network namespaces for the lab, without ``ip netns`` (works inside ``unshare -rn`` too).

A :class:`Netns` is held open by a small child process (``unshare -n sleep``); programs run
in it through ``nsenter --net=/proc/PID/ns/net``, and in-process code enters it with
:meth:`Netns.entered`, which switches only the *calling thread* (``setns(2)`` through ctypes)
and switches back on exit. A socket keeps the namespace it was created in, so a server or a
resolver opened inside ``entered()`` lives in that village for good. When the holder exits,
the namespace goes away with the last process or socket that uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Coroutine, Iterator, Sequence
from typing import IO, Any, TypeVar

from ..errors import DgsmError

__all__ = ["CLONE_NEWNET", "LabError", "Netns", "NsLoop", "in_private_netns", "need",
           "terminate"]

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
_libc: Any = None


class LabError(DgsmError):
    """The lab cannot be built or used here; the message says what to do."""


def need(program: str, package: str) -> str:
    """The path of ``program`` or a LabError naming the Debian package to install."""
    path = shutil.which(program)
    if path is None:
        raise LabError(f"{program} not found: apt-get install {package}")
    return path


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise LabError(f"setns(CLONE_NEWNET) failed: {os.strerror(err)}")


def in_private_netns() -> bool:
    """True if this process sees no interface but ``lo`` (a namespace of our own)."""
    return all(name == "lo" for _, name in socket.if_nameindex())


class Netns:
    """One network namespace, held by a child process until :meth:`close`."""

    def __init__(self, name: str) -> None:
        self.name = name
        unshare = need("unshare", "util-linux")
        self._holder = subprocess.Popen(
            [unshare, "-n", "sh", "-c", "echo ready; exec sleep 2147483647"],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
        assert self._holder.stdout is not None
        if self._holder.stdout.readline() != b"ready\n":
            self._holder.wait(5)
            raise LabError(f"cannot create network namespace {name!r} (unshare -n failed): "
                           "run the lab as root or inside 'unshare -rn'")
        self.pid = self._holder.pid
        self.path = f"/proc/{self.pid}/ns/net"
        self._procs: list[subprocess.Popen[bytes]] = []

    # -- running things in it ------------------------------------------------------------

    def argv(self, command: Sequence[str]) -> list[str]:
        """``command`` wrapped to run in this namespace."""
        return ["nsenter", f"--net={self.path}", "--", *command]

    def run(self, command: Sequence[str], *, check: bool = True,
            timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
        """Run a short command in this namespace; a failure raises LabError with its stderr."""
        proc = subprocess.run(self.argv(command), capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise LabError(f"[{self.name}] {' '.join(command)}: "
                           f"{(proc.stderr or proc.stdout).strip()}")
        return proc

    def popen(self, command: Sequence[str], *, log: IO[bytes] | None = None,
              cwd: str | None = None, env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        """Start a long-running program in this namespace; stopped by :meth:`close`."""
        proc = subprocess.Popen(
            self.argv(command), stdin=subprocess.DEVNULL, stdout=log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if log else subprocess.DEVNULL, cwd=cwd, env=env,
            start_new_session=True)
        self._procs.append(proc)
        return proc

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Switch the calling thread into this namespace (sockets made here stay here)."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(self.path, os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(target)
            os.close(own)

    # -- life cycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Stop every program started here, then the holder: the namespace is gone."""
        for proc in self._procs:
            _stop(proc)
        self._procs.clear()
        _stop(self._holder)

    @property
    def alive(self) -> bool:
        return self._holder.poll() is None


def terminate(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """End one child: SIGTERM, then SIGKILL after ``timeout``; both waits bounded."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()


class NsLoop:
    """An asyncio event loop on a thread of its own that lives in one namespace for good.

    Everything that coroutines run here open — resolvers, servers, SMPP or SIP clients,
    connections made at any later time — is in that namespace. ``run(coro)`` waits for the
    result from any other thread; ``start(coro)`` leaves it running.
    """

    def __init__(self, ns: Netns) -> None:
        self.ns = ns
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=f"lab-{ns.name}", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise LabError(f"cannot run a loop in {ns.name}: {self._error}")

    def _main(self) -> None:
        try:
            fd = os.open(self.ns.path, os.O_RDONLY)
            try:
                _setns(fd)  # this thread only, and for good
            finally:
                os.close(fd)
        except BaseException as exc:  # reported to the constructor
            self._error = exc
            self._ready.set()
            return
        asyncio.set_event_loop(self.loop)
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run ``coro`` on this loop and wait (bounded) for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def run_async(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """The same, awaited from another event loop."""
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return await asyncio.wait_for(asyncio.wrap_future(fut), timeout)

    def close(self) -> None:
        if self._thread.is_alive():
            async def cancel_all() -> None:
                me = asyncio.current_task()
                tasks = [t for t in asyncio.all_tasks() if t is not me]
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                self.run(cancel_all(), 10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
