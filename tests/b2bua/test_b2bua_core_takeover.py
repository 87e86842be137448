"""Takeover in the core: node-1 ends node-2's call on both legs as node-2's dialog, once.

Node-2's call.answered carries its dialog state; the pipeline hands it to node-1 in a call.takeover;
node-1's BYEs must be requests each peer's own Dialog accepts as in-dialog (tags, Call-ID, a CSeq
above everything it saw), and node-1 reports the outcome as the call's call.terminated.
"""

from __future__ import annotations

from typing import Any

from test_b2bua_core_harness import CALLER, GW1, Call, Harness, answer, only, select

from b2bua.sip.message import Request
from b2bua.takeover import CSEQ_JUMP
from schemas.validation import validate_command


def _takeover_cmd(dialogs: dict[str, Any], call_id: str, seq: int = 5) -> dict[str, Any]:
    cmd = {"command_id": f"tk-{call_id}", "type": "call.takeover", "call_id": call_id, "node": "node-1",
           "dead_node": "node-2", "seq": seq, "detected": "2026-11-25T10:01:00.000Z", "dialogs": dialogs,
           "issued_by": "sipledger-pipeline", "ts": "2026-11-25T10:01:00.000Z", "schema_version": 2}
    validate_command(cmd)
    return cmd


def _answered_on_node2() -> tuple[Harness, Call, dict[str, Any]]:
    node2 = Harness({"node": {"id": "node-2"}})
    call = Call(node2)
    answered = node2.event("call.answered")
    assert answered["schema_version"] == 2 and set(answered["dialogs"]) == {"caller", "carrier"}
    return node2, call, answered["dialogs"]


def _assert_in_dialog(bye: Request, peer_local_tag: str, peer_remote_tag: str, call_id: str,
                      peer_seen_cseq: int) -> None:
    assert bye.method == "BYE" and bye.call_id == call_id
    assert bye.to.tag == peer_local_tag and bye.from_.tag == peer_remote_tag
    assert bye.cseq.num > peer_seen_cseq + CSEQ_JUMP - 1
    assert 'node node-2 lost; call ended by node node-1' in (bye.headers.get("Reason") or "")


def test_node1_ends_node2s_call_on_both_legs_and_reports_it_once() -> None:
    _, call, dialogs = _answered_on_node2()
    node1 = Harness({"node": {"id": "node-1"}})
    out = node1.command(_takeover_cmd(dialogs, call.call_id))
    to_caller = only(out, CALLER, method="BYE")
    to_carrier = only(out, GW1, method="BYE")
    # the caller's own dialog (it is the UAC of its leg) and the carrier's (UAS of its leg) accept them
    _assert_in_dialog(to_caller, call.caller.local_tag, call.caller.remote_tag, call.caller.call_id,
                      call.caller.remote_seq or 0)
    _assert_in_dialog(to_carrier, call.carrier.local_tag, call.carrier.remote_tag, call.carrier.call_id,
                      call.carrier.remote_seq or 0)
    assert to_caller.uri.startswith("sip:1000@10.0.0.1:5061")  # the caller's Contact: its remote target
    assert node1.command(_takeover_cmd(dialogs, call.call_id)) == []  # the same command again
    node1.feed(answer(to_caller, 200), CALLER)
    assert "call.terminated" not in node1.types()  # one leg still to answer
    node1.feed(answer(to_carrier, 481), GW1)
    (ended,) = [e for e in node1.events if e["type"] == "call.terminated"]
    assert ended["call_id"] == call.call_id and ended["seq"] == 5 and ended["node"] == "node-1"
    assert ended["reason"] == "orphaned" and ended["initiator"] == "system"
    assert ended["takeover"]["legs"] == {"caller": {"status": 200, "outcome": "ended"},
                                         "carrier": {"status": 481, "outcome": "gone"}}
    assert node1.command(dict(_takeover_cmd(dialogs, call.call_id), command_id="other")) == []


def test_a_leg_that_never_answers_is_reported_as_a_timeout() -> None:
    _, call, dialogs = _answered_on_node2()
    node1 = Harness({"node": {"id": "node-1"}})
    out = node1.command(_takeover_cmd(dialogs, call.call_id))
    node1.feed(answer(only(out, CALLER, method="BYE"), 200), CALLER)
    retransmits = node1.advance(40.0)  # the carrier is gone: 64 x T1 later the BYE times out
    assert len(select(retransmits, GW1, method="BYE")) >= 5
    (ended,) = [e for e in node1.events if e["type"] == "call.terminated"]
    assert ended["takeover"]["legs"]["carrier"] == {"status": None, "outcome": "timeout"}


def test_probes_advance_the_reported_cseq_and_the_bye_stays_above_it() -> None:
    node2 = Harness({"node": {"id": "node-2"}, "timers": {"liveness_probe_interval": 30}})
    call = Call(node2)
    dialogs = node2.event("call.answered")["dialogs"]
    out = node2.advance(31.0)
    for dest in (CALLER, GW1):
        node2.feed(answer(select(out, dest, method="OPTIONS")[0], 200), dest)  # retransmits are alike
    probes = [e for e in node2.events if e["type"] == "liveness.probe_succeeded"]
    assert sorted(e["leg"] for e in probes) == ["caller", "carrier"]
    assert all(e["local_cseq"] > dialogs[e["leg"]]["local_cseq"] for e in probes)
    # the pipeline folds them into the dialog state it hands over (pipeline/domain/fold.py)
    for e in probes:
        dialogs[e["leg"]]["local_cseq"] = e["local_cseq"]
    node1 = Harness({"node": {"id": "node-1"}})
    out = node1.command(_takeover_cmd(dialogs, call.call_id))
    assert only(out, GW1, method="BYE").cseq.num > dialogs["carrier"]["local_cseq"] + CSEQ_JUMP - 1
    assert only(out, CALLER, method="BYE").cseq.num > dialogs["caller"]["local_cseq"] + CSEQ_JUMP - 1


def test_a_node_that_comes_back_releases_a_taken_over_call_without_sending_anything() -> None:
    node2, call, _ = _answered_on_node2()
    before = len(node2.events)
    rel = {"command_id": "rel-1", "type": "call.release", "call_id": call.call_id, "node": "node-2",
           "taken_over_by": "node-1", "issued_by": "sipledger-pipeline", "ts": "2026-11-25T10:02:00.000Z",
           "schema_version": 2}
    validate_command(rel)
    assert node2.command(rel) == []
    assert node2.core.active_calls == 0 and len(node2.events) == before
    assert [k for k in node2.timers if isinstance(k, tuple) and k[:1] == ("call",)] == []
    assert node2.advance(7200.0) == []  # nothing fires for it, ever
