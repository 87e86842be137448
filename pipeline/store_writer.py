"""A StoreSink in a child process, so a faust worker's ClickHouse writes use a second core.

The worker's event loop is CPU-bound (decode, validate, fold, publish, write state). Building ClickHouse
rows and encoding them for the driver is as much work again per event, and a thread does not help: it
holds the same interpreter lock. So the worker hands each batch's rows to this child and waits for its
acknowledgement, which comes only after the store acknowledged every row (``StoreSink.flush`` returned
True), exactly the guarantee the worker had with the sink in-process: outputs and rows first, then
state, then offsets.

What crosses the pipe per batch: the raw bytes of the batch's valid call events, and the CDRs and
alerts as the JSON the worker encoded for Kafka anyway; the child decodes them again. Bytes are the
cheap side of the pipe for the worker, whose loop is the bottleneck (measured on 2,000 CDRs: pickling
round trip 2.45 us a CDR as dicts, 0.59 us as bytes).

The child keeps retrying a store that is down (the sink backs off and logs its lag) and never answers
before the rows are stored, so a worker whose store is down stops taking new batches instead of piling
rows up in memory.

The child ends when the worker does: a closed pipe (the worker exited or was killed) ends its loop.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

log = logging.getLogger("sipledger.pipeline.store_writer")

# Request: (raw events, CDRs, alerts), each a JSON document. Reply: ("ok", written counts) once stored.
Request = tuple[list[bytes], list[bytes], list[bytes]]


def _child(conn: Connection, store_url: str, base_dir: str, batch_size: int, store_events: bool,
           loglevel: int) -> None:
    import orjson

    from pipeline.gc_policy import settle_after_startup
    from pipeline.store_sink import StoreSink
    from sipledger.store import migrate, open_store

    logging.basicConfig(level=loglevel, format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")

    def connect() -> Any:
        store = open_store(store_url, base_dir)
        migrate(store)
        return store

    sink = StoreSink(connect, batch_size=batch_size, store_events=store_events)
    settle_after_startup()
    loads = orjson.loads
    # Seconds spent building rows and in flush (encoding + the server's insert), for the worker's profile.
    timings = {"rows": 0.0, "flush": 0.0}
    clock = time.perf_counter
    while True:
        try:
            raws, cdrs, alerts = conn.recv()
        except (EOFError, OSError):
            return  # the worker is gone
        t0 = clock()
        if store_events:
            add_event = sink.add_event
            for raw in raws:
                add_event(loads(raw), raw)
        for cdr in cdrs:
            sink.add_cdr(loads(cdr))
        for alert in alerts:
            sink.add_alert(loads(alert))
        t1 = clock()
        while not sink.flush():
            time.sleep(0.1)  # flush() paces its own retries; this only avoids a busy loop
        timings["rows"] += t1 - t0
        timings["flush"] += clock() - t1
        try:
            conn.send(("ok", dict(sink.written), dict(timings)))
        except (BrokenPipeError, OSError):
            return


class StoreWriterProcess:
    """Rows of a worker's batches, written by a child process; ``write`` returns once they are stored."""

    def __init__(self, store_url: str, base_dir: str, batch_size: int, store_events: bool = True) -> None:
        self._args = (store_url, base_dir, batch_size, store_events)
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self.written: dict[str, int] = {}
        self.timings: dict[str, float] = {}

    def start(self) -> None:
        # spawn, not fork: the worker runs threads (faust's consumer thread) that a fork would copy
        # mid-flight.
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_child, args=(child, *self._args, logging.getLogger().level),
                           name="sipledger-store-writer", daemon=True)
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent

    def _roundtrip(self, request: Request) -> None:
        assert self._conn is not None
        self._conn.send(request)
        status, self.written, self.timings = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"store writer answered {status!r}")

    async def write(self, raws: list[bytes], cdrs: list[bytes], alerts: list[bytes]) -> None:
        """Store the rows; returns once the store acknowledged all of them. Raises if the child died."""
        if not (raws or cdrs or alerts):
            return
        if self._proc is None:
            self.start()
        try:
            await asyncio.to_thread(self._roundtrip, (raws, cdrs, alerts))
        except (EOFError, OSError) as exc:
            code = self._proc.exitcode if self._proc is not None else None
            raise RuntimeError(f"store writer process died (exit code {code})") from exc

    def cpu_seconds(self) -> float | None:
        """CPU time the child has used so far (Linux /proc), for the worker's figures; None if unknown."""
        if self._proc is None or self._proc.pid is None:
            return None
        try:
            fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        # utime and stime are fields 14 and 15 of stat(5); here counted after the ")" of the name.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            self._proc.join(timeout=5)
            if self._proc.is_alive():
                self._proc.kill()
            self._proc = None
