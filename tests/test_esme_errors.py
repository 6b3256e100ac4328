"""The ESME's errors hang from DgsmError and keep their standard kinds."""

from __future__ import annotations

import pytest

from dgsm_integrations.errors import ConfigError, DgsmError
from dgsm_integrations.esme import errors
from dgsm_integrations.esme.errors import (
    BindRefused,
    ConnectionLost,
    CorruptQueue,
    CredentialsError,
    DestinationDown,
    EsmeError,
    InvalidNumber,
    PduError,
    SmppError,
)
from dgsm_integrations.esme.status import Status


@pytest.mark.parametrize(("kind", "also"), [
    (PduError, ValueError), (InvalidNumber, ValueError), (CredentialsError, ConfigError),
    (CredentialsError, ValueError), (ConnectionLost, ConnectionError),
    (ConnectionLost, OSError), (SmppError, EsmeError), (BindRefused, EsmeError),
    (DestinationDown, EsmeError), (CorruptQueue, EsmeError),
])
def test_every_esme_error_is_a_dgsm_error_and_keeps_its_standard_base(
        kind: type[Exception], also: type[Exception]) -> None:
    assert issubclass(kind, EsmeError) and issubclass(kind, DgsmError)
    assert issubclass(kind, also)


def test_all_names_every_error_class() -> None:
    defined = {name for name, value in vars(errors).items()
               if isinstance(value, type) and issubclass(value, EsmeError)}
    assert defined == set(errors.__all__)


def test_messages_name_the_status() -> None:
    assert str(SmppError(Status.RMSGQFUL, "submit_sm")).startswith("submit_sm: ")
    assert "(0x14)" in str(SmppError(Status.RMSGQFUL, "submit_sm"))
    refused = BindRefused("OsmoMSC 127.0.0.1:2775", Status.RINVPASWD)
    assert str(refused).endswith("- wrong password") and refused.status == Status.RINVPASWD
    assert PduError("short").status == Status.RINVMSGLEN and not PduError("short").fatal
