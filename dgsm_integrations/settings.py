"""Settings as operators write them, shared by the integrations' config modules.

``key = value`` files (``#`` comments), the conversion of text values to the types a config
dataclass declares (:func:`typed_values`, with renamed keys still accepted), and
:class:`CallServerOptions`, the settings both call servers share on top of the mslookup ones
(:class:`~dgsm_integrations.mslookup.options.LookupOptions`). Light on purpose: the per-call
AGI script imports it (no asyncio).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .mslookup.options import LookupOptions

__all__ = ["LOG_LEVELS", "MAX_FILE", "CallServerOptions", "ConfigError", "convert",
           "read_config_file", "setting_text", "typed_values"]

MAX_FILE = 64 * 1024
LOG_LEVELS = ("debug", "info", "warning", "error")


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


def setting_text(value: object) -> str:
    """``value`` as a settings file writes it, the inverse of :func:`convert`: yes/no, none,
    comma-separated lists (``--check`` prints every setting so, to be read back as a file)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple | list):
        return ",".join(f"{v}" for v in value)
    return f"{value}"  # format(), not str(): a password formats as *** (esme.config.Secret)


def typed_values(kinds: Mapping[str, str], values: Mapping[str, str], *,
                 renamed: Mapping[str, str] | None = None,
                 allowed: Collection[str] | None = None,
                 parsers: Mapping[str, Callable[[str], Any]] | None = None) -> dict[str, Any]:
    """Keyword arguments for a config dataclass from text values (a file, flags).

    ``kinds``: field name -> annotation (as a string); keys are matched with ``-`` or ``_``.
    ``renamed``: old key -> its current name, still accepted with a warning (an operator's
    file must not break because we renamed a setting); ``allowed``: the only keys taken
    (others are unknown); ``parsers``: field name -> its own text-to-value function, for a
    field whose text is not its annotation's (a ValueError there is a bad value). Raises
    ConfigError naming the key.
    """
    kw: dict[str, Any] = {}
    for raw_key, text in values.items():
        key = raw_key.strip().replace("-", "_")
        if renamed and key in renamed:
            new = renamed[key]
            if any(k.strip().replace("-", "_") == new for k in values):
                raise ConfigError(f"both {key.replace('_', '-')} and {new.replace('_', '-')} "
                                  "given: keep only the second")
            import logging  # only here: the per-call AGI script imports this module
            logging.getLogger("dgsm.settings").warning(
                "setting %s is deprecated, use %s (same meaning)", key.replace("_", "-"),
                new.replace("_", "-"))
            key = new
        kind = kinds.get(key)
        if kind is None or (allowed is not None and key not in allowed):
            raise ConfigError(f"unknown setting {raw_key[:40]!r}")
        parse = parsers.get(key) if parsers else None
        if parse is None:
            kw[key] = convert(key, kind, text.strip())
            continue
        try:
            kw[key] = parse(text.strip())
        except ValueError:
            raise ConfigError(f"bad value {text[:40]!r} for {key.replace('_', '-')}") from None
    return kw


@dataclass(frozen=True, slots=True)
class CallServerOptions(LookupOptions):
    """The settings every call server (``dgsm-fastagi``, ``dgsm-fs-esl``) has, beside the
    mslookup ones: where it listens, how many calls at once, each call's deadlines, the stop.

    Each adapter's config extends it and may give ``listen_port`` / ``max_calls`` its own
    default by declaring the field again.
    """

    listen: str = "127.0.0.1"
    listen_port: int = 0
    #: one call, start to end (its first bytes, the lookup, every reply)
    call_timeout: float = 5.0
    #: a connection must send its first byte this soon, or it is closed before it is a call
    first_byte_timeout: float = 2.0
    #: calls served at once; beyond, a new one is refused (it hears EOF, it does not hang)
    max_calls: int = 1000
    #: on SIGTERM, calls in progress get this long to finish
    grace: float = 5.0
    log_level: str = "info"

    def __post_init__(self) -> None:
        LookupOptions.__post_init__(self)  # explicit: zero-arg super() fails with slots
        if not 0.1 <= self.call_timeout <= 300:
            raise ConfigError("call-timeout must be 0.1..300 s")
        if not 0.05 <= self.first_byte_timeout <= 10:
            raise ConfigError("first-byte-timeout must be 0.05..10 s")
        if self.lookup_timeout >= self.call_timeout:
            raise ConfigError(f"call-timeout ({self.call_timeout} s) must be longer than the "
                              f"lookup ({self.lookup_timeout} s)")
        if not 0 <= self.listen_port <= 65535:
            raise ConfigError("listen-port must be 0..65535 (0: any free port)")
        if not 1 <= self.max_calls <= 100_000:
            raise ConfigError("max-calls must be 1..100000")
        if not 0 <= self.grace <= 600:
            raise ConfigError("grace must be 0..600 s")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ConfigError("log-level must be debug, info, warning or error")
