"""A node's view of its prepaid accounts: what the pipeline's ledger says, plus what only this node knows.

Pure: no I/O, no clock. The pipeline publishes an ``account.balance`` record (schemas/account.balance.json)
for every account whose ledger changed, one per log partition it folds (``partition``; null for the
whole log): its top-ups, debits, balance and what it holds for open calls, by node. This node keeps the
latest record of each partition and sums them.

What the pipeline has not read yet is this node's own: a call set up a moment ago, or one that ended
before its CDR was rated. The node counts each of its prepaid calls itself (``own``) from its setup until
a record lists it in ``held`` (from then on the pipeline's ``reserved`` counts its hold) or in
``debited`` (its debit is in the balance). So within a node the available balance is exact whatever the
pipeline's delay: a second call's limit accounts for the first call's hold at once. Another node's
holds reach this node only through the pipeline (module b2bua/credit.py states the bound of that race).

The limit (``authorize``): at the account's sell rate for the callee, ``tariff.affordable_ms`` of the
available balance, i.e. the end of the last whole increment it pays for. The hold is what the call may
cost at most: the cost of the smallest of that limit and the hard caps the call will get (max call
duration; for callers without session timers the no-timer cap). A call is refused (402 Insufficient
Balance, VOS3000's name) when the available balance is below the account's ``min_balance``, when it pays
for not one increment, or when there is no sell rate to price the call with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from b2bua.admission import Refuse
from tariff import Rate, RateDeck, affordable_ms, cost_of, money_str, quantize_money

INSUFFICIENT: Final = "insufficient_balance"
STATUS: Final = 402
PHRASE: Final = "Insufficient Balance"
_ZERO: Final = Decimal(0)


@dataclass(frozen=True, slots=True)
class Grant:
    """What a prepaid call may cost and how long it may last."""

    limit_ms: int | None  # None: the rate is free per minute, money sets no limit
    hold: Decimal
    available: Decimal
    rate: Rate

    def fields(self) -> dict[str, Any]:
        """call.setup's ``credit``."""
        return {"hold": money_str(self.hold), "limit_ms": self.limit_ms or 0,
                "available": money_str(quantize_money(self.available)),
                "rate": money_str(self.rate.rate_per_minute), "currency": self.rate.currency}


@dataclass(slots=True)
class Share:
    """One partition's share of an account, as its latest record says."""

    balance: Decimal
    reserved: Decimal


@dataclass(slots=True)
class _Own:
    account: str
    amount: Decimal
    open: bool = True


@dataclass(slots=True)
class AccountView:
    """An account as ``sipledger balance`` and the tests read the node's view of it."""

    balance: Decimal = _ZERO
    reserved_by_pipeline: Decimal = _ZERO
    reserved_here: Decimal = _ZERO

    @property
    def available(self) -> Decimal:
        return self.balance - self.reserved_by_pipeline - self.reserved_here


def _money(value: Any) -> Decimal:
    try:
        out = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"not an amount: {value!r}") from None
    if not out.is_finite():
        raise ValueError(f"not an amount: {value!r}")
    return out


@dataclass(slots=True)
class CreditBook:
    """Prepaid accounts (name -> minimum balance), the sell deck, and the balance view (module docstring)."""

    prepaid: Mapping[str, Decimal] = field(default_factory=dict)
    deck: RateDeck | None = None
    shares: dict[str, dict[int | None, Share]] = field(default_factory=dict)
    own: dict[str, _Own] = field(default_factory=dict)  # call id -> this node's count of it
    # False until the first view of the balances was loaded (a Kafka follower reads the topic first):
    # until then prepaid calls are refused rather than priced on a balance of 0.
    ready: bool = True
    records: int = 0

    def is_prepaid(self, account: str) -> bool:
        return account in self.prepaid

    # -- the pipeline's records --------------------------------------------------------------------
    def on_record(self, rec: Mapping[str, Any]) -> None:
        """Take one account.balance record (validated by the caller). ValueError for bad amounts."""
        account = rec["account"]
        reserved = sum((_money(v) for v in rec["reserved"].values()), _ZERO)
        share = Share(_money(rec["balance"]), reserved)
        self.shares.setdefault(account, {})[rec["partition"]] = share
        self.records += 1
        for call_id in (*rec["held"], *rec["debited"]):
            own = self.own.get(call_id)
            if own is not None and own.account == account:
                del self.own[call_id]

    def view(self, account: str) -> AccountView:
        shares = self.shares.get(account, {}).values()
        return AccountView(sum((s.balance for s in shares), _ZERO), sum((s.reserved for s in shares), _ZERO),
                           sum((o.amount for o in self.own.values() if o.account == account), _ZERO))

    def available(self, account: str) -> Decimal:
        return self.view(account).available

    # -- calls -------------------------------------------------------------------------------------
    def authorize(self, account: str, callee: str, at_ms: int,
                  caps_ms: Iterable[int]) -> Grant | Refuse | None:
        """The grant of a call of ``account`` to ``callee`` (None: not prepaid), or the refusal."""
        if account not in self.prepaid:
            return None
        if not self.ready:
            return Refuse(503, "Balance Unavailable", INSUFFICIENT,
                          f"account {account}: balances not loaded yet, prepaid calls wait for them",
                          account=account, cause="balance_unknown")
        rate = self.deck.lookup(account, callee, at_ms) if self.deck is not None else None
        if rate is None:
            return Refuse(STATUS, PHRASE, INSUFFICIENT, f"account {account}: no sell rate for {callee}; a "
                          "prepaid call cannot be priced", account=account, cause="no_rate")
        available = self.available(account)
        minimum = self.prepaid[account]
        if available < minimum:
            return Refuse(STATUS, PHRASE, INSUFFICIENT, f"account {account}: available balance "
                          f"{money_str(quantize_money(available))} {rate.currency} is below the minimum "
                          f"balance {money_str(minimum)}", account=account, cause="below_minimum")
        limit = affordable_ms(rate, available)
        if limit == 0:
            return Refuse(STATUS, PHRASE, INSUFFICIENT, f"account {account}: available balance "
                          f"{money_str(quantize_money(available))} {rate.currency} pays for no increment to "
                          f"{callee} at {money_str(rate.rate_per_minute)}/min", account=account,
                          cause="no_increment")
        longest = [c for c in caps_ms if c > 0]
        if limit is not None:
            longest.append(limit)
        hold = cost_of(rate, min(longest)) if longest else cost_of(rate, 1)
        return Grant(limit, hold, available, rate)

    def hold(self, call_id: str, account: str, grant: Grant) -> None:
        """Count a new call's hold here until the pipeline's records count it."""
        self.own[call_id] = _Own(account, grant.hold)

    def ended(self, call_id: str, cost: Decimal) -> None:
        """The call ended: until its debit is in a record, count what it cost (at most its hold)."""
        own = self.own.get(call_id)
        if own is not None and own.open:
            own.open = False
            own.amount = min(own.amount, cost)

    def counted_here(self, account: str | None = None) -> int:
        return sum(1 for o in self.own.values() if account is None or o.account == account)
