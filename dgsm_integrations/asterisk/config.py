"""Settings of the AGI script and the FastAGI server, from a file and/or flags.

The file has one ``key = value`` per line; ``#`` starts a comment; keys are the long flag
names with ``-`` or ``_`` (``min-delay = 0.5``). Unknown keys and bad values are errors:
a typo must not silently route calls with defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

from ..mslookup import DEFAULT_GROUP_V4, DEFAULT_PORT, DEFAULT_SUFFIX, Timing
from ..mslookup.engine import DEFAULT_RESEND
from ..settings import ConfigError, convert, read_config_file
from .routing import CAUSE_ERROR, CAUSE_INVALID, CAUSE_NOT_FOUND, Routing

__all__ = ["DEFAULT_CONFIG_PATH", "Config", "ConfigError", "read_config_file"]

#: Where the AGI script looks for its settings (``DGSM_AGI_CONFIG`` overrides).
DEFAULT_CONFIG_PATH = "/etc/dgsm-integrations/asterisk.conf"




@dataclass(frozen=True, slots=True)
class Config:
    # mslookup
    group: str = DEFAULT_GROUP_V4
    mdns_port: int = DEFAULT_PORT
    interface: str | None = None
    ttl: int = 1
    suffix: str = DEFAULT_SUFFIX
    min_delay: float = 1.0
    timeout: float | None = None
    resend: int = DEFAULT_RESEND
    trusted: tuple[str, ...] | None = None
    allow_loopback: bool = False
    # routing
    endpoint: str = "dgsm"
    service: str = "sip.voice"
    prefer_ipv6: bool = False
    cause_not_found: int = CAUSE_NOT_FOUND
    cause_error: int = CAUSE_ERROR
    cause_invalid: int = CAUSE_INVALID
    # one call, start to end (env block, lookup, every reply)
    call_timeout: float = 5.0
    # where the per-call line goes besides our own log: Asterisk's (notice, verbose) or not
    asterisk_log: str = "notice"
    # a connection must send its first byte (the AGI environment) this soon
    first_byte_timeout: float = 2.0
    # FastAGI server
    listen: str = "127.0.0.1"
    listen_port: int = 4573
    route: str = "dgsm"
    max_sessions: int = 1000
    grace: float = 5.0
    log_level: str = "info"
    routing: Routing = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            routing = Routing(self.endpoint, self.service, self.prefer_ipv6,
                              self.cause_not_found, self.cause_error, self.cause_invalid)
        except Exception as exc:  # InvalidQuery or ValueError, with a clear message
            raise ConfigError(str(exc)) from None
        object.__setattr__(self, "routing", routing)
        if not 0 <= self.min_delay <= 60 or (self.timeout is not None
                                             and not 0 < self.timeout <= 60):
            raise ConfigError("min-delay must be 0..60 s and timeout (0, 60] s")
        if not 0.1 <= self.call_timeout <= 300:
            raise ConfigError("call-timeout must be 0.1..300 s")
        if not 0.05 <= self.first_byte_timeout <= 10:
            raise ConfigError("first-byte-timeout must be 0.05..10 s")
        if self.lookup_timeout >= self.call_timeout:
            raise ConfigError(f"call-timeout ({self.call_timeout} s) must be longer than the "
                              f"lookup ({self.lookup_timeout} s)")
        if not 0 <= self.listen_port <= 65535 or not 1 <= self.mdns_port <= 65535:
            raise ConfigError("ports must be 1..65535 (listen-port 0: any free port)")
        if not 1 <= self.max_sessions <= 100_000:
            raise ConfigError("max-sessions must be 1..100000")
        if not 0 <= self.grace <= 600:
            raise ConfigError("grace must be 0..600 s")
        if not self.route or any(c in self.route for c in "?/ \t"):
            raise ConfigError(f"invalid route {self.route!r}")
        if self.asterisk_log not in ("notice", "verbose", "no"):
            raise ConfigError("asterisk-log must be notice (Asterisk's messages.log), verbose "
                              "(consoles) or no")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError("log-level must be debug, info, warning or error")

    @property
    def lookup_timeout(self) -> float:
        """How long a lookup may take at most (libosmo-mslookup's rule)."""
        return Timing.settle(self.min_delay, self.timeout).timeout

    def resolver_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for AsyncResolver / Resolver."""
        kw: dict[str, Any] = {"group": self.group, "port": self.mdns_port,
                              "interface": self.interface, "ttl": self.ttl,
                              "suffix": self.suffix, "min_delay": self.min_delay,
                              "timeout": self.timeout, "resend": self.resend,
                              "allow_loopback": self.allow_loopback}
        if self.trusted is not None:
            kw["trusted"] = self.trusted
        return kw

    @classmethod
    def from_strings(cls, values: dict[str, str]) -> Config:
        """Build from text values (a config file, flags); raises ConfigError."""
        kinds = {f.name: f.type for f in fields(cls) if f.init}
        kw: dict[str, Any] = {}
        for raw_key, text in values.items():
            key = raw_key.strip().replace("-", "_")
            kind = kinds.get(key)
            if kind is None:
                raise ConfigError(f"unknown setting {raw_key!r}")
            kw[key] = convert(key, str(kind), text.strip())
        try:
            return cls(**kw)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from None


def config_from_environment() -> Config:
    """The AGI script's settings: ``$DGSM_AGI_CONFIG`` or the default file, if present."""
    path = os.environ.get("DGSM_AGI_CONFIG", DEFAULT_CONFIG_PATH)
    try:
        values = read_config_file(path)
    except FileNotFoundError:
        if "DGSM_AGI_CONFIG" in os.environ:
            raise ConfigError(f"{path}: no such file") from None
        values = {}
    return Config.from_strings(values)
