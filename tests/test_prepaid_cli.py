"""`sipledger balance`: top-ups into the log (one event per id), clear errors for bad input, and the
balances of a chDB store, including one the pipeline never wrote to; `sipledger route` shows the credit
limit (or the 402) a prepaid account's call would get."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from schemas.validation import validate_event
from sipledger.cli import main
from sipledger.eventlog import read_journal
from sipledger.store import migrate, open_store

RATES = """\
party,prefix,rate_per_minute,initial_increment,subsequent_increment,connection_fee,minimum_duration,currency,effective_from
acme,1555,1.00,6,6,0,0,USD,2026-01-01
"""


@pytest.fixture()
def cfg(tmp_path: Path) -> Path:
    (tmp_path / "rates.csv").write_text(RATES)
    path = tmp_path / "sipledger.toml"
    path.write_text(f"""
[events]
log = "file://{tmp_path}/log/events.jsonl"
[store]
url = "chdb://{tmp_path}/store"
[pipeline]
sell_rates = "rates.csv"
[[accounts]]
name = "acme"
ips = ["192.0.2.1"]
prepaid = true
min_balance = "1.00"
[[accounts]]
name = "post"
ips = ["192.0.2.2"]
[[gateways]]
name = "carrier"
host = "127.0.0.1"
port = 5090
probe = false
[[routes]]
prefix = "1555"
gateways = ["carrier"]
""")
    return path


def _run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, list(args))
    return res.exit_code, res.output


def test_topups_go_to_the_log_one_event_per_id(cfg: Path) -> None:
    code, out = _run("balance", "add", "acme", "25.00", "--id", "inv-1", "--note", "invoice 1",
                     "--config", str(cfg))
    assert code == 0 and "top-up inv-1 of 25.00 for account acme" in out, out
    assert _run("balance", "add", "acme", "25.00", "--id", "inv-1", "--config", str(cfg))[0] == 0  # a retry
    code, out = _run("balance", "add", "post", "3", "--json", "--config", str(cfg))
    assert code == 0
    generated = json.loads(out)["topup_id"]
    events = [json.loads(raw) for _, raw in read_journal(cfg.parent / "log" / "events.jsonl")]
    for e in events:
        validate_event(e)
    # The retry is the same event (same event_id): the pipeline drops it, the ledger counts inv-1 once.
    assert [(e["event_id"], e["account"], e["amount"]) for e in events] == [
        ("topup-inv-1", "acme", "25.00"), ("topup-inv-1", "acme", "25.00"),
        (f"topup-{generated}", "post", "3")]
    assert events[0]["note"] == "invoice 1" and events[0]["call_id"] == "account:acme"


@pytest.mark.parametrize(("args", "error"), [
    (["nobody", "5"], "no account 'nobody' in the configuration"),
    (["acme", "abc"], "amount 'abc' is not a number"),
    (["acme", "0"], "amount '0' must be positive"),
    (["acme", "1.1234567"], "more than 6 decimals"),
    (["acme", "5", "--id", "x" * 58], "--id must have 1 to 57 characters"),
])
def test_bad_topups_are_refused_and_nothing_is_written(cfg: Path, args: list[str], error: str) -> None:
    code, out = _run("balance", "add", *args, "--config", str(cfg))
    assert code == 1 and error in out, out
    assert not (cfg.parent / "log" / "events.jsonl").exists()


def test_balances_of_a_store(cfg: Path) -> None:
    code, out = _run("balance", "--config", str(cfg))
    assert code == 1 and "has no account_ledger table yet" in out, out  # never migrated: said, not 0
    with open_store(f"chdb://{cfg.parent}/store", str(cfg.parent)) as store:
        migrate(store)
        cols = ["account", "entry_id", "kind", "amount", "currency", "node", "ts_ms", "note", "version"]
        store.insert("account_ledger", cols, [
            ["acme", "topup:t1", "topup", Decimal("5"), "USD", "cli", 1, "", 1],
            ["acme", "call:c1", "debit", Decimal("0.6"), "USD", "n1", 2, "", 2],
            ["acme", "call:c2", "hold", Decimal("1.2"), "USD", "n1", 3, "", 3],
            ["acme", "topup:t1", "topup", Decimal("5"), "USD", "cli", 4, "", 4]])  # redelivered: once
    code, out = _run("balance", "--config", str(cfg))
    assert code == 0, out
    head, acme = out.splitlines()
    assert head.split()[:5] == ["account", "prepaid", "balance", "reserved", "available"]
    assert acme.split()[:8] == ["acme", "yes", "4.400000", "1.200000", "3.200000", "1.000000", "USD", "1"]
    code, out = _run("balance", "acme", "--json", "--config", str(cfg))
    (row,) = json.loads(out)
    assert (row["balance"], row["reserved"], row["available"], row["open_calls"]) == \
        ("4.400000", "1.200000", "3.200000", 1)
    code, out = _run("balance", "nobody", "--config", str(cfg))
    assert code == 1 and "no account 'nobody'" in out
    code, out = _run("balance", "--help")
    assert code == 0 and "balance add ACCOUNT AMOUNT" in out


def _route(cfg: Path, account: str) -> dict[str, Any]:
    code, out = _run("route", "15551234567", "--account", account, "--no-reports", "--format", "json",
                     "--config", str(cfg))
    assert code == 0, out
    return json.loads(out)["limits"]


def test_route_shows_the_credit_limit_or_the_refusal(cfg: Path) -> None:
    # No store yet: the route still shows, the balance is unknown (and no store is created for it).
    limits = _route(cfg, "acme")
    assert limits["credit"]["available"] is None and not (cfg.parent / "store").exists()
    assert _route(cfg, "post")["credit"] is None  # not prepaid
    cols = ["account", "entry_id", "kind", "amount", "currency", "node", "ts_ms", "note", "version"]
    with open_store(f"chdb://{cfg.parent}/store", str(cfg.parent)) as store:
        migrate(store)
        store.insert("account_ledger", cols, [["acme", "topup:t1", "topup", Decimal("3.2"), "USD", "cli", 1,
                                               "", 1]])
    credit = _route(cfg, "acme")["credit"]
    # 3.20 at 1.00/min 6/6 pays for 192 s exactly; the hold is what those 192 s cost.
    assert (credit["available"], credit["credit_limit_s"], credit["hold"], credit["refused"]) == \
        ("3.200000", 192, "3.200000", None)
    code, out = _run("route", "15551234567", "--account", "acme", "--no-reports", "--config", str(cfg))
    assert code == 0, out
    assert "credit (prepaid, available 3.200000, minimum 1.00): 192 s (hold 3.200000)" in out, out
    with open_store(f"chdb://{cfg.parent}/store", str(cfg.parent)) as store:
        store.insert("account_ledger", cols, [["acme", "call:c9", "hold", Decimal("2.5"), "USD", "n1", 2, "",
                                               2]])
    credit = _route(cfg, "acme")["credit"]
    assert credit["available"] == "0.700000" and credit["credit_limit_s"] is None
    assert credit["refused"].startswith("402 Insufficient Balance: account acme: available balance 0.700000")
