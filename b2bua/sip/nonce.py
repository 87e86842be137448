"""Digest nonces that cannot be replayed (RFC 7616 3.3/3.4, RFC 2617 3.2.2), with bounded state.

A nonce is issued per challenge: issue time, a random salt and an HMAC over both, the realm and the
address the challenge went to. Issuing keeps no state, so a flood of unauthenticated requests
(spoofed sources included) costs no memory. Verification needs the same address, so a captured
``Authorization`` header replayed from elsewhere fails before any password check.

State is created only when a response *verified* (the sender knew the password): the highest
``nc`` accepted for that nonce. A (nonce, nc) pair is then accepted once; a later request must
count up (RFC 7616 3.4: "if the same nc-value is seen twice, then the request is a replay").
Entries end with the nonce's lifetime (an expired nonce is only ever answered ``stale=true``), and
their number is capped: when the cap evicts an entry early, every nonce issued up to that entry's
issue time becomes stale too (``floor``), so eviction can never re-open a replay. The worst a
flood of successful logins can do is make clients fetch a fresh nonce sooner.

Pure code: the clock is passed in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

NonceStatus = Literal["valid", "stale", "invalid"]
_RAW_LEN = 8 + 8 + 16  # issue time (ms), salt, truncated HMAC
_MAX_CLOCK_SKEW_MS = 60_000


@dataclass(slots=True)
class _Used:
    issued_ms: int
    highest_nc: int


class NonceLedger:
    def __init__(
        self,
        secret: bytes,
        realm: str,
        *,
        ttl: float = 300.0,
        max_tracked: int = 10_000,
        rng: random.Random | None = None,
    ) -> None:
        if not secret:
            raise ValueError("a non-empty secret is required for nonces")
        if max_tracked < 1:
            raise ValueError("max_tracked must be at least 1")
        self.secret = secret
        self.realm = realm
        self.ttl = ttl
        self.max_tracked = max_tracked
        self.rng = rng if rng is not None else random.SystemRandom()
        self._used: OrderedDict[bytes, _Used] = OrderedDict()  # in order of first acceptance
        self._floor_ms = -1  # nonces issued at or before this are stale (see the module docstring)

    def __len__(self) -> int:
        return len(self._used)

    def _mac(self, head: bytes, bound_to: str) -> bytes:
        msg = head + b"\x00" + self.realm.encode() + b"\x00" + bound_to.encode()
        return hmac.new(self.secret, msg, hashlib.sha256).digest()[:16]

    def issue(self, now: float, bound_to: str) -> str:
        """A fresh nonce for one challenge sent to ``bound_to`` (the request's source address)."""
        head = struct.pack(">QQ", int(now * 1000), self.rng.getrandbits(64))
        return base64.urlsafe_b64encode(head + self._mac(head, bound_to)).decode().rstrip("=")

    def _decode(self, nonce: str) -> tuple[bytes, int] | None:
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (ValueError, TypeError):
            return None
        if len(raw) != _RAW_LEN:
            return None
        return raw, struct.unpack(">Q", raw[:8])[0]

    def status(self, nonce: str, bound_to: str, now: float) -> NonceStatus:
        """``invalid``: not ours, or issued to another address; ``stale``: ours but expired (or
        pushed out of the ledger); ``valid`` otherwise. Says nothing about ``nc``."""
        decoded = self._decode(nonce)
        if decoded is None:
            return "invalid"
        raw, issued_ms = decoded
        if not hmac.compare_digest(raw[16:], self._mac(raw[:16], bound_to)):
            return "invalid"
        now_ms = int(now * 1000)
        if issued_ms > now_ms + _MAX_CLOCK_SKEW_MS:
            return "invalid"
        if now_ms - issued_ms > self.ttl * 1000 or issued_ms <= self._floor_ms:
            return "stale"
        return "valid"

    def accept(self, nonce: str, nc: int, now: float) -> bool:
        """Record a verified use of a valid nonce with count ``nc``; False when that count (or a
        higher one) was accepted before: a replay."""
        self._expire(now)
        decoded = self._decode(nonce)
        if decoded is None:
            return False
        raw, issued_ms = decoded
        key = raw[:16]
        used = self._used.get(key)
        if used is not None:
            if nc <= used.highest_nc:
                return False
            used.highest_nc = nc
            return True
        self._used[key] = _Used(issued_ms, nc)
        while len(self._used) > self.max_tracked:
            _, evicted = self._used.popitem(last=False)
            self._floor_ms = max(self._floor_ms, evicted.issued_ms)
        return True

    def _expire(self, now: float) -> None:
        # Entries are in acceptance order, each accepted within ttl of its issue: the front ones are
        # the first to expire. An entry behind an unexpired one waits at most one ttl longer.
        limit_ms = int(now * 1000) - int(self.ttl * 1000)
        while self._used:
            key, used = next(iter(self._used.items()))
            if used.issued_ms >= limit_ms:
                return
            del self._used[key]
