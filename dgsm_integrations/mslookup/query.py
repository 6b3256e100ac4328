"""Queries: what to look up, parsed and validated before anything is sent.

A query string has the form ``[[delay-][timeout]@]<service>.<id>.<imsi|msisdn>``, exactly as
``osmo-mslookup-client`` takes it (delays in milliseconds).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from .errors import InvalidQuery

__all__ = [
    "DEFAULT_SUFFIX",
    "MAX_DELAY_MS",
    "IdType",
    "Query",
    "as_query",
    "validate_suffix",
]

DEFAULT_SUFFIX = "mdns.osmocom.org"
#: Longest service name OsmoHLR accepts (``OSMO_MSLOOKUP_SERVICE_MAXLEN``).
SERVICE_MAXLEN = 64
#: Upper bound for min_delay and timeout given in a query string: one hour. Longer waits are a
#: mistake (or an attack on a daemon); libosmo-mslookup would accept up to 2**32-1 ms.
MAX_DELAY_MS = 3_600_000

_LABEL = re.compile(r"[A-Za-z0-9_-]{1,63}")
_DIGITS = re.compile(r"[0-9]+")
#: The services D-GSM asks for: parsed queries share these strings.
_SERVICES = {s: s for s in ("sip.voice", "smpp.sms", "gsup.hlr")}
_TIMING = re.compile(r"(?:(?P<delay>[0-9]*)-)?(?P<timeout>[0-9]*)")


class IdType(StrEnum):
    """What kind of subscriber identity a query names."""

    IMSI = "imsi"
    MSISDN = "msisdn"


def _check_labels(text: str, what: str) -> None:
    labels = text.split(".")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise InvalidQuery(
                f"invalid {what} {text!r}: each dot-separated part must be 1 to 63 of "
                "A-Z a-z 0-9 _ -"
            )


def validate_suffix(suffix: str) -> str:
    """Return ``suffix`` if it can be used as mDNS domain suffix, else raise InvalidQuery."""
    _check_labels(suffix, "domain suffix")
    if len(suffix) > 160:
        raise InvalidQuery(f"domain suffix too long ({len(suffix)} > 160 characters)")
    return suffix


def _validate_id(ident: str, id_type: IdType) -> None:
    if id_type is IdType.IMSI:
        if not (_DIGITS.fullmatch(ident) and 6 <= len(ident) <= 15):
            raise InvalidQuery(f"invalid IMSI {ident!r}: need 6 to 15 digits")
    elif not (_DIGITS.fullmatch(ident) and 1 <= len(ident) <= 15):
        raise InvalidQuery(f"invalid MSISDN {ident!r}: need 1 to 15 digits")


def _parse_ms(text: str, what: str) -> int:
    # libosmo-mslookup parses an empty number as 0; so do we.
    value = int(text) if text else 0
    if value > MAX_DELAY_MS:
        raise InvalidQuery(f"{what} {value} ms is longer than the allowed {MAX_DELAY_MS} ms")
    return value


@dataclass(frozen=True, slots=True)
class Query:
    """One subscriber lookup: ``service`` for ``id`` of ``id_type``.

    ``min_delay_ms`` / ``timeout_ms`` are set only when the query string carried them
    (``1000-5000@...``); ``None`` means "use the resolver's defaults".
    """

    service: str
    id: str
    id_type: IdType
    min_delay_ms: int | None = None
    timeout_ms: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.service, str) or not self.service:
            raise InvalidQuery("empty service name")
        if len(self.service) > SERVICE_MAXLEN:
            raise InvalidQuery(
                f"service name too long ({len(self.service)} > {SERVICE_MAXLEN} characters)"
            )
        _check_labels(self.service, "service")
        if not isinstance(self.id_type, IdType):
            try:
                object.__setattr__(self, "id_type", IdType(str(self.id_type).lower()))
            except ValueError:
                raise InvalidQuery(
                    f"invalid id type {self.id_type!r}: need 'imsi' or 'msisdn'"
                ) from None
        if not isinstance(self.id, str):
            raise InvalidQuery(f"invalid id {self.id!r}: must be a string of digits")
        _validate_id(self.id, self.id_type)
        for what, value in (("min_delay", self.min_delay_ms), ("timeout", self.timeout_ms)):
            if value is not None and not (0 <= value <= MAX_DELAY_MS):
                raise InvalidQuery(f"{what} must be 0..{MAX_DELAY_MS} ms, not {value}")

    @classmethod
    def parse(cls, text: str) -> Query:
        """Parse ``[[delay-][timeout]@]service.id.idtype`` (raises :class:`InvalidQuery`)."""
        if not isinstance(text, str):
            raise InvalidQuery(f"query must be a string, not {type(text).__name__}")
        if len(text) > 256:
            raise InvalidQuery("query string too long (more than 256 characters)")
        min_delay: int | None = None
        timeout: int | None = None
        domain = text
        if "@" in text:
            timing, domain = text.split("@", 1)
            m = _TIMING.fullmatch(timing)
            if m is None or len(timing) >= 16:
                raise InvalidQuery(
                    f"invalid timing {timing!r} in {text!r}: need [delay-][timeout]@ in ms"
                )
            # As libosmo-mslookup: an '@' resets both, then sets what is given.
            min_delay = _parse_ms(m.group("delay") or "", "min_delay")
            timeout = _parse_ms(m.group("timeout"), "timeout")
        parts = domain.rsplit(".", 2)
        if len(parts) != 3 or not parts[0]:
            raise InvalidQuery(
                f"invalid query {text!r}: need <service>.<id>.<imsi|msisdn>, "
                "e.g. sip.voice.12345.msisdn"
            )
        service, ident, id_type = parts
        service = _SERVICES.get(service, service)  # one string for every lookup of a kind
        try:
            kind = IdType(id_type.lower())
        except ValueError:
            raise InvalidQuery(
                f"invalid id type {id_type!r} in {text!r}: need 'imsi' or 'msisdn'"
            ) from None
        return cls(service, ident, kind, min_delay, timeout)

    @property
    def domain(self) -> str:
        """``service.id.idtype`` without timing and without the mDNS suffix."""
        return f"{self.service}.{self.id}.{self.id_type.value}"

    @property
    def key(self) -> tuple[str, str, IdType]:
        """What identifies the question on the wire (timing excluded)."""
        return (self.service, self.id, self.id_type)

    def name(self, suffix: str = DEFAULT_SUFFIX) -> str:
        """The full DNS name asked on the wire."""
        return f"{self.domain}.{suffix}"

    def __str__(self) -> str:
        if self.min_delay_ms is None and self.timeout_ms is None:
            return self.domain
        delay = "" if self.min_delay_ms is None else str(self.min_delay_ms)
        timeout = "" if self.timeout_ms is None else str(self.timeout_ms)
        return f"{delay}-{timeout}@{self.domain}"


def as_query(query: str | Query) -> Query:
    """Accept a query string or a :class:`Query`; raise InvalidQuery for anything else."""
    if isinstance(query, Query):
        return query
    if isinstance(query, str):
        return Query.parse(query)
    raise InvalidQuery(f"query must be a string or Query, not {type(query).__name__}")
