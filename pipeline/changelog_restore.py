"""A faust worker's call states of newly assigned partitions, read back from the changelog to its end.

Why not faust's own table recovery: it decided when a partition was "recovered" by itself, and against
this broker it hung for good (``No event received for active tp ...-changelog`` every 5 s while half the
calls went unprocessed); a worker also restored a partition from the table's memory as soon as an event
came, recovered or not (suspected in issue 17 of losing CDRs). The same reports exist against faust
itself (faust-streaming/faust #155, #74).

What this does instead, and why it is enough: changelog partition ``p`` is written only by the worker
that owns events partition ``p`` (pipeline/faust_app.py writes every record to partition ``p``
explicitly). When a worker is assigned ``p``, the previous owner has stopped writing: a revoked worker
finishes (or abandons, fenced) its deliveries before it hands partitions over, and a dead one writes
nothing. So the partition's end offset, taken after the assignment, covers every state record there
will ever be from earlier owners, and reading from the beginning to that offset - by position, as
``sipledger calls`` does (sipledger/topic_reader.py) - yields exactly the states those owners had
acknowledged. The worker folds none of ``p``'s events until this read completed; a read that receives
nothing for ``stall_timeout_s`` fails with ``TopicReadError`` and the worker retries or exits.

The result also carries what is needed to prove it: the end offset, the record count and a digest of the
last record of every key (``digest``), which a test recomputes from its own read of the changelog.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.call_table import (
    CLOSED_PREFIX,
    LEDGER_PREFIX,
    LIVENESS_PREFIX,
    closed_records,
    is_closed,
    is_state,
    state_of,
)
from pipeline.domain import CallState
from pipeline.domain.closed_calls import RECORD
from sipledger.topic_reader import TopicReader, latest_by_key

_LIVENESS_KEY = orjson.dumps(LIVENESS_PREFIX)[:-1]  # b'"~liveness/': how such keys start once encoded
_CLOSED_KEY = orjson.dumps(CLOSED_PREFIX)[:-1]
_LEDGER_KEY = orjson.dumps(LEDGER_PREFIX)[:-1]


@dataclass(slots=True)
class PartitionLog:
    """The restorable content of one changelog partition up to ``end_offset``."""

    partition: int
    end_offset: int
    records: int = 0  # records read below end_offset (tombstones included)
    states: dict[str, CallState] = field(default_factory=dict)
    # The partition's node record: {"clocks", "beats", "addresses", "taken_over"} (older workers wrote
    # {"live": {node: last seen ms}}; Processor.restore reads both).
    live: dict[str, Any] = field(default_factory=dict)
    closed: list[bytes] = field(default_factory=list)  # closed-call memory records (ClosedCalls.load)
    ledger: dict[str, Any] | None = None  # the prepaid ledger's own record (Ledger.restore), if any
    digest: str = ""
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """What the worker reports about this restore (status topic, ready file)."""
        return {"end_offset": self.end_offset, "records": self.records, "calls": len(self.states),
                "open_calls": sum(1 for s in self.states.values() if not s.closed),
                "closed_remembered": sum(len(r) for r in self.closed) // RECORD,
                "digest": self.digest, "seconds": round(self.seconds, 3)}


def latest_digest(latest: Mapping[bytes, bytes]) -> str:
    """sha256 over the last (key, value) of every live key, in key order: what a restore saw."""
    h = hashlib.sha256()
    for key in sorted(latest):
        value = latest[key]
        h.update(len(key).to_bytes(4, "big") + key + len(value).to_bytes(4, "big") + value)
    return h.hexdigest()


def fold_partition(partition: int, end_offset: int, records: Iterable[tuple[bytes | None, bytes | None]]
                   ) -> PartitionLog:
    """A PartitionLog from one partition's (key, value) records in log order; tombstones delete.

    Values are decoded only once they are known to be the last of their key: a long changelog holds
    many versions of each call.
    """
    records = list(records)
    latest = latest_by_key(records)  # a record without a key is not a worker's: skipped
    log = PartitionLog(partition, end_offset, len(records), digest=latest_digest(latest))
    for key, raw in latest.items():
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if key.startswith(_LIVENESS_KEY):
            if isinstance(value, dict):
                log.live = {k: v for k, v in value.items() if k != "p"}
        elif key.startswith(_LEDGER_KEY):
            if isinstance(value, dict):
                log.ledger = {k: v for k, v in value.items() if k != "p"}
        elif key.startswith(_CLOSED_KEY):
            if is_closed(value):
                log.closed.append(closed_records(value))
        elif is_state(value):
            state = state_of(value)
            log.states[state.call_id] = state
    return log


def read_partitions(bootstrap: str, topic: str, partitions: Collection[int],
                    stall_timeout_s: float) -> dict[int, PartitionLog]:
    """Read ``topic``'s ``partitions`` from their beginning to the end offsets they have now (blocking;
    run it in a thread). Raises ``TopicReadError`` when the broker is unreachable or stops serving."""
    t0 = time.monotonic()
    with TopicReader(bootstrap, stall_timeout_s) as reader:
        ends = reader.end_offsets(topic, partitions)
        by_partition: dict[int, list[tuple[bytes | None, bytes | None]]] = {p: [] for p in ends}
        for rec in reader.read(topic, ends):
            by_partition[rec.partition].append((rec.key, rec.value))
    logs = {p: fold_partition(p, ends[p], recs) for p, recs in by_partition.items()}
    elapsed = time.monotonic() - t0
    for log in logs.values():
        log.seconds = elapsed
    return logs
