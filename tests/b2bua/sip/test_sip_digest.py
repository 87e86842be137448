"""Digest authentication: published vectors, stateless nonces, server verification."""

from __future__ import annotations

import random

import pytest

from b2bua.sip.digest import DigestServer, build_authorization, compute_ha1, compute_response
from b2bua.sip.message import parse_auth_params


def test_rfc2617_section_3_5_vector() -> None:
    ha1 = compute_ha1("Mufasa", "testrealm@host.com", "Circle Of Life")
    response = compute_response(
        ha1=ha1,
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        method="GET",
        uri="/dir/index.html",
        qop="auth",
        nc="00000001",
        cnonce="0a4f113b",
    )
    assert response == "6629fae49393a05397450978507c4ef1"


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_section_3_9_1_vectors(algorithm: str, expected: str) -> None:
    challenge = (
        f'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={algorithm}, '
        'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
        'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    auth = build_authorization(
        challenge,
        username="Mufasa",
        password="Circle of Life",
        method="GET",
        uri="/dir/index.html",
        cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    )
    scheme, params = parse_auth_params(auth)
    assert scheme == "Digest"
    assert params["response"] == expected
    assert params["qop"] == "auth" and params["nc"] == "00000001"
    assert params["opaque"] == "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"


def test_legacy_no_qop_response() -> None:
    # RFC 2069 form: H(HA1:nonce:HA2) -- checked against an independent computation.
    import hashlib

    ha1 = hashlib.md5(b"bob:sip.example.com:zanzibar").hexdigest()
    ha2 = hashlib.md5(b"REGISTER:sip:sip.example.com").hexdigest()
    expected = hashlib.md5(f"{ha1}:abc123:{ha2}".encode()).hexdigest()
    got = compute_response(
        ha1=compute_ha1("bob", "sip.example.com", "zanzibar"),
        nonce="abc123",
        method="REGISTER",
        uri="sip:sip.example.com",
    )
    assert got == expected


def server(**kw: object) -> DigestServer:
    return DigestServer(b"s3cret", "sipledger.test", rng=random.Random(3), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_challenge_response_round_trip(algorithm: str) -> None:
    srv = server()
    challenge = srv.challenge(100.0, algorithm=algorithm, opaque="op")
    _, params = parse_auth_params(challenge)
    assert (
        params["realm"] == "sipledger.test" and params["qop"] == "auth" and params["algorithm"] == algorithm
    )
    auth = build_authorization(
        challenge,
        username="alice",
        password="pw",
        method="INVITE",
        uri="sip:bob@sipledger.test",
        rng=random.Random(1),
    )
    result = srv.verify(auth, method="INVITE", password="pw", now=130.0)
    assert result.ok and result.username == "alice" and not result.stale
    assert not srv.verify(auth, method="INVITE", password="wrong", now=130.0).ok
    assert not srv.verify(auth, method="BYE", password="pw", now=130.0).ok  # method is covered
    assert srv.verify(auth, method="INVITE", password="pw", now=130.0, expected_username="bob").reason == (
        "wrong username"
    )


def test_challenges_list_prefers_sha256() -> None:
    values = server().challenges(0.0)
    assert [parse_auth_params(v)[1]["algorithm"] for v in values] == ["SHA-256", "MD5"]
    assert "stale=true" in server().challenges(0.0, stale=True)[0]


def test_legacy_client_without_qop_is_accepted() -> None:
    srv = server(qop=None)
    challenge = srv.challenge(0.0)
    assert "qop" not in parse_auth_params(challenge)[1]
    auth = build_authorization(
        challenge, username="old", password="pw", method="REGISTER", uri="sip:sipledger.test"
    )
    assert "cnonce" not in parse_auth_params(auth)[1]
    assert srv.verify(auth, method="REGISTER", password="pw", now=1.0).ok


def test_stale_nonce_is_reported_as_stale_not_wrong() -> None:
    srv = server(nonce_ttl=60)
    challenge = srv.challenge(0.0)
    auth = build_authorization(challenge, username="a", password="pw", method="INVITE", uri="sip:x@y")
    result = srv.verify(auth, method="INVITE", password="pw", now=61.0)
    assert not result.ok and result.stale
    # A wrong password with a stale nonce is just wrong (do not invite a silent retry).
    wrong = srv.verify(auth, method="INVITE", password="nope", now=61.0)
    assert not wrong.ok and not wrong.stale


def test_forged_or_foreign_nonces_are_invalid() -> None:
    srv = server()
    other = DigestServer(b"other-secret", "sipledger.test")
    assert srv.nonce_status(srv.make_nonce(10.0), 11.0) == "valid"
    assert srv.nonce_status(other.make_nonce(10.0), 11.0) == "invalid"
    assert srv.nonce_status("not-base64!!", 11.0) == "invalid"
    assert srv.nonce_status("", 11.0) == "invalid"
    assert srv.nonce_status(srv.make_nonce(10_000.0), 11.0) == "invalid"  # from the future
    auth = build_authorization(
        other.challenge(10.0), username="a", password="pw", method="INVITE", uri="sip:x"
    )
    assert srv.verify(auth, method="INVITE", password="pw", now=11.0).reason == "invalid nonce"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda a: a.replace("Digest", "Basic"), "not Digest"),
        (lambda a: a.replace('realm="sipledger.test"', 'realm="evil"'), "wrong realm"),
        (lambda a: a.replace("algorithm=MD5", "algorithm=SHA-512"), "algorithm SHA-512 not offered"),
        (lambda a: a.replace("qop=auth", "qop=auth-conf"), "qop auth-conf not supported"),
        (lambda a: a.replace("nc=00000001", "nc=1"), "qop requires cnonce and nc"),
        (lambda a: a.replace('uri="sip:x@y"', 'uri=""'), "missing uri"),
    ],
)
def test_malformed_credentials(mutate: object, reason: str) -> None:
    srv = server()
    auth = build_authorization(
        srv.challenge(0.0), username="a", password="pw", method="INVITE", uri="sip:x@y"
    )
    result = srv.verify(mutate(auth), method="INVITE", password="pw", now=1.0)  # type: ignore[operator]
    assert not result.ok and result.reason == reason


def test_auth_int_and_sess_variants_verify() -> None:
    srv = server(algorithms=("MD5",), qop="auth-int")
    challenge = srv.challenge(0.0, algorithm="MD5-sess")
    auth = build_authorization(
        challenge,
        username="a",
        password="pw",
        method="MESSAGE",
        uri="sip:x",
        body=b"hello",
        cnonce="c1",
        nc=7,
    )
    assert "qop=auth-int" in auth and "nc=00000007" in auth
    assert srv.verify(auth, method="MESSAGE", password="pw", now=1.0, body=b"hello").ok
    assert not srv.verify(auth, method="MESSAGE", password="pw", now=1.0, body=b"tampered").ok


def test_server_requires_secret_and_known_algorithms() -> None:
    with pytest.raises(ValueError):
        DigestServer(b"", "r")
    with pytest.raises(ValueError):
        DigestServer(b"k", "r", algorithms=("SHA-1",))
    with pytest.raises(ValueError):
        build_authorization('Basic realm="x"', username="a", password="b", method="GET", uri="/")
