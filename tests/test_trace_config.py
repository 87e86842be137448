"""Call analysis settings: what `[trace]` and `[[accounts]] trace` turn on, and the bad values refused
with the key named before anything starts."""

from __future__ import annotations

from typing import Any

import pytest

from b2bua.signalling_trace import TraceSettings
from sipledger.config import ConfigError, from_dict


def config(**trace: Any) -> dict[str, Any]:
    return {"trace": trace, "accounts": [{"name": "acme", "ips": ["127.0.0.1"], "trace": True},
                                         {"name": "other", "ips": ["127.0.0.2"]}]}


def test_off_by_default_and_each_way_of_turning_it_on() -> None:
    assert not TraceSettings.from_config(from_dict({})).enabled
    only_account = TraceSettings.from_config(from_dict(config()))
    assert only_account.enabled and only_account.accounts == frozenset({"acme"})
    assert TraceSettings.from_config(from_dict({"trace": {"sample_rate": 0.01}})).enabled
    assert TraceSettings.from_config(from_dict({"trace": {"failed_calls": True}})).enabled


@pytest.mark.parametrize(("trace", "key"), [
    ({"sample_rate": 1.5}, "trace.sample_rate"),
    ({"sample_rate": -0.1}, "trace.sample_rate"),
    ({"max_messages": 5}, "trace.max_messages"),
    ({"retention_days": 0}, "trace.retention_days"),
    ({"max_call_bytes": 1_000_000, "max_buffered_bytes": 500_000}, "trace.max_call_bytes"),
    ({"failed_call": True}, "trace.failed_call"),  # a typo is no silent default
])
def test_bad_values_are_refused_with_the_key_named(trace: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_dict(config(**trace))
    assert err.value.key == key, str(err.value)


def test_an_account_trace_flag_must_be_a_boolean() -> None:
    raw = config()
    raw["accounts"][0]["trace"] = "yes"
    with pytest.raises(ConfigError) as err:
        from_dict(raw)
    assert err.value.key == "accounts[0].trace", str(err.value)
