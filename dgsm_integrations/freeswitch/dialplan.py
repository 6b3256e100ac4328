"""The per-call routine behind the mod_python3 module ``freeswitch/freeswitch_dialplan_dgsm.py``.

Facts of mod_python3 this is built on (``src/mod/languages/mod_python3/mod_python3.c``):

- the module is imported *and reloaded* on every call, in the call's own thread; so the shim
  keeps no state and everything lasting (the settings cache, the resolver's socket and loop
  thread, via :meth:`Resolver.shared`) lives in this package, which is imported once;
- ``handler(session, args)``'s return value is ignored and an exception is only logged, after
  which the dialplan simply goes on; so :func:`handle_call` never raises and every outcome
  ends in an explicit ``session.execute("bridge", ...)`` or ``session.hangup(cause)``;
- the ``python`` API (``fs_cli> python freeswitch_dialplan_dgsm <query>``) calls
  ``fsapi(session_or_"na", stream, env, args)`` and returns what was ``stream.write()``-n.

Routing blocks the call's thread only in :meth:`Resolver.resolve` (which waits on a future,
releasing the GIL); no process or thread is started per call. A found call's thread then runs
the bridge itself (``session.execute("bridge")`` returns when the bridged call ends), so the
log line is written just before the bridge starts.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from ..mslookup import InvalidQuery, MslookupError, Query, Resolver
from .config import ConfigError, FreeswitchConfig, cached_config
from .routing import Decision, decide, error, invalid, parse_destination, query_for

__all__ = ["CallReport", "Session", "fsapi_text", "handle_call"]

ConsoleLog = Callable[[str, str], object]


class Session(Protocol):
    """The part of mod_python3's ``freeswitch.Session`` (CoreSession) we use."""

    def getVariable(self, name: str) -> str | None: ...
    def setVariable(self, name: str, value: str) -> object: ...
    def execute(self, app: str, data: str) -> object: ...
    def hangup(self, cause: str) -> object: ...
    def ready(self) -> object: ...


@dataclass(frozen=True, slots=True)
class CallReport:
    """What happened to one call (for tests, the benchmark and the log line)."""

    decision: Decision
    outcome: str  # decision.result, or "gone" if the caller left during the lookup
    lookup_s: float
    total_s: float  # from the call's start to the bridge (started) or hangup (done)

    @property
    def added_s(self) -> float:
        """Time the integration added beyond the lookup itself."""
        return self.total_s - self.lookup_s


def _printable(value: object, limit: int = 40) -> str:
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:limit])[1:-1]


def _base_config() -> tuple[FreeswitchConfig, str | None]:
    try:
        return cached_config(), None
    except (ConfigError, OSError, UnicodeDecodeError) as exc:
        return FreeswitchConfig(), f"bad settings file: {exc}"


def _decide(session: Session) -> tuple[Decision, float, str]:
    base, problem = _base_config()
    dest = session.getVariable("destination_number")
    shown = _printable(dest)
    if problem is not None:
        return error(base, problem), 0.0, shown
    try:
        config = base.with_channel(session.getVariable)
    except ConfigError as exc:
        return error(base, str(exc)), 0.0, shown
    msisdn = parse_destination(dest)
    if msisdn is None:
        return invalid(config, "destination_number is not 1-15 digits"), 0.0, shown
    try:
        resolver = Resolver.shared(**config.resolver_kwargs())
        t0 = time.perf_counter()
        result = resolver.resolve(query_for(config, msisdn), min_delay=config.min_delay,
                                  timeout=config.timeout)
        lookup_s = time.perf_counter() - t0
    except (MslookupError, OSError) as exc:
        return error(config, f"resolver: {exc}"), 0.0, shown
    decision = decide(config, msisdn, result, lookup_s)
    if decision.result == "not-found" and resolver.trust_warning is not None:
        # Python's logging does not reach FreeSWITCH's log: say it in the call's line
        decision = replace(decision, detail=f"{decision.detail}; {resolver.trust_warning}")
    if decision.action == "bridge":
        decision = Decision(decision.result, decision.action, decision.data, (
            ("continue_on_fail", "true" if config.continue_on_fail else "false"),
            ("hangup_after_bridge", "true"),
            *decision.variables), decision.detail)
    return decision, lookup_s, shown


def handle_call(session: Session, args: str, console_log: ConsoleLog) -> CallReport:
    """Route one call; never raises; always ends in ``bridge`` or ``hangup``.

    The log line is written when the decision is carried out: for a bridge just *before*
    ``session.execute("bridge")``, which blocks until the bridged call ends; so ``added`` is
    our time up to the bridge, not the call's duration.
    """
    t0 = time.perf_counter()
    lookup_s = 0.0
    shown = "-"
    try:
        decision, lookup_s, shown = _decide(session)
    except Exception as exc:  # a bug must still end the call explicitly
        decision = error(FreeswitchConfig(), f"internal error: {type(exc).__name__}: {exc}")
    if args:
        shown += f" args={_printable(args)}"
    outcome = decision.result
    total: float | None = None
    try:
        for name, value in decision.variables:
            session.setVariable(name, value)
        if decision.action == "bridge" and not session.ready():
            outcome = "gone"  # the caller hung up during the lookup: nothing to bridge
            session.hangup("NORMAL_CLEARING")
        elif decision.action == "bridge":
            total = time.perf_counter() - t0
            _log_call(console_log, shown, outcome, decision, lookup_s, total)
            session.execute("bridge", decision.data)  # returns when the bridged call ends
        else:
            session.hangup(decision.data)
    except Exception as exc:
        outcome = f"{outcome}+fs-error"
        _log(console_log, "err", f"dgsm: FreeSWITCH call failed: dest={shown} "
             f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(Exception):  # nothing more we can do; already logged
            session.hangup(FreeswitchConfig().cause_error)
    if total is None:
        total = time.perf_counter() - t0
        _log_call(console_log, shown, outcome, decision, lookup_s, total)
    return CallReport(decision, outcome, lookup_s, total)


def _log_call(console_log: ConsoleLog, shown: str, outcome: str, decision: Decision,
              lookup_s: float, total: float) -> None:
    action = (f"bridge={decision.data}" if decision.action == "bridge"
              else f"hangup={decision.data}")
    if outcome == "gone":
        action = "hangup=NORMAL_CLEARING"  # what was done: the caller had left, no bridge
    level = "info" if outcome in ("found", "not-found", "invalid", "gone") else "warning"
    _log(console_log, level,
         f"dgsm: call dest={shown} result={outcome} {action} lookup={lookup_s * 1000:.1f}ms "
         f"added={(total - lookup_s) * 1000:.2f}ms | {_printable(decision.detail, 200)}")


def _log(console_log: ConsoleLog, level: str, text: str) -> None:
    with contextlib.suppress(Exception):  # logging must never break a call
        console_log(level, text + "\n")


def fsapi_text(args: object) -> str:
    """The answer to ``python freeswitch_dialplan_dgsm <msisdn | query>`` (for fs_cli)."""
    usage = ("usage: python freeswitch_dialplan_dgsm <msisdn | [delay-][timeout]@"
             "service.id.msisdn>\n")
    if not isinstance(args, str) or not args.strip():
        return usage
    text = args.strip()
    try:
        config = cached_config()
    except (ConfigError, OSError, UnicodeDecodeError) as exc:
        return f"-ERR bad settings file: {exc}\n"
    try:
        query = query_for(config, text) if parse_destination(text) else Query.parse(text)
    except InvalidQuery as exc:
        return f"-ERR {exc}\n{usage}"
    try:
        resolver = Resolver.shared(**config.resolver_kwargs())
        t0 = time.perf_counter()
        result = resolver.resolve(query, min_delay=config.min_delay, timeout=config.timeout)
        lookup_s = time.perf_counter() - t0
    except (MslookupError, OSError) as exc:
        return f"-ERR resolver: {exc}\n"
    decision = decide(config, query.id, result, lookup_s) if query.id_type == "msisdn" \
        else None
    lines = [f"{'+OK' if result.found else '-ERR'} {result.describe()}"]
    if decision is not None:
        lines.append(f"{decision.action} {decision.data}")
        lines += [f"{name}={value}" for name, value in decision.variables]
    stats = resolver.stats
    lines.append(f"resolver: {resolver.config.describe()} lookups={stats.lookups} "
                 f"found={stats.found} not_found={stats.not_found} errors={stats.errors} "
                 f"dropped_untrusted={stats.dropped_untrusted} "
                 f"dropped_malformed={stats.dropped_malformed} "
                 f"untrusted_only_windows={stats.untrusted_only_windows}")
    if resolver.trust_warning is not None:
        lines.append(f"warning: {resolver.trust_warning}")
    return "\n".join(lines) + "\n"
