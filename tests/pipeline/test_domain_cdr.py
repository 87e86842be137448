from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from domain_eventgen import CallBuilder, normal_call

from pipeline.domain.cdr import MONEY_FIELDS, build_cdr, cdr_fields, rerate
from pipeline.domain.fold import apply
from pipeline.domain.policy import Policy
from pipeline.domain.rating import RateDeck
from pipeline.domain.state import CallState
from schemas.validation import validate_cdr

HEADER = ("party,prefix,rate_per_minute,initial_increment,subsequent_increment,connection_fee,"
          "minimum_duration,currency,effective_from\n")
SELL = RateDeck.from_csv(HEADER + "acme,44,0.0120,6,6,0,0,USD,2026-01-01\n"
                         "acme,4412,0.0200,30,6,0.05,0,USD,2026-01-01\n", "sell-3")
BUY = RateDeck.from_csv(HEADER + "carrierA,44,0.0080,1,1,0,0,USD,2026-01-01\n", "buy-9")
P = Policy()


def closed(events: list[dict[str, Any]]) -> CallState:
    st: CallState | None = None
    for ev in events:
        st, _ = apply(st, ev, P)
    assert st is not None and st.closed
    return st


def test_normal_call_rated_with_exact_margin() -> None:
    st = closed(normal_call(talk_ms=65_400))
    cdr = build_cdr(st, SELL, BUY, {})
    validate_cdr(cdr)
    assert set(cdr) == set(cdr_fields(st))
    assert cdr["billed_seconds"] == 66  # 30/6: 65.4 -> 66 s
    assert cdr["sell_rate"] == "0.0200" and cdr["buy_rate"] == "0.0080"
    assert cdr["sell_cost"] == "0.072000"  # 0.05 + 0.02 * 66 / 60
    assert cdr["buy_cost"] == "0.008800"  # 1/1: 66 s * 0.008 / 60
    assert Decimal(cdr["margin"]) == Decimal(cdr["sell_cost"]) - Decimal(cdr["buy_cost"])
    assert cdr["margin"] == "0.063200"
    assert cdr["currency"] == "USD" and cdr["rate_deck_version"] == "sell-3/buy-9"
    assert cdr["pdd_ms"] == 500 and cdr["setup_ts"] == "2026-11-25T10:00:00.000Z"
    assert cdr["timer_mode"] == "session_timer" and cdr["refresh_count"] == 1


def zombie_call() -> CallState:
    # answered, last proof at +62 s, ended by the session timer at +600 s: 538 s unverified
    b = CallBuilder().setup(callee="+4420123").routed().answered(2000, "no_timer").probe_ok(62_000)
    return closed(b.terminated(602_000, "liveness_probe_failed", "system").events)


def test_verified_mode_bills_only_verified_time() -> None:
    st = zombie_call()
    full = build_cdr(st, SELL, BUY, {"acme": "full"})
    verified = build_cdr(st, SELL, BUY, {"acme": "verified"})
    for c in (full, verified):
        validate_cdr(c)
        assert c["duration_ms"] == 600_000 and c["verified_ms"] == 60_000 and c["unverified_ms"] == 540_000
        assert c["zombie"]
    assert full["billed_seconds"] == 600 and full["sell_cost"] == "0.120000"
    assert verified["billed_seconds"] == 60 and verified["sell_cost"] == "0.012000"
    # the carrier bills what it saw either way: the buy side is the full duration
    assert full["buy_cost"] == verified["buy_cost"] == "0.080000"
    assert verified["margin"] == "-0.068000"


def test_missing_rate_is_null_with_zero_cost() -> None:
    st = closed(CallBuilder().setup(account="nobody").routed(vendor="unknownCarrier").answered()
                .terminated(12_000).events)
    cdr = build_cdr(st, SELL, BUY, None)
    validate_cdr(cdr)
    assert cdr["sell_rate"] is None and cdr["buy_rate"] is None
    assert cdr["sell_cost"] == cdr["buy_cost"] == cdr["margin"] == "0.000000"
    assert cdr["billed_seconds"] == 10 and cdr["currency"] == "USD"
    validate_cdr(build_cdr(st, None, None))  # no decks at all: currency XXX, still valid
    assert build_cdr(st, None, None)["currency"] == "XXX"


def test_unanswered_call_costs_nothing_but_shows_the_rate() -> None:
    st = closed(CallBuilder().setup().routed().progress().terminated(9000, "caller_cancel", "caller", 487)
                .events)
    cdr = build_cdr(st, SELL, BUY)
    validate_cdr(cdr)
    assert cdr["billed_seconds"] == 0 and cdr["sell_cost"] == "0.000000" and cdr["sell_rate"] == "0.0200"
    assert cdr["buy_cost"] == "0.000000"


def test_rerate_changes_only_money_fields() -> None:
    st = closed(normal_call())
    old = build_cdr(st, SELL, BUY)
    new_sell = RateDeck.from_csv(HEADER + "acme,44,0.0300,60,60,0.10,0,USD,2026-01-01\n", "sell-4")
    new = rerate(old, new_sell, BUY)
    validate_cdr(new)
    assert {k for k in old if old[k] != new[k]} <= set(MONEY_FIELDS)
    assert new["billed_seconds"] == 120 and new["sell_cost"] == "0.160000"
    assert new["rate_deck_version"] == "sell-4/buy-9"
    assert old["sell_cost"] == "0.072000"  # the input is not mutated


def test_currency_mismatch_is_refused() -> None:
    eur = RateDeck.from_csv(HEADER + "carrierA,44,0.0080,1,1,0,0,EUR,2026-01-01\n", "eur")
    with pytest.raises(ValueError, match="currency"):
        build_cdr(closed(normal_call()), SELL, eur)


def test_open_call_has_no_cdr() -> None:
    st, _ = apply(None, CallBuilder().setup().events[0], P)
    with pytest.raises(ValueError):
        cdr_fields(st)


def test_verified_clamped_to_duration() -> None:
    st = closed(normal_call())
    st.last_proof_ms, st.last_proof_ts = st.end_ms + 10_000, None  # e.g. a skewed probe timestamp
    c = cdr_fields(st)
    assert c["verified_ms"] == c["duration_ms"] and c["unverified_ms"] == 0
    st.last_proof_ms, st.last_proof_ts = st.answer_ms - 10_000, None
    c = cdr_fields(st)
    assert c["verified_ms"] == 0 and c["unverified_ms"] == c["duration_ms"]
