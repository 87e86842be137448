"""chDB back end: current ClickHouse inside this process, persisted at a folder.

chDB lets one process hold a store path at a time. The holder writes
``owner.json`` (pid, and the local query endpoint when it serves one) beside the
data, so a second process is told plainly who holds the store and how to reach
it instead of failing with chDB's bare "Cannot lock file".
"""

from __future__ import annotations

import json
import os
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clickhouse_driver.util.escape import escape_params

from .base import Store, StoreError, StoreLockedError
from .dialect import Dialect

if TYPE_CHECKING:
    from .columnar import Batch

OWNER_FILE = "owner.json"


def store_owner(path: str | Path) -> dict[str, Any] | None:
    """The live process holding the chDB store at ``path``, if any."""
    try:
        owner = json.loads((Path(path) / OWNER_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    try:
        os.kill(int(owner["pid"]), 0)
    except (ProcessLookupError, KeyError, ValueError):
        return None
    except PermissionError:
        pass
    return owner


class ChdbStore(Store):
    database = "sipledger"

    def __init__(self, path: str) -> None:
        from chdb import session as chdb_session

        self.path = Path(path).resolve()
        self.url = f"chdb://{self.path}"
        owner = store_owner(self.path)
        if owner is not None and int(owner["pid"]) != os.getpid():
            raise StoreLockedError(_locked_message(self.path, owner))
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._session = chdb_session.Session(str(self.path))
        except Exception as exc:
            if "lock" in str(exc).lower():
                raise StoreLockedError(_locked_message(self.path, store_owner(self.path))) from exc
            raise StoreError(f"cannot open chDB store at {self.path}: {exc}") from exc
        self._write_owner({})
        self._session.query(f"CREATE DATABASE IF NOT EXISTS {self.database}")
        self._session.query(f"USE {self.database}")
        self.dialect = Dialect.from_version(self._session.query("SELECT version()", "CSV").bytes().decode())

    def _write_owner(self, extra: dict[str, Any]) -> None:
        (self.path / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), **extra}))

    def advertise(self, endpoint: str) -> None:
        """Record where this process serves read queries while it holds the store."""
        self._write_owner({"endpoint": endpoint})

    def execute(self, sql: str) -> None:
        try:
            self._session.query(sql)
        except Exception as exc:
            raise StoreError(f"{exc}\nwhile running: {sql[:300]}") from exc

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        if params:
            sql = sql % escape_params(params, None)
        try:
            res = self._session.query(f"{sql}\nSETTINGS output_format_json_quote_decimals=1, "
                                      "output_format_json_quote_64bit_integers=0",
                                      "JSONCompactEachRowWithNamesAndTypes")
        except Exception as exc:
            raise StoreError(f"{exc}\nwhile running: {sql[:300]}") from exc
        lines = res.bytes().decode().splitlines()
        if len(lines) < 2:
            return []
        names, types = json.loads(lines[0]), json.loads(lines[1])
        # Give callers the Python types clickhouse-driver gives, so both back ends answer alike.
        convert = [(i, conv) for i, t in enumerate(types) if (conv := _converter(t)) is not None]
        out = []
        for line in lines[2:]:
            values = json.loads(line)
            for i, conv in convert:
                if values[i] is not None:
                    values[i] = conv(values[i])
            out.append(dict(zip(names, values, strict=True)))
        return out

    def _insert_batch(self, table: str, batch: Batch) -> None:
        frame = batch.frame()  # noqa: F841 - read by name by chDB's Python() table function
        try:
            self._session.query(batch.insert_sql(table, "Python(frame)", self.dialect.insert_settings))
        except Exception as exc:
            raise StoreError(f"insert into {table} failed: {exc}") from exc

    def close(self) -> None:
        sess = getattr(self, "_session", None)
        if sess is not None:
            try:
                sess.close()
            finally:
                self._session = None
                owner = store_owner(self.path)
                if owner is not None and int(owner["pid"]) == os.getpid():
                    (self.path / OWNER_FILE).unlink(missing_ok=True)


def _converter(ch_type: str) -> Any:
    base = ch_type.removeprefix("Nullable(").removeprefix("LowCardinality(")
    if base.startswith("Decimal"):
        return Decimal
    if base.startswith("DateTime"):
        return lambda v: datetime.fromisoformat(v).replace(tzinfo=UTC)
    if base.startswith("Date"):
        return date.fromisoformat
    return None


def _locked_message(path: Path, owner: dict[str, Any] | None) -> str:
    if owner is None:
        return f"the chDB store at {path} is locked by another process (chDB allows one per store)"
    how = f"; it serves queries at {owner['endpoint']}" if owner.get("endpoint") else \
        "; stop it or point this command at that process"
    return f"the chDB store at {path} is held by process {owner['pid']}{how}"
