"""What the long-lived servers (``dgsm-fastagi``, ``dgsm-fs-esl``) share around their core:
the mslookup flags, settings from a file then flags, and serving until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import fields
from typing import Any, ClassVar, Protocol, TypeVar

from .mslookup import MslookupError
from .mslookup.model import parse_networks
from .mslookup.transport import MulticastConfig, local_source
from .settings import ConfigError, read_config_file, setting_text

__all__ = ["Server", "add_mslookup_args", "run_daemon", "server_parser", "settings_from_args",
           "trust_problem"]

class DaemonConfig(Protocol):
    """A config dataclass with the fields every daemon has."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def log_level(self) -> str: ...
    @property
    def grace(self) -> float: ...


C = TypeVar("C", bound=DaemonConfig)


class Server(Protocol):
    resolver: Any
    stats: Any

    @property
    def active(self) -> int: ...
    async def start(self) -> None: ...
    async def close(self, grace: float | None = None) -> None: ...


def server_parser(prog: str, description: str, epilog: str, protocol: str, *, port: str,
                  max_calls: str, call_timeout: str, first_byte: str
                  ) -> tuple[argparse.ArgumentParser, argparse._ArgumentGroup]:
    """The command line every call server starts from (the settings of
    :class:`~dgsm_integrations.settings.CallServerOptions`); the help texts say what each
    means for the protocol. Returns the parser and the ``protocol`` group, for its own flags.
    """
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="read settings from FILE first")
    p.add_argument("--check", action="store_true",
                   help="print the effective settings and exit (0 if they are valid)")
    g = p.add_argument_group(protocol)
    g.add_argument("--listen", metavar="ADDR", help="address to listen on (127.0.0.1)")
    g.add_argument("--listen-port", metavar="PORT", help=port)
    g.add_argument("--max-calls", metavar="N", help=max_calls)
    g.add_argument("--call-timeout", metavar="S", help=call_timeout)
    g.add_argument("--first-byte-timeout", metavar="S", help=first_byte)
    g.add_argument("--grace", metavar="S", help="on SIGTERM, wait this long for calls (5.0)")
    g.add_argument("--log-level", help="debug, info (one line per call), warning, error")
    return p, g


def add_mslookup_args(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("mslookup (as dgsm-mslookup / OsmoHLR)")
    m.add_argument("--group", help="multicast group (239.192.23.42)")
    m.add_argument("--mdns-port", metavar="PORT", help="multicast port (4266)")
    m.add_argument("--interface", help="interface name or local IPv4 address")
    m.add_argument("--ttl", help="multicast TTL (1)")
    m.add_argument("--suffix", help="mDNS domain suffix (mdns.osmocom.org)")
    m.add_argument("--min-delay", metavar="S", help="collect answers this long (1.0)")
    m.add_argument("--timeout", metavar="S", help="give up after (= min-delay)")
    m.add_argument("--resend", metavar="N", help="extra copies of each query (7)")
    m.add_argument("--trusted", metavar="NETS",
                   help="comma-separated networks allowed to answer (all)")
    m.add_argument("--allow-loopback", metavar="yes|no",
                   help="accept answers naming 127.0.0.0/8 or ::1 (no; for a lab on one host)")


def trust_problem(config: object) -> str | None:
    """``--check``: would answers from an OsmoHLR on this host fall outside ``trusted``?

    The case that turns every lookup into "not found": the multicast route has no source
    address (``ip route add 224.0.0.0/4 dev lo``), so this host's answers leave from 0.0.0.0.
    """
    trusted = getattr(config, "trusted", None)
    if trusted is None:
        return None
    nets = parse_networks(trusted) or ()
    group = getattr(config, "group", "239.192.23.42")
    try:
        source = local_source(MulticastConfig(group, int(getattr(config, "mdns_port", 4266))))
    except (MslookupError, OSError):
        return None
    if source is None or any(ipaddress.ip_address(source) in net for net in nets):
        return None
    shown = ",".join(str(n) for n in nets)
    fix = ("give the multicast route a source address, e.g. ip route replace 224.0.0.0/4 "
           "dev lo src 127.0.0.1" if source in ("0.0.0.0", "::")
           else f"add {source} to trusted")
    return (f"an OsmoHLR on this host answers from {source} (the kernel's source address "
            f"toward {group}), outside trusted = {shown}: its answers would all be dropped "
            f"and its subscribers 'not found'; {fix}")


def settings_from_args(args: argparse.Namespace) -> dict[str, str]:
    """``--config FILE`` first, then every flag given on the command line."""
    values: dict[str, str] = {}
    if args.config:
        values.update(read_config_file(args.config))
    for name, value in vars(args).items():
        if name in ("config", "check") or value is None:
            continue
        values[name] = str(value)
    return values


async def _serve(server: Server, grace: float, log: logging.Logger) -> int:
    try:
        await server.start()
    except (MslookupError, OSError) as exc:
        log.error("cannot start: %s", exc)
        await server.resolver.close()
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: %d calls in progress, grace %.1f s", server.active, grace)
    await server.close()
    log.info("stopped after %s", server.stats.as_dict())
    return 0


def run_daemon(prog: str, args: argparse.Namespace, from_strings: Callable[[dict[str, str]], C],
               make_server: Callable[[C], Server], log: logging.Logger) -> int:
    """Settings, ``--check``, logging, then serve until SIGTERM/SIGINT; the exit status."""
    try:
        config = from_strings(settings_from_args(args))
    except (ConfigError, OSError, UnicodeDecodeError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        for f in fields(config):
            if f.init:
                print(f"{f.name.replace('_', '-')} = {setting_text(getattr(config, f.name))}")
        problem = trust_problem(config)
        if problem is not None:
            print(f"# warning: {problem}")  # a comment: the output stays a settings file
        return 0
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    logging.Formatter.converter = time.gmtime
    return asyncio.run(_serve(make_server(config), config.grace, log))
