"""Cryptographically random identifiers without a system call each.

RFC 3261 wants tags and Call-IDs cryptographically random (19.3) and branches unique, so they come
from ``os.urandom``, as ``random.SystemRandom`` does; but SystemRandom asks the kernel once per
number, and a call needs about ten of them (branches, tags, Call-IDs, event ids). ``UrandomPool``
reads 4 KiB of the same randomness at a time and hands it out in slices: the same quality, one
system call per few hundred numbers.
"""

from __future__ import annotations

import os
import random

_POOL_BYTES = 4096


class UrandomPool(random.SystemRandom):
    """``random.SystemRandom`` whose ``getrandbits`` slices a buffer of ``os.urandom`` bytes."""

    def __init__(self) -> None:
        super().__init__()
        self._buf = b""
        self._pos = 0

    def randbytes(self, n: int) -> bytes:
        if self._pos + n > len(self._buf):
            self._buf = os.urandom(max(_POOL_BYTES, n))
            self._pos = 0
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out

    def getrandbits(self, k: int) -> int:
        if k < 0:
            raise ValueError("number of bits must be non-negative")
        numbytes = (k + 7) // 8
        return int.from_bytes(self.randbytes(numbytes), "big") >> (numbytes * 8 - k)


_POOL = UrandomPool()

# uuid.uuid4's version (4) and variant (RFC 4122) bits
_VERSION_MASK = ~(0xF000 << 64) & ~(0xC000 << 48)
_VERSION_BITS = (0x4000 << 64) | (0x8000 << 48)


def uuid4_hex() -> str:
    """What ``uuid.uuid4().hex`` returns (a random version-4 UUID as 32 hex digits), from the pool."""
    return f"{(_POOL.getrandbits(128) & _VERSION_MASK) | _VERSION_BITS:032x}"
