"""The unit tests again, with the next Debian's Python (sid's, 3.14 today).

.ci/bootstrap.sh installs this checkout, with its tests, into a venv in the Debian sid root;
here pytest runs a set of the suite's own modules there: the codecs, the resolver on
loopback, the FastAGI, ESL and ESME servers against their peers. Kept out: tests that need
programs the root does not have (``ip`` for IPv6 veth pairs, osmo-* on the host's PATH).
Found so far: Python 3.13+ prints IPv4-mapped IPv6 addresses dotted, which dnslib cannot parse
(docs/dependencies.md).
"""

from __future__ import annotations

import subprocess

import pytest

from .peers import require_sid_root

# the suite again under Debian sid's Python
pytestmark = pytest.mark.slow

MODULES = ["test_wire.py", "test_query.py", "test_selection.py", "test_asterisk_agi.py",
           "test_resolver.py", "test_asterisk_fastagi.py", "test_freeswitch_esl.py",
           "test_esme.py", "test_esme_store.py", "test_engine.py", "test_options.py",
           "test_callserver.py", "test_esme_routing.py", "test_esme_forwarder.py"]


@pytest.mark.timeout(600)
def test_unit_tests_pass_with_the_next_debians_python() -> None:
    root = require_sid_root("python3")
    venv, src = root.project_venv, root.project_source
    version = subprocess.run(root.argv([f"{venv}/bin/python", "-c",
                                        "import sys; print(*sys.version_info[:2])"]),
                             capture_output=True, text=True, timeout=60, check=True)
    major, minor = map(int, version.stdout.split())
    assert (major, minor) >= (3, 13), version.stdout  # newer than Debian 12's 3.11
    run = subprocess.run(root.argv([
        "sh", "-c", f'cd {src} && exec {venv}/bin/python -m pytest -q -p no:cacheprovider '
        f'-k "not ipv6_multicast_over_veth" ' + " ".join(f"tests/{m}" for m in MODULES)]),
        capture_output=True, text=True, timeout=580, check=False)
    tail = "\n".join(run.stdout.splitlines()[-25:])
    assert run.returncode == 0, f"Python {major}.{minor} in the sid root:\n{tail}"
    assert " passed" in run.stdout.splitlines()[-1], tail
