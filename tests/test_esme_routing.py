"""esme/routing.py without sockets, loops or clocks: every way one SMS can be decided."""

from __future__ import annotations

import pytest

from dgsm_integrations.esme.errors import (
    BindRefused,
    ConnectionLost,
    DestinationDown,
    InvalidNumber,
    SmppError,
)
from dgsm_integrations.esme.message import Message
from dgsm_integrations.esme.routing import FORWARD, NOT_QUEUED, Decision, Routing, internal_error
from dgsm_integrations.esme.status import Status
from dgsm_integrations.esme.trust import SiteCredentials, TrustPolicy
from dgsm_integrations.mslookup import Endpoint, Outcome, Query, Result

Q = Query.parse("smpp.sms.2002.msisdn")
MESH = TrustPolicy.build(["10.23.0.0/16"])
RULES = Routing(MESH)
SMSC = Endpoint("10.23.4.5", 2775)


def found(host: str = "10.23.4.5", site: str | None = "10.23.4.1", age: int = 7,
          v6: str | None = None) -> Result:
    return Result(Q, Outcome.FOUND, age=age, v4=Endpoint(host, 2775) if host else None,
                  v6=Endpoint(v6, 2775) if v6 else None, site=site)


def test_the_query_is_smpp_sms_of_the_normalised_msisdn() -> None:
    msg = Message(1, {}, "2002", (1, 1))
    assert Routing.query(msg) == "smpp.sms.2002.msisdn"
    assert Query.parse(Routing.query(msg)) == Q


def test_a_trusted_answer_is_forwarded_to_its_smsc_with_site_and_age() -> None:
    d = RULES.decide(found())
    assert d == Decision(Status.RSYSERR, FORWARD, "10.23.4.1", 7, SMSC)
    assert d.forward and not d.accepted  # answered as it stands, it would be an error


def test_ipv4_is_preferred_when_the_answer_has_both() -> None:
    d = RULES.decide(found(v6="fd00::5"))
    assert d.destination == SMSC


def test_an_ipv6_only_answer_is_forwarded_when_trusted() -> None:
    rules = Routing(TrustPolicy.build(["fd00:23::/64"]))
    d = rules.decide(found(host="", site="fd00:23::1", v6="fd00:23::5"))
    assert d.forward and d.destination == Endpoint("fd00:23::5", 2775)


@pytest.mark.parametrize(("result", "status", "name"), [
    (Result(Q, Outcome.NOT_FOUND), Status.RINVDSTADR, "not-found"),
    (Result(Q, Outcome.ERROR, reason="no socket"), Status.RSYSERR, "lookup-error"),
    (Result(Q, Outcome.NONE), Status.RSYSERR, "lookup-error"),
    (Result(Q, Outcome.FOUND, age=1, site="10.23.4.1"), Status.RSYSERR, "lookup-error"),
    (found(host="10.99.0.5"), Status.RSYSERR, "untrusted-destination"),
    (found(site="10.99.0.1"), Status.RSYSERR, "untrusted-destination"),
    (found(site=None), Status.RSYSERR, "untrusted-destination"),
])
def test_refusals(result: Result, status: int, name: str) -> None:
    d = RULES.decide(result)
    assert (d.status, d.result) == (status, name)
    assert not d.forward and not d.accepted


def test_the_refusal_statuses_are_the_configured_ones() -> None:
    rules = Routing(MESH, not_found_status=0x45, untrusted_status=0x58)
    assert rules.decide(Result(Q, Outcome.NOT_FOUND)).status == 0x45
    assert rules.decide(found(host="10.99.0.5")).status == 0x58
    assert rules.decide(Result(Q, Outcome.ERROR)).status == Status.RSYSERR  # not configurable


def test_the_untrusted_detail_names_who_and_the_trusted_networks() -> None:
    named = RULES.decide(found(host="10.99.0.5"))
    assert named.detail == "10.99.0.5 is outside the trusted networks (10.23.0.0/16)"
    assert named.destination == Endpoint("10.99.0.5", 2775)  # for the log line only
    source = RULES.decide(found(site="10.99.0.1"))
    assert source.detail.startswith("answer from 10.99.0.1 is outside")


def test_the_lookup_error_detail_is_the_resolvers_reason() -> None:
    assert RULES.decide(Result(Q, Outcome.ERROR, reason="no route")).detail == "no route"


def test_nothing_trusted_refuses_everything_and_any_site_forwards_everything() -> None:
    assert RULES.decide(found()).forward
    assert Routing(TrustPolicy()).decide(found()).result == "untrusted-destination"
    anyone = Routing(TrustPolicy(any_site=True)).decide(found(host="203.0.113.9", site=None))
    assert anyone.forward


def test_site_credentials_networks_are_trusted() -> None:
    creds = SiteCredentials(TrustPolicy.build(["10.99.0.0/16"]).trusted[0], "VILLAGE", "pw")
    rules = Routing(TrustPolicy.build(None, [creds]))
    assert rules.decide(found(host="10.99.0.5", site="10.99.0.1")).forward
    assert not rules.decide(found()).forward


def test_an_invalid_number_is_refused_rinvdstadr_whatever_is_configured() -> None:
    d = Routing(MESH, not_found_status=0x45).invalid(InvalidNumber("'abc' is not 1-15 digits"))
    assert d == Decision(Status.RINVDSTADR, "invalid-number",
                         detail="'abc' is not 1-15 digits")


TO = RULES.decide(found())


def test_delivered_keeps_the_destination_and_names_the_message_id() -> None:
    d = Routing.delivered(TO, "msg_id_not_implemented")
    assert d == Decision(Status.ROK, "delivered", "10.23.4.1", 7, SMSC,
                         "message_id=msg_id_not_implemented")
    assert d.accepted and not d.forward


@pytest.mark.parametrize(("exc", "status", "name"), [
    (SmppError(Status.RINVDSTADR, "submit_sm"), Status.RINVDSTADR, "not-found-at-site"),
    (SmppError(Status.RMSGQFUL, "submit_sm"), Status.RSYSERR, "refused"),
    (SmppError(Status.RSYSERR, "submit_sm"), Status.RSYSERR, "refused"),
    (DestinationDown("ismpp:10.23.4.5:2775: down"), Status.RSYSERR, "destination-down"),
    (ConnectionLost("closed before submit_sm_resp"), Status.RSYSERR, "destination-down"),
    (ConnectionRefusedError(111, "refused"), Status.RSYSERR, "destination-down"),
    (TimeoutError(), Status.RSYSERR, "destination-silent"),
    (BindRefused("x", Status.RINVPASWD), Status.RSYSERR, "internal-error"),
    (KeyError("bug"), Status.RSYSERR, "internal-error"),
    (RuntimeError("bug"), Status.RSYSERR, "internal-error"),
])
def test_submit_failures(exc: BaseException, status: int, name: str) -> None:
    d = RULES.failed(TO, exc)
    assert (d.status, d.result) == (status, name)
    assert d.destination == SMSC and d.site == "10.23.4.1" and d.age == 7
    assert not d.accepted and not d.forward


def test_a_site_saying_not_found_uses_the_configured_status() -> None:
    rules = Routing(MESH, not_found_status=0x45)
    assert rules.failed(TO, SmppError(Status.RINVDSTADR, "submit_sm")).status == 0x45


def test_failure_details_say_what_happened() -> None:
    assert RULES.failed(TO, SmppError(Status.RMSGQFUL, "submit_sm")).detail.startswith(
        "submit_sm: ")
    assert RULES.failed(TO, DestinationDown("down (refused)")).detail == "down (refused)"
    assert RULES.failed(TO, KeyError("bug")).detail == "KeyError('bug')"


def test_internal_error_without_a_destination() -> None:
    d = internal_error(ValueError("x"))
    assert d == Decision(Status.RSYSERR, "internal-error", detail="ValueError('x')")


def test_noting_appends_to_the_detail() -> None:
    assert Decision(8, "not-found").noting("not stored: full").detail == "not stored: full"
    assert Decision(8, "x", detail="a").noting("b").detail == "a; b"


def test_refusals_that_are_never_queued() -> None:
    assert {"untrusted-destination", "invalid-number"} == NOT_QUEUED
    for result in ("not-found", "lookup-error", "destination-down", "refused",
                   "budget-expired", "not-found-at-site", "destination-silent"):
        assert result not in NOT_QUEUED
