"""The ESME: every deliver_sm from the local OsmoMSC to the recipient's current site.

For each deliver_sm (all handled concurrently; answers go out in whatever order they finish):

1. decode (malformed: answered with an error by the connection layer);
2. normalise the destination; not an MSISDN: RINVDSTADR at once, nothing looked up;
3. look up ``smpp.sms.<msisdn>.msisdn`` (coalesced by the resolver);
4. refuse (``untrusted_status``, default RSYSERR) an answer that came from or names an
   address outside the trusted networks (:mod:`.trust`): nothing is sent there, not even a
   TCP connect;
5. submit_sm to the winning site's SMPP server over the pooled ISMPP bind, as that site's
   credentials (:meth:`.TrustPolicy.credentials_for`) or the default ISMPP ones;
6. answer ROK only when that submit_sm was accepted; otherwise RSYSERR (temporary: lookup
   error, destination down, refusing or silent, budget expired) or ``not_found_status``
   (default RINVDSTADR: no site knows the recipient, or the site says it does not).

Which of these each step is, and the status it is answered with, is decided by
:mod:`.routing` (pure); this module does the I/O, the budget, the counters, the store hand-off
and the log line. Time is read from one clock, the event loop's (``clock`` overrides it for
measuring; the budget's timers are the loop's), so the forwarder runs unchanged on a loop with
a virtual clock.

The whole of 2-6 runs under ``budget`` (default 4 s, below OsmoMSC's 5 s deliver_sm timer).
With a store (``--queue``) a temporary failure or a not-found becomes "accept once durably
stored" (the store retries on its own, :mod:`.store`), and a phone's resend of an SMS already
accepted is answered ROK without delivering it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from ..mslookup import Endpoint, Result
from .binds import IsmppPool, Opener, OsmppLink, open_tcp
from .config import EsmeConfig
from .connection import SmppConnection
from .errors import InvalidNumber
from .message import Message
from .pdu import Pdu
from .routing import NOT_QUEUED, Decision, Routing, internal_error
from .status import Status

__all__ = ["Clock", "Esme", "EsmeStats", "Lookup", "Queue"]

log = logging.getLogger("dgsm.esme")
sms_log = logging.getLogger("dgsm.esme.sms")

#: seconds, monotonic, in the event loop's timebase
Clock = Callable[[], float]


class Lookup(Protocol):
    async def resolve(self, query: str) -> Result: ...


class Queue(Protocol):
    """What the forwarder needs of a store-and-forward queue (:class:`.store.Store`)."""

    async def seen(self, msg: Message, wait: float = 0.25) -> bool: ...
    async def enqueue(self, msg: Message, reason: str,
                      attempt: asyncio.Future[int] | None = None,
                      wait: float | None = None) -> bool: ...
    async def record_delivered(self, msg: Message) -> None: ...


@dataclass
class EsmeStats:
    """Counters (monotonic). ``received`` = the sum of the ``answered_*`` and
    ``answers_lost`` once nothing is in flight: that is the "nothing lost" invariant."""

    received: int = 0
    answered_ok: int = 0
    answered_error: int = 0
    answers_lost: int = 0
    delivered: int = 0
    queued: int = 0
    invalid_number: int = 0
    not_found: int = 0
    lookup_errors: int = 0
    destination_down: int = 0
    destination_refused: int = 0
    #: lookups whose answer came from or named an address outside the trusted networks
    untrusted: int = 0
    #: the store could not be read or written in time (SMS routed or refused without it)
    store_errors: int = 0
    budget_expired: int = 0
    #: submit_sm accepted by the destination after the budget had run out (possible duplicate)
    late_accepted: int = 0
    #: submit_sm given up on (budget) that the destination then refused or never answered
    late_refused: int = 0
    overload: int = 0
    malformed: int = 0
    reports: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _settle(fut: asyncio.Future[int], task: asyncio.Task[Decision]) -> None:
    if fut.done():
        return
    if task.cancelled() or task.exception() is not None:
        fut.set_result(Status.RSYSERR)
    else:
        fut.set_result(task.result().status)


#: which counter each decision's result adds to (the forward path counts as it goes)
_COUNTER = {"invalid-number": "invalid_number", "not-found": "not_found",
            "not-found-at-site": "not_found", "lookup-error": "lookup_errors",
            "untrusted-destination": "untrusted", "refused": "destination_refused",
            "destination-down": "destination_down", "destination-silent": "destination_down",
            "delivered": "delivered"}


@dataclass(eq=False)
class Esme:
    """The daemon: ``await esme.run()`` until cancelled.

    ``clock``: the time to measure with (default: the running loop's ``time()``, the clock of
    the budget's timers); ``opener``: how binds open their connections (default TCP)."""

    config: EsmeConfig
    lookup: Lookup
    store: Queue | None = None
    stats: EsmeStats = field(default_factory=EsmeStats)
    clock: Clock | None = None
    opener: Opener = open_tcp

    def __post_init__(self) -> None:
        self.pool = IsmppPool(self.config.ismpp(), self.config.window, self.opener)
        self.osmpp = OsmppLink(self.config.src_host, self.config.src_port,
                               self.config.osmpp(), self._on_request, self.opener)
        self._tasks: set[asyncio.Task[None]] = set()
        self.idle = asyncio.Event()
        self.idle.set()

    @property
    def routing(self) -> Routing:
        return self.config.routing

    def now(self) -> float:
        return self.clock() if self.clock is not None else asyncio.get_running_loop().time()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def log_trust(self) -> None:
        """Say once, at start-up, what the ESME will forward to (loudly when unsafe)."""
        trust = self.config.trust
        if trust.any_site:
            log.warning(
                "--trust-any-site: SMS and the ISMPP password (system-id %s) go to whatever "
                "address any host on the mslookup group names first; mslookup answers are "
                "unauthenticated. Use --trusted NET (your mesh networks) instead",
                self.config.dst_system_id)
        elif not trust.networks:
            log.error(
                "no trusted networks: every SMS is answered 0x%02x "
                "and nothing is forwarded. Set --trusted NET (repeatable) to the networks of "
                "your villages' SMSCs and OsmoHLRs (this village's too), or waive the check "
                "with --trust-any-site", self.config.untrusted_status)
        else:
            log.info("forwarding only to SMSCs in: %s", trust.describe())

    async def run(self) -> None:
        self.log_trust()
        try:
            await self.osmpp.run()
        finally:
            await self.close()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pool.close()

    # -- deliver_sm: the boundary; every one is answered, whatever happens -----------------

    def _on_request(self, conn: SmppConnection, pdu: Pdu) -> None:
        if pdu.command != "deliver_sm":
            conn.nack(pdu.sequence, Status.RINVCMDID)
            return
        self.stats.received += 1
        if len(self._tasks) >= self.config.max_in_flight:
            self.stats.overload += 1
            self._answer(conn, pdu, Decision(Status.RTHROTTLED, "overload"), None, 0.0)
            return
        try:
            task = asyncio.get_running_loop().create_task(self._handle(conn, pdu))
        except Exception as exc:  # answered all the same, never left to OsmoMSC's timer
            log.exception("cannot handle deliver_sm seq=%d", pdu.sequence)
            self._answer(conn, pdu, internal_error(exc), None, 0.0)
            return
        self._tasks.add(task)
        self.idle.clear()
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self.idle.set()

    def _count(self, decision: Decision) -> Decision:
        counter = _COUNTER.get(decision.result)
        if counter is not None:
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        return decision

    async def _handle(self, conn: SmppConnection, pdu: Pdu) -> None:
        start = self.now()
        msg: Message | None = None
        try:
            msg = Message.from_pdu(pdu)
            decision = await self._route(msg)
        except InvalidNumber as exc:
            decision = self._count(Routing.invalid(exc))
        except Exception as exc:  # never let one message take the bind down
            log.exception("forwarding failed")
            decision = internal_error(exc)
        self._answer(conn, pdu, decision, msg, self.now() - start)

    async def _route(self, msg: Message) -> Decision:
        store = self.store
        if store is None:
            try:
                async with asyncio.timeout(self.config.budget):
                    return await self.forward(msg)
            except TimeoutError:
                self.stats.budget_expired += 1
                return Decision(Status.RSYSERR, "budget-expired")
        # store-and-forward: the budget covers the direct attempt *and* the durable store;
        # a store that is slow, locked or broken costs at most store_check before routing
        loop = asyncio.get_running_loop()
        deadline = self.now() + self.config.budget
        if await store.seen(msg, self.config.store_check):
            return Decision(Status.ROK, "duplicate")
        attempt = loop.create_task(self.forward(msg))
        status_of: asyncio.Future[int] = loop.create_future()
        attempt.add_done_callback(lambda t: _settle(status_of, t))
        direct_share = max(0.0, deadline - self.now() - self.config.store_reserve)
        done, _ = await asyncio.wait({attempt}, timeout=direct_share)
        if attempt in done and not attempt.cancelled() and attempt.exception() is None:
            decision = attempt.result()
            if decision.status == Status.ROK:
                self._background(store.record_delivered(msg))
                return decision
            if decision.result in NOT_QUEUED:
                return decision
            pending: asyncio.Future[int] | None = None
        else:
            self.stats.budget_expired += 1
            decision = Decision(Status.RSYSERR, "budget-expired")
            pending = status_of  # still outstanding: retry only if it fails
        left = max(0.05, deadline - self.now())
        try:
            async with asyncio.timeout(left + 0.1):
                await asyncio.shield(store.enqueue(msg, decision.result, pending, wait=left))
        except Exception as exc:
            self.stats.store_errors += 1  # the store logs its failures (rate-limited)
            return decision.noting(f"not stored: {str(exc) or type(exc).__name__}")
        self.stats.queued += 1
        return decision.but(Status.ROK, f"queued({decision.result})")

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        self.idle.clear()
        task.add_done_callback(self._done)

    def _answer(self, conn: SmppConnection, pdu: Pdu, decision: Decision, msg: Message | None,
                elapsed: float) -> None:
        if conn.respond(pdu, decision.status):
            if decision.status == Status.ROK:
                self.stats.answered_ok += 1
            else:
                self.stats.answered_error += 1
        else:
            self.stats.answers_lost += 1
        self._log(pdu, decision, msg, elapsed)

    def _log(self, pdu: Pdu, d: Decision, msg: Message | None, elapsed: float) -> None:
        src = bytes(pdu.get("source_addr") or b"").decode("latin-1")
        dst = bytes(pdu.get("destination_addr") or b"").decode("latin-1")
        part, of = msg.parts if msg is not None else (1, 1)
        ref = msg.reference if msg is not None else pdu.get("user_message_reference")
        kind = " report" if msg is not None and msg.is_report else ""
        sms_log.info(
            "sms%s seq=%d ref=%s from=%s to=%s part=%d/%d site=%s age=%s via=%s result=%s "
            "status=0x%02x time=%.1fms%s", kind, pdu.sequence, ref, src or "-", dst or "-",
            part, of, d.site or "-", "-" if d.age is None else d.age, d.destination or "-",
            d.result, d.status, elapsed * 1000, f" detail={d.detail!r}" if d.detail else "")

    async def forward(self, msg: Message) -> Decision:
        """Look up the recipient and submit once; the decision says what happened."""
        if msg.is_report:
            self.stats.reports += 1
        result = await self.lookup.resolve(self.routing.query(msg))
        decision = self.routing.decide(result)
        if not decision.forward:
            return self._count(decision)
        return self._count(await self.submit(msg, decision))

    def _late(self, msg: Message, endpoint: Endpoint, answered: float,
              req: asyncio.Future[Pdu]) -> None:
        """A submit_sm we gave up on (budget) got its answer after all."""
        if req.cancelled() or req.exception() is not None:
            self.stats.late_refused += 1  # refused or never answered: nothing was delivered
            return
        self.stats.late_accepted += 1
        log.warning("sms ref=%s from=%s to=%s: %s accepted the submit_sm %.1fs after the "
                    "phone was answered RSYSERR (budget %.1fs); if the phone retries, the "
                    "recipient may get it twice (use --queue to avoid this)",
                    msg.reference, msg.sender or "-", msg.msisdn, endpoint,
                    self.now() - answered, self.config.budget)

    async def submit(self, msg: Message, to: Decision) -> Decision:
        """Submit ``msg`` to ``to.destination`` (a forward decision): the outcome."""
        endpoint = to.destination
        if endpoint is None:
            raise ValueError(f"no destination to submit to: {to}")
        gave_up: list[float] = []  # when the budget cancelled us: the phone's answer
        on_late = None if self.store is not None else (
            lambda req: self._late(msg, endpoint, gave_up[0], req))
        try:
            link = self.pool.links.get(endpoint) or self.pool.link(
                endpoint, self.config.ismpp(endpoint.host))  # credentials: on first use
            resp = await link.submit(msg.submit_fields(), on_late)
        except asyncio.CancelledError:
            gave_up.append(self.now())
            raise
        except Exception as exc:
            return self.routing.failed(to, exc)
        mid = resp.get("message_id")
        return self.routing.delivered(to, bytes(mid or b"").decode("latin-1"))

    # -- helpers for tests and the CLI ---------------------------------------------------------

    async def wait_idle(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await self.idle.wait()

    def describe(self) -> dict[str, Any]:
        return {"bound": self.osmpp.bound.is_set(), "in_flight": self.in_flight,
                **self.stats.as_dict()}

