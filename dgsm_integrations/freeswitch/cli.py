"""``dgsm-fs-esl``, the command: flags, settings, serving until SIGTERM (:mod:`.server` is
the server)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .._daemon import add_mslookup_args, run_daemon, server_parser
from .config import FreeswitchConfig
from .server import EslServer, log

__all__ = ["build_parser", "main"]

_DESCRIPTION = """\
Outbound event-socket (ESL) server for D-GSM: FreeSWITCH connects once per call; the server
finds the site where the dialled MSISDN was seen most recently (mslookup over multicast
DNS, like OsmoHLR) and tells FreeSWITCH to bridge the call there, or to hang up with a
clear cause. For FreeSWITCH builds without mod_python3.

In the dialplan (see freeswitch/dialplan/public.xml):

  <action application="socket" data="127.0.0.1:8084 async full"/>
  <action application="hangup" data="NORMAL_TEMPORARY_FAILURE"/>  <!-- server down -->

Outcomes: found -> bridge sofia/<profile>/sip:<msisdn>@<ip>:<port> (IPv6 through
--profile-v6; both families: ordered failover with '|'); not found -> UNALLOCATED_NUMBER;
lookup failed / timed out -> NORMAL_TEMPORARY_FAILURE; not 1-15 digits ->
INVALID_NUMBER_FORMAT. Channel variables set: dgsm_result, dgsm_dial_string,
dgsm_sip_host, dgsm_sip_port, dgsm_age, dgsm_site, dgsm_lookup_ms, dgsm_cause.
A call may override per-call settings with dgsm_<setting> channel variables
(dgsm_profile, dgsm_min_delay, dgsm_codec_string, ...).
"""

_EPILOG = """\
settings: defaults < --config FILE (key = value lines, keys as the long options) < options.
examples:
  dgsm-fs-esl --interface eth0
  dgsm-fs-esl --config /etc/dgsm-integrations/freeswitch.conf --check
  dgsm-fs-esl --interface 127.0.0.1 --min-delay 0.5 --codec-string PCMA,PCMU --log-level debug
Each call logs one line ("call peer=... uuid=... dest=... result=... esl=... added=...ms"):
  journalctl -u dgsm-fs-esl | grep 'result=error'
SIGTERM stops accepting calls, lets calls being routed finish (--grace), then exits 0.
See docs/freeswitch.md for the full guide.
"""


def build_parser() -> argparse.ArgumentParser:
    p, g = server_parser(
        "dgsm-fs-esl", _DESCRIPTION, _EPILOG, "event socket",
        port="TCP port (8084, as in the socket action)",
        max_calls="connections served at once (2000)",
        call_timeout="from connect to bridge/hangup sent, lookup included (5.0)",
        first_byte="close a connection that has not answered connect this soon (2.0)")
    g.add_argument("--linger", metavar="S",
                   help="ask FreeSWITCH to keep the socket this long after hangup (30)")
    g.add_argument("--bridge-timeout", metavar="S",
                   help="stop watching a bridged call after this long (14400)")
    r = p.add_argument_group("routing (per call also as dgsm_<name> channel variables)")
    r.add_argument("--service", help="mslookup service (sip.voice)")
    r.add_argument("--profile", help="sofia profile for IPv4 sites (external)")
    r.add_argument("--profile-v6", help="sofia profile for IPv6 sites (external-ipv6)")
    r.add_argument("--prefer-ipv6", metavar="yes|no", help="try IPv6 first (no)")
    r.add_argument("--failover", metavar="yes|no",
                   help="both families in the dial string, '|' separated (yes)")
    r.add_argument("--codec-string", metavar="CODECS",
                   help="B-leg absolute_codec_string, e.g. PCMA,PCMU (none)")
    r.add_argument("--originate-timeout", metavar="S", help="B-leg originate_timeout (none)")
    r.add_argument("--continue-on-fail", metavar="yes|no",
                   help="on a failed bridge, go on in the dialplan instead of hanging up (no)")
    r.add_argument("--cause-not-found", metavar="CAUSE", help="(UNALLOCATED_NUMBER)")
    r.add_argument("--cause-error", metavar="CAUSE",
                   help="lookup failed or timed out (NORMAL_TEMPORARY_FAILURE)")
    r.add_argument("--cause-invalid", metavar="CAUSE",
                   help="destination is not 1-15 digits (INVALID_NUMBER_FORMAT)")
    add_mslookup_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dgsm-fs-esl`` console script."""
    args = build_parser().parse_args(argv)
    return run_daemon("dgsm-fs-esl", args, FreeswitchConfig.from_strings, EslServer, log)


if __name__ == "__main__":
    sys.exit(main())
