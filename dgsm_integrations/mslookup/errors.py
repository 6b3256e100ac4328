r"""One small error hierarchy.

Caller mistakes raise at once, before anything is sent: a query that cannot be looked up
(:class:`InvalidQuery`), a setting out of range (:class:`InvalidSetting`, also the project's
:class:`~dgsm_integrations.errors.ConfigError`), an answer or record that cannot be built or
served (:class:`InvalidAnswer`). Faults of remote peers never escape a lookup (they are
logged, counted and ignored); OS errors while setting up sockets are wrapped in
:class:`TransportError`. "Not found" is a value, never an exception. All of them are
:class:`~dgsm_integrations.errors.DgsmError`\ s.
"""

from __future__ import annotations

from ..errors import ConfigError, DgsmError

__all__ = ["InvalidAnswer", "InvalidQuery", "InvalidSetting", "MslookupError", "TransportError",
           "WireError"]


class MslookupError(DgsmError):
    """Base class of every error raised by :mod:`dgsm_integrations.mslookup`."""


class InvalidQuery(MslookupError, ValueError):
    """The caller asked for something that cannot be looked up; nothing was sent."""


class InvalidSetting(MslookupError, ConfigError):
    """A resolver or responder setting is out of range (min-delay, resend, trusted, group)."""


class InvalidAnswer(MslookupError, ValueError):
    """An answer or a record to serve cannot be built (no endpoint, a bad address or age)."""


class WireError(MslookupError, ValueError):
    """A packet does not decode as mslookup mDNS (what OsmoHLR's decoder would reject)."""


class TransportError(MslookupError, OSError):
    """The multicast socket could not be set up or used (the OS said no)."""
