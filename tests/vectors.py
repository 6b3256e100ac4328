"""The byte-exact captures from a real OsmoHLR in ../shared/vectors (hex files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_CANDIDATES = [
    Path(os.environ.get("DGSM_VECTORS", "/nonexistent")),
    Path(__file__).resolve().parents[2] / "shared" / "vectors",
    Path(__file__).resolve().parents[1] / "tests" / "data" / "vectors",
]


def vectors_dir() -> Path:
    for path in _CANDIDATES:
        if path.is_dir() and any(path.glob("*.hex")):
            return path
    raise FileNotFoundError("OsmoHLR capture vectors not found")


def vector(name: str) -> bytes:
    return bytes.fromhex((vectors_dir() / f"{name}.hex").read_text().strip())


def all_vectors() -> list[str]:
    try:
        return sorted(p.stem for p in vectors_dir().glob("*.hex"))
    except FileNotFoundError:
        return []


def require_vectors() -> None:
    try:
        vectors_dir()
    except FileNotFoundError:
        pytest.fail("golden vectors missing (tests/data/vectors or ../shared/vectors)")
