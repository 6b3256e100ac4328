"""esme_dgsm's flags -> EsmeConfig (LookupOptions' rules for mslookup) -> the daemon runner."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from dgsm_integrations.errors import ConfigError
from dgsm_integrations.esme.cli import build_parser, config_from, main
from dgsm_integrations.esme.config import EsmeConfig, Secret
from dgsm_integrations.esme.errors import CredentialsError
from dgsm_integrations.esme.status import Status
from dgsm_integrations.esme.trust import TrustPolicy
from dgsm_integrations.mslookup.options import LookupOptions


def cfg(*argv: str) -> EsmeConfig:
    return config_from(build_parser().parse_args(list(argv)))


def test_defaults_are_the_configs_defaults() -> None:
    assert cfg() == EsmeConfig()
    assert cfg().trust == TrustPolicy()  # nothing trusted unless asked


def test_the_esmes_mslookup_flags_fill_lookup_options() -> None:
    c = cfg("--mslookup-group", "239.192.23.43", "--mslookup-port", "4267",
            "--mslookup-interface", "127.0.0.1", "--min-delay", "0.3", "--lookup-timeout",
            "0.8", "--allow-loopback", "--trusted", "10.23.0.0/16")
    assert isinstance(c, LookupOptions)
    assert (c.group, c.mdns_port, c.interface, c.min_delay, c.timeout, c.allow_loopback) == (
        "239.192.23.43", 4267, "127.0.0.1", 0.3, 0.8, True)
    assert c.lookup_timeout == 0.8
    kw = c.resolver_kwargs()
    assert (kw["group"], kw["port"], kw["interface"], kw["min_delay"], kw["timeout"]) == (
        "239.192.23.43", 4267, "127.0.0.1", 0.3, 0.8)
    assert (kw["resend"], kw["ttl"], kw["suffix"]) == (7, 1, "mdns.osmocom.org")  # defaults
    kw = cfg("--resend", "3", "--mslookup-ttl", "2", "--suffix", "example.net").resolver_kwargs()
    assert (kw["resend"], kw["ttl"], kw["suffix"]) == (3, 2, "example.net")


def test_trusted_is_repeatable_and_governs_resolver_and_smsc_trust() -> None:
    c = cfg("--trusted", "10.23.0.0/16", "--trusted", "fd00:23::/64",
            "--site-credentials", "10.9.0.0/16=V9:p:w", "--site-credentials", "10.8.1.0/24=V8:x")
    assert c.trusted == ("10.23.0.0/16", "fd00:23::/64")
    assert c.trust.allows("10.23.1.2") and c.trust.allows("fd00:23::5")
    assert c.trust.allows("10.9.0.1") and not c.trust.allows("10.7.0.1")
    creds = c.trust.credentials_for("10.9.3.4")
    assert creds is not None and (creds.system_id, creds.password) == ("V9", "p:w")
    # the resolver drops answers outside every trusted network, credentials' ones too
    assert set(c.resolver_kwargs()["trusted"]) == {
        ipaddress.ip_network(n) for n in ("10.23.0.0/16", "fd00:23::/64", "10.9.0.0/16",
                                          "10.8.1.0/24")}


def test_without_trust_or_with_any_site_the_resolver_does_not_filter() -> None:
    assert "trusted" not in cfg().resolver_kwargs()
    anyone = cfg("--trust-any-site", "--trusted", "10.0.0.0/8")
    assert anyone.trust.any_site and "trusted" not in anyone.resolver_kwargs()


def test_credentials_file(tmp_path: Path) -> None:
    path = tmp_path / "creds"
    path.write_text("# village B\n10.9.0.0/16 VB secretB\n", encoding="utf-8")
    c = cfg("--credentials-file", str(path))
    creds = c.trust.credentials_for("10.9.0.1")
    assert creds is not None and creds.system_id == "VB"
    with pytest.raises(CredentialsError, match="--credentials-file"):
        cfg("--credentials-file", str(tmp_path / "missing"))


@pytest.mark.parametrize("argv", [
    ["--min-delay", "61"], ["--lookup-timeout", "0"], ["--mslookup-group", "10.1.2.3"],
    ["--trusted", "not-a-network"], ["--mslookup-port", "0"], ["--resend", "21"],
    ["--mslookup-ttl", "256"], ["--suffix", "a..b"],
])
def test_bad_mslookup_settings_are_refused_by_the_same_rules(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("esme_dgsm: ") and err.count("\n") == 1


@pytest.mark.parametrize(("kw", "what"), [
    ({"budget": 0.0}, "budget"), ({"not_found_status": -1}, "not-found-status"),
    ({"window": 0}, "window"), ({"retry_window": 1001}, "retry-window"),
    ({"src_port": 0}, "ports"), ({"log_level": "LOUD"}, "log-level"),
    ({"min_delay": 99.0}, "min-delay"), ({"grace": -1.0}, "grace"),
])
def test_the_config_validates_in_code_too(kw: dict[str, object], what: str) -> None:
    with pytest.raises(ConfigError, match=what):
        EsmeConfig(**kw)  # type: ignore[arg-type]


def test_statuses_take_hex() -> None:
    c = cfg("--not-found-status", "0x45", "--untrusted-status", "0x58")
    assert (c.not_found_status, c.untrusted_status) == (0x45, Status.RTHROTTLED)
    assert c.routing.not_found_status == 0x45
    # as text too (EsmeConfig.from_strings): hex, decimal, and a bad value named
    c = EsmeConfig.from_strings({"not-found-status": "0x45", "untrusted_status": "8"})
    assert (c.not_found_status, c.untrusted_status) == (0x45, 8)
    with pytest.raises(ConfigError, match="bad value 'forty' for not-found-status"):
        EsmeConfig.from_strings({"not-found-status": "forty"})


def test_trusted_alone_makes_the_policy_in_code() -> None:
    c = EsmeConfig(trusted=("10.23.0.0/16",))
    assert c.trust.allows("10.23.0.1") and not c.trust.allows("10.24.0.1")
    explicit = TrustPolicy.build(["10.99.0.0/16"])
    assert EsmeConfig(trusted=("10.23.0.0/16",), trust=explicit).trust == explicit


OSMPP_PW, ISMPP_PW = "osmpp-pw", "ismpp"


def test_passwords_are_masked_when_printed_and_intact_when_used() -> None:
    c = EsmeConfig(password=OSMPP_PW, dst_password=ISMPP_PW)
    assert isinstance(c.password, Secret)
    assert f"{c.password}" == "***" and OSMPP_PW not in repr(c) and "ismpp'" not in repr(c)
    assert c.osmpp().password == OSMPP_PW and type(c.osmpp().password) is str
    assert c.ismpp("10.0.0.1").password == ISMPP_PW and c.password == OSMPP_PW


def test_check_prints_the_settings_without_passwords(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check", "--password", "hunter2", "--dst-password", "ismpp2",
                 "--site-credentials", "10.9.0.0/16=V9:cred9", "--budget", "2.5"]) == 0
    out = capsys.readouterr().out
    assert "budget = 2.5" in out and "password = ***" in out and "dst-password = ***" in out
    for secret in ("hunter2", "ismpp2", "cred9"):
        assert secret not in out
    assert "min-delay = 1.0" in out and "trusted = none" in out


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        EsmeConfig.from_strings({"colour": "blue"})
