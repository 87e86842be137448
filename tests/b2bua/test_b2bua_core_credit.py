"""Prepaid credit in the sans-I/O core (fake clock): the credit limit, refusals, holds of concurrent calls."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from test_b2bua_core_harness import (
    CALLER,
    GW1,
    SDP_B,
    Call,
    Harness,
    answer,
    caller_invite,
    labels,
    only,
    select,
)

from b2bua.credit import CREDIT_GUARD_S
from b2bua.credit_book import CreditBook
from b2bua.sip.message import Request
from tariff import RateDeck, cost_of

DECK = RateDeck.from_csv("""\
party,prefix,rate_per_minute,initial_increment,subsequent_increment,connection_fee,minimum_duration,currency,effective_from
acme,1555,1.00,6,6,0,0,USD,2026-01-01
acme,1666,0.50,30,6,0.10,0,USD,2026-01-01
""", "test")
RATE = DECK.lookup("acme", "15551230000", 1_780_000_000_000)
assert RATE is not None


def record(balance: str, *, reserved: dict[str, str] | None = None, held: tuple[str, ...] = (),
           debited: tuple[str, ...] = (), partition: int | None = None,
           account: str = "acme") -> dict[str, Any]:
    return {"type": "account.balance", "account": account, "partition": partition, "topups": balance,
            "debits": "0", "balance": balance, "reserved": reserved or {}, "held": list(held),
            "debited": list(debited), "currency": "USD", "ts": "2026-06-01T00:00:00.000Z",
            "issued_by": "test", "schema_version": 1}


def prepaid(balance: str | None = "0.62", min_balance: str = "0", **raw: Any) -> Harness:
    h = Harness(raw or None)
    h.core.credit = CreditBook({"acme": Decimal(min_balance)}, DECK)
    if balance is not None:
        h.apply(h.core.balance_record(record(balance), h.now))
    return h


def invite(n: int, callee: str = "15551230000") -> Request:
    return caller_invite(call_id=f"c{n}@10.0.0.1", branch=f"z9hG4bKc{n}", callee=callee)


def answer_call(h: Harness, n: int) -> tuple[str, Request]:
    """Caller n's INVITE to the carrier's 200 and the caller's ACK; returns (call id, carrier INVITE)."""
    out = h.feed(invite(n))
    sent = only(out, GW1, method="INVITE")
    ok = only(h.feed(answer(sent, 200, body=SDP_B, tag=f"gw{n}"), GW1), CALLER, status=200)
    from test_b2bua_core_harness import caller_dialog

    h.feed(caller_dialog(invite(n), ok).create_ack(branch=f"z9hG4bKack{n}"))
    setups = [e for e in h.events if e["type"] == "call.setup"]
    return setups[-1]["call_id"], sent


def test_a_balance_of_37_seconds_at_6_6_ends_the_call_at_36_on_both_legs() -> None:
    h = prepaid("0.62")  # 1.00/min: 37 s cost 0.616667, billed as 42 s on 6/6
    c = Call(h)
    setup = h.event("call.setup")
    assert setup["credit"] == {"hold": "0.600000", "limit_ms": 36_000, "available": "0.620000",
                               "rate": "1.00", "currency": "USD"}
    answered = h.event("call.answered")
    assert (answered["effective_limit_s"], answered["limit_source"]) == (36, "credit_limit")
    assert h.core.credit.available("acme") == Decimal("0.02")  # the hold counts at once
    assert h.advance(36 - CREDIT_GUARD_S - 0.01) == []
    out = h.advance(0.02)
    assert sorted(labels(out)) == ["BYE -> 10.0.0.1", "BYE -> 10.0.0.2"]
    term = h.event("call.terminated")
    assert (term["reason"], term["initiator"]) == ("credit_limit", "system")
    # Ended before its debit is in a record: the node counts what it cost (36 s), at most its hold.
    assert h.core.credit.available("acme") == Decimal("0.02")
    assert h.core.metrics.byes_sent["credit_limit"] == 2
    del c


def test_below_the_minimum_balance_the_call_is_refused_402_and_recorded() -> None:
    h = prepaid("0.50", min_balance="1.00", admission={"max_concurrent_calls": 1})
    out = h.feed(invite(1))
    resp = only(out, CALLER, status=402)
    assert resp.reason == "Insufficient Balance"
    assert select(out, GW1, method="INVITE") == []
    assert h.types() == ["call.setup", "call.terminated"]
    term = h.event("call.terminated")
    assert (term["reason"], term["sip_status"], term["initiator"]) == ("insufficient_balance", 402, "system")
    assert "below the minimum balance 1.00" in term["detail"]
    assert "credit" not in h.event("call.setup")
    # A retransmission is answered again, not refused (and billed) twice; no concurrency slot was taken.
    assert only(h.feed(invite(1)), CALLER, status=402)
    assert h.types() == ["call.setup", "call.terminated"]
    h.apply(h.core.balance_record(record("5.00"), h.now))
    assert select(h.feed(invite(2)), GW1, method="INVITE")  # the slot is free: the call goes out


@pytest.mark.parametrize(("balance", "callee", "why"), [
    ("0.09", "15551230000", "pays for no increment"),  # 6 s cost 0.10
    ("10", "4420", "no sell rate for 4420"),
    (None, "15551230000", "pays for no increment"),  # no record yet: a balance of 0
])
def test_refusals_name_their_reason(balance: str | None, callee: str, why: str) -> None:
    h = prepaid(balance, routes=[{"prefix": "", "gateways": ["gw1"]}])
    out = h.feed(invite(1, callee))
    assert only(out, CALLER, status=402).reason == "Insufficient Balance"
    assert why in h.event("call.terminated")["detail"]


def test_until_the_balances_are_loaded_prepaid_calls_get_503() -> None:
    h = prepaid("5.00")
    h.core.credit.ready = False
    assert only(h.feed(invite(1)), CALLER, status=503).reason == "Balance Unavailable"
    h.core.credit.ready = True
    assert select(h.feed(invite(2)), GW1, method="INVITE")


def test_a_postpaid_account_is_not_priced() -> None:
    h = Harness()
    h.core.credit = CreditBook({"other": Decimal(0)}, DECK)
    Call(h)
    assert "credit" not in h.event("call.setup")
    assert h.event("call.answered")["limit_source"] == "no_timer_max_duration"


def test_concurrent_calls_share_the_balance_within_the_node() -> None:
    # 0.90 affords 54 s; the 38 s cap bounds the first call, so it holds the cost of 38 s (billed 42).
    h = prepaid("0.90", timers={"max_call_duration": 38})
    first, _ = answer_call(h, 1)
    a1 = [e for e in h.events if e["type"] == "call.answered"][-1]
    assert (a1["effective_limit_s"], a1["limit_source"]) == (38, "max_call_duration")
    s1 = [e for e in h.events if e["type"] == "call.setup"][-1]["credit"]
    assert (s1["hold"], s1["limit_ms"]) == ("0.700000", 54_000)
    second, _ = answer_call(h, 2)
    s2 = [e for e in h.events if e["type"] == "call.setup"][-1]["credit"]
    assert (s2["available"], s2["limit_ms"], s2["hold"]) == ("0.200000", 12_000, "0.200000")
    a2 = [e for e in h.events if e["type"] == "call.answered"][-1]
    assert (a2["effective_limit_s"], a2["limit_source"]) == (12, "credit_limit")
    # Nothing is left for a third call.
    assert only(h.feed(invite(3)), CALLER, status=402)
    # The pipeline's record that counts the first call's hold replaces the node's own count of it.
    h.apply(h.core.balance_record(record("0.90", reserved={"node-1": "0.70"}, held=(first,)), h.now))
    assert h.core.credit.available("acme") == Decimal(0)
    assert h.core.credit.counted_here("acme") == 1
    out = [(m, d) for m, d in h.advance(12) if isinstance(m, Request)]  # (402 retransmissions aside)
    assert sorted(labels(out)) == ["BYE -> 10.0.0.1", "BYE -> 10.0.0.2"]  # the 2nd call's credit limit
    for m, d in out:
        h.feed(answer(m, 200), d)
    # Its cost (12 s = 0.20) stays counted here until its debit is in a record.
    assert h.core.credit.available("acme") == Decimal(0)
    h.apply(h.core.balance_record(record("0.70", reserved={"node-1": "0.70"}, debited=(second,)), h.now))
    assert h.core.credit.counted_here("acme") == 0 and h.core.credit.available("acme") == Decimal(0)
    assert [e["reason"] for e in h.events if e["type"] == "call.terminated"] == \
        ["insufficient_balance", "credit_limit"]


def test_a_timer_caller_has_no_no_timer_cap_so_the_credit_limit_holds_all() -> None:
    from test_b2bua_core_timers import timer_invite

    h = prepaid("0.62", timers={"no_timer_max_duration": 20})
    Call(h, invite=timer_invite(90, "uac"))
    setup = h.event("call.setup")["credit"]
    assert setup["hold"] == "0.600000"  # no cap for a timer caller: the whole 36 s is held
    assert h.event("call.answered")["limit_source"] == "credit_limit"


def test_a_call_that_fails_before_the_answer_costs_nothing() -> None:
    h = prepaid("0.62")
    out = h.feed(invite(1))
    sent = only(out, GW1, method="INVITE")
    assert h.core.credit.available("acme") == Decimal("0.02")
    h.feed(answer(sent, 486), GW1)
    assert h.event("call.terminated")["reason"] == "busy"
    assert h.core.credit.available("acme") == Decimal("0.62")


def test_credit_book_sums_partitions_and_refuses_bad_records() -> None:
    book = CreditBook({"acme": Decimal(0)}, DECK)
    book.on_record(record("1.00", partition=0, reserved={"n2": "0.30"}))
    book.on_record(record("2.50", partition=3))
    book.on_record(record("1.20", partition=0))  # the newer record of partition 0 replaces its older one
    view = book.view("acme")
    assert (view.balance, view.reserved_by_pipeline, view.available) == (Decimal("3.70"), 0, Decimal("3.70"))
    grant = book.authorize("acme", "16661230000", 1_780_000_000_000, [])
    assert grant is not None and not hasattr(grant, "status")
    # 0.50/min 30/6 with a 0.10 fee: 3.70 pays for 0.10 + 0.50 * 432 s / 60 = 3.70 exactly.
    assert grant.limit_ms == 432_000 and grant.hold == cost_of(grant.rate, 432_000) == Decimal("3.700000")
    h = prepaid("1.00")
    bad = record("1.00")
    bad["balance"] = "lots"
    h.apply(h.core.balance_record(bad, h.now))
    assert h.core.credit.available("acme") == Decimal("1.00")
    assert any("account.balance record refused" in log.text for log in h.logs)


def test_metrics_show_each_prepaid_accounts_available_balance_and_readiness() -> None:
    from prometheus_client.core import Metric

    from b2bua.metrics import NAMES, families

    h = prepaid("1.00")

    def scrape() -> dict[str, Metric]:
        return {m.name: m for m in families(lambda: h.core, None, "n1")()}

    def available() -> list[tuple[dict[str, str], float]]:
        return [(s.labels, s.value) for s in scrape()["sipledger_b2bua_prepaid_available"].samples]

    got = scrape()
    assert set(got) == set(NAMES)
    assert available() == [({"account": "acme"}, 1.0)]
    answer_call(h, 1)  # holds what its 60 s limit costs: all of the 1.00
    assert available() == [({"account": "acme"}, 0.0)]
    assert got["sipledger_b2bua_prepaid_ready"].samples[0].value == 1
    h.core.credit.ready = False
    assert scrape()["sipledger_b2bua_prepaid_ready"].samples[0].value == 0
