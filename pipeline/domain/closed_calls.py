"""Closed calls remembered after their state is dropped, so a late event of one changes nothing.

Spools re-send after a broker hiccup, and a redelivered call.setup of a call that was closed and
dropped long ago would otherwise open a phantom call (and, once its node went quiet, an orphaned 0 ms
CDR in place of the real one). Drivers drop a closed call's full state once no redelivery of its
closing input can reach it any more; from then on it lives here, in compact form, for the retention
(``Policy.closed_call_retention_s``, at least a day by default) of log time.

Compact form: a 16-byte BLAKE2b digest of the call id and the close time in ms, 24 bytes a call in a
sorted numpy array (a binary search per lookup), plus a small dict of the most recent additions that
is merged into the array in bulk. 16 bytes make a collision (a new call taken for a closed one) about
as likely as 1 in 10^20 a day at millions of calls a day. Expiry happens at merges, against the log
time the driver passes in.

Pure: no clock, no I/O. Persisting is the driver's: ``entries``/``load`` give and take the records
as bytes (``RECORD`` each), ``take_new`` the ones added since it was last called.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Final

import numpy as np

KEY_BYTES: Final = 16
RECORD: Final = KEY_BYTES + 8  # key + close time (int64 little-endian ms)
_MERGE_AT: Final = 50_000
_RECORD_DTYPE: Final = np.dtype([("key", f"S{KEY_BYTES}"), ("ms", "<i8")])


def call_key(call_id: str) -> bytes:
    return hashlib.blake2b(call_id.encode(), digest_size=KEY_BYTES).digest()


class ClosedCalls:
    __slots__ = ("_keys", "_new", "_recent", "_times", "retention_ms")

    def __init__(self, retention_ms: int) -> None:
        self.retention_ms = retention_ms
        self._keys = np.empty(0, dtype=f"S{KEY_BYTES}")  # sorted
        self._times = np.empty(0, dtype=np.int64)  # close times, in the order of _keys
        self._recent: dict[bytes, int] = {}
        self._new: list[tuple[bytes, int]] = []

    def add(self, call_id: str, closed_ms: int) -> None:
        key = call_key(call_id)
        self._recent[key] = closed_ms
        self._new.append((key, closed_ms))
        if len(self._recent) >= _MERGE_AT:
            self._merge(None)

    def __contains__(self, call_id: object) -> bool:
        if not isinstance(call_id, str):
            return False
        key = call_key(call_id)
        if key in self._recent:
            return True
        keys = self._keys
        if not len(keys):
            return False
        i = int(np.searchsorted(keys, key))
        # An element reads back without its trailing NUL bytes (numpy's fixed-width bytes): compare so.
        return i < len(keys) and keys[i] == key.rstrip(b"\0")

    def __len__(self) -> int:
        return len(self._keys) + len(self._recent)

    def expire(self, log_time_ms: int) -> int:
        """Forget calls closed more than the retention before ``log_time_ms``; returns how many."""
        before = len(self)
        self._merge(log_time_ms - self.retention_ms)
        return before - len(self)

    def _merge(self, keep_from_ms: int | None) -> None:
        keys, times = self._keys, self._times
        if self._recent:
            rk = np.array(list(self._recent), dtype=f"S{KEY_BYTES}")
            rt = np.fromiter(self._recent.values(), dtype=np.int64, count=len(self._recent))
            order = np.argsort(rk, kind="stable")
            rk, rt = rk[order], rt[order]
            # A key already present (a call closed twice: only after its memory expired) keeps both
            # rows; lookups do not care and the older row expires first.
            at = np.searchsorted(keys, rk)
            keys = np.insert(keys, at, rk)
            times = np.insert(times, at, rt)
            self._recent = {}
        if keep_from_ms is not None and len(times):
            keep = times >= keep_from_ms
            if not keep.all():
                keys, times = keys[keep], times[keep]
        self._keys, self._times = keys, times

    # -- persistence (the driver's) -------------------------------------------------------------------
    def take_new(self) -> bytes:
        """Records added since the last call, as bytes (``RECORD`` each), for an append-only file."""
        new, self._new = self._new, []
        return _pack(new)

    def entries(self) -> bytes:
        """Every remembered call as records."""
        self._merge(None)
        arr = np.empty(len(self._keys), dtype=_RECORD_DTYPE)
        arr["key"], arr["ms"] = self._keys, self._times
        return arr.tobytes()

    def load(self, data: bytes) -> None:
        """Add records (from ``take_new``/``entries``); a truncated last record is ignored."""
        n = len(data) // RECORD
        if not n:
            return
        arr = np.frombuffer(data[: n * RECORD], dtype=_RECORD_DTYPE)
        for key, ms in zip(arr["key"].tolist(), arr["ms"].tolist(), strict=True):
            # numpy drops trailing NUL bytes of fixed-width bytes on the way out: pad them back.
            self._recent[key.ljust(KEY_BYTES, b"\0")] = ms
            if len(self._recent) >= _MERGE_AT:
                self._merge(None)

    def nbytes(self) -> int:
        """Memory held by the sorted arrays (the recent dict is bounded by the merge size)."""
        return int(self._keys.nbytes + self._times.nbytes)


def _pack(records: Iterable[tuple[bytes, int]]) -> bytes:
    recs = list(records)
    arr = np.empty(len(recs), dtype=_RECORD_DTYPE)
    if recs:
        arr["key"] = [k for k, _ in recs]
        arr["ms"] = [t for _, t in recs]
    return arr.tobytes()
