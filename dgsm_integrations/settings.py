"""Settings as operators write them, shared by the integrations' config modules.

``key = value`` files (``#`` comments), and the conversion of one text value to the type a
config dataclass field declares. Light on purpose: the per-call AGI script imports it.
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigError

__all__ = ["MAX_FILE", "ConfigError", "convert", "read_config_file"]

MAX_FILE = 64 * 1024


def read_config_file(path: str) -> dict[str, str]:
    """Read ``key = value`` lines; raises ConfigError (OSError if it cannot be read)."""
    with open(path, encoding="utf-8") as f:
        text = f.read(MAX_FILE + 1)
    if len(text) > MAX_FILE:
        raise ConfigError(f"{path}: larger than {MAX_FILE} bytes")
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{path}:{number}: need 'key = value'")
        values[key.strip()] = value.strip()
    return values


def convert(key: str, kind: str, text: str) -> Any:
    """``text`` as the field type ``kind`` (its annotation as a string); ConfigError if not.

    bool: 1/yes/true/on, 0/no/false/off; int: decimal; float: finite; ``X | None``: empty or
    ``none`` is None; ``tuple[str, ...] | None``: comma separated, empty is None.
    """
    try:
        if kind == "bool":
            if text.lower() in ("1", "yes", "true", "on"):
                return True
            if text.lower() in ("0", "no", "false", "off"):
                return False
            raise ValueError(text)
        if kind == "int":
            return int(text, 10)
        if kind == "float":
            value = float(text)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(text)
            return value
        if kind in ("float | None", "int | None"):
            if text.lower() in ("", "none"):
                return None
            return convert(key, kind.split(" ")[0], text)
        if kind == "str | None":
            return None if text.lower() in ("", "none") else text
        if kind == "tuple[str, ...] | None":
            items = tuple(t.strip() for t in text.split(",") if t.strip())
            return items or None
        return text
    except ValueError:
        raise ConfigError(f"bad value {text[:40]!r} for {key.replace('_', '-')}") from None
