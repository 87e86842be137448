"""Prepaid money on the worst day: the store, the broker and a worker fail while a prepaid account talks.

The production shape of tests/drills/harness.py (two B2BUA nodes, two faust workers, a private Kafka and
ClickHouse 18.16, SIPp callers and carriers), with every SIPp call made by one PREPAID account, ``acme``
(``prepaid = true``, a minimum balance, a sell deck of several rates: 1/1, 6/6 with a connection fee and
60/6, so the costs are not round numbers). The account is topped up with ``sipledger balance add``
before the traffic, with enough credit that no call is refused for its balance (the holds of the calls
up at once, each priced at the 7200 s no-timer cap, stay far below it), and then, while the traffic flows:

1. ClickHouse SIGKILLed for 20 s: the workers hold the ledger rows and go on rating;
2. the broker SIGKILLed, and a second top-up made with ``sipledger balance add`` meanwhile. The command
   has no spool: it tries for about 30 s, then fails saying the broker is unreachable. The broker stays
   down until then (and at least 20 s, twice the node timeout of 10 s, as in test_billing_faults.py; its
   restart takes another 5-15 s on a loaded machine): the nodes spool and price calls on their own view
   of the balance. The operator retries the top-up with the same ``--id`` once the broker is back
   (twice: a retry of a retry). It must count once;
3. ``kill -9`` of the worker that folds the top-ups' partition (its ledger's top-ups live only in its
   changelog record ``~ledger/<p>``), restarted 5 s later.

Afterwards, counted against SIPp's own numbers and reconciled against the log:

* every call SIPp placed has exactly one CDR with its true end reason, no SIPp call failed (so none was
  refused 402), and the nodes counted no insufficient_balance refusal;
* each CDR's sell cost is the deck's price of its duration (re-rated here, not by tariff/); every call
  was debited exactly once, its debit equal to its CDR's sell cost, and no hold is left;
* the balance is the top-ups less the sum of the CDRs' sell costs (Decimal), in the three places it is
  kept: ``sipledger balance --json`` (the store's ``account_ledger``), the balances topic the nodes follow
  (latest record per account and partition), and each node's own view (its Prometheus gauge);
* ``sipledger audit`` passes; no alert, no command, no node.lost verdict.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner
from metrics_scrape import by, scrape

from drills.harness import APP_ID, REPO, Drill, DrillStack, Service, assigned_at, log_lines
from sipledger.cli import main
from sipledger.config import load as load_config
from sipledger.pipeline_status import collect
from sipledger.ports import free_port
from sipledger.topic_reader import latest_by_key, read_to_end

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse, pytest.mark.sipp, pytest.mark.slow]

TRAFFIC_S = 95
ACCOUNT = "acme"
OPENING = ("drill-opening", Decimal("5000.00"))
DURING_OUTAGE = ("drill-outage", Decimal("250.25"))
# The drill's callees are 1555<digit>0<n> (harness.CallKind.prefix): caller_bye 1, long 2, callee_bye 3;
# busy and cancel calls are never answered, so their 1555 rate only prices their hold.
RATES = """\
party,prefix,rate_per_minute,initial_increment,subsequent_increment,connection_fee,minimum_duration,currency,effective_from
acme,1555,1.00,6,6,0,0,USD,2026-01-01
acme,15551,0.0130,1,1,0,0,USD,2026-01-01
acme,15552,1.00,60,6,0,0,USD,2026-01-01
acme,15553,0.35,6,6,0.02,0,USD,2026-01-01
"""
# What a worker that caught up with the log may still have to commit: the nodes' latest heartbeats.
MAX_HEARTBEAT_LAG = 10
M = Decimal("0.000001")  # the ledger's money quantum

T = TypeVar("T")


def _rerate(callee: str, duration_ms: int) -> Decimal:
    """What a call should cost by the deck above, worked out here and not by tariff/ (an independent
    check of the CDRs the ledger is reconciled against): the longest prefix's rate; 0 ms of talk is free;
    whole seconds rounded up, then the initial and subsequent increments; fee + rate * billed / 60,
    rounded half up to 6 places."""
    rows = [r for r in csv.DictReader(io.StringIO(RATES)) if callee.startswith(r["prefix"])]
    rate = max(rows, key=lambda r: len(r["prefix"]))
    if duration_ms == 0:
        return Decimal(0)
    first, then = int(rate["initial_increment"]), int(rate["subsequent_increment"])
    secs = -(-duration_ms // 1000)
    billed = first if secs <= first else first + -(-(secs - first) // then) * then
    cost = Decimal(rate["connection_fee"]) + Decimal(rate["rate_per_minute"]) * billed / 60
    return cost.quantize(M, rounding=ROUND_HALF_UP)


def _until(observe: Callable[[], T], good: Callable[[T], bool], timeout: float, every: float = 0.5) -> T:
    """Observe until ``good`` holds or ``timeout`` passed; returns the last observation either way, so
    the caller's exact assertion on it says what differs (a wait that times out names nothing)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            seen = observe()
        except Exception as exc:  # a service still coming back (a restarted store, broker): look again
            if time.monotonic() > deadline:
                raise
            print(f"  (not yet: {exc})")
            time.sleep(every)
            continue
        if good(seen) or time.monotonic() > deadline:
            return seen
        time.sleep(every)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _cli(config: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``sipledger ARGS --config CONFIG`` as an operator runs it (a process of its own)."""
    return subprocess.run([sys.executable, "-m", "sipledger", *args, "--config", str(config)],
                          capture_output=True, text=True, env=_env(), timeout=timeout, cwd=REPO)


def _topup(config: Path, topup: tuple[str, Decimal], note: str) -> subprocess.Popen[str]:
    """``sipledger balance add``, started: the caller waits for it (it may take long with the broker away)."""
    topup_id, amount = topup
    return subprocess.Popen([sys.executable, "-m", "sipledger", "balance", "add", ACCOUNT, str(amount),
                             "--id", topup_id, "--note", note, "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=REPO)


def _node_available(ports: list[int]) -> list[Decimal | None]:
    """Each node's view of the account's available balance (its gauge), None while it is not ready."""
    out: list[Decimal | None] = []
    for port in ports:
        samples = scrape(port)
        ready = samples["sipledger_b2bua_prepaid_ready"][0][1] == 1
        value = next(v for labels, v in samples["sipledger_b2bua_prepaid_available"]
                     if labels["account"] == ACCOUNT)
        # The gauge is a float (Prometheus has no other type): compared at the ledger's quantum only.
        out.append(Decimal(repr(value)).quantize(M) if ready else None)
    return out


def _topic_books(bootstrap: str, topic: str) -> dict[str, dict[str, Any]]:
    """The balances topic as a node sums it: the latest record of each (account, events partition)."""
    latest = latest_by_key((r.key, r.value) for r in read_to_end(bootstrap, topic))
    return {key.decode(): json.loads(value) for key, value in latest.items()}


def _topic_sums(books: dict[str, dict[str, Any]]) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    """(top-ups, debits, balance, reserved) of the account over its partitions' records."""
    mine = [b for b in books.values() if b["account"] == ACCOUNT]
    return (sum((Decimal(b["topups"]) for b in mine), Decimal(0)),
            sum((Decimal(b["debits"]) for b in mine), Decimal(0)),
            sum((Decimal(b["balance"]) for b in mine), Decimal(0)),
            sum((Decimal(v) for b in mine for v in b["reserved"].values()), Decimal(0)))


def _by_partition(bootstrap: str, balances_topic: str, cdrs_topic: str,
                  cdrs: dict[str, dict[str, Any]]) -> str:
    """Each partition's latest balance record against the CDRs of that partition (the CDRs topic is
    co-partitioned with the events): what a failure needs to say where the ledger went wrong."""
    partition_of = {r.key.decode(): r.partition for r in read_to_end(bootstrap, cdrs_topic)}
    spent: dict[int, Decimal] = {}
    for call_id, cdr in cdrs.items():
        p = partition_of.get(call_id, -1)
        spent[p] = spent.get(p, Decimal(0)) + Decimal(cdr["sell_cost"])
    lines = []
    for key, b in sorted(_topic_books(bootstrap, balances_topic).items()):
        lines.append(f"  {key}: topups {b['topups']} debits {b['debits']} (CDRs {spent.get(b['partition'])}) "
                     f"reserved {b['reserved']} ts {b['ts']} by {b['issued_by']}, held {len(b['held'])}, "
                     f"debited {len(b['debited'])}")
    return "\n".join(lines)


def _settled(status: dict[str, Any]) -> bool:
    return all(p["state"] == "caught_up" and p["worker"] and p["lag"] <= MAX_HEARTBEAT_LAG
               for p in status["partitions"])


@pytest.mark.timeout(600)
def test_prepaid_account_through_store_broker_and_worker_faults_is_debited_once_per_call(
        tmp_path: Path) -> None:
    wall0 = time.monotonic()
    rates = tmp_path / "rates.csv"
    rates.write_text(RATES)
    metrics = [free_port(), free_port()]
    stack = DrillStack("prepaid-faults").start()
    try:
        with Drill(stack, tmp_path / "drill",
                   extra_config=f'[pipeline]\nnode_timeout = 10\nsell_rates = "{rates}"\n',
                   account_config='prepaid = true\nmin_balance = "10.00"\n',
                   node_overrides={i: ["--set", f"metrics.b2bua_port={port}"]
                                   for i, port in enumerate(metrics)}) as drill:
            cfg = load_config(drill.config)
            balances_topic = cfg.kafka.topic_balances
            drill.start()

            # The opening top-up, by the operator's command; no call before both nodes price on it.
            opened = _cli(drill.config, "balance", "add", ACCOUNT, str(OPENING[1]), "--id", OPENING[0],
                          "--note", "prepaid drill: opening")
            assert opened.returncode == 0, opened.stdout + opened.stderr
            views = _until(lambda: _node_available(metrics), lambda v: v == [OPENING[1]] * 2, 60)
            assert views == [OPENING[1]] * 2, f"the nodes' view of the opening top-up: {views}"
            # The partition the top-ups are keyed to (account:acme): its worker is the one to kill.
            books = _topic_books(stack.bootstrap, balances_topic)
            (topup_partition,) = {b["partition"] for b in books.values() if Decimal(b["topups"])}

            t0 = time.monotonic()
            drill.start_traffic(TRAFFIC_S)
            timeline: list[str] = []

            def at(second: float) -> None:
                time.sleep(max(0.0, t0 + second - time.monotonic()))

            def note(what: str) -> None:
                timeline.append(f"+{time.monotonic() - t0:5.1f} s {what}")

            at(6)
            stack.kill_clickhouse()
            note("ClickHouse SIGKILLed")
            at(26)
            stack.start_clickhouse()
            note("ClickHouse restarted")
            at(28)
            stack.kill_kafka()
            note("Kafka SIGKILLed")
            at(29)
            during = _topup(drill.config, DURING_OUTAGE, "prepaid drill: during the broker outage")
            # The broker stays down until the operator's command has given up (it has no spool and
            # tries for about 30 s), and for at least 20 s, twice the node timeout.
            during_out, _ = during.communicate(timeout=60)
            note(f"`balance add` during the outage: exit {during.returncode}: {during_out.strip()[-200:]}")
            at(48)
            stack.start_kafka()
            note("Kafka restarted")
            # The operator retries with the same id (and once more, as a script retrying a retry would).
            for _ in range(2):
                retry = _cli(drill.config, "balance", "add", ACCOUNT, str(DURING_OUTAGE[1]), "--id",
                             DURING_OUTAGE[0], "--note", "prepaid drill: retried after the outage")
                assert retry.returncode == 0, retry.stdout + retry.stderr
                note("`balance add` retried with the same id: exit 0")
            at(82)
            now = time.time()
            holders = [w for w in drill.workers if topup_partition in assigned_at(log_lines(w.text()), now)]
            victim: Service = holders[0] if holders else drill.workers[0]
            kill = drill.kill_worker(victim)
            note(f"kill -9 of {victim.name} (held {sorted(kill.partitions)}, the top-ups' partition "
                 f"{topup_partition})")
            at(87)
            drill.restart_worker(victim, kill)
            note(f"{victim.name} restarted")
            print("\n" + "\n".join(timeline))

            results = drill.wait_traffic(timeout=TRAFFIC_S + 120)
            placed = sum(len(r.requests("INVITE", "sent")) for r in results.values())
            drill.wait_cdrs(placed, timeout=180)
            drill.wait_stable(after=kill.restarted_at or kill.at, timeout=90)
            rec = drill.reconcile(results)
            print(f"prepaid drill: {rec.summary()}")
            assert rec.problems() == [], "\n".join(rec.problems())
            assert rec.placed == rec.cdrs > 0

            # -- money: every call debited once, at its CDR's sell cost; no hold left ------------------
            ours = "startsWith(callee, '1555')"
            cdrs = {r["call_id"]: r for r in drill.store.query(
                f"SELECT call_id, account, callee, duration_ms, sell_cost FROM cdrs FINAL WHERE {ours}")}
            assert {r["account"] for r in cdrs.values()} == {ACCOUNT}
            misrated = {r["callee"]: (r["duration_ms"], r["sell_cost"]) for r in cdrs.values()
                        if r["sell_cost"] != _rerate(r["callee"], r["duration_ms"])}
            assert not misrated, f"CDRs not at the deck's price: {list(misrated.items())[:5]}"
            expected_topups = OPENING[1] + DURING_OUTAGE[1]
            spent = sum((Decimal(r["sell_cost"]) for r in cdrs.values()), Decimal(0))
            expected = expected_topups - spent

            def ledger() -> list[dict[str, Any]]:
                return drill.store.query("SELECT entry_id, toString(kind) AS kind, amount "
                                         "FROM account_ledger FINAL WHERE account = %(a)s", {"a": ACCOUNT})

            def ledger_done(rows: list[dict[str, Any]]) -> bool:
                return ({r["entry_id"] for r in rows if r["kind"] == "debit"} == {f"call:{c}" for c in cdrs}
                        and not any(r["kind"] == "hold" for r in rows))

            rows = _until(ledger, ledger_done, 60)
            topups = {r["entry_id"]: Decimal(r["amount"]) for r in rows if r["kind"] == "topup"}
            debits = {r["entry_id"].removeprefix("call:"): Decimal(r["amount"])
                      for r in rows if r["kind"] == "debit"}
            holds = {r["entry_id"]: Decimal(r["amount"]) for r in rows if r["kind"] == "hold"}
            assert topups == {f"topup:{tid}": amount for tid, amount in (OPENING, DURING_OUTAGE)}
            assert not holds, f"{len(holds)} holds left after every call ended: {list(holds.items())[:5]}"
            assert set(debits) == set(cdrs), (
                f"calls without a debit: {sorted(set(cdrs) - set(debits))[:5]}; "
                f"debits without a CDR: {sorted(set(debits) - set(cdrs))[:5]}")
            wrong = {c: (debits[c], cdrs[c]["sell_cost"]) for c in cdrs if debits[c] != cdrs[c]["sell_cost"]}
            assert not wrong, f"debits that are not their CDR's sell cost: {list(wrong.items())[:5]}"

            shown = _cli(drill.config, "balance", ACCOUNT, "--json")
            assert shown.returncode == 0, shown.stdout + shown.stderr
            (bal,) = json.loads(shown.stdout)
            assert (Decimal(bal["topups"]), Decimal(bal["debits"]), Decimal(bal["balance"]),
                    Decimal(bal["reserved"]), Decimal(bal["available"])) == \
                (expected_topups, spent, expected, 0, expected), bal
            assert (bal["topup_count"], bal["debit_count"], bal["open_calls"]) == (2, len(cdrs), 0), bal

            # What the nodes follow: the balances topic, summed over the account's partitions' records.
            sums = _until(lambda: _topic_sums(_topic_books(stack.bootstrap, balances_topic)),
                          lambda s: s == (expected_topups, spent, expected, 0), 60)
            assert sums == (expected_topups, spent, expected, 0), \
                f"balances topic (top-ups, debits, balance, reserved) {sums}, the CDRs say " \
                f"{(expected_topups, spent, expected, 0)}; by partition:\n" + \
                _by_partition(stack.bootstrap, balances_topic, cfg.kafka.topic_cdrs, cdrs)
            # And each node's own view: nothing of its own still counted, nothing of another node's.
            views = _until(lambda: _node_available(metrics), lambda v: v == [expected] * 2, 60)
            assert views == [expected] * 2, f"the nodes' available balance {views}, the ledger's {expected}"
            refused = [by(scrape(port), "sipledger_b2bua_calls_total", "result").get(
                "insufficient_balance", 0) for port in metrics]
            assert refused == [0, 0], f"calls refused for their balance: {refused}"

            # -- no false alert or command; the store equals the log --------------------------------------
            # Once every partition is committed up to the nodes' latest heartbeats, whatever the traffic
            # caused has been delivered (offsets are committed after a batch's outputs and rows).
            status = _until(lambda: collect(stack.bootstrap, "call-events", APP_ID), _settled, 60, every=1)
            assert _settled(status), (
                "partitions not committed up to the nodes' heartbeats: "
                + str([(q["partition"], q["worker"], q["state"], q["end"], q["committed"])
                       for q in status["partitions"]])
                + "; workers: " + str({w: {k: v for k, v in st.items() if k != "partitions"}
                                       for w, st in status["workers"].items()}))
            alerts = drill.store.query("SELECT kind, call_id FROM zombie_alerts")
            assert not alerts, f"false alerts: {alerts[:5]}"
            commands = [json.loads(r.value) for r in read_to_end(stack.bootstrap, "call-commands")]
            assert commands == [], commands[:3]
            verdicts = [r for r in read_to_end(stack.bootstrap, "call-events") if b'"node.lost"' in r.value]
            assert verdicts == [], "a node was declared lost"
            # A worker the group expelled during the broker outage fences its deliveries in flight: the
            # right answer to the expulsion (pipeline/faust_app.py), not a problem of its own.
            expelled = [p for p in drill.worker_problems() if "the consumer group expelled this worker" in p]
            problems = [p for p in drill.worker_problems() if p not in expelled]
            assert not problems, problems
            orphans = [r.orphans() for r in drill.kills if r.orphans()]
            assert not orphans, f"store writers outlived their worker: {orphans}"

            audit = CliRunner().invoke(main, ["audit", "--config", str(drill.config), "--show", "10"])
            print(audit.output)
            assert audit.exit_code == 0, audit.output
            print(f"prepaid drill: {len(cdrs)} calls debited once each, {spent} spent of {expected_topups} "
                  f"topped up, balance {expected} everywhere; the outage top-up "
                  f"{'failed and was retried' if during.returncode else 'went through'}; workers expelled "
                  f"by the group (their deliveries in flight fenced): {len(expelled)}; "
                  f"wall time {time.monotonic() - wall0:.0f} s")
    finally:
        stack.stop()
