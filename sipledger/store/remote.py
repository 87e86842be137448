"""Read queries served by the process that holds an embedded (chDB) store.

chDB allows one process per store path. While the embedded pipeline runs, it serves
read-only SQL on a loopback HTTP endpoint recorded in the store's owner.json; CLI
readers (`cdrs`, `report`, `calls`, notebooks) use it transparently through
``open_reader``. Values keep their types across the wire (Decimal, datetime, date).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from .base import Store, StoreError, StoreLockedError, open_store
from .dialect import Dialect

if TYPE_CHECKING:
    from .columnar import Batch, ColumnValues


def encode_value(v: Any) -> Any:
    if isinstance(v, Decimal):
        return {"$dec": str(v)}
    if isinstance(v, datetime):
        return {"$dt": v.isoformat()}
    if isinstance(v, date):
        return {"$date": v.isoformat()}
    raise TypeError(f"cannot encode {type(v).__name__}")


def decode_value(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        if "$dec" in obj:
            return Decimal(obj["$dec"])
        if "$dt" in obj:
            return datetime.fromisoformat(obj["$dt"])
        if "$date" in obj:
            return date.fromisoformat(obj["$date"])
    return obj


class RemoteStore(Store):
    def __init__(self, endpoint: str, owner_pid: int, url: str) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.url = url
        self.database = "sipledger"
        self.owner_pid = owner_pid
        info = self._call("GET", "/info")
        self.dialect = Dialect.from_version(info["version"])

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(self.endpoint + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return json.loads(resp.read(), object_hook=decode_value)
        except urllib.error.HTTPError as exc:
            raise StoreError(exc.read().decode(errors="replace")) from None
        except (urllib.error.URLError, OSError) as exc:
            raise StoreError(f"the process {self.owner_pid} holding {self.url} does not answer at "
                             f"{self.endpoint}: {exc}") from None

    def _read_only(self) -> StoreError:
        return StoreError(f"{self.url} is held by process {self.owner_pid}; only read queries are served")

    def execute(self, sql: str) -> None:
        raise self._read_only()

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return self._call("POST", "/query", {"sql": sql, "params": params or {}})["rows"]

    def insert_columns(self, table: str, columns: Mapping[str, ColumnValues]) -> int:
        raise self._read_only()

    def _insert_batch(self, table: str, batch: Batch) -> None:
        raise self._read_only()

    def calls(self) -> list[dict[str, Any]]:
        return self._call("GET", "/calls")["calls"]


def open_reader(url: str, base_dir: str | None = None) -> Store:
    """Open a store for reading; if another process holds the embedded store, read through it."""
    try:
        return open_store(url, base_dir)
    except StoreLockedError as exc:
        from .chdb_store import store_owner

        path = unquote_path(url, base_dir)
        owner = store_owner(path)
        if owner and owner.get("endpoint"):
            return RemoteStore(owner["endpoint"], int(owner["pid"]), url)
        raise exc


def unquote_path(url: str, base_dir: str | None) -> str:
    parsed = urlparse(url)
    path = (parsed.netloc or "") + parsed.path
    if base_dir and not path.startswith("/"):
        path = f"{base_dir.rstrip('/')}/{path}"
    return path
