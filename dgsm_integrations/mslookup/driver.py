"""What every driver of the :class:`~.engine.Engine` does with a socket: read it, send.

Shared by the asyncio driver (:mod:`.aio`) and the thread / ``select()`` driver
(:mod:`.blocking`, which the per-call Asterisk AGI script also runs). Imports no asyncio,
threading or logging.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

from .engine import DEFAULT_RESEND, Engine, Settings
from .model import Network
from .pacing import DEFAULT_RATE
from .query import DEFAULT_SUFFIX
from .transport import DEFAULT_GROUP_V4, DEFAULT_PORT, SO_RXQ_OVFL, MulticastConfig

__all__ = ["READ_BATCH", "configure", "read_socket", "send_due"]

_ANCDATA = socket.CMSG_SPACE(4)
#: Datagrams read per wake-up at most, so that one flood cannot starve everything else.
READ_BATCH = 512


def configure(
    *,
    group: str = DEFAULT_GROUP_V4,
    port: int = DEFAULT_PORT,
    interface: str | None = None,
    ttl: int = 1,
    suffix: str = DEFAULT_SUFFIX,
    min_delay: float = 1.0,
    timeout: float | None = None,
    resend: int = DEFAULT_RESEND,
    resend_interval: float | None = None,
    trusted: Iterable[str | Network] | None = None,
    allow_loopback: bool = False,
    send_rate: float = DEFAULT_RATE,
) -> tuple[MulticastConfig, Settings]:
    """A resolver's keyword arguments, validated: where its socket is, and its settings."""
    config = MulticastConfig(group, port, interface, ttl)
    settings = Settings.of(suffix=suffix, min_delay=min_delay, timeout=timeout,
                           resend=resend, resend_interval=resend_interval, trusted=trusted,
                           allow_loopback=allow_loopback, send_rate=send_rate)
    return config, settings


def read_socket(sock: socket.socket, engine: Engine, now: float,
                limit: int = READ_BATCH) -> int:
    """Give the engine every datagram waiting in ``sock`` (at most ``limit``), as arrived by
    ``now``, and the kernel's count of drops with them. Returns how many were read."""
    recvmsg, receive = sock.recvmsg, engine.receive
    for n in range(limit):
        try:
            data, ancdata, _flags, addr = recvmsg(2048, _ANCDATA)
        except (BlockingIOError, InterruptedError):
            return n
        except OSError:
            return n  # e.g. ICMP errors queued on the socket: nothing to read
        if ancdata:
            level, kind, value = ancdata[0]
            if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(value) >= 4:
                engine.kernel_drops(int.from_bytes(value[:4], "little"))
        host = addr[0]
        receive(data, host if "%" not in host else host.split("%", 1)[0], now)
    return limit


def send_due(sock: socket.socket, engine: Engine, now: float,
             destination: tuple[str, int] | tuple[str, int, int, int]) -> int:
    """Send what the engine lets leave now; returns how many datagrams it handed out."""
    out = engine.due(now)
    sendto = sock.sendto
    for flight, datagram in out:
        try:
            sendto(datagram, destination)
        except OSError as exc:
            engine.send_failed(flight, str(exc.strerror or exc))
    return len(out)
