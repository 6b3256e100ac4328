"""``dgsm-lab``: a real D-GSM network of villages on this machine (docs/lab.md)."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
from types import FrameType

from .distro import default_osmocom, osmocom_distro
from .netns import LabError, in_private_netns
from .network import Lab

__all__ = ["main"]

DESCRIPTION = """\
Build a small D-GSM network on this machine and use it: villages in network namespaces, each
with its own address and a real OsmoHLR (Debian's osmo-hlr: sid's 1.9.4 or this host's, see
--osmocom), joined by a backhaul bridge; SIP and SMPP endpoints in every village; our
FreeSWITCH, Asterisk and ESME integrations in village B. Nothing touches this host's
interfaces: dgsm-lab runs itself in a private network namespace (unshare -rn, or unshare -n
as root), and everything is gone when it exits.

commands:
  demo   tell the story: Alice roams to C, Bob at B calls her and texts her, C's link turns
         lossy, goes down, comes back (under a minute; exit status 0 if all went right)
  up     build the network, provision Alice and Bob, and keep it up until Ctrl-C, with a
         cheat sheet of commands to explore it"""

EPILOG = """\
examples:
  dgsm-lab demo
  dgsm-lab demo --keep          (then explore; Ctrl-C tears it down)
  dgsm-lab up --villages A,B,C,D
  dgsm-lab demo --osmocom host  (Debian 12's osmo-hlr 1.5.0 / osmo-msc 1.9.0)

needs: osmo-hlr (apt-get install osmo-hlr, or the sid root), iproute2, util-linux, nftables;
user namespaces (sysctl kernel.unprivileged_userns_clone=1) or root."""

MARK = "DGSM_LAB_NETNS"


def _reexec_private() -> None:
    """Run this command again inside a private network namespace of its own."""
    if os.environ.get(MARK) == "1":
        raise LabError("still not in a private network namespace after unshare; refusing")
    unshare = shutil.which("unshare")
    if unshare is None:
        raise LabError("unshare not found: apt-get install util-linux")
    probe = subprocess.run([unshare, "-rn", "true"], capture_output=True, check=False)
    if probe.returncode == 0:
        flags = "-rn"
    elif os.geteuid() == 0:
        flags = "-n"
    else:
        raise LabError("cannot create a private network namespace (unshare -rn failed): "
                       "enable user namespaces (sysctl -w kernel.unprivileged_userns_clone=1; "
                       "on Ubuntu also kernel.apparmor_restrict_unprivileged_userns=0) or "
                       "run as root")
    os.environ[MARK] = "1"
    script = 'ip link set lo up && exec "$0" "$@"'
    argv = [unshare, flags, "sh", "-c", script, sys.executable, "-m", "dgsm_integrations.lab",
            *sys.argv[1:]]
    os.execv(unshare, argv)  # noqa: S606 - fixed argv: this same command


def cheat_sheet(lab: Lab) -> None:
    root = os.geteuid() == 0 and os.environ.get(MARK) != "1"
    enter = "nsenter -t {pid} -n" if root else "nsenter -t {pid} -U -n --preserve-credentials"
    print("\nThe lab is up. From another terminal on this machine:")
    for v in lab:
        cmd = enter.format(pid=v.ns.pid)
        print(f"  village {v.name} ({v.addr}):  {cmd} bash")
    b = lab["B"]
    print("\n  ask from B where Alice is, seeing every answer:")
    print(f"    {enter.format(pid=b.ns.pid)} {sys.executable} -m dgsm_integrations.mslookup "
          f"--trace --interface {b.addr} sip.voice.1001.msisdn")
    print("  make C's link lossy / cut it (inside C's namespace / the backhaul's):")
    c = lab["C"]
    print(f"    {enter.format(pid=c.ns.pid)} nft list ruleset")
    if lab.backhaul is not None:
        print(f"    {enter.format(pid=lab.backhaul.pid)} ip link set {c.link} down")
    print("  OsmoHLR VTY of village A:  telnet inside A to "
          f"{lab['A'].addr} 4258; logs in {lab.workdir}")
    print("\nCtrl-C tears everything down.")


def _wait_for_interrupt() -> None:
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with contextlib.suppress(KeyboardInterrupt):
        done.wait()


def _keep_up(lab: Lab) -> None:
    cheat_sheet(lab)
    _wait_for_interrupt()


def _up(villages: list[str], osmocom: str) -> int:
    from .demo import ALICE, BOB
    from .services import Services

    distro = osmocom_distro(osmocom)
    print(f"Osmocom: osmo-hlr {distro.version('osmo-hlr')}, osmo-msc "
          f"{distro.version('osmo-msc') or 'not installed'} ({distro.name})")
    with Lab(villages, distro=distro) as lab, Services(lab):
        lab["A"].provision(*ALICE)
        lab["B"].provision(*BOB)
        lab["C"].attach(ALICE[0])
        lab["B"].attach(BOB[0])
        print(f"Alice ({ALICE[1]}, home A) is attached at C; Bob ({BOB[1]}) at B.")
        cheat_sheet(lab)
        _wait_for_interrupt()
    print("lab torn down")
    return 0


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dgsm-lab", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("demo", "up"), help="what to do (see above)")
    parser.add_argument("--villages", default="A,B,C", metavar="A,B,C",
                        help="village names, comma separated (default A,B,C); must include "
                        "A, B and C, where the story happens; more villages join the network")
    parser.add_argument("--keep", action="store_true",
                        help="demo: leave the network up afterwards, until Ctrl-C")
    parser.add_argument("--osmocom", choices=("host", "sid"), default=None,
                        help="which Osmocom generation runs in the villages: host (this "
                        "Debian's packages: osmo-hlr 1.5.0 / osmo-msc 1.9.0 on Debian 12) or "
                        "sid (osmo-hlr 1.9.4 / osmo-msc 1.16.0 from the Debian sid root "
                        ".ci/bootstrap.sh makes); default: sid when that root exists, else host")
    args = parser.parse_args(argv)
    villages = [v.strip() for v in args.villages.split(",") if v.strip()]
    if not {"A", "B", "C"} <= set(villages) or len(set(villages)) != len(villages):
        parser.error("--villages must name A, B and C (Alice's home, Bob's, where Alice "
                     "roams), each once")
    try:
        if not in_private_netns():
            _reexec_private()
        signal.signal(signal.SIGTERM, _on_term)
        osmocom = args.osmocom or default_osmocom().name
        if args.command == "up":
            return _up(villages, osmocom)
        from .demo import run_demo
        return run_demo(villages, keep=args.keep, cheat_sheet=_keep_up,
                        distro=osmocom_distro(osmocom))
    except LabError as exc:
        print(f"dgsm-lab: {exc}", file=sys.stderr)
        return 2
