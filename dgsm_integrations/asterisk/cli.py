"""``dgsm-fastagi``, the command: flags, settings, serving until SIGTERM (:mod:`.fastagi` is
the server). ``--max-sessions``, the earlier name of ``--max-calls``, is still accepted."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .._daemon import add_mslookup_args, run_daemon, server_parser
from .config import AsteriskConfig
from .fastagi import FastAgiServer, log

__all__ = ["build_parser", "main"]

_DESCRIPTION = """\
FastAGI server for D-GSM: finds the site where a dialled MSISDN was seen most recently
(mslookup over multicast DNS, like OsmoHLR) and hands the result to the Asterisk dialplan
in channel variables. It only looks up; your dialplan does the Dial().

In extensions.conf (the whole context, with its failure branches, is asterisk/extensions.conf):

  exten => _X.,1,GotoIf($[${REGEX("^[0-9]{1,15}$" ${EXTEN})}]?lookup)
   same => n,Hangup(28)
   same => n(lookup),Set(DGSM_RESULT=)
   same => n,AGI(agi://127.0.0.1:4573/dgsm?service=sip.voice)
   same => n,GotoIf($["${DGSM_RESULT}" = "found"]?dial)
   same => n,Hangup(${IF($["${DGSM_CAUSE}" = ""]?34:${DGSM_CAUSE})})
   same => n(dial),Dial(${DGSM_DIAL},60)

The number looked up is the extension Asterisk routed (agi_extension): anything but
1-15 digits is "invalid" (Asterisk strips quotes and backslashes from AGI arguments, so an
argument is only accepted when it is exactly that extension).

Variables: DGSM_RESULT (found / not-found / error / invalid), DGSM_DIAL
(PJSIP/<endpoint>/sip:<msisdn>@<ip>:<port>), DGSM_SIP_HOST, DGSM_SIP_PORT, DGSM_AGE,
DGSM_CAUSE (Q.850 for Hangup(): 1 -> SIP 404, 34 -> 503, 28 -> 484).
"""

_EPILOG = """\
settings: defaults < --config FILE (key = value lines, keys as the long options) < options.
examples:
  dgsm-fastagi --interface eth0 --endpoint dgsm-trunk
  dgsm-fastagi --config /etc/dgsm-integrations/fastagi.conf --check
  dgsm-fastagi --interface 127.0.0.1 --mdns-port 4266 --min-delay 0.5 --log-level debug
Each call logs one line ("call peer=... ext=... result=... agi=... added=...ms"):
  journalctl -u dgsm-fastagi | grep 'result=error'
SIGTERM stops accepting calls, lets calls in progress finish (--grace), then exits 0.
See docs/asterisk.md for the full guide.
"""


def build_parser() -> argparse.ArgumentParser:
    p, g = server_parser(
        "dgsm-fastagi", _DESCRIPTION, _EPILOG, "FastAGI",
        port="TCP port (4573, Asterisk's default)", max_calls="calls served at once (1000)",
        call_timeout="a call never takes longer than this, lookup included (5.0)",
        first_byte="close a connection that sends no AGI environment this soon (2.0)")
    g.add_argument("--max-sessions", metavar="N", help=argparse.SUPPRESS)  # the old name
    g.add_argument("--route", help="the script name in the agi:// URL (dgsm)")
    g.add_argument("--asterisk-log", metavar="notice|verbose|no",
                   help="also send each call's line to Asterisk's own log: notice (Log(), "
                        "lands in messages.log), verbose (consoles only), no (notice)")
    r = p.add_argument_group("routing")
    r.add_argument("--endpoint", help="PJSIP endpoint used in DGSM_DIAL (dgsm)")
    r.add_argument("--service", help="mslookup service (sip.voice); ?service= overrides")
    r.add_argument("--prefer-ipv6", metavar="yes|no",
                   help="dial the IPv6 endpoint when a site gives both (no)")
    r.add_argument("--cause-not-found", metavar="Q850", help="DGSM_CAUSE when not found (1)")
    r.add_argument("--cause-error", metavar="Q850", help="DGSM_CAUSE when lookup fails (34)")
    r.add_argument("--cause-invalid", metavar="Q850",
                   help="DGSM_CAUSE for an extension that is no MSISDN (28)")
    add_mslookup_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dgsm-fastagi`` console script."""
    args = build_parser().parse_args(argv)
    return run_daemon("dgsm-fastagi", args, AsteriskConfig.from_strings, FastAgiServer, log)


if __name__ == "__main__":
    sys.exit(main())
