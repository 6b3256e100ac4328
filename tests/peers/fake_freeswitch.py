"""A stand-in for mod_python3's ``freeswitch`` module and a recording session.

mod_python3 (``mod_python3.c``) runs a dialplan ``python`` action like this, and so does
:func:`run_action`: in the call's thread, ``import <module>``, then *reload* it (every call),
then call ``handler(session, args)`` where ``args`` is what followed the module name; the
return value is ignored and an exception is only logged. ``python <module> <args>`` from
fs_cli calls ``fsapi(session or "na", stream, env, args)`` and returns what was
``stream.write()``-n.

:class:`RecordingSession` implements what CoreSession offers Python (``getVariable``,
``setVariable``, ``execute``, ``hangup``, ``ready``) and records every call in order; a
channel hung up (by the caller, or by ``hangup()``) is no longer ``ready()``.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["ConsoleLog", "RecordingSession", "Stream", "install", "run_action", "run_api"]

SHIM = "freeswitch_dialplan_dgsm"
SHIM_DIR = Path(__file__).resolve().parents[2] / "freeswitch"


class ConsoleLog:
    """``freeswitch.consoleLog(level, text)``, recorded (thread-safe)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, level: str, text: str) -> None:
        assert isinstance(level, str) and isinstance(text, str)
        with self._lock:
            self.lines.append((level, text))


def install() -> ConsoleLog:
    """Put a stand-in ``freeswitch`` module in sys.modules and the shim's folder on the path."""
    log = ConsoleLog()
    module = types.ModuleType("freeswitch")
    module.consoleLog = log  # type: ignore[attr-defined]
    sys.modules["freeswitch"] = module
    if str(SHIM_DIR) not in sys.path:
        sys.path.insert(0, str(SHIM_DIR))
    return log


class RecordingSession:
    """A channel as mod_python3 shows it, recording what the module does to it."""

    def __init__(self, variables: dict[str, str] | None = None) -> None:
        self.variables: dict[str, str] = dict(variables or {})
        self.calls: list[tuple[str, ...]] = []
        self.hung_up = threading.Event()
        self.on_execute: Callable[[str, str], None] | None = None

    def getVariable(self, name: str) -> str | None:
        return self.variables.get(name)

    def setVariable(self, name: str, value: str) -> None:
        assert isinstance(name, str) and isinstance(value, str)
        self.calls.append(("setVariable", name, value))
        self.variables[name] = value

    def execute(self, app: str, data: str) -> None:
        assert isinstance(app, str) and isinstance(data, str)
        self.calls.append(("execute", app, data))
        if self.on_execute is not None:
            self.on_execute(app, data)

    def hangup(self, cause: str = "NORMAL_CLEARING") -> None:
        assert isinstance(cause, str)
        self.calls.append(("hangup", cause))
        self.hung_up.set()

    def ready(self) -> bool:
        return not self.hung_up.is_set()

    # -- what the tests look at --

    @property
    def ending(self) -> tuple[str, ...]:
        """The last bridge or hangup; exactly one of them must end every call."""
        ends = [c for c in self.calls if c[0] == "hangup" or c[:2] == ("execute", "bridge")]
        assert len(ends) == 1, f"expected exactly one bridge or hangup, got {self.calls}"
        return ends[0]


class Stream:
    """``switch_stream_handle_t`` as Python sees it."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text


def _load() -> types.ModuleType:
    module = importlib.import_module(SHIM)
    return importlib.reload(module)  # mod_python3 reloads on every call


def run_action(session: RecordingSession, args: str = "") -> None:
    """``<action application="python" data="freeswitch_dialplan_dgsm [args]"/>``."""
    module = _load()
    try:
        module.handler(session, args)
    except Exception as exc:  # mod_python3 only logs it; the test must see it
        raise AssertionError(f"handler raised (FreeSWITCH would only log it): {exc!r}") from exc


def run_api(args: str, session: Any = "na") -> str:
    """``fs_cli> python freeswitch_dialplan_dgsm <args>``."""
    module = _load()
    stream = Stream()
    env = types.SimpleNamespace(serialize=lambda: "")
    module.fsapi(session, stream, env, args)
    return stream.text
