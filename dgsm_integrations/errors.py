"""The root of every error this project raises on purpose.

Each package adds its own branch (``mslookup.errors``, the adapters' protocol errors, the
lab's :class:`~dgsm_integrations.lab.netns.LabError`) and translates what it meets at its
boundary into one of them, so a caller that wants "anything dgsm-integrations refused"
catches :class:`DgsmError`, and one that wants a kind catches the kind. Errors that are also a
standard kind inherit it as well (a bad setting is a ``ValueError``, a lost peer an
``OSError``), so code written against the standard types keeps working.

Light on purpose: the per-call AGI script imports it.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DgsmError"]


class DgsmError(Exception):
    """Base class of every error raised by :mod:`dgsm_integrations` on purpose."""


class ConfigError(DgsmError, ValueError):
    """A setting is unknown or invalid (a file, a flag, a keyword); the message names it."""
