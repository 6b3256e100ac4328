"""The mslookup settings every adapter takes, as one dataclass its config extends.

The Asterisk config (``asterisk.conf``, ``dgsm-fastagi`` flags), the FreeSWITCH config
(``freeswitch.conf``, ``dgsm-fs-esl`` flags) and the ESME (``esme_dgsm`` flags) all ask for
the same ten things about mslookup: where the multicast group is, the suffix, how long to
collect answers, how many copies to send, whom to trust. :class:`LookupOptions` holds them,
validates them once with the engine's own rules (so an adapter cannot accept what its
resolver would refuse), and hands them to a resolver::

    @dataclass(frozen=True, slots=True)
    class Config(LookupOptions):
        listen_port: int = 4573

        def __post_init__(self) -> None:
            LookupOptions.__post_init__(self)   # explicit: slots dataclasses break super()
            ...

    AsyncResolver(**config.resolver_kwargs())

Errors are :class:`~dgsm_integrations.errors.ConfigError` naming the setting the way an
operator writes it (``min-delay``), whatever layer found the fault.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .engine import DEFAULT_RESEND, Settings
from .errors import MslookupError
from .query import DEFAULT_SUFFIX
from .selection import Timing
from .transport import DEFAULT_GROUP_V4, DEFAULT_PORT, MulticastConfig

__all__ = ["LOOKUP_KEYS", "MAX_WAIT", "LookupOptions"]

#: The longest min-delay or timeout an adapter accepts, in seconds.
MAX_WAIT = 60.0


@dataclass(frozen=True, slots=True)
class LookupOptions:
    """mslookup settings: the group and port OsmoHLR uses, the suffix, timing and trust.

    ``min_delay`` / ``timeout``: collect answers this long, give up after (libosmo-mslookup's
    rule: :meth:`Timing.settle`); ``resend``: extra copies of each query, spread over the
    window; ``trusted``: networks allowed to answer (None: any); ``allow_loopback``: accept
    answers naming 127.0.0.0/8 or ::1 (a lab on one host).
    """

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

    def __post_init__(self) -> None:
        try:
            MulticastConfig(self.group, self.mdns_port, self.interface, self.ttl)
            Settings.of(suffix=self.suffix, min_delay=self.min_delay, timeout=self.timeout,
                        resend=self.resend, trusted=self.trusted,
                        allow_loopback=self.allow_loopback)
        except (MslookupError, TypeError, ValueError) as exc:
            message = str(exc)
            for name in LOOKUP_KEYS:  # the engine says min_delay, an operator min-delay
                message = message.replace(name, name.replace("_", "-"))
            raise ConfigError(message) from None
        # a call or an SMS waits for the lookup: a minute is already far beyond any budget
        if not 0 <= self.min_delay <= MAX_WAIT or (self.timeout is not None
                                                   and not 0 < self.timeout <= MAX_WAIT):
            raise ConfigError(f"min-delay must be 0..{MAX_WAIT:.0f} s and timeout "
                              f"(0, {MAX_WAIT:.0f}] s")

    @property
    def lookup_timeout(self) -> float:
        """How long a lookup may take at most (libosmo-mslookup's rule)."""
        return Timing.settle(self.min_delay, self.timeout).timeout

    def resolver_kwargs(self, *, timing: bool = True) -> dict[str, Any]:
        """Keyword arguments for :class:`AsyncResolver` / :class:`Resolver`.

        ``timing=False`` leaves out ``min_delay`` / ``timeout``, for an adapter that passes
        them per lookup (a FreeSWITCH channel may override them).
        """
        kw: dict[str, Any] = {"group": self.group, "port": self.mdns_port,
                              "interface": self.interface, "ttl": self.ttl,
                              "suffix": self.suffix, "resend": self.resend,
                              "allow_loopback": self.allow_loopback}
        if timing:
            kw["min_delay"] = self.min_delay
            kw["timeout"] = self.timeout
        if self.trusted is not None:
            kw["trusted"] = self.trusted
        return kw


#: The field names of :class:`LookupOptions` (config keys, with ``-`` for ``_``).
LOOKUP_KEYS: tuple[str, ...] = tuple(LookupOptions.__dataclass_fields__)
