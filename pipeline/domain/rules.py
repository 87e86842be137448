"""Enforcement rules: deadlines of answered calls, what to do when one is missed, orphaning.

An answered call has up to two deadlines:

* the duration limit: ``answer + effective_limit_s``, where the effective limit is the smallest of
  ``max_call_duration``, (for no_timer calls) ``no_timer_max_duration`` and the ``effective_limit_s``
  the B2BUA announced in call.answered (what it actually enforced). 0 / null mean "no such limit".
* for session_timer calls, the session expiry less ``session_timeout_early_hangup``: the session must be
  proven alive by a session.refreshed before it. The expiry is the latest ``expires_at`` of any
  session.refreshed (max over legs: conservative - the pipeline must never kill a live call because of
  one leg's bookkeeping), initially ``answer + session_expires``.

The B2BUA itself should hang up at the deadline. The pipeline is the watchdog: if no call.terminated has
arrived by the time the owning node's own clock (the newest time of its events read so far, see
``node_clocks``) is ``grace_period_s`` past the deadline, it issues a call.terminate to the node and
raises an ``enforcement_missed`` alert - once per call (the command id is deterministic, so the node
dedups re-deliveries; the pipeline does not re-issue). Judged on the node's clock and never on a wall
clock, a verdict is one the log justifies: the node's own stream, read in its order, went past the
deadline without ending the call. A pipeline that is behind, or that stopped reading, judges nothing.

A call still PENDING (events without their call.setup) has one deadline too: ``pending_since +
unknown_call_timeout_s`` on the clock of the node of its events, when an ``unknown_call`` alert is
raised (no grace: nothing was missed).

Orphaning is not decided here from silence: a node is lost only when a node.lost verdict is read
from the log (the live drivers write one after the node's silence was confirmed, see ``liveness``),
so every driver, replay included, orphans exactly the calls the log says.

"Due" time = deadline + grace (or the pending deadline): that is what ScheduleDeadline carries and what
the DeadlineQueue orders by.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Final

from . import phase
from .alerts import raise_once
from .closing import close_call
from .effects import CancelDeadline, Effect, IssueTakeover, IssueTerminate, ScheduleDeadline
from .policy import Policy
from .state import CLOSED_BY_PIPELINE, CallState
from .timeutil import format_ts

UNKNOWN_CALL: Final = "unknown_call"
SESSION_EXPIRED: Final = "session_expired"
TAKEOVER: Final = "takeover"
# Deadlines with no grace added: nothing was missed by a node when they pass.
_NO_GRACE: Final = frozenset({UNKNOWN_CALL, TAKEOVER})
# limit_source -> the end_reason a terminate for that limit carries.
_LIMIT_REASON: Final = {"no_timer_max_duration": "no_timer_limit", "max_call_duration": "max_duration_limit",
                         "credit_limit": "credit_limit"}


def effective_limit(announced_s: int | None, announced_source: str, timer_mode: str,
                    policy: Policy) -> tuple[int | None, str]:
    """(limit seconds or None, limit_source): the smallest of the announced and the policy limits.

    On a tie the B2BUA's announced source is kept, since it is what was actually enforced.
    """
    best: int | None = None
    source = "none"
    if announced_s:
        best, source = announced_s, (announced_source if announced_source != "none" else "max_call_duration")
    if policy.max_call_duration and (best is None or policy.max_call_duration < best):
        best, source = policy.max_call_duration, "max_call_duration"
    if timer_mode == "no_timer" and policy.no_timer_max_duration and (
            best is None or policy.no_timer_max_duration < best):
        best, source = policy.no_timer_max_duration, "no_timer_max_duration"
    return best, source


def next_deadline(state: CallState, policy: Policy) -> tuple[int, str] | None:
    """The call's next rule deadline as (epoch ms, why); why is the end_reason to enforce it with
    (no_timer_limit / max_duration_limit / session_expired) or ``unknown_call``. None: nothing to watch.
    """
    ph = state.phase
    if ph == phase.ANSWERED:
        if state.takeover_node is not None and state.lost_ms is not None:
            # Its node is lost; the only question left is whether the takeover reports in time.
            return state.lost_ms + policy.takeover_timeout_s * 1000, TAKEOVER
        if state.terminate_issued:
            return None
        best: tuple[int, str] | None = None
        if state.effective_limit_s and state.answer_ms is not None:
            best = (state.answer_ms + state.effective_limit_s * 1000,
                    _LIMIT_REASON.get(state.limit_source, "max_duration_limit"))
        if state.timer_mode == "session_timer" and state.session_expiry_ms is not None:
            at = state.session_expiry_ms - policy.session_timeout_early_hangup * 1000
            if best is None or at < best[0]:
                best = (at, SESSION_EXPIRED)
        return best
    if ph == phase.PENDING and state.pending_since_ms is not None and UNKNOWN_CALL not in state.alerts_raised:
        return state.pending_since_ms + policy.unknown_call_timeout_s * 1000, UNKNOWN_CALL
    return None


def due_at(state: CallState, policy: Policy) -> int | None:
    """When the driver should call :func:`on_deadline` for this call (deadline + grace), or None."""
    nd = next_deadline(state, policy)
    if nd is None:
        return None
    at, why = nd
    return at if why in _NO_GRACE else at + policy.grace_period_s * 1000


def deadline_node(state: CallState) -> str:
    """Whose clock the call's deadline is judged on: its node's, or during a takeover the taker's."""
    return state.takeover_node or state.node


def sync_deadline(state: CallState, policy: Policy, effects: list[Effect]) -> None:
    """Append Schedule/CancelDeadline if the call's due time changed since it was last scheduled."""
    nd = next_deadline(state, policy)  # inlined due_at(): this runs on every refresh, keep it to one pass
    if nd is None:
        if state.scheduled_at_ms is not None:
            state.scheduled_at_ms = None
            effects.append(CancelDeadline(state.call_id))
        return
    at, why = nd
    due = at if why in _NO_GRACE else at + policy.grace_period_s * 1000
    if due != state.scheduled_at_ms:
        state.scheduled_at_ms = due
        effects.append(ScheduleDeadline(state.call_id, due, why, deadline_node(state)))


def on_deadline(state: CallState, now_ms: int, policy: Policy) -> tuple[CallState, list[Effect]]:
    """Timer callback: ``now_ms`` is the owning node's clock. Enforces what is overdue and re-arms.

    Safe to call at any time (a stale or early timer just re-arms). Mutates and returns ``state``.
    """
    effects: list[Effect] = []
    nd = next_deadline(state, policy)
    if nd is not None:
        at, why = nd
        # Alerts and commands carry the due time, not ``now_ms``: the instant the log shows the node was
        # late is a fact of the log, while when a driver noticed it depends on how the log was cut
        # into partitions and batches. So every driver emits the same messages, byte for byte.
        if why == UNKNOWN_CALL:
            if now_ms >= at:
                raise_once(state, UNKNOWN_CALL, at,
                           f"events without call.setup since {format_ts(state.pending_since_ms or at)}",
                           effects)
        elif why == TAKEOVER:
            if now_ms >= at:
                close_orphan(state, state.lost_ms or at, effects)
                return state, effects
        elif now_ms >= (due := at + policy.grace_period_s * 1000):
            state.terminate_issued = True
            effects.append(IssueTerminate(state.call_id, state.node, why, at, due))
            raise_once(state, "enforcement_missed", due,
                       f"{why} deadline {format_ts(at)} passed without call.terminated from {state.node}",
                       effects)
    sync_deadline(state, policy, effects)
    return state, effects


def takeover_target(call_id: str, candidates: Iterable[str]) -> str | None:
    """The node that takes a call over: rendezvous hashing of the call id over the live nodes, so every
    worker (and replay) picks the same one, and a node joining or leaving moves only its own share."""
    best: tuple[bytes, str] | None = None
    for node in candidates:
        score = hashlib.blake2b(f"{call_id}\x1f{node}".encode(), digest_size=8).digest()
        if best is None or score > best[0]:
            best = (score, node)
    return None if best is None else best[1]


def on_node_lost(state: CallState, detected_ms: int, why: str = "", takeover_by: Iterable[str] = (),
                 policy: Policy | None = None) -> tuple[CallState, list[Effect]]:
    """A node.lost verdict for the call's node.

    An answered call with its dialog state and a live node to hand it to is taken over: the chosen
    node (``takeover_target``) is told to send BYE on both legs as the dead node's dialog and report
    the outcome as this call's call.terminated; if no report arrives within ``takeover_timeout_s`` on
    that node's clock, the call is closed as below. Any other call is closed at once as ``orphaned``
    (ended_by system): the customer is billed up to the last proof of life (end = last proof; for an
    unanswered call, the last event seen), so nothing after it is billed on faith, while the exposure,
    what the carrier may go on billing, runs from that proof to the detection (``detected_ms``, the
    verdict's ts) and stays open: no node sent a BYE. Raises an ``orphaned`` alert at the detection.
    No-op for calls that are already closed or still pending, or already being taken over.
    Mutates and returns ``state``.
    """
    effects: list[Effect] = []
    if state.phase not in phase.OPEN_PHASES or state.takeover_node is not None:
        return state, effects
    dead = state.node
    target = None
    if (policy is None or policy.takeover) and state.phase == phase.ANSWERED and state.dialogs:
        target = takeover_target(state.call_id, (n for n in takeover_by if n != dead))
    detail = f" ({why})" if why else ""
    if target is not None and policy is not None:
        state.takeover_node = target
        state.lost_ms = detected_ms
        effects.append(IssueTakeover(state.call_id, target, dead, state.next_seq, state.dialogs or {},
                                     detected_ms))
        raise_once(state, "orphaned", detected_ms,
                   f"node {dead} lost{detail}; taken over by {target}: BYE on both legs", effects)
        sync_deadline(state, policy, effects)
        return state, effects
    raise_once(state, "orphaned", detected_ms,
               f"node {dead} lost{detail}; no BYE was sent, exposure open", effects)
    close_orphan(state, detected_ms, effects)
    return state, effects


def close_orphan(state: CallState, detected_ms: int, effects: list[Effect]) -> None:
    """Close a lost node's call that nobody ended on the wire: billed to the last proof, exposure open."""
    end_ts: str | None = None
    if state.answer_ms is None:
        end = state.last_event_ms if state.last_event_ms is not None else detected_ms
        exposure_end = end
    else:
        if state.last_proof_ms is not None:
            end, end_ts = state.last_proof_ms, state.last_proof_ts
        else:
            end, end_ts = state.answer_ms, state.answer_ts
        exposure_end = max(end, detected_ms)
    if state.takeover_node is not None:
        raise_once(state, "takeover_failed", detected_ms, f"takeover by {state.takeover_node} reported "
                   "nothing in time; exposure open", effects)
    close_call(state, end, "orphaned", "system", None, effects, end_ts, closed_by=CLOSED_BY_PIPELINE,
               exposure_end_ms=exposure_end, exposure_open=True)
