"""mslookup: find a subscriber's current D-GSM site over multicast DNS (OsmoHLR compatible).

- :class:`Query` — what to look up, validated before anything is sent.
- :class:`AsyncResolver` / :class:`Resolver` — the asyncio client and its blocking twin.
- :class:`Result` — found / not-found / error, a value; :class:`Endpoint` — host and port.
- :class:`Responder` — answers queries like OsmoHLR (tests, lab, sites without OsmoHLR).
- :mod:`.wire`, :mod:`.selection` — the sans-I/O protocol core.
"""

from .aio import AnswerTrace, AsyncResolver, Stats
from .blocking import Resolver
from .errors import InvalidQuery, MslookupError, TransportError, WireError
from .model import Answer, Endpoint, Outcome, Result
from .query import DEFAULT_SUFFIX, IdType, Query
from .responder import Record, Responder
from .selection import Selection, Timing
from .transport import DEFAULT_GROUP_V4, DEFAULT_GROUP_V6, DEFAULT_PORT, MulticastConfig

__all__ = [
    "DEFAULT_GROUP_V4",
    "DEFAULT_GROUP_V6",
    "DEFAULT_PORT",
    "DEFAULT_SUFFIX",
    "Answer",
    "AnswerTrace",
    "AsyncResolver",
    "Endpoint",
    "IdType",
    "InvalidQuery",
    "MslookupError",
    "MulticastConfig",
    "Outcome",
    "Query",
    "Record",
    "Resolver",
    "Responder",
    "Result",
    "Selection",
    "Stats",
    "Timing",
    "TransportError",
    "WireError",
]
