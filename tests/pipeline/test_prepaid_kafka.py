"""Prepaid balances in Kafka mode: a faust worker (real Kafka 4.3.1, real ClickHouse 18.16) publishes
account.balance records to the compacted balances topic the B2BUA nodes follow, writes the ledger rows
to the store, and keeps its top-ups and settled debits across a restart (its ``~ledger/<p>`` changelog
record): a top-up id read again after the restart still counts once.

A prepaid call that talked 35.8 s at 1.00/min 6/6 is billed 36 s = 0.60, which is its debit.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from domain_eventgen import PREPAID_RATES, T0, prepaid_call
from waiting import wait_until

from b2bua.balances_in import KafkaBalanceFollower
from b2bua.credit_book import CreditBook
from pipeline.call_table import LEDGER_PREFIX, changelog_topic
from pipeline.domain.timeutil import format_ts
from pipeline.kafka_io import WorkerProcess, make_producer, produce_events, read_topic
from schemas.validation import validate_balance
from sipledger.stack.kafka_broker import create_topics
from sipledger.store import open_store

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 4
def _topup(topup_id: str, amount: str, n: int) -> dict[str, Any]:
    return {"event_id": f"topup-{topup_id}-{n}", "call_id": "account:pre", "seq": 1, "type": "account.topup",
            "ts": format_ts(T0 + n), "node": "sipledger-cli", "schema_version": 2, "topup_id": topup_id,
            "account": "pre", "amount": amount, "note": "kafka test"}


def _node_view(bootstrap: str, topic: str) -> dict[str, Decimal]:
    """What a node sums: the latest record of each (account, partition) key, as b2bua/credit_book does."""
    latest: dict[bytes | None, dict[str, Any]] = {}
    for key, rec in read_topic(bootstrap, topic, timeout_ms=1500):
        validate_balance(rec)
        latest[key] = rec
    out: dict[str, Decimal] = {}
    for rec in latest.values():
        out[rec["account"]] = out.get(rec["account"], Decimal(0)) + Decimal(rec["balance"])
    return out


async def _node_follows(bootstrap: str, topic: str) -> Decimal:
    """A B2BUA node's own path: its balances follower reads the topic from the beginning into its credit
    book (b2bua/balances_in.py, b2bua/credit_book.py); the available balance once it is ready."""
    book = CreditBook(prepaid={"pre": Decimal(0)})
    ready = asyncio.Event()

    def on_record(rec: dict[str, Any]) -> None:
        validate_balance(rec)
        book.on_record(rec)

    follower = KafkaBalanceFollower(bootstrap, topic, on_record, ready.set)
    follower.start()
    try:
        await asyncio.wait_for(ready.wait(), 30)
        await asyncio.sleep(0.2)  # records handed over just before the ready call are applied by now
    finally:
        await follower.stop()
    return book.available("pre")


def _cli(cfg: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "sipledger", *args, "--config", str(cfg)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _cli_balance(cfg: Path) -> dict[str, Any]:
    (row,) = json.loads(_cli(cfg, "balance", "pre", "--json"))
    return row


def test_a_worker_publishes_balances_stores_the_ledger_and_restores_its_topups(real_stack: Any,
                                                                               tmp_path: Path) -> None:
    bootstrap = real_stack.kafka_bootstrap
    sfx = uuid.uuid4().hex[:8]
    topics = {k: f"prepaid-{k}-{sfx}" for k in ("events", "commands", "alerts", "cdrs", "dead", "balances")}
    create_topics(bootstrap, {name: (1 if k == "dead" else PARTITIONS) for k, name in topics.items()
                              if k != "balances"})  # the worker creates its balances topic itself
    (tmp_path / "rates.csv").write_text(PREPAID_RATES)
    url = real_stack.clickhouse_url(f"prepaid_{sfx}")
    cfg = tmp_path / "sipledger.toml"
    cfg.write_text(f"""
[events]
log = "kafka://{bootstrap}"
[kafka]
partitions = {PARTITIONS}
topic_events = "{topics['events']}"
topic_commands = "{topics['commands']}"
topic_alerts = "{topics['alerts']}"
topic_cdrs = "{topics['cdrs']}"
topic_dead_letter = "{topics['dead']}"
topic_balances = "{topics['balances']}"
[store]
url = "{url}"
[pipeline]
sell_rates = "rates.csv"
node_timeout = 3600
[[accounts]]
name = "pre"
ips = ["192.0.2.10"]
prepaid = true
""")
    app_id = f"sipledger-prepaid-{sfx}"
    producer = make_producer(bootstrap, linger_ms=0)
    store = open_store(url)
    worker = WorkerProcess(cfg, app_id, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        # t1 twice (a retried `balance add`): counted once.
        produce_events(producer, topics["events"], [_topup("t1", "1.00", 1), _topup("t1", "1.00", 2),
                                                    *prepaid_call("c1", 35_800)], PARTITIONS)
        producer.flush()
        wait_until(lambda: _node_view(bootstrap, topics["balances"]).get("pre") == Decimal("0.40"), 30,
                   "the balances topic at 1.00 - 0.60")
        wait_until(lambda: _cli_balance(cfg)["debit_count"] == 1, 30, "the debit in the store")
        row = _cli_balance(cfg)
        assert (row["topups"], row["debits"], row["balance"], row["reserved"], row["topup_count"]) == \
            ("1.000000", "0.600000", "0.400000", "0.000000", 1)
        (cdr,) = store.query("SELECT sell_cost, billed_seconds, toString(end_reason) AS reason "
                             "FROM cdrs FINAL")
        assert (cdr["sell_cost"], cdr["billed_seconds"], cdr["reason"]) == \
            (Decimal("0.6"), 36, "credit_limit")
        (debit,) = store.query("SELECT amount FROM account_ledger FINAL WHERE entry_id = 'call:c1'")
        assert debit["amount"] == cdr["sell_cost"]

        # The call is evicted once its batch is committed: its debit is settled into the ledger's record.
        def settled() -> bool:
            for key, rec in read_topic(bootstrap, changelog_topic(app_id), timeout_ms=1500):
                if key is not None and json.loads(key).startswith(LEDGER_PREFIX) and \
                        rec["books"].get("pre", {}).get("settled") == "0.600000":
                    return True
            return False
        wait_until(settled, 60, "the settled debit in the changelog")
        worker.stop()

        worker = WorkerProcess(cfg, app_id, tmp_path / "worker2.log").start()
        worker.wait_ready()
        # After the restart the restored ledger knows t1 and the settled debit: t2 alone gives 1.50 - 0.60
        # (a worker that forgot its ledger would publish 0.50 for the top-ups' partition).
        produce_events(producer, topics["events"], [_topup("t2", "0.50", 3)], PARTITIONS)
        producer.flush()
        wait_until(lambda: _node_view(bootstrap, topics["balances"]).get("pre") == Decimal("0.90"), 30,
                   "the balances topic at 1.50 - 0.60")
        # t1 again counts nothing; t3, written by the operator's command to the events topic, does.
        produce_events(producer, topics["events"], [_topup("t1", "1.00", 4)], PARTITIONS)
        producer.flush()
        _cli(cfg, "balance", "add", "pre", "0.10", "--id", "t3", "--note", "operator")
        wait_until(lambda: _node_view(bootstrap, topics["balances"]).get("pre") == Decimal("1.00"), 30,
                   "the balances topic at 1.60 - 0.60")
        # A second call on c1's partition: its record must still count c1's settled debit (1.60 - 0.70).
        (c1_partition,) = {rec["partition"] for _, rec in read_topic(bootstrap, topics["balances"])
                           if "c1" in rec["debited"]}
        for ev in prepaid_call("c2", 5_800):
            producer.send(topics["events"], value=json.dumps(ev).encode(), key=b"c2", partition=c1_partition)
        producer.flush()
        wait_until(lambda: _node_view(bootstrap, topics["balances"]).get("pre") == Decimal("0.90"), 30,
                   "the balances topic at 1.60 - 0.70")
        assert asyncio.run(_node_follows(bootstrap, topics["balances"])) == Decimal("0.90")
        wait_until(lambda: _cli_balance(cfg)["debit_count"] == 2, 30, "two debits in the store")
        row = _cli_balance(cfg)
        assert (row["topups"], row["debits"], row["balance"], row["available"], row["topup_count"]) == \
            ("1.600000", "0.700000", "0.900000", "0.900000", 3)
    finally:
        worker.stop()
        producer.close()
        store.close()
