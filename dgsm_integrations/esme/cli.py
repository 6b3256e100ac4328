"""``esme_dgsm``: the D-GSM SMS router beside OsmoMSC (see docs/esme.md).

The flags become an :class:`EsmeConfig` (validated as every adapter's config is), and
:func:`dgsm_integrations._daemon.run_daemon` does the rest, as for ``dgsm-fastagi`` and
``dgsm-fs-esl``: ``--check``, logging, serving :class:`EsmeServer` until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from .._daemon import run_daemon, settings_from_args
from ..mslookup import DEFAULT_GROUP_V4, DEFAULT_PORT, AsyncResolver
from .binds import Opener, open_tcp
from .config import EsmeConfig
from .errors import CredentialsError
from .forwarder import Esme, EsmeStats
from .metrics import MetricsServer
from .store import Store
from .trust import TrustPolicy, parse_site_credentials

__all__ = ["EsmeServer", "build_parser", "config_from", "main", "trust_from"]

log = logging.getLogger("dgsm.esme")


def _status(text: str) -> int:
    value = int(text, 0)
    if not 0 <= value <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"{text} is not an SMPP command_status")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be > 0")
    return value


def _window(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"{text} must be 1..1000")
    return value


def _site_credentials(text: str) -> str:
    try:
        parse_site_credentials(text)
    except CredentialsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


class _Join(argparse.Action):
    """A repeatable flag kept as one text value (the runner passes settings as text):
    ``--trusted`` comma separated, ``--site-credentials`` one per line."""

    def __init__(self, *args: Any, sep: str = ",", **kwargs: Any) -> None:
        self.sep = sep
        super().__init__(*args, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        old = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, str(values) if old is None else f"{old}{self.sep}{values}")


def build_parser() -> argparse.ArgumentParser:
    d = EsmeConfig()
    p = argparse.ArgumentParser(
        prog="esme_dgsm",
        description=(
            "Route every SMS that OsmoMSC (smpp-first, default-route to this ESME) hands over "
            "as deliver_sm to the recipient's current D-GSM site: look up "
            "smpp.sms.<msisdn>.msisdn over mslookup, submit_sm to the youngest site's SMPP "
            "server, and answer the deliver_sm ROK only once that submit_sm was accepted "
            "(RSYSERR for a temporary failure or when the budget runs out; "
            "--not-found-status when no site knows the recipient)."),
        epilog="Defaults match OsmoMSC's example config (esme OSMPP / ISMPP, password foo, "
               "port 2775). One log line per SMS on logger dgsm.esme.sms.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("local OsmoMSC (the OSMPP bind, bind_transceiver)")
    g.add_argument("--src-host", default=d.src_host, help="OsmoMSC's SMPP address")
    g.add_argument("--src-port", type=int, default=d.src_port, help="OsmoMSC's SMPP port")
    g.add_argument("--system-id", default=d.system_id, help="our system-id at the local MSC")
    g.add_argument("--password", default=d.password, help="its password")
    g = p.add_argument_group("destination sites (the ISMPP binds, bind_transmitter)")
    g.add_argument("--dst-system-id", default=d.dst_system_id,
                   help="our system-id at every destination SMSC (the local one too)")
    g.add_argument("--dst-password", default=d.dst_password, help="its password")
    g.add_argument("--site-credentials", action=_Join, sep="\n", default=None,
                   type=_site_credentials, metavar="NET=SYSTEM_ID:PASSWORD",
                   help="trust the SMSCs in NET and bind to them with these credentials "
                        "instead of --dst-system-id/--dst-password (repeatable; the most "
                        "specific network wins)")
    g.add_argument("--credentials-file", default=None, metavar="PATH",
                   help="the same from a file kept out of the process list: one "
                        "'NET SYSTEM_ID PASSWORD' per line, # comments")
    g.add_argument("--window", type=int, default=d.window,
                   help="outstanding submit_sm per destination bind")
    g = p.add_argument_group("answers and timing")
    g.add_argument("--budget", type=_positive, default=d.budget,
                   help="seconds from deliver_sm to its answer at most (OsmoMSC waits 5 s)")
    g.add_argument("--not-found-status", type=_status, default=d.not_found_status,
                   help="command_status for a recipient no site knows (0x0B = RINVDSTADR)")
    g.add_argument("--enquire-interval", type=_positive, default=d.enquire_interval,
                   help="seconds between enquire_link on idle binds")
    g.add_argument("--connect-timeout", type=_positive, default=d.connect_timeout,
                   help="seconds to connect and bind")
    g.add_argument("--max-in-flight", type=int, default=d.max_in_flight,
                   help="deliver_sm handled at once; beyond, RTHROTTLED")
    g = p.add_argument_group("mslookup")
    g.add_argument("--mslookup-interface", dest="interface", default=None, metavar="IF|ADDR",
                   help="interface name or local IPv4 address for mslookup multicast")
    g.add_argument("--mslookup-group", dest="group", default=DEFAULT_GROUP_V4,
                   help="multicast group")
    g.add_argument("--mslookup-port", dest="mdns_port", type=int, default=DEFAULT_PORT,
                   help="multicast port")
    g.add_argument("--min-delay", type=float, default=1.0,
                   help="seconds to collect answers before taking the youngest")
    g.add_argument("--lookup-timeout", dest="timeout", type=float, default=None,
                   help="seconds until a lookup gives up (default: min-delay)")
    g.add_argument("--resend", metavar="N", default=None,
                   help="extra copies of each query, spread over the wait (7; docs/mslookup.md, "
                        "'What the re-sends buy')")
    g.add_argument("--mslookup-ttl", dest="ttl", metavar="TTL", default=None,
                   help="multicast TTL (1: this link only)")
    g.add_argument("--suffix", default=None, help="mDNS domain suffix (mdns.osmocom.org)")
    g.add_argument("--trusted", action=_Join, default=None, metavar="NET",
                   help="forward only to SMSCs in this network, named by answers from this "
                        "network (repeatable; this village's own too). Without any "
                        "--trusted or --site-credentials nothing is forwarded")
    g.add_argument("--trust-any-site", action="store_true",
                   help="UNSAFE: forward SMS and the ISMPP password to whatever address any "
                        "host on the mslookup group names (mslookup is unauthenticated)")
    g.add_argument("--untrusted-status", type=_status, default=d.untrusted_status,
                   help="command_status for an SMS whose lookup named an untrusted SMSC")
    g.add_argument("--allow-loopback", action="store_true",
                   help="accept answers naming 127.0.0.0/8 or ::1 (a lab on one host)")
    g = p.add_argument_group("store-and-forward (off by default)")
    g.add_argument("--queue", default=None, metavar="PATH",
                   help="SQLite file: accept an SMS whose recipient's site is unreachable or "
                        "unknown once durably stored, and keep retrying it")
    g.add_argument("--validity", type=_positive, default=d.validity,
                   help="seconds a stored SMS is retried before it is dropped")
    g.add_argument("--retry-min", type=_positive, default=d.retry_min,
                   help="seconds before the first retry of a stored SMS (doubling after)")
    g.add_argument("--retry-max", type=_positive, default=d.retry_max,
                   help="longest pause between retries of a stored SMS")
    g.add_argument("--retry-window", type=_window, default=d.retry_window,
                   help="stored SMS being retried at once; after a kill -9 at most this "
                        "many (plus the direct attempts outstanding) may arrive twice")
    g = p.add_argument_group("operations")
    g.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus counters on this HTTP port (off by default)")
    g.add_argument("--metrics-host", default=d.metrics_host, help="address for --metrics-port")
    g.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log verbosity")
    g.add_argument("--grace", type=float, default=d.grace,
                   help="on SIGTERM, seconds to let SMS in flight be answered")
    g.add_argument("--check", action="store_true",
                   help="print the effective settings and exit (0 if they are valid)")
    p.set_defaults(config=None)  # no settings file: the flags are the whole configuration
    return p


def config_from(args: argparse.Namespace) -> EsmeConfig:
    """The configuration the flags make (raises ConfigError, CredentialsError among them)."""
    return EsmeConfig.from_strings(settings_from_args(args))


def trust_from(args: argparse.Namespace) -> TrustPolicy:
    """The trust policy of the command line (raises CredentialsError for a bad file)."""
    return config_from(args).trust


class EsmeServer:
    """The daemon for :func:`run_daemon`: the ESME with its resolver, and the store and the
    metrics server when configured."""

    def __init__(self, config: EsmeConfig, resolver: Any = None,
                 opener: Opener = open_tcp) -> None:
        """``resolver``: anything with ``open``, ``close`` and ``resolve`` (default: an
        AsyncResolver of the config's mslookup settings); ``opener``: how binds connect."""
        self.config = config
        self.resolver = resolver if resolver is not None else AsyncResolver(
            **config.resolver_kwargs())
        self.esme = Esme(config, self.resolver, opener=opener)
        self.stats: EsmeStats = self.esme.stats  # counted in place, never replaced
        self._stack = contextlib.AsyncExitStack()
        self._task: asyncio.Task[None] | None = None

    @property
    def active(self) -> int:
        return self.esme.in_flight

    async def start(self) -> None:
        config = self.config
        await self.resolver.open()
        try:
            if config.queue:
                store = Store(config.queue, validity=config.validity,
                              retry_min=config.retry_min, retry_max=config.retry_max,
                              window=config.retry_window)
                await self._stack.enter_async_context(store.attach(self.esme))
            if config.metrics_port is not None:
                await self._stack.enter_async_context(
                    MetricsServer(self.esme, config.metrics_host, config.metrics_port))
        except BaseException:
            await self._stack.aclose()
            raise
        self._task = asyncio.get_running_loop().create_task(self.esme.run(), name="esme")

    async def close(self, grace: float | None = None) -> None:
        grace = self.config.grace if grace is None else grace
        if grace > 0 and self.esme.in_flight:
            with contextlib.suppress(TimeoutError):
                await self.esme.wait_idle(grace)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._stack.aclose()
        await self.resolver.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``esme_dgsm`` console script."""
    args = build_parser().parse_args(argv)
    return run_daemon("esme_dgsm", args, EsmeConfig.from_strings, EsmeServer, log)
