"""Apply the DDL in schemas/clickhouse/ (idempotent: every statement is IF NOT EXISTS).

``ALTER TABLE t ADD COLUMN IF NOT EXISTS c ...`` is applied by checking ``system.columns`` first and
running it without ``IF NOT EXISTS`` only where the column is missing: ClickHouse 18.16 refuses that
clause (measured: code 62, syntax error), and the check works the same on every version.

``ALTER TABLE t MODIFY COLUMN c TYPE`` (new Enum values) is applied only where ``system.columns`` shows
another type, so a migration that already ran is not repeated at every start.
"""

from __future__ import annotations

import re
from importlib import resources

from .base import Store

_ADD_COLUMN = re.compile(r"ALTER\s+TABLE\s+(\w+)\s+ADD\s+COLUMN\s+IF\s+NOT\s+EXISTS\s+(\w+)\s", re.I)
_MODIFY_COLUMN = re.compile(r"ALTER\s+TABLE\s+(\w+)\s+MODIFY\s+COLUMN\s+(\w+)\s+(.+)$", re.I | re.S)


def _same_type(a: str, b: str) -> bool:
    return re.sub(r"\s+", "", a) == re.sub(r"\s+", "", b)


def ddl_statements() -> list[tuple[str, str]]:
    """(file name, statement) in file order."""
    folder = resources.files("schemas").joinpath("clickhouse")
    out = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        lines = entry.read_text().splitlines()
        text = "\n".join(line for line in lines if not line.lstrip().startswith("--"))
        out += [(entry.name, stmt.strip()) for stmt in text.split(";") if stmt.strip()]
    return out


def migrate(store: Store) -> list[str]:
    """Create what is missing; returns the files applied."""
    applied = []
    for name, stmt in ddl_statements():
        m = _ADD_COLUMN.match(stmt)
        if m is not None:
            table, column = m.group(1), m.group(2)
            found = store.query("SELECT count() AS n FROM system.columns WHERE database = currentDatabase() "
                                "AND table = %(t)s AND name = %(c)s", {"t": table, "c": column})
            if int(found[0]["n"]):
                continue
            stmt = re.sub(r"\s+IF\s+NOT\s+EXISTS", "", stmt, count=1, flags=re.I)
        m = _MODIFY_COLUMN.match(stmt)
        if m is not None:
            table, column, wanted = m.group(1), m.group(2), store.render(m.group(3))
            found = store.query("SELECT type FROM system.columns WHERE database = currentDatabase() "
                                "AND table = %(t)s AND name = %(c)s", {"t": table, "c": column})
            if found and _same_type(str(found[0]["type"]), wanted):
                continue
        store.execute(store.render(stmt))
        if name not in applied:
            applied.append(name)
    if applied:
        store.forget_column_types()  # an Enum may have new values, a table new columns
    return applied
