"""D-GSM routing for FreeSWITCH's mod_python3: a thin shim, re-imported on every call.

    export PYTHONPATH=/opt/dgsm-integrations/freeswitch   (before starting FreeSWITCH)
    <action application="python" data="freeswitch_dialplan_dgsm"/>
    fs_cli> python freeswitch_dialplan_dgsm 12345

mod_python3 imports and *reloads* this file for every call, so it holds no state: the
logic, the settings cache and the shared mslookup resolver live in the installed package
``dgsm_integrations.freeswitch`` (see docs/freeswitch.md).
"""

from typing import Any

import freeswitch  # provided by mod_python3
from dgsm_integrations.freeswitch.dialplan import fsapi_text, handle_call


def handler(session: Any, args: Any) -> None:
    """The ``python`` dialplan application: look up the dialled MSISDN, bridge or hang up."""
    handle_call(session, args if isinstance(args, str) else "", freeswitch.consoleLog)


def fsapi(*argv: Any) -> None:
    """The ``python`` API: ``fsapi(session or "na", stream, env, args)``; writes the result."""
    if len(argv) >= 4:
        argv[1].write(fsapi_text(argv[3]))
