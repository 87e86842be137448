"""Every SIPp scenario in tests/sipp, proven SIPp-to-SIPp (no B2BUA in between).

Each caller (UAC) scenario runs against the carrier (UAS) scenario it will meet behind the
B2BUA, or against a `selftest_*` carrier standing in for the B2BUA where the B2BUA itself is
the other party (422, digest challenge, B2BUA-driven refreshes). The assertions read the
message traces of both sides.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from sip_harness import SCENARIO_DIR, parse_message_trace, scenario_default_keys
from sip_harness.fixtures import PairResult, run_pair

pytestmark = pytest.mark.sipp

CALLER_SEQ_BASIC = ["INVITE", "100 INVITE", "180 INVITE", "200 INVITE", "ACK"]


def _pair(tmp_path: Path, caller_xml: str, carrier_xml: str, **kwargs: Any) -> PairResult:
    return run_pair(caller_xml, carrier_xml, workdir=tmp_path, timeout_s=15, **kwargs)


def _sent(pair: PairResult) -> list[str]:
    return pair.caller.first_line_sequence("sent")


def _flow(pair: PairResult, side: str = "caller") -> list[str]:
    result = pair.caller if side == "caller" else pair.carrier
    return result.first_line_sequence()


# --------------------------------------------------------------------------- basic calls


def test_basic_bye_against_answer_wait_bye(tmp_path: Path) -> None:
    pair = _pair(tmp_path, "uac_basic_bye", "uas_answer_wait_bye", caller={"pause_ms": 100})
    assert pair.ok, pair.describe()
    assert _flow(pair) == [
        "> INVITE", "< 100 INVITE", "< 180 INVITE", "< 200 INVITE", "> ACK", "> BYE", "< 200 BYE",
    ]  # fmt: skip
    assert _flow(pair, "carrier") == [
        "< INVITE", "> 100 INVITE", "> 180 INVITE", "> 200 INVITE", "< ACK", "< BYE", "> 200 BYE",
    ]  # fmt: skip
    invite = pair.caller.requests("INVITE", "sent")[0]
    ok = pair.caller.responses(200, "received", method="INVITE")[0]
    ack = pair.caller.requests("ACK", "sent")[0]
    bye = pair.caller.requests("BYE", "sent")[0]
    assert invite.body.startswith("v=0") and invite.header("Content-Type") == "application/sdp"
    assert ok.body.startswith("v=0")
    # ACK and BYE are in-dialog: remote target from the 200's Contact, To tag from the 200.
    assert ack.tag("To") == bye.tag("To") == ok.tag("To") is not None
    assert ack.first_line.split()[1] == ok.header("Contact").strip("<>")
    assert ack.cseq == (invite.cseq[0], "ACK")
    assert bye.cseq is not None and bye.cseq[0] > invite.cseq[0]
    # The hold time (-d) sits between ACK and BYE.
    assert (bye.timestamp - ack.timestamp).total_seconds() >= 0.09


def test_basic_bye_several_calls(tmp_path: Path) -> None:
    pair = _pair(tmp_path, "uac_basic_bye", "uas_answer_wait_bye", calls=3, caller={"rate": 20, "limit": 3})
    assert pair.ok, pair.describe()
    assert pair.caller.successful_calls == 3 and pair.caller.failed_calls == 0
    assert pair.carrier.successful_calls == 3
    assert len({m.call_id for m in pair.carrier.requests("INVITE")}) == 3


def test_wait_remote_bye_against_answer_then_bye(tmp_path: Path) -> None:
    pair = _pair(tmp_path, "uac_wait_remote_bye", "uas_answer_then_bye", carrier={"pause_ms": 200})
    assert pair.ok, pair.describe()
    assert _sent(pair) == ["INVITE", "ACK", "200 BYE"]
    assert pair.carrier.first_line_sequence("sent") == ["100 INVITE", "180 INVITE", "200 INVITE", "BYE"]
    ok = pair.carrier.responses(200, "sent", method="INVITE")[0]
    bye = pair.caller.requests("BYE", "received")[0]
    invite = pair.caller.requests("INVITE", "sent")[0]
    # The carrier's BYE belongs to the dialog: its From tag is the 200's To tag, its To tag is
    # the caller's From tag and it targets the INVITE's Contact.
    assert bye.tag("From") == ok.tag("To")
    assert bye.tag("To") == invite.tag("From")
    assert bye.first_line.split()[1] == invite.header("Contact").strip("<>")


def test_cancel_against_ring_forever(tmp_path: Path) -> None:
    pair = _pair(tmp_path, "uac_cancel", "uas_ring_forever", caller={"pause_ms": 200})
    assert pair.ok, pair.describe()
    assert _flow(pair) == [
        "> INVITE", "< 100 INVITE", "< 180 INVITE", "> CANCEL", "< 200 CANCEL", "< 487 INVITE", "> ACK",
    ]  # fmt: skip
    invite = pair.caller.requests("INVITE", "sent")[0]
    cancel = pair.caller.requests("CANCEL", "sent")[0]
    ack = pair.caller.requests("ACK", "sent")[0]
    r487 = pair.caller.responses(487, "received")[0]
    # CANCEL and the ACK of the 487 reuse the INVITE's branch and CSeq number.
    assert cancel.header("Via") == invite.header("Via") == ack.header("Via")
    assert cancel.cseq == (invite.cseq[0], "CANCEL")
    assert ack.cseq == (invite.cseq[0], "ACK")
    assert ack.tag("To") == r487.tag("To") is not None
    assert r487.cseq == invite.cseq
    assert (cancel.timestamp - invite.timestamp).total_seconds() >= 0.19


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("caller", "carrier", "status"),
    [
        ("uac_expect_486", "uas_busy", 486),
        ("uac_expect_404", "uas_404", 404),
        ("uac_expect_503", "uas_503", 503),
        ("uac_expect_error", "uas_503", 503),
        ("uac_expect_error", "uas_busy", 486),
        ("uac_expect_408_or_480", "uas_503", 503),
    ],
)
def test_expect_error(tmp_path: Path, caller: str, carrier: str, status: int) -> None:
    pair = _pair(tmp_path, caller, carrier)
    assert pair.ok, pair.describe()
    assert _flow(pair) == ["> INVITE", "< 100 INVITE", f"< {status} INVITE", "> ACK"]
    assert _flow(pair, "carrier") == ["< INVITE", "> 100 INVITE", f"> {status} INVITE", "< ACK"]
    assert f"final_status={status} (SIP/2.0 {status})" in pair.caller.log_lines()
    invite = pair.caller.requests("INVITE", "sent")[0]
    ack = pair.caller.requests("ACK", "sent")[0]
    assert ack.header("Via") == invite.header("Via")  # non-2xx ACK: same transaction
    assert ack.first_line.split()[1] == invite.first_line.split()[1]


def test_expect_486_rejects_other_status(tmp_path: Path) -> None:
    """The strict variants really are strict: a 503 where 486 is expected fails the caller."""
    pair = _pair(tmp_path, "uac_expect_486", "uas_503")
    assert pair.carrier.ok, pair.describe()
    assert pair.caller.returncode == 1 and pair.caller.failed_calls == 1, pair.describe()
    assert pair.caller.responses(503, "received")[0].unexpected


def test_silent_carrier_absorbs_invite_retransmissions(tmp_path: Path) -> None:
    # The caller gives up after 2 retransmissions (-nd: no CANCEL); the B2BUA would answer the
    # caller with 408/480 here instead.
    pair = _pair(
        tmp_path,
        "uac_expect_408_or_480",
        "uas_silent",
        caller={"max_retrans": 2, "extra_args": ["-nd"]},
        carrier={"keys": {"silence_ms": 2500}},
    )
    assert pair.carrier.ok, pair.describe()
    assert pair.caller.failed_calls == 1, pair.describe()
    assert pair.carrier.first_line_sequence(retransmissions=True) == ["< INVITE"] * 3
    assert [m.retransmission for m in pair.carrier.messages] == [False, True, True]
    assert not pair.carrier.requests(direction="sent") and not pair.carrier.responses(direction="sent")


# --------------------------------------------------------------------------- session timers


def test_cancel_answered_twice_is_not_a_failed_call(tmp_path: Path) -> None:
    """A CANCEL answered late is sent again by the caller and both copies get their 200 (17.2.2); the
    second can come after the 487 and the ACK. The billing drill saw exactly that under load, and the
    caller scenario failed the call on it ("unexpected message"). It must end as a cancelled call."""
    pair = _pair(tmp_path, "uac_cancel", "selftest_uas_cancel_answered_twice", caller={"pause_ms": 200})
    assert pair.ok, pair.describe()
    assert _flow(pair) == [
        "> INVITE", "< 100 INVITE", "< 180 INVITE", "> CANCEL", "< 200 CANCEL", "< 487 INVITE", "> ACK",
    ]  # fmt: skip
    # The second 200 did go out, after the ACK (the trace lists a byte-identical copy as a retransmission).
    assert len(pair.carrier.responses(200, "sent", retransmissions=True)) == 2


def test_422_retry_against_selftest(tmp_path: Path) -> None:
    pair = _pair(
        tmp_path,
        "uac_422_retry",
        "selftest_uas_422",
        caller={"keys": {"se": 30}},
        carrier={"keys": {"min_se": 90}},
    )
    assert pair.ok, pair.describe()
    assert _flow(pair) == [
        "> INVITE", "< 422 INVITE", "> ACK", "> INVITE", "< 100 INVITE", "< 200 INVITE", "> ACK",
        "> BYE", "< 200 BYE",
    ]  # fmt: skip
    first, second = pair.caller.requests("INVITE", "sent")
    assert first.session_expires() == (30, None) and first.header("Min-SE") == "30"
    assert "timer" in first.header("Supported")
    assert second.session_expires() == (90, None) and second.header("Min-SE") == "90"
    assert second.call_id == first.call_id and second.tag("From") == first.tag("From")
    assert second.cseq == (first.cseq[0] + 1, "INVITE")
    assert second.header("Via") != first.header("Via")
    assert "min_se=90" in pair.caller.log_lines()


@pytest.mark.parametrize("method", ["UPDATE", "INVITE"])
def test_caller_refreshes_against_answer_refreshes(tmp_path: Path, method: str) -> None:
    scenario = "uac_timer_refresh_update" if method == "UPDATE" else "uac_timer_refresh_reinvite"
    pair = _pair(tmp_path, scenario, "uas_answer_refreshes", caller={"keys": {"se": 2, "refreshes": 2}})
    assert pair.ok, pair.describe()
    invites = pair.caller.requests("INVITE", "sent")
    assert invites[0].session_expires() == (2, "uac") and invites[0].header("Min-SE") == "2"
    refreshes = (
        pair.caller.requests(method, "sent")[1:] if method == "INVITE" else pair.caller.requests(method)
    )
    assert len(refreshes) == 2
    for r in refreshes:
        assert r.session_expires() == (2, "uac")
        assert r.tag("To") is not None  # in-dialog
        assert r.body.startswith("v=0") == (method == "INVITE")
    # Refresh interval is SE/2 = 1 s.
    assert (refreshes[0].timestamp - pair.caller.requests("ACK", "sent")[0].timestamp).total_seconds() >= 0.95
    assert (refreshes[1].timestamp - refreshes[0].timestamp).total_seconds() >= 0.95
    # Every refresh answered 200 with Session-Expires echoed and Require: timer.
    answers = pair.carrier.responses(200, "sent", method=method)
    answers = answers[1:] if method == "INVITE" else answers
    assert len(answers) == 2
    assert all(a.session_expires() == (2, "uac") and a.header("Require") == "timer" for a in answers)
    assert pair.carrier.log_lines() == [f"refresh={method}"] * 2
    if method == "INVITE":
        assert len(pair.caller.requests("ACK", "sent")) == 3
    assert _sent(pair)[-1] == "BYE" and pair.caller.responses(200, method="BYE")


@pytest.mark.parametrize(
    ("caller", "extra"),
    [("uac_timer_silent", {"keys": {"se": 90}}), ("uac_no_timer_wait_bye", {})],
)
def test_waiting_callers_against_answer_then_bye(tmp_path: Path, caller: str, extra: dict) -> None:
    pair = _pair(tmp_path, caller, "uas_answer_then_bye", caller=extra, carrier={"pause_ms": 300})
    assert pair.ok, pair.describe()
    assert _sent(pair) == ["INVITE", "ACK", "200 BYE"]  # never refreshes
    invite = pair.caller.requests("INVITE", "sent")[0]
    if caller == "uac_timer_silent":
        assert invite.session_expires() == (90, "uac") and invite.header("Min-SE") == "90"
        assert "timer" in invite.header("Supported")
    else:
        assert invite.session_expires() is None
        assert not invite.has_header("Min-SE") and not invite.has_header("Supported")
        assert "timer" not in invite.raw.lower()


@pytest.mark.parametrize("selftest", ["selftest_uas_refresher", "selftest_uas_refresher_reinvite"])
def test_refresher_uas_answers_k_then_ignores(tmp_path: Path, selftest: str) -> None:
    method = "INVITE" if selftest.endswith("reinvite") else "UPDATE"
    pair = _pair(
        tmp_path,
        "uac_timer_refresher_uas",
        selftest,
        caller={"keys": {"se": 90, "answers": 2}},
        carrier={"keys": {"se": 90, "answered": 2, "gap_ms": 300}},
    )
    assert pair.ok, pair.describe()
    invite = pair.caller.requests("INVITE", "sent")[0]
    assert invite.session_expires() == (90, "uas")
    received = [m for m in pair.caller.requests(method, "received") if m.tag("To")]
    assert len(received) == 3  # K + 1 refreshes came in
    answered = pair.caller.responses(200, "sent", method=method)
    assert [a.cseq for a in answered] == [r.cseq for r in received[:2]]  # the last one ignored
    assert all(a.session_expires() == (90, "uac") and a.header("Require") == "timer" for a in answered)
    assert _flow(pair)[-2:] == ["< BYE", "> 200 BYE"]
    assert pair.caller.log_lines() == [f"refresh_received={method}"] * 3 + ["refresh_ignored=3.000000"]


# --------------------------------------------------------------------------- digest auth


def test_auth_against_selftest(tmp_path: Path) -> None:
    pair = _pair(
        tmp_path,
        "uac_auth",
        "selftest_uas_auth",
        caller={"auth_user": "alice", "auth_password": "secret"},
    )
    assert pair.ok, pair.describe()
    assert _flow(pair) == [
        "> INVITE", "< 401 INVITE", "> ACK", "> INVITE", "< 100 INVITE", "< 200 INVITE", "> ACK",
        "> BYE", "< 200 BYE",
    ]  # fmt: skip
    first, second = pair.caller.requests("INVITE", "sent")
    assert not first.has_header("Authorization")
    auth = second.header("Authorization")
    assert auth is not None and auth.startswith("Digest ")
    assert 'username="alice"' in auth and 'realm="sipledger"' in auth
    assert re.search(r'response="[0-9a-f]{32}"', auth)
    assert pair.carrier.log_lines() == ["auth_valid=true"]


def test_auth_wrong_password_against_selftest(tmp_path: Path) -> None:
    pair = _pair(
        tmp_path,
        "uac_auth_wrong",
        "selftest_uas_auth",
        caller={"auth_user": "alice", "auth_password": "not-the-password"},
    )
    assert pair.ok, pair.describe()
    assert _flow(pair) == ["> INVITE", "< 401 INVITE", "> ACK", "> INVITE", "< 403 INVITE", "> ACK"]
    assert pair.carrier.log_lines() == ["auth_valid=false"]
    assert "final_status=403 (SIP/2.0 403)" in pair.caller.log_lines()


def test_auth_wrong_password_fails_uac_auth(tmp_path: Path) -> None:
    """uac_auth needs the 200: refused credentials fail the call."""
    pair = _pair(
        tmp_path,
        "uac_auth",
        "selftest_uas_auth",
        # Abort on the unexpected 403 without SIPp's default BYE, which the carrier would not expect.
        caller={
            "auth_user": "alice",
            "auth_password": "nope",
            "extra_args": ["-default_behaviors", "abortunexp"],
        },
        # The aborted caller never ACKs the 403: the carrier just runs into its -timeout.
        carrier={"timeout_s": 2},
    )
    assert pair.caller.returncode == 1 and pair.caller.failed_calls == 1, pair.describe()
    assert pair.caller.responses(403, "received")[0].unexpected
    assert pair.caller.first_line_sequence("sent") == ["INVITE", "ACK", "INVITE"]
    assert pair.carrier.log_lines() == ["auth_valid=false"]


# --------------------------------------------------------------------------- static checks

_BUILTIN = {
    "service", "remote_ip", "remote_port", "local_ip", "local_port", "local_ip_type", "transport",
    "branch", "call_id", "cseq", "pid", "call_number", "len", "media_ip", "media_ip_type",
    "media_port", "next_url", "peer_tag_param", "routes", "authentication",
}  # fmt: skip


@pytest.mark.parametrize("path", sorted(SCENARIO_DIR.glob("*.xml")), ids=lambda p: p.stem)
def test_scenario_keys_are_documented(path: Path) -> None:
    """Every -key keyword a scenario uses has a documented default (SIPp refuses unknown ones)."""
    text = path.read_text()
    body = text[text.index("<scenario") :]
    used = {
        k
        for k in re.findall(r"\[([A-Za-z_][A-Za-z0-9_.-]*)\]", body)
        if k not in _BUILTIN and not k.startswith("last_")
    }
    assert used <= set(scenario_default_keys(path)), f"{path.name}: undocumented keys {used}"
    assert "Usage:" in text[: text.index("<scenario")]


def test_trace_parser_handles_unexpected_and_stream_blocks() -> None:
    crlf = "\r\n"
    inv = crlf.join(["INVITE sip:1@h SIP/2.0", "Call-ID: a", "CSeq: 1 INVITE", "l: 0", "", ""])
    resp = crlf.join(["SIP/2.0 486 Busy Here", "i: a", "CSeq: 1 INVITE", "Content-Length: 3", "", "abc"])
    text = (
        "----------------------------------------------- 2026-01-01 10:00:00.000001\n"
        f"TCP message received [99] bytes :\n\n{inv}{resp}\n\n"
        "-----------------------------------------------\n"
        f"Unexpected TCP message received:\n\n{resp}\n\n"
        "----------------------------------------------- 2026-01-01 10:00:00.500000\n"
        f"UDP message sent (10 bytes):\n\n{inv}\n"
    )
    msgs = parse_message_trace(text)
    assert [str(m) for m in msgs] == [
        "<- INVITE sip:1@h SIP/2.0",
        "<- SIP/2.0 486 Busy Here (UNEXPECTED)",
        "-> INVITE sip:1@h SIP/2.0",
    ]
    assert msgs[0].transport == "TCP" and msgs[2].transport == "UDP"
    assert msgs[1].status == 486 and msgs[1].call_id == "a" and msgs[1].body == "abc"
    assert msgs[0].header("Content-Length") == "0"
    assert msgs[2].timestamp is not None and msgs[2].timestamp.microsecond == 500000
