"""ClickHouse server back end (native protocol, clickhouse-driver).

Rows go in as one ``INSERT ... SELECT`` over an external table (data the native protocol sends
with a query, since long before 18.16) that clickhouse-driver encodes from numpy arrays
(``use_numpy``, a client setting of the query): see columnar.py. The SELECT converts to the
table's types, so nothing on the server (no staging table, no view) has to exist for it. A batch
with nothing to convert goes in as a plain columnar ``INSERT ... VALUES``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from clickhouse_driver import Client
from clickhouse_driver.errors import Error as DriverError

from .base import Store, StoreError
from .dialect import Dialect

if TYPE_CHECKING:
    from .columnar import Batch

# The name of the external table that carries one insert's columns; it lives for that query only.
_BATCH_TABLE = "_sipledger_batch"


class ClickHouseStore(Store):
    def __init__(self, host: str, port: int, user: str, password: str, database: str) -> None:
        self.url = f"clickhouse://{user}@{host}:{port}/{database}"
        self.database = database
        # lz4 trades CPU for bytes on the network. Over loopback there are none to save: compressing
        # (and the server decompressing) measured 15% of a CDR insert's time and 30% of an event's.
        self._conn = dict(host=host, port=port, user=user, password=password,
                          connect_timeout=3, send_receive_timeout=60,
                          compression=False if _loopback(host) else "lz4")
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

    def _insert_batch(self, table: str, batch: Batch) -> None:
        try:
            if batch.plain:
                # Nothing to convert (call_events on 18.16): the columns go straight into the table,
                # without the external table's extra copy and query, a few ms an insert. Strings and
                # integers only: the driver's plain columns take lists as they are, where its numpy
                # mode checks every string for NULL once more (9% of an event insert).
                names = ", ".join(f"`{c}`" for c in batch.columns)
                columns = [a if isinstance(a, list | tuple) else a.tolist()
                           for a in (batch.arrays[c] for c in batch.columns)]
                self._client.execute(f"INSERT INTO `{table}` ({names}) VALUES", columns, columnar=True,
                                     settings=self.dialect.insert_settings)
            else:
                data = {name: _wire_column(a) for name, a in batch.arrays.items()}
                external = {"name": _BATCH_TABLE, "structure": batch.structure, "data": data}
                self._client.execute(batch.insert_sql(table, _BATCH_TABLE), external_tables=[external],
                                     settings={"use_numpy": True, **self.dialect.insert_settings})
        except (DriverError, OSError, EOFError) as exc:
            raise StoreError(f"insert into {table} failed: {exc}") from exc

    def close(self) -> None:
        self._client.disconnect()


class _Strings:
    """A String column of the external table, for clickhouse-driver's numpy mode, without its NULL scan.

    The driver's numpy String column scans every value with ``pandas.isnull``, copies the array and
    replaces the NULLs before it calls ``tolist()`` and encodes; that was 20% of a CDR insert. None is
    already gone from these columns (build_batch sends a flag instead), so there is nothing to find.
    For an object that is neither an array, a list nor a scalar ``pandas.isnull`` answers a plain
    False, the copy is skipped, and ``tolist()`` hands the driver's C encoder the values as they are.
    tests/test_store_columnar.py checks the strings, NULLs and non-ASCII text on the 18.16 server.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Sequence[Any]) -> None:
        self._values = values

    def __len__(self) -> int:
        return len(self._values)

    def tolist(self) -> list[Any]:
        v = self._values
        return v if isinstance(v, list) else v.tolist() if hasattr(v, "tolist") else list(v)


@dataclass(frozen=True, slots=True)
class _WireColumn:
    """One column of the external table: the driver reads ``.values`` of each, as of a DataFrame's."""

    values: Any  # a numeric numpy array, or _Strings


def _wire_column(values: Any) -> _WireColumn:
    # Numeric columns are numpy arrays; strings come as a sequence or an object array.
    numeric = getattr(getattr(values, "dtype", None), "kind", "O") != "O"
    return _WireColumn(values if numeric else _Strings(values))


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: assume it is across a network
        return False
