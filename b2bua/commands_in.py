"""Where ``call.terminate`` commands come from: the embedded commands journal or a Kafka topic.

Both followers hand each decoded command (a dict) to ``on_command`` on the event loop; the core
checks the node, the call and duplicates. Only commands written after start-up apply: a restarted
node has no calls, so older commands could only be ignored anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sipledger.eventlog import read_journal

log = logging.getLogger("sipledger.b2bua.commands")

OnCommand = Callable[[dict[str, Any]], None]


def _decode(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        log.warning("undecodable command line skipped: %r", raw[:200])
        return None
    return value if isinstance(value, dict) else None


class FileCommandFollower:
    """Tails ``commands.jsonl`` (JSON lines appended by the embedded pipeline) from its end."""

    def __init__(self, path: Path, on_command: OnCommand, poll_interval: float = 0.2) -> None:
        self.path = path
        self.on_command = on_command
        self.poll_interval = poll_interval
        self.offset = path.stat().st_size if path.exists() else 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def poll(self) -> int:
        """Read what was appended since the last poll; returns the number of commands handed on."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return 0
        if size < self.offset:
            self.offset = 0  # the file was truncated or replaced
        count = 0
        for pos, raw in read_journal(self.path, self.offset):
            self.offset = pos
            cmd = _decode(raw)
            if cmd is not None:
                count += 1
                self.on_command(cmd)
        return count

    async def _run(self) -> None:
        while True:
            try:
                self.poll()
            except Exception:
                log.exception("reading %s failed", self.path)
            await asyncio.sleep(self.poll_interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class KafkaFollowerThread:
    """A daemon thread around one kafka-python consumer: opened when needed, polled, and after any
    failure closed and opened again 2 s later (a broker that is away), until ``stop``. Subclasses say
    how the consumer is opened (``_open``) and what one poll hands to the loop (``_poll``)."""

    what = "kafka"  # names the thread and the log lines
    log = log

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"b2bua-{self.what}", daemon=True)
        self._thread.start()

    def _hand(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the event loop (this thread never touches the core)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(fn, *args)

    def _open(self) -> Any:
        raise NotImplementedError

    def _poll(self, consumer: Any) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        consumer: Any = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = self._open()
                self._poll(consumer)
            except Exception as exc:
                self.log.warning("%s consumer on %s failed (%s); retrying", self.what, self.bootstrap, exc)
                if consumer is not None:
                    with contextlib.suppress(Exception):
                        consumer.close()
                consumer = None
                self._stop.wait(2.0)
        if consumer is not None:
            with contextlib.suppress(Exception):
                consumer.close()

    async def stop(self, timeout: float = 1.0) -> None:
        """Ask the thread to stop and give it ``timeout`` s. A thread still inside kafka-python (a
        broker that is down) is left to end with the process: it is a daemon, and what it still reads
        only reaches a node that is stopping anyway. Polled here rather than joined in the loop's
        default executor, whose threads asyncio.run waits for before it returns."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        while self._thread is not None and self._thread.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


class KafkaCommandFollower(KafkaFollowerThread):
    """A kafka-python consumer thread on the commands topic; commands reach the loop thread-safely.

    Each node uses its own consumer group so it sees every partition (commands are keyed by call
    id, not by node), and starts at the latest offset.
    """

    what = "commands"

    def __init__(self, bootstrap: str, topic: str, node_id: str, on_command: OnCommand) -> None:
        super().__init__(bootstrap, topic)
        self.group = f"sipledger-b2bua-{node_id}"
        self.on_command = on_command

    def _open(self) -> Any:
        from kafka import KafkaConsumer

        # A broker that is down is found out within seconds (kafka-python waits 30 s by default), so a
        # stop request is noticed soon.
        return KafkaConsumer(self.topic, bootstrap_servers=self.bootstrap, group_id=self.group,
                             auto_offset_reset="latest", enable_auto_commit=True, bootstrap_timeout_ms=2000)

    def _poll(self, consumer: Any) -> None:
        for records in consumer.poll(timeout_ms=500).values():
            for record in records:
                cmd = _decode(record.value)
                if cmd is not None:
                    self._hand(self.on_command, cmd)
