"""Refused input, kept with the reason: the pipeline never stops on bad input, and never drops it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from schemas.validation import ContractError, validate_dead_letter
from sipledger.eventlog.journal import FileJournal


def now_ts() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def dead_letter_record(source: str, raw: bytes | str, error: Exception,
                       ts: str | None = None) -> dict[str, Any]:
    field = error.field if isinstance(error, ContractError) else None
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    rec = {"source": source, "reason": str(error), "field": field, "raw": text[:65536],
           "ts": ts or now_ts(), "schema_version": 1}
    validate_dead_letter(rec)
    return rec


class DeadLetterFile:
    """Dead letters as JSON lines beside the embedded journal."""

    def __init__(self, path: str | Path) -> None:
        self._journal = FileJournal(path)
        self.count = 0

    def put(self, source: str, raw: bytes | str, error: Exception) -> dict[str, Any]:
        rec = dead_letter_record(source, raw, error)
        self._journal.publish(rec)
        self._journal.flush()
        self.count += 1
        return rec

    def close(self) -> None:
        self._journal.close()
