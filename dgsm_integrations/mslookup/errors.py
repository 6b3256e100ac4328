"""One small error hierarchy.

Caller mistakes raise at once (:class:`InvalidQuery`); faults of remote peers never escape a
lookup (they are logged, counted and ignored); OS errors while setting up sockets are wrapped
in :class:`TransportError`. "Not found" is a value, never an exception.
"""

from __future__ import annotations

from ..errors import DgsmError

__all__ = ["InvalidQuery", "MslookupError", "TransportError", "WireError"]


class MslookupError(DgsmError):
    """Base class of every error raised by :mod:`dgsm_integrations.mslookup`."""


class InvalidQuery(MslookupError, ValueError):
    """The caller asked for something that cannot be looked up; nothing was sent."""


class WireError(MslookupError, ValueError):
    """A packet does not decode as mslookup mDNS (what OsmoHLR's decoder would reject)."""


class TransportError(MslookupError, OSError):
    """The multicast socket could not be set up or used (the OS said no)."""
