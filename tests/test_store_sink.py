"""The store sink when ClickHouse 18.16 goes away and comes back: nothing lost, nothing doubled."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import private_stack_dir
from test_store import make_cdr

from pipeline.store_sink import StoreSink
from sipledger.stack import clickhouse_server, process
from sipledger.store import migrate, open_store
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
