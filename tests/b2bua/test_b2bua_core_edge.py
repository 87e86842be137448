"""The SIP edge in the sans-I/O core: replay, lockout per (name, source), bounded state, refusals
without call events, responses to the packet's source, and the RFC 3261 8.2 request checks."""

from __future__ import annotations

import gc
import random
import tracemalloc

from test_b2bua_core_harness import CALLER, GW1, Harness, caller_invite, labels, only, select

from b2bua.actions import Address, Send
from b2bua.core_config import TX_TIMERS_KEY
from b2bua.sip.digest import build_authorization
from b2bua.sip.message import Request, clear_parse_caches, parse_cache_sizes, parse_via
from b2bua.sip.parser import ParserLimits, parse_message
from b2bua.sip.serializer import serialize

ROAMER = {"accounts": [{"name": "roamer", "username": "roam", "password": "s3cret"}]}
URI = "sip:15551230000@10.0.0.9:5060"
ATTACKER = Address("198.51.100.66", 5062, "udp")


def _authorized(challenge: str, password: str, *, branch: str, cseq: int, user: str = "roam",
                call_id: str = "c1@10.0.0.1", callee: str = "15551230000", uri: str = URI,
                nc: int = 1) -> Request:
    auth = build_authorization(challenge, username=user, password=password, method="INVITE", uri=uri,
                               cnonce="abc", nc=nc)
    return caller_invite(branch=branch, cseq=cseq, call_id=call_id, callee=callee,
                         headers=[("Authorization", auth)])


def _challenge(h: Harness, source: Address = CALLER, **kw: object) -> str:
    out = h.feed(caller_invite(**kw), source)  # type: ignore[arg-type]
    return only(out, status=401).headers.get_all("WWW-Authenticate")[0]


def test_a_captured_authorization_replayed_reaches_no_carrier() -> None:
    h = Harness(ROAMER)
    www = _challenge(h)
    real = _authorized(www, "s3cret", branch="z9hG4bKreal", cseq=2)
    assert select(h.feed(real), GW1, method="INVITE")
    setups = len([e for e in h.events if e["type"] == "call.setup"])
    captured = real.headers.get("Authorization") or ""

    def replay(source: Address, callee: str, n: int) -> list[object]:
        uri = f"sip:{callee}@10.0.0.9:5060"
        req = caller_invite(branch=f"z9hG4bKrp{n}", call_id=f"replay{n}@x", callee=callee,
                            headers=[("Authorization", captured)])
        assert req.uri == uri
        return h.feed(req, source)

    # From another address, to the same and to a premium number; then from the same address.
    for n, (source, callee) in enumerate([(ATTACKER, "15551230000"), (ATTACKER, "19005550100"),
                                          (CALLER, "15551230000"), (CALLER, "19005550100")]):
        out = replay(source, callee, n)
        assert not select(out, GW1, method="INVITE"), labels(out)
        final = [m for m, _ in out if m.status >= 200]
        assert [m.status for m in final] in ([401], [400]), labels(out)
    assert len([e for e in h.events if e["type"] == "call.setup"]) == setups
    assert h.core.admission.digest.replays == 1  # the same-source, same-number replay


def test_lockout_is_per_source_and_does_not_lock_the_real_user_elsewhere() -> None:
    h = Harness({**ROAMER, "admission": {"auth_lock_failures": 3, "auth_retry_limit": 10}})
    for i in range(3):
        www = _challenge(h, ATTACKER, call_id=f"a{i}", branch=f"z9hG4bKa{i}")
        out = h.feed(_authorized(www, "guess", branch=f"z9hG4bKb{i}", cseq=2, call_id=f"a{i}"), ATTACKER)
    assert only(out, status=403).reason == "Account Locked"
    # The attacker is locked even with the right password...
    www = _challenge(h, ATTACKER, call_id="a9", branch="z9hG4bKa9")
    out = h.feed(_authorized(www, "s3cret", branch="z9hG4bKb9", cseq=2, call_id="a9"), ATTACKER)
    assert only(out, status=403).reason == "Account Locked"
    # ...the real user on its own address is not.
    www = _challenge(h)
    assert select(h.feed(_authorized(www, "s3cret", branch="z9hG4bKok", cseq=2)), GW1, method="INVITE")


def _responses_for(h: Harness, user: str, source: Address, attempts: int, start: float) -> list[str]:
    seen = []
    for i in range(attempts):
        h.now = start + i
        www = _challenge(h, source, call_id=f"{user}{i}", branch=f"z9hG4bK{user}c{i}")
        out = h.feed(_authorized(www, "guess", branch=f"z9hG4bK{user}r{i}", cseq=2, user=user,
                                 call_id=f"{user}{i}"), source)
        seen += [f"{m.status} {m.reason}" for m, _ in out if m.status >= 200]
    return seen


def test_unknown_and_known_names_get_the_same_answers_and_the_lock_ends_with_its_count() -> None:
    h = Harness({**ROAMER, "admission": {"auth_lock_failures": 3, "auth_retry_limit": 10,
                                         "auth_lock_seconds": 60, "auth_lock_max_seconds": 600}})
    known = _responses_for(h, "roam", ATTACKER, 5, 0.0)
    unknown = _responses_for(h, "nobody", ATTACKER, 5, 0.0)
    assert known == unknown == ["401 Unauthorized"] * 2 + ["403 Account Locked"] * 3
    # After the lock (60 s from t=2) the count starts afresh: one wrong answer does not re-lock...
    assert _responses_for(h, "roam", ATTACKER, 1, 70.0) == ["401 Unauthorized"]
    # ...but locking again within the failure window doubles the lock (backoff).
    assert _responses_for(h, "roam", ATTACKER, 2, 71.0)[-1] == "403 Account Locked"
    assert _responses_for(h, "roam", ATTACKER, 1, 72.0 + 100) == ["403 Account Locked"]
    assert _responses_for(h, "roam", ATTACKER, 1, 72.0 + 121) == ["401 Unauthorized"]


def test_refusals_of_unadmitted_traffic_write_no_events_but_known_account_failures_do() -> None:
    h = Harness({**ROAMER, "admission": {"auth_lock_failures": 2, "auth_retry_limit": 10}})
    _responses_for(h, "nobody", ATTACKER, 4, 0.0)
    assert h.events == []
    assert h.core.refusals.by_cause["unknown_user"] == 1 and h.core.refusals.by_cause["locked"] == 2
    _responses_for(h, "roam", ATTACKER, 2, 10.0)
    assert h.types() == ["call.setup", "call.terminated"]  # the failure that locked a real account
    assert h.event("call.setup")["account"] == "roamer"


def test_state_from_20000_random_usernames_stays_bounded() -> None:
    # One address with a valid nonce of its own sends wrong answers under random user names (the
    # audit measured 2.6 KB kept per packet). Records, nonces and transactions must all stay bounded.
    h = Harness({**ROAMER, "admission": {"auth_max_records": 1000}})
    www = _challenge(h, ATTACKER, call_id="seed", branch="z9hG4bKseed")
    rng = random.Random(5)
    flood = [parse_message(serialize(_authorized(www, "x", branch=f"z9hG4bKf{i}", cseq=2,
                                                 user=f"{rng.getrandbits(64):016x}", call_id=f"f{i}@x")))
             for i in range(20_000)]
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    statuses: set[int] = set()
    for i, msg in enumerate(flood):
        for action in h.core.receive(msg, ATTACKER, i * 0.001):  # type: ignore[arg-type]
            if isinstance(action, Send) and action.data.startswith(b"SIP/2.0 4"):
                statuses.add(int(action.data[8:11]))
    flood.clear()  # the packets themselves are not state
    # The parser's caches of parsed values are not per-request state: a fixed cost, capped per cache.
    assert all(n <= 4096 for n in parse_cache_sizes().values()), parse_cache_sizes()
    clear_parse_caches()
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert statuses == {401}  # each name gets a fresh challenge after its first wrong answer
    assert h.core.admission.failure_records == 1000
    assert len(h.core.layer) == 0 and h.core.tx_dest == {}
    assert h.events == []
    records = h.core.admission.failure_records
    print(f"20,000 random-username INVITEs: {grown} bytes retained, {records} records")
    assert grown < 1_000_000, grown  # the stated bound for 1,000 records: under 1 KB each


def test_responses_go_to_the_packet_source_never_to_a_forged_via() -> None:
    h = Harness()
    req = caller_invite()
    req.headers.set("Via", "SIP/2.0/UDP victim.example:5099;branch=z9hG4bKforged;received=203.0.113.9")
    req.headers.set("CSeq", "1 BYE")  # CSeq method mismatch: a 400 from the parser's partial fields
    out = h.feed(req)
    resp, dest = out[-1]
    assert resp.status == 400 and (dest.host, dest.port) == ("10.0.0.1", 5099)
    assert parse_via(resp.headers.get("Via")).received == "10.0.0.1"
    # With rport, the source port too; a forged rport value is overwritten.
    req = caller_invite(branch="z9hG4bKx2")
    req.headers.set("Via", "SIP/2.0/UDP victim.example:5099;branch=z9hG4bKx2;rport=7;received=203.0.113.9")
    req.headers.set("CSeq", "1 BYE")
    resp, dest = h.feed(req)[-1]
    assert resp.status == 400 and (dest.host, dest.port) == (CALLER.host, CALLER.port)
    assert parse_via(resp.headers.get("Via")).rport == CALLER.port
    # A request the core answers itself (OPTIONS) follows the same rules.
    opt = Request("OPTIONS", "sip:b2bua@10.0.0.9", [
        ("Via", "SIP/2.0/UDP victim.example:5099;branch=z9hG4bKo;received=203.0.113.9"),
        ("From", "<sip:a@x>;tag=1"), ("To", "<sip:b@y>"), ("Call-ID", "o1"), ("CSeq", "1 OPTIONS")])
    resp, dest = h.feed(opt)[-1]
    assert resp.status == 200 and (dest.host, dest.port) == ("10.0.0.1", 5099)


def _request(method: str, uri: str = "sip:b2bua@10.0.0.9", headers: list[tuple[str, str]] | None = None,
             body: bytes = b"", to_tag: str = "") -> Request:
    tag = f";tag={to_tag}" if to_tag else ""
    return Request(method, uri, [
        ("Via", "SIP/2.0/UDP 10.0.0.1:5061;branch=z9hG4bKq" + method[:8]),
        ("From", "<sip:a@10.0.0.1>;tag=1"), ("To", f"<sip:b@10.0.0.9>{tag}"), ("Call-ID", "q-" + method[:8]),
        ("CSeq", f"1 {method}"), *(headers or [])], body)


def test_rfc3261_8_2_checks() -> None:
    h = Harness()
    assert only(h.feed(_request("REGISTER")), status=405).headers.get("Allow")
    odd = "!interesting-Method0123456789_*+`.%indeed'~"
    assert only(h.feed(_request(odd)), status=501)
    assert only(h.feed(_request("OPTIONS", "nobodyKnowsThisScheme:totallyopaquecontent")), status=416)
    ext = only(h.feed(_request("OPTIONS", headers=[("Require", "nothingSupportsThis, timer")])), status=420)
    assert ext.headers.get("Unsupported") == "nothingSupportsThis"
    # An INVITE is authenticated first (8.2.1), then checked; none of these reaches a carrier.
    out = h.feed(caller_invite(headers=[("Require", "100rel")], branch="z9hG4bKr1", call_id="r1"))
    assert only(out, status=420).headers.get("Unsupported") == "100rel" and not select(out, GW1)
    inv = caller_invite(branch="z9hG4bKr2", call_id="r2", body=b"")
    inv.headers.add("Content-Type", "application/unknownformat")
    inv.body = b"<unknown/>"
    out = h.feed(inv)
    assert only(out, status=415).headers.get("Accept") == "application/sdp" and not select(out, GW1)
    out = h.feed(caller_invite(branch="z9hG4bKr3", call_id="r3", callee="x").__class__(
        "INVITE", "soap.beep://192.0.2.103:3002", caller_invite(branch="z9hG4bKr3", call_id="r3").headers,
        b""))
    assert only(out, status=416) and not select(out, GW1)
    assert h.events == [] and len(h.core.layer) == 0  # all answered statelessly...
    assert h.core.layer.pending_timers == 0 and TX_TIMERS_KEY not in h.timers  # ...and no timer left


def test_parse_errors_answer_with_their_own_status() -> None:
    h = Harness({"sip": {"max_message_bytes": 2048}})
    big = caller_invite(body=b"v=0\r\n" + b"a=x\r\n" * 600)
    data = serialize(big)
    try:
        parse_message(data, limits=ParserLimits(max_message_size=2048))
    except Exception as exc:  # the adapter hands ParseError over as is
        h.apply(h.core.receive(exc, CALLER, h.now))  # type: ignore[arg-type]
    resp, dest = h.take()[-1]
    assert resp.status == 513 and (dest.host, dest.port) == (CALLER.host, CALLER.port)
    v7 = serialize(caller_invite(branch="z9hG4bKv7")).replace(b" SIP/2.0\r\nVia", b" SIP/7.0\r\nVia")
    assert h.feed(v7)[-1][0].status == 505


def test_sha256_digest_admits_when_it_is_the_preferred_algorithm() -> None:
    h = Harness({**ROAMER, "admission": {"digest_algorithms": ["SHA-256", "MD5"]}})
    out = h.feed(caller_invite())
    challenges = only(out, status=401).headers.get_all("WWW-Authenticate")
    assert ["algorithm=SHA-256" in c for c in challenges] == [True, False]  # RFC 8760: preferred first
    req = _authorized(challenges[0], "s3cret", branch="z9hG4bKsha", cseq=2)
    assert "algorithm=SHA-256" in (req.headers.get("Authorization") or "")
    assert select(h.feed(req), GW1, method="INVITE")
    assert h.event("call.setup")["account"] == "roamer"


def test_answering_a_transaction_that_already_answered_is_logged_not_an_internal_error() -> None:
    """The transaction layer refuses a second final response (TransactionStateError); the core takes
    that as "nothing left to answer", as it does for a transaction that is gone."""
    from b2bua.sip.transaction_layer import server_key

    h = Harness()
    invite = caller_invite()
    h.feed(invite)
    key = server_key(invite)
    h.core._guard(lambda: h.core._respond(key, invite, 486), 0.0, CALLER, lambda: "test")
    refused = h.core._guard(lambda: h.core._respond(key, invite, 480), 0.0, CALLER, lambda: "test")
    assert h.core.stats["internal_errors"] == 0
    assert any("cannot answer INVITE with 480" in getattr(a, "text", "") for a in refused)
