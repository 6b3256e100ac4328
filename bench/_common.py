"""What every benchmark script shares: the private network namespace, percentiles, process
figures. A script calls :func:`enter_private_netns` first thing in ``main()``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

__all__ = ["MARK", "cpu_seconds", "enter_private_netns", "only_loopback", "pct", "peak_rss_mib"]

MARK = "DGSM_PERF_NETNS"


def only_loopback() -> bool:
    return all(name == "lo" for _, name in socket.if_nameindex())


def enter_private_netns(script: str) -> None:
    """Re-execute ``script`` in a fresh network namespace, then set it up once inside:
    ``lo`` up and 224.0.0.0/4 routed to it. Refuses to run where other interfaces exist."""
    me = Path(script).name
    if os.environ.get(MARK) != me:
        if shutil.which("unshare") is None:
            sys.exit("bench: unshare (util-linux) is needed to make a private network namespace")
        probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, check=False)
        flags = "-rn" if probe.returncode == 0 else "-n"
        if flags == "-n" and os.geteuid() != 0:
            sys.exit("bench: cannot create a private network namespace (unshare -rn failed): "
                     "enable unprivileged user namespaces or run as root")
        os.environ[MARK] = me
        argv = ["unshare", flags, sys.executable, str(Path(script).resolve()), *sys.argv[1:]]
        os.execvp("unshare", argv)  # noqa: S606 (fixed argv, the script is ours)
    if not only_loopback():
        sys.exit("bench: not in a private network namespace (interfaces besides lo); refusing")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "route", "replace", "224.0.0.0/4", "dev", "lo"], check=True)


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory (VmHWM) of process ``pid``, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")
