"""Ending a lost node's call as that node's dialog: what goes into the log, and what comes out of it.

Two halves, both pure:

* :func:`dialog_state` - what another node needs to send a valid in-dialog request on one leg
  (RFC 3261 12.2.1.1: Call-ID, tags, From/To, remote target, route set, where requests went, the
  CSeq in use), as the contract's ``dialog_leg``. It goes into call.answered and is kept current by
  the CSeq (``local_cseq``) of the refreshes and probes the node reports. Nothing secret goes in.
* :class:`Takeover` - a surviving node's BYE on each leg of such a dialog, built from that state
  with a CSeq well above the last one known (``CSEQ_JUMP``: in-dialog requests the dead node relayed
  without reporting them advanced it too, and a UAS refuses a BYE whose CSeq is not above the last it
  saw), a ``Reason`` header (RFC 3326) saying why, and the outcome per leg for call.terminated.

The controller (core.py) sends the requests through its transaction layer and feeds the answers
back; this module does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from b2bua.actions import Address
from b2bua.sip.dialog import Dialog, DialogState
from b2bua.sip.message import Request

# How far above the last reported CSeq a takeover BYE goes. Requests the dead node relayed between
# reports (re-INVITEs, UPDATEs, INFOs of the parties) advanced the leg's CSeq unreported.
CSEQ_JUMP: Final = 1000
LEGS: Final = ("caller", "carrier")


def dialog_state(dialog: Dialog, destination: Address) -> dict[str, Any]:
    """The ``dialog_leg`` of one leg (schemas/common.json)."""
    host = f"[{destination.host}]" if ":" in destination.host else destination.host
    return {
        "call_id": dialog.call_id,
        "local_tag": dialog.local_tag,
        "remote_tag": dialog.remote_tag,
        "local_uri": dialog.local_uri,
        "remote_uri": dialog.remote_uri,
        "remote_target": dialog.remote_target,
        "route_set": list(dialog.route_set),
        "transport": "tcp" if destination.transport == "tcp" else "udp",
        "destination": f"{host}:{destination.port}",
        "local_cseq": max(0, dialog.local_seq),
    }


def destination_of(state: dict[str, Any]) -> Address:
    host, _, port = state["destination"].rpartition(":")
    return Address(host.strip("[]"), int(port), state["transport"])


def outcome_of(status: int | None) -> str:
    """What a BYE's final answer says: 2xx ended the leg; anything else (481 above all) means the far
    end no longer had the dialog; no answer at all is a timeout."""
    if status is None:
        return "timeout"
    return "ended" if 200 <= status < 300 else "gone"


@dataclass(slots=True)
class Takeover:
    """One lost node's call being ended by this node."""

    call_id: str
    command_id: str
    dead_node: str
    seq: int  # the call's seq for the call.terminated this node reports
    sent: str = ""  # ts of the BYEs: the end of the exposure, whenever the answers come (or time out)
    legs: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> {"status", "outcome"}

    def bye(self, role: str, state: dict[str, Any], *, branch: str, local_contact: str, via_sent_by: str,
            reason: str) -> Request:
        """The BYE on one leg, as the dead node's dialog with this node's Via."""
        dialog = Dialog(
            call_id=state["call_id"], local_tag=state["local_tag"], remote_tag=state["remote_tag"],
            local_uri=state["local_uri"], remote_uri=state["remote_uri"],
            remote_target=state["remote_target"], route_set=list(state["route_set"]),
            local_seq=int(state["local_cseq"]) + CSEQ_JUMP, remote_seq=None, is_uac=role == "carrier",
            state=DialogState.CONFIRMED, local_contact=local_contact, via_sent_by=via_sent_by,
            transport=state["transport"].upper())
        return dialog.create_bye(branch=branch, headers=[("Reason", reason)])

    def answered(self, role: str, status: int | None) -> None:
        if role not in self.legs:
            self.legs[role] = {"status": status, "outcome": outcome_of(status)}

    def not_sent(self, role: str) -> None:
        self.legs.setdefault(role, {"status": None, "outcome": "not_sent"})

    @property
    def done(self) -> bool:
        return all(role in self.legs for role in LEGS)

    def report(self) -> dict[str, Any]:
        """The ``takeover`` object of the call.terminated this node emits."""
        out: dict[str, Any] = {"dead_node": self.dead_node, "command_id": self.command_id,
                               "legs": {role: dict(self.legs[role]) for role in LEGS}}
        if self.sent:
            out["sent"] = self.sent
        return out


def reason_header(dead_node: str, node: str) -> str:
    # RFC 3326: the protocol's cause; 503 = the service (the node that held the call) is unavailable.
    return f'SIP;cause=503;text="node {dead_node} lost; call ended by node {node}"'
