"""The ESME's errors: one branch of :class:`~dgsm_integrations.errors.DgsmError`.

Every error the ESME raises on purpose is an :class:`EsmeError`; those that are also a
standard kind keep that base (a bad PDU or number is a ``ValueError``, a lost connection a
``ConnectionError``, a bad credentials setting a :class:`~dgsm_integrations.errors.ConfigError`).
None of them crosses the deliver_sm boundary: the forwarder turns each into a command_status
and a log line (:mod:`.routing` says which).

A leaf module (besides :mod:`.status`), so every other ESME module can import it.
"""

from __future__ import annotations

from ..errors import ConfigError, DgsmError
from .status import Status

__all__ = ["BindRefused", "ConnectionLost", "CorruptQueue", "CredentialsError",
           "DestinationDown", "EsmeError", "InvalidNumber", "PduError", "SmppError"]


class EsmeError(DgsmError):
    """Base class of every error raised by :mod:`dgsm_integrations.esme` on purpose."""


class PduError(EsmeError, ValueError):
    """A PDU that cannot be decoded. ``status`` is what to answer; ``fatal`` means the
    framing itself is broken and the connection must be closed."""

    def __init__(self, message: str, status: int = Status.RINVMSGLEN, fatal: bool = False):
        super().__init__(message)
        self.status = status
        self.fatal = fatal


class InvalidNumber(EsmeError, ValueError):
    """The destination is not an MSISDN (refused before any lookup)."""


class CredentialsError(EsmeError, ConfigError):
    """A --site-credentials value or credentials file line that cannot be used."""


class SmppError(EsmeError):
    """A request was answered with a non-zero command_status (or generic_nack)."""

    def __init__(self, status: int, command: str) -> None:
        super().__init__(f"{command}: {Status.describe(status)}")
        self.status = status
        self.command = command


class ConnectionLost(EsmeError, ConnectionError):
    """The connection closed while a request was outstanding (or before it was sent)."""


class BindRefused(EsmeError):
    """The SMSC answered our bind with an error (wrong password, unknown system-id, ...)."""

    def __init__(self, where: str, status: int) -> None:
        hint = {Status.RINVPASWD: "wrong password", Status.RINVSYSID: "unknown system-id"}
        super().__init__(f"{where} refused the bind: {Status.describe(status)}"
                         + (f" - {hint[status]}" if status in hint else ""))
        self.status = status


class DestinationDown(EsmeError):
    """A destination SMSC cannot be reached or bound right now (a temporary failure)."""


class CorruptQueue(EsmeError):
    """The queue file is not a usable esme_dgsm queue."""
