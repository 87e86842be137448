"""Zombie alerts to an HTTP endpoint: POST of the alert JSON, retried, dead-lettered when it gives up."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from sipledger.eventlog.journal import FileJournal

log = logging.getLogger("sipledger.webhook")


class WebhookNotifier:
    """Delivers alerts from a background thread so a slow endpoint never stalls the pipeline."""

    def __init__(self, url: str, dead_letter_path: str | Path, attempts: int = 5, backoff: float = 0.5,
                 timeout: float = 5.0) -> None:
        self.url = url
        self._attempts = attempts
        self._backoff = backoff
        self._timeout = timeout
        self._dead = FileJournal(dead_letter_path)
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.delivered = 0
        self.dead_lettered = 0
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)
        self._thread.start()

    def send(self, alert: dict[str, Any]) -> None:
        self._queue.put(alert)

    def _post(self, alert: dict[str, Any]) -> None:
        req = urllib.request.Request(self.url, data=json.dumps(alert).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "sipledger-alerts"})
        with urllib.request.urlopen(req, timeout=self._timeout) as resp:
            if resp.status >= 300:
                raise urllib.error.HTTPError(self.url, resp.status, resp.reason, resp.headers, None)

    def _run(self) -> None:
        while True:
            alert = self._queue.get()
            if alert is None:
                return
            err: Exception | None = None
            for attempt in range(self._attempts):
                try:
                    self._post(alert)
                    self.delivered += 1
                    err = None
                    break
                except (urllib.error.URLError, OSError, ValueError) as exc:
                    err = exc
                    time.sleep(self._backoff * 2**attempt)
            if err is not None:
                log.error("webhook %s refused alert %s after %d attempts: %s", self.url,
                          alert.get("alert_id"), self._attempts, err)
                self._dead.publish({"call_id": alert.get("call_id", ""), "webhook_error": str(err),
                                    "alert": alert})
                self._dead.flush()
                self.dead_lettered += 1
            self._queue.task_done()

    def drain(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self.drain()
        self._queue.put(None)
        self._thread.join(5)
        self._dead.close()
