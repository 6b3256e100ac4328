"""Wiring of the daemon: the ESME, and the optional store and metrics, until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging

from .app import Esme, EsmeConfig, Lookup

__all__ = ["run_daemon"]

log = logging.getLogger("dgsm.esme")


async def run_daemon(config: EsmeConfig, lookup: Lookup, args: argparse.Namespace) -> int:
    from .cli import install_signal_handlers

    stop = asyncio.Event()
    install_signal_handlers(stop)
    esme = Esme(config, lookup)
    async with contextlib.AsyncExitStack() as stack:
        if getattr(args, "queue", None):
            from .store import Store
            store = Store(args.queue, validity=args.validity, retry_min=args.retry_min,
                          retry_max=args.retry_max,
                          window=getattr(args, "retry_window", 8))
            await stack.enter_async_context(store.attach(esme))
        if getattr(args, "metrics_port", None) is not None:
            from .metrics import MetricsServer
            metrics = MetricsServer(esme, args.metrics_host, args.metrics_port)
            await stack.enter_async_context(metrics)
        task = asyncio.get_running_loop().create_task(esme.run())
        stopper = asyncio.get_running_loop().create_task(stop.wait())
        done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for t in (task, stopper):
            t.cancel()
        await asyncio.gather(task, stopper, return_exceptions=True)
        if task in done and task.exception() is not None:
            log.error("ESME stopped: %r", task.exception())
            return 1
    log.info("stopped: %s", esme.describe())
    return 0
