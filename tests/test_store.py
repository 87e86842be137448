"""The DDL and the CDR store on the real ClickHouse 18.16 server and on chDB."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from schemas.validation import validate_cdr
from sipledger.store import Store, StoreLockedError, migrate, open_store
from sipledger.store.cdr_export import fetch_cdrs
from sipledger.store.tables import CDR_COLUMNS, cdr_to_row

REPO = Path(__file__).resolve().parents[1]


def make_cdr(call_id: str, account: str = "acme", duration_ms: int = 65_400, zombie: bool = False,
             sell_cost: str = "0.011000", end: str = "2026-11-25T10:01:10.400Z") -> dict:
    cdr = {
        "call_id": call_id, "node": "n1", "account": account, "caller": "100", "callee": "4420",
        "source_ip": "127.0.0.1", "vendor": "carrier-a", "gateway": "127.0.0.1:5070",
        "setup_ts": "2026-11-25T10:00:00.000Z", "ring_ts": "2026-11-25T10:00:02.000Z",
        "answer_ts": "2026-11-25T10:00:05.000Z", "end_ts": end, "pdd_ms": 2000,
        "duration_ms": duration_ms, "verified_ms": 0 if zombie else duration_ms,
        "unverified_ms": duration_ms if zombie else 0, "billed_seconds": 66, "timer_mode": "no_timer",
        "session_expires": None, "effective_limit_s": 7200, "refresh_count": 0,
        "last_proof_of_life": "2026-11-25T10:00:05.000Z",
        "end_reason": "no_timer_limit" if zombie else "normal_caller_bye",
        "ended_by": "system" if zombie else "caller", "sip_status": None, "zombie": zombie,
        "sell_rate": "0.010000", "sell_cost": sell_cost, "buy_rate": "0.006000", "buy_cost": "0.006600",
        "margin": str(Decimal(sell_cost) - Decimal("0.006600")), "currency": "USD",
        "exposure_ms": duration_ms if zombie else 0, "exposure_open": False, "closed_by": "node",
        "rate_deck_version": "2026-11", "schema_version": 2,
    }
    validate_cdr(cdr)
    return cdr


@pytest.fixture(params=["chdb", "clickhouse-18.16"])
def store(request, tmp_path: Path) -> Iterator[Store]:
    if request.param == "chdb":
        s = open_store(f"chdb://{tmp_path}/store")
    else:
        stack = request.getfixturevalue("real_stack")
        db = f"t_{abs(hash(tmp_path)) % 10**8}"
        s = open_store(stack.clickhouse_url(db))
    migrate(s)
    yield s
    if request.param != "chdb":
        s.execute(f"DROP DATABASE IF EXISTS {s.database}")
    s.close()


def test_dialect_matches_server(store: Store) -> None:
    if store.url.startswith("chdb"):
        assert store.dialect.major >= 24 and store.dialect.has_low_cardinality
    else:
        assert store.dialect.version.startswith("18.16")
        assert not store.dialect.has_low_cardinality


def test_migrate_is_idempotent(store: Store) -> None:
    assert migrate(store) == ["001_call_events.sql", "002_cdrs.sql", "003_zombie_alerts.sql", "004_rates.sql",
                              "006_call_signalling.sql", "008_account_ledger.sql"]
    tables = {r["name"] for r in store.query("SELECT name FROM system.tables WHERE database = %(d)s",
                                             {"d": store.database})}
    assert {"call_events", "cdrs", "zombie_alerts", "rates"} <= tables


def test_cdr_round_trips_exactly_and_a_redelivered_cdr_reads_back_once(store: Store) -> None:
    cdr = make_cdr("call-1")
    store.insert("cdrs", CDR_COLUMNS, [cdr_to_row(cdr, version=1)])
    store.insert("cdrs", CDR_COLUMNS, [cdr_to_row(cdr, version=1)])  # crash before commit: redelivered
    back = fetch_cdrs(store)
    assert back == [cdr]
    validate_cdr(back[0])


def test_rerated_cdr_replaces_the_old_row(store: Store) -> None:
    store.insert("cdrs", CDR_COLUMNS, [cdr_to_row(make_cdr("call-1"), version=1)])
    store.insert("cdrs", CDR_COLUMNS, [cdr_to_row(make_cdr("call-1", sell_cost="0.022000"), version=2)])
    assert [c["sell_cost"] for c in fetch_cdrs(store)] == ["0.022000"]


REPORT = """
SELECT account,
       count() AS calls,
       sum(zombie) AS zombie_calls,
       sum(unverified_ms) AS unverified_ms,
       sum(sell_cost) AS sell_cost,
       min({TS_TO_DATETIME(end_ms)}) AS first_end
FROM cdrs FINAL
GROUP BY account
ORDER BY account
"""


def test_the_same_report_query_gives_the_same_answer_on_both(real_stack, tmp_path: Path) -> None:
    rows = [make_cdr(f"c{i}", account=("acme", "globex")[i % 2], zombie=i % 3 == 0,
                     sell_cost=f"0.0{i % 10}1000") for i in range(30)]
    answers = []
    chdb_store = open_store(f"chdb://{tmp_path}/cmp")
    server = open_store(real_stack.clickhouse_url("cmp_report"))
    for s in (chdb_store, server):
        migrate(s)
        s.insert("cdrs", CDR_COLUMNS, [cdr_to_row(c, 1) for c in rows])
        s.insert("cdrs", CDR_COLUMNS, [cdr_to_row(c, 1) for c in rows[:10]])  # redelivery
        result = s.query(s.render(REPORT))
        answers.append(result)
    server.execute("DROP DATABASE IF EXISTS cmp_report")
    server.close()
    chdb_store.close()
    assert answers[0] == answers[1]
    assert [r["calls"] for r in answers[0]] == [15, 15]
    assert sum(int(r["zombie_calls"]) for r in answers[0]) == 10
    assert sum(r["sell_cost"] for r in answers[0]) == sum(Decimal(c["sell_cost"]) for c in rows)


def test_second_process_is_told_who_holds_the_chdb_store(tmp_path: Path) -> None:
    path = tmp_path / "held"
    s = open_store(f"chdb://{path}")
    migrate(s)
    code = ("from sipledger.store import open_store, StoreLockedError\n"
            f"try:\n    open_store('chdb://{path}')\nexcept StoreLockedError as e:\n    print('LOCKED', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    s.close()
    assert "LOCKED" in out.stdout, out.stderr
    assert "held by process" in out.stdout
    # once released, the data is still there for the next process
    code2 = (f"from sipledger.store import open_store\ns = open_store('chdb://{path}')\n"
             "print(len(s.query('SELECT * FROM cdrs')))\n")
    out2 = subprocess.run([sys.executable, "-c", code2], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert out2.stdout.strip() == "0", out2.stderr


def test_locked_error_type_is_exported() -> None:
    assert issubclass(StoreLockedError, Exception)
