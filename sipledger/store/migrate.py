"""Apply the DDL in schemas/clickhouse/ (idempotent: every statement is IF NOT EXISTS)."""

from __future__ import annotations

from importlib import resources

from .base import Store


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
        store.execute(store.render(stmt))
        if name not in applied:
            applied.append(name)
    return applied
