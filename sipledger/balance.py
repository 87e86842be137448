"""`sipledger balance`: prepaid balances from the store, and top-ups into the log.

A top-up is a fact of the log: ``sipledger balance add ACCOUNT AMOUNT`` writes an ``account.topup`` event
(schemas/events/account.topup.json) to the events log (the embedded journal or the Kafka topic, keyed
``account:<name>``), and the pipeline's ledger counts it once per ``topup_id`` (pipeline/domain/ledger.py):
running the command again with the same ``--id``, a redelivery or a replay changes nothing. Without
``--id`` each run is a new top-up; the id is printed so a retry can reuse it.

The balances are read from the store's ``account_ledger`` (schemas/clickhouse/008_account_ledger.sql,
FINAL): ``balance = top-ups - debits``, ``reserved`` = the holds of calls not rated yet, ``available =
balance - reserved``. That is what the pipeline's ledger holds, as of its last store write (0.5 s in the
embedded runner).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from sipledger.config import Config

from .store import Store, StoreError

# One query, FINAL: a top-up or debit written twice counts once; a debit replaces its call's hold.
BALANCE_SQL = """
SELECT account,
       any(currency) AS currency,
       sumIf(amount, kind = 'topup') AS topups,
       sumIf(amount, kind = 'debit') AS debits,
       sumIf(amount, kind = 'hold') AS reserved,
       countIf(kind = 'topup') AS topup_count,
       countIf(kind = 'debit') AS debit_count,
       countIf(kind = 'hold') AS open_calls
FROM account_ledger FINAL
{where}
GROUP BY account
ORDER BY account
"""
_Q = Decimal("0.000001")


@dataclass(frozen=True, slots=True)
class Balance:
    account: str
    currency: str
    topups: Decimal
    debits: Decimal
    reserved: Decimal
    topup_count: int
    debit_count: int
    open_calls: int
    prepaid: bool
    min_balance: Decimal

    @property
    def balance(self) -> Decimal:
        return self.topups - self.debits

    @property
    def available(self) -> Decimal:
        return self.balance - self.reserved

    def as_dict(self) -> dict[str, Any]:
        def m(v: Decimal) -> str:
            return format(v.quantize(_Q), "f")

        return {"account": self.account, "prepaid": self.prepaid, "currency": self.currency,
                "balance": m(self.balance), "reserved": m(self.reserved), "available": m(self.available),
                "min_balance": m(self.min_balance), "topups": m(self.topups), "debits": m(self.debits),
                "topup_count": self.topup_count, "debit_count": self.debit_count,
                "open_calls": self.open_calls}


def fetch_balances(store: Store, cfg: Config, account: str | None = None) -> list[Balance]:
    """Every account the ledger or the config knows (prepaid ones of the config with no entry yet at 0),
    or only ``account``."""
    # A store the pipeline never wrote to (or one from before DDL 008) has no ledger: say so rather than
    # show balances of 0, or the server's "unknown table".
    found = store.query("SELECT count() AS n FROM system.tables WHERE database = currentDatabase() "
                        "AND name = 'account_ledger'")
    if not int(found[0]["n"]):
        raise StoreError(f"the store {store.url} has no account_ledger table yet: the pipeline creates it "
                         "when it starts (or run `sipledger stack migrate`)")
    where, params = ("WHERE account = %(a)s", {"a": account}) if account else ("", {})
    rows = {r["account"]: r for r in store.query(BALANCE_SQL.format(where=where), params)}
    configured = {a.name: a for a in cfg.accounts}
    names = set(rows) | {a.name for a in cfg.accounts if a.prepaid}
    if account:
        if account not in rows and account not in configured:
            raise ValueError(f"no account {account!r} in the configuration or the ledger")
        names = {account}
    out = []
    for name in sorted(names):
        r = rows.get(name, {})
        acc = configured.get(name)
        out.append(Balance(name, str(r.get("currency") or ""), Decimal(r.get("topups", 0)),
                           Decimal(r.get("debits", 0)), Decimal(r.get("reserved", 0)),
                           int(r.get("topup_count", 0)), int(r.get("debit_count", 0)),
                           int(r.get("open_calls", 0)), bool(acc and acc.prepaid),
                           acc.min_balance if acc else Decimal(0)))
    return out


def render_table(balances: list[Balance]) -> str:
    head = ("account", "prepaid", "balance", "reserved", "available", "min", "currency", "top-ups", "debits",
            "open")
    rows = [(b.account, "yes" if b.prepaid else "no", *(b.as_dict()[k] for k in
             ("balance", "reserved", "available", "min_balance")), b.currency or "-", str(b.topup_count),
             str(b.debit_count), str(b.open_calls)) for b in balances]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    right = {2, 3, 4, 5, 7, 8, 9}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(head), *(line(r) for r in rows)])


# -- top-ups ---------------------------------------------------------------------------------------

def parse_amount(text: str) -> Decimal:
    """A top-up amount: a positive plain decimal (no exponent, at most 6 decimals)."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"amount {text!r} is not a number") from None
    if not value.is_finite() or value <= 0:
        raise ValueError(f"amount {text!r} must be positive")
    if value != value.quantize(_Q):
        raise ValueError(f"amount {text!r} has more than 6 decimals")
    return value


def topup_event(account: str, amount: Decimal, topup_id: str | None = None, note: str = "",
                node: str = "sipledger-cli", now: datetime | None = None) -> dict[str, Any]:
    """The account.topup event (its event id follows from the top-up id, so a resend is one event too)."""
    topup_id = topup_id or uuid.uuid4().hex
    ts = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    event: dict[str, Any] = {"event_id": f"topup-{topup_id}"[:64], "call_id": f"account:{account}"[:128],
                             "seq": 1, "type": "account.topup", "ts": ts, "node": node[:64],
                             "schema_version": 2, "topup_id": topup_id, "account": account,
                             "amount": format(amount, "f")}
    if note:
        event["note"] = note[:256]
    return event


def publish_topup(cfg: Config, event: dict[str, Any], target: str | None = None) -> str:
    """Validate and write the event to the events log (``target`` or ``events.log``); returns where."""
    import orjson

    from schemas.validation import validate_event

    from .events_tools import open_sink

    validate_event(event)
    sink = open_sink(target or cfg.events.log, cfg.kafka.topic_events, Path(cfg.base_dir))
    try:
        sink.send(event, orjson.dumps(event))
        sink.flush()
    finally:
        sink.close()
    return sink.target
