"""The resolver's sans-I/O core, as the per-call AGI script uses it.

``dgsm_integrations.mslookup`` imports its asyncio driver, blocking facade and responder
lazily, so importing the core from it costs no asyncio (checked by a test).
"""

from __future__ import annotations

from ..mslookup import (
    DEFAULT_GROUP_V4,
    DEFAULT_PORT,
    DEFAULT_SUFFIX,
    Endpoint,
    IdType,
    InvalidQuery,
    MulticastConfig,
    Outcome,
    Query,
    Result,
    Selection,
    Timing,
    TransportError,
    WireError,
)
from ..mslookup.model import unusable_reason
from ..mslookup.pacing import Pacer
from ..mslookup.transport import open_socket
from ..mslookup.wire import decode_answer, encode_query, is_answer

__all__ = [
    "DEFAULT_GROUP_V4",
    "DEFAULT_PORT",
    "DEFAULT_SUFFIX",
    "Endpoint",
    "IdType",
    "InvalidQuery",
    "MulticastConfig",
    "Outcome",
    "Pacer",
    "Query",
    "Result",
    "Selection",
    "Timing",
    "TransportError",
    "WireError",
    "decode_answer",
    "encode_query",
    "is_answer",
    "open_socket",
    "unusable_reason",
]
