from __future__ import annotations

from domain_eventgen import T0, CallBuilder

from pipeline.domain.alerts import alert_id, build_alert
from pipeline.domain.commands import build_command, command_id
from pipeline.domain.effects import IssueTerminate, RaiseAlert
from pipeline.domain.fold import apply
from pipeline.domain.policy import Policy
from pipeline.domain.rating import RateDeck
from pipeline.domain.rules import on_node_lost
from schemas.validation import validate_alert, validate_command

SELL = RateDeck.from_csv(
    "party,prefix,rate_per_minute,initial_increment,subsequent_increment,connection_fee,minimum_duration,"
    "currency,effective_from\nacme,44,0.0120,6,6,0.5,30,USD,2026-01-01\n", "s1")


def orphan_alert() -> RaiseAlert:
    st = None
    for ev in CallBuilder().setup().routed().answered(2000).probe_ok(62_000).events:
        st, _ = apply(st, ev, Policy())
    _, fx = on_node_lost(st, T0 + 662_000)
    (a,) = [e for e in fx if isinstance(e, RaiseAlert)]
    return a


def test_alert_dict_is_schema_valid_with_estimated_cost() -> None:
    a = orphan_alert()
    d = build_alert(a, SELL)
    validate_alert(d)
    assert d["kind"] == "orphaned" and d["unverified_ms"] == 600_000 and d["ran_ms"] == 660_000
    # sell rate x unverified time: 0.012/min * 10 min (no fee, no increments: an exposure estimate)
    assert d["estimated_cost"] == "0.120000" and d["currency"] == "USD"
    assert d["ts"] == "2026-11-25T10:11:02.000Z" and d["vendor"] == "carrierA"
    no_rate = build_alert(a)
    validate_alert(no_rate)
    assert no_rate["estimated_cost"] == "0.000000" and no_rate["currency"] == "XXX"


def test_ids_are_deterministic() -> None:
    assert build_alert(orphan_alert(), SELL) == build_alert(orphan_alert(), SELL)
    assert alert_id("c1", "orphaned") == alert_id("c1", "orphaned") != alert_id("c1", "probe_failed")
    assert alert_id("c1", "orphaned") != alert_id("c2", "orphaned")
    eff = IssueTerminate("c1", "b2b-1", "max_duration_limit", T0, T0 + 5000)
    cmd = build_command(eff, issued_by="replay")
    validate_command(cmd)
    assert cmd == build_command(eff, issued_by="replay")
    assert cmd["command_id"] == command_id("c1", "max_duration_limit", T0)
    assert cmd["issued_by"] == "replay"
