"""How often OsmoHLR drops a roamer's first Location Updating, per Osmocom generation.

A village's OsmoHLR that does not know an IMSI defers the LU, finds the home HLR by mslookup
(``gsup.hlr``), opens a GSUP link to it and should then forward the LU. Often it never does:
the deferred request is lost while that link is still coming up (its IPA identity exchange),
and only a repeated LU goes through. A phone repeats an LU that got no answer, so operators see
a slow first attach of a roamer; ``Village.attach`` repeats it like a phone.

This measures it in the village lab (dgsm_integrations/lab), for each generation present
(Debian 12's osmo-hlr and the Debian sid root's, see lab/distro.py): labs of eight villages,
home A; the first LU of a fresh IMSI at each of the seven others (each over a new GSUP link
to A) with no repeat and a 2 s answer timeout; a dropped one is repeated once. Prints the
share dropped with a 95% (Wilson) interval, and whether every repeat went through.

``--labs N`` labs per generation (default 3: 21 first LUs); the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import enter_private_netns
from loss import wilson

from dgsm_integrations.lab.distro import osmocom_distros
from dgsm_integrations.lab.gsup import GsupTimeout
from dgsm_integrations.lab.network import Lab

NAMES = ["A", "B", "C", "D", "E", "F", "G", "H"]


def measure(labs: int, distro_index: int) -> dict[str, object]:
    distro = osmocom_distros()[distro_index]
    dropped = first = 0
    repeats_ok = repeats = 0
    for n in range(labs):
        with Lab(NAMES, distro=distro) as lab:
            for i, at in enumerate(NAMES[1:]):
                imsi = f"9017000000{n:02d}{i:03d}"
                lab["A"].provision(imsi, f"7{n:02d}{i:03d}")
                first += 1
                try:
                    lab[at].attach(imsi, timeout=2.0, attempts=1)
                    continue
                except GsupTimeout:
                    dropped += 1
                repeats += 1
                try:
                    lab[at].attach(imsi, timeout=2.0, attempts=1)
                    repeats_ok += 1
                except GsupTimeout:
                    pass
    lo, hi = wilson(dropped, first)
    return {"osmo_hlr": distro.label("osmo-hlr"), "first_lus": first, "dropped": dropped,
            "dropped_share": round(dropped / first, 3), "ci95": [round(lo, 3), round(hi, 3)],
            "repeats": repeats, "repeats_answered": repeats_ok}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labs", type=int, default=3, help="labs per generation (7 LUs each)")
    args = parser.parse_args()
    enter_private_netns(__file__)
    figures = []
    for index, distro in enumerate(osmocom_distros()):
        row = measure(args.labs, index)
        figures.append(row)
        print(f"{row['osmo_hlr']}: {row['dropped']} of {row['first_lus']} first roaming LUs "
              f"dropped ({100 * float(str(row['dropped_share'])):.0f}%, 95% CI "
              f"{row['ci95']}); repeats answered {row['repeats_answered']}/{row['repeats']}"
              f"  [{distro.name}]", flush=True)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
