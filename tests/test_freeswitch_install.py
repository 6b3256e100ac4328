"""The FreeSWITCH part installed the one documented way (docs/install.md): a venv prefix.

The package is really installed (``pip install --prefix``, the layout of a venv: ``bin/``,
``lib/pythonX.Y/site-packages``, ``share/``) and then checked the way an operator meets it:
the systemd unit's command and documentation exist there, the docs call the commands by that
path, and the mod_python3 shim, copied from there into a scripts folder as the docs say, finds
the package in the venv by itself (``DGSM_VENV``, default ``/opt/dgsm-integrations``) under a
Python that has nothing else on its path -- or, when it cannot, hangs the call up and logs
what to fix (issue 12, items 3 and 5).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # installs the package into a venv, runs its shim and unit

ROOT = Path(__file__).resolve().parent.parent
VENV = "/opt/dgsm-integrations"
SHARE = "share/dgsm-integrations/freeswitch"


@pytest.fixture(scope="module")
def prefix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    where = tmp_path_factory.mktemp("venv")
    build = tmp_path_factory.mktemp("build")
    src = build / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", "*.egg-info", "build", "__pycache__", ".pytest_cache", ".mypy_cache",
        ".ruff_cache"))
    # --ignore-installed: with --prefix alone, pip first uninstalls the copy in the running
    # environment (the suite's own .venv), taking its console scripts with it
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--ignore-installed", "--no-deps",
         "--no-build-isolation", "--no-index", "--disable-pip-version-check",
         "--prefix", str(where), str(src)],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield where


def _unit_paths(unit: Path) -> tuple[str, str]:
    text = unit.read_text()
    exec_start = re.search(r"^ExecStart=(\S+)", text, re.M)
    doc = re.search(r"^Documentation=file://(\S+)", text, re.M)
    assert exec_start and doc, unit
    return exec_start.group(1), doc.group(1)


def test_the_unit_runs_and_documents_from_the_venv(prefix: Path) -> None:
    for unit in (ROOT / "freeswitch" / "dgsm-fs-esl.service",
                 prefix / SHARE / "dgsm-fs-esl.service"):
        command, doc = _unit_paths(unit)
        assert command == f"{VENV}/bin/dgsm-fs-esl"
        assert doc == f"{VENV}/share/doc/dgsm-integrations/freeswitch.md"
        installed = prefix / Path(command).relative_to(VENV)
        assert installed.is_file() and os.access(installed, os.X_OK)
        assert (prefix / Path(doc).relative_to(VENV)).is_file()
    for name in ("freeswitch_dialplan_dgsm.py", "freeswitch.conf", "dialplan/public.xml"):
        assert (prefix / SHARE / name).read_bytes() == (ROOT / "freeswitch" / name).read_bytes()


def test_installing_into_a_prefix_leaves_this_environment_installed(prefix: Path) -> None:
    """The install above must not touch the environment running the tests: once it
    uninstalled .venv's dgsm-integrations, and the next command needing a console script
    (the FreeSWITCH tier, the demo) found none."""
    out = subprocess.run(  # -I: not the checkout's own egg-info, which the cwd would find
        [sys.executable, "-I", "-c", "import importlib.metadata as m; "
         "print(m.distribution('dgsm-integrations').version)"],
        capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0 and out.stdout.strip(), out.stderr


def test_the_documented_include_path_exists_in_the_install(prefix: Path) -> None:
    text = (ROOT / "freeswitch" / "dialplan" / "public.xml").read_text()
    paths = set(re.findall(r'cmd="include" data="([^"]+)"', text))
    paths |= set(re.findall(r'cmd="include" data="([^"]+)"',
                            (ROOT / "docs" / "freeswitch.md").read_text()))
    assert paths == {f"{VENV}/{SHARE}/dialplan/public.xml"}
    assert (prefix / SHARE / "dialplan" / "public.xml").is_file()


def test_the_docs_call_every_command_by_its_venv_path() -> None:
    for doc in ("freeswitch.md", "install.md"):
        text = (ROOT / "docs" / doc).read_text()
        blocks = re.findall(r"^ *```[a-z]*\n(.*?)^ *```", text, re.S | re.M)
        assert blocks, doc
        for block in blocks:
            for line in block.splitlines():
                words = line.replace("sudo ", "").split()
                # a command is the first word; "systemctl stop dgsm-fs-esl" names the unit
                assert not words or not re.fullmatch(r"dgsm-[a-z-]+|esme_dgsm", words[0]), \
                    f"{doc}: {line.strip()!r} calls a command not on PATH"


_DRIVER = r"""
import json, sys, types
log = []
fs = types.ModuleType("freeswitch")
fs.consoleLog = lambda level, text: log.append([level, text])
sys.modules["freeswitch"] = fs

class Session:
    def __init__(self, dest): self.vars = {"destination_number": dest}; self.calls = []
    def getVariable(self, name): return self.vars.get(name)
    def setVariable(self, name, value): self.vars[name] = value
    def execute(self, app, data): self.calls.append(["execute", app, data])
    def hangup(self, cause): self.calls.append(["hangup", cause])
    def ready(self): return True

class Stream:
    def __init__(self): self.text = ""
    def write(self, text): self.text += text

import freeswitch_dialplan_dgsm as shim
session = Session("10a1")
shim.handler(session, "")
stream = Stream()
shim.fsapi("na", stream, None, "")
print(json.dumps({"calls": session.calls, "log": log, "api": stream.text,
                  "result": session.vars.get("dgsm_result"),
                  "has_package": "dgsm_integrations" in sys.modules}))
"""


def _run_shim(prefix: Path, tmp_path: Path, venv: str | None) -> dict[str, object]:
    """The installed shim in a scripts folder, under a bare Python (as FreeSWITCH's)."""
    scripts = tmp_path / "scripts"
    scripts.mkdir(exist_ok=True)
    shutil.copy(prefix / SHARE / "freeswitch_dialplan_dgsm.py", scripts)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DGSM_"))}
    env["PYTHONPATH"] = str(scripts)  # what mod_python3 sets: its scripts directory
    env["DGSM_FS_CONFIG"] = str(tmp_path / "freeswitch.conf")
    (tmp_path / "freeswitch.conf").write_text("interface = 127.0.0.1\n")
    if venv is not None:
        env["DGSM_VENV"] = venv
    base = getattr(sys, "_base_executable", sys.executable)
    proc = subprocess.run([base, "-c", _DRIVER], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out: dict[str, object] = json.loads(proc.stdout.splitlines()[-1])
    return out


def test_the_shim_finds_the_package_in_the_venv(prefix: Path, tmp_path: Path) -> None:
    (tmp_path / "none").mkdir()
    bare = _run_shim(prefix, tmp_path / "none", str(tmp_path / "none" / "venv"))
    assert bare["has_package"] is False  # this Python cannot see the package by itself
    out = _run_shim(prefix, tmp_path, str(prefix))
    assert out["has_package"] is True
    assert out["calls"] == [["hangup", "INVALID_NUMBER_FORMAT"]]  # routed by the package
    assert out["result"] == "invalid"
    assert str(out["api"]).startswith("usage: python freeswitch_dialplan_dgsm")


def test_without_the_venv_every_call_ends_and_says_what_to_fix(prefix: Path,
                                                               tmp_path: Path) -> None:
    missing = tmp_path / "no-venv"
    out = _run_shim(prefix, tmp_path, str(missing))
    assert out["calls"] == [["hangup", "NORMAL_TEMPORARY_FAILURE"]]
    assert out["result"] == "error"
    entries = out["log"]
    assert isinstance(entries, list) and len(entries) == 1
    level, line = str(entries[0][0]), str(entries[0][1])
    assert level == "err"
    assert "cannot import dgsm_integrations (ModuleNotFoundError" in line
    assert f"{missing}/lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages " \
           "does not exist: install the package there" in line
    assert "DGSM_VENV" in line
    assert str(out["api"]).startswith("-ERR dgsm: cannot import dgsm_integrations")


def test_a_venv_of_another_python_is_named(prefix: Path, tmp_path: Path) -> None:
    other = tmp_path / "old-venv"
    (other / "lib" / "python3.99" / "site-packages").mkdir(parents=True)
    out = _run_shim(prefix, tmp_path, str(other))
    assert out["calls"] == [["hangup", "NORMAL_TEMPORARY_FAILURE"]]
    entries = out["log"]
    assert isinstance(entries, list) and len(entries) == 1
    line = str(entries[0][1])
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert f"was made with python3.99, but FreeSWITCH runs Python {here}" in line


def test_the_shipped_dialplan_ends_every_path_and_matches_the_defaults() -> None:
    """Both ways in the one extension, chosen by dgsm_way; the socket action names the ESL
    server's default address; every path ends with an explicit hangup fallback."""
    from xml.etree import ElementTree

    from dgsm_integrations.freeswitch.config import Config

    # our own shipped file, not network input
    root = ElementTree.parse(ROOT / "freeswitch" / "dialplan" / "public.xml").getroot()  # noqa: S314
    assert root.tag == "include"
    [ext] = root.findall("extension")
    first, way = ext.findall("condition")
    assert (first.get("field"), first.get("expression")) == ("destination_number", "^.+$")
    assert (way.get("field"), way.get("expression")) == ("${dgsm_way}", "^python$")
    actions = [(a.tag, a.get("application"), a.get("data")) for a in way]
    defaults = Config()
    assert actions == [
        ("action", "python", "freeswitch_dialplan_dgsm"),
        ("action", "hangup", defaults.cause_error),
        ("anti-action", "socket", f"{defaults.listen}:{defaults.listen_port} async full"),
        ("anti-action", "hangup", defaults.cause_error),
    ]
