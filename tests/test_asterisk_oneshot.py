"""The per-call script's one lookup (asterisk/oneshot.py), on a clock the test controls.

Found with a real Asterisk 22: 50 dgsm-agi scripts at once on 2 cores, and a script that was
not scheduled from its query until past its deadline said "not found" with the answer
already waiting in its socket (the caller got 404 for a subscriber who was there).
"""

from __future__ import annotations

import socket
import struct

from dgsm_integrations.asterisk.oneshot import lookup_once
from dgsm_integrations.mslookup import Endpoint, Outcome, Query
from dgsm_integrations.mslookup.wire import encode_answer

from .conftest import LO

GROUP, PORT = "239.192.23.42", 43311


def _listener() -> socket.socket:
    """A second member of the group: once it has a datagram, so has every other member."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((GROUP, PORT))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                 socket.inet_aton(GROUP) + socket.inet_aton(LO))
    s.settimeout(5)
    return s


def test_an_answer_that_came_while_the_script_slept_is_not_lost() -> None:
    query = Query.parse("sip.voice.1001.msisdn")
    answer = encode_answer(query, 7, 3, Endpoint("127.0.0.9", 5060), None)
    listener = _listener()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LO))
    sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, struct.pack("B", 1))
    now = [100.0]
    calls = [0]

    def clock() -> float:
        calls[0] += 1
        # call 1: the start; 2: the first query goes out; 3: how long to wait (select
        # returns at the next re-send, nothing came yet); 4: the loop looks at the time
        # again: meanwhile the site answered, and the process was not scheduled for 10 s
        if calls[0] == 4:
            sender.sendto(answer, (GROUP, PORT))
            while True:  # until the answer is delivered to the group's members
                data, _ = listener.recvfrom(2048)
                if data == answer:
                    break
            now[0] += 10.0
        return now[0]
    try:
        result = lookup_once(query, group=GROUP, port=PORT, interface=LO,
                             suffix="mdns.osmocom.org", min_delay=0.2, clock=clock,
                             allow_loopback=True)
    finally:
        listener.close()
        sender.close()
    assert result.outcome is Outcome.FOUND, result
    assert result.v4 == Endpoint("127.0.0.9", 5060) and result.age == 3
