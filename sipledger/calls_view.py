"""`sipledger calls`: the current-call monitor, from the running pipeline's state.

Embedded mode asks the running embedded pipeline (loopback endpoint beside its chDB store) or reads
its checkpoint. Kafka mode has no process to ask: the faust workers' call state is durable only in
their table's changelog topic, so the monitor reads that topic up to its current end and keeps the
last value of each call, as a worker's table recovery would.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.table import Table

from .config import Config


def active_calls(cfg: Config, store_url: str | None = None,
                 app_id: str | None = None) -> list[dict[str, Any]]:
    """The open calls as the monitor shows them; RuntimeError with a one-line reason when unavailable.

    ``store_url`` names an embedded pipeline's store explicitly; otherwise ``events.log`` decides the
    mode as `sipledger pipeline` does. ``app_id`` (Kafka mode) is the workers' faust app id.
    """
    from sipledger.store import StoreError
    from sipledger.store.remote import RemoteStore, open_reader

    if store_url is None and cfg.events.log.startswith("kafka:"):
        from pipeline.call_table import DEFAULT_APP_ID

        return _from_changelog(cfg, app_id or DEFAULT_APP_ID)
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
    raise RuntimeError("`sipledger calls` reads the faust workers' changelog (events.log = kafka://...) or "
                       f"the embedded pipeline's state beside its chdb:// store, not store.url = {url!r}")


def _from_changelog(cfg: Config, app_id: str) -> list[dict[str, Any]]:
    from pipeline.call_table import changelog_topic, fold_changelog, state_of
    from pipeline.domain import due_at
    from pipeline.embedded import call_view
    from pipeline.processor import policy_from_config

    bootstrap = cfg.kafka.bootstrap
    topic = changelog_topic(app_id)
    latest = fold_changelog(read_changelog(bootstrap, topic, app_id))
    # The deadline the workers' queue holds for a call is due_at() under their policy: what a worker
    # rebuilds its queue with after a restart. It assumes this config's timers match the workers'.
    policy = policy_from_config(cfg)
    now_ms = int(time.time() * 1000)
    out = []
    for value in latest.values():
        state = state_of(value)
        if not state.closed:
            out.append(call_view(state, now_ms, due_at(state, policy)))
    return out


def read_changelog(bootstrap: str, topic: str, app_id: str) -> Iterator[tuple[bytes | None, bytes | None]]:
    """(key, value) of every record of ``topic`` up to its current end, per partition in log order."""
    from .topic_reader import NoSuchTopic, TopicReadError, read_to_end

    try:
        for rec in read_to_end(bootstrap, topic):
            yield rec.key, rec.value
    except NoSuchTopic as exc:
        raise RuntimeError(f"{exc}: no pipeline worker has run with app id {app_id!r} (see --app-id)"
                           ) from None
    except TopicReadError as exc:
        raise RuntimeError(f"{exc} (kafka.bootstrap)") from None


def _from_checkpoint(cfg: Config) -> list[dict[str, Any]]:
    from pipeline.domain import CallState
    from pipeline.embedded import call_view
    from sipledger.eventlog.layout import EmbeddedPaths

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
    cols = ("call id", "node", "caller", "callee", "account", "vendor", "connected", "duration", "timer",
            "next deadline in")
    for col in cols:
        table.add_column(col, no_wrap=col == "call id")
    for c in sorted(calls, key=lambda c: -(c["duration_ms"] or 0)):
        connected = "ringing" if not c["answer_ms"] else time.strftime("%H:%M:%S",
                                                                     time.gmtime(c["answer_ms"] / 1000))
        nxt = c.get("next_deadline_ms")
        table.add_row(c["call_id"], c.get("node") or "-", c["caller"], c["callee"], c["account"], c["vendor"],
                      connected, _fmt_s(c["duration_ms"]), c["timer_mode"] or "-",
                      _fmt_s(max(0, nxt - now_ms)) if nxt else "-")
    # Piped into a file or another program, the table keeps its width instead of rich's 80 columns.
    Console(width=None if sys.stdout.isatty() else 1000).print(table)
