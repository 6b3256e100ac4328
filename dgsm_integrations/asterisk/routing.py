"""From a dialled extension to channel variables: shared by the AGI script and FastAGI.

Both ways only *look up* and set variables; the dialplan runs ``Dial()``. Variables:

- ``DGSM_RESULT``: ``found``, ``not-found``, ``error`` or ``invalid`` (always set, and last);
- found: ``DGSM_DIAL`` (``PJSIP/<endpoint>/sip:<msisdn>@<ip>:<port>``, IPv6 in brackets),
  ``DGSM_SIP_HOST``, ``DGSM_SIP_PORT``, ``DGSM_AGE``;
- otherwise: ``DGSM_CAUSE``, a Q.850 cause for ``Hangup()`` that chan_pjsip answers
  sensibly (defaults: not-found 1 → 404, error 34 → 503, invalid 28 → 484).

The extension is hostile input: only 1 to 15 ASCII digits are looked up; anything else is
``invalid`` and never reaches ``DGSM_DIAL``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..mslookup import Endpoint, IdType, InvalidQuery, Outcome, Query, Result

__all__ = [
    "CAUSE_ERROR",
    "CAUSE_INVALID",
    "CAUSE_NOT_FOUND",
    "Decision",
    "Routing",
    "log_text",
    "one_line",
    "parse_extension",
]

#: Q.850 1 "unallocated number": chan_pjsip answers 404 Not Found.
CAUSE_NOT_FOUND = 1
#: Q.850 34 "no circuit/channel available": chan_pjsip answers 503 Service Unavailable.
CAUSE_ERROR = 34
#: Q.850 28 "invalid number format": chan_pjsip answers 484 Address Incomplete.
CAUSE_INVALID = 28

_MSISDN = re.compile(r"[0-9]{1,15}")
_ENDPOINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def parse_extension(extension: str | None, args: tuple[str, ...]) -> tuple[str | None, str]:
    """The MSISDN to look up: ``(msisdn, "")``, or ``(None, why the call is invalid)``.

    The number is the extension Asterisk routed (``agi_extension``), never only the AGI
    argument: Asterisk's argument parser silently strips ``"`` and ``\\`` from
    ``AGI(...,${EXTEN})``, and chan_pjsip decodes ``%22`` / ``%5c`` from the request URI, so
    the extension ``1"00"1`` arrives as ``agi_arg_1: 1001``. An argument is still accepted
    (dialplans written for earlier releases pass ``${EXTEN}``), but only when it is exactly
    the extension; more than one argument means a ``,`` was split by the dialplan.
    """
    if extension is None:
        return None, "no agi_extension in the AGI environment"
    if args and args != (extension,):
        return None, ("the AGI argument is not the extension Asterisk routed (Asterisk strips "
                      "quotes and backslashes from AGI arguments)" if len(args) == 1
                      else "more than one AGI argument (a ',' in the extension?)")
    if not (_MSISDN.fullmatch(extension) and extension.isascii()):
        return None, "extension is not 1-15 digits"
    return extension, ""


def one_line(text: str, limit: int = 400) -> str:
    """A log line built from :func:`log_text` pieces, made safe once more as a whole (control
    and non-ASCII characters escaped, ``$`` too), without escaping it twice; bounded."""
    out = "".join(c if c.isascii() and c.isprintable() else c.encode("unicode_escape").decode()
                  for c in text)
    return out.replace("$", "\\x24")[:limit]


def log_text(value: str, limit: int = 40) -> str:
    """A hostile string made safe for one log line: printable ASCII, escaped, bounded.

    ``$`` is escaped too, so no logger (Asterisk's Log() included) can expand it."""
    return repr(value[:limit])[1:-1].replace("$", "\\x24") + ("..." if len(value) > limit
                                                               else "")


@dataclass(frozen=True, slots=True)
class Decision:
    """What a call gets: the outcome word, the variables to set (DGSM_RESULT last), a log."""

    result: str
    variables: tuple[tuple[str, str], ...]
    detail: str


@dataclass(frozen=True, slots=True)
class Routing:
    """The operator's choices for mapping lookups to channel variables."""

    endpoint: str = "dgsm"
    service: str = "sip.voice"
    prefer_ipv6: bool = False
    cause_not_found: int = CAUSE_NOT_FOUND
    cause_error: int = CAUSE_ERROR
    cause_invalid: int = CAUSE_INVALID

    def __post_init__(self) -> None:
        if not _ENDPOINT_NAME.fullmatch(self.endpoint) or not self.endpoint.isascii():
            raise ValueError(f"invalid PJSIP endpoint name {self.endpoint!r}: "
                             "need 1-64 of A-Z a-z 0-9 _ . -")
        Query(self.service, "1", IdType.MSISDN)  # validates the service name
        for name in ("cause_not_found", "cause_error", "cause_invalid"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= 127:
                raise ValueError(f"{name} must be a Q.850 cause 1..127, not {value!r}")

    def query(self, msisdn: str, service: str | None = None) -> Query:
        """The lookup for a validated MSISDN (raises InvalidQuery for a bad service)."""
        return Query(service or self.service, msisdn, IdType.MSISDN)

    def invalid(self, why: str) -> Decision:
        return Decision("invalid", (("DGSM_CAUSE", str(self.cause_invalid)),
                                   ("DGSM_RESULT", "invalid")), why)

    def error(self, why: str) -> Decision:
        return Decision("error", (("DGSM_CAUSE", str(self.cause_error)),
                                 ("DGSM_RESULT", "error")), why)

    def _endpoint(self, result: Result) -> Endpoint | None:
        order = (result.v6, result.v4) if self.prefer_ipv6 else (result.v4, result.v6)
        return next((e for e in order if e is not None and e.port != 0), None)

    def decide(self, msisdn: str, result: Result) -> Decision:
        """Map a lookup result for ``msisdn`` to variables."""
        if not _MSISDN.fullmatch(msisdn):  # callers validate; never trust that here
            return self.invalid("extension is not 1-15 digits")
        if result.outcome is Outcome.NOT_FOUND:
            return Decision("not-found", (("DGSM_CAUSE", str(self.cause_not_found)),
                                         ("DGSM_RESULT", "not-found")), result.describe())
        if result.outcome is not Outcome.FOUND:
            return self.error(result.describe())
        ep = self._endpoint(result)
        if ep is None:
            return self.error(result.describe() + " (no usable endpoint)")
        try:
            ep = Endpoint(ep.host, ep.port)  # canonical text form, validated again
        except InvalidQuery:
            return self.error("answer with an invalid endpoint")
        host = f"[{ep.host}]" if ep.family == 6 else ep.host
        dial = f"PJSIP/{self.endpoint}/sip:{msisdn}@{host}:{ep.port}"
        return Decision("found", (
            ("DGSM_DIAL", dial),
            ("DGSM_SIP_HOST", ep.host),
            ("DGSM_SIP_PORT", str(ep.port)),
            ("DGSM_AGE", str(result.age if result.age is not None else "")),
            ("DGSM_RESULT", "found"),
        ), result.describe())
