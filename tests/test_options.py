"""LookupOptions: the mslookup settings every adapter's config extends."""

from __future__ import annotations

import pytest

from dgsm_integrations.errors import ConfigError, DgsmError
from dgsm_integrations.mslookup import AsyncResolver
from dgsm_integrations.mslookup.options import LOOKUP_KEYS, LookupOptions


def test_the_defaults_are_the_resolvers() -> None:
    options = LookupOptions()
    kw = options.resolver_kwargs()
    assert kw["group"] == "239.192.23.42" and kw["port"] == 4266 and kw["resend"] == 7
    assert kw["min_delay"] == 1.0 and kw["timeout"] is None and "trusted" not in kw
    assert options.lookup_timeout == 1.0
    assert "min_delay" not in options.resolver_kwargs(timing=False)
    AsyncResolver(**kw)  # the resolver takes exactly these keywords


@pytest.mark.parametrize(("kw", "says"), [
    ({"group": "10.0.0.1"}, "not a multicast address"),
    ({"mdns_port": 0}, "port"),
    ({"ttl": 300}, "TTL"),
    ({"min_delay": 61.0}, "min-delay"),
    ({"min_delay": "1"}, "min-delay"),
    ({"resend": 21}, "resend must be 0..20"),
    ({"trusted": ("10.0.0.0/33",)}, "10.0.0.0/33"),
    ({"trusted": "10.0.0.0/8"}, "list of networks"),
    ({"suffix": "a..b"}, "suffix"),
])
def test_a_bad_setting_is_a_config_error_naming_it(kw: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigError, match=says) as caught:
        LookupOptions(**kw)  # type: ignore[arg-type]
    assert isinstance(caught.value, DgsmError) and isinstance(caught.value, ValueError)


def test_the_keys_are_the_fields() -> None:
    assert LOOKUP_KEYS == ("group", "mdns_port", "interface", "ttl", "suffix", "min_delay",
                           "timeout", "resend", "trusted", "allow_loopback")
