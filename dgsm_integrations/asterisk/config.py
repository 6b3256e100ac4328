"""Settings of the AGI script and the FastAGI server, from a file and/or flags.

The file has one ``key = value`` per line; ``#`` starts a comment; keys are the long flag
names with ``-`` or ``_`` (``min-delay = 0.5``). Unknown keys and bad values are errors:
a typo must not silently route calls with defaults. The mslookup settings (``group`` ...
``allow-loopback``) are :class:`~dgsm_integrations.mslookup.options.LookupOptions`, the same
for every adapter, and the server's (``listen`` ... ``grace``)
:class:`~dgsm_integrations.settings.CallServerOptions`. ``max-sessions``, the earlier name
of ``max-calls``, is still accepted (with a warning).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from ..settings import CallServerOptions, ConfigError, read_config_file, typed_values
from .routing import CAUSE_ERROR, CAUSE_INVALID, CAUSE_NOT_FOUND, Routing

__all__ = ["DEFAULT_CONFIG_PATH", "RENAMED", "AsteriskConfig", "Config", "ConfigError",
           "config_from_environment", "read_config_file"]

#: Where the AGI script looks for its settings (``DGSM_AGI_CONFIG`` overrides).
DEFAULT_CONFIG_PATH = "/etc/dgsm-integrations/asterisk.conf"

#: Earlier names of settings, still accepted in files and flags (with a warning).
RENAMED = {"max_sessions": "max_calls"}


@dataclass(frozen=True, slots=True)
class AsteriskConfig(CallServerOptions):
    """The settings of both Asterisk ways (the script uses only the mslookup and routing
    ones, ``call-timeout`` and ``asterisk-log``)."""

    # routing
    endpoint: str = "dgsm"
    service: str = "sip.voice"
    prefer_ipv6: bool = False
    cause_not_found: int = CAUSE_NOT_FOUND
    cause_error: int = CAUSE_ERROR
    cause_invalid: int = CAUSE_INVALID
    # where the per-call line goes besides our own log: Asterisk's (notice, verbose) or not
    asterisk_log: str = "notice"
    # FastAGI server (CallServerOptions: listen, call-timeout, max-calls, ...)
    listen_port: int = 4573
    route: str = "dgsm"
    routing: Routing = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        CallServerOptions.__post_init__(self)  # explicit: zero-arg super() fails with slots
        try:
            routing = Routing(self.endpoint, self.service, self.prefer_ipv6,
                              self.cause_not_found, self.cause_error, self.cause_invalid)
        except Exception as exc:  # InvalidQuery or ValueError, with a clear message
            raise ConfigError(str(exc)) from None
        object.__setattr__(self, "routing", routing)
        if not self.route or any(c in self.route for c in "?/ \t"):
            raise ConfigError(f"invalid route {self.route!r}")
        if self.asterisk_log not in ("notice", "verbose", "no"):
            raise ConfigError("asterisk-log must be notice (Asterisk's messages.log), verbose "
                              "(consoles) or no")

    @classmethod
    def from_strings(cls, values: dict[str, str]) -> AsteriskConfig:
        """Build from text values (a config file, flags); raises ConfigError."""
        kw = typed_values(_KINDS, values, renamed=RENAMED)
        try:
            return cls(**kw)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from None


#: The earlier name, kept for the code and tests that import it.
Config = AsteriskConfig

_KINDS = {f.name: str(f.type) for f in fields(AsteriskConfig) if f.init}


def config_from_environment() -> AsteriskConfig:
    """The AGI script's settings: ``$DGSM_AGI_CONFIG`` or the default file, if present."""
    path = os.environ.get("DGSM_AGI_CONFIG", DEFAULT_CONFIG_PATH)
    try:
        values = read_config_file(path)
    except FileNotFoundError:
        if "DGSM_AGI_CONFIG" in os.environ:
            raise ConfigError(f"{path}: no such file") from None
        values = {}
    return AsteriskConfig.from_strings(values)
