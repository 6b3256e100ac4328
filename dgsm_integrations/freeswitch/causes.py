"""FreeSWITCH hangup cause names.

FreeSWITCH maps a cause *name* to a number with ``switch_channel_str2cause()``: the name is
looked up case-insensitively in its cause table, and a name that is not there silently
becomes NORMAL_CLEARING (which mod_sofia answers with 480 on an unanswered call). So every
cause we are given is checked against this list (the names of ``CAUSE_CHART`` in
``src/switch_channel.c``, FreeSWITCH 1.10) before a call can use it.
"""

from __future__ import annotations

__all__ = ["CAUSE_NAMES", "normalize_cause"]

CAUSE_NAMES: frozenset[str] = frozenset((
    "UNALLOCATED_NUMBER", "NO_ROUTE_TRANSIT_NET", "NO_ROUTE_DESTINATION",
    "CHANNEL_UNACCEPTABLE", "CALL_AWARDED_DELIVERED", "NORMAL_CLEARING", "USER_BUSY",
    "NO_USER_RESPONSE", "NO_ANSWER", "SUBSCRIBER_ABSENT", "CALL_REJECTED", "NUMBER_CHANGED",
    "REDIRECTION_TO_NEW_DESTINATION", "EXCHANGE_ROUTING_ERROR", "DESTINATION_OUT_OF_ORDER",
    "INVALID_NUMBER_FORMAT", "FACILITY_REJECTED", "RESPONSE_TO_STATUS_ENQUIRY",
    "NORMAL_UNSPECIFIED", "NORMAL_CIRCUIT_CONGESTION", "NETWORK_OUT_OF_ORDER",
    "NORMAL_TEMPORARY_FAILURE", "SWITCH_CONGESTION", "ACCESS_INFO_DISCARDED",
    "REQUESTED_CHAN_UNAVAIL", "PRE_EMPTED", "FACILITY_NOT_SUBSCRIBED", "OUTGOING_CALL_BARRED",
    "INCOMING_CALL_BARRED", "BEARERCAPABILITY_NOTAUTH", "BEARERCAPABILITY_NOTAVAIL",
    "SERVICE_UNAVAILABLE", "BEARERCAPABILITY_NOTIMPL", "CHAN_NOT_IMPLEMENTED",
    "FACILITY_NOT_IMPLEMENTED", "SERVICE_NOT_IMPLEMENTED", "INVALID_CALL_REFERENCE",
    "INCOMPATIBLE_DESTINATION", "INVALID_MSG_UNSPECIFIED", "MANDATORY_IE_MISSING",
    "MESSAGE_TYPE_NONEXIST", "WRONG_MESSAGE", "IE_NONEXIST", "INVALID_IE_CONTENTS",
    "WRONG_CALL_STATE", "RECOVERY_ON_TIMER_EXPIRE", "MANDATORY_IE_LENGTH_ERROR",
    "PROTOCOL_ERROR", "INTERWORKING", "SUCCESS", "ORIGINATOR_CANCEL", "CRASH",
    "SYSTEM_SHUTDOWN", "LOSE_RACE", "MANAGER_REQUEST", "BLIND_TRANSFER", "ATTENDED_TRANSFER",
    "ALLOTTED_TIMEOUT", "USER_CHALLENGE", "MEDIA_TIMEOUT", "PICKED_OFF", "USER_NOT_REGISTERED",
    "PROGRESS_TIMEOUT", "INVALID_GATEWAY", "GATEWAY_DOWN", "INVALID_URL", "INVALID_PROFILE",
    "NO_PICKUP", "SRTP_READ_ERROR", "BOWOUT", "BUSY_EVERYWHERE", "DECLINE",
    "DOES_NOT_EXIST_ANYWHERE", "NOT_ACCEPTABLE", "UNWANTED", "NO_IDENTITY", "BAD_IDENTITY_INFO",
    "UNSUPPORTED_CERTIFICATE", "INVALID_IDENTITY", "STALE_DATE", "REJECT_ALL",
))


def normalize_cause(name: object) -> str:
    """The canonical (upper-case) cause name, or ValueError for anything FreeSWITCH lacks."""
    if not isinstance(name, str):
        raise ValueError(f"hangup cause must be a name, not {type(name).__name__}")
    upper = name.strip().upper()
    if upper not in CAUSE_NAMES:
        raise ValueError(f"unknown FreeSWITCH hangup cause {name[:40]!r} (FreeSWITCH would "
                         "silently use NORMAL_CLEARING, i.e. SIP 480)")
    return upper
