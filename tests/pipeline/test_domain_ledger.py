"""The prepaid ledger: top-ups counted once per id, one debit per call replacing its hold, whatever the
log repeats; the same balances from a restart and from a replay."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

from domain_eventgen import PREPAID_RATES, T0, heartbeat, prepaid_call
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.domain.ledger import Ledger
from pipeline.domain.policy import Policy
from pipeline.domain.state import CallState
from pipeline.domain.timeutil import format_ts
from pipeline.processor import Processor
from schemas.validation import validate_balance, validate_event
from tariff import RateDeck

P = Policy(no_timer_max_duration=7200, grace_period_s=5, node_timeout_s=30)
DECK = RateDeck.from_csv(PREPAID_RATES + "post,1555,1.00,6,6,0,0,USD,2026-01-01\n", "test")


def topup(topup_id: str, amount: str, account: str = "pre", at: int = 0) -> dict[str, Any]:
    return {"event_id": f"topup-{topup_id}-{at}", "call_id": f"account:{account}", "seq": 1,
            "type": "account.topup", "ts": format_ts(T0 + at), "node": "cli", "schema_version": 2,
            "topup_id": topup_id, "account": account, "amount": amount, "note": "test"}


def state(call_id: str, hold: str | None, debit: str | None = None, node: str = "n1",
          account: str = "pre") -> CallState:
    return CallState(call_id, account=account, node=node, credit_hold=hold, credit_debit=debit)


def test_topups_count_once_per_id() -> None:
    led = Ledger()
    assert led.topup("t1", "pre", Decimal("5")) is None
    assert led.topup("t1", "pre", Decimal("5")) is None  # a repeat: nothing
    notice = led.topup("t1", "pre", Decimal("7"))  # same id, another amount: refused, the first stands
    assert notice is not None and "already counted" in notice
    assert led.topup("t2", "pre", Decimal("2.5")) is None
    assert led.book("pre").balance == Decimal("7.5")
    assert led.take_changes()["pre"].topups == ["t1", "t2"]


def test_a_debit_replaces_the_hold_and_a_repeat_or_rerating_never_adds() -> None:
    led = Ledger()
    led.topup("t", "pre", Decimal("10"))
    assert led.track(state("c1", "0.60")) == "hold"
    assert led.track(state("c1", "0.60")) is None
    b = led.book("pre")
    assert (b.balance, b.reserved_total) == (Decimal("10"), Decimal("0.60"))
    assert led.track(state("c1", "0.60", "0.55")) == "debit"
    assert led.track(state("c1", "0.60", "0.55")) is None  # the same CDR again
    assert (b.balance, b.reserved_total) == (Decimal("9.45"), Decimal(0))
    assert led.track(state("c1", "0.60", "0.50")) == "debit"  # re-rated: replaces
    assert b.balance == Decimal("9.50")
    ch = led.take_changes()["pre"]
    assert ch.held == ["c1"] and ch.debited == ["c1", "c1"]
    assert led.track(state("post1", None)) is None  # not prepaid: no entry
    assert led.tracked() == 1


def test_settle_keeps_the_balance_and_forgets_the_call() -> None:
    led = Ledger()
    led.topup("t", "pre", Decimal("10"))
    led.track(state("c1", "0.60", "0.55"))
    led.track(state("c2", "1.20", node="n2"))
    led.settle(["c1", "c2", "unknown"])
    b = led.book("pre")
    assert b.balance == Decimal("9.45") and b.settled == Decimal("0.55") and b.reserved == {}
    assert led.tracked() == 0 and sorted(led.last_settled) == ["c1", "c2"]
    led.settle(["c1"])  # a second settle of a settled call changes nothing
    assert b.balance == Decimal("9.45")


def test_restore_from_the_persisted_part_and_the_states() -> None:
    led = Ledger()
    led.topup("t", "pre", Decimal("10"))
    open_call, rated = state("c2", "1.20", node="n2"), state("c3", "0.60", "0.30")
    for s in (state("c1", "0.60", "0.55"), open_call, rated):
        led.track(s)
    led.settle(["c1"])
    back = Ledger.restore(led.to_dict(), [open_call, rated])
    assert back.view("pre") == led.view("pre")
    assert back.view("pre") == {"topups": "10.000000", "debits": "0.850000", "balance": "9.150000",
                                "reserved": {"n2": "1.200000"}}
    # A state restored although its settle round was persisted (its tombstone never written): not twice.
    again = Ledger.restore(led.to_dict(), [state("c1", "0.60", "0.55"), open_call, rated])
    assert again.view("pre") == led.view("pre")


# -- through the Processor: the debit is the CDR's sell cost, once ---------------------------------------

def feed_all(proc: Processor, events: list[dict[str, Any]]
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    cdrs: list[dict[str, Any]] = []
    balances: list[dict[str, Any]] = []
    for e in events:
        validate_event(e)
        proc.feed(e)
        out = proc.take()
        cdrs += out.cdrs
        balances += out.balances
    for b in balances:
        validate_balance(b)
    return cdrs, balances


def new_proc() -> Processor:
    return Processor(P, DECK)


def stream() -> list[dict[str, Any]]:
    return [topup("t1", "0.62"), *prepaid_call("c1", 36_000),
            *prepaid_call("c2", 12_000, hold="0.200000", start=5_000, reason="normal_caller_bye"),
            *prepaid_call("p1", 30_000, account="post"), topup("t2", "1.00", at=50_000),
            heartbeat("n1", 60_000)]


def test_cdr_cost_equals_the_debit_and_balance_records_list_holds_and_debits() -> None:
    proc = new_proc()
    cdrs, balances = feed_all(proc, stream())
    c1 = next(c for c in cdrs if c["call_id"] == "c1")
    assert c1["sell_cost"] == "0.600000" and c1["billed_seconds"] == 36
    assert proc.ledger.view("pre") == {"topups": "1.620000", "debits": "0.800000", "balance": "0.820000",
                                       "reserved": {}}
    assert "post" not in proc.ledger.books  # a postpaid call has no hold and is not debited
    held = [cid for b in balances for cid in b["held"]]
    debited = [cid for b in balances for cid in b["debited"]]
    assert held == ["c1", "c2"] and debited == ["c1", "c2"]
    last = balances[-1]
    assert (last["account"], last["balance"], last["currency"], last["partition"]) == \
        ("pre", "0.820000", "USD", None)
    rows = proc.take().ledger  # all taken already
    assert rows == []


def test_duplicates_a_restart_and_a_replay_give_the_same_balance() -> None:
    events = stream()
    live = new_proc()
    feed_all(live, events[:9])
    snap = live.snapshot()
    # A restart from the checkpoint re-reads from an earlier offset: everything after event 5 again.
    restarted = new_proc()
    restarted.restore(snap)
    feed_all(restarted, events[5:] + events)  # and the whole log redelivered on top
    replay = new_proc()
    feed_all(replay, events)
    assert restarted.ledger.view("pre") == replay.ledger.view("pre") == {
        "topups": "1.620000", "debits": "0.800000", "balance": "0.820000", "reserved": {}}


def test_eviction_settles_and_the_balance_survives_it() -> None:
    proc = new_proc()
    feed_all(proc, stream())
    before = proc.ledger.view("pre")
    assert proc.evict_closed() == 3
    assert proc.ledger.view("pre") == before and proc.ledger.book("pre").settled == Decimal("0.8")
    back = new_proc()
    back.restore(proc.snapshot())
    back.closed.load(proc.closed.entries())  # persisted by the driver beside the snapshot
    assert back.ledger.view("pre") == before
    # A late redelivery of a settled call's events changes nothing (the closed-call memory).
    feed_all(back, prepaid_call("c1", 36_000))
    assert back.ledger.view("pre") == before and back.late_events


def test_ledger_rows_for_the_store() -> None:
    proc = new_proc()
    rows = []
    for e in [topup("t1", "0.62"), topup("t1", "0.62"), *prepaid_call("c1", 36_000)]:
        proc.feed(e)
        rows += proc.take().ledger
    assert [(r["entry_id"], r["kind"], r["amount"], r["rank"]) for r in rows] == [
        ("topup:t1", "topup", "0.62", 0), ("call:c1", "hold", "0.600000", 0),
        ("call:c1", "debit", "0.600000", 2)]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), dups=st.integers(0, 6))
def test_any_delivery_order_and_repeats_give_the_same_balance(seed: int, dups: int) -> None:
    """Per-call order kept (a node publishes in order; the fold holds early seqs anyway), calls and top-ups
    interleaved at random, random events delivered again."""
    rng = random.Random(seed)
    calls = [prepaid_call(f"c{i}", rng.randrange(1, 40_000), hold=f"{rng.randrange(1, 90)}.000000",
                          node=f"n{i % 2}", start=i * 1000,
                          reason=rng.choice(["credit_limit", "normal_caller_bye"])) for i in range(6)]
    tops = [topup(f"t{i}", f"{rng.randrange(1, 50)}.5", at=i * 700) for i in range(3)]
    streams = [*calls, tops]
    merged: list[dict[str, Any]] = []
    while any(streams):
        s = rng.choice([s for s in streams if s])
        merged.append(s.pop(0))
    for _ in range(dups):
        merged.insert(rng.randrange(len(merged) + 1), rng.choice(merged))
    reference = new_proc()
    ordered = sorted({e["event_id"]: e for e in merged}.values(), key=lambda e: (e["ts"], e["seq"]))
    feed_all(reference, ordered)
    got = new_proc()
    feed_all(got, merged)
    assert got.ledger.view("pre") == reference.ledger.view("pre")
    # Every call debited exactly its CDR's sell cost.
    cdrs = {c["call_id"]: c for c in feed_all(new_proc(), ordered)[0]}
    assert Decimal(got.ledger.view("pre")["debits"]) == sum(Decimal(c["sell_cost"]) for c in cdrs.values())
