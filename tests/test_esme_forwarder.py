"""The forwarder on a virtual clock with in-memory SMSCs: every path, no sockets, no real time.

The village: the local OsmoMSC at 10.0.0.1 (it sends the deliver_sm), SMSCs at 10.0.0.3 and
10.0.0.4; nothing listens on 10.0.0.5; 10.0.0.6 never answers a connect; 10.99.0.9 is outside
the trusted network. Times are virtual and exact: ``loop.time()`` deltas are what the ESME's
timers made them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from dgsm_integrations.esme.cli import EsmeServer
from dgsm_integrations.esme.config import EsmeConfig
from dgsm_integrations.esme.errors import ConnectionLost
from dgsm_integrations.esme.forwarder import Esme
from dgsm_integrations.esme.routing import Routing
from dgsm_integrations.esme.status import Status
from dgsm_integrations.esme.store import message_key
from dgsm_integrations.esme.trust import TrustPolicy, parse_site_credentials
from dgsm_integrations.lab.smsc import mo_sms
from dgsm_integrations.mslookup import Result

from .esme_memory import MemoryNetwork, MemoryQueue, MemorySmsc, TableLookup, run, until

MSC, SITE3, SITE4, DOWN, SILENT, ROGUE = ("10.0.0.1", "10.0.0.3", "10.0.0.4", "10.0.0.5",
                                          "10.0.0.6", "10.99.0.9")


class Village:
    def __init__(self, **cfg: Any) -> None:
        self.net = MemoryNetwork()
        self.net.silent.add(SILENT)
        self.msc = MemorySmsc(self.net, MSC)
        self.site3 = MemorySmsc(self.net, SITE3)
        self.site4 = MemorySmsc(self.net, SITE4)
        self.rogue = MemorySmsc(self.net, ROGUE)
        self.lookup = TableLookup()
        base: dict[str, Any] = dict(src_host=MSC, backoff_min=0.5, backoff_max=4.0,
                                    trust=TrustPolicy.build(["10.0.0.0/24"]))
        base.update(cfg)
        self.esme = Esme(EsmeConfig(**base), self.lookup, opener=self.net.open)

    @property
    def stats(self) -> Any:
        return self.esme.stats

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def send(self, dst: str, text: bytes = b"hi", **kw: Any) -> int:
        return await self.msc.deliver(mo_sms("1001", dst, text, **kw))


@contextlib.asynccontextmanager
async def village(**cfg: Any) -> AsyncIterator[Village]:
    v = Village(**cfg)
    task = asyncio.get_running_loop().create_task(v.esme.run())
    try:
        await v.msc.bound()
        yield v
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def in_village(**cfg: Any) -> Callable[[Callable[[Village], Awaitable[None]]], None]:
    def runner(body: Callable[[Village], Awaitable[None]]) -> None:
        async def main() -> None:
            async with village(**cfg) as v:
                await body(v)
        run(main())
    return runner


def sms_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "dgsm.esme.sms"]


# -- delivered ---------------------------------------------------------------------------------

def test_delivered_at_once_over_one_ismpp_bind(caplog: pytest.LogCaptureFixture) -> None:
    async def body(v: Village) -> None:
        v.lookup.place("2002", SITE4, age=40, site="10.0.0.14")
        t0 = v.now()
        assert [await v.send("2002", b"%d" % i) for i in range(3)] == [Status.ROK] * 3
        assert v.now() == t0  # nothing waited: no timer was involved
        assert [s.get("short_message") for s in v.site4.submits] == [b"0", b"1", b"2"]
        assert v.site4.binds == [("ISMPP", "bind_transmitter", 0)]
        assert v.msc.binds == [("OSMPP", "bind_transceiver", 0)]
        assert v.lookup.queries == ["smpp.sms.2002.msisdn"] * 3
        s = v.stats
        assert (s.received, s.answered_ok, s.delivered, s.answered_error) == (3, 3, 3, 0)
    with caplog.at_level(logging.INFO, logger="dgsm.esme.sms"):
        in_village()(body)
    line = sms_lines(caplog)[0]
    assert "from=1001 to=2002 part=1/1 site=10.0.0.14 age=40 via=10.0.0.4:2775" in line
    assert "result=delivered status=0x00 time=0.0ms detail='message_id=m1'" in line


def test_the_lookups_wait_is_in_the_answer_time(caplog: pytest.LogCaptureFixture) -> None:
    async def body(v: Village) -> None:
        v.lookup.place("2002", SITE3)
        v.lookup.delay = 1.25
        t0 = v.now()
        assert await v.send("2002") == Status.ROK
        assert v.now() - t0 == pytest.approx(1.25)
    with caplog.at_level(logging.INFO, logger="dgsm.esme.sms"):
        in_village()(body)
    assert "time=1250.0ms" in sms_lines(caplog)[0]


# -- the budget --------------------------------------------------------------------------------

def test_budget_expiry_answers_rsyserr_at_the_budget_and_counts_the_late_accept(
        caplog: pytest.LogCaptureFixture) -> None:
    async def body(v: Village) -> None:
        v.lookup.place("2002", SITE3)
        v.site3.submit_delay = 6.0
        t0 = v.now()
        assert await v.send("2002", msg_ref=77) == Status.RSYSERR
        assert v.now() - t0 == pytest.approx(4.0)  # the default budget, to the timer
        assert v.stats.budget_expired == 1 and v.stats.late_accepted == 0
        await v.site3.wait_for(lambda: v.stats.late_accepted == 1)
        assert v.now() - t0 == pytest.approx(6.0)
        assert v.stats.late_refused == 0 and len(v.site3.submits) == 1
    with caplog.at_level(logging.INFO, logger="dgsm.esme"):
        in_village()(body)
    assert "result=budget-expired status=0x08 time=4000.0ms" in sms_lines(caplog)[0]
    late = [r.getMessage() for r in caplog.records if "after the phone" in r.getMessage()]
    assert len(late) == 1 and "ref=77" in late[0] and "2.0s after" in late[0], late


def test_a_late_refusal_is_counted_as_refused_not_accepted() -> None:
    async def body(v: Village) -> None:
        v.lookup.place("2002", SITE3)
        v.site3.submit_delay, v.site3.submit_status = 5.0, Status.RMSGQFUL
        assert await v.send("2002") == Status.RSYSERR
        await v.site3.wait_for(lambda: v.stats.late_refused == 1)
        assert v.stats.late_accepted == 0
    in_village(budget=2.0)(body)


def test_a_slow_lookup_eats_the_budget_and_nothing_is_submitted() -> None:
    async def body(v: Village) -> None:
        v.lookup.place("2002", SITE3)
        v.lookup.delay = 10.0
        t0 = v.now()
        assert await v.send("2002") == Status.RSYSERR
        assert v.now() - t0 == pytest.approx(1.5)
        assert v.site3.submits == [] and v.stats.budget_expired == 1
    in_village(budget=1.5)(body)


def test_a_slow_destination_does_not_hold_up_others() -> None:
    async def body(v: Village) -> None:
        v.lookup.place("3", SITE3)
        v.lookup.place("4", SITE4)
        v.site3.submit_delay = 6.0
        t0 = v.now()
        slow = asyncio.ensure_future(v.send("3"))
        assert [await v.send("4") for _ in range(5)] == [Status.ROK] * 5
        assert v.now() == t0 and not slow.done()
        assert await slow == Status.RSYSERR
        assert v.now() - t0 == pytest.approx(4.0)
    in_village()(body)


# -- destinations down, refusing, silent -----------------------------------------------------

def test_a_destination_that_refuses_connections_fails_fast_during_its_back_off() -> None:
    async def body(v: Village) -> None:
        v.lookup.place("2002", DOWN)
        t0 = v.now()
        assert await v.send("2002") == Status.RSYSERR
        assert await v.send("2002") == Status.RSYSERR  # within the back-off: no connect
        assert v.now() == t0
        assert v.net.connects.count((DOWN, 2775)) == 1
        await asyncio.sleep(0.5)  # backoff_min: the next SMS tries again
        assert await v.send("2002") == Status.RSYSERR
        assert v.net.connects.count((DOWN, 2775)) == 2
        assert v.stats.destination_down == 3 and v.stats.delivered == 0
    in_village()(body)


def test_a_destination_that_never_answers_the_connect_costs_the_connect_timeout() -> None:
    async def body(v: Village) -> None:
        v.lookup.place("2002", SILENT)
        t0 = v.now()
        assert await v.send("2002") == Status.RSYSERR
        assert v.now() - t0 == pytest.approx(2.0)  # connect_timeout, inside the budget
        assert v.stats.destination_down == 1 and v.stats.budget_expired == 0
    in_village()(body)


def test_a_bind_refused_by_the_destination_is_destination_down() -> None:
    async def body(v: Village) -> None:
        v.lookup.place("2002", SITE3)
        v.site3.password = "other"  # noqa: S105
        assert await v.send("2002") == Status.RSYSERR
        assert v.site3.binds == [("ISMPP", "bind_transmitter", Status.RINVPASWD)]
        assert v.site3.submits == [] and v.stats.destination_down == 1
    in_village()(body)


@pytest.mark.parametrize(("site_status", "answered", "counter"), [
    (Status.RMSGQFUL, Status.RSYSERR, "destination_refused"),
    (Status.RSYSERR, Status.RSYSERR, "destination_refused"),
    (Status.RINVDSTADR, Status.RINVDSTADR, "not_found"),
])
def test_a_submit_refused_by_the_site(site_status: int, answered: int, counter: str) -> None:
    async def body(v: Village) -> None:
        v.lookup.place("2002", SITE3)
        v.site3.submit_status = site_status
        assert await v.send("2002") == answered
        assert getattr(v.stats, counter) == 1 and v.stats.delivered == 0
    in_village()(body)


def test_a_destination_that_drops_the_bind_mid_submit_is_rebound_for_the_next() -> None:
    async def body(v: Village) -> None:
        v.lookup.place("2002", SITE3)
        v.site3.answer = False
        pending = asyncio.ensure_future(v.send("2002"))
        await v.site3.wait_for(lambda: len(v.site3.submits) == 1)
        v.site3.conns[0].close()
        assert await pending == Status.RSYSERR
        assert v.stats.destination_down == 1
        v.site3.answer = True
        assert await v.send("2002") == Status.ROK
        assert [b[0] for b in v.site3.binds] == ["ISMPP", "ISMPP"]
    in_village()(body)


def test_a_silent_destination_is_answered_within_the_budget() -> None:
    async def body(v: Village) -> None:
        v.lookup.place("2002", SITE3)
        v.site3.answer = False
        t0 = v.now()
        assert await v.send("2002") == Status.RSYSERR
        assert v.now() - t0 == pytest.approx(1.0)  # response_timeout 10 s: the budget wins
        assert v.stats.budget_expired == 1
    in_village(budget=1.0)(body)


def test_a_submit_timeout_inside_the_budget_is_destination_silent(
        caplog: pytest.LogCaptureFixture) -> None:
    async def body(v: Village) -> None:
        v.lookup.place("2002", SITE3)
        v.site3.answer = False
        assert await v.send("2002") == Status.RSYSERR
        assert v.stats.destination_down == 1 and v.stats.budget_expired == 0
    with caplog.at_level(logging.INFO, logger="dgsm.esme.sms"):
        in_village(response_timeout=0.5)(body)
    assert "result=destination-silent" in sms_lines(caplog)[0]


# -- not found, untrusted, invalid -----------------------------------------------------------

def test_not_found_is_rinvdstadr_or_the_configured_status() -> None:
    async def body(v: Village) -> None:
        assert await v.send("7777") == Status.RINVDSTADR
        assert v.stats.not_found == 1 and v.net.connects == [(MSC, 2775)]
    in_village()(body)

    async def configured(v: Village) -> None:
        assert await v.send("7777") == 0x45
    in_village(not_found_status=0x45)(configured)


def test_an_untrusted_smsc_gets_nothing_not_even_a_connect(
        caplog: pytest.LogCaptureFixture) -> None:
    async def body(v: Village) -> None:
        v.lookup.place("2002", ROGUE)
        assert await v.send("2002") == Status.RSYSERR
        v.lookup.place("3003", SITE3, site=ROGUE)  # trusted SMSC, answer from outside
        assert await v.send("3003") == Status.RSYSERR
        assert v.stats.untrusted == 2
        assert (ROGUE, 2775) not in v.net.connects and v.rogue.binds == []
        assert v.site3.submits == []
    with caplog.at_level(logging.INFO, logger="dgsm.esme.sms"):
        in_village()(body)
    assert all("result=untrusted-destination" in line for line in sms_lines(caplog))


def test_nothing_trusted_forwards_nothing() -> None:
    async def body(v: Village) -> None:
        v.lookup.place("2002", SITE3)
        assert await v.send("2002") == 0x45
        assert v.site3.binds == [] and v.stats.untrusted == 1
    in_village(trust=TrustPolicy(), untrusted_status=0x45)(body)


@pytest.mark.parametrize("dst", ["", "abc", "1234567890123456", "+", "*100#"])
def test_an_invalid_number_is_refused_without_a_lookup(dst: str) -> None:
    async def body(v: Village) -> None:
        assert await v.send(dst) == Status.RINVDSTADR
        assert await v.send("2002", dest_ton=5) == Status.RINVDSTADR  # alphanumeric
        assert v.lookup.queries == [] and v.stats.invalid_number == 2
    in_village()(body)


# -- the deliver_sm boundary: every failure answered, the bind kept ---------------------------

def test_an_exception_in_the_lookup_is_rsyserr_and_the_bind_stays_up(
        caplog: pytest.LogCaptureFixture) -> None:
    async def body(v: Village) -> None:
        v.lookup.place("2002", SITE3)
        v.lookup.error = RuntimeError("resolver bug")
        assert await v.send("2002") == Status.RSYSERR
        v.lookup.error = None
        assert await v.send("2002") == Status.ROK
        assert v.esme.osmpp.binds == 1 and len(v.msc.binds) == 1
        assert v.stats.answered_error == 1 and v.stats.answered_ok == 1
    with caplog.at_level(logging.INFO, logger="dgsm.esme"):
        in_village()(body)
    line = sms_lines(caplog)[0]
    assert "result=internal-error status=0x08" in line and "resolver bug" in line
    assert any(r.getMessage() == "forwarding failed" and r.exc_info for r in caplog.records)


def test_an_exception_in_routing_is_rsyserr_and_the_bind_stays_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Routing, result: object) -> None:
        raise KeyError("routing bug")

    async def body(v: Village) -> None:
        v.lookup.place("2002", SITE3)
        monkeypatch.setattr(Routing, "decide", broken)
        assert await v.send("2002") == Status.RSYSERR
        monkeypatch.undo()
        assert await v.send("2002") == Status.ROK
        assert v.esme.osmpp.binds == 1
        assert v.stats.received == 2 == v.stats.answered_ok + v.stats.answered_error
    in_village()(body)


def test_an_exception_while_submitting_is_rsyserr(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(v: Village) -> None:
        v.lookup.place("2002", SITE3)

        def broken(*args: object) -> None:
            raise AttributeError("pool bug")
        monkeypatch.setattr(v.esme.pool, "link", broken)
        assert await v.send("2002") == Status.RSYSERR
        assert v.esme.osmpp.binds == 1 and v.site3.submits == []
    in_village()(body)


def test_overload_is_answered_rthrottled_at_once() -> None:
    async def body(v: Village) -> None:
        v.lookup.place("2002", SITE3)
        v.site3.submit_delay = 1.0
        t0 = v.now()
        res = await asyncio.gather(*(v.send("2002", b"%d" % i) for i in range(3)))
        assert sorted(res) == [Status.ROK, Status.ROK, Status.RTHROTTLED]
        assert v.now() - t0 == pytest.approx(1.0) and v.stats.overload == 1
    in_village(max_in_flight=2)(body)


def test_a_lost_osmpp_bind_loses_the_answers_and_binds_again_after_the_back_off() -> None:
    async def body(v: Village) -> None:
        v.lookup.place("2002", SITE3)
        v.site3.submit_delay = 1.0
        pending = [asyncio.ensure_future(v.send("2002", b"%d" % i)) for i in range(3)]
        await v.site3.wait_for(lambda: len(v.site3.submits) == 3)
        t0 = v.now()
        old = v.msc.osmpp
        assert old is not None
        old.close()
        results = await asyncio.gather(*pending, return_exceptions=True)
        assert all(isinstance(r, ConnectionLost) for r in results), results
        await v.msc.wait_for(lambda: v.msc.osmpp not in (None, old))
        assert v.now() - t0 == pytest.approx(0.5)  # backoff_min
        await v.esme.wait_idle(10)
        s = v.stats
        assert s.received == 3 == s.answers_lost and s.answered_ok == 0
        assert await v.send("2002") == Status.ROK
    in_village()(body)


# -- store-and-forward, as far as it is the forwarder's logic ---------------------------------

def queued(**cfg: Any) -> Callable[[Callable[[Village, MemoryQueue], Awaitable[None]]], None]:
    def runner(body: Callable[[Village, MemoryQueue], Awaitable[None]]) -> None:
        async def main() -> None:
            async with village(**cfg) as v:
                q = MemoryQueue()
                v.esme.store = q
                await body(v, q)
        run(main())
    return runner


@pytest.mark.parametrize(("where", "reason"), [
    (DOWN, "destination-down"), (None, "not-found"), (SILENT, "destination-down"),
])
def test_with_a_queue_a_temporary_failure_is_accepted_once_stored(
        where: str | None, reason: str) -> None:
    async def body(v: Village, q: MemoryQueue) -> None:
        if where is not None:
            v.lookup.place("2002", where)
        assert await v.send("2002") == Status.ROK
        assert [r for _, r in q.stored] == [reason]
        assert v.stats.queued == 1 and v.stats.answered_ok == 1
    queued()(body)


def test_with_a_queue_the_budget_keeps_a_share_for_the_store() -> None:
    async def body(v: Village, q: MemoryQueue) -> None:
        v.lookup.place("2002", SITE3)
        v.site3.submit_delay = 6.0
        t0 = v.now()
        assert await v.send("2002") == Status.ROK
        assert v.now() - t0 == pytest.approx(3.5)  # budget 4 minus store_reserve 0.5
        [(msg, reason)] = q.stored
        assert reason == "budget-expired" and q.states[message_key(msg)] == "inflight"
        await v.site3.wait_for(lambda: q.states[message_key(msg)] == "delivered")
        assert v.now() - t0 == pytest.approx(6.0)  # the direct attempt's outcome, recorded
        assert v.stats.late_accepted == 0  # with a queue nothing is delivered twice
    queued()(body)


def test_with_a_queue_an_outstanding_attempt_that_fails_is_left_for_a_retry() -> None:
    async def body(v: Village, q: MemoryQueue) -> None:
        v.lookup.place("2002", SITE3)
        v.site3.submit_delay, v.site3.submit_status = 6.0, Status.RMSGQFUL
        assert await v.send("2002") == Status.ROK
        [(msg, _)] = q.stored
        await v.site3.wait_for(lambda: q.states[message_key(msg)] == "pending")
    queued()(body)


def test_with_a_queue_a_resend_of_an_accepted_sms_is_not_delivered_again() -> None:
    async def body(v: Village, q: MemoryQueue) -> None:
        v.lookup.place("2002", SITE3)
        assert await v.send("2002", msg_ref=5) == Status.ROK
        await v.esme.wait_idle(1)  # the delivery record is written in the background
        assert await v.send("2002", msg_ref=5) == Status.ROK
        assert len(v.site3.submits) == 1 and q.stored == []
        assert await v.send("2002", msg_ref=6) == Status.ROK  # another SMS: delivered
        assert len(v.site3.submits) == 2
    queued()(body)


def test_with_a_queue_that_cannot_answer_the_check_the_sms_is_routed_anyway() -> None:
    async def body(v: Village, q: MemoryQueue) -> None:
        v.lookup.place("2002", SITE3)
        q.seen_delay = 5.0
        t0 = v.now()
        assert await v.send("2002") == Status.ROK
        assert v.now() - t0 == pytest.approx(0.25)  # store_check, then routed
        assert len(v.site3.submits) == 1
    queued()(body)


def test_with_a_broken_queue_only_what_needs_it_is_refused() -> None:
    async def body(v: Village, q: MemoryQueue) -> None:
        v.lookup.place("2002", DOWN)
        v.lookup.place("3003", SITE3)
        q.fail = OSError(28, "No space left on device")
        assert await v.send("2002") == Status.RSYSERR  # needs the queue: never ROK-then-lost
        assert await v.send("3003") == Status.ROK  # direct: unaffected
        assert v.stats.store_errors == 1 and v.stats.queued == 0
    queued()(body)


def test_with_a_queue_untrusted_and_invalid_are_answered_not_stored() -> None:
    async def body(v: Village, q: MemoryQueue) -> None:
        v.lookup.place("2002", ROGUE)
        assert await v.send("2002") == Status.RSYSERR
        assert await v.send("abc") == Status.RINVDSTADR
        assert q.stored == [] and v.stats.queued == 0
    queued()(body)


# -- the clock --------------------------------------------------------------------------------

def test_an_injected_clock_times_the_log_line(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]

    async def body(v: Village) -> None:
        v.lookup.place("2002", SITE3)
        v.esme.clock = lambda: now[0]
        resolve = v.lookup.resolve

        async def slow_by_the_injected_clock(query: str) -> Result:
            now[0] += 0.5
            return await resolve(query)
        v.lookup.resolve = slow_by_the_injected_clock  # type: ignore[method-assign]
        t0 = v.now()
        assert await v.send("2002") == Status.ROK
        assert v.now() == t0  # the loop's clock did not move: only the injected one
    with caplog.at_level(logging.INFO, logger="dgsm.esme.sms"):
        in_village()(body)
    assert "time=500.0ms" in sms_lines(caplog)[0]


# -- what is forwarded -----------------------------------------------------------------------

def test_fields_pass_through_byte_for_byte() -> None:
    async def body(v: Village) -> None:
        v.lookup.place("2002", SITE4)
        sent = mo_sms("1001", "+2002", "Привет".encode("utf-16-be"), data_coding=0x08,
                      registered_delivery=1, protocol_id=0x3F, msg_ref=0xBEEF)
        assert await v.msc.deliver(sent) == Status.ROK
        [got] = v.site4.submits
        for key in ("data_coding", "esm_class", "protocol_id", "registered_delivery",
                    "source_addr_ton", "source_addr_npi", "user_message_reference",
                    "dest_addr_ton", "short_message"):
            assert got.get(key) == sent[key], key
        assert got.get("source_addr") == b"1001" and got.get("destination_addr") == b"2002"
        assert v.lookup.queries == ["smpp.sms.2002.msisdn"]
    in_village()(body)


def test_a_status_report_goes_as_0x08_to_the_original_senders_site() -> None:
    async def body(v: Village) -> None:
        v.lookup.place("1001", SITE3)  # the report's recipient: the original sender
        v.lookup.place("2002", SITE4)
        assert await v.msc.deliver(mo_sms("2002", "1001", b"\x00st", report=True)) == 0
        assert v.site4.submits == [] and v.site3.submits[0].get("esm_class") == 0x08
        assert v.stats.reports == 1
    in_village()(body)


def test_site_credentials_are_used_for_their_network_only() -> None:
    creds = TrustPolicy.build(["10.0.0.0/24"], [parse_site_credentials("10.0.0.4/32=V4:pw4")])

    async def body(v: Village) -> None:
        v.site4.password = "pw4"  # noqa: S105
        v.lookup.place("3", SITE3)
        v.lookup.place("4", SITE4)
        assert await v.send("3") == Status.ROK and await v.send("4") == Status.ROK
        assert v.site3.binds == [("ISMPP", "bind_transmitter", 0)]
        assert v.site4.binds == [("V4", "bind_transmitter", 0)]
    in_village(trust=creds)(body)


# -- the daemon's stop ---------------------------------------------------------------------------

@pytest.mark.parametrize(("grace", "answered"), [(2.0, True), (0.0, False)])
def test_on_stop_grace_lets_sms_in_flight_be_answered(grace: float, answered: bool) -> None:
    async def main() -> None:
        net = MemoryNetwork()
        msc, site3 = MemorySmsc(net, MSC), MemorySmsc(net, SITE3)
        lookup = TableLookup()
        lookup.place("2002", SITE3)
        site3.submit_delay = 1.0
        config = EsmeConfig(src_host=MSC, trusted=("10.0.0.0/24",), grace=grace)
        server = EsmeServer(config, lookup, net.open)
        await server.start()
        assert lookup.opened
        pending = asyncio.ensure_future(msc.deliver(mo_sms("1001", "2002", b"x")))
        await until(lambda: len(site3.submits) == 1)
        t0 = asyncio.get_running_loop().time()
        await server.close()
        assert not lookup.opened and site3.conns == []  # the ISMPP bind is closed too
        if answered:
            assert await pending == Status.ROK
            assert asyncio.get_running_loop().time() - t0 == pytest.approx(1.0)
        else:
            with pytest.raises(ConnectionLost):
                await pending
        assert server.stats.received == 1 and server.active == 0
    run(main())
