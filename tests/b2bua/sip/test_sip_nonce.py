"""Digest nonces: bound to time and address, each (nonce, nc) accepted once, bounded state."""

from __future__ import annotations

import random
import tracemalloc

import pytest

from b2bua.sip.digest import DigestServer, build_authorization, same_resource
from b2bua.sip.nonce import NonceLedger


def ledger(**kw: object) -> NonceLedger:
    return NonceLedger(b"k", "realm", rng=random.Random(1), **kw)  # type: ignore[arg-type]


def test_a_nonce_is_valid_only_for_the_address_it_was_issued_to() -> None:
    nl = ledger()
    nonce = nl.issue(10.0, "192.0.2.1")
    assert nl.status(nonce, "192.0.2.1", 11.0) == "valid"
    assert nl.status(nonce, "192.0.2.2", 11.0) == "invalid"
    assert nl.status(nonce + "A", "192.0.2.1", 11.0) == "invalid"
    assert nl.status(nonce, "192.0.2.1", 10.0 + 300.5) == "stale"
    assert ledger().status(nl.issue(10.0, "a"), "a", 11.0) == "valid"  # same secret, same realm
    assert NonceLedger(b"other", "realm").status(nonce, "192.0.2.1", 11.0) == "invalid"
    assert nl.issue(10.0, "x") != nl.issue(10.0, "x")  # one per challenge


def test_each_nonce_count_is_accepted_once_and_must_count_up() -> None:
    nl = ledger()
    nonce = nl.issue(0.0, "a")
    assert nl.accept(nonce, 1, 1.0)
    assert not nl.accept(nonce, 1, 1.5)  # the replay
    assert nl.accept(nonce, 2, 2.0)
    assert not nl.accept(nonce, 1, 2.0)
    assert len(nl) == 1


def test_state_expires_with_the_nonce_and_is_capped_without_reopening_replays() -> None:
    nl = ledger(ttl=60.0, max_tracked=3)
    nonces = [nl.issue(float(i), "a") for i in range(5)]
    for i, n in enumerate(nonces):
        assert nl.accept(n, 1, float(i))
    assert len(nl) == 3
    # The two pushed out are stale from now on: their replay is not accepted as a fresh use.
    assert [nl.status(n, "a", 5.0) for n in nonces] == ["stale", "stale", "valid", "valid", "valid"]
    assert not nl.accept(nonces[3], 1, 5.0)
    later = nl.issue(100.0, "a")
    assert nl.accept(later, 1, 100.0)
    assert len(nl) == 1  # everything older than the ttl is gone


def test_ledger_memory_is_bounded() -> None:
    nl = ledger(ttl=3600.0, max_tracked=2_000)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(20_000):
        nl.accept(nl.issue(float(i) / 100, "a"), 1, float(i) / 100)
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    print(f"nonce ledger after 20,000 accepted nonces: {len(nl)} entries, {grown} bytes")
    assert len(nl) == 2_000
    assert grown < 600_000, grown  # about 250 bytes an entry


def server(**kw: object) -> DigestServer:
    return DigestServer(b"s3cret", "sipledger.test", rng=random.Random(3), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_a_captured_answer_is_good_for_one_request_from_one_address(algorithm: str) -> None:
    srv = server()
    uri = "sip:15551230000@b2bua.example"
    challenge = srv.challenge(0.0, algorithm=algorithm, bound_to="192.0.2.1")
    auth = build_authorization(challenge, username="roam", password="pw", method="INVITE", uri=uri)
    kw = {"method": "INVITE", "password": "pw", "request_uri": uri}
    assert srv.verify(auth, now=1.0, bound_to="192.0.2.1", **kw).ok  # type: ignore[arg-type]
    again = srv.verify(auth, now=2.0, bound_to="192.0.2.1", **kw)  # type: ignore[arg-type]
    assert not again.ok and again.replay and again.stale
    elsewhere = srv.verify(auth, now=2.0, bound_to="198.51.100.7", **kw)  # type: ignore[arg-type]
    assert not elsewhere.ok and elsewhere.reason == "invalid nonce" and not elsewhere.checked
    other_number = srv.verify(auth, method="INVITE", password="pw", now=2.0, bound_to="192.0.2.1",
                              request_uri="sip:19005550100@b2bua.example")
    assert not other_number.ok and other_number.uri_mismatch


def test_digest_uri_comparison() -> None:
    assert same_resource("sip:1555@B2BUA.example:5060;Transport=UDP",
                         "sip:1555@b2bua.example:5060;transport=udp")
    assert not same_resource("sip:1555@b2bua.example", "sip:1556@b2bua.example")
    assert not same_resource("sip:1555@b2bua.example", "sip:1555@b2bua.example:5060")
    assert not same_resource("sip:b2bua.example", "sip:1555@b2bua.example")
    assert same_resource("tel:+15551230000", "tel:+15551230000")
    assert not same_resource("%%%", "sip:a@b")
