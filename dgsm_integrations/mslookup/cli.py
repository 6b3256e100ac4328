"""``dgsm-mslookup``: a drop-in for ``osmo-mslookup-client``, without its faults.

Same query syntax, flags, CSV/JSON output and daemon socket protocol as the C tool; beyond it:
``--trace`` shows every answer as it arrives, ``serve`` answers queries like OsmoHLR, results
never cross between daemon clients, an invalid query is an error instead of a hang.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import stat
import sys
from collections.abc import Callable
from typing import NoReturn

from .. import __version__
from .._listen import Listener, connection_budget
from .._ratelimit import LogLimiter
from .aio import AnswerTrace, AsyncResolver
from .engine import DEFAULT_RESEND
from .errors import InvalidAnswer, InvalidQuery, InvalidSetting, MslookupError, TransportError
from .model import Endpoint, Outcome, Result
from .query import DEFAULT_SUFFIX, Query
from .responder import Record, Responder
from .transport import DEFAULT_GROUP_V4, DEFAULT_PORT, MulticastConfig, open_socket
from .wire import encode_answer

__all__ = ["format_csv", "format_error", "format_json", "main"]

CSV_HEADERS = "query\tresult\tlast\tage\tv4_ip\tv4_port\tv6_ip\tv6_port"
EXIT_OK, EXIT_INVALID, EXIT_FAILURE, EXIT_NOT_FOUND = 0, 1, 2, 3
MAX_CLIENTS = 1024
#: A daemon client must send its query this soon after connecting (seconds).
CLIENT_READ_TIMEOUT = 10.0
#: The longest a daemon client's query may ask to wait, by default (milliseconds).
DEFAULT_MAX_WAIT_MS = 60_000
_RESULT_NAMES = {Outcome.FOUND: "result", Outcome.NOT_FOUND: "not-found", Outcome.NONE: "none"}

log = logging.getLogger("dgsm.mslookup.cli")

DESCRIPTION = """\
Find where a subscriber is now in a D-GSM network: ask every site's OsmoHLR at once
(mslookup over multicast DNS) and print the youngest answer. A drop-in for
osmo-mslookup-client: same query syntax, flags and output.

query: [[DELAY-][TIMEOUT]@]SERVICE.ID.IDTYPE   (DELAY, TIMEOUT in milliseconds)
  sip.voice.12345.msisdn          wait --min-delay, print the youngest answer
  gsup.hlr.901700000000001.imsi   an age-0 answer is printed at once
  1000-5000@sip.voice.12345.msisdn  silent for 1 s, then the best, then younger ones until 5 s
"""

EPILOG = """\
examples:
  dgsm-mslookup -f json sip.voice.12345.msisdn
  dgsm-mslookup --trace --interface eth1 1000-@smpp.sms.12345.msisdn
  dgsm-mslookup -s /run/mslookup.sock -d          (daemon; clients as with the C tool)
  dgsm-mslookup serve --answer sip.voice.12345.msisdn=5,10.0.0.2:5060
  dgsm-mslookup -S sip.voice.12345.msisdn 5 10.0.0.2 5060     (send one answer, for tests)

exit status: 0 every query answered, found or not (as osmo-mslookup-client);
  1 invalid usage or query; 2 failure (socket, network); 3 not found (only with
  --fail-not-found).
"""


def format_csv(query: str, result: Result) -> str:
    """A result row exactly as osmo-mslookup-client prints it."""
    row = f"{query}\t{_RESULT_NAMES.get(result.outcome, 'none')}"
    row += f"\t{'last' if result.last else 'not-last'}\t{result.age or 0}"
    if result.outcome is Outcome.FOUND:
        for ep in (result.v4, result.v6):
            row += f"\t{ep.host}\t{ep.port}" if ep is not None else "\t\t"
    else:
        row += "\t\t\t\t\t"
    return row


def format_json(query: str, result: Result) -> str:
    """A result line exactly as osmo-mslookup-client prints it (port as a string)."""
    line = "{" + f'"query": {json.dumps(query)}'
    line += f', "result": "{_RESULT_NAMES.get(result.outcome, "none")}"'
    line += f', "last": {"true" if result.last else "false"}, "age": {result.age or 0}'
    if result.outcome is Outcome.FOUND:
        for key, ep in (("v4", result.v4), ("v6", result.v6)):
            if ep is not None:
                line += f', "{key}": [{json.dumps(ep.host)}, "{ep.port}"]'
    return line + "}"


def format_error(query: str, json_format: bool) -> str:
    if json_format:
        return "{" + f'"query": {json.dumps(query)}, "result": "ERROR"' + "}"
    return f"{query}\tERROR\t\t\t\t\t\t"


def _domain_part(text: str) -> str:
    """The query column: the query string without its timing prefix (as the C tool)."""
    return text.split("@", 1)[1] if "@" in text else text


def _printable(text: str) -> str:
    """``text`` fit for a result row or a log line: at most 200 characters, each
    unprintable one (a tab among them) shown as ``?``."""
    text = text[:200]
    return text if text.isprintable() else "".join(c if c.isprintable() else "?"
                                                  for c in text)


def _trace_printer(query: str) -> Callable[[AnswerTrace], None]:
    def trace(t: AnswerTrace) -> None:
        eps = " ".join(str(e) for e in (t.v4, t.v6) if e is not None)
        best = "  <- best so far" if t.won else ""
        print(f"trace {query}: {t.elapsed * 1000:8.1f} ms  from {t.site}  age={t.age}  "
              f"{eps}{best}", file=sys.stderr, flush=True)
    return trace


def _fail_hint(exc: TransportError) -> str:
    return (f"{exc}\nCheck that the interface is up and has a route for multicast "
            "(e.g. ip route add 224.0.0.0/4 dev <iface>), or pick one with --interface.")


def _positive_ms(text: str) -> int:
    if not text.isdigit() or int(text) > 3_600_000:
        raise argparse.ArgumentTypeError(f"need milliseconds 0..3600000, not {text!r}")
    return int(text)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"need a port 1..65535, not {text!r}")
    return int(text)


def _add_network_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("network")
    g.add_argument("-m", "--mdns-ip", default=DEFAULT_GROUP_V4, metavar="GROUP",
                   help="multicast group, IPv4 or IPv6 (default %(default)s; IPv6: ff08::23:42)")
    g.add_argument("-M", "--mdns-port", type=_port, default=DEFAULT_PORT, metavar="PORT",
                   help="multicast port (default %(default)s)")
    g.add_argument("-D", "--mdns-domain-suffix", default=DEFAULT_SUFFIX, metavar="SUFFIX",
                   help="domain suffix, as OsmoHLR's 'mdns domain-suffix' (default %(default)s)")
    g.add_argument("--interface", metavar="IFACE|ADDR",
                   help="send and listen on this interface (name, or local IPv4 address; "
                   "127.0.0.1 = loopback only). Default: the kernel's choice")
    g.add_argument("--ttl", type=int, default=1, choices=range(256), metavar="N",
                   help="multicast TTL / hop limit (default 1: same link only)")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="do not print errors to stderr")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_INVALID, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="dgsm-mslookup", description=DESCRIPTION, epilog=EPILOG, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("queries", nargs="*", metavar="QUERY", help="what to look up (see above)")
    out = p.add_argument_group("output")
    out.add_argument("-f", "--format", default="csv", metavar="csv|json",
                     help="tab-separated CSV (default) or JSON lines")
    out.add_argument("-H", "--no-csv-headers", action="store_true",
                     help="no CSV header line")
    out.add_argument("--trace", action="store_true",
                     help="print every answer as it arrives to stderr: time, site, age, best")
    out.add_argument("--fail-not-found", action="store_true",
                     help="exit with status 3 when a query is not found")
    t = p.add_argument_group("timing")
    t.add_argument("-t", "--min-delay", type=_positive_ms, default=1000, metavar="MS",
                   help="collect answers this long, then print the youngest (default 1000)")
    t.add_argument("-T", "--timeout", type=_positive_ms, default=1000, metavar="MS",
                   help="keep printing younger answers until then (default 1000; "
                   "if smaller than -t, -t applies)")
    t.add_argument("--resend", type=int, default=DEFAULT_RESEND, choices=range(21), metavar="N",
                   help="re-send each query N more times within min-delay (default %(default)s)")
    t.add_argument("--trusted", action="append", metavar="CIDR",
                   help="accept answers only from, and naming, these networks (repeatable)")
    t.add_argument("--allow-loopback", action="store_true",
                   help="accept answers naming 127.0.0.0/8 or ::1 (dropped by default: "
                   "only a lab or tests have every site on one host)")
    d = p.add_argument_group("daemon")
    d.add_argument("-s", "--socket", metavar="PATH",
                   help="serve queries on this unix SOCK_SEQPACKET socket (with -d)")
    d.add_argument("-d", "--daemon", action="store_true", help="keep running (with -s)")
    d.add_argument("--max-clients", type=int, default=MAX_CLIENTS, metavar="N",
                   help="clients served at once (default %(default)s; fewer if the open-file "
                   "limit cannot hold them); beyond, a client is closed at once")
    d.add_argument("--max-wait", type=_positive_ms, default=DEFAULT_MAX_WAIT_MS, metavar="MS",
                   help="longest wait a client's query may ask for with DELAY-TIMEOUT@ "
                   "(default %(default)s); a longer one gets an ERROR row")
    p.add_argument("-S", "--send", action="store_true",
                   help="send one answer instead: -S QUERY AGE IP PORT [IP PORT]")
    p.add_argument("-V", "--version", action="version",
                   version=f"dgsm-mslookup {__version__}")
    _add_network_args(p)
    return p


def _serve_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="dgsm-mslookup serve", allow_abbrev=False,
        description="Answer mslookup queries like OsmoHLR, from the command line (for tests, "
        "labs and sites without OsmoHLR). Silent for anything not listed.",
        epilog="example: dgsm-mslookup serve --interface 127.0.0.1 "
        "--answer sip.voice.123.msisdn=5,10.0.0.2:5060,[fd00::2]:5060")
    p.add_argument("--answer", action="append", required=True, metavar="QUERY=AGE,IP:PORT",
                   help="answer QUERY with this age and endpoint(s) (repeatable)")
    p.add_argument("--source", metavar="ADDR",
                   help="send answers from this local address (play a site on one host)")
    _add_network_args(p)
    return p


class _Cli:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        fmt = args.format or "csv"
        if "json".startswith(fmt):
            self.json = True
        elif "csv".startswith(fmt):
            self.json = False
        else:
            raise InvalidSetting(f"invalid format {fmt!r}: need csv or json")
        self._limited = LogLimiter(log)

    def err(self, message: str) -> None:
        if not self.args.quiet:
            print(f"dgsm-mslookup: {message}", file=sys.stderr, flush=True)

    def fmt(self, query: str, result: Result) -> str:
        if result.outcome is Outcome.ERROR:
            return format_error(query, self.json)
        return (format_json if self.json else format_csv)(query, result)

    def resolver(self) -> AsyncResolver:
        a = self.args
        return AsyncResolver(group=a.mdns_ip, port=a.mdns_port, interface=a.interface,
                             ttl=a.ttl, suffix=a.mdns_domain_suffix,
                             min_delay=a.min_delay / 1000, timeout=a.timeout / 1000,
                             resend=a.resend, trusted=a.trusted,
                             allow_loopback=a.allow_loopback)

    async def one_shot(self) -> int:
        if not self.json and not self.args.no_csv_headers:
            print(CSV_HEADERS, flush=True)
        # Validate every query before any socket is opened: nothing is sent for bad input.
        valid: list[tuple[str, Query]] = []
        invalid = False
        for text in self.args.queries:
            shown = _domain_part(text)
            try:
                valid.append((shown, Query.parse(text)))
            except InvalidQuery as exc:
                invalid = True
                self.err(f"invalid query {_printable(text)!r}: {exc}")
                print(format_error(_printable(shown), self.json), flush=True)
        if not valid:
            return EXIT_INVALID
        async with self.resolver() as resolver:

            async def lookup(shown: str, query: Query) -> int:
                found = False
                trace = _trace_printer(shown) if self.args.trace else None
                async for result in resolver.stream(query, on_answer=trace):
                    print(self.fmt(shown, result), flush=True)
                    found = found or result.outcome is Outcome.FOUND
                    if result.outcome is Outcome.ERROR:
                        self.err(f"{shown}: {result.reason}")
                        return EXIT_FAILURE
                return EXIT_NOT_FOUND if not found and self.args.fail_not_found else EXIT_OK

            codes = await asyncio.gather(*(lookup(shown, q) for shown, q in valid))
        if invalid:
            return EXIT_INVALID
        if EXIT_FAILURE in codes:
            return EXIT_FAILURE
        return EXIT_NOT_FOUND if EXIT_NOT_FOUND in codes else EXIT_OK

    async def daemon(self) -> int:
        a = self.args
        if not 1 <= a.max_clients <= 100_000:
            raise InvalidSetting(f"--max-clients must be 1..100000, not {a.max_clients}")
        max_wait = a.max_wait / 1000
        if max(a.min_delay, a.timeout) / 1000 > max_wait:
            raise InvalidSetting(f"-t/-T ({max(a.min_delay, a.timeout)} ms) exceed --max-wait "
                               f"({a.max_wait} ms)")
        path = a.socket
        _remove_stale_socket(path)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            server.bind(path)
        except OSError as exc:
            server.close()
            raise TransportError(f"cannot bind unix socket {path}: {exc.strerror}") from exc
        try:
            server.listen(64)
            server.setblocking(False)
            max_clients = connection_budget(a.max_clients, f"--max-clients {a.max_clients}",
                                            log)
            loop = asyncio.get_running_loop()
            stop = asyncio.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            async with self.resolver() as resolver:

                async def client(conn: socket.socket, _peer: object) -> None:
                    await self._client(resolver, conn, max_wait)

                header = b"" if self.json or a.no_csv_headers else CSV_HEADERS.encode()
                # Each client's first packet (its query) must come within
                # CLIENT_READ_TIMEOUT; silent ones make room for new clients (see _listen).
                listener = Listener([server], client, name="dgsm-mslookup daemon", log=log,
                                    max_connections=max_clients,
                                    first_byte_timeout=CLIENT_READ_TIMEOUT, greeting=header)
                listener.start()
                self.err(f"serving mslookup queries on {path} (at most {max_clients} clients)")
                try:
                    await stop.wait()
                finally:
                    listener.close()
                    await listener.cancel_all()
                    self._limited.flush()
        finally:
            server.close()
            with contextlib.suppress(OSError):
                os.unlink(path)
        return EXIT_OK

    async def _client(self, resolver: AsyncResolver, conn: socket.socket,
                      max_wait: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            try:
                packet = conn.recv(1024)  # the listener starts us once the query is there
            except (BlockingIOError, InterruptedError):
                packet = await asyncio.wait_for(loop.sock_recv(conn, 1024),
                                                CLIENT_READ_TIMEOUT)
            if not packet:
                return
            text = packet.decode("ascii", "replace").splitlines()[0] if packet.strip() else ""
            shown = _printable(_domain_part(text))
            try:
                query = Query.parse(text)
                timing = resolver.timing(query)
                wait = max(timing.min_delay, timing.timeout)
                if wait > max_wait:
                    raise InvalidQuery(f"asks to wait {wait * 1000:.0f} ms, more than "
                                       f"--max-wait {max_wait * 1000:.0f} ms")
            except InvalidQuery as exc:
                self._limited.info("invalid query", "daemon: invalid query %r: %s", shown, exc)
                await loop.sock_sendall(conn, format_error(shown, self.json).encode())
                return
            await self._results(resolver, conn, query, shown)
        except (OSError, TimeoutError):
            pass
        finally:
            # A cancelled sock_recv leaves its reader registered until a callback runs
            # later; closing first would let a new connection reuse this fd number while
            # the loop still maps it to us, and that connection's reads would never be seen
            # (its query unread until the first-byte deadline, then a reset). Unregister
            # now: the late callback sees its handle cancelled and leaves the fd alone.
            if conn.fileno() >= 0:
                loop.remove_reader(conn.fileno())
            conn.close()

    async def _results(self, resolver: AsyncResolver, conn: socket.socket, query: Query,
                       shown: str) -> None:
        """Send the lookup's results as the engine delivers them (from its callbacks: no
        task or future per result); end it the moment the client goes away. The socket is
        read all along: EOF ends the lookup at once, and a second query on the connection
        is refused, as in the C tool. A client that does not read its results (its socket
        buffer full) is dropped, not waited for."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def finish() -> None:
            if not done.done():
                done.set_result(None)

        def send(data: bytes) -> None:
            try:
                conn.send(data)
            except OSError:  # gone, or not reading (BlockingIOError)
                finish()

        def deliver(result: Result) -> None:
            if done.done():
                return
            send(self.fmt(shown, result).encode())
            if result.last:
                finish()

        def readable() -> None:
            try:
                more = conn.recv(1024)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                more = b""
            if not more:
                finish()  # the client left: the lookup ends now
                return
            send(format_error(_printable(_domain_part(more.decode("ascii", "replace")
                                                      .strip())), self.json).encode())

        fd = conn.fileno()
        loop.add_reader(fd, readable)
        lookup = resolver.start(query, deliver)
        try:
            await done
        finally:
            loop.remove_reader(fd)
            resolver.cancel(lookup)


def _remove_stale_socket(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise TransportError(f"{path} exists and is not a socket; remove it or pick another")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: stale
        return
    finally:
        probe.close()
    raise TransportError(f"another daemon already listens on {path}")


def _send(args: argparse.Namespace) -> int:
    values = args.queries
    if len(values) not in (4, 6):
        raise InvalidSetting("--send needs QUERY AGE IP PORT [IP PORT]")
    query = Query.parse(values[0])
    if not values[1].isdigit():
        raise InvalidAnswer(f"invalid age {values[1]!r}")
    endpoints = [Endpoint(values[i], int(values[i + 1]) if values[i + 1].isdigit() else -1)
                 for i in range(2, len(values), 2)]
    v4 = next((e for e in endpoints if e.family == 4), None)
    v6 = next((e for e in endpoints if e.family == 6), None)
    config = MulticastConfig(args.mdns_ip, args.mdns_port, args.interface, args.ttl)
    packet = encode_answer(query, 0, int(values[1]), v4, v6, args.mdns_domain_suffix)
    sock = open_socket(config)
    try:
        sock.sendto(packet, config.destination())
    except OSError as exc:
        raise TransportError(f"cannot send to {config.describe()}: {exc.strerror}") from exc
    finally:
        sock.close()
    print(f"Sending mDNS to {config.describe()}: {query.domain} age={values[1]} "
          + " ".join(str(e) for e in endpoints))
    return EXIT_OK


async def _serve(args: argparse.Namespace) -> int:
    table: dict[str, Record] = {}
    for item in args.answer:
        query, sep, record = item.partition("=")
        if not sep:
            raise InvalidAnswer(f"invalid --answer {item!r}: need QUERY=AGE,IP:PORT")
        table[Query.parse(query).domain] = Record.parse(record)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    responder = Responder(table, group=args.mdns_ip, port=args.mdns_port,
                          interface=args.interface, ttl=args.ttl,
                          suffix=args.mdns_domain_suffix, source=args.source)
    async with responder:
        print(f"answering {len(table)} queries on {responder.config.describe()}", flush=True)
        await stop.wait()
    print(f"served {responder.queries} queries, answered {responder.answered}", flush=True)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="dgsm-mslookup: %(message)s")
    if argv[:1] == ["serve"]:
        args = _serve_parser().parse_args(argv[1:])
        try:
            return asyncio.run(_serve(args))
        except (InvalidQuery, InvalidSetting, InvalidAnswer) as exc:
            print(f"dgsm-mslookup serve: {exc}", file=sys.stderr)
            return EXIT_INVALID
        except TransportError as exc:
            print(f"dgsm-mslookup serve: {_fail_hint(exc)}", file=sys.stderr)
            return EXIT_FAILURE
    parser = _parser()
    args = parser.parse_args(argv)
    if args.quiet:
        logging.disable(logging.CRITICAL)
    try:
        if args.send:
            return _send(args)
        cli = _Cli(args)
        if args.socket:
            if not args.daemon:
                parser.error("-s/--socket needs -d/--daemon")
            if args.queries:
                parser.error("in daemon mode, queries come over the socket")
            return asyncio.run(cli.daemon())
        if not args.queries:
            parser.print_help()
            return EXIT_INVALID
        return asyncio.run(cli.one_shot())
    except (InvalidQuery, InvalidSetting, InvalidAnswer) as exc:
        if not args.quiet:
            print(f"dgsm-mslookup: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except (TransportError, MslookupError) as exc:
        if not args.quiet:
            print(f"dgsm-mslookup: {_fail_hint(exc) if isinstance(exc, TransportError) else exc}",
                  file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
