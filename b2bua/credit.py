"""Prepaid credit as a limit (VOS3000 "Insufficient Balance"): the core's side of it.

At setup, before the account's concurrency slot is taken, a prepaid account's call is priced on the
node's view of the balance (``credit_book.CreditBook``): refused with ``402 Insufficient Balance`` and end
reason ``insufficient_balance`` (a call.setup and call.terminated, so its CDR says so), or granted a
limit, the longest the available balance pays for. call.setup carries the grant (``credit``: hold, limit,
available, rate), which is how the pipeline learns the hold. At the answer the grant is one more source
of the effective limit (``limit_source = credit_limit``); when it is the smallest, the limit timer ends
the call with a BYE on both legs and end reason ``credit_limit``, ``CREDIT_GUARD_S`` before the limit, so
the call's billed time (its duration rounded up to whole seconds, then to increments) stays within the
increment its balance paid for even when the timer fires a little late.

Concurrent calls. Within a node the view is exact: each call's hold counts from its setup. Across nodes
the holds travel through the log: node A's hold reaches node B once the pipeline has folded A's call.setup
and B has read the resulting account.balance record (embedded: the journals' poll intervals, 0.2 s each,
plus a fold; Kafka: a batch and the balances topic). Calls of one account set up on other nodes within
that window are not seen: the account can be overdrawn by at most the holds those calls took, each no
more than what was available when it started. One node per prepaid account (or routing an account's
callers to one node) makes the bound zero.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final

from b2bua.admission import Refuse
from b2bua.call import Call
from b2bua.core_state import CoreState
from b2bua.credit_book import Grant
from b2bua.sip.session_timer import UasDecision
from schemas.validation import ContractError, validate_balance
from sipledger.config import Account
from tariff import cost_of

# The credit limit's timer fires this long before the limit: the call's measured duration (answer to BYE,
# both stamped from this node's clock) stays within the last whole increment paid for despite a late
# timer (the wheel's slot, a busy loop), so its cost stays within its hold.
CREDIT_GUARD_S: Final = 0.25


class Credit(CoreState):
    """Pricing a prepaid call at setup, its hold, its end, and the pipeline's balance records."""

    def _authorize_credit(self, account: Account, callee: str,
                          decision: UasDecision) -> Grant | Refuse | None:
        caps = []
        if self.cfg.max_call_duration > 0:
            caps.append(self.cfg.max_call_duration * 1000)
        if decision.mode != "timer" and self.cfg.no_timer_max_duration > 0:
            caps.append(self.cfg.no_timer_max_duration * 1000)  # the caller has no session timer
        at_ms = int((self._now + self.wall_offset) * 1000)
        return self.credit.authorize(account.name, callee, at_ms, caps)

    def _hold_credit(self, call: Call, grant: Grant | None) -> None:
        if grant is None:
            return
        call.credit = grant
        self.credit.hold(call.id, call.account.name, grant)

    def _credit_ended(self, call: Call) -> None:
        grant = call.credit
        if grant is None:
            return
        cost = Decimal(0)
        if call.answered_at is not None:
            end = call.ended_at if call.ended_at is not None else self._now
            cost = cost_of(grant.rate, max(0, int((end - call.answered_at) * 1000 + 0.999)))
        self.credit.ended(call.id, cost)

    def _on_balance(self, record: dict[str, Any]) -> None:
        try:
            validate_balance(record)
            self.credit.on_record(record)
        except (ContractError, ValueError) as exc:
            self.stats["balance_records_refused"] = self.stats.get("balance_records_refused", 0) + 1
            self._log_limited("balance", "warning", f"account.balance record refused: {exc}")
