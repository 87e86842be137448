"""ClickHouse server back end (native protocol, clickhouse-driver)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from clickhouse_driver import Client
from clickhouse_driver.errors import Error as DriverError

from .base import Store, StoreError
from .dialect import Dialect


class ClickHouseStore(Store):
    def __init__(self, host: str, port: int, user: str, password: str, database: str) -> None:
        self.url = f"clickhouse://{user}@{host}:{port}/{database}"
        self.database = database
        self._conn = dict(host=host, port=port, user=user, password=password,
                          connect_timeout=3, send_receive_timeout=60, compression="lz4")
        try:
            boot = Client(**self._conn)
            boot.execute(f"CREATE DATABASE IF NOT EXISTS `{database}`")
            version = boot.execute("SELECT version()")[0][0]
            boot.disconnect()
        except (DriverError, OSError, EOFError) as exc:
            raise StoreError(f"cannot reach ClickHouse at {host}:{port}: {exc}") from exc
        self.dialect = Dialect.from_version(version)
        self._client = Client(database=database, **self._conn)

    def execute(self, sql: str) -> None:
        try:
            self._client.execute(sql)
        except (DriverError, OSError, EOFError) as exc:
            raise StoreError(f"{exc}\nwhile running: {sql[:300]}") from exc

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        try:
            rows, cols = self._client.execute(sql, params or {}, with_column_types=True)
        except (DriverError, OSError, EOFError) as exc:
            raise StoreError(f"{exc}\nwhile running: {sql[:300]}") from exc
        names = [c[0] for c in cols]
        naive_dt = [i for i, (_, t) in enumerate(cols) if "DateTime" in t]
        out = [dict(zip(names, r, strict=True)) for r in rows]
        if naive_dt:
            for row in out:
                for i in naive_dt:
                    v = row[names[i]]
                    if isinstance(v, datetime) and v.tzinfo is None:
                        row[names[i]] = v.replace(tzinfo=UTC)
        return out

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> int:
        if not rows:
            return 0
        cols = ", ".join(f"`{c}`" for c in columns)
        try:
            return int(self._client.execute(f"INSERT INTO `{table}` ({cols}) VALUES", list(rows)))
        except (DriverError, OSError, EOFError) as exc:
            raise StoreError(f"insert into {table} failed: {exc}") from exc

    def close(self) -> None:
        self._client.disconnect()
