"""Store API shared by the ClickHouse server and chDB back ends, chosen by URL."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlparse

from .dialect import Dialect


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

    @abc.abstractmethod
    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> int:
        """Insert rows (tuples in ``columns`` order); returns the count acknowledged by the server."""

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
