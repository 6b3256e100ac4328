"""Asterisk integration: route a dialled MSISDN to the subscriber's current D-GSM site.

Two ways, same variables (see :mod:`.routing` and ``docs/asterisk.md``):

- ``asterisk/dgsm-agi``, a local AGI script (:mod:`.script`, one lookup per process on the
  blocking driver :mod:`dgsm_integrations.mslookup.blocking`, no asyncio on its path);
- ``dgsm-fastagi``, a FastAGI server sharing one resolver across calls (:mod:`.fastagi`).

:mod:`.agi` is the sans-I/O AGI codec both use. This ``__init__`` imports nothing, so that
the per-call script pays only for what it uses.
"""

__all__: list[str] = []
