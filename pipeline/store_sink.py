"""Batched, acknowledged writes of CDRs, alerts and raw events into a ClickHouse store.

The driver calls ``flush()`` and commits its input position (Kafka offset, journal
offset) only when it returns True: rows are acknowledged by the server before the
input is. A crash in between re-delivers input whose rows are already stored;
the tables are ReplacingMergeTree keyed by call_id / alert_id / event_id and read
with FINAL, so no report shows them twice. When the store is down, rows stay
buffered and flush backs off; ``lag()`` says how far behind the sink is.

Rows are kept and written a column at a time (tables.ColumnBuffer): each record's fields are
appended to their columns as it arrives, and ``flush`` converts whole columns (timestamps,
money) and hands them to ``Store.insert_columns``. A value no column can hold raises from
``flush`` (ValueError/TypeError) with the rows still buffered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sipledger.store import Store, StoreError, StoreHandle
from sipledger.store.tables import (
    ColumnBuffer,
    alert_buffer,
    cdr_buffer,
    cdr_version,
    event_buffer,
    event_payload,
    ledger_buffer,
    ledger_version,
    upgrade_cdr,
)

log = logging.getLogger("sipledger.sink")


@dataclass(slots=True)
class SinkLag:
    pending_rows: int
    oldest_pending_s: float
    failures: int
    last_error: str | None


class StoreSink:
    def __init__(self, store: Store | Callable[[], Store], batch_size: int = 5000,
                 clock: Callable[[], float] = time.monotonic, max_backoff: float = 10.0,
                 store_events: bool = True) -> None:
        self._store = StoreHandle(store)
        self.batch_size = batch_size
        self._clock = clock
        self._max_backoff = max_backoff
        self._store_events = store_events
        self._cdrs, self._alerts, self._events = cdr_buffer(), alert_buffer(), event_buffer()
        self._ledger = ledger_buffer()
        # Flush order: events, alerts, CDRs, then the prepaid ledger (a debit after its CDR).
        self._buffers: dict[str, ColumnBuffer] = {"call_events": self._events, "zombie_alerts": self._alerts,
                                                  "cdrs": self._cdrs, "account_ledger": self._ledger}
        self._oldest: float | None = None
        self._pending = 0
        self._failures = 0
        self._last_error: str | None = None
        self._retry_at = 0.0
        self.written = {"cdrs": 0, "zombie_alerts": 0, "call_events": 0, "account_ledger": 0}

    def _mark(self) -> None:
        self._pending += 1
        if self._oldest is None:
            self._oldest = self._clock()

    def add_cdr(self, cdr: dict[str, Any], version: int | None = None, wall_ms: int | None = None) -> None:
        """``version``: the row version as given (tests); else ``cdr_version`` of the CDR and ``wall_ms``
        (default now): a node-closed record outranks a verdict, then the later write wins."""
        cdr = upgrade_cdr(cdr)
        if version is None:
            version = cdr_version(cdr, int(time.time() * 1000) if wall_ms is None else wall_ms)
        self._cdrs.add(cdr, version)
        self._mark()

    def add_ledger(self, row: dict[str, Any], wall_ms: int | None = None) -> None:
        """A prepaid ledger row (top-up, hold or debit); its version ranks a debit over the hold."""
        self._ledger.add(row, ledger_version(row, int(time.time() * 1000) if wall_ms is None else wall_ms))
        self._mark()

    def add_alert(self, alert: dict[str, Any]) -> None:
        self._alerts.add(alert)
        self._mark()

    def add_event(self, event: dict[str, Any], raw: bytes | None = None) -> None:
        """``raw``: the event's JSON as it came off the log, stored as the payload when given (the log's
        own bytes, and no re-encoding); else the payload is ``event`` encoded with sorted keys."""
        if self._store_events:
            self._events.add(event, raw.decode() if raw is not None else event_payload(event))
            self._mark()

    def pending(self) -> int:
        return self._pending

    def should_flush(self) -> bool:
        return self.pending() >= self.batch_size

    def flush(self) -> bool:
        """Write everything buffered. True when all rows are acknowledged; False to retry later."""
        if not self.pending():
            return True
        now = self._clock()
        if now < self._retry_at:
            return False
        try:
            store = self._store.get()
            for table, buffer in self._buffers.items():
                stored = 0
                try:
                    while stored < len(buffer):
                        end = min(len(buffer), stored + self.batch_size)
                        store.insert_columns(table, buffer.columns(stored, end))
                        self._pending -= end - stored
                        self.written[table] += end - stored
                        stored = end
                finally:
                    buffer.drop(stored)  # once, whatever was stored: a backlog costs linear time
        except StoreError as exc:
            self._failures += 1
            self._last_error = str(exc).splitlines()[0]
            delay = min(self._max_backoff, 0.2 * 2 ** min(self._failures, 8))
            self._retry_at = now + delay
            log.warning("store write failed (%s); %d rows kept, retry in %.1f s",
                        self._last_error, self.pending(), delay)
            self._store.drop()
            return False
        self._failures = 0
        self._oldest = None
        return True

    def lag(self) -> SinkLag:
        age = 0.0 if self._oldest is None else self._clock() - self._oldest
        return SinkLag(self.pending(), age, self._failures, self._last_error)
