"""The ESME's settings: the mslookup ones every adapter has, then the SMPP, trust and daemon ones.

:class:`EsmeConfig` extends :class:`~dgsm_integrations.mslookup.options.LookupOptions`, so the
ESME validates its mslookup settings with the same rules as the PBX adapters (errors are
:class:`~dgsm_integrations.errors.ConfigError` naming the setting). Its own settings are
checked on construction too, whether they come from flags (:meth:`EsmeConfig.from_strings`,
what ``esme_dgsm`` uses) or from code (the lab, the tests).

Trust: ``trusted`` is the mslookup filter (answers from or naming other addresses are
dropped), and ``trust`` the policy the forwarder applies before it opens any connection
(:class:`.TrustPolicy`: the trusted networks, per-site credentials, or ``any_site``). Built
from flags, ``trust`` covers ``--trusted``, ``--site-credentials`` and ``--credentials-file``,
and the resolver's filter covers the same networks (:meth:`EsmeConfig.resolver_kwargs`). In
code, ``trusted`` alone also makes the policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import ConfigError
from ..mslookup.errors import MslookupError
from ..mslookup.options import LookupOptions
from ..settings import convert, typed_values
from .binds import BindConfig
from .errors import CredentialsError
from .routing import Routing
from .status import Status
from .trust import SiteCredentials, TrustPolicy, parse_credentials_file, parse_site_credentials

__all__ = ["TRUST_KEYS", "EsmeConfig", "Secret"]

#: Settings that make :attr:`EsmeConfig.trust` rather than being fields of their own.
TRUST_KEYS = ("site_credentials", "credentials_file", "trust_any_site")
_STATUS_FIELDS = ("not_found_status", "untrusted_status")
#: a command_status may be written in hex (0x45), as the SMPP specification lists them
_STATUS_PARSERS = {name: (lambda text: int(text, 0)) for name in _STATUS_FIELDS}
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class Secret(str):
    """A password: its own value wherever it is used, ``***`` wherever it is formatted or
    repr'd (``--check`` prints every setting, a config may end up in a log line)."""

    __slots__ = ()

    def __format__(self, spec: str) -> str:
        return "***"

    def __repr__(self) -> str:
        return "'***'"


@dataclass(frozen=True, slots=True)
class EsmeConfig(LookupOptions):
    # the local OsmoMSC (OSMPP, bind_transceiver)
    src_host: str = "127.0.0.1"
    src_port: int = 2775
    system_id: str = "OSMPP"
    password: str = "foo"  # noqa: S105 - OsmoMSC's example config
    # destination SMSCs (ISMPP, bind_transmitter)
    dst_system_id: str = "ISMPP"
    dst_password: str = "foo"  # noqa: S105 - OsmoMSC's example config
    window: int = 16
    # answers and timing
    budget: float = 4.0
    not_found_status: int = Status.RINVDSTADR
    enquire_interval: float = 30.0
    connect_timeout: float = 2.0
    response_timeout: float = 10.0
    backoff_min: float = 0.5
    backoff_max: float = 30.0
    max_in_flight: int = 5000
    #: with a store: seconds of the budget kept for the durable write
    store_reserve: float = 0.5
    #: with a store: seconds the duplicate check may take before the SMS is routed anyway
    store_check: float = 0.25
    #: which SMSCs may get SMS and credentials; the default trusts nothing (see .trust)
    trust: TrustPolicy = field(default_factory=TrustPolicy)
    #: command_status for an SMS whose lookup named an untrusted SMSC
    untrusted_status: int = Status.RSYSERR
    # store-and-forward (off without a queue file)
    queue: str | None = None
    validity: float = 24 * 3600.0
    retry_min: float = 30.0
    retry_max: float = 1800.0
    retry_window: int = 8
    # operations
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    log_level: str = "INFO"
    #: on SIGTERM, seconds to let SMS in flight be answered before the binds close
    grace: float = 0.0
    routing: Routing = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        LookupOptions.__post_init__(self)  # explicit: slots dataclasses break super()
        for name in ("password", "dst_password"):
            object.__setattr__(self, name, Secret(getattr(self, name)))
        if self.trust == TrustPolicy() and self.trusted:
            object.__setattr__(self, "trust", TrustPolicy.build(self.trusted))
        for name in _STATUS_FIELDS:
            if not 0 <= getattr(self, name) <= 0xFFFFFFFF:
                raise ConfigError(f"{name.replace('_', '-')} is not an SMPP command_status")
        positive = ("budget", "enquire_interval", "connect_timeout", "response_timeout",
                    "backoff_min", "backoff_max", "validity", "retry_min", "retry_max")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name.replace('_', '-')} must be > 0")
        if not 1 <= self.window <= 1000 or not 1 <= self.retry_window <= 1000:
            raise ConfigError("window and retry-window must be 1..1000")
        if not 1 <= self.max_in_flight <= 1_000_000:
            raise ConfigError("max-in-flight must be 1..1000000")
        if not 1 <= self.src_port <= 65535 or not (
                self.metrics_port is None or 0 <= self.metrics_port <= 65535):
            raise ConfigError("ports must be 1..65535 (metrics-port 0: any free port)")
        if self.log_level.upper() not in _LOG_LEVELS:
            raise ConfigError("log-level must be DEBUG, INFO, WARNING or ERROR")
        if not 0 <= self.grace <= 600:
            raise ConfigError("grace must be 0..600 s")
        object.__setattr__(self, "routing", Routing(self.trust, self.not_found_status,
                                                    self.untrusted_status))

    def osmpp(self) -> BindConfig:
        return BindConfig(self.system_id, str(self.password), "", self.connect_timeout,
                          self.enquire_interval, self.response_timeout, self.backoff_min,
                          self.backoff_max)

    def ismpp(self, host: str | None = None) -> BindConfig:
        """The ISMPP bind settings for the SMSC at ``host`` (its own credentials if any)."""
        creds = None if host is None else self.trust.credentials_for(host)
        system_id, password = ((self.dst_system_id, str(self.dst_password)) if creds is None
                               else (creds.system_id, creds.password))
        return BindConfig(system_id, password, "", self.connect_timeout,
                          self.enquire_interval, self.response_timeout, self.backoff_min,
                          min(self.backoff_max, 10.0))

    def resolver_kwargs(self, *, timing: bool = True) -> dict[str, Any]:
        """As :meth:`LookupOptions.resolver_kwargs`, filtering on every network the trust
        policy trusts (site-credentials networks too); none when it trusts any site or
        nothing (then the forwarder refuses, and logs, what the answers name)."""
        kw = LookupOptions.resolver_kwargs(self, timing=timing)
        kw.pop("trusted", None)
        if not self.trust.any_site and self.trust.networks:
            kw["trusted"] = self.trust.networks
        return kw

    @classmethod
    def from_strings(cls, values: dict[str, str]) -> EsmeConfig:
        """Build from text values (the flags as text); raises ConfigError.

        Keys are the field names (``-`` or ``_``), plus :data:`TRUST_KEYS`:
        ``site_credentials`` (one ``NET=SYSTEM_ID:PASSWORD`` per line), ``credentials_file``
        (a path) and ``trust_any_site`` (a bool), which make :attr:`trust` with
        ``trusted`` (comma separated)."""
        kinds = {f.name: str(f.type) for f in fields(cls) if f.init and f.name != "trust"}
        extra: dict[str, str] = {}
        rest: dict[str, str] = {}
        for raw_key, text in values.items():
            key = raw_key.strip().replace("-", "_")
            if key in TRUST_KEYS:
                extra[key] = text
            else:
                rest[raw_key] = text
        kw = typed_values(kinds, rest, parsers=_STATUS_PARSERS)
        any_site = convert("trust_any_site", "bool", extra.get("trust_any_site", "no"))
        try:
            kw["trust"] = TrustPolicy.build(kw.get("trusted"), _credentials(extra), any_site)
            return cls(**kw)
        except ConfigError:
            raise
        except (MslookupError, TypeError, ValueError) as exc:  # an invalid trusted network
            raise ConfigError(str(exc)) from None


def _credentials(extra: dict[str, str]) -> tuple[SiteCredentials, ...]:
    creds = [parse_site_credentials(line) for line in
             extra.get("site_credentials", "").splitlines() if line.strip()]
    path = extra.get("credentials_file", "").strip()
    if path and path.lower() != "none":
        try:
            creds += parse_credentials_file(path)
        except OSError as exc:
            raise CredentialsError(f"--credentials-file: {exc}") from None
    return tuple(creds)
