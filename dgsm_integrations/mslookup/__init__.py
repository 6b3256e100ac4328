"""mslookup: find a subscriber's current D-GSM site over multicast DNS (OsmoHLR compatible).

- :class:`Query` — what to look up, validated before anything is sent.
- :class:`AsyncResolver` / :class:`Resolver` — the asyncio client and its blocking twin.
- :class:`Result` — found / not-found / error, a value; :class:`Endpoint` — host and port.
- :class:`Responder` — answers queries like OsmoHLR (tests, lab, sites without OsmoHLR).
- :mod:`.engine` — the whole lookup as a sans-I/O state machine, which the drivers
  (:mod:`.aio`, :mod:`.blocking`) run; :mod:`.wire`, :mod:`.selection`, :mod:`.pacing` are
  its parts.
"""

from typing import TYPE_CHECKING, Any

# The sans-I/O core is imported at once; the asyncio driver, the blocking facade and the
# responder only when first used, so that a per-call process (the Asterisk AGI script) that
# needs just the core does not pay for importing asyncio and threading.
from .errors import (
    InvalidAnswer,
    InvalidQuery,
    InvalidSetting,
    MslookupError,
    TransportError,
    WireError,
)
from .model import Answer, Endpoint, Outcome, Result
from .query import DEFAULT_SUFFIX, IdType, Query
from .selection import Selection, Timing
from .transport import DEFAULT_GROUP_V4, DEFAULT_GROUP_V6, DEFAULT_PORT, MulticastConfig

if TYPE_CHECKING:
    from .aio import AsyncResolver
    from .blocking import Resolver
    from .engine import AnswerTrace, Stats
    from .responder import Record, Responder

_LAZY = {
    "AnswerTrace": "engine",
    "AsyncResolver": "aio",
    "Stats": "engine",
    "Resolver": "blocking",
    "Record": "responder",
    "Responder": "responder",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


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
    "InvalidAnswer",
    "InvalidQuery",
    "InvalidSetting",
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
