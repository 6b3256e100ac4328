"""One lookup on a plain blocking socket, for a process that lives for one call.

The AGI script is started per call, so it cannot share a resolver and must not pay for
asyncio's import. This driver runs the same sans-I/O core as the resolver (``wire`` to
encode and decode, ``Selection`` for libosmo-mslookup's timing, ``transport`` for the
socket, ``Pacer`` for when each copy leaves) with ``select()``: the query is sent at once and
re-sent over the first window (copies the process could not send on time, say under CPU
load, are re-spread, never sent in a bunch or merged), junk,
answers to other questions and answers naming an unusable address (as the resolver, see
:func:`~dgsm_integrations.mslookup.model.unusable_reason`) are dropped, and it returns by the
lookup's timeout.
"""

from __future__ import annotations

import ipaddress
import os
import select
import time
from collections.abc import Callable, Iterable

from ._core import (
    MulticastConfig,
    Outcome,
    Pacer,
    Query,
    Result,
    Selection,
    Timing,
    TransportError,
    WireError,
    decode_answer,
    encode_query,
    is_answer,
    open_socket,
    unusable_reason,
)

__all__ = ["lookup_once"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _trusted(host: str, nets: tuple[Network, ...] | None) -> bool:
    if nets is None:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(ip in net for net in nets)


def lookup_once(
    query: Query,
    *,
    group: str,
    port: int,
    interface: str | None = None,
    ttl: int = 1,
    suffix: str,
    min_delay: float,
    timeout: float | None = None,
    resend: int = 4,
    trusted: Iterable[str] | None = None,
    allow_loopback: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> Result:
    """Resolve ``query`` once; never raises for anything the network does."""
    timing = Timing.of(query, min_delay, timeout)
    nets = None if trusted is None else tuple(ipaddress.ip_network(t, strict=False)
                                              for t in trusted)
    start = clock()
    try:
        config = MulticastConfig(group, port, interface, ttl)
        sock = open_socket(config)
    except TransportError as exc:
        return Result(query, Outcome.ERROR, elapsed=clock() - start, reason=str(exc))
    with sock:
        selection = Selection(query, timing, start)
        packet = encode_query(query, int.from_bytes(os.urandom(2), "big"), suffix)
        pacer = Pacer(now=start)
        pacer.schedule(query.key, packet, start, timing.window, resend + 1)
        sent_ok = 0
        last_error = "no query could be sent"

        def drain(now: float) -> Result | None:
            """Feed every datagram waiting, as arrived by ``now``; the final result, if any."""
            for _ in range(256):
                try:
                    data, addr = sock.recvfrom(2048)
                except (BlockingIOError, InterruptedError):
                    return None
                except OSError:
                    return None
                source = str(addr[0]).split("%", 1)[0]
                if is_answer(data) is not True or not _trusted(source, nets):
                    continue
                try:
                    answer = decode_answer(data, suffix)
                except WireError:
                    continue
                endpoints = [e for e in (answer.v4, answer.v6) if e is not None]
                if answer.query.key != query.key or not all(
                    _trusted(e.host, nets)
                    and unusable_reason(e, allow_loopback=allow_loopback) is None
                    for e in endpoints
                ):
                    continue
                for result in selection.feed(answer, now, source):
                    if result.last:
                        return result
            return None

        while True:
            # the time first, then what is in the socket: everything that arrived by ``now``
            # counts before the deadline is judged, so a script descheduled past it (a
            # loaded PBX) does not call answers lost that are waiting to be read
            now = clock()
            done = drain(now)
            if done is not None:
                return _final(done, sent_ok, last_error)
            for _key, wire in pacer.due(now):
                try:
                    sock.sendto(wire, config.destination())
                    sent_ok += 1
                except OSError as exc:
                    last_error = f"cannot send query: {exc.strerror or exc}"
            for result in selection.tick(now):
                if result.last:
                    return _final(result, sent_ok, last_error)
            deadline = selection.deadline
            assert deadline is not None
            next_send = pacer.next_wakeup()
            wake = deadline if next_send is None else min(deadline, next_send)
            select.select([sock], [], [], max(0.0, wake - clock()))


def _final(result: Result, sent_ok: int, last_error: str) -> Result:
    if result.outcome is Outcome.NOT_FOUND and sent_ok == 0:
        return Result(result.query, Outcome.ERROR, elapsed=result.elapsed, reason=last_error)
    return result
