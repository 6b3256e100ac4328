"""Values that lookups produce: endpoints, decoded answers and results."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from .errors import InvalidAnswer, InvalidSetting
from .query import Query

__all__ = ["Answer", "Endpoint", "Network", "Outcome", "Result", "parse_networks",
           "trusted_by", "unusable_reason"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(trusted: Iterable[str | Network] | None) -> tuple[Network, ...] | None:
    """Parse a list of trusted networks (``10.0.0.0/8``, ``fd00::/8``, single addresses)."""
    if trusted is None:
        return None
    if isinstance(trusted, str | bytes):
        raise InvalidSetting(f"trusted must be a list of networks, not the string {trusted!r}")
    nets: list[Network] = []
    for item in trusted:
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except (ValueError, TypeError):
            raise InvalidSetting(f"invalid trusted network {item!r}") from None
    return tuple(nets)


def trusted_by(host: str, nets: tuple[Network, ...] | None) -> bool:
    """Whether the address ``host`` is inside one of ``nets`` (None: everything is)."""
    if nets is None:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(ip in net for net in nets)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An IP address and port of a service (``host`` is in canonical text form)."""

    host: str
    port: int

    def __post_init__(self) -> None:
        try:
            ip = ipaddress.ip_address(self.host)
        except ValueError:
            raise InvalidAnswer(f"invalid IP address {self.host!r}") from None
        object.__setattr__(self, "host", str(ip))
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise InvalidAnswer(f"invalid port {self.port!r}: need 0..65535")

    @classmethod
    def trusted(cls, host: str, port: int) -> Endpoint:
        """An endpoint from values already known valid (``host`` from inet_ntop): no checks.

        For the decoder's hot path only; everything else goes through the validating
        constructor.
        """
        endpoint = object.__new__(cls)
        object.__setattr__(endpoint, "host", host)
        object.__setattr__(endpoint, "port", port)
        return endpoint

    @property
    def family(self) -> int:
        """4 or 6."""
        return 6 if ":" in self.host else 4

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.family == 6 else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Answer:
    """One decoded mslookup answer, as one site sent it."""

    packet_id: int
    query: Query
    age: int
    v4: Endpoint | None = None
    v6: Endpoint | None = None

    def __post_init__(self) -> None:
        if self.v4 is None and self.v6 is None:
            raise InvalidAnswer("an answer needs an IPv4 or an IPv6 endpoint")
        if self.v4 is not None and self.v4.family != 4:
            raise InvalidAnswer(f"v4 endpoint {self.v4} is not IPv4")
        if self.v6 is not None and self.v6.family != 6:
            raise InvalidAnswer(f"v6 endpoint {self.v6} is not IPv6")
        if not 0 <= self.age <= 0xFFFFFFFF:
            raise InvalidAnswer(f"age {self.age} out of range")


def unusable_reason(endpoint: Endpoint, *, allow_loopback: bool = False) -> str | None:
    """Why no call or SMS can be sent to ``endpoint``, or None when it is usable.

    Unusable: the unspecified address (``0.0.0.0/8``, ``::``), the broadcast address
    ``255.255.255.255``, multicast (``224.0.0.0/4``, ``ff00::/8``), IPv6 link-local
    (``fe80::/10``: an answer cannot carry the zone it needs), IPv4-mapped IPv6 addresses
    (an IPv4 address belongs in the A record), port 0, and loopback (``127.0.0.0/8``,
    ``::1``) unless ``allow_loopback`` (a lab or tests, with every site on one host).
    """
    if endpoint.port == 0:
        return "port 0"
    return _host_reason(endpoint.host, allow_loopback)


@lru_cache(maxsize=1024)
def _host_reason(host: str, allow_loopback: bool) -> str | None:
    """unusable_reason() of an address; cached: every answer of a site names the same few
    (8 us a call uncached, on the path of every answer)."""
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return "an IPv4-mapped IPv6 address"
    if ip.is_unspecified or (ip.version == 4 and ip.packed[0] == 0):
        return "the unspecified address"
    if ip.version == 4 and ip.packed == b"\xff\xff\xff\xff":
        return "the broadcast address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.version == 6 and ip.is_link_local:
        return "an IPv6 link-local address (an answer cannot carry its zone)"
    if ip.is_loopback and not allow_loopback:
        return "a loopback address (allowed only with allow_loopback)"
    return None


class Outcome(StrEnum):
    """How a lookup ended (or, for streamed results, what this result is)."""

    #: A site has the subscriber; ``age``, ``v4``/``v6`` and ``site`` say which.
    FOUND = "found"
    #: No site answered within the timeout.
    NOT_FOUND = "not-found"
    #: The end of a stream whose best result was already delivered (libosmo's "none").
    NONE = "none"
    #: The lookup could not be done (no packet could be sent, resolver stopped...).
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Result:
    """The result of a lookup.

    ``site`` is the source address of the packet that won (the site's OsmoHLR).
    ``elapsed`` is the time in seconds from the start of the lookup to this result.
    ``last`` is False for intermediate results of a stream (a younger one may follow).
    """

    query: Query
    outcome: Outcome
    last: bool = True
    age: int | None = None
    v4: Endpoint | None = None
    v6: Endpoint | None = None
    site: str | None = None
    elapsed: float = 0.0
    reason: str | None = None

    @property
    def found(self) -> bool:
        return self.outcome is Outcome.FOUND

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """The endpoints of the answer, IPv4 first."""
        return tuple(e for e in (self.v4, self.v6) if e is not None)

    def describe(self) -> str:
        """One line for logs: ``sip.voice.123.msisdn found 10.0.0.2:5060 age=3 site=...``."""
        text = f"{self.query.domain} {self.outcome.value}"
        if self.outcome in (Outcome.FOUND, Outcome.NONE):
            eps = " ".join(str(e) for e in self.endpoints)
            text += f" {eps} age={self.age} site={self.site}" if eps else f" age={self.age}"
        if self.reason:
            text += f" reason={self.reason!r}"
        return text + f" in {self.elapsed * 1000:.1f}ms"
