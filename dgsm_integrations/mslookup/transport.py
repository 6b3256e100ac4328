"""Multicast UDP sockets for mslookup, IPv4 and IPv6, on a chosen interface.

Every socket binds the group address and port (as OsmoHLR does, with SO_REUSEADDR so that
several programs on one host share the port), joins the group on one interface, sends through
that interface with the configured TTL / hop limit, and keeps multicast loop-back on so that
sites on the same host (tests, the lab) hear each other.

``interface`` is either an interface name (``lo``, ``eth0``), a local IPv4 address (for IPv4
groups: ``127.0.0.1`` pins everything to the loopback device) or ``None`` (the kernel's
choice, i.e. the interface of the default route — what OsmoHLR does).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
from dataclasses import dataclass

from .errors import InvalidSetting, TransportError

__all__ = ["DEFAULT_GROUP_V4", "DEFAULT_GROUP_V6", "DEFAULT_PORT", "MulticastConfig",
           "local_source", "open_socket"]

DEFAULT_GROUP_V4 = "239.192.23.42"
DEFAULT_GROUP_V6 = "ff08::23:42"
DEFAULT_PORT = 4266
_RCVBUF = 4 * 1024 * 1024
#: Linux: ask for the count of datagrams the kernel dropped on a full receive buffer.
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
_warned_rcvbuf = False


@dataclass(frozen=True, slots=True)
class MulticastConfig:
    """Where mslookup traffic goes: group, port, interface and TTL."""

    group: str = DEFAULT_GROUP_V4
    port: int = DEFAULT_PORT
    interface: str | None = None
    ttl: int = 1

    def __post_init__(self) -> None:
        try:
            ip = ipaddress.ip_address(self.group)
        except ValueError:
            raise InvalidSetting(f"invalid multicast group {self.group!r}") from None
        if not ip.is_multicast:
            raise InvalidSetting(f"{self.group} is not a multicast address")
        object.__setattr__(self, "group", str(ip))
        if not 1 <= self.port <= 65535:
            raise InvalidSetting(f"invalid port {self.port}: need 1..65535")
        if not 0 <= self.ttl <= 255:
            raise InvalidSetting(f"invalid TTL {self.ttl}: need 0..255")

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.group else socket.AF_INET

    def destination(self) -> tuple[str, int] | tuple[str, int, int, int]:
        """The address to send queries and answers to."""
        if self.family == socket.AF_INET:
            return (self.group, self.port)
        return (self.group, self.port, 0, self._scope())

    def _scope(self) -> int:
        ip = ipaddress.IPv6Address(self.group)
        # interface-local (ff01) and link-local (ff02) scopes need an interface index
        return interface_index(self.interface) if (ip.packed[1] & 0x0F) <= 2 else 0

    def describe(self) -> str:
        where = f" on {self.interface}" if self.interface else ""
        if self.family == socket.AF_INET6:
            return f"[{self.group}]:{self.port}{where}"
        return f"{self.group}:{self.port}{where}"


def local_source(config: MulticastConfig) -> str | None:
    """The source address this host's kernel gives a datagram to the group from a socket
    bound to no address -- as an OsmoHLR on this host sends its answers. ``0.0.0.0`` when the
    multicast route has no source address (``ip route add 224.0.0.0/4 dev lo``); None when
    there is no route to the group. Sends nothing."""
    with socket.socket(config.family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((config.group, config.port))
        except OSError:
            return None
        return str(sock.getsockname()[0]).split("%", 1)[0]


def interface_index(interface: str | None) -> int:
    """Interface index of a name or of a local IPv6 address; 0 for None."""
    if interface is None:
        return 0
    if interface.isdigit():
        return int(interface)
    try:
        addr = ipaddress.ip_address(interface)
    except ValueError:
        try:
            return socket.if_nametoindex(interface)
        except OSError:
            raise TransportError(f"no such network interface {interface!r}") from None
    if addr.version == 6:
        return _ifindex_of_v6(addr)
    raise TransportError(f"an IPv6 group needs an interface name, not {interface!r}")


def _ifindex_of_v6(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 2 and int(fields[0], 16) == int(addr):
                    return int(fields[1], 16)
    except OSError:
        pass
    raise TransportError(f"{addr} is not an address of this host")


def _v4_interface(interface: str | None) -> tuple[bytes, int]:
    """(local address, ifindex) for ip_mreqn: one of the two is set."""
    if interface is None:
        return socket.inet_aton("0.0.0.0"), 0
    try:
        addr = ipaddress.ip_address(interface)
    except ValueError:
        return socket.inet_aton("0.0.0.0"), interface_index(interface)
    if addr.version != 4:
        raise TransportError(f"an IPv4 group needs an IPv4 interface address, not {interface}")
    return addr.packed, 0


def _grow_receive_buffer(sock: socket.socket) -> None:
    """Bursts of answers (thousands of lookups at once, every site answering every re-sent
    copy) must not overflow the socket. Ask for 4 MiB; the kernel clamps to
    net.core.rmem_max unless we may force it (root, CAP_NET_ADMIN)."""
    global _warned_rcvbuf
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= _RCVBUF:
        return
    force = getattr(socket, "SO_RCVBUFFORCE", 33)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, force, _RCVBUF)
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if granted < _RCVBUF and not _warned_rcvbuf:
        _warned_rcvbuf = True
        import logging  # only here: the per-call AGI script must not pay for it

        logging.getLogger("dgsm.mslookup").warning(
            "mslookup socket receive buffer is %d KiB, not the %d KiB asked for; under bursts "
            "of lookups answers may be dropped (counted as kernel_drops). Fix: sysctl -w "
            "net.core.rmem_max=%d", granted // 1024, _RCVBUF // 1024, _RCVBUF)


def open_socket(config: MulticastConfig, *, bind_source: str | None = None) -> socket.socket:
    """Open a non-blocking UDP socket joined to the group.

    With ``bind_source``, the socket is bound to that local address and the group port
    instead of the group (it then only sends; used to answer from a given source address).
    """
    sock = socket.socket(config.family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _grow_receive_buffer(sock)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        if config.family == socket.AF_INET:
            local, ifindex = _v4_interface(config.interface)
            sock.bind((bind_source or config.group, config.port))
            if bind_source is None:
                mreqn = socket.inet_aton(config.group) + local + struct.pack("@i", ifindex)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                            socket.inet_aton("0.0.0.0") + local + struct.pack("@i", ifindex))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, config.ttl)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        else:
            ifindex = interface_index(config.interface)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if bind_source is None:
                sock.bind((config.group, config.port, 0, config._scope()))
                mreq = socket.inet_pton(socket.AF_INET6, config.group) + struct.pack("@I", ifindex)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
            else:
                sock.bind((bind_source, config.port, 0, 0))
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, config.ttl)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 1)
    except TransportError:
        sock.close()
        raise
    except OSError as exc:
        sock.close()
        raise TransportError(
            f"cannot open mslookup socket for {config.describe()}: {exc.strerror or exc}"
        ) from exc
    return sock
