"""Prometheus counters over HTTP (``--metrics-port``): ``GET /metrics``, text format 0.0.4.

A deliberately tiny asyncio HTTP/1.0 responder (one request per connection, bounded reads), so
the daemon needs no web framework. Everything else is answered 404.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .forwarder import Esme

__all__ = ["MetricsServer", "render"]

_HELP = {
    "received": "deliver_sm received from the local OsmoMSC",
    "answered_ok": "deliver_sm answered ROK",
    "answered_error": "deliver_sm answered with an error",
    "answers_lost": "deliver_sm whose answer could not be sent (connection gone)",
    "delivered": "submit_sm accepted by a destination SMSC",
    "queued": "messages accepted into the store-and-forward queue",
    "invalid_number": "destinations refused as not an MSISDN",
    "not_found": "recipients no site knows",
    "lookup_errors": "mslookup lookups that could not be done",
    "destination_down": "destination SMSC unreachable, not bound, or silent",
    "destination_refused": "submit_sm refused by a destination SMSC",
    "budget_expired": "messages whose answer budget ran out",
    "untrusted": "lookups naming an SMSC (or answered from) outside the trusted networks",
    "store_errors": "messages the store could not take in time (answered without it)",
    "overload": "deliver_sm refused because too many were in flight",
    "malformed": "malformed PDUs received",
    "reports": "status reports forwarded",
}


def render(esme: Esme) -> str:
    lines: list[str] = []
    for name, value in esme.stats.as_dict().items():
        metric = f"esme_dgsm_{name}_total"
        lines += [f"# HELP {metric} {_HELP.get(name, name)}", f"# TYPE {metric} counter",
                  f"{metric} {value}"]
    gauges = {"in_flight": esme.in_flight, "osmpp_bound": int(esme.osmpp.bound.is_set()),
              "osmpp_binds": esme.osmpp.binds, "ismpp_links": len(esme.pool.links)}
    for name, value in gauges.items():
        lines += [f"# TYPE esme_dgsm_{name} gauge", f"esme_dgsm_{name} {value}"]
    for endpoint, link in esme.pool.links.items():
        up = int(link.conn is not None and not link.conn.closed)
        lines.append(f'esme_dgsm_ismpp_up{{destination="{endpoint}"}} {up}')
    store = esme.store
    if store is not None:
        for name in ("delivered", "expired", "duplicates", "retries", "errors"):
            lines += [f"# TYPE esme_dgsm_store_{name}_total counter",
                      f"esme_dgsm_store_{name}_total {getattr(store, name)}"]
    stats = getattr(esme.lookup, "stats", None)
    if stats is not None and hasattr(stats, "as_dict"):
        for name, value in stats.as_dict().items():
            lines += [f"# TYPE esme_dgsm_mslookup_{name}_total counter",
                      f"esme_dgsm_mslookup_{name}_total {value}"]
    return "\n".join(lines) + "\n"


class MetricsServer:
    def __init__(self, esme: Esme, host: str, port: int) -> None:
        self.esme, self.host, self.port = esme, host, port
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> MetricsServer:
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                line = await reader.readline()
                while (await reader.readline()).strip():
                    pass
            parts = line.decode("latin-1").split()
            if len(parts) >= 2 and parts[0] == "GET" and parts[1].split("?")[0] == "/metrics":
                body = render(self.esme).encode()
                head = ("HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n")
            else:
                body = b"not found\n"
                head = f"HTTP/1.0 404 Not Found\r\nContent-Length: {len(body)}\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
