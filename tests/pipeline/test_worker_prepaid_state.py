"""A prepaid call's debit survives a handover of its partition (found by tests/drills/test_prepaid_faults.py).

A faust worker writes no changelog record for a call set up and closed within one batch (a re-delivery of
the batch rebuilds it). A prepaid call's debit, though, lives on its state until the eviction after the
batch's commit settles it into the ledger's own record; a revocation commits the acked offsets at once and
hands the partition over, so a call of a batch committed then and not evicted yet was in no record: the
next owner neither restored it nor re-read its events, and its debit was gone from the account.balance
records the B2BUA nodes price calls on. In the drill, after the broker outage, the workers folded the
nodes' spooled backlog in large batches (most calls set up and closed within one) and the group
rebalanced several times within seconds: about half of the account's debits went missing there.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from domain_eventgen import PREPAID_RATES, prepaid_call

from pipeline.changelog_restore import fold_partition
from pipeline.domain.ledger import Ledger
from pipeline.faust_app import PartitionRuntime, make_app
from sipledger import config as config_mod


def test_a_prepaid_call_set_up_and_closed_within_one_batch_keeps_its_debit_across_a_handover(
        tmp_path: Path) -> None:
    (tmp_path / "rates.csv").write_text(PREPAID_RATES)
    cfg_file = tmp_path / "sipledger.toml"
    cfg_file.write_text('[kafka]\nbootstrap = "127.0.0.1:1"\ntopic_events = "ev"\n'
                        f'[pipeline]\nsell_rates = "{tmp_path / "rates.csv"}"\n'
                        '[[accounts]]\nname = "pre"\nips = ["192.0.2.10"]\nprepaid = true\n')
    app = make_app(config_mod.load(str(cfg_file), []), app_id=f"unit-{uuid.uuid4().hex[:6]}")
    pipe: Any = app.sipledger  # type: ignore[attr-defined]
    pipe.writer.kill()
    proc = pipe._new_processor()
    proc.partition = 0
    pipe.runtimes[0] = PartitionRuntime(proc)

    # One batch: the whole call. Its CDR bills 36 s = 0.60, its debit.
    for event in prepaid_call("c1", 35_800):
        assert proc.feed(event)
    work = [(0, proc.take())]
    (cdr,) = work[0][1].cdrs
    assert cdr["sell_cost"] == "0.600000"
    state = pipe._state_messages(work, {0: {"c1"}}, set())
    # The call's record, and the account's balance record, which goes with the partition's state
    # (fenced the same way: pipeline/state_writer.py).
    assert {topic for topic, *_ in state[0]} == {pipe.changelog_topic, pipe.cfg.kafka.topic_balances}
    written = [m for m in state[0] if m[0] == pipe.changelog_topic]

    # The batch is delivered and its offsets committed; the partition goes to another worker before an
    # eviction settled the call: the next owner has only what the changelog holds, and does not re-read
    # the batch.
    restored = fold_partition(0, len(written), [(key, value) for _topic, _p, key, value in written])
    ledger = Ledger.restore(restored.ledger, restored.states.values())
    assert ledger.book("pre").debit_total == Decimal("0.60")
