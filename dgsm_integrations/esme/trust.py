"""Which SMSCs the ESME may send SMS and ISMPP credentials to (see docs/esme.md, "Trust").

mslookup answers are unauthenticated: anyone on the multicast group can answer
``smpp.sms.<msisdn>.msisdn`` first and name their own address. So the ESME only forwards to
an SMSC whose address is inside a network the operator trusts, and only when the answer came
from a trusted address too. With no trusted network configured nothing is forwarded (every
SMS is answered ``untrusted_status``) unless the operator waives the check (``any_site``).

Credentials: ``--dst-system-id`` / ``--dst-password`` are used for every trusted SMSC unless
a :class:`SiteCredentials` entry covers its address (the most specific network wins), so one
village's ISMPP password need not be given to every other village.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..mslookup.model import Network, parse_networks
from .errors import CredentialsError

__all__ = ["SiteCredentials", "TrustPolicy", "parse_credentials_file", "parse_site_credentials"]

#: SMPP 3.4: system_id is a C-Octet String of at most 16 octets, password at most 9.
_MAX_SYSTEM_ID, _MAX_PASSWORD = 15, 8


@dataclass(frozen=True, slots=True)
class SiteCredentials:
    """The ISMPP system-id and password for the SMSCs inside ``network``."""

    network: Network
    system_id: str
    password: str

    def __post_init__(self) -> None:
        for name, value, limit in (("system-id", self.system_id, _MAX_SYSTEM_ID),
                                   ("password", self.password, _MAX_PASSWORD)):
            if not value.isascii() or not value.isprintable() or len(value) > limit:
                raise CredentialsError(
                    f"{self.network}: the {name} must be printable ASCII of at most {limit} "
                    "characters (SMPP 3.4)")
        if not self.system_id:
            raise CredentialsError(f"{self.network}: empty system-id")

    def __repr__(self) -> str:  # never print the password
        return f"SiteCredentials({self.network}, {self.system_id!r}, password=***)"


def parse_site_credentials(text: str) -> SiteCredentials:
    """``NET=SYSTEM_ID:PASSWORD`` (the password may contain ``:``)."""
    net, sep, rest = text.partition("=")
    system_id, sep2, password = rest.partition(":")
    if not sep or not sep2:
        raise CredentialsError(f"{text.split('=', 1)[0]!r}...: expected NET=SYSTEM_ID:PASSWORD")
    return SiteCredentials(_network(net.strip()), system_id, password)


def parse_credentials_file(path: str | Path) -> tuple[SiteCredentials, ...]:
    """One ``NET SYSTEM_ID PASSWORD`` per line; blank lines and ``#`` comments ignored."""
    out = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) != 3:
            raise CredentialsError(f"{path}:{number}: expected NET SYSTEM_ID PASSWORD")
        try:
            out.append(SiteCredentials(_network(words[0]), words[1], words[2]))
        except CredentialsError as exc:
            raise CredentialsError(f"{path}:{number}: {exc}") from None
    return tuple(out)


def _network(text: str) -> Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise CredentialsError(f"invalid network {text!r}") from None


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    """``trusted`` networks (default credentials) plus ``credentials`` (their own);
    ``any_site`` waives the check (the old, unsafe behaviour)."""

    trusted: tuple[Network, ...] = ()
    credentials: tuple[SiteCredentials, ...] = ()
    any_site: bool = False

    @classmethod
    def build(cls, trusted: Iterable[str | Network] | None = None,
              credentials: Iterable[SiteCredentials] = (), any_site: bool = False
              ) -> TrustPolicy:
        return cls(parse_networks(trusted) or (), tuple(credentials), any_site)

    @property
    def networks(self) -> tuple[Network, ...]:
        """Every network trusted: ``trusted`` and those with their own credentials."""
        return self.trusted + tuple(c.network for c in self.credentials)

    @property
    def configured(self) -> bool:
        return self.any_site or bool(self.networks)

    def allows(self, host: str | None) -> bool:
        if self.any_site:
            return True
        if host is None:
            return False
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        return any(ip in net for net in self.networks)

    def credentials_for(self, host: str) -> SiteCredentials | None:
        """The most specific credentials entry covering ``host``, if any."""
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return None
        best: SiteCredentials | None = None
        for c in self.credentials:
            if ip in c.network and (best is None or c.network.prefixlen > best.network.prefixlen):
                best = c
        return best

    def describe(self) -> str:
        if self.any_site:
            return "any site (--trust-any-site)"
        nets = [str(n) for n in self.trusted]
        nets += [f"{c.network} (as {c.system_id})" for c in self.credentials]
        return ", ".join(nets) if nets else "nothing"
