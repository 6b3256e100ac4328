"""Settings of both FreeSWITCH ways, from a config file, flags and channel variables.

The file has one ``key = value`` per line; ``#`` starts a comment; keys are the long option
names with ``-`` or ``_``. Unknown keys and bad values are errors: a typo must not silently
route calls with defaults.

A call may override the *per-call* settings (:data:`PER_CALL`) with channel variables named
``dgsm_<key>`` (``dgsm_profile``, ``dgsm_min_delay``, ...), set in the dialplan before the
``python`` / ``socket`` action. They are validated like the file; a bad one ends the call
with the error cause (and a log line), it never falls back silently. The resolver's own
settings (interface, group, trusted networks, ...) come from the file only: they select the
shared socket and what answers are believed, which a call must not change.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from ..mslookup import DEFAULT_GROUP_V4, DEFAULT_PORT, DEFAULT_SUFFIX, IdType, Query, Timing
from ..mslookup.engine import DEFAULT_RESEND
from ..mslookup.model import parse_networks
from ..mslookup.query import validate_suffix
from ..mslookup.transport import MulticastConfig
from ..settings import ConfigError, convert, read_config_file
from .causes import normalize_cause

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "PER_CALL",
    "Config",
    "ConfigError",
    "cached_config",
    "read_config_file",
]

#: Where both ways look for their settings (the environment variable overrides).
DEFAULT_CONFIG_PATH = "/etc/dgsm-integrations/freeswitch.conf"
CONFIG_ENV = "DGSM_FS_CONFIG"

#: Settings a call may override with a ``dgsm_<key>`` channel variable.
PER_CALL: tuple[str, ...] = (
    "service", "profile", "profile_v6", "prefer_ipv6", "failover", "min_delay", "timeout",
    "codec_string", "originate_timeout", "continue_on_fail",
    "cause_not_found", "cause_error", "cause_invalid",
)

# A sofia profile name: it goes into the dial string, so nothing that the dial-string syntax
# gives a meaning to ({ } [ ] | , / @ : ; = ' ^ $ spaces).
_PROFILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# A codec string as absolute_codec_string takes it (PCMA,PCMU,opus@48000h@20i,G729).
_CODECS = re.compile(r"[A-Za-z0-9][A-Za-z0-9@._-]{0,31}(?:,[A-Za-z0-9][A-Za-z0-9@._-]{0,31}){0,15}")
_LOG_LEVELS = ("debug", "info", "warning", "error")




@dataclass(frozen=True, slots=True)
class Config:
    # -- mslookup (file / flags only) --
    group: str = DEFAULT_GROUP_V4
    mdns_port: int = DEFAULT_PORT
    interface: str | None = None
    ttl: int = 1
    suffix: str = DEFAULT_SUFFIX
    resend: int = DEFAULT_RESEND
    trusted: tuple[str, ...] | None = None
    allow_loopback: bool = False
    # -- per call --
    service: str = "sip.voice"
    min_delay: float = 1.0
    timeout: float | None = None
    profile: str = "external"
    profile_v6: str = "external-ipv6"
    prefer_ipv6: bool = False
    failover: bool = True
    codec_string: str | None = None
    originate_timeout: int | None = None
    continue_on_fail: bool = False
    cause_not_found: str = "UNALLOCATED_NUMBER"
    cause_error: str = "NORMAL_TEMPORARY_FAILURE"
    cause_invalid: str = "INVALID_NUMBER_FORMAT"
    # -- ESL server (dgsm-fs-esl) --
    listen: str = "127.0.0.1"
    listen_port: int = 8084
    call_timeout: float = 5.0
    first_byte_timeout: float = 2.0
    linger: int = 30
    bridge_timeout: float = 14400.0
    max_calls: int = 2000
    grace: float = 5.0
    log_level: str = "info"

    def __post_init__(self) -> None:
        try:
            self._validate()
        except ConfigError:
            raise
        except (ValueError, TypeError) as exc:  # InvalidQuery, bad types: one error type
            raise ConfigError(str(exc)) from None

    def _validate(self) -> None:
        MulticastConfig(self.group, self.mdns_port, self.interface, self.ttl)
        Query(self.service, "1", IdType.MSISDN)  # service labels and length
        validate_suffix(self.suffix)
        if not 0 <= self.resend <= 20:
            raise ConfigError("resend must be 0..20")
        parse_networks(self.trusted)
        if not 0 <= self.min_delay <= 60 or (self.timeout is not None
                                             and not 0 < self.timeout <= 60):
            raise ConfigError("min-delay must be 0..60 s and timeout (0, 60] s")
        for name in ("profile", "profile_v6"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.isascii() or not _PROFILE.fullmatch(value):
                raise ConfigError(f"invalid {name.replace('_', '-')} {str(value)[:40]!r}: "
                                  "need 1-64 of A-Z a-z 0-9 _ . -")
        if self.codec_string is not None and not (
                self.codec_string.isascii() and _CODECS.fullmatch(self.codec_string)):
            raise ConfigError(f"invalid codec-string {self.codec_string[:60]!r}: need "
                              "comma-separated codec names like PCMA,PCMU,opus@48000h@20i")
        if self.originate_timeout is not None and not 1 <= self.originate_timeout <= 3600:
            raise ConfigError("originate-timeout must be 1..3600 s")
        for name in ("cause_not_found", "cause_error", "cause_invalid"):
            try:
                object.__setattr__(self, name, normalize_cause(getattr(self, name)))
            except ValueError as exc:
                raise ConfigError(f"{name.replace('_', '-')}: {exc}") from None
        if not 0 <= self.listen_port <= 65535:
            raise ConfigError("listen-port must be 0..65535")
        if not 0.1 <= self.call_timeout <= 300:
            raise ConfigError("call-timeout must be 0.1..300 s")
        if not 0.05 <= self.first_byte_timeout <= 10:
            raise ConfigError("first-byte-timeout must be 0.05..10 s")
        if self.lookup_timeout >= self.call_timeout:
            raise ConfigError(f"call-timeout ({self.call_timeout} s) must be longer than the "
                              f"lookup ({self.lookup_timeout} s)")
        if not 1 <= self.linger <= 3600:
            raise ConfigError("linger must be 1..3600 s")
        if not 1 <= self.bridge_timeout <= 86400:
            raise ConfigError("bridge-timeout must be 1..86400 s")
        if not 1 <= self.max_calls <= 100_000:
            raise ConfigError("max-calls must be 1..100000")
        if not 0 <= self.grace <= 600:
            raise ConfigError("grace must be 0..600 s")
        if self.log_level.lower() not in _LOG_LEVELS:
            raise ConfigError("log-level must be debug, info, warning or error")

    @property
    def lookup_timeout(self) -> float:
        """How long a lookup may take at most (libosmo-mslookup's rule)."""
        return Timing.settle(self.min_delay, self.timeout).timeout

    def resolver_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for Resolver.shared / AsyncResolver (one per configuration)."""
        kw: dict[str, Any] = {"group": self.group, "port": self.mdns_port,
                              "interface": self.interface, "ttl": self.ttl,
                              "suffix": self.suffix, "resend": self.resend,
                              "allow_loopback": self.allow_loopback}
        if self.trusted is not None:
            kw["trusted"] = self.trusted
        return kw

    @classmethod
    def from_strings(cls, values: Mapping[str, str]) -> Config:
        """Build from text values (a config file, flags); raises ConfigError."""
        return cls(**_convert_all(values, None))

    def with_channel(self, get: Callable[[str], object]) -> Config:
        """This config with the call's ``dgsm_<key>`` channel variables applied.

        ``get(name)`` returns the variable's value or None (``session.getVariable``).
        Raises ConfigError naming the variable.
        """
        values: dict[str, str] = {}
        for key in PER_CALL:
            value = get("dgsm_" + key)
            if value is None or value == "":
                continue
            if not isinstance(value, str) or len(value) > 200:
                raise ConfigError(f"channel variable dgsm_{key}: not a short string")
            values[key] = value
        if not values:
            return self
        try:
            return replace(self, **_convert_all(values, PER_CALL))
        except ConfigError as exc:
            raise ConfigError(f"channel variables {sorted('dgsm_' + k for k in values)}: "
                              f"{exc}") from None


_KINDS = {f.name: str(f.type) for f in fields(Config)}


def _convert_all(values: Mapping[str, str], allowed: tuple[str, ...] | None) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    for raw_key, text in values.items():
        key = raw_key.strip().replace("-", "_")
        kind = _KINDS.get(key)
        if kind is None or (allowed is not None and key not in allowed):
            raise ConfigError(f"unknown setting {raw_key[:40]!r}")
        kw[key] = convert(key, kind, text.strip())
    return kw


_cache_lock = threading.Lock()
_cache: dict[str, tuple[tuple[int, int] | None, Config]] = {}


def cached_config(path: str | None = None) -> Config:
    """The settings from ``path`` (default: ``$DGSM_FS_CONFIG`` or the default file).

    Re-read only when the file changes (size or mtime), so a call pays one ``stat()``; the
    default file may be missing (defaults), an explicitly named one may not. Raises
    ConfigError or OSError.
    """
    explicit = path is not None or CONFIG_ENV in os.environ
    path = path or os.environ.get(CONFIG_ENV, DEFAULT_CONFIG_PATH)
    try:
        st = os.stat(path)
        stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{path}: no such file") from None
        stamp = None
    with _cache_lock:
        hit = _cache.get(path)
        if hit is not None and hit[0] == stamp:
            return hit[1]
    config = Config.from_strings(read_config_file(path)) if stamp is not None else Config()
    with _cache_lock:
        _cache[path] = (stamp, config)
    return config
