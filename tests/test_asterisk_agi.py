"""The sans-I/O AGI codec, the variable mapping and the settings (no network)."""

from __future__ import annotations

import pytest

from dgsm_integrations.asterisk.agi import (
    MAX_LINE,
    AgiProtocolError,
    EnvParser,
    Hangup,
    Reply,
    ReplyParser,
    quote,
    set_variable,
)
from dgsm_integrations.asterisk.config import Config, ConfigError, read_config_file
from dgsm_integrations.asterisk.routing import Routing, log_text, parse_extension
from dgsm_integrations.lab.agi_peer import USAGE_520, env_block, parse_args
from dgsm_integrations.mslookup import Endpoint, Outcome, Query, Result

# -- environment block -------------------------------------------------------------------


def test_env_block_parsed_with_args_and_rest() -> None:
    raw = env_block(["1001"], network_script="dgsm?service=sip.voice")
    p = EnvParser()
    # byte by byte: a peer may send it in any fragments
    env = None
    for i in range(len(raw)):
        env = p.feed(raw[i:i + 1])
    assert env is not None
    assert env.args == ("1001",)
    assert env.network_script == "dgsm?service=sip.voice"
    assert env.get("accountcode") == ""
    assert p.rest == b""


def test_env_rest_kept_for_reply_parser() -> None:
    p = EnvParser()
    env = p.feed(env_block(["1"]) + b"HANGUP\n")
    assert env is not None and p.rest == b"HANGUP\n"


@pytest.mark.parametrize("raw, why", [
    (b"agi_request: x\nnot an env line\n\n", "not an AGI environment line"),
    (b"agi_channel: x\n\n", "without agi_request"),
    (b"agi_request: x\nagi_request: y\n\n", "given twice"),
    (b"agi_request: x\nagi_arg_2: 5\n\n", "out of order"),
    (b"agi_request: x\n" + b"agi_x: " + b"9" * MAX_LINE + b"\n\n", "longer than"),
    (b"agi_request: x\n" + b"".join(b"agi_v%d: 1\n" % i for i in range(300)) + b"\n",
     "longer than"),
    (b"agi_request: a\0b\n\n", "NUL"),
])
def test_env_block_rejects(raw: bytes, why: str) -> None:
    with pytest.raises(AgiProtocolError, match=why):
        EnvParser().feed(raw)


def test_env_eof_before_blank_line_is_an_error() -> None:
    p = EnvParser()
    assert p.feed(b"agi_request: x\nagi_channel: y\n") is None
    with pytest.raises(AgiProtocolError, match="before the end"):
        p.eof()


def test_unterminated_line_is_bounded() -> None:
    p = EnvParser()
    with pytest.raises(AgiProtocolError, match="longer than"):
        p.feed(b"agi_request: " + b"x" * (MAX_LINE + 10))


# -- replies -----------------------------------------------------------------------------


@pytest.mark.parametrize("raw, expected", [
    (b"200 result=1\n", [Reply(200, "1", None, None, "200 result=1", ("200 result=1",))]),
    (b"200 result=1 (testvariable)\n",
     [Reply(200, "1", "testvariable", None, "200 result=1 (testvariable)",
            ("200 result=1 (testvariable)",))]),
    (b"200 result= (timeout)\n",
     [Reply(200, "", "timeout", None, "200 result= (timeout)", ("200 result= (timeout)",))]),
    (b"200 result=0 endpos=1234\r\n",
     [Reply(200, "0", None, "endpos=1234", "200 result=0 endpos=1234",
            ("200 result=0 endpos=1234",))]),
    (b"100 result=0 Trying...\n200 result=1\n",
     [Reply(200, "1", None, None, "200 result=1", ("200 result=1",))]),
    (b"510 Invalid or unknown command\n",
     [Reply(510, text="510 Invalid or unknown command",
            lines=("510 Invalid or unknown command",))]),
    (b"HANGUP\n", [Hangup()]),
])
def test_replies(raw: bytes, expected: list[object]) -> None:
    assert ReplyParser().feed(raw) == expected


def test_511_is_dead_channel() -> None:
    (reply,) = ReplyParser().feed(b"511 Command Not Permitted on a dead channel or intercept "
                                  b"routine\n")
    assert isinstance(reply, Reply) and reply.dead_channel and not reply.ok


def test_multiline_520_read_to_its_end_even_with_reply_lookalikes() -> None:
    p = ReplyParser()
    events = p.feed(USAGE_520[:40])
    assert events == [] and p.in_reply
    events = p.feed(USAGE_520[40:] + b"200 result=1\n")
    assert len(events) == 2
    usage, nxt = events
    assert isinstance(usage, Reply) and usage.code == 520 and len(usage.lines) == 5
    assert "200 result=1 (testvariable)" in usage.text
    assert isinstance(nxt, Reply) and nxt.ok and not p.in_reply


def test_hangup_between_lines_is_its_own_event() -> None:
    events = ReplyParser().feed(b"HANGUP\n200 result=1\n")
    assert events[0] == Hangup() and isinstance(events[1], Reply) and events[1].ok


@pytest.mark.parametrize("raw", [
    b"hello world\n", b"200 resulting\n", b"999 what\n", b"300 result=1\n", b"200-x\n",
    b"HANGUP now\n", b"\n", b"x" * (MAX_LINE + 2) + b"\n",
])
def test_garbage_is_a_protocol_error(raw: bytes) -> None:
    with pytest.raises(AgiProtocolError):
        ReplyParser().feed(raw)


def test_endless_520_is_bounded() -> None:
    p = ReplyParser()
    with pytest.raises(AgiProtocolError, match="usage text"):
        p.feed(b"520-x\n" + b"text\n" * 500)


# -- commands: quoting round-trips through res_agi's argument splitting ---------------------


@pytest.mark.parametrize("value", [
    "plain", "", "with space", 'a "quoted" word', "back\\slash", "trailing\\",
    '\\"', "tab\there", "PJSIP/dgsm/sip:1001@[fd00::1]:5060", "${EVIL}", "a,b&c;d", "ünï",
])
def test_set_variable_round_trip(value: str) -> None:
    line = set_variable("DGSM_X", value).decode()
    assert line.endswith("\n") and line.count("\n") == 1
    assert parse_args(line[:-1]) == ["SET", "VARIABLE", "DGSM_X", value]


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\0b"])
def test_line_breaks_cannot_be_sent(value: str) -> None:
    with pytest.raises(ValueError):
        quote(value)


@pytest.mark.parametrize("name", ["", "1A", "A B", "A\nB", "A;B", "X" * 81])
def test_bad_variable_names(name: str) -> None:
    with pytest.raises(ValueError):
        set_variable(name, "1")


# -- extension → variables ------------------------------------------------------------------

HOSTILE = [
    "abc", "1001a", "1001@evil", "1001;x", "10,01", "1001&PJSIP/x", "10 01", '"1001"',
    "'1001'", "1" * 40, "1" * 16, "", "+1001", "١٢٣", "1001\\", "${EXTEN}", "\uff11\uff12\uff13",
]


@pytest.mark.parametrize("ext", HOSTILE)
def test_hostile_extension_is_invalid(ext: str) -> None:
    assert parse_extension(ext, ())[0] is None
    assert parse_extension(ext, (ext,))[0] is None


def test_the_number_is_the_routed_extension_not_the_stripped_argument() -> None:
    # what real Asterisk 22 sends for the extension 1"00"1: its argument parser strips the
    # quotes from AGI(...,${EXTEN}), so agi_arg_1 alone would dial 1001
    msisdn, why = parse_extension('1"00"1', ("1001",))
    assert msisdn is None and "strips quotes" in why
    assert parse_extension("1001\\2", ("10012",))[0] is None
    assert parse_extension('"1001', ("1001",))[0] is None  # a stripped quote in front


def test_extension_with_no_argument_or_exactly_itself() -> None:
    assert parse_extension("1001", ()) == ("1001", "")
    assert parse_extension("1001", ("1001",)) == ("1001", "")
    assert parse_extension("1001", ("1001", "endpoint=evil"))[0] is None
    assert parse_extension("1001", ("1002",))[0] is None
    assert parse_extension(None, ("1001",)) == (None, "no agi_extension in the AGI environment")


@pytest.mark.parametrize(("value", "shown"), [
    ('1"00"1', '1"00"1'), ("${SHELL(reboot)}", "\\x24{SHELL(reboot)}"), ("10\n01", "10\\n01"),
    ("1" * 45, "1" * 40 + "..."),
])
def test_log_text_is_one_safe_line(value: str, shown: str) -> None:
    assert log_text(value) == shown


def _found(v4: str | None, v6: str | None, age: int = 3) -> Result:
    q = Query.parse("sip.voice.1001.msisdn")
    ep4 = Endpoint(v4, 5060) if v4 else None
    ep6 = Endpoint(v6, 5061) if v6 else None
    return Result(q, Outcome.FOUND, age=age, v4=ep4, v6=ep6, site="127.0.0.11")


def test_verdict_found_v4_and_v6() -> None:
    r = Routing(endpoint="trunk-1")
    v = r.decide("1001", _found("10.0.0.2", "fd00::2"))
    assert v.result == "found" and v.variables[-1] == ("DGSM_RESULT", "found")
    assert dict(v.variables) == {
        "DGSM_DIAL": "PJSIP/trunk-1/sip:1001@10.0.0.2:5060", "DGSM_SIP_HOST": "10.0.0.2",
        "DGSM_SIP_PORT": "5060", "DGSM_AGE": "3", "DGSM_RESULT": "found"}
    v6 = Routing(prefer_ipv6=True).decide("1001", _found("10.0.0.2", "FD00:0::2"))
    assert dict(v6.variables)["DGSM_DIAL"] == "PJSIP/dgsm/sip:1001@[fd00::2]:5061"
    only6 = Routing().decide("1001", _found(None, "fd00::7"))
    assert dict(only6.variables)["DGSM_SIP_HOST"] == "fd00::7"


def test_verdict_failures_carry_causes() -> None:
    q = Query.parse("sip.voice.1001.msisdn")
    r = Routing()
    assert r.decide("1001", Result(q, Outcome.NOT_FOUND)).variables == (
        ("DGSM_CAUSE", "1"), ("DGSM_RESULT", "not-found"))
    assert r.decide("1001", Result(q, Outcome.ERROR, reason="x")).variables == (
        ("DGSM_CAUSE", "34"), ("DGSM_RESULT", "error"))
    assert r.invalid("x").variables == (("DGSM_CAUSE", "28"), ("DGSM_RESULT", "invalid"))
    custom = Routing(cause_not_found=3, cause_error=42)
    assert dict(custom.decide("1001", Result(q, Outcome.NOT_FOUND)).variables)[
        "DGSM_CAUSE"] == "3"
    # a port-0 answer cannot be dialled
    zero = Result(q, Outcome.FOUND, age=1, v4=Endpoint("10.0.0.2", 0))
    assert r.decide("1001", zero).result == "error"
    # the mapping re-checks the MSISDN itself
    assert r.decide("1@x", _found("10.0.0.2", None)).result == "invalid"


@pytest.mark.parametrize("kw", [
    {"endpoint": "a/b"}, {"endpoint": "a,b"}, {"endpoint": ""}, {"endpoint": "x&y"},
    {"service": "sip voice"}, {"cause_error": 0}, {"cause_not_found": 200},
])
def test_routing_rejects_bad_settings(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Routing(**kw)  # type: ignore[arg-type]


def test_config_file_and_strings(tmp_path: object) -> None:
    import pathlib

    assert isinstance(tmp_path, pathlib.Path)
    path = tmp_path / "a.conf"
    path.write_text("# comment\nmin-delay = 0.5  # inline\nendpoint=trunk\n"
                    "trusted = 10.0.0.0/8, fd00::/8\nprefer_ipv6 = yes\ntimeout = none\n")
    cfg = Config.from_strings(read_config_file(str(path)))
    assert (cfg.min_delay, cfg.endpoint, cfg.prefer_ipv6, cfg.timeout) == (0.5, "trunk", True,
                                                                            None)
    assert cfg.trusted == ("10.0.0.0/8", "fd00::/8")
    assert cfg.resolver_kwargs()["trusted"] == ("10.0.0.0/8", "fd00::/8")
    for bad in ({"nonsense": "1"}, {"min_delay": "soon"}, {"endpoint": "a/b"},
                {"call_timeout": "1", "min_delay": "2"}, {"prefer_ipv6": "maybe"}):
        with pytest.raises(ConfigError):
            Config.from_strings(bad)
    path.write_text("no equals sign\n")
    with pytest.raises(ConfigError, match="key = value"):
        read_config_file(str(path))
