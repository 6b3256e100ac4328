"""Accepting connections so that no client can stop a server, exhaust it, or flood its log.

Shared by the long-lived servers (``dgsm-fastagi``, ``dgsm-fs-esl``, ``dgsm-mslookup -d``).
asyncio's own ``start_server`` is not used: on EMFILE ("too many open files") it logs one
traceback per attempt, up to a backlog's worth each time the socket is readable (12,526
log lines for 600 idle connections with a limit of 256), and ``loop.sock_accept`` raises it
to the caller. :class:`Listener` instead:

- caps the connections it holds (``max_connections``, from :func:`connection_budget`: below
  the open-file limit the process really has, which :func:`raise_nofile_limit` first raises
  to the hard limit);
- holds a new connection without a task until the peer sends its first byte (after an
  optional ``greeting`` that the protocol sends first), and closes it if nothing arrives
  within ``first_byte_timeout``; when every slot is taken, the connection that has been
  silent longest is closed to make room, so idle connections cannot lock real clients out
  (a real client speaks at once); only when every slot is taken by a connection that has
  spoken is the new one refused (accepted and closed at once: the client reads EOF, it does
  not hang);
- on EMFILE/ENFILE/ENOBUFS/ENOMEM stops accepting, logs ONE line for the episode (until
  :data:`EPISODE_GAP` passes without it), closes the longest-silent connection if there is
  one, and accepts again as soon as a connection ends (or after :data:`RETRY_AFTER` at the
  latest);
- rate-limits every per-connection log record (:mod:`._ratelimit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import socket
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, fields
from typing import Any

from ._ratelimit import LogLimiter

__all__ = [
    "FD_RESERVE",
    "Listener",
    "ListenerStats",
    "bind_tcp",
    "connection_budget",
    "raise_nofile_limit",
    "start_stream_server",
]

#: File descriptors kept free beyond the connections (resolver socket, logs, refusals...).
FD_RESERVE = 32
#: While out of file descriptors, try to accept again at least this often (seconds).
RETRY_AFTER = 0.5
#: Running out of file descriptors again within this many seconds is the same episode.
EPISODE_GAP = 10.0
_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

Handler = Callable[[socket.socket, Any], Coroutine[Any, Any, None]]


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the (soft, hard) in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft, hard
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def open_fds() -> int:
    """File descriptors this process has open now."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # listdir's own
    except OSError:
        return 16


def connection_budget(wanted: int, what: str, log: logging.Logger) -> int:
    """How many connections may be held at once: ``wanted``, or fewer if the open-file
    limit (raised to the hard limit first) cannot hold them; says so once, with the fix."""
    soft, hard = raise_nofile_limit()
    if soft == resource.RLIM_INFINITY:
        return wanted
    budget = soft - open_fds() - FD_RESERVE
    if budget < 1:
        raise OSError(errno.EMFILE, f"the open-file limit ({soft}) leaves no room for "
                      f"connections; raise it (systemd: LimitNOFILE=65536, shell: ulimit -n)")
    if budget < wanted:
        log.warning("%s: the open-file limit (%d, hard %d) allows only %d connections at "
                    "once (%d wanted); beyond, new ones are refused. Raise it (systemd: "
                    "LimitNOFILE=65536) or lower the setting", what, soft, hard, budget, wanted)
        return budget
    return wanted


@dataclass
class ListenerStats:
    """Counters of one listener (monotonic)."""

    accepted: int = 0
    #: refused at once: every slot taken by a connection that is already talking
    refused: int = 0
    #: closed to make room: silent since they connected
    evicted: int = 0
    #: closed: nothing received within first_byte_timeout
    silent: int = 0
    #: closed by the peer before sending anything
    gone_early: int = 0
    #: times accepting stopped because the process was out of file descriptors
    fd_exhausted: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class _Waiting:
    conn: socket.socket
    peer: Any
    since: float


class Listener:
    """Accept on ``socks`` and run ``handler(conn, peer)`` as a task per connection.

    The handler owns the connection (it must close it). ``greeting`` is sent as soon as a
    connection is accepted; with ``first_byte_timeout``, the handler starts only once the
    peer has sent something (data waits in the socket for the handler). ``admit``, if given,
    is asked before the greeting: False closes the new connection at once (the caller counts
    and logs that refusal).
    """

    def __init__(self, socks: list[socket.socket], handler: Handler, *, name: str,
                 log: logging.Logger, max_connections: int,
                 first_byte_timeout: float | None = None, greeting: bytes = b"",
                 admit: Callable[[], bool] | None = None) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.sockets = socks
        self.name = name
        self.max_connections = max_connections
        self.first_byte_timeout = first_byte_timeout
        self.greeting = greeting
        self.admit = admit
        self.stats = ListenerStats()
        self._handler = handler
        self._log = log
        self._limited = LogLimiter(log)
        self._loop = asyncio.get_running_loop()
        self._waiting: dict[int, _Waiting] = {}  # by fd, oldest first
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._accepting = False
        self._out_of_fds_at: float | None = None
        self._closed = False

    @property
    def active(self) -> int:
        """Connections held now: silent ones and those being served."""
        return len(self._waiting) + len(self._tasks)

    def start(self) -> None:
        self._resume()

    def close(self) -> None:
        """Stop accepting, close the listening sockets and every still-silent connection.
        Connections being served are left to their handlers."""
        self._closed = True
        self._pause()
        for sock in self.sockets:
            sock.close()
        for fd in list(self._waiting):
            self._drop(fd)
        for timer in (self._sweep, self._retry):
            if timer is not None:
                timer.cancel()
        self._limited.flush()

    async def cancel_all(self, wait: float = 5.0) -> None:
        """Cancel every connection being served and wait (bounded) for them to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=wait)

    async def wait_closed(self) -> None:
        """For the asyncio.Server interface: closing is immediate."""

    # -- accepting -------------------------------------------------------------------------

    def _resume(self) -> None:
        if self._accepting or self._closed:
            return
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        for sock in self.sockets:
            self._loop.add_reader(sock.fileno(), self._on_readable, sock)
        self._accepting = True

    def _pause(self) -> None:
        if not self._accepting:
            return
        for sock in self.sockets:
            if sock.fileno() >= 0:
                self._loop.remove_reader(sock.fileno())
        self._accepting = False

    def _on_readable(self, sock: socket.socket) -> None:
        for _ in range(128):
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRORS:
                    self._exhausted(exc)
                    return
                # ECONNABORTED and friends: that one connection is gone, go on
                self._limited.info("accept error", "%s: accept failed: %s", self.name, exc)
                continue
            self._accepted(conn, peer)

    def _exhausted(self, exc: OSError) -> None:
        self._pause()
        now = self._loop.time()
        last, self._out_of_fds_at = self._out_of_fds_at, now
        if last is None or now - last > EPISODE_GAP:
            self.stats.fd_exhausted += 1
            soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            self._log.warning(
                "%s: out of file descriptors (%s) with %d connections open, limit %d: not "
                "accepting until one closes; raise LimitNOFILE (one line per episode)",
                self.name, os.strerror(exc.errno or errno.EMFILE), self.active, soft)
        if self._evict():
            self._loop.call_soon(self._resume)
        elif self._retry is None and not self._closed:
            self._retry = self._loop.call_later(RETRY_AFTER, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self._resume()

    def _accepted(self, conn: socket.socket, peer: Any) -> None:
        self.stats.accepted += 1
        if self.active >= self.max_connections and not self._evict():
            self.stats.refused += 1
            self._limited.warning("refused", "%s: refused a connection from %s: %d "
                                  "connections in progress (the maximum)", self.name,
                                  _peer(peer), self.active)
            conn.close()
            return
        if self.admit is not None and not self.admit():
            conn.close()
            return
        try:
            conn.setblocking(False)
            if self.greeting and conn.send(self.greeting) != len(self.greeting):
                raise OSError(errno.EAGAIN, "greeting did not fit the socket buffer")
        except OSError as exc:
            self._limited.info("greeting", "%s: closed a connection from %s: %s", self.name,
                               _peer(peer), exc)
            conn.close()
            return
        if self.first_byte_timeout is None:
            self._serve(conn, peer)
            return
        fd = conn.fileno()
        self._waiting[fd] = _Waiting(conn, peer, self._loop.time())
        self._loop.add_reader(fd, self._first_byte, fd)
        if self._sweep is None:
            self._arm_sweep()

    # -- connections that have not spoken yet ----------------------------------------------

    def _first_byte(self, fd: int) -> None:
        waiting = self._waiting.pop(fd, None)
        self._loop.remove_reader(fd)
        if waiting is None:
            return
        conn = waiting.conn
        try:
            data = conn.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            self._waiting[fd] = waiting  # spurious wake-up: keep waiting (keeps its age)
            self._loop.add_reader(fd, self._first_byte, fd)
            return
        except OSError:
            data = b""
        if not data:
            self.stats.gone_early += 1
            conn.close()
            self._resume()
            return
        self._serve(conn, waiting.peer)

    def _drop(self, fd: int) -> _Waiting | None:
        waiting = self._waiting.pop(fd, None)
        if waiting is not None:
            self._loop.remove_reader(fd)
            waiting.conn.close()
        return waiting

    def _evict(self) -> bool:
        """Close the connection that has been silent the longest, if there is one.

        One whose first bytes arrived but were not looked at yet (same loop pass) is not
        silent: it is served instead, and the next one is looked at (a few at most)."""
        for _ in range(16):
            if not self._waiting:
                return False
            fd, oldest = next(iter(self._waiting.items()))
            try:
                data = oldest.conn.recv(1, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                break  # silent indeed
            except OSError:
                data = b""
            if not data:  # the peer is gone already: that frees a slot too
                self._drop(fd)
                self.stats.gone_early += 1
                return True
            self._first_byte(fd)  # it has spoken: serve it, look at the next one
        else:
            return False
        if not self._waiting:
            return False
        self._drop(fd)
        self.stats.evicted += 1
        self._limited.info("evicted", "%s: closed a silent connection from %s to make room "
                           "(%d connections in progress)", self.name, _peer(oldest.peer),
                           self.active)
        return True

    def _arm_sweep(self) -> None:
        self._sweep = None
        if not self._waiting or self.first_byte_timeout is None:
            return
        oldest = next(iter(self._waiting.values()))
        self._sweep = self._loop.call_at(oldest.since + self.first_byte_timeout, self._expire)

    def _expire(self) -> None:
        assert self.first_byte_timeout is not None
        now = self._loop.time()
        while self._waiting:
            fd, oldest = next(iter(self._waiting.items()))
            if now - oldest.since < self.first_byte_timeout - 0.001:
                break
            self._drop(fd)
            self.stats.silent += 1
            self._limited.info("silent", "%s: closed a connection from %s: nothing received "
                               "within %.1f s", self.name, _peer(oldest.peer),
                               self.first_byte_timeout)
        self._arm_sweep()
        self._resume()

    # -- connections being served ----------------------------------------------------------

    def _serve(self, conn: socket.socket, peer: Any) -> None:
        task = self._loop.create_task(self._handler(conn, peer))
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._limited.log(logging.ERROR, "handler", "%s: connection handler failed",
                              self.name, exc_info=task.exception())
        self._resume()


def _peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer) or "-"


async def bind_tcp(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening TCP sockets for every address of ``host`` (as asyncio.start_server)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    seen: set[tuple[int, Any]] = set()
    try:
        for family, kind, proto, _name, addr in infos:
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    if not socks:
        raise OSError(f"no address to listen on for {host!r}")
    return socks


async def start_stream_server(
    client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                  Awaitable[None]],
    host: str, port: int, *, name: str, log: logging.Logger, max_connections: int,
    first_byte_timeout: float | None, greeting: bytes = b"", backlog: int = 1024,
    admit: Callable[[], bool] | None = None,
) -> Listener:
    """Like ``asyncio.start_server`` (streams per connection), on a :class:`Listener`."""

    async def handler(conn: socket.socket, peer: Any) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=conn)
        except OSError:
            conn.close()
            return
        try:
            await client_connected_cb(reader, writer)
        finally:
            writer.close()

    listener = Listener(await bind_tcp(host, port, backlog), handler, name=name, log=log,
                        max_connections=max_connections,
                        first_byte_timeout=first_byte_timeout, greeting=greeting,
                        admit=admit)
    listener.start()
    return listener
