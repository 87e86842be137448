"""Benchmark (not a test): events/s through one faust worker on the real broker and ClickHouse.

    python3 bench/pipeline_faust.py [--calls 40000] [--batch-size 16000] [--stack-dir .stack/perf]
        [--bootstrap HOST:PORT --store-url clickhouse://...] [--no-events-table] [--profile]

Uses the stack under --stack-dir (default .stack/test; started if it is not running, left running),
or the broker and ClickHouse given by --bootstrap and --store-url. The synthetic
stream is produced into fresh topics first; then one worker starts and works through the backlog.
The figure is events / (caught up - partitions assigned), measured inside the worker, so it excludes
faust's start-up but includes everything a batch does: validation, folding, publishing CDRs, ClickHouse
inserts of CDRs and events, changelog writes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.faust_app import DEFAULT_BATCH  # noqa: E402
from pipeline.kafka_io import WorkerProcess, make_producer, produce_events, worker_config  # noqa: E402
from pipeline.synthetic import SyntheticSpec, generate  # noqa: E402
from sipledger.stack import clickhouse_server, kafka_broker  # noqa: E402
from sipledger.store import open_store  # noqa: E402

STACK = REPO / ".stack" / "test"
PARTITIONS = 4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=40_000, help="calls to generate (~5 events each)")
    ap.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="default: the worker's own")
    ap.add_argument("--no-events-table", action="store_true",
                    help="worker does not insert raw events into ClickHouse (--no-store-events)")
    ap.add_argument("--stack-dir", type=Path, default=STACK, help="stack to use/start (default .stack/test)")
    ap.add_argument("--bootstrap", help="Kafka bootstrap instead of the stack's broker")
    ap.add_argument("--store-url", help="clickhouse://user:pass@host:port (database is added per run)")
    ap.add_argument("--profile", action="store_true",
                    help="worker logs per-stage timings (SIPLEDGER_FAUST_PROFILE=1) to the worker log")
    ap.add_argument("--worker-arg", action="append", default=[], help="extra worker CLI argument")
    args = ap.parse_args()

    sfx = uuid.uuid4().hex[:8]
    stack_dir = args.stack_dir.resolve()
    if args.bootstrap:
        bootstrap = args.bootstrap
    else:
        k, _ = kafka_broker.up(stack_dir)
        bootstrap = f"127.0.0.1:{k.port}"
    if args.store_url:
        url = f"{args.store_url.rstrip('/')}/bench_{sfx}"
    else:
        c, _ = clickhouse_server.up(stack_dir)
        url = f"clickhouse://default:@127.0.0.1:{c.port}/bench_{sfx}"
    topics = {n: f"bench-{n}-{sfx}" for n in ("events", "commands", "alerts", "cdrs", "dead")}
    kafka_broker.create_topics(bootstrap, {t: (1 if n == "dead" else PARTITIONS) for n, t in topics.items()})

    # Event time in 2026 with a 50 ms spacing: nothing falls due on the wall clock during the run.
    spec = SyntheticSpec(calls=args.calls, seed=5, spacing_ms=50)
    events = list(generate(spec))
    t0 = time.perf_counter()
    producer = make_producer(bootstrap)
    sent = produce_events(producer, topics["events"], events, PARTITIONS)
    producer.flush()
    producer.close()
    t_produce = time.perf_counter() - t0
    print(
        f"produced {sent} messages ({len(events)} events, {args.calls} calls) in {t_produce:.1f} s "
        f"({sent / t_produce:,.0f} msg/s with kafka-python)"
    )

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bench.toml"
        cfg.write_text(worker_config(bootstrap, topics, url, PARTITIONS))
        extra = ["--batch-size", str(args.batch_size), *args.worker_arg]
        if args.no_events_table:
            extra.append("--no-store-events")
        stack_dir.mkdir(parents=True, exist_ok=True)
        log_path = stack_dir / "bench-worker.log"
        worker = WorkerProcess(cfg, f"bench-{sfx}", log_path, loglevel="error", extra=extra)
        started = time.time()
        if args.profile:
            os.environ["SIPLEDGER_FAUST_PROFILE"] = "1"  # inherited by the worker process
        worker.start()
        try:
            worker.wait_ready(timeout=900)
            info = json.loads(worker.ready_file.read_text())
        finally:
            worker.stop()
    elapsed = info["ready_at"] - info["assigned_at"]
    store = open_store(url)
    cdrs = int(store.query("SELECT count() AS n FROM cdrs FINAL")[0]["n"])
    rows = int(store.query("SELECT count() AS n FROM call_events")[0]["n"])
    store.close()
    print(f"worker start-up (process start -> partitions assigned): {info['assigned_at'] - started:.1f} s")
    print(
        f"processed {info['events']} messages in {elapsed:.2f} s: {info['events'] / elapsed:,.0f} events/s "
        f"(batch {args.batch_size}); {info['cdrs']} CDRs published, {cdrs} CDRs and {rows} event rows "
        f"in ClickHouse"
    )
    # CPU of the worker process over the same interval: near 100% means faster code, not more overlap,
    # is what raises the figure; well below means the worker waits on the broker or ClickHouse.
    print(f"worker CPU while processing: {info['cpu_s']:.2f} s of {elapsed:.2f} s wall "
          f"({info['cpu_s'] / elapsed:.0%}), {info['cpu_s'] / max(1, info['events']) * 1e6:.1f} us an event")
    writer_cpu = info.get("writer_cpu_s")
    if writer_cpu is not None:
        print(f"store writer process CPU meanwhile: {writer_cpu:.2f} s ({writer_cpu / elapsed:.0%}), "
              f"{writer_cpu / max(1, info['events']) * 1e6:.1f} us an event")
    print(f"worker log: {log_path}")


if __name__ == "__main__":
    main()
