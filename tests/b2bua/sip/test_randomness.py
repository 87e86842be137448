"""The urandom pool: SystemRandom's numbers, sliced from a buffer (b2bua/sip/randomness.py)."""

from __future__ import annotations

import uuid

from b2bua.sip.randomness import UrandomPool, uuid4_hex


def test_pool_numbers_have_the_asked_width_and_vary() -> None:
    pool = UrandomPool()
    values = [pool.getrandbits(80) for _ in range(2000)]  # crosses several 4 KiB refills
    assert all(0 <= v < 2**80 for v in values) and len(set(values)) == len(values)
    assert max(values).bit_length() >= 75  # the top bits are used, not left zero
    assert pool.getrandbits(0) == 0 and 0 <= pool.randrange(10) < 10
    assert len(pool.randbytes(5000)) == 5000  # larger than one buffer


def test_uuid4_hex_is_a_version_4_uuid() -> None:
    ids = [uuid4_hex() for _ in range(500)]
    assert len(set(ids)) == 500
    for text in ids:
        u = uuid.UUID(text)
        assert (u.version, u.variant, u.hex) == (4, uuid.RFC_4122, text)
