"""Admission, concurrency limits and call.terminate commands in the sans-I/O core."""

from __future__ import annotations

from test_b2bua_core_harness import CALLER, GW1, Call, Harness, answer, caller_invite, labels, only, select

from b2bua.sip.digest import build_authorization

ROAMER = {"accounts": [{"name": "roamer", "username": "roam", "password": "s3cret"}]}


def _authorized(challenge: str, password: str, *, branch: str, cseq: int) -> object:
    auth = build_authorization(
        challenge,
        username="roam",
        password=password,
        method="INVITE",
        uri="sip:15551230000@10.0.0.9:5060",
        cnonce="abc",
        nc=1,
    )
    return caller_invite(branch=branch, cseq=cseq, headers=[("Authorization", auth)])


def test_digest_challenge_then_admit_without_events_for_the_challenge() -> None:
    h = Harness(ROAMER)
    out = h.feed(caller_invite())
    challenge = only(out, CALLER, status=401)
    assert h.events == []
    www = challenge.headers.get_all("WWW-Authenticate")
    assert www
    out = h.feed(_authorized(www[0], "s3cret", branch="z9hG4bKc2", cseq=2))
    assert select(out, GW1, method="INVITE")
    assert h.event("call.setup")["account"] == "roamer"


def test_wrong_password_is_refused_with_auth_failed_events() -> None:
    h = Harness({**ROAMER, "admission": {"auth_retry_limit": 2, "auth_lock_failures": 10}})
    www = only(h.feed(caller_invite()), status=401).headers.get_all("WWW-Authenticate")[0]
    assert select(h.feed(_authorized(www, "nope", branch="z9hG4bKc2", cseq=2)), status=401)
    out = h.feed(_authorized(www, "nope", branch="z9hG4bKc3", cseq=3))
    assert select(out, status=403)
    assert h.types() == ["call.setup", "call.terminated"]
    term = h.event("call.terminated")
    assert (term["reason"], term["sip_status"], term["initiator"]) == ("auth_failed", 403, "system")
    assert h.event("call.setup")["account"] == "roamer"


def test_unknown_source_without_digest_accounts_is_403_counted_not_journalled() -> None:
    h = Harness({"accounts": [{"name": "acme", "ips": ["192.0.2.7"]}]})
    out = h.feed(caller_invite())
    assert labels(out)[-1] == "403 INVITE -> 10.0.0.1"
    # Not a call of any account: no call events, a counter per cause and source, one log line.
    assert h.events == []
    assert h.core.refusals.by_cause == {"unknown_source": 1}
    assert dict(h.core.refusals.by_source) == {"10.0.0.1": 1}
    assert [log.text for log in h.logs if "unadmitted" in log.text]
    # No transaction is kept for it either (a stateless refusal, RFC 3261 8.2.7).
    assert len(h.core.layer) == 0


def test_concurrent_call_limit_refuses_the_second_call_and_frees_the_slot() -> None:
    h = Harness({"accounts": [{"name": "acme", "ips": ["10.0.0.1"], "max_concurrent_calls": 1}]})
    c = Call(h)
    out = h.feed(caller_invite(call_id="c2@10.0.0.1", branch="z9hG4bKc9"))
    refused = only(out, status=503)
    assert refused.reason == "Call Limit Exceeded"
    terms = [e for e in h.events if e["type"] == "call.terminated"]
    assert [(t["reason"], t["sip_status"]) for t in terms] == [("call_limit_exceeded", 503)]
    h.feed(c.caller.create_bye(branch="z9hG4bKbye"))
    out = h.feed(caller_invite(call_id="c3@10.0.0.1", branch="z9hG4bKc10"))
    assert select(out, GW1, method="INVITE")


def _command(call_id: str, **kw: object) -> dict[str, object]:
    return {
        "command_id": f"cmd-{call_id}",
        "type": "call.terminate",
        "call_id": call_id,
        "node": "node-1",
        "reason": "no_timer_limit",
        "issued_by": "sipledger-pipeline",
        "deadline": "2026-01-01T00:00:00.000Z",
        "ts": "2026-01-01T00:00:05.000Z",
        "schema_version": 1,
        **kw,
    }


def test_terminate_command_hangs_up_both_legs_once() -> None:
    h = Harness()
    c = Call(h)
    out = h.command(_command(c.call_id))
    assert sorted(labels(out)) == ["BYE -> 10.0.0.1", "BYE -> 10.0.0.2"]
    term = h.event("call.terminated")
    assert (term["reason"], term["initiator"]) == ("no_timer_limit", "system")
    assert h.core.stats["commands_applied"] == 1
    assert h.command(_command(c.call_id)) == []  # duplicate
    assert h.command(_command("unknown-call")) == []
    assert h.command(_command(c.call_id, node="node-2", command_id="other")) == []
    assert h.core.stats["commands_ignored"] == 3


def test_terminate_command_on_a_ringing_call_cancels_it() -> None:
    h = Harness()
    ci = only(h.feed(caller_invite()), GW1, method="INVITE")
    h.feed(answer(ci, 180), GW1)
    call_id = h.event("call.setup")["call_id"]
    out = h.command(_command(call_id, reason="pipeline_terminate"))
    assert labels(out) == ["503 INVITE -> 10.0.0.1", "CANCEL -> 10.0.0.2"]
    assert h.event("call.terminated")["reason"] == "pipeline_terminate"
