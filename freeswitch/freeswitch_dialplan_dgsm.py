"""D-GSM routing for FreeSWITCH's mod_python3: a thin shim, re-imported on every call.

Install (docs/freeswitch.md): copy this file into FreeSWITCH's ``scripts`` directory, which
mod_python3 puts on Python's path itself (``fs_cli -x 'global_getvar script_dir'``):

    cp /opt/dgsm-integrations/share/dgsm-integrations/freeswitch/freeswitch_dialplan_dgsm.py \\
       "$(fs_cli -x 'global_getvar script_dir')/"
    <action application="python" data="freeswitch_dialplan_dgsm"/>
    fs_cli> python freeswitch_dialplan_dgsm 12345

The package lives in the venv of docs/install.md, ``/opt/dgsm-integrations``; this shim adds
that venv's ``site-packages`` to FreeSWITCH's embedded Python itself. Another venv: set
``DGSM_VENV=/path/to/venv`` in FreeSWITCH's environment (``systemctl edit freeswitch``:
``Environment=DGSM_VENV=...``). If the package cannot be imported, every call is hung up with
NORMAL_TEMPORARY_FAILURE and the log line says what to fix.

mod_python3 imports and *reloads* this file for every call, so it holds no state: the
logic, the settings cache and the shared mslookup resolver live in the installed package
``dgsm_integrations.freeswitch`` (see docs/freeswitch.md).
"""

import os
import site
import sys
from typing import Any

import freeswitch  # provided by mod_python3

#: The venv of docs/install.md; ``DGSM_VENV`` in FreeSWITCH's environment names another.
DEFAULT_VENV = "/opt/dgsm-integrations"
#: The cause a call gets when the package cannot be imported (as the package's cause-error).
FAILURE_CAUSE = "NORMAL_TEMPORARY_FAILURE"


def _site_packages(venv: str) -> str:
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    return os.path.join(venv, "lib", version, "site-packages")


def _add_venv() -> str:
    """Put the venv's site-packages first on sys.path (once); return the folder."""
    venv = os.environ.get("DGSM_VENV") or DEFAULT_VENV
    folder = _site_packages(venv)
    if os.path.isdir(folder) and folder not in sys.path:
        before = list(sys.path)
        site.addsitedir(folder)  # also reads the venv's .pth files (editable installs)
        added = [p for p in sys.path if p not in before]
        sys.path[:] = added + before  # the venv wins over any system-wide copy
    return folder


def _import_problem(folder: str, exc: BaseException) -> str:
    """What went wrong, and what to fix, in one line."""
    venv = os.path.dirname(os.path.dirname(os.path.dirname(folder)))
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    why = f"{type(exc).__name__}: {exc}"
    if not os.path.isdir(folder):
        lib = os.path.join(venv, "lib")
        others = sorted(n for n in os.listdir(lib) if n.startswith("python")) \
            if os.path.isdir(lib) else []
        if others:
            fix = (f"the venv {venv} was made with {', '.join(others)}, but FreeSWITCH runs "
                   f"Python {here}: make it with python{here} -m venv {venv}")
        else:
            fix = (f"{folder} does not exist: install the package there (docs/install.md: "
                   f"python3 -m venv {venv}; {venv}/bin/pip install "
                   f"/path/to/dgsm-integrations) or set DGSM_VENV=<venv> in FreeSWITCH's "
                   "environment")
    else:
        fix = (f"{folder} exists but does not provide it: {venv}/bin/pip install "
               f"/path/to/dgsm-integrations (docs/install.md), then restart FreeSWITCH")
    return f"dgsm: cannot import dgsm_integrations ({why}): {fix}"


_FOLDER = _add_venv()
try:
    from dgsm_integrations.freeswitch.dialplan import fsapi_text, handle_call
except Exception as _exc:  # the call must still end, with a line that says what to fix
    _PROBLEM: str | None = _import_problem(_FOLDER, _exc)
else:
    _PROBLEM = None


def handler(session: Any, args: Any) -> None:
    """The ``python`` dialplan application: look up the dialled MSISDN, bridge or hang up."""
    if _PROBLEM is not None:
        freeswitch.consoleLog("err", _PROBLEM + "\n")
        try:
            session.setVariable("dgsm_result", "error")
            session.setVariable("dgsm_reason", _PROBLEM[:200])
        finally:
            session.hangup(FAILURE_CAUSE)
        return
    handle_call(session, args if isinstance(args, str) else "", freeswitch.consoleLog)


def fsapi(*argv: Any) -> None:
    """The ``python`` API: ``fsapi(session or "na", stream, env, args)``; writes the result."""
    if len(argv) >= 4:
        argv[1].write(f"-ERR {_PROBLEM}\n" if _PROBLEM is not None else fsapi_text(argv[3]))
