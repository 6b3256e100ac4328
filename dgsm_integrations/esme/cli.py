"""``esme_dgsm``: the D-GSM SMS router beside OsmoMSC (see docs/esme.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from ..mslookup import DEFAULT_GROUP_V4, DEFAULT_PORT, AsyncResolver, MslookupError
from .errors import CredentialsError
from .forwarder import Esme, EsmeConfig, Lookup
from .trust import TrustPolicy, parse_credentials_file, parse_site_credentials

__all__ = ["build_parser", "config_from", "install_signal_handlers", "main"]

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


def _site_credentials(text: str) -> object:
    try:
        return parse_site_credentials(text)
    except CredentialsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    g.add_argument("--site-credentials", action="append", default=[],
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
    g.add_argument("--mslookup-interface", default=None, metavar="IF|ADDR",
                   help="interface name or local IPv4 address for mslookup multicast")
    g.add_argument("--mslookup-group", default=DEFAULT_GROUP_V4, help="multicast group")
    g.add_argument("--mslookup-port", type=int, default=DEFAULT_PORT, help="multicast port")
    g.add_argument("--min-delay", type=float, default=1.0,
                   help="seconds to collect answers before taking the youngest")
    g.add_argument("--lookup-timeout", type=float, default=None,
                   help="seconds until a lookup gives up (default: min-delay)")
    g.add_argument("--trusted", action="append", default=None, metavar="NET",
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
    g.add_argument("--validity", type=_positive, default=24 * 3600.0,
                   help="seconds a stored SMS is retried before it is dropped")
    g.add_argument("--retry-min", type=_positive, default=30.0,
                   help="seconds before the first retry of a stored SMS (doubling after)")
    g.add_argument("--retry-max", type=_positive, default=1800.0,
                   help="longest pause between retries of a stored SMS")
    g.add_argument("--retry-window", type=_window, default=8,
                   help="stored SMS being retried at once; after a kill -9 at most this "
                        "many (plus the direct attempts outstanding) may arrive twice")
    g = p.add_argument_group("operations")
    g.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus counters on this HTTP port (off by default)")
    g.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port")
    g.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log verbosity")
    return p


def trust_from(args: argparse.Namespace) -> TrustPolicy:
    """The trust policy of the command line (raises CredentialsError for a bad file)."""
    creds = list(getattr(args, "site_credentials", None) or [])
    if getattr(args, "credentials_file", None):
        try:
            creds += parse_credentials_file(args.credentials_file)
        except OSError as exc:
            raise CredentialsError(f"--credentials-file: {exc}") from None
    return TrustPolicy.build(args.trusted, creds, bool(getattr(args, "trust_any_site", False)))


def config_from(args: argparse.Namespace) -> EsmeConfig:
    return EsmeConfig(
        trust=trust_from(args), untrusted_status=args.untrusted_status,
        src_host=args.src_host, src_port=args.src_port, system_id=args.system_id,
        password=args.password, dst_system_id=args.dst_system_id,
        dst_password=args.dst_password, budget=args.budget,
        not_found_status=args.not_found_status, window=args.window,
        enquire_interval=args.enquire_interval, connect_timeout=args.connect_timeout,
        max_in_flight=args.max_in_flight)


async def serve(args: argparse.Namespace) -> int:
    config = config_from(args)
    trust = config.trust
    # the resolver drops answers from / naming untrusted addresses, so a spoofed answer
    # cannot win over the real one; with nothing trusted the ESME refuses (and logs) them
    networks = None if trust.any_site or not trust.networks else trust.networks
    resolver = AsyncResolver(interface=args.mslookup_interface, group=args.mslookup_group,
                             port=args.mslookup_port, min_delay=args.min_delay,
                             timeout=args.lookup_timeout, trusted=networks,
                             allow_loopback=args.allow_loopback)
    async with resolver:
        return await run(config, resolver, args)


async def run(config: EsmeConfig, lookup: Lookup, args: argparse.Namespace) -> int:
    """The ESME, and the optional store and metrics, until SIGTERM."""
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(serve(args))
    except KeyboardInterrupt:
        return 0
    except (MslookupError, CredentialsError) as exc:
        print(f"esme_dgsm: {exc}", file=sys.stderr)
        return 2


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

