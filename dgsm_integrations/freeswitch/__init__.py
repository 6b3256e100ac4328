"""FreeSWITCH integration: route a dialled MSISDN to the subscriber's current D-GSM site.

Two ways, same decisions and channel variables (:mod:`.routing`, ``docs/freeswitch.md``):

- the mod_python3 dialplan module ``freeswitch/freeswitch_dialplan_dgsm.py``, a thin shim
  over :mod:`.dialplan` (blocking, shared :class:`~dgsm_integrations.mslookup.Resolver`);
- ``dgsm-fs-esl``, an outbound event-socket server (:mod:`.server`, asyncio) on the
  sans-I/O ESL codec :mod:`.esl`.

:mod:`.config` holds the settings and their validation, :mod:`.causes` FreeSWITCH's hangup
cause names. This ``__init__`` imports nothing, so each way pays only for what it uses.
"""

__all__: list[str] = []
