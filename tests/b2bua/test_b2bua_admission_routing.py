"""Admission (IPs, digest, lockout, limits) and prefix routing, without sockets."""

from __future__ import annotations

from b2bua.admission import Admission, Admit, Challenge, Refuse
from b2bua.routing import RouteTable, should_fail_over
from b2bua.sip.digest import build_authorization
from sipledger.config import Account, AdmissionConfig, Gateway


def _admission(**kw) -> Admission:
    accounts = [
        Account(name="acme", ips=["10.0.0.5"], max_concurrent_calls=2),
        Account(name="roamer", username="roam", password="s3cret"),
    ]
    return Admission(accounts, AdmissionConfig(**kw), secret=b"k")


def _answer(challenge: str, password: str, user: str = "roam") -> str:
    return build_authorization(
        challenge,
        username=user,
        password=password,
        method="INVITE",
        uri="sip:4420@127.0.0.1",
        cnonce="abc",
        nc=1,
    )


def test_known_ip_is_admitted_unknown_without_credentials_is_challenged() -> None:
    adm = _admission()
    assert isinstance(adm.identify("10.0.0.5", "c1", "INVITE", None, 0.0), Admit)
    assert isinstance(adm.identify("192.0.2.9", "c1", "INVITE", None, 0.0), Challenge)


def test_no_digest_accounts_means_unknown_source_is_refused() -> None:
    adm = Admission([Account(name="acme", ips=["10.0.0.5"])], AdmissionConfig(), secret=b"k")
    d = adm.identify("192.0.2.9", "c1", "INVITE", None, 0.0)
    assert isinstance(d, Refuse) and d.status == 403 and d.end_reason == "auth_failed"


def test_right_password_admits_wrong_one_is_refused_after_retry_limit() -> None:
    adm = _admission(auth_retry_limit=3, auth_lock_failures=10)
    ch = adm.identify("192.0.2.9", "c1", "INVITE", None, 0.0)
    assert isinstance(ch, Challenge)
    ok = adm.identify("192.0.2.9", "c1", "INVITE", _answer(ch.www_authenticate[0], "s3cret"), 1.0)
    assert isinstance(ok, Admit) and ok.account.name == "roamer"
    decisions = [
        adm.identify("192.0.2.9", "c2", "INVITE", _answer(ch.www_authenticate[0], "nope"), 2.0)
        for _ in range(3)
    ]
    assert [type(d) for d in decisions] == [Challenge, Challenge, Refuse]
    assert decisions[-1].status == 403


def test_repeated_failures_lock_the_account_even_for_the_right_password() -> None:
    adm = _admission(auth_retry_limit=10, auth_lock_failures=3, auth_lock_seconds=60)
    ch = adm.identify("192.0.2.9", "c1", "INVITE", None, 0.0).www_authenticate[0]
    for i in range(3):
        d = adm.identify("192.0.2.9", f"c{i}", "INVITE", _answer(ch, "bad"), 1.0)
    assert isinstance(d, Refuse) and d.reason_phrase == "Account Locked"
    locked = adm.identify("192.0.2.9", "c9", "INVITE", _answer(ch, "s3cret"), 30.0)
    assert isinstance(locked, Refuse) and locked.reason_phrase == "Account Locked"
    ch2 = adm.identify("192.0.2.9", "c9", "INVITE", None, 62.0).www_authenticate[0]
    assert isinstance(adm.identify("192.0.2.9", "c9", "INVITE", _answer(ch2, "s3cret"), 62.0), Admit)


def test_concurrent_call_limits_per_account_and_system() -> None:
    adm = _admission(max_concurrent_calls=3)
    acme = Account(name="acme", ips=["10.0.0.5"], max_concurrent_calls=2)
    assert adm.acquire(acme) is None and adm.acquire(acme) is None
    refused = adm.acquire(acme)
    assert refused is not None and refused.end_reason == "call_limit_exceeded" and refused.status == 503
    adm.release(acme)
    assert adm.acquire(acme) is None
    other = Account(name="roamer")
    assert adm.acquire(other) is None
    assert adm.acquire(other) is not None  # the system-wide cap of 3


def test_longest_prefix_wins_and_no_route_is_none() -> None:
    a, b, c = Gateway(name="a"), Gateway(name="b"), Gateway(name="c")
    table = RouteTable({"44": [a], "4420": [b, c], "1": [c]})
    assert [g.name for g in table.lookup("442071234567").gateways] == ["b", "c"]
    assert table.lookup("+4430").gateways == (a,)
    assert table.lookup("33123") is None
    assert [should_fail_over(s) for s in (None, 408, 503, 500, 486, 404)] == [True] * 4 + [False] * 2
