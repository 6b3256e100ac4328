"""A prototype, for bench/daemon.py only: the daemon's per-request path without asyncio.

What a ``dgsm-mslookup -d`` driver could cost per request if it were one ``epoll`` loop over
the sans-I/O pieces that exist today (``Query.parse``, ``wire.encode_query`` /
``decode_answer``, ``Selection``, ``cli.format_json``, ``transport.open_socket``): no tasks,
no futures, no per-request timers beyond a heap entry, one ``epoll_wait`` per wake-up.

It is not the product and is not tested as one: one copy of each query (no re-sends, no
pacing), no trust filter beyond the unusable-address rule, no client limits or first-byte
deadline, no ``--max-wait``. Those are per-lookup bookkeeping, not per-datagram work: in
the age-0 path that bench/daemon.py measures, ours sends one copy too (the first answer ends
the flight). Usage: ``python bench/_lean_daemon.py -s PATH -M PORT`` (JSON lines, min-delay
and timeout 1000 ms); it says ``serving`` on stderr when its socket is up, and stops on
SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dgsm_integrations.mslookup.cli import format_error, format_json  # noqa: E402
from dgsm_integrations.mslookup.errors import InvalidQuery  # noqa: E402
from dgsm_integrations.mslookup.model import Answer, Result, unusable_reason  # noqa: E402
from dgsm_integrations.mslookup.query import IdType, Query  # noqa: E402
from dgsm_integrations.mslookup.selection import Selection, Timing  # noqa: E402
from dgsm_integrations.mslookup.transport import MulticastConfig, open_socket  # noqa: E402
from dgsm_integrations.mslookup.wire import decode_answer, encode_query  # noqa: E402

Key = tuple[str, str, IdType]


@dataclass(slots=True)
class Client:
    conn: socket.socket
    shown: str = ""
    selection: Selection | None = None


@dataclass
class Lean:
    path: str
    port: int
    min_delay: float = 1.0
    timeout: float = 1.0
    clients: dict[int, Client] = field(default_factory=dict)
    waiting: dict[Key, set[int]] = field(default_factory=dict)
    timers: list[tuple[float, int, int]] = field(default_factory=list)  # (when, seq, fd)
    seq: int = 0
    requests: int = 0
    eager: bool = False
    eager_hits: int = 0
    wakeups: int = 0
    #: with --stages: ns spent in each step, summed (perf_counter_ns around each)
    stages: dict[str, int] | None = None
    packet_id: int = field(default_factory=lambda: int.from_bytes(os.urandom(2), "big"))

    def serve(self) -> None:
        config = MulticastConfig("239.192.23.42", self.port, None, 1)
        mc = open_socket(config)
        dest = config.destination()
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        srv.bind(self.path)
        srv.listen(64)
        srv.setblocking(False)
        ep = select.epoll()
        ep.register(srv.fileno(), select.EPOLLIN)
        ep.register(mc.fileno(), select.EPOLLIN)
        srv_fd, mc_fd = srv.fileno(), mc.fileno()
        print("serving", file=sys.stderr, flush=True)
        try:
            while True:
                wait = -1.0
                if self.timers:
                    wait = max(0.0, self.timers[0][0] - time.monotonic())
                t0 = time.perf_counter_ns()
                try:
                    events = ep.poll(wait)
                except InterruptedError:
                    continue
                self.wakeups += 1
                self._add("epoll_wait (incl. idle)", time.perf_counter_ns() - t0)
                for fd, _ev in events:
                    if fd == srv_fd:
                        self._accept(srv, ep, mc, dest)
                    elif fd == mc_fd:
                        self._datagrams(mc)
                    else:
                        self._client(fd, ep, mc, dest)
                if self.timers and self.timers[0][0] <= time.monotonic():
                    self._expire()
        finally:
            if self.stages is not None:
                print("stages " + json.dumps({"requests": self.requests, "wakeups":
                                              self.wakeups, "eager_hits": self.eager_hits,
                                              "ns": self.stages}),
                      file=sys.stderr, flush=True)
            for c in list(self.clients.values()):
                c.conn.close()
            ep.close()
            srv.close()
            mc.close()
            os.unlink(self.path)

    def _add(self, stage: str, ns: int) -> None:
        if self.stages is not None:
            self.stages[stage] = self.stages.get(stage, 0) + ns

    def _accept(self, srv: socket.socket, ep: select.epoll, mc: socket.socket,
                dest: tuple[str, int] | tuple[str, int, int, int]) -> None:
        t0 = time.perf_counter_ns()
        try:
            conn, _ = srv.accept()
        except BlockingIOError:
            return
        fd = conn.fileno()
        self.clients[fd] = Client(conn)
        self.requests += 1
        if self.eager:
            # the client sends its query right after connecting: often it is there already,
            # and reading it now saves a wake-up (costs one EAGAIN recv when it is not)
            try:
                packet = conn.recv(1024, socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass
            except OSError:
                self._close(fd)
                return
            else:
                self.eager_hits += 1
                self._add("accept + eager recv", time.perf_counter_ns() - t0)
                if self._on_packet(fd, packet, mc, dest):
                    ep.register(fd, select.EPOLLIN)  # for EOF: the client leaving ends it
                return
        ep.register(fd, select.EPOLLIN)
        self._add("accept + epoll_ctl", time.perf_counter_ns() - t0)

    def _close(self, fd: int) -> None:
        c = self.clients.pop(fd)
        if c.selection is not None:
            fds = self.waiting.get(c.selection.query.key)
            if fds is not None:
                fds.discard(fd)
                if not fds:
                    del self.waiting[c.selection.query.key]
        c.conn.close()  # epoll forgets a closed fd by itself

    def _client(self, fd: int, ep: select.epoll, mc: socket.socket,
                dest: tuple[str, int] | tuple[str, int, int, int]) -> None:
        t0 = time.perf_counter_ns()
        try:
            packet = self.clients[fd].conn.recv(1024)
        except OSError:
            packet = b""
        self._add("client recv", time.perf_counter_ns() - t0)
        self._on_packet(fd, packet, mc, dest)

    def _on_packet(self, fd: int, packet: bytes, mc: socket.socket,
                   dest: tuple[str, int] | tuple[str, int, int, int]) -> bool:
        """Handle what a client sent; False if the client is gone now."""
        c = self.clients[fd]
        if not packet:
            self._close(fd)  # the client left: its lookup ends
            return False
        text = packet.decode("ascii", "replace").splitlines()[0] if packet.strip() else ""
        shown = text.split("@", 1)[1] if "@" in text else text
        if c.selection is not None:
            c.conn.send(format_error(shown, True).encode())
            return True
        t1 = time.perf_counter_ns()
        try:
            query = Query.parse(text)
            timing = Timing.of(query, self.min_delay, self.timeout)
        except InvalidQuery:
            c.conn.send(format_error(shown, True).encode())
            self._close(fd)
            return False
        now = time.monotonic()
        c.shown = shown
        c.selection = Selection(query, timing, now)
        fds = self.waiting.get(query.key)
        t2 = t3 = time.perf_counter_ns()
        if fds is None:
            self.waiting[query.key] = {fd}
            self.packet_id = (self.packet_id + 1) & 0xFFFF
            packet = encode_query(query, self.packet_id)
            t3 = time.perf_counter_ns()
            mc.sendto(packet, dest)
        else:
            fds.add(fd)
        if self.stages is not None:
            t4 = time.perf_counter_ns()
            self._add("Query.parse + Timing + Selection", t2 - t1)
            self._add("encode_query", t3 - t2)
            self._add("sendto (multicast)", t4 - t3)
        deadline = c.selection.deadline
        if deadline is not None:
            self.seq += 1
            heapq.heappush(self.timers, (deadline, self.seq, fd))
        return True

    def _datagrams(self, mc: socket.socket) -> None:
        while True:
            t0 = time.perf_counter_ns()
            try:
                data, src = mc.recvfrom(2048)
            except BlockingIOError:
                self._add("datagram recvfrom", time.perf_counter_ns() - t0)
                return
            t1 = time.perf_counter_ns()
            self._add("datagram recvfrom", t1 - t0)
            if len(data) < 12 or not data[2] & 0x80:
                continue  # a runt, or a query (ours looped back, or another site's)
            try:
                answer = decode_answer(data)
            except InvalidQuery:
                continue
            self._add("decode_answer", time.perf_counter_ns() - t1)
            fds = self.waiting.get(answer.query.key)
            if not fds or any(e is not None and unusable_reason(e) for e in
                              (answer.v4, answer.v6)):
                continue
            self._feed(fds, answer, src[0])

    def _feed(self, fds: set[int], answer: Answer, site: str) -> None:
        now = time.monotonic()
        for fd in list(fds):
            c = self.clients[fd]
            assert c.selection is not None
            t0 = time.perf_counter_ns()
            results = c.selection.feed(answer, now, site)
            self._add("Selection.feed", time.perf_counter_ns() - t0)
            self._deliver(fd, c, results)

    def _deliver(self, fd: int, c: Client, results: list[Result]) -> None:
        for result in results:
            t0 = time.perf_counter_ns()
            line = format_json(c.shown, result).encode()
            t1 = time.perf_counter_ns()
            try:
                c.conn.send(line)
            except OSError:
                self._close(fd)
                return
            t2 = time.perf_counter_ns()
            self._add("format_json", t1 - t0)
            self._add("client send", t2 - t1)
            if result.last:
                self._close(fd)
                self._add("close + bookkeeping", time.perf_counter_ns() - t2)
                return

    def _expire(self) -> None:
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _when, _seq, fd = heapq.heappop(self.timers)
            c = self.clients.get(fd)
            if c is None or c.selection is None or c.selection.done:
                continue  # ended already (or the fd is a newer client's: its own entry)
            self._deliver(fd, c, c.selection.tick(now))
            deadline = c.selection.deadline
            if fd in self.clients and deadline is not None:
                self.seq += 1
                heapq.heappush(self.timers, (deadline, self.seq, fd))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-s", "--socket", required=True)
    parser.add_argument("-M", "--mdns-port", type=int, default=4266)
    parser.add_argument("--eager", action="store_true",
                        help="read the query right after accept() when it is there already")
    parser.add_argument("--stages", action="store_true",
                        help="time each step; print the sums on stderr at exit")
    args = parser.parse_args()
    lean = Lean(args.socket, args.mdns_port, stages={} if args.stages else None,
                eager=args.eager)

    def stop(_sig: int, _frame: object) -> None:
        raise SystemExit(0)  # out of epoll.poll (which PEP 475 would resume), cleanly

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    lean.serve()


if __name__ == "__main__":
    main()
