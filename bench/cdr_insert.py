"""CDR rows/s into ClickHouse 18.16 (native protocol) and chDB, by insert method (target >= 300,000/s).

Starts the local ClickHouse 18.16 server through the stack if it is not running. Each method is a
peer of the others in the same run; the ratio is against the sink's default for that store.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from sipledger.stack import clickhouse_server
from sipledger.store import migrate, open_store
from sipledger.store.tables import CDR_COLUMNS, cdr_to_row

REPO = Path(__file__).resolve().parents[1]


def sample_rows(n: int) -> list[tuple]:
    base = {
        "call_id": "",
        "node": "node-1",
        "account": "acme",
        "caller": "+15550001",
        "callee": "442071234567",
        "source_ip": "10.0.0.1",
        "vendor": "carrier-a",
        "gateway": "192.0.2.1:5060",
        "setup_ts": "2026-11-25T10:00:00.000Z",
        "ring_ts": "2026-11-25T10:00:01.500Z",
        "answer_ts": "2026-11-25T10:00:04.000Z",
        "end_ts": "2026-11-25T10:01:09.400Z",
        "pdd_ms": 1500,
        "duration_ms": 65_400,
        "verified_ms": 65_400,
        "unverified_ms": 0,
        "billed_seconds": 66,
        "timer_mode": "session_timer",
        "session_expires": 600,
        "effective_limit_s": None,
        "refresh_count": 1,
        "last_proof_of_life": "2026-11-25T10:01:09.400Z",
        "end_reason": "normal_caller_bye",
        "ended_by": "caller",
        "sip_status": None,
        "zombie": False,
        "sell_rate": "0.020000",
        "sell_cost": "0.022000",
        "buy_rate": "0.012000",
        "buy_cost": "0.013080",
        "margin": "0.008920",
        "currency": "USD",
        "rate_deck_version": "sell/buy",
        "schema_version": 1,
    }
    template = cdr_to_row(base, 1)
    return [(f"bench-{i:09d}", *template[1:]) for i in range(n)]


def timed(label: str, n: int, fn) -> float:
    t = time.perf_counter()
    fn()
    rate = n / (time.perf_counter() - t)
    print(f"  {label:<52} {rate:>10,.0f} rows/s")
    return rate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    args = ap.parse_args()
    rows = sample_rows(args.rows)
    n = len(rows)
    cols = list(CDR_COLUMNS)
    print(f"{n:,} CDR rows of {len(cols)} columns")

    rec, _ = clickhouse_server.up(REPO / ".stack")
    server = open_store(clickhouse_server.url(rec, "bench_insert"))
    migrate(server)
    server.execute("TRUNCATE TABLE cdrs")
    print(f"ClickHouse {server.dialect.version} (clickhouse-driver, native protocol)")
    client = server._client  # the driver's own insert paths, for comparison with the sink's
    default = timed("Store.insert (sink default: row tuples)", n, lambda: server.insert("cdrs", cols, rows))
    columns = [list(c) for c in zip(*rows, strict=True)]
    col_sql = f"INSERT INTO cdrs ({', '.join(cols)}) VALUES"
    colr = timed("columnar lists (columnar=True)", n, lambda: client.execute(col_sql, columns, columnar=True))
    print(f"  columnar / default: {colr / default:.2f}x; target 300,000: {max(default, colr) / 300_000:.2f}x")
    server.execute("DROP DATABASE bench_insert")
    server.close()

    with tempfile.TemporaryDirectory() as tmp:
        chdb = open_store(f"chdb://{tmp}/store")
        migrate(chdb)
        print(f"chDB (ClickHouse {chdb.dialect.version} in process)")
        default = timed(
            "Store.insert (sink default: Python(DataFrame))", n, lambda: chdb.insert("cdrs", cols, rows)
        )
        import json

        body = "\n".join(json.dumps(dict(zip(cols, r, strict=True)), default=str) for r in rows)
        sess = chdb._session
        jsonl = timed(
            "peer: INSERT ... FORMAT JSONEachRow",
            n,
            lambda: sess.query(f"INSERT INTO cdrs ({', '.join(cols)}) FORMAT JSONEachRow\n{body}"),
        )
        count = chdb.query("SELECT count() AS n FROM cdrs")[0]["n"]
        assert count == 2 * n, count
        print(f"  default / JSONEachRow: {default / jsonl:.2f}x; target 300,000: {default / 300_000:.2f}x")
        check = chdb.query("SELECT sum(sell_cost) AS s FROM cdrs")[0]["s"]
        assert check == Decimal("0.022") * 2 * n, check
        chdb.close()


if __name__ == "__main__":
    main()
