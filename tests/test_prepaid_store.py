"""The prepaid ledger's DDL (008) and the end-reason migration (009) on ClickHouse 18.16 and chDB, and
the balance query `sipledger balance` runs on both."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from test_store import make_cdr

from pipeline.store_sink import StoreSink
from sipledger.balance import fetch_balances
from sipledger.config import from_dict
from sipledger.store import Store, migrate, open_store
from sipledger.store.cdr_export import fetch_cdrs
from sipledger.store.migrate import ddl_statements

CFG = from_dict({"pipeline": {"sell_rates": "rates.csv"},
                 "accounts": [{"name": "pre", "prepaid": True, "min_balance": "1.5"},
                              {"name": "fresh", "prepaid": True}, {"name": "post"}]})


def _open(request: Any, tmp_path: Path) -> Store:
    if request.param == "chdb":
        return open_store(f"chdb://{tmp_path}/store")
    stack = request.getfixturevalue("real_stack")
    return open_store(stack.clickhouse_url(f"pp_{abs(hash(tmp_path)) % 10**8}"))


@pytest.fixture(params=["chdb", "clickhouse-18.16"])
def bare(request: Any, tmp_path: Path) -> Iterator[Store]:
    """A store with nothing applied yet."""
    s = _open(request, tmp_path)
    yield s
    if request.param != "chdb":
        s.execute(f"DROP DATABASE IF EXISTS {s.database}")
    s.close()


def row(entry: str, kind: str, amount: str, account: str = "pre", rank: int = 0) -> dict[str, Any]:
    return {"account": account, "entry_id": entry, "kind": kind, "amount": amount, "currency": "USD",
            "node": "n1", "ts": "2026-11-25T10:00:00.000Z", "note": "", "rank": rank}


def test_a_store_from_before_gets_the_new_end_reasons_and_keeps_its_cdrs(bare: Store) -> None:
    # The tables as the DDL before prepaid made them (001-004; 005's columns are in 002 already).
    for name, stmt in ddl_statements():
        if name < "005":
            bare.execute(bare.render(stmt))
    sink = StoreSink(bare)
    sink.add_cdr(make_cdr("old"), wall_ms=1)
    assert sink.flush()
    applied = migrate(bare)
    assert "008_account_ledger.sql" in applied and "009_cdrs_credit_reasons.sql" in applied
    (col,) = bare.query("SELECT type FROM system.columns WHERE database = currentDatabase() AND "
                        "table = 'cdrs' AND name = 'end_reason'")
    assert "'credit_limit' = 18" in col["type"] and "'insufficient_balance' = 19" in col["type"]
    assert "009_cdrs_credit_reasons.sql" not in migrate(bare)  # applied once, not at every start
    new = make_cdr("new")
    new["end_reason"] = "credit_limit"
    refused = {**make_cdr("refused"), "end_reason": "insufficient_balance", "sip_status": 402}
    sink.add_cdr(new, wall_ms=2)
    sink.add_cdr(refused, wall_ms=2)
    assert sink.flush()
    got = {c["call_id"]: c["end_reason"] for c in fetch_cdrs(bare)}
    assert got == {"old": "normal_caller_bye", "new": "credit_limit", "refused": "insufficient_balance"}


def test_the_ledger_counts_each_entry_once_and_a_debit_replaces_its_hold(bare: Store) -> None:
    migrate(bare)
    sink = StoreSink(bare)
    for r, wall in ((row("topup:t1", "topup", "5.50"), 10), (row("topup:t1", "topup", "5.50"), 20),
                    (row("topup:t2", "topup", "1.25"), 10),
                    (row("call:c1", "hold", "0.60"), 10), (row("call:c2", "hold", "1.20"), 10),
                    # the debit of c1 (node-closed CDR), then its hold written again by a redelivery
                    (row("call:c1", "debit", "0.55", rank=2), 5), (row("call:c1", "hold", "0.60"), 30),
                    (row("call:c1", "debit", "0.55", rank=2), 40),
                    (row("topup:x", "topup", "3", account="post"), 10)):
        sink.add_ledger(r, wall_ms=wall)
    assert sink.flush()
    balances = {b.account: b.as_dict() for b in fetch_balances(bare, CFG)}
    assert balances["pre"] == {"account": "pre", "prepaid": True, "currency": "USD", "balance": "6.200000",
                               "reserved": "1.200000", "available": "5.000000", "min_balance": "1.500000",
                               "topups": "6.750000", "debits": "0.550000", "topup_count": 2,
                               "debit_count": 1, "open_calls": 1}
    assert balances["fresh"]["balance"] == "0.000000" and balances["fresh"]["topup_count"] == 0
    assert balances["post"]["prepaid"] is False and balances["post"]["balance"] == "3.000000"
    (only,) = fetch_balances(bare, CFG, "pre")
    assert only.available == Decimal("5.00")
