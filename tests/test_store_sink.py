"""The store sink when ClickHouse 18.16 goes away and comes back: nothing lost, nothing doubled; and
when a row holds a value no column can: an error from flush, the rows kept."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import private_stack_dir
from test_store import make_cdr

from pipeline.store_sink import StoreSink
from sipledger.stack import clickhouse_server, process
from sipledger.store import Store, StoreError, migrate, open_store
from sipledger.store.cdr_export import fetch_cdrs

REPO = Path(__file__).resolve().parents[1]


def test_sink_backs_off_keeps_rows_and_shows_lag_while_clickhouse_is_down() -> None:
    stack_dir = private_stack_dir("sink")
    try:
        rec, _ = clickhouse_server.up(stack_dir)
        url = clickhouse_server.url(rec, "sinktest")
        migrate(open_store(url))
        clock = [0.0]
        sink = StoreSink(lambda: open_store(url), batch_size=100, clock=lambda: clock[0])
        for i in range(50):
            sink.add_cdr(make_cdr(f"s{i}"), version=1)
        assert sink.flush()
        assert sink.lag().pending_rows == 0

        process.stop(stack_dir, clickhouse_server.NAME, grace=5)  # the server dies
        for i in range(50, 120):
            sink.add_cdr(make_cdr(f"s{i}"), version=1)
        clock[0] = 1.0
        assert not sink.flush()
        lag = sink.lag()
        assert lag.pending_rows == 70 and lag.failures == 1 and lag.last_error
        clock[0] = 1.1
        assert not sink.flush()  # still backing off: not even tried
        assert sink.lag().failures == 1
        clock[0] = 3.0
        assert not sink.flush()
        assert sink.lag().failures == 2 and sink.lag().oldest_pending_s == 3.0  # rows queued at t=0

        _rec2, started = clickhouse_server.up(stack_dir, port=rec.port)  # back, same data
        assert started
        clock[0] = 60.0
        assert sink.flush()
        assert sink.lag().pending_rows == 0 and sink.lag().failures == 0
        store = open_store(url)
        ids = [c["call_id"] for c in fetch_cdrs(store)]
        assert sorted(ids) == sorted(f"s{i}" for i in range(120))
        store.close()
    finally:
        process.stop(stack_dir, clickhouse_server.NAME, grace=5)
        shutil.rmtree(stack_dir, ignore_errors=True)


def test_a_value_no_column_can_hold_raises_from_flush_and_keeps_the_rows(tmp_path: Path) -> None:
    store = open_store(f"chdb://{tmp_path}/store")
    migrate(store)
    sink = StoreSink(store, batch_size=10)
    for i in range(3):
        sink.add_cdr(make_cdr(f"ok{i}"), version=1)
    sink.add_cdr(dict(make_cdr("bad"), sell_cost="0.0220001"), version=1)  # would round: refused
    with pytest.raises(ValueError, match="sell_cost"):
        sink.flush()
    assert sink.pending() == 4 and sink.written["cdrs"] == 0
    assert store.query("SELECT count() AS n FROM cdrs")[0]["n"] == 0
    store.close()


class _FlakyStore(Store):
    """Takes inserts into memory; fails the inserts whose numbers are in ``fail``."""

    url, database = "memory://", "memory"

    def __init__(self, fail: set[int]) -> None:
        self.fail, self.calls, self.rows = fail, 0, []

    def execute(self, sql: str) -> None:
        pass

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return []

    def insert_columns(self, table: str, columns: Mapping[str, Any]) -> int:
        self.calls += 1
        if self.calls in self.fail:
            raise StoreError("insert failed")
        self.rows += columns["call_id"]
        return len(columns["call_id"])

    def _insert_batch(self, table: str, batch: Any) -> None:
        raise AssertionError("not reached")


def test_a_failure_mid_flush_keeps_exactly_the_rows_not_yet_stored() -> None:
    store = _FlakyStore(fail={3})
    clock = [0.0]
    sink = StoreSink(store, batch_size=4, clock=lambda: clock[0])
    for i in range(10):
        sink.add_cdr(make_cdr(f"c{i}"), version=1)
    assert not sink.flush()  # inserts 1 and 2 stored 8 rows, insert 3 failed
    assert sink.pending() == 2 and sink.written["cdrs"] == 8 and sink.lag().failures == 1
    clock[0] = 60.0
    assert sink.flush()
    assert store.rows == [f"c{i}" for i in range(10)]  # each once, in order
