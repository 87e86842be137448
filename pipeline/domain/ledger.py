"""Prepaid balances: the ledger folded from the log (top-ups) and from the calls (holds, debits).

Three kinds of entry move an account's balance, and each is keyed so that reading it twice counts once:

* a **top-up** (``account.topup`` event) adds its amount, keyed by its ``topup_id``: the same top-up
  read again (a redelivery, a replay, the command run twice with the same id) is counted once; a second
  top-up with a known id but another amount is refused (the first stands) and reported;
* a **hold**: a prepaid call's ``call.setup`` carries what its node reserved for it (``credit.hold``,
  the cost of the longest the call may last). It counts as *reserved* for the node while the call is
  open;
* a **debit**: when the call's CDR is rated, its ``sell_cost`` replaces its hold, keyed by the call id.
  A CDR emitted again (a redelivered batch) or re-rated sets the same key again: it replaces the debit,
  never adds a second one.

Holds and debits live on the call's own state (``CallState.credit_hold`` / ``credit_debit``), so they are
persisted, restored and replayed with it; the ledger keeps per-account sums of them (``track``), and when
a closed call's state is dropped for good (the driver's eviction: no redelivery can reach it any more),
its debit moves into the account's ``settled`` sum (``settle``). What the ledger persists itself is only
the top-ups (with their ids) and the settled sums.

``balance = top-ups - debits``; ``available = balance - reserved``. The ledger also remembers, per account,
which calls' holds and debits it counted since the last :meth:`Ledger.take_changes`, so a node can tell
when its own reservation is in the pipeline's numbers (the account.balance record lists them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

from .rating import money_str, quantize_money
from .state import CallState

_ZERO = Decimal(0)


class _Entry(NamedTuple):
    """What one prepaid call adds to its account: a hold while unrated, then its debit."""

    account: str
    node: str
    hold: Decimal
    debit: Decimal | None


@dataclass(slots=True)
class Book:
    """One account's sums."""

    topups: dict[str, Decimal] = field(default_factory=dict)  # topup id -> amount
    topup_total: Decimal = _ZERO
    settled: Decimal = _ZERO  # debits of calls whose state is gone
    debits: Decimal = _ZERO  # debits of calls still kept
    reserved: dict[str, Decimal] = field(default_factory=dict)  # node -> holds of unrated calls

    @property
    def debit_total(self) -> Decimal:
        return self.settled + self.debits

    @property
    def balance(self) -> Decimal:
        return self.topup_total - self.debit_total

    @property
    def reserved_total(self) -> Decimal:
        return sum(self.reserved.values(), _ZERO)


@dataclass(slots=True)
class Changes:
    """Calls whose hold or debit an account's sums took in since the last take."""

    held: list[str] = field(default_factory=list)
    debited: list[str] = field(default_factory=list)
    topups: list[str] = field(default_factory=list)


def money(text: str) -> Decimal:
    """A contract money string as Decimal; ValueError for anything else."""
    try:
        value = Decimal(text)
    except (InvalidOperation, TypeError):
        raise ValueError(f"not an amount: {text!r}") from None
    if not value.is_finite():
        raise ValueError(f"not an amount: {text!r}")
    return value


class Ledger:
    """Top-ups, holds and debits per account (module docstring). Pure: fed by the Processor."""

    __slots__ = ("_calls", "_changes", "books", "last_settled")

    def __init__(self) -> None:
        self.books: dict[str, Book] = {}
        self._calls: dict[str, _Entry] = {}
        self._changes: dict[str, Changes] = {}
        # Calls whose debit the latest settle round moved into ``settled``: a driver that persists the
        # ledger apart from the call states (the faust changelog) uses it to recognise a state restored
        # although its debit was already settled (its tombstone was not written).
        self.last_settled: list[str] = []

    def _book(self, account: str) -> Book:
        book = self.books.get(account)
        if book is None:
            book = self.books[account] = Book()
        return book

    def _changed(self, account: str) -> Changes:
        ch = self._changes.get(account)
        if ch is None:
            ch = self._changes[account] = Changes()
        return ch

    # -- facts -------------------------------------------------------------------------------------
    def topup(self, topup_id: str, account: str, amount: Decimal) -> str | None:
        """Count a top-up once. Returns None when it counted or was a repeat; a notice when a known id
        came with another amount (refused: the first one stands)."""
        book = self._book(account)
        known = book.topups.get(topup_id)
        if known is not None:
            if known == amount:
                return None
            return (f"top-up {topup_id!r} of account {account!r} already counted with {money_str(known)}; "
                    f"the repeat with {money_str(amount)} is ignored")
        book.topups[topup_id] = amount
        book.topup_total += amount
        self._changed(account).topups.append(topup_id)
        return None

    def track(self, state: CallState) -> str | None:
        """Take in a prepaid call's current hold or debit (a call without a hold is not prepaid).

        Returns what changed: ``"hold"`` (a new hold), ``"debit"`` (a debit, new or replacing one), or
        None (nothing: the same hold or debit again)."""
        hold = state.credit_hold
        if hold is None:
            return None
        debit = state.credit_debit
        new = _Entry(state.account, state.node, money(hold), None if debit is None else money(debit))
        old = self._calls.get(state.call_id)
        if old == new:
            return None
        if old is not None:
            self._remove(old)
        self._add(new)
        self._calls[state.call_id] = new
        changes = self._changed(new.account)
        if new.debit is not None:
            changes.debited.append(state.call_id)
            return "debit"
        changes.held.append(state.call_id)
        return "hold"

    def settle(self, call_ids: Iterable[str]) -> None:
        """These calls' states are dropped for good: their debits become settled. A call never rated
        (no debit) only lets its hold go."""
        done: list[str] = []
        for call_id in call_ids:
            entry = self._calls.pop(call_id, None)
            if entry is None:
                continue
            self._remove(entry)
            if entry.debit is not None:
                self._book(entry.account).settled += entry.debit
            done.append(call_id)
        self.last_settled = done

    def _add(self, e: _Entry) -> None:
        book = self._book(e.account)
        if e.debit is not None:
            book.debits += e.debit
        else:
            book.reserved[e.node] = book.reserved.get(e.node, _ZERO) + e.hold

    def _remove(self, e: _Entry) -> None:
        book = self._book(e.account)
        if e.debit is not None:
            book.debits -= e.debit
            return
        left = book.reserved.get(e.node, _ZERO) - e.hold
        if left:
            book.reserved[e.node] = left
        else:
            book.reserved.pop(e.node, None)

    # -- reading -----------------------------------------------------------------------------------
    def book(self, account: str) -> Book:
        return self.books.get(account) or Book()

    @property
    def changed(self) -> bool:
        """Whether anything was counted since the last :meth:`take_changes` (a cheap test per take)."""
        return bool(self._changes)

    def take_changes(self) -> dict[str, Changes]:
        out, self._changes = self._changes, {}
        return out

    def tracked(self) -> int:
        return len(self._calls)

    def view(self, account: str) -> dict[str, Any]:
        """The account's sums as contract money strings."""
        b = self.book(account)
        return {"topups": money_str(quantize_money(b.topup_total)),
                "debits": money_str(quantize_money(b.debit_total)),
                "balance": money_str(quantize_money(b.balance)),
                "reserved": {n: money_str(quantize_money(v)) for n, v in sorted(b.reserved.items())}}

    # -- persistence -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """What the ledger persists itself (holds and debits are on the call states)."""
        return {"books": {a: {"topups": {i: money_str(v) for i, v in b.topups.items()},
                              "settled": money_str(b.settled)}
                          for a, b in sorted(self.books.items()) if b.topups or b.settled},
                "last_settled": list(self.last_settled)}

    @classmethod
    def restore(cls, data: dict[str, Any] | None, states: Iterable[CallState]) -> Ledger:
        """The ledger of ``to_dict`` data with the holds and debits of ``states`` tracked again. A
        restored state listed as settled in the data's last round is not tracked: its debit is settled."""
        led = cls()
        data = data or {}
        for account, b in data.get("books", {}).items():
            book = led._book(account)
            for topup_id, amount in b.get("topups", {}).items():
                value = money(amount)
                book.topups[topup_id] = value
                book.topup_total += value
            book.settled = money(b.get("settled", "0"))
        settled = set(data.get("last_settled", ()))
        led.last_settled = list(settled)
        for state in states:
            if state.call_id not in settled:
                led.track(state)
        led._changes = {}
        return led
