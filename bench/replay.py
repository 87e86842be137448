"""Replay of N calls (default 1,000,000) from a file journal into a fresh chDB store.

Prints events/s, calls/s, the peak memory of the process, and checks one CDR per ended call.
Peer in the same run: reading and decoding the same journal without applying it (the I/O floor).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from pipeline.processor import Processor, load_decks, policy_from_config
from pipeline.replay import read_file_log, replay
from pipeline.synthetic import SyntheticSpec, generate
from schemas.validation import decode_event
from sipledger import config as config_mod
from sipledger.eventlog import FileJournal
from sipledger.store import open_store

REPO = Path(__file__).resolve().parents[1]
CHUNK = 50_000


def write_journal(path: Path, calls: int) -> tuple[int, str]:
    """Chunks of calls, each later than the last, so the journal is in time order like a live one."""
    spec = SyntheticSpec(calls=min(CHUNK, calls), seed=0, spacing_ms=20, no_timer_cap_s=60)
    j = FileJournal(path)
    n = 0
    last_ts = ""
    for k in range(0, calls, CHUNK):
        chunk = replace(
            spec,
            calls=min(CHUNK, calls - k),
            seed=k // CHUNK + 1,
            t0_ms=spec.t0_ms + (k // CHUNK) * (CHUNK * spec.spacing_ms + 600_000),
        )
        for e in generate(chunk):
            j.publish(e)
            n += 1
            last_ts = e["ts"]
    j.close()
    return n, last_ts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "events.jsonl"
        t = time.perf_counter()
        events, last_ts = write_journal(log, args.calls)
        print(
            f"journal: {events:,} events for {args.calls:,} calls, {log.stat().st_size / 1e6:,.0f} MB "
            f"(written in {time.perf_counter() - t:.0f} s)"
        )

        t = time.perf_counter()
        for raw in read_file_log(log):
            decode_event(raw)
        floor = time.perf_counter() - t

        cfg = config_mod.load(
            None,
            [
                f'pipeline.sell_rates="{REPO}/sipledger/data/rates/sell.csv"',
                f'pipeline.buy_rates="{REPO}/sipledger/data/rates/buy.csv"',
                "timers.no_timer_max_duration=60",
            ],
        )
        sell, buy = load_decks(cfg)
        proc = Processor(policy_from_config(cfg), sell, buy)
        from pipeline.domain.timeutil import parse_ts

        with open_store(f"chdb://{tmp}/store") as store:
            t = time.perf_counter()
            res = replay(read_file_log(log), proc, store, parse_ts(last_ts))
            took = time.perf_counter() - t
            stored = store.query("SELECT count() AS n, uniqExact(call_id) AS u FROM cdrs")[0]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"replay: {res.events:,} events in {took:.1f} s = {res.events / took:,.0f} events/s, "
        f"{res.cdrs / took:,.0f} CDRs/s; {res.cdrs:,} CDRs ({stored['u']:,} distinct calls stored), "
        f"{res.open_calls:,} calls still open at the end of the log"
    )
    print(
        f"peer: read + decode + validate only: {events / floor:,.0f} events/s "
        f"(replay runs at {floor / took:.2f}x of that floor)"
    )
    print(f"peak RSS of this process: {rss_mb:,.0f} MB")


if __name__ == "__main__":
    main()
