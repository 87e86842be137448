"""Call detail records (schemas/cdr.json): one per call, final once emitted.

Built in two steps so the pure core can emit CDRs without holding rate decks:

* :func:`cdr_fields` - everything that follows from the call's events (times, durations, end reason),
  with the money fields zeroed (rates null, currency ``XXX``). Still schema-valid.
* :func:`rerate` - fills in (or re-computes, after a deck change) only the money fields.

:func:`build_cdr` does both.

Duration semantics (all integer ms):

* ``pdd_ms`` = first ring (or answer when it never rang) - setup; null when it neither rang nor answered.
* ``duration_ms`` = end - answer, 0 when never answered.
* ``verified_ms`` = last proof of life - answer, clamped to [0, duration]. Proof of life is the answer,
  every session.refreshed / liveness.probe_succeeded, and for a party's BYE the end itself (so a normal
  hang-up has verified == duration).
* ``unverified_ms`` = duration - verified: time billed on faith.
* ``exposure_ms`` = from the last proof of life to the instant the call stopped running on the wire as
  far as the log knows: the BYE its node sent (its call.terminated), or, when nobody ended it, the
  pipeline's detection (node.lost). 0 for unanswered calls and for a party's BYE (the BYE is proof).
  For calls a node ended it equals ``unverified_ms``; for an orphan the customer is billed only up to
  the last proof (end = last proof) while the exposure runs on to the detection, and
  ``exposure_open`` says nobody has ended it at the carrier, which may still be billing.
* ``closed_by``: ``node`` when the call's own node reported its end (call.terminated), ``pipeline``
  when a verdict closed it (node.lost). The store keeps a node-closed record over a pipeline-closed one
  of the same call (sipledger/store/tables.py ``cdr_version``).

Money: the sell side rates the account's deck on the callee, in the account's bill mode (``full`` bills
duration_ms, ``verified`` bills verified_ms only). The buy side rates the vendor's deck and always
bills the full duration, because the carrier bills the call as it saw it - which is exactly why
unverified time shows up as lost margin. ``billed_seconds`` is the sell side's (the customer invoice);
without a sell rate it is the billable time rounded up to whole seconds. ``margin = sell_cost - buy_cost``
(exact Decimal subtraction of the two quantized costs). ``currency`` is the sell rate's (else the buy
rate's, else the sell deck's, else ``XXX``); a sell/buy currency mismatch raises ValueError, since the
core does no FX. ``rate_deck_version`` is ``"<sell version>/<buy version>"`` (empty side = no deck).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

from .end_reasons import ZOMBIE_REASONS
from .rating import (
    BILL_FULL,
    BILL_MODES,
    BILL_VERIFIED,
    NO_CURRENCY,
    RateDeck,
    charge,
    money_str,
    quantize_money,
)
from .state import CLOSED_BY_NODE, CallState
from .timeutil import format_ts, parse_ts

# 2: exposure_ms, exposure_open and closed_by (version 1 CDRs read as 0 / false / node).
CDR_SCHEMA_VERSION: Final = 2
MONEY_FIELDS: Final = ("sell_rate", "sell_cost", "buy_rate", "buy_cost", "margin", "currency",
                       "rate_deck_version", "billed_seconds")
_ZERO: Final = "0.000000"


def _ts_or_none(ms: int | None, ts: str | None = None) -> str | None:
    """The kept event ts string when there is one (it is the same instant), else the formatted ms."""
    if ms is None:
        return None
    return ts if ts is not None else format_ts(ms)


def cdr_fields(state: CallState) -> dict[str, Any]:
    """The unrated CDR of a closed call (money zero, rates null). ValueError if the call is not closed."""
    end = state.end_ms
    if end is None or state.end_reason is None or state.ended_by is None:
        raise ValueError(f"call {state.call_id!r} is not closed")
    setup = state.setup_ms if state.setup_ms is not None else end
    answer = state.answer_ms
    first_response = state.ring_ms if state.ring_ms is not None else answer
    pdd = None if first_response is None else max(0, first_response - setup)
    if answer is None:
        duration = verified = exposure = 0
        proof = proof_ts = None
        timer_mode = "none"
        session_expires = effective_limit = None
    else:
        duration = max(0, end - answer)
        if state.last_proof_ms is not None:
            proof, proof_ts = state.last_proof_ms, state.last_proof_ts
        else:
            proof, proof_ts = answer, state.answer_ts
        verified = min(duration, max(0, proof - answer))
        exposure_end = state.exposure_end_ms if state.exposure_end_ms is not None else end
        exposure = max(0, exposure_end - max(proof, answer))
        timer_mode = state.timer_mode or "none"
        session_expires = state.session_expires
        effective_limit = state.effective_limit_s
    return {
        "call_id": state.call_id,
        "node": state.node,
        "account": state.account,
        "caller": state.caller,
        "callee": state.callee,
        "source_ip": state.source_ip,
        "vendor": state.vendor,
        "gateway": state.gateway,
        "setup_ts": _ts_or_none(setup, state.setup_ts if state.setup_ms is not None else None),
        "ring_ts": _ts_or_none(state.ring_ms, state.ring_ts),
        "answer_ts": _ts_or_none(answer, state.answer_ts),
        "end_ts": _ts_or_none(end, state.end_ts),
        "pdd_ms": pdd,
        "duration_ms": duration,
        "verified_ms": verified,
        "unverified_ms": duration - verified,
        "billed_seconds": 0,
        "timer_mode": timer_mode,
        "session_expires": session_expires,
        "effective_limit_s": effective_limit,
        "refresh_count": state.refresh_count,
        "last_proof_of_life": _ts_or_none(proof, proof_ts),
        "end_reason": state.end_reason,
        "ended_by": state.ended_by,
        "sip_status": state.sip_status,
        "zombie": state.end_reason in ZOMBIE_REASONS,
        "exposure_ms": exposure,
        "exposure_open": state.exposure_open,
        "closed_by": state.closed_by or CLOSED_BY_NODE,
        "sell_rate": None,
        "sell_cost": _ZERO,
        "buy_rate": None,
        "buy_cost": _ZERO,
        "margin": _ZERO,
        "currency": NO_CURRENCY,
        "rate_deck_version": "",
        "schema_version": CDR_SCHEMA_VERSION,
    }


def rerate(cdr: Mapping[str, Any], sell_deck: RateDeck | None, buy_deck: RateDeck | None,
           bill_modes: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A copy of ``cdr`` with only :data:`MONEY_FIELDS` (re)computed from the given decks.

    ``bill_modes`` maps account -> ``"full"`` | ``"verified"`` (missing accounts bill ``full``).
    """
    out = dict(cdr)
    account, callee = cdr["account"], cdr["callee"]
    answer_ts = cdr["answer_ts"]
    at_ms = parse_ts(answer_ts if answer_ts is not None else cdr["setup_ts"])
    mode = (bill_modes or {}).get(account, BILL_FULL)
    if mode not in BILL_MODES:
        raise ValueError(f"unknown bill mode {mode!r} for account {account!r}")
    duration = cdr["duration_ms"]
    sell_billable = cdr["verified_ms"] if mode == BILL_VERIFIED else duration

    sell = sell_deck.lookup(account, callee, at_ms) if sell_deck is not None and account else None
    buy = buy_deck.lookup(cdr["vendor"], callee, at_ms) if buy_deck is not None and cdr["vendor"] else None
    if sell is not None and buy is not None and sell.currency != buy.currency:
        raise ValueError(f"call {cdr['call_id']!r}: sell currency {sell.currency} != buy {buy.currency}")

    if sell is not None:
        billed, sell_cost = charge(sell, sell_billable)
    else:
        billed, sell_cost = (-(-sell_billable // 1000) if sell_billable > 0 else 0), Decimal(0)
    buy_cost = charge(buy, duration)[1] if buy is not None else Decimal(0)

    if sell is not None:
        currency = sell.currency
    elif buy is not None:
        currency = buy.currency
    else:
        currency = sell_deck.currency if sell_deck is not None else NO_CURRENCY
    out["sell_rate"] = money_str(sell.rate_per_minute) if sell is not None else None
    out["sell_cost"] = money_str(sell_cost) if sell is not None else _ZERO
    out["buy_rate"] = money_str(buy.rate_per_minute) if buy is not None else None
    out["buy_cost"] = money_str(buy_cost) if buy is not None else _ZERO
    # Both costs are already quantized, so the difference is exact; quantize_money only normalises -0.
    out["margin"] = money_str(quantize_money(sell_cost - buy_cost))
    out["currency"] = currency
    out["rate_deck_version"] = (f"{sell_deck.version if sell_deck else ''}/"
                                f"{buy_deck.version if buy_deck else ''}")
    out["billed_seconds"] = billed
    return out


def build_cdr(state: CallState, sell_deck: RateDeck | None, buy_deck: RateDeck | None,
              bill_modes: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The rated CDR of a closed call; exactly the fields of schemas/cdr.json."""
    return rerate(cdr_fields(state), sell_deck, buy_deck, bill_modes)
