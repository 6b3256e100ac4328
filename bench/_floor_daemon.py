"""A floor, for bench/daemon.py only: the least Python a daemon request can cost.

``_lean_daemon.py`` drives today's sans-I/O objects from one epoll loop; this goes further
and keeps nothing but bytes and a few dicts on the hot path, to show how close CPython can
come to the C daemon at all: the query is checked with two regular expressions and encoded
by concatenation; an answer is matched by its raw name bytes (a dict lookup, no decoding of
the name) and its records walked with ``struct``; the result line is one f-string. It
keeps libosmo-mslookup's selection for the one case it serves (the youngest answer wins,
age 0 ends the lookup at once, otherwise the best at min-delay or not-found) and checks
what OsmoHLR's decoder checks on the records it reads (same name in every record, TXT
``age``/``port``, an A record), but nothing else: no ``[delay-timeout@]`` prefix (refused),
no IPv6, no re-sends, no trust filter. Not the product; a measurement of the language's floor.

Usage: ``python bench/_floor_daemon.py -s PATH -M PORT``; says ``serving`` on stderr when
its socket is up; SIGINT/SIGTERM stop it.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import os
import re
import select
import signal
import socket
import struct
import sys
import time

GROUP = "239.192.23.42"
SUFFIX = b"mdns.osmocom.org"
MIN_DELAY = 1.0
_SERVICE = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_ID = {"imsi": re.compile(r"[0-9]{6,15}"), "msisdn": re.compile(r"[0-9]{1,15}")}
_RR = struct.Struct("!HHIH")
_HEADER = struct.Struct("!6H")
TYPE_A, TYPE_TXT = 1, 16


class Lookup:
    __slots__ = ("age", "conn", "fd", "name", "port", "shown", "v4")

    def __init__(self, conn: socket.socket, shown: str, name: bytes) -> None:
        self.conn, self.fd, self.shown, self.name = conn, conn.fileno(), shown, name
        self.age = -1
        self.v4 = ""
        self.port = 0


def wire_name(text: str) -> tuple[str, bytes] | None:
    """(the query as shown, its wire name) or None when invalid."""
    service, _, rest = text.rpartition(".")
    service, _, ident = service.rpartition(".")
    id_type = rest.lower()
    check = _ID.get(id_type)
    if (not service or len(service) > 64 or check is None or not check.fullmatch(ident)
            or not _SERVICE.fullmatch(service)):
        return None
    labels = f"{service}.{ident}.{id_type}".encode().split(b".") + SUFFIX.split(b".")
    return text, b"".join(bytes((len(x),)) + x for x in labels) + b"\0"


def parse_answer(data: bytes, name: bytes) -> tuple[int, str, int] | None:
    """(age, IPv4 address, port) from an answer whose records all carry ``name``."""
    count = struct.unpack_from("!H", data, 6)[0]
    off, end = 12, len(data)
    age, v4, port = -1, "", 0
    for _ in range(count):
        if data[off:off + len(name)] != name:
            return None
        off += len(name)
        rtype, _cls, _ttl, rdlen = _RR.unpack_from(data, off)
        off += 10
        rdata = data[off:off + rdlen]
        off += rdlen
        if off > end:
            return None
        if rtype == TYPE_A and rdlen == 4:
            if v4:
                return None
            v4 = socket.inet_ntop(socket.AF_INET, rdata)
        elif rtype == TYPE_TXT and rdlen and rdata[0] == rdlen - 1:
            key, _, value = rdata[1:].partition(b"=")
            if not value.isdigit():
                return None
            if key == b"age":
                age = int(value)
            elif key == b"port" and v4 and not port:
                port = int(value)
            else:
                return None
    if off != end or age < 0 or not v4 or not 0 < port < 65536:
        return None
    return age, v4, port


def serve(path: str, port: int) -> None:
    mc = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    mc.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    mc.bind((GROUP, port))
    mc.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                  socket.inet_aton(GROUP) + socket.inet_aton("0.0.0.0"))
    mc.setblocking(False)
    dest = (GROUP, port)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    srv.bind(path)
    srv.listen(64)
    srv.setblocking(False)
    ep = select.epoll()
    srv_fd, mc_fd = srv.fileno(), mc.fileno()
    ep.register(srv_fd, select.EPOLLIN)
    ep.register(mc_fd, select.EPOLLIN)
    conns: dict[int, socket.socket] = {}
    lookups: dict[int, Lookup] = {}  # by client fd
    by_name: dict[bytes, list[Lookup]] = {}
    timers: list[tuple[float, int, Lookup]] = []
    packet_id = int.from_bytes(os.urandom(2), "big")

    def finish(lk: Lookup) -> None:
        if lk.age >= 0:
            line = (f'{{"query": "{lk.shown}", "result": "result", "last": true, '
                    f'"age": {lk.age}, "v4": ["{lk.v4}", "{lk.port}"]}}')
        else:
            line = f'{{"query": "{lk.shown}", "result": "not-found", "last": true, "age": 0}}'
        with contextlib.suppress(OSError):  # the client is gone: nothing to tell it
            lk.conn.send(line.encode())
        drop(lk.fd)

    def drop(fd: int) -> None:
        conn = conns.pop(fd)
        lk = lookups.pop(fd, None)
        if lk is not None:
            waiting = by_name[lk.name]
            waiting.remove(lk)
            if not waiting:
                del by_name[lk.name]
        conn.close()

    print("serving", file=sys.stderr, flush=True)
    try:
        while True:
            wait = max(0.0, timers[0][0] - time.monotonic()) if timers else -1.0
            for fd, _ev in ep.poll(wait):
                if fd == srv_fd:
                    try:
                        conn, _ = srv.accept()
                    except BlockingIOError:
                        continue
                    conns[conn.fileno()] = conn
                    ep.register(conn.fileno(), select.EPOLLIN)
                elif fd == mc_fd:
                    while True:
                        try:
                            data = mc.recv(2048)
                        except BlockingIOError:
                            break
                        if len(data) < 12 or not data[2] & 0x80:
                            continue
                        end = data.find(b"\0", 12) + 1
                        waiting = by_name.get(data[12:end]) if end else None
                        if not waiting:
                            continue
                        got = parse_answer(data, data[12:end])
                        if got is None:
                            continue
                        for lk in list(waiting):
                            if lk.age < 0 or got[0] < lk.age:
                                lk.age, lk.v4, lk.port = got
                                if got[0] == 0:
                                    finish(lk)
                else:
                    conn = conns[fd]
                    try:
                        packet = conn.recv(1024)
                    except OSError:
                        packet = b""
                    if not packet:
                        drop(fd)
                        continue
                    text = packet.decode("ascii", "replace").split("\n", 1)[0].strip()
                    parsed = None if fd in lookups or "@" in text else wire_name(text)
                    if parsed is None:
                        conn.send(f'{{"query": "{text[:64]!s}", "result": "ERROR"}}'.encode())
                        if fd not in lookups:
                            drop(fd)
                        continue
                    lk = Lookup(conn, *parsed)
                    lookups[fd] = lk
                    waiting = by_name.get(lk.name)
                    if waiting is None:
                        by_name[lk.name] = [lk]
                        packet_id = (packet_id + 1) & 0xFFFF
                        mc.sendto(_HEADER.pack(packet_id, 0, 1, 0, 0, 0) + lk.name
                                  + b"\0\xff\0\x01", dest)
                    else:
                        waiting.append(lk)
                    heapq.heappush(timers, (time.monotonic() + MIN_DELAY, id(lk), lk))
            now = time.monotonic()
            while timers and timers[0][0] <= now:
                lk = heapq.heappop(timers)[2]
                if lookups.get(lk.fd) is lk:
                    finish(lk)
    finally:
        for conn in conns.values():
            conn.close()
        ep.close()
        srv.close()
        mc.close()
        os.unlink(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-s", "--socket", required=True)
    parser.add_argument("-M", "--mdns-port", type=int, default=4266)
    args = parser.parse_args()

    def stop(_sig: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    serve(args.socket, args.mdns_port)


if __name__ == "__main__":
    main()
