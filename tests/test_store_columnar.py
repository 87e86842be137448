"""Columnar inserts (Store.insert_columns, the sink's column buffers) on ClickHouse 18.16 and chDB:
what goes in reads back exactly, NULL stays NULL, and values a column cannot hold are refused
before anything reaches the server."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from test_store import make_cdr
from test_store import store as store  # the fixture: one store per back end

from pipeline.processor import Processor
from pipeline.store_sink import StoreSink
from pipeline.synthetic import SyntheticSpec, generate
from schemas.validation import validate_cdr
from sipledger import config
from sipledger.store import Store, StoreError
from sipledger.store.cdr_export import fetch_cdrs
from sipledger.store.columnar import Units
from sipledger.store.dialect import Dialect
from sipledger.store.parse import ts_to_ms
from sipledger.store.tables import ALERT_COLUMNS, CDR_COLUMNS, cdr_buffer, event_payload


@pytest.fixture(scope="module")
def pipeline_outputs() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """CDRs, alerts and events of synthetic calls through the Processor with the example decks."""
    cfg = config.load(None, ["pipeline.sell_rates=sipledger/data/rates/sell.csv",
                             "pipeline.buy_rates=sipledger/data/rates/buy.csv"])
    proc = Processor.from_config(cfg)
    cdrs, alerts, events = [], [], []
    for e in generate(SyntheticSpec(calls=300, seed=5), verdict_after_ms=30_000):
        proc.feed(e, validated=True)
        if e["type"] not in ("node.heartbeat", "node.lost"):
            events.append(e)
        out = proc.take()
        cdrs += out.cdrs
        alerts += out.alerts
    return cdrs, alerts, events


def edge_cdrs() -> list[dict[str, Any]]:
    """Money at the ends of Decimal(18, 6), negative margins, unrated calls (NULL rates)."""
    cases = [
        {"sell_rate": "999999999999.999999", "sell_cost": "999999999999.999999",
         "margin": "999999999999.993399"},
        {"sell_rate": None, "buy_rate": None, "sell_cost": "0.000000", "buy_cost": "0.000000",
         "margin": "0.000000"},
        {"sell_cost": "0.000001", "buy_cost": "0.006600", "margin": "-0.006599", "sip_status": 487},
        {"buy_cost": "999999999999.999999", "sell_cost": "0.000000", "margin": "-999999999999.999999"},
    ]
    out = []
    for i, case in enumerate(cases):
        cdr = dict(make_cdr(f"edge-{i}"), **case)
        validate_cdr(cdr)
        out.append(cdr)
    return out


def test_the_pipelines_rows_read_back_exactly_through_the_sink(store: Store, pipeline_outputs) -> None:
    cdrs, alerts, events = pipeline_outputs
    cdrs = cdrs + edge_cdrs()
    assert any(c["answer_ts"] is None for c in cdrs) and any(c["sip_status"] is not None for c in cdrs)
    sink = StoreSink(store, batch_size=97)  # several inserts, the last one short
    for c in cdrs:
        sink.add_cdr(c, version=1)
    for a in alerts:
        sink.add_alert(a)
    for e in events:
        sink.add_event(e)
    assert sink.flush() and sink.pending() == 0
    assert sink.written == {"cdrs": len(cdrs), "zombie_alerts": len(alerts), "call_events": len(events),
                            "account_ledger": 0}

    assert fetch_cdrs(store) == sorted(cdrs, key=lambda c: (ts_to_ms(c["end_ts"]), c["call_id"]))
    stored = store.query("SELECT payload, ts_ms FROM call_events FINAL ORDER BY event_id")
    by_id = sorted(events, key=lambda e: e["event_id"])
    assert [r["payload"] for r in stored] == [event_payload(e) for e in by_id]
    assert [r["ts_ms"] for r in stored] == [ts_to_ms(e["ts"]) for e in by_id]
    assert alerts, "the synthetic mix has zombies"
    rows = store.query(f"SELECT {', '.join(ALERT_COLUMNS)} FROM zombie_alerts FINAL ORDER BY alert_id")
    for row, alert in zip(rows, sorted(alerts, key=lambda a: a["alert_id"]), strict=True):
        assert row["estimated_cost"] == Decimal(alert["estimated_cost"])
        assert row["ts_ms"] == ts_to_ms(alert["ts"])
        assert {k: row[k] for k in ("alert_id", "kind", "call_id", "ran_ms", "message")} == \
            {k: alert[k] for k in ("alert_id", "kind", "call_id", "ran_ms", "message")}


def test_null_money_stays_null_and_zero_stays_zero(store: Store) -> None:
    store.insert_columns("cdrs", _columns([dict(make_cdr("n1"), sell_rate=None), make_cdr("n2")]))
    rows = store.query("SELECT call_id, sell_rate, isNull(sell_rate) AS missing FROM cdrs ORDER BY call_id")
    assert [(r["call_id"], r["sell_rate"], r["missing"]) for r in rows] == \
        [("n1", None, 1), ("n2", Decimal("0.010000"), 0)]


def test_text_beyond_ascii_reads_back_as_written(store: Store) -> None:
    # Caller display names and carrier names come from SIP headers in UTF-8.
    texts = {"caller": "Zoë Ørsted <sip:+4930123@ü.example>", "callee": "☎ +81 3-1234", "gateway": "gw-Łódź"}
    cdrs = [dict(make_cdr("utf8"), **texts), make_cdr("plain")]
    store.insert_columns("cdrs", _columns(cdrs))
    rows = store.query("SELECT call_id, caller, callee, gateway FROM cdrs ORDER BY call_id")
    assert [{k: r[k] for k in ("call_id", *texts)} for r in rows] == \
        [{k: c[k] for k in ("call_id", *texts)} for c in sorted(cdrs, key=lambda c: c["call_id"])]


def _columns(cdrs: list[dict[str, Any]]) -> dict[str, Any]:
    buffer = cdr_buffer()
    for c in cdrs:
        buffer.add(c, 1)
    return buffer.columns(0, len(buffer))


@pytest.mark.parametrize(("column", "values", "error"), [
    ("node", ["n", None], ValueError),  # NULL in a column that is not Nullable
    ("end_reason", ["busy", "hung_up"], ValueError),  # not a name of the Enum
    ("duration_ms", [1, 2.5], TypeError),  # a float would be truncated
    ("duration_ms", [1, -1], ValueError),  # UInt64
    ("sip_status", [200, 70_000], ValueError),  # UInt16: a cast would wrap it
    ("sell_cost", ["0.0220001", "1.000000"], ValueError),  # more than 6 decimals
    ("sell_cost", [Units(np.array([10**18, 1]), 6)], ValueError),  # beyond Decimal(18, 6)
    ("sell_cost", [Units(np.array([15, 1]), 7)], ValueError),  # 0.0000015 would round
])
def test_values_a_column_cannot_hold_are_refused_before_the_insert(store: Store, column: str, values: list,
                                                                  error: type[Exception]) -> None:
    columns = _columns([make_cdr("a"), make_cdr("b")])
    columns[column] = values[0] if isinstance(values[0], Units) else values
    with pytest.raises(error):
        store.insert_columns("cdrs", columns)
    assert store.query("SELECT count() AS n FROM cdrs")[0]["n"] == 0


def test_units_at_another_scale_are_rescaled_exactly(store: Store) -> None:
    columns = _columns([make_cdr("a"), make_cdr("b")])
    columns["sell_cost"] = Units(np.array([1, -25]), 2)  # 0.01 and -0.25
    columns["buy_cost"] = Units(np.ma.MaskedArray([7_000_000, 7_000_000], [False, False]), 9)  # 0.007
    store.insert_columns("cdrs", columns)
    rows = store.query("SELECT sell_cost, buy_cost FROM cdrs ORDER BY call_id")
    assert [(r["sell_cost"], r["buy_cost"]) for r in rows] == [(Decimal("0.01"), Decimal("0.007")),
                                                              (Decimal("-0.25"), Decimal("0.007"))]


def test_a_schema_that_does_not_match_is_a_store_error(store: Store) -> None:
    with pytest.raises(StoreError, match="no table"):
        store.insert_columns("no_such_table", {"a": [1]})
    with pytest.raises(StoreError, match="no column"):
        store.insert_columns("cdrs", dict(_columns([make_cdr("a")]), surplus=[1]))


def test_legacy_row_inserts_take_the_columnar_path(store: Store) -> None:
    from sipledger.store.tables import cdr_to_row

    cdr = dict(make_cdr("legacy"), sell_rate=None, margin="-0.000001")
    assert store.insert("cdrs", CDR_COLUMNS, [cdr_to_row(cdr, 3)]) == 1
    assert fetch_cdrs(store) == [cdr]


def test_a_record_without_a_field_leaves_the_buffer_aligned() -> None:
    buffer = cdr_buffer()
    buffer.add(make_cdr("a"), 1)
    broken = make_cdr("b")
    del broken["margin"]
    with pytest.raises(KeyError):
        buffer.add(broken, 1)
    buffer.add(make_cdr("c"), 1)
    columns = buffer.columns(0, len(buffer))
    assert len(buffer) == 2 and columns["call_id"] == ["a", "c"]
    assert {len(v.values) if isinstance(v, Units) else len(v) for v in columns.values()} == {2}


@pytest.mark.parametrize(("version", "settings"), [("18.16.1", {}), ("26.9.2.1", {"optimize_on_insert": 0})])
def test_insert_settings_by_version(version: str, settings: dict[str, int]) -> None:
    assert Dialect.from_version(version).insert_settings == settings


def test_only_a_batch_with_nothing_to_convert_is_plain() -> None:
    from sipledger.store.columnar import build_batch

    events_1816 = {"event_id": "String", "seq": "UInt32", "type": "String", "ts_ms": "UInt64"}
    columns = {"event_id": ["e1"], "seq": [1], "type": ["call.setup"], "ts_ms": [1]}
    assert build_batch("call_events", events_1816, columns).plain
    current = dict(events_1816, type="LowCardinality(String)")  # converted by the INSERT ... SELECT
    assert not build_batch("call_events", current, columns).plain
    nullable = dict(events_1816, seq="Nullable(UInt32)")
    assert not build_batch("call_events", nullable, columns).plain
    assert not build_batch("t", {"d": "Decimal(18, 6)"}, {"d": ["1.5"]}).plain
