"""Where one MO SMS goes, sans-I/O: from the lookup result to "forward there" or a refusal.

The ESME's counterpart of the PBX adapters' ``routing`` modules. No sockets, no asyncio, no
clock: the forwarder (:mod:`.forwarder`) does the I/O and asks this module, at each step, what
the deliver_sm will be answered and what its log line says:

1. :meth:`Routing.query` - the mslookup query for the recipient (``smpp.sms.<msisdn>.msisdn``);
   a destination that is no MSISDN never gets this far (:meth:`Routing.invalid`);
2. :meth:`Routing.decide` - given the lookup result: forward to the youngest site's SMPP
   server, but only when that server and the answer's source are both trusted
   (:class:`.TrustPolicy`); otherwise refuse with ``not_found_status`` (no site knows the
   recipient), ``untrusted_status`` (an answer from or naming an untrusted address) or
   RSYSERR (the lookup could not be done);
3. :meth:`Routing.delivered` / :meth:`Routing.failed` - given the submit_sm's outcome: ROK,
   or the status for that failure (RINVDSTADR from the site means "not found" there too;
   everything else is temporary: RSYSERR).

Every outcome is a :class:`Decision`: the command_status, a short ``result`` for the log
line and the counters, and what is known about the destination.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..mslookup import Endpoint, Outcome, Result
from .errors import ConnectionLost, DestinationDown, InvalidNumber, SmppError
from .message import Message
from .status import Status
from .trust import TrustPolicy

__all__ = ["FORWARD", "NOT_QUEUED", "Decision", "Routing", "internal_error"]

#: the ``result`` of a decision to forward (the only one with a destination to submit to)
FORWARD = "forward"
#: results answered as they are, never stored for a retry (with ``--queue``)
NOT_QUEUED = frozenset({"untrusted-destination", "invalid-number"})


@dataclass(frozen=True, slots=True)
class Decision:
    """What one SMS is answered (``status``) and why (``result``, ``detail``), with the
    site that answered the lookup, its age and the SMSC (``destination``) if there was one.

    A ``forward`` decision carries the destination to submit to; its status is RSYSERR,
    what the phone hears should the forward never happen (fail-safe: nothing is answered
    ROK that was not delivered or stored)."""

    status: int
    result: str
    site: str | None = None
    age: int | None = None
    destination: Endpoint | None = None
    detail: str = ""

    @property
    def forward(self) -> bool:
        return self.result == FORWARD

    @property
    def accepted(self) -> bool:
        """The deliver_sm is answered ROK."""
        return self.status == Status.ROK

    def but(self, status: int, result: str, detail: str | None = None) -> Decision:
        """The same SMS and destination, another outcome."""
        return replace(self, status=status, result=result,
                       detail=self.detail if detail is None else detail)

    def noting(self, why: str) -> Decision:
        """The same outcome with ``why`` added to its detail."""
        return replace(self, detail=f"{self.detail}; {why}" if self.detail else why)


@dataclass(frozen=True, slots=True)
class Routing:
    """The routing rules of one ESME: whom to trust, and the statuses to refuse with."""

    trust: TrustPolicy
    not_found_status: int = Status.RINVDSTADR
    untrusted_status: int = Status.RSYSERR

    @staticmethod
    def query(msg: Message) -> str:
        return f"smpp.sms.{msg.msisdn}.msisdn"

    @staticmethod
    def invalid(exc: InvalidNumber) -> Decision:
        """A destination that is not an MSISDN: refused before any lookup."""
        return Decision(Status.RINVDSTADR, "invalid-number", detail=str(exc))

    def decide(self, result: Result) -> Decision:
        """Forward to the youngest answer's SMSC, or refuse (and say why)."""
        if result.outcome is Outcome.NOT_FOUND:
            return Decision(self.not_found_status, "not-found")
        if not result.found or not result.endpoints:
            return Decision(Status.RSYSERR, "lookup-error", detail=result.reason or "")
        endpoint = result.endpoints[0]
        site, age = result.site, result.age
        trust = self.trust
        if not (trust.allows(endpoint.host) and trust.allows(site)):
            who = endpoint.host if not trust.allows(endpoint.host) else f"answer from {site}"
            return Decision(self.untrusted_status, "untrusted-destination", site, age, endpoint,
                            detail=f"{who} is outside the trusted networks "
                                   f"({trust.describe()})")
        return Decision(Status.RSYSERR, FORWARD, site, age, endpoint)

    @staticmethod
    def delivered(to: Decision, message_id: str) -> Decision:
        """The destination accepted the submit_sm."""
        return to.but(Status.ROK, "delivered", f"message_id={message_id}")

    def failed(self, to: Decision, exc: BaseException) -> Decision:
        """The submit_sm to ``to.destination`` failed with ``exc``: what the phone hears.

        Anything unexpected is an internal error (RSYSERR): the SMS is never answered ROK
        on a failure, and never left unanswered."""
        if isinstance(exc, SmppError):
            if exc.status == Status.RINVDSTADR:
                return to.but(self.not_found_status, "not-found-at-site", str(exc))
            return to.but(Status.RSYSERR, "refused", str(exc))
        if isinstance(exc, TimeoutError):  # before OSError: TimeoutError is one
            return to.but(Status.RSYSERR, "destination-silent", "")
        if isinstance(exc, DestinationDown | ConnectionLost | OSError):
            return to.but(Status.RSYSERR, "destination-down", str(exc))
        return internal_error(exc, to)


def internal_error(exc: BaseException, to: Decision | None = None) -> Decision:
    """An exception nothing expected: RSYSERR, with the exception in the log line."""
    base = to if to is not None else Decision(Status.RSYSERR, "internal-error")
    return base.but(Status.RSYSERR, "internal-error", repr(exc))
