"""CDR and call-event rows/s into ClickHouse 18.16 (native protocol) and chDB (target >= 300,000/s).

The rows are the pipeline's own: synthetic calls (pipeline/synthetic.py) through the Processor with
the example rate decks, their CDRs and events tiled to ``--cdrs`` CDRs (about five events each) with
unique ids. For each back end, measured in the same run (each figure the best of ``--runs``):

(a) ``Store.insert_columns`` of the columns the sink hands it (tables.ColumnBuffer.columns):
    numpy conversion, encoding, transfer and the server's insert; on the server also (a2), the same
    inserts over two connections in turn, as the pipeline's store writer flushes its two sinks;
(b) end to end, what the pipeline pays: ``StoreSink.add_cdr`` for every CDR dict, then ``flush()``;
(c) peer, the row-tuple path the sink used before: ``cdr_to_row`` tuples, inserted by the driver's
    generic ``INSERT ... VALUES`` (18.16) or as a DataFrame of row values read by ``Python()`` (chDB).
    Once from tuples already built (the peer of a), once including ``cdr_to_row`` (the peer of b).

Events go the same two ways (sink end to end; ``event_to_row`` + row tuples as the peer). Every
figure is at ``--batch`` rows an insert (each insert writes one part); ``--batch 5000`` is the
pipeline's default (``pipeline.batch_size``). The collector runs with the pipeline's settings
(pipeline/gc_policy.py). Starts the local ClickHouse 18.16 through the stack if it is not running.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from pipeline.gc_policy import settle_after_startup
from pipeline.processor import Processor
from pipeline.store_sink import StoreSink
from pipeline.synthetic import SyntheticSpec, generate
from sipledger import config
from sipledger.stack import clickhouse_server
from sipledger.store import Store, migrate, open_store
from sipledger.store.chdb_store import ChdbStore
from sipledger.store.clickhouse_store import ClickHouseStore
from sipledger.store.tables import CDR_COLUMNS, EVENT_COLUMNS, cdr_buffer, cdr_to_row, event_to_row

REPO = Path(__file__).resolve().parents[1]
TARGET = 300_000


def pipeline_outputs(calls: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """CDRs and call events of ``calls`` synthetic calls, rated with the example decks."""
    rates = REPO / "sipledger" / "data" / "rates"
    cfg = config.load(None, [f"pipeline.sell_rates={rates / 'sell.csv'}",
                             f"pipeline.buy_rates={rates / 'buy.csv'}"])
    proc = Processor.from_config(cfg)
    events = list(generate(SyntheticSpec(calls=calls, seed=11), verdict_after_ms=30_000))
    cdrs: list[dict[str, Any]] = []
    for e in events:
        proc.feed(e, validated=True)
        cdrs += proc.take().cdrs
    # workers store no heartbeats or verdicts
    return cdrs, [e for e in events if e["type"] not in ("node.heartbeat", "node.lost")]


def tiled(records: Sequence[dict[str, Any]], n: int, id_fields: Sequence[str]) -> list[dict[str, Any]]:
    """``n`` copies of ``records`` in turn, each copy's ids made unique."""
    out = []
    for i in range(n):
        r = records[i % len(records)]
        k = i // len(records)
        out.append(r if k == 0 else dict(r, **{f: f"{r[f]}~{k}" for f in id_fields}))
    return out


def chunks(seq: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [seq[i:i + size] for i in range(0, len(seq), size)]


def old_insert(store: Store, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
    """The row-tuple insert the stores did before the columnar path (the peer)."""
    names = ", ".join(f"`{c}`" for c in columns)
    if isinstance(store, ClickHouseStore):
        store._client.execute(f"INSERT INTO `{table}` ({names}) VALUES", list(rows))
        return
    assert isinstance(store, ChdbStore)
    # A DataFrame of the row values; Decimal as text (cast by the column type), nullable integers.
    data = {}
    for name, values in zip(columns, zip(*rows, strict=True), strict=True):
        sample = next((v for v in values if v is not None), None)
        if isinstance(sample, Decimal):
            data[name] = pd.Series([None if v is None else str(v) for v in values], dtype=object)
        elif isinstance(sample, bool):
            data[name] = pd.Series([None if v is None else int(v) for v in values], dtype="Int64")
        elif isinstance(sample, int):
            data[name] = pd.Series(values, dtype="Int64" if None in values else "int64")
        else:
            data[name] = pd.Series(values, dtype=object)
    frame = pd.DataFrame(data)  # noqa: F841 - read by name by chDB's Python() table function
    store._session.query(f"INSERT INTO `{table}` ({names}) SELECT * FROM Python(frame)")


def in_turn(stores: Sequence[Store], table: str, batches: Sequence[Any]) -> None:
    """Insert ``batches`` over ``stores`` (one connection each) in turn, each store's inserts in its own
    thread, as pipeline/store_writer.py flushes its sinks: one batch's encoding (under the interpreter
    lock) overlaps the server's insert of the batch before it."""
    pools = [ThreadPoolExecutor(max_workers=1) for _ in stores]
    try:
        pending = [pool.submit(store.insert_columns, table, columns)
                   for i, columns in enumerate(batches)
                   for store, pool in [(stores[i % len(stores)], pools[i % len(stores)])]]
        for fut in pending:
            fut.result()
    finally:
        for pool in pools:
            pool.shutdown()


def bench_store(store: Store, cdrs: list[dict[str, Any]], events: list[dict[str, Any]], batch: int,
                runs: int, twin: Store | None = None) -> None:
    n, m = len(cdrs), len(events)
    expected = {"sell": sum(Decimal(c["sell_cost"]) for c in cdrs),
                "margin": sum(Decimal(c["margin"]) for c in cdrs)}

    def check(table: str, rows: int) -> None:
        got = store.query(f"SELECT count() AS n FROM {table}")[0]["n"]
        assert got == rows, (table, got, rows)
        if table == "cdrs":  # exact, to the micro-unit
            sums = store.query("SELECT sum(sell_cost) AS sell, sum(margin) AS margin FROM cdrs")[0]
            assert sums == expected, (sums, expected)
        store.execute(f"TRUNCATE TABLE {table}")

    def measure(label: str, table: str, rows: int, fn: Callable[[], object]) -> float:
        best = 0.0
        for _ in range(runs):
            t = time.perf_counter()
            fn()
            best = max(best, rows / (time.perf_counter() - t))
            check(table, rows)
        print(f"  {label:<62} {best:>10,.0f} rows/s")
        return best

    def sink_columns(part: Sequence[dict[str, Any]]) -> dict[str, Any]:
        buffer = cdr_buffer()
        for c in part:
            buffer.add(c, 1)
        return buffer.columns(0, len(buffer))

    def sink(add: str, records: list[dict[str, Any]]) -> None:
        s = StoreSink(store, batch_size=batch)
        add_one = getattr(s, add)
        for part in chunks(records, batch):  # the pipeline flushes a batch at a time
            for r in part:
                add_one(r)
            assert s.flush()

    def sink_logged(records: list[tuple[dict[str, Any], bytes]]) -> None:
        # As the pipeline's drivers add events: with the bytes they came in as, stored as the payload.
        s = StoreSink(store, batch_size=batch)
        for part in chunks(records, batch):
            for event, raw in part:
                s.add_event(event, raw)
            assert s.flush()

    logged = [(e, orjson.dumps(e)) for e in events]
    built = [sink_columns(part) for part in chunks(cdrs, batch)]
    tuples = [[cdr_to_row(c, 1) for c in part] for part in chunks(cdrs, batch)]
    settle_after_startup()  # the inputs are frozen out of the collector's reach, as start-up objects
    a = measure("(a) Store.insert_columns, columns from the sink's buffer", "cdrs", n,
                lambda: [store.insert_columns("cdrs", c) for c in built])
    a2 = None
    if twin is not None:
        a2 = measure("(a2) the same over two connections in turn, as the store writer", "cdrs", n,
                lambda: in_turn((store, twin), "cdrs", built))
    b = measure("(b) StoreSink.add_cdr + flush, from CDR dicts", "cdrs", n, lambda: sink("add_cdr", cdrs))
    c_built = measure("(c) peer: row tuples already built, row insert (before)", "cdrs", n,
                      lambda: [old_insert(store, "cdrs", CDR_COLUMNS, t) for t in tuples])
    c_e2e = measure("(c) peer: cdr_to_row + row insert, from CDR dicts (before)", "cdrs", n,
                    lambda: [old_insert(store, "cdrs", CDR_COLUMNS, [cdr_to_row(c, 1) for c in part])
                             for part in chunks(cdrs, batch)])
    ev = measure("events: StoreSink.add_event + flush, from event dicts", "call_events", m,
                 lambda: sink("add_event", events))
    ev_logged = measure("events: add_event(event, raw) + flush, as the pipeline does",
                        "call_events", m, lambda: sink_logged(logged))
    ev_old = measure("events peer: event_to_row + row insert (before)", "call_events", m,
                     lambda: [old_insert(store, "call_events", EVENT_COLUMNS, [event_to_row(e) for e in part])
                              for part in chunks(events, batch)])
    gc.unfreeze()
    print(f"  (a) / (c) {a / c_built:.2f}x; (b) / (c) {b / c_e2e:.2f}x; events {ev / ev_old:.2f}x, "
          f"with the log's bytes {ev_logged / ev_old:.2f}x")
    two = f", (a2) {a2 / TARGET:.2f}x" if a2 is not None else ""
    print(f"  target {TARGET:,}: (a) {a / TARGET:.2f}x{two}, (b) {b / TARGET:.2f}x, "
          f"events {ev / TARGET:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cdrs", type=int, default=200_000)
    ap.add_argument("--batch", type=int, nargs="+", default=[50_000, 5_000],
                    help="rows an insert (the sink's batch_size); one set of figures each")
    ap.add_argument("--calls", type=int, default=20_000, help="synthetic calls behind the tiled rows")
    ap.add_argument("--runs", type=int, default=3, help="each figure is the best of this many runs")
    args = ap.parse_args()
    cdrs, events = pipeline_outputs(args.calls)
    events = tiled(events, round(len(events) / len(cdrs) * args.cdrs), ("event_id", "call_id"))
    cdrs = tiled(cdrs, args.cdrs, ("call_id",))
    print(f"{len(cdrs):,} CDRs ({len(CDR_COLUMNS)} columns) and {len(events):,} call events "
          f"from {args.calls:,} synthetic calls")

    rec, _ = clickhouse_server.up(REPO / ".stack")
    server = open_store(clickhouse_server.url(rec, "bench_insert"))
    with tempfile.TemporaryDirectory() as tmp:
        chdb = open_store(f"chdb://{tmp}/store")
        names = {server: f"ClickHouse {server.dialect.version} (clickhouse-driver, native protocol)",
                 chdb: f"chDB (ClickHouse {chdb.dialect.version} in process)"}
        # A second connection to the server (chDB allows one session per store path).
        twin = open_store(clickhouse_server.url(rec, "bench_insert"))
        for store, name in names.items():
            migrate(store)
            for batch in args.batch:
                print(f"{name}, {batch:,} rows an insert")
                bench_store(store, cdrs, events, batch, args.runs, twin if store is server else None)
        chdb.close()
        twin.close()
    server.execute("DROP DATABASE bench_insert")
    server.close()


if __name__ == "__main__":
    main()
