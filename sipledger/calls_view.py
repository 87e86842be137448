"""`sipledger calls`: the current-call monitor, from the running pipeline's state."""

from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from .config import Config


def active_calls(cfg: Config, store_url: str | None = None) -> list[dict[str, Any]]:
    from sipledger.store import StoreError
    from sipledger.store.remote import RemoteStore, open_reader

    url = store_url or cfg.store.url
    if url.startswith("chdb:"):
        try:
            store = open_reader(url, str(cfg.base_dir))
        except StoreError as exc:
            raise RuntimeError(str(exc)) from None
        if isinstance(store, RemoteStore):
            return store.calls()
        store.close()
        return _from_checkpoint(cfg)
    raise RuntimeError("`sipledger calls` reads the embedded pipeline's live state; in Kafka mode the "
                       "call state lives in the faust workers' tables")


def _from_checkpoint(cfg: Config) -> list[dict[str, Any]]:
    from pipeline.domain import CallState
    from pipeline.embedded import EmbeddedPaths, call_view

    path = EmbeddedPaths.from_config(cfg).checkpoint
    try:
        snap = json.loads(path.read_text())["snapshot"]
    except FileNotFoundError:
        return []
    now_ms = int(time.time() * 1000)
    states = [CallState.from_dict(d) for d in snap.get("states", {}).values()]
    return [call_view(s, now_ms, None) for s in states if not s.closed]


def _fmt_s(ms: int | None) -> str:
    if not ms:
        return "-"
    s = ms // 1000
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"


def render_calls(calls: list[dict[str, Any]]) -> None:
    now_ms = int(time.time() * 1000)
    table = Table(title=f"{len(calls)} active calls")
    cols = ("caller", "callee", "account", "vendor", "connected", "duration", "timer", "next deadline in")
    for col in cols:
        table.add_column(col)
    for c in sorted(calls, key=lambda c: -(c["duration_ms"] or 0)):
        connected = "ringing" if not c["answer_ms"] else time.strftime("%H:%M:%S",
                                                                     time.gmtime(c["answer_ms"] / 1000))
        nxt = c.get("next_deadline_ms")
        table.add_row(c["caller"], c["callee"], c["account"], c["vendor"], connected,
                      _fmt_s(c["duration_ms"]), c["timer_mode"] or "-",
                      _fmt_s(max(0, nxt - now_ms)) if nxt else "-")
    Console().print(table)
