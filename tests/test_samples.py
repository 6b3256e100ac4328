"""The shipped samples agree with docs/install.md and with each other.

docs/install.md gives one install path: a venv in /opt/dgsm-integrations, with the docs in
its share/doc/dgsm-integrations/ and the samples in share/dgsm-integrations/<part>/. Every
systemd unit must run a command pip really installs there, name a documentation file that
really lands there, and the docs must not send operators to other places.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV = "/opt/dgsm-integrations"
UNITS = sorted(ROOT.glob("*/*.service"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _unit(path: Path) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (line.partition("=") for line in
            path.read_text().splitlines()) if k and not k.startswith(("#", "["))}


def test_there_are_units_for_every_daemon() -> None:
    assert {p.name for p in UNITS} == {"dgsm-fastagi.service", "dgsm-fs-esl.service",
                                      "esme-dgsm.service"}


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_runs_an_installed_command_and_names_an_installed_doc(unit: Path) -> None:
    fields = _unit(unit)
    command = fields["ExecStart"].split()[0]
    assert command.startswith(f"{VENV}/bin/"), command
    assert command.removeprefix(f"{VENV}/bin/") in PYPROJECT["project"]["scripts"]
    doc = fields["Documentation"]
    prefix = f"file://{VENV}/share/doc/dgsm-integrations/"
    assert doc.startswith(prefix), doc
    assert (ROOT / "docs" / doc.removeprefix(prefix)).is_file()
    data = PYPROJECT["tool"]["setuptools"]["data-files"]
    assert "docs/*.md" in data["share/doc/dgsm-integrations"]
    part = unit.parent.name
    assert f"{part}/{unit.name}" in data[f"share/dgsm-integrations/{part}"]
    assert int(fields["LimitNOFILE"]) >= 4096  # the default 1,024 is below max sessions


def test_docs_name_one_install_path() -> None:
    """No doc runs our commands from /usr/local/bin (only install.md's optional symlink)."""
    for doc in [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]:
        for line in doc.read_text().splitlines():
            assert "/usr/local/bin" not in line or "ln -s" in line, (doc.name, line)
