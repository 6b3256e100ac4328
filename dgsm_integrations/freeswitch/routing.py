"""From a dialled number and a lookup result to what FreeSWITCH must do; shared by both ways.

Every call ends in exactly one :class:`Decision`: ``bridge`` to a dial string, or ``hangup``
with a validated cause name. The channel variables it carries (``dgsm_result`` last):

- always: ``dgsm_result`` (``found``, ``not-found``, ``error``, ``invalid``),
  ``dgsm_lookup_ms`` (time of the lookup itself);
- found: ``dgsm_dial_string``, ``dgsm_sip_host``, ``dgsm_sip_port``, ``dgsm_age``,
  ``dgsm_site`` (the OsmoHLR that answered);
- otherwise: ``dgsm_cause`` (the hangup cause used), ``dgsm_reason``.

Dial string: ``[{absolute_codec_string='...',originate_timeout=N}]sofia/<profile>/sip:<msisdn>
@<ip>:<port>``; an IPv6 answer is bracketed and goes through ``profile-v6``; an answer with
both families gives an ordered failover ``...|...`` (IPv4 first unless ``prefer-ipv6``).

The dialled number is hostile input: only 1 to 15 ASCII digits are looked up; anything else
is ``invalid`` and never reaches a dial string. Every value placed in a dial string or a
variable is re-validated here, so nothing the network sends can add dial-string syntax.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..mslookup import Endpoint, IdType, InvalidQuery, Outcome, Query, Result
from .config import FreeswitchConfig

__all__ = ["Decision", "decide", "dial_string", "error", "invalid", "parse_destination"]

_MSISDN = re.compile(r"[0-9]{1,15}")


def parse_destination(value: object) -> str | None:
    """The MSISDN if ``value`` is exactly 1 to 15 ASCII digits, else None."""
    if not isinstance(value, str) or not value.isascii() or not _MSISDN.fullmatch(value):
        return None
    return value


@dataclass(frozen=True, slots=True)
class Decision:
    """What one call gets.

    ``action`` is ``bridge`` (``data`` is the dial string) or ``hangup`` (``data`` is the
    cause name). ``variables`` are set on the channel first, ``dgsm_result`` last.
    """

    result: str
    action: str
    data: str
    variables: tuple[tuple[str, str], ...]
    detail: str

    @property
    def dial(self) -> str | None:
        return self.data if self.action == "bridge" else None

    @property
    def cause(self) -> str | None:
        return self.data if self.action == "hangup" else None


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def _hangup(result: str, cause: str, reason: str, lookup_s: float) -> Decision:
    clean = "".join(c if c.isprintable() and c not in "|;^$\\{}'\"" else "?" for c in reason)
    return Decision(result, "hangup", cause, (
        ("dgsm_cause", cause),
        ("dgsm_reason", clean[:200]),
        ("dgsm_lookup_ms", _ms(lookup_s)),
        ("dgsm_result", result),
    ), reason)


def invalid(config: FreeswitchConfig, why: str) -> Decision:
    return _hangup("invalid", config.cause_invalid, why, 0.0)


def error(config: FreeswitchConfig, why: str, lookup_s: float = 0.0) -> Decision:
    return _hangup("error", config.cause_error, why, lookup_s)


def _leg(profile: str, msisdn: str, ep: Endpoint) -> str:
    host = f"[{ep.host}]" if ep.family == 6 else ep.host
    return f"sofia/{profile}/sip:{msisdn}@{host}:{ep.port}"


def dial_string(config: FreeswitchConfig, msisdn: str, result: Result) -> str | None:
    """The bridge dial string for a found result, or None if it names no usable endpoint."""
    if parse_destination(msisdn) is None:
        return None
    legs: list[str] = []
    order = (result.v6, result.v4) if config.prefer_ipv6 else (result.v4, result.v6)
    for ep in order:
        if ep is None or not 0 < ep.port <= 65535:
            continue
        try:
            ep = Endpoint(ep.host, ep.port)  # canonical text form, validated again
        except InvalidQuery:
            continue
        legs.append(_leg(config.profile_v6 if ep.family == 6 else config.profile, msisdn, ep))
        if not config.failover:
            break
    if not legs:
        return None
    options: list[str] = []
    if config.codec_string:
        options.append(f"absolute_codec_string='{config.codec_string}'")
    if config.originate_timeout:
        options.append(f"originate_timeout={config.originate_timeout}")
    prefix = "{" + ",".join(options) + "}" if options else ""
    return prefix + "|".join(legs)


def decide(config: FreeswitchConfig, msisdn: str, result: Result, lookup_s: float) -> Decision:
    """Map a lookup result for ``msisdn`` to the call's decision."""
    if parse_destination(msisdn) is None:  # callers validate; never trust that here
        return invalid(config, "destination is not 1-15 digits")
    if result.outcome is Outcome.NOT_FOUND:
        return _hangup("not-found", config.cause_not_found, result.describe(), lookup_s)
    if result.outcome is not Outcome.FOUND:
        return error(config, result.describe(), lookup_s)
    dial = dial_string(config, msisdn, result)
    if dial is None:
        return error(config, result.describe() + " (no usable endpoint)", lookup_s)
    ep = next(e for e in ((result.v6, result.v4) if config.prefer_ipv6
                          else (result.v4, result.v6)) if e is not None and e.port)
    site = result.site or ""
    try:
        site = Endpoint(site, 0).host if site else ""
    except InvalidQuery:
        site = "?"
    return Decision("found", "bridge", dial, (
        ("dgsm_dial_string", dial),
        ("dgsm_sip_host", ep.host),
        ("dgsm_sip_port", str(ep.port)),
        ("dgsm_age", str(result.age if result.age is not None else "")),
        ("dgsm_site", site),
        ("dgsm_lookup_ms", _ms(lookup_s)),
        ("dgsm_result", "found"),
    ), result.describe())


def query_for(config: FreeswitchConfig, msisdn: str) -> Query:
    """The lookup for a validated MSISDN."""
    return Query(config.service, msisdn, IdType.MSISDN)
