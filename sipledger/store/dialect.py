"""The one place where ClickHouse versions differ for sipledger.

Chosen from ``SELECT version()``. The DDL and report SQL are written once with
``{PLACEHOLDER}`` marks that this module fills per server version.

- LowCardinality(String) exists from 19.x; 18.16 only has it behind
  ``allow_experimental_low_cardinality_type``, so there it is plain String.
- DateTime64, window functions, TTL and column CODECs are absent from 18.16. The
  schema does not use them: timestamps are UInt64 epoch milliseconds everywhere,
  which is exact on every version and converts with ``{TS_TO_DATETIME}``.
- From 21.1 an insert into a ReplacingMergeTree also folds the block's duplicate keys
  (``optimize_on_insert``): half of chDB's insert time, measured. Every read of these tables
  is FINAL, which folds them anyway, so inserts turn it off; 18.16 has no such setting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Dialect:
    version: str
    major: int
    minor: int

    @classmethod
    def from_version(cls, version: str) -> Dialect:
        m = re.match(r"(\d+)\.(\d+)", version.strip().strip('"'))
        if not m:
            raise ValueError(f"unrecognised ClickHouse version {version!r}")
        return cls(version.strip().strip('"'), int(m.group(1)), int(m.group(2)))

    @property
    def has_low_cardinality(self) -> bool:
        return self.major >= 19

    @property
    def has_datetime64(self) -> bool:
        return self.major >= 20

    @property
    def insert_settings(self) -> dict[str, int]:
        """Query settings for sipledger's inserts."""
        return {"optimize_on_insert": 0} if self.major >= 21 else {}

    def substitutions(self) -> dict[str, str]:
        return {
            "LC_STRING": "LowCardinality(String)" if self.has_low_cardinality else "String",
            # Epoch ms -> DateTime (seconds, UTC) for grouping by hour/day in reports.
            "TS_TO_DATETIME": "toDateTime(intDiv({0}, 1000), 'UTC')",
        }

    def render(self, sql: str) -> str:
        subs = self.substitutions()

        def repl(m: re.Match[str]) -> str:
            name, arg = m.group(1), m.group(2)
            if name not in subs:
                raise KeyError(f"unknown SQL placeholder {{{name}}}")
            return subs[name].format(arg) if arg is not None else subs[name]

        return re.sub(r"\{([A-Z_0-9]+)(?:\(([^{}]*)\))?\}", repl, sql)
