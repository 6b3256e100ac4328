"""A real, installed FreeSWITCH as a test peer (the opt-in tier: ``DGSM_FREESWITCH=<prefix>``).

FreeSWITCH has no Debian package, so CI cannot have it: this tier runs only when
``DGSM_FREESWITCH`` names an install prefix (``<prefix>/bin/freeswitch``, modules in
``<prefix>/mod`` or ``<prefix>/lib/freeswitch/mod``). :class:`FreeSwitch` writes a minimal
configuration of its own into a work folder (nothing of the installation's ``conf`` is
read), with the shipped ``freeswitch/dialplan/public.xml`` included as docs/freeswitch.md says,
starts ``freeswitch -nf -nc -nonat`` with every folder in the work folder, waits (bounded)
until its inbound event socket answers, and stops it on exit (``fsctl shutdown``, then
SIGTERM, then SIGKILL, each bounded).

Only run it inside a private network namespace (``bash .ci/test`` makes one): every socket
it opens is on 127.0.0.1.

:class:`Inbound` is a small client of FreeSWITCH's *inbound* event socket (``auth``, ``api``)
built on our ESL codec, enough to originate loopback calls and read variables.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from xml.sax.saxutils import quoteattr

from dgsm_integrations.freeswitch.esl import Message, Parser, command

__all__ = ["ENV", "FreeSwitch", "FreeSwitchError", "Inbound", "originate_cause",
           "prefix_from_env"]

ENV = "DGSM_FREESWITCH"
ROOT = Path(__file__).resolve().parents[2]
PUBLIC_XML = ROOT / "freeswitch" / "dialplan" / "public.xml"
SHIM = ROOT / "freeswitch" / "freeswitch_dialplan_dgsm.py"
PASSWORD = "ClueCon"  # noqa: S105 (mod_event_socket's default; 127.0.0.1 only)
MODULES = ("mod_console", "mod_logfile", "mod_event_socket", "mod_sofia", "mod_loopback",
           "mod_commands", "mod_dptools", "mod_dialplan_xml", "mod_python3",
           "mod_tone_stream", "mod_sndfile", "mod_native_file")


class FreeSwitchError(Exception):
    """FreeSWITCH could not be started or refused something; carries the log's tail."""


def prefix_from_env() -> Path | None:
    """The install prefix named by ``DGSM_FREESWITCH``, or None if the variable is unset."""
    value = os.environ.get(ENV, "").strip()
    return Path(value) if value else None


def _module_dir(prefix: Path) -> Path:
    for candidate in (prefix / "mod", prefix / "lib" / "freeswitch" / "mod"):
        if (candidate / "mod_sofia.so").is_file():
            return candidate
    raise FreeSwitchError(f"{ENV}={prefix}: no mod_sofia.so in {prefix}/mod or "
                          f"{prefix}/lib/freeswitch/mod; point {ENV} at FreeSWITCH's install "
                          "prefix (the folder with bin/freeswitch)")


class FreeSwitch:
    """One FreeSWITCH process with the configuration this test tier needs.

    ``public_context`` is the body of the ``public`` dialplan context (default: the shipped
    sample included first, then a copy of the stock context's ``public_extensions``, which is
    where operators' 10xx numbers went astray, issue 12 item 4). ``environment`` is added to
    FreeSWITCH's environment (``DGSM_FS_CONFIG``, ``DGSM_VENV``). ``sip_port``: the
    ``external`` sofia profile on 127.0.0.1; ``esl_port``: the inbound event socket.
    """

    def __init__(self, prefix: Path, workdir: Path, *, environment: dict[str, str],
                 sip_port: int = 5080, esl_port: int = 8021,
                 public_context: str | None = None, start_timeout: float = 30.0) -> None:
        self.prefix = prefix
        self.binary = prefix / "bin" / "freeswitch"
        if not os.access(self.binary, os.X_OK):
            raise FreeSwitchError(f"{ENV}={prefix}: {self.binary} is not an executable; point "
                                  f"{ENV} at FreeSWITCH's install prefix")
        self.mod_dir = _module_dir(prefix)
        self.workdir = workdir
        self.environment = environment
        self.sip_port = sip_port
        self.esl_port = esl_port
        self.public_context = public_context if public_context is not None else \
            default_public_context()
        self.start_timeout = start_timeout
        self.log_path = workdir / "log" / "freeswitch.log"
        self.stdout_path = workdir / "stdout.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- configuration ------------------------------------------------------------------

    def config_text(self) -> str:
        modules = "\n".join(f'        <load module="{m}"/>' for m in MODULES)
        return f"""<?xml version="1.0"?>
<!-- written by tests/peers/freeswitch.py: the least FreeSWITCH needs for D-GSM routing -->
<document type="freeswitch/xml">
  <X-PRE-PROCESS cmd="set" data="domain=127.0.0.1"/>
  <section name="configuration">
    <configuration name="switch.conf">
      <settings>
        <param name="max-sessions" value="2000"/>
        <param name="sessions-per-second" value="2000"/>
        <param name="loglevel" value="debug"/>
        <param name="rtp-start-port" value="20000"/>
        <param name="rtp-end-port" value="29999"/>
      </settings>
    </configuration>
    <configuration name="modules.conf">
      <modules>
{modules}
      </modules>
    </configuration>
    <configuration name="post_load_modules.conf"><modules/></configuration>
    <configuration name="console.conf">
      <mappings><map name="all" value="console,debug,info,notice,warning,err,crit,alert"/>
      </mappings>
      <settings><param name="colorize" value="false"/><param name="loglevel" value="info"/>
      </settings>
    </configuration>
    <configuration name="logfile.conf">
      <settings><param name="rotate-on-hup" value="true"/></settings>
      <profiles><profile name="default">
        <settings><param name="logfile" value={quoteattr(str(self.log_path))}/>
          <param name="rollover" value="0"/></settings>
        <mappings><map name="all" value="debug,info,notice,warning,err,crit,alert"/></mappings>
      </profile></profiles>
    </configuration>
    <configuration name="event_socket.conf">
      <settings>
        <param name="listen-ip" value="127.0.0.1"/>
        <param name="listen-port" value="{self.esl_port}"/>
        <param name="password" value="{PASSWORD}"/>
      </settings>
    </configuration>
    <configuration name="python.conf"><settings/></configuration>
    <configuration name="sofia.conf">
      <global_settings><param name="log-level" value="0"/></global_settings>
      <profiles>
        <profile name="external">
          <settings>
            <param name="sip-ip" value="127.0.0.1"/>
            <param name="rtp-ip" value="127.0.0.1"/>
            <param name="ext-sip-ip" value="127.0.0.1"/>
            <param name="ext-rtp-ip" value="127.0.0.1"/>
            <param name="sip-port" value="{self.sip_port}"/>
            <param name="context" value="public"/>
            <param name="dialplan" value="XML"/>
            <param name="auth-calls" value="false"/>
            <param name="inbound-codec-prefs" value="PCMU,PCMA"/>
            <param name="outbound-codec-prefs" value="PCMU,PCMA"/>
            <param name="manage-presence" value="false"/>
            <param name="apply-nat-acl" value=""/>
            <param name="dtmf-type" value="rfc2833"/>
            <param name="rtp-timeout-sec" value="0"/>
          </settings>
        </profile>
      </profiles>
    </configuration>
  </section>
  <section name="dialplan">
    <context name="public">
{self.public_context}
    </context>
    <context name="default">
      <extension name="default-reached">
        <condition field="destination_number" expression="^.*$">
          <action application="log" data="WARNING dgsm-test: call reached context default"/>
          <action application="hangup" data="CALL_REJECTED"/>
        </condition>
      </extension>
    </context>
  </section>
</document>
"""

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self._proc is not None:
            raise FreeSwitchError("already started")
        w = self.workdir
        for sub in ("conf", "log", "db", "run", "scripts", "tmp", "storage", "cache",
                    "recordings", "sounds", "grammar", "certs"):
            (w / sub).mkdir(parents=True, exist_ok=True)
        (w / "conf" / "freeswitch.xml").write_text(self.config_text())
        _make_certs(w / "certs")
        shutil.copy(SHIM, w / "scripts" / SHIM.name)  # as docs/freeswitch.md says
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DGSM_"))}
        env.update(self.environment)
        argv = [str(self.binary), "-nf", "-nc", "-nonat", "-np",
                "-base", str(w), "-conf", str(w / "conf"), "-log", str(w / "log"),
                "-db", str(w / "db"), "-run", str(w / "run"), "-mod", str(self.mod_dir),
                "-scripts", str(w / "scripts"), "-temp", str(w / "tmp"),
                "-storage", str(w / "storage"), "-cache", str(w / "cache"),
                "-recordings", str(w / "recordings"), "-sounds", str(w / "sounds"),
                "-grammar", str(w / "grammar"), "-certs", str(w / "certs")]
        with self.stdout_path.open("wb") as out:
            self._proc = subprocess.Popen(argv, cwd=w, env=env, stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise FreeSwitchError(f"freeswitch exited with {self._proc.returncode} at "
                                      f"start-up:\n{self.log_tail()}")
            try:
                reply = asyncio.run(self._api_once("sofia status"))
            except OSError:
                time.sleep(0.1)  # polling a process we cannot await: bounded by deadline
                continue
            if re.search(r"external\s+profile\s+\S+\s+RUNNING", reply):
                return
            time.sleep(0.1)
        raise FreeSwitchError(f"freeswitch not ready within {self.start_timeout:.0f} s "
                              f"(event socket 127.0.0.1:{self.esl_port}, sofia profile "
                              f"external):\n{self.log_tail()}")

    async def _api_once(self, cmd: str) -> str:
        async with Inbound(self.esl_port) as esl:
            return await esl.api(cmd)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(Exception):
            asyncio.run(asyncio.wait_for(self._api_once("fsctl shutdown"), 5))
        for sig, wait in ((None, 10.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if sig is not None:
                proc.send_signal(sig)
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> FreeSwitch:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- what it said -------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_text()
        with contextlib.suppress(OSError):
            text += self.stdout_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def dgsm_lines(self) -> list[str]:
        """The lines our mod_python3 module logged (``dgsm: ...``)."""
        return [line[line.index("dgsm:"):] for line in self.log_text().splitlines()
                if "dgsm:" in line]


def _make_certs(folder: Path) -> None:
    """FreeSWITCH makes ``wss.pem`` and ``dtls-srtp.pem`` at start-up when they are missing,
    with 4096-bit RSA keys: 10-30 s of CPU here. A P-256 key and certificate made with
    ``openssl`` do the same job in milliseconds (FreeSWITCH makes them itself without it)."""
    openssl = shutil.which("openssl")
    if openssl is None or (folder / "wss.pem").exists():
        return
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-subj", "/CN=dgsm-test", "-days", "30"],
                   check=True, capture_output=True, timeout=30)
    pem = cert.read_bytes() + key.read_bytes()
    for name in ("wss.pem", "dtls-srtp.pem"):
        (folder / name).write_bytes(pem)


def default_public_context() -> str:
    """The shipped sample first (as docs/freeswitch.md says), then the stock context's
    ``public_extensions`` (``^(10[01][0-9])$`` to the default context), which must not get
    MSISDNs such as 1001 first."""
    return f"""      <X-PRE-PROCESS cmd="include" data="{PUBLIC_XML}"/>
      <extension name="public_extensions">
        <condition field="destination_number" expression="^(10[01][0-9])$">
          <action application="transfer" data="$1 XML default"/>
        </condition>
      </extension>"""


class Inbound:
    """``async with Inbound(port) as esl: await esl.api("status")`` (inbound event socket)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._parser = Parser()
        self._messages: list[Message] = []
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Inbound:
        self._reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), self.timeout)
        self._writer = writer
        try:
            await self._next("auth/request")
            writer.write(command(f"auth {PASSWORD}"))
            reply = await self._next("command/reply")
            if not reply.ok:
                raise FreeSwitchError(f"event socket refused auth: {reply.reply_text}")
        except BaseException:
            writer.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()

    async def _next(self, content_type: str) -> Message:
        assert self._reader is not None
        async with asyncio.timeout(self.timeout):
            while True:
                while self._messages:
                    message = self._messages.pop(0)
                    if message.content_type == content_type:
                        return message
                data = await self._reader.read(65536)
                if not data:
                    raise OSError("FreeSWITCH closed the event socket")
                self._messages += self._parser.feed(data)

    async def api(self, cmd: str) -> str:
        """``api <cmd>``: FreeSWITCH's answer text (``+OK ...`` / ``-ERR ...``)."""
        if "\n" in cmd:
            raise ValueError("one line only")
        assert self._writer is not None
        self._writer.write(command(f"api {cmd}"))
        return (await self._next("api/response")).body.decode(errors="replace")


_CAUSE = re.compile(r"-ERR ([A-Z_]+)")


def originate_cause(reply: str) -> str:
    """``+OK <uuid>`` -> ``ANSWERED``; ``-ERR UNALLOCATED_NUMBER`` -> the cause name."""
    if reply.startswith("+OK"):
        return "ANSWERED"
    m = _CAUSE.match(reply.strip())
    return m.group(1) if m else reply.strip()
