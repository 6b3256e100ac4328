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

from ..mslookup import IdType, Query
from ..settings import CallServerOptions, ConfigError, read_config_file, typed_values
from .causes import normalize_cause

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "PER_CALL",
    "Config",
    "ConfigError",
    "FreeswitchConfig",
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




@dataclass(frozen=True, slots=True)
class FreeswitchConfig(CallServerOptions):
    """The settings of both FreeSWITCH ways. The mslookup ones (``LookupOptions``) and the
    server's (``CallServerOptions``) come from the file and flags only, except ``min_delay``
    / ``timeout``, which are also per call."""

    # -- per call --
    service: str = "sip.voice"
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
    # -- ESL server (dgsm-fs-esl; CallServerOptions: listen, call-timeout, grace, ...) --
    listen_port: int = 8084
    max_calls: int = 2000
    linger: int = 30
    bridge_timeout: float = 14400.0

    def __post_init__(self) -> None:
        CallServerOptions.__post_init__(self)  # explicit: zero-arg super() fails with slots
        try:
            self._validate()
        except ConfigError:
            raise
        except (ValueError, TypeError) as exc:  # InvalidQuery, bad types: one error type
            raise ConfigError(str(exc)) from None

    def _validate(self) -> None:
        Query(self.service, "1", IdType.MSISDN)  # service labels and length
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
        if not 1 <= self.linger <= 3600:
            raise ConfigError("linger must be 1..3600 s")
        if not 1 <= self.bridge_timeout <= 86400:
            raise ConfigError("bridge-timeout must be 1..86400 s")

    @classmethod
    def from_strings(cls, values: Mapping[str, str]) -> FreeswitchConfig:
        """Build from text values (a config file, flags); raises ConfigError."""
        return cls(**typed_values(_KINDS, values))

    def with_channel(self, get: Callable[[str], object]) -> FreeswitchConfig:
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
            return replace(self, **typed_values(_KINDS, values, allowed=PER_CALL))
        except ConfigError as exc:
            raise ConfigError(f"channel variables {sorted('dgsm_' + k for k in values)}: "
                              f"{exc}") from None


#: The earlier name, kept for the shipped files, code and tests that import it.
Config = FreeswitchConfig

_KINDS = {f.name: str(f.type) for f in fields(FreeswitchConfig)}

_cache_lock = threading.Lock()
_cache: dict[str, tuple[tuple[int, int] | None, FreeswitchConfig]] = {}


def cached_config(path: str | None = None) -> FreeswitchConfig:
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
    config = (FreeswitchConfig.from_strings(read_config_file(path)) if stamp is not None
              else FreeswitchConfig())
    with _cache_lock:
        _cache[path] = (stamp, config)
    return config
