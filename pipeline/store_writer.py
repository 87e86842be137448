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

The child ends when the worker does: a closed pipe (the worker exited or was killed) ends it at once,
even in the middle of a flush retrying against a store that is down - the rows it held belong to batches
the worker never acknowledged, whose events the next owner re-reads. (Its flushing threads would
otherwise keep it alive until the store came back.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from sipledger.stack.process import process_cpu_seconds

log = logging.getLogger("sipledger.pipeline.store_writer")

# Request: (raw events, CDRs, alerts, prepaid ledger rows), each a JSON document, or None to stop.
# Reply: ("ok", written counts, timings) once stored, or ("error", {}, {"error": why}) when the store
# refused a row.
Request = tuple[list[bytes], list[bytes], list[bytes], list[bytes]]
# Sinks (each its own connection and flushing thread) used in turn; three measured no faster than two.
SINKS = 2


def _child(conn: Connection, store_url: str, base_dir: str, batch_size: int, store_events: bool,
           loglevel: int) -> None:
    import orjson

    from pipeline.gc_policy import settle_after_startup
    from pipeline.store_sink import StoreSink
    from sipledger import logsetup
    from sipledger.store import migrate, open_store

    logsetup.configure(loglevel)

    def connect() -> Any:
        store = open_store(store_url, base_dir)
        migrate(store)
        return store

    # SINKS sinks (connections), used in turn, each flushed by its own thread: while one flushes batch N
    # - much of it waiting for the server to write its parts - this thread decodes batch N + 1 into the
    # other, and that batch's flush (its encoding) can run while the server is still writing batch N.
    # Acknowledgements still go out in the order the batches came in: each flush sends its ack only after
    # the previous batch's ack went out.
    sinks = [StoreSink(connect, batch_size=batch_size, store_events=store_events) for _ in range(SINKS)]
    flushers = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"flush-{i}") for i in range(SINKS)]
    settle_after_startup()
    loads = orjson.loads
    # Seconds spent building rows and in flush (encoding + the server's insert), for the worker's profile.
    timings = {"rows": 0.0, "flush": 0.0}
    clock = time.perf_counter

    # Both flushing threads reply on the one pipe: an error of one may come while the other acks.
    send_lock = threading.Lock()

    def reply(message: tuple[str, dict[str, int], dict[str, Any]]) -> None:
        with send_lock:
            conn.send(message)

    def flush_and_ack(sink: StoreSink, acked_before: Future[None] | None) -> None:
        t = clock()
        try:
            while not sink.flush():
                time.sleep(0.1)  # flush() paces its own retries; this only avoids a busy loop
        except Exception as exc:  # a row the store refuses (not an outage): the worker must stop
            log.exception("store writer cannot store a batch")
            reply(("error", {}, {"error": f"{type(exc).__name__}: {exc}"}))
            raise
        timings["flush"] += clock() - t
        if acked_before is not None:
            acked_before.result()  # raises if the batch before failed: no ok may follow an error
        written = {k: sum(s.written[k] for s in sinks) for k in sinks[0].written}
        reply(("ok", written, dict(timings)))

    flushing: list[Future[None] | None] = [None] * SINKS
    last: Future[None] | None = None  # the latest batch's flush and ack
    turn = 0
    try:
        while True:
            try:
                request = conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # the worker is gone: nothing held here is owed to anyone (see above)
            if request is None:  # the worker is closing
                if last is not None:
                    last.result()
                return
            raws, cdrs, alerts, ledger = request
            sink = sinks[turn]
            busy = flushing[turn]
            if busy is not None:
                busy.result()  # this sink's previous batch is stored: its buffers are free again
            t0 = clock()
            if store_events:
                add_event = sink.add_event
                for raw in raws:
                    add_event(loads(raw), raw)
            for cdr in cdrs:
                sink.add_cdr(loads(cdr))
            for alert in alerts:
                sink.add_alert(loads(alert))
            for row in ledger:
                sink.add_ledger(loads(row))
            timings["rows"] += clock() - t0
            last = flushing[turn] = flushers[turn].submit(flush_and_ack, sink, last)
            turn = (turn + 1) % SINKS
    except (BrokenPipeError, OSError):
        return
    finally:
        for flusher in flushers:
            flusher.shutdown(wait=False, cancel_futures=True)


def _settle(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if not fut.done():
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)


class StoreWriterProcess:
    """Rows of a worker's batches, written by a child process; ``write`` returns once they are stored."""

    def __init__(self, store_url: str, base_dir: str, batch_size: int, store_events: bool = True) -> None:
        self._args = (store_url, base_dir, batch_size, store_events)
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._send_lock = threading.Lock()
        # One sending thread: requests reach the child in the order write() was called.
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer-send")
        # One future per request sent, resolved in order by the reader thread as the acks come back.
        self._acks: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()
        self._reader: threading.Thread | None = None
        self._dead: BaseException | None = None  # why no ack will come any more
        # Rows handed to the child and not yet acknowledged as stored, per request (for the status).
        self._pending: deque[int] = deque()
        self._pending_since: deque[float] = deque()  # monotonic send time of each, for the metrics' age
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
        self._reader = threading.Thread(target=self._read_acks, name="store-writer-acks", daemon=True)
        self._reader.start()

    def _read_acks(self) -> None:
        conn = self._conn
        assert conn is not None
        while True:
            try:
                status, written, timings = conn.recv()
            except (EOFError, OSError) as exc:
                code = self._proc.exitcode if self._proc is not None else None
                error: BaseException = RuntimeError(f"store writer process died (exit code {code})")
                error.__cause__ = exc
                break
            if status != "ok":
                error = RuntimeError(f"store writer failed: {timings.get('error', status)}")
                break
            self.written, self.timings = written, timings
            with self._send_lock:
                loop, fut = self._acks.popleft()
                self._pending.popleft()
                self._pending_since.popleft()
            loop.call_soon_threadsafe(_settle, fut, None)
        with self._send_lock:  # nothing more will come: fail whatever waits, and every later write
            self._dead = error
            waiting = list(self._acks)
            self._acks.clear()
            self._pending.clear()
            self._pending_since.clear()
        for loop, fut in waiting:
            loop.call_soon_threadsafe(_settle, fut, error)

    def _send(self, request: Request, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None]) -> None:
        with self._send_lock:
            if self._dead is not None:
                raise self._dead
            self._acks.append((loop, fut))
            self._pending.append(sum(map(len, request)))
            self._pending_since.append(time.monotonic())
            assert self._conn is not None
            try:
                self._conn.send(request)
            except OSError:
                self._acks.pop()  # never sent, so no ack is owed (write() raises instead)
                self._pending.pop()
                self._pending_since.pop()
                raise

    async def write(self, raws: list[bytes], cdrs: list[bytes], alerts: list[bytes],
                    ledger: list[bytes] | None = None) -> None:
        """Store the rows; returns once the store acknowledged all of them. Raises if the child died.

        Several writes may be in flight; they are stored and acknowledged in the order they were called.
        """
        ledger = ledger or []
        if not (raws or cdrs or alerts or ledger):
            return
        if self._proc is None:
            self.start()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        try:
            await loop.run_in_executor(self._sender, self._send, (raws, cdrs, alerts, ledger), loop, fut)
        except (EOFError, OSError) as exc:
            code = self._proc.exitcode if self._proc is not None else None
            raise RuntimeError(f"store writer process died (exit code {code})") from exc
        await fut

    @property
    def pending_rows(self) -> int:
        """Rows (events, CDRs, alerts) handed to the child and not yet acknowledged as stored."""
        return sum(self._pending)

    @property
    def oldest_pending_s(self) -> float:
        """Seconds the oldest unacknowledged request has waited (0 when none)."""
        since = self._pending_since
        try:
            return max(0.0, time.monotonic() - since[0])
        except IndexError:
            return 0.0

    @property
    def pending_batches(self) -> int:
        return len(self._pending)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive() and self._dead is None

    def kill(self) -> None:
        """End the child at once (the worker is stopping): unacknowledged rows are dropped, and their
        batches, never acknowledged either, are re-read by the next owner."""
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()

    def cpu_seconds(self) -> float | None:
        """CPU time the child has used so far, for the worker's figures; None if unknown."""
        if self._proc is None or self._proc.pid is None:
            return None
        return process_cpu_seconds(self._proc.pid)

    def close(self) -> None:
        """Let the child finish what it was given, then end it."""
        self._sender.shutdown(wait=True)
        if self._conn is not None and self._dead is None:
            with self._send_lock, contextlib.suppress(OSError):
                self._conn.send(None)
        if self._reader is not None:
            self._reader.join(timeout=30)  # ends with the child's side of the pipe
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            self._proc.join(timeout=5)
            if self._proc.is_alive():
                self._proc.kill()
            self._proc = None
