"""The faust worker's store writer process (pipeline/store_writer.py) against a real ClickHouse 18.16.

What the worker relies on: ``write`` returns only once every row is in ClickHouse, keeps waiting (never
answers early, never drops) while the server is down, and a dead child is an error, not a hang.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from decimal import Decimal
from typing import Any

import orjson
import pytest
from conftest import private_stack_dir
from test_store import make_cdr

from pipeline.store_writer import StoreWriterProcess
from pipeline.synthetic import SyntheticSpec, generate
from sipledger.stack import clickhouse_server, process
from sipledger.store import migrate, open_store

ALERT: dict[str, Any] = {
    "alert_id": "a-1", "kind": "enforcement_missed", "call_id": "w0", "node": "node-1", "account": "acme",
    "vendor": "carrier-a", "ran_ms": 7_205_000, "unverified_ms": 7_200_000, "estimated_cost": "2.400000",
    "currency": "USD", "message": "no_timer_limit deadline passed 5 s ago without call.terminated",
    "ts": "2026-11-25T12:00:05.000Z", "schema_version": 1,
}


def _events(calls: int) -> list[bytes]:
    events = generate(SyntheticSpec(calls=calls, seed=9))
    return [orjson.dumps(e) for e in events if e["type"] != "node.heartbeat"]


def _counts(url: str) -> dict[str, int]:
    store = open_store(url)
    try:
        return {t: int(store.query(f"SELECT count() AS n FROM {t} FINAL")[0]["n"])
                for t in ("call_events", "cdrs", "zombie_alerts")}
    finally:
        store.close()


def test_rows_are_in_clickhouse_when_write_returns(real_stack: Any) -> None:
    url = real_stack.clickhouse_url(f"writer_{os.getpid()}_{int(time.time())}")
    migrate(open_store(url))
    events = _events(200)
    cdrs = [orjson.dumps(make_cdr(f"w{i}")) for i in range(150)]
    writer = StoreWriterProcess(url, "/tmp", batch_size=500)
    writer.start()
    try:
        asyncio.run(writer.write(events, cdrs, [orjson.dumps(ALERT)]))
        assert _counts(url) == {"call_events": len(events), "cdrs": 150, "zombie_alerts": 1}
        store = open_store(url)
        row = store.query("SELECT sell_cost, end_ms FROM cdrs FINAL WHERE call_id = 'w7'")[0]
        first = orjson.loads(events[0])
        payload = store.query(f"SELECT payload FROM call_events FINAL WHERE event_id = '{first['event_id']}'")
        store.close()
        assert [r["payload"] for r in payload] == [events[0].decode()]  # the log's own bytes
        assert row["sell_cost"] == Decimal("0.011000") and row["end_ms"] == 1_795_600_870_400
        assert writer.written["call_events"] == len(events)
        assert (writer.cpu_seconds() or 0) > 0
    finally:
        writer.close()


def test_write_waits_out_a_clickhouse_outage_and_stores_everything_once() -> None:
    stack_dir = private_stack_dir("writer")
    try:
        rec, _ = clickhouse_server.up(stack_dir)
        url = clickhouse_server.url(rec, "writertest")
        migrate(open_store(url))
        writer = StoreWriterProcess(url, "/tmp", batch_size=100)
        writer.start()

        async def scenario() -> None:
            await writer.write(_events(20), [orjson.dumps(make_cdr("before"))], [])
            process.stop(stack_dir, clickhouse_server.NAME, grace=5)
            pending = asyncio.ensure_future(
                writer.write([], [orjson.dumps(make_cdr(f"during{i}")) for i in range(30)], []))
            await asyncio.sleep(3)
            assert not pending.done(), "the writer answered while ClickHouse was down"
            _, started = clickhouse_server.up(stack_dir, port=rec.port)
            assert started
            await asyncio.wait_for(pending, timeout=60)

        try:
            asyncio.run(scenario())
        finally:
            writer.close()
        counts = _counts(url)
        assert counts["cdrs"] == 31
        store = open_store(url)
        physical = int(store.query("SELECT count() AS n FROM cdrs")[0]["n"])
        store.close()
        assert physical == 31, "a row was written twice"
    finally:
        process.stop(stack_dir, clickhouse_server.NAME, grace=5)
        shutil.rmtree(stack_dir, ignore_errors=True)


def test_a_dead_writer_is_an_error_not_a_hang(real_stack: Any) -> None:
    url = real_stack.clickhouse_url("writer_dead")
    migrate(open_store(url))
    writer = StoreWriterProcess(url, "/tmp", batch_size=100)
    writer.start()
    try:
        asyncio.run(writer.write([], [orjson.dumps(make_cdr("x"))], []))
        assert writer._proc is not None and writer._proc.pid is not None
        os.kill(writer._proc.pid, signal.SIGKILL)
        writer._proc.join(timeout=10)
        with pytest.raises(RuntimeError, match="died"):
            asyncio.run(asyncio.wait_for(writer.write([], [orjson.dumps(make_cdr("y"))], []), timeout=30))
    finally:
        writer.close()


def test_closing_the_pipe_ends_the_child(real_stack: Any) -> None:
    writer = StoreWriterProcess(real_stack.clickhouse_url("writer_close"), "/tmp", batch_size=100)
    writer.start()
    proc = writer._proc
    assert proc is not None and proc.is_alive()
    writer.close()
    assert not proc.is_alive() and proc.exitcode == 0
