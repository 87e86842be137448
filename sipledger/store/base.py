"""Store API shared by the ClickHouse server and chDB back ends, chosen by URL."""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from .dialect import Dialect

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .columnar import Batch, ColumnValues


class StoreError(RuntimeError):
    pass


class StoreLockedError(StoreError):
    """The embedded store is held by another process (chDB allows one per path)."""


class Store(abc.ABC):
    url: str
    database: str
    dialect: Dialect

    @abc.abstractmethod
    def execute(self, sql: str) -> None:
        """Run a statement that returns nothing (DDL, INSERT ... SELECT)."""

    @abc.abstractmethod
    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Rows as dicts; Decimal columns come back as decimal.Decimal on every back end."""

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> int:
        """Insert rows (tuples in ``columns`` order); returns the count acknowledged by the server."""
        if not rows:
            return 0
        return self.insert_columns(table, dict(zip(columns, zip(*rows, strict=True), strict=True)))

    def insert_columns(self, table: str, columns: Mapping[str, ColumnValues]) -> int:
        """Insert whole columns (table column -> values, all one length) in one statement; returns
        the rows acknowledged by the server.

        Values are in the table's terms: str, int (bool as 0/1), None where the column is Nullable.
        Decimal columns take Decimal, decimal strings or ints, or exact integer ``Units``; numpy
        arrays are taken as they are, masked arrays for NULLs. Values a column cannot hold raise
        ValueError or TypeError; StoreError means the store did not take the rows.
        """
        from .columnar import build_batch  # numpy: only for stores that write

        if not columns:
            return 0
        try:
            types = self.column_types(table)
            unknown = [c for c in columns if c not in types]
            if unknown:
                raise StoreError(f"{self.database}.{table} has no column {', '.join(unknown)}: apply the DDL "
                                 "(`sipledger stack migrate`)")
            batch = build_batch(table, types, columns)
            if batch.rows:
                self._insert_batch(table, batch)
        except StoreError:
            if self._types_by_table is not None:
                self._types_by_table.pop(table, None)  # asked again next time: a migration may change them
            raise
        return batch.rows

    @abc.abstractmethod
    def _insert_batch(self, table: str, batch: Batch) -> None:
        """Run ``batch.insert_sql`` over the batch's wire table; acknowledged when this returns."""

    _types_by_table: dict[str, dict[str, str]] | None = None  # an instance's own dict once it asks

    def column_types(self, table: str) -> dict[str, str]:
        """The table's column types as the server names them, asked once per store and table."""
        if self._types_by_table is None:
            self._types_by_table = {}
        types = self._types_by_table.get(table)
        if types is None:
            rows = self.query("SELECT name, type FROM system.columns WHERE database = %(database)s "
                              "AND table = %(table)s", {"database": self.database, "table": table})
            if not rows:
                raise StoreError(f"no table {self.database}.{table}: apply the DDL "
                                 "(`sipledger stack migrate`)")
            types = self._types_by_table[table] = {r["name"]: r["type"] for r in rows}
        return types

    def forget_column_types(self) -> None:
        """Ask the server again on the next insert (after a migration changed a table)."""
        self._types_by_table = None

    def close(self) -> None:  # noqa: B027 - optional for back ends
        pass

    def render(self, sql: str) -> str:
        return self.dialect.render(sql)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store(url: str, base_dir: str | None = None) -> Store:
    """``chdb:///abs/path``, ``chdb://rel/path`` or ``clickhouse://user:pass@host:port/db``."""
    parsed = urlparse(url)
    if parsed.scheme == "chdb":
        from .chdb_store import ChdbStore

        path = unquote((parsed.netloc or "") + parsed.path)
        if not path:
            raise StoreError(f"chdb URL needs a path: {url}")
        if base_dir and not path.startswith("/"):
            path = f"{base_dir.rstrip('/')}/{path}"
        return ChdbStore(path)
    if parsed.scheme == "clickhouse":
        from .clickhouse_store import ClickHouseStore

        return ClickHouseStore(
            host=parsed.hostname or "127.0.0.1", port=parsed.port or 9000,
            user=unquote(parsed.username or "default"), password=unquote(parsed.password or ""),
            database=(parsed.path or "/sipledger").strip("/") or "sipledger",
        )
    raise StoreError(f"unknown store URL scheme {parsed.scheme!r} in {url!r}: use chdb:// or clickhouse://")


class StoreHandle:
    """A store a writer was given, or one it opens on first use from a factory. One it opened is closed
    after a failure (``drop``), so the next ``get`` reconnects; a given one is the giver's to keep."""

    __slots__ = ("_factory", "_store")

    def __init__(self, store: Store | Callable[[], Store]) -> None:
        self._factory = store if callable(store) and not isinstance(store, Store) else None
        self._store: Store | None = store if isinstance(store, Store) else None

    def get(self) -> Store:
        if self._store is None:
            assert self._factory is not None
            self._store = self._factory()
        return self._store

    def drop(self) -> None:
        if self._factory is not None and self._store is not None:
            try:
                self._store.close()
            except Exception:
                log.debug("closing the store failed", exc_info=True)
            self._store = None
