"""The real B2BUA for tests: ``serve`` on its own event loop in a thread, and a scaled-down config."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from b2bua.server import B2BUAServer, serve
from sipledger.config import Config


class RunningB2BUA:
    """The B2BUA's ``serve`` on its own event loop in a daemon thread."""

    def __init__(self, cfg: Config, journal: Path) -> None:
        self.cfg = cfg
        self.journal = journal
        self.commands = journal.parent / "commands.jsonl"
        self.server: B2BUAServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="b2bua", daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def started(server: B2BUAServer) -> None:
                self.server = server
                self._started.set()

            await serve(self.cfg, stop=self._stop, on_started=started)

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._error = exc
            self._started.set()

    def start(self) -> RunningB2BUA:
        self._thread.start()
        assert self._started.wait(10), "B2BUA did not start"
        if self._error is not None:
            raise self._error
        return self

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.port}"

    @property
    def host_port(self) -> tuple[str, int]:
        assert self.server is not None
        return "127.0.0.1", self.server.port

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    # -- journal --------------------------------------------------------------------------------
    def events(self) -> list[dict[str, Any]]:
        if not self.journal.exists():
            return []
        lines = self.journal.read_text().splitlines()
        return [e for e in (json.loads(x) for x in lines if x.strip()) if e["type"] != "node.heartbeat"]

    def wait_events(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 15.0
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            events = self.events()
            if predicate(events) or time.monotonic() > deadline:
                return events
            time.sleep(0.05)

    def wait_terminated(self, count: int = 1, timeout: float = 15.0) -> list[dict[str, Any]]:
        return self.wait_events(lambda ev: sum(e["type"] == "call.terminated" for e in ev) >= count, timeout)

    def append_command(self, cmd: dict[str, Any]) -> None:
        with self.commands.open("a") as fh:
            fh.write(json.dumps(cmd) + "\n")


def make_config(
    tmp_path: Path, gateways: list[int], transport: str = "udp", **sections: dict[str, Any]
) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "node": {"id": "wire-node"},
        "sip": {
            "listen_host": "127.0.0.1",
            "listen_port": 0,
            "resend_interval_ms": 100,
            "invite_timeout": 2.0,
            "call_progress_timeout": 2.0,
        },
        "timers": {"session_ttl": 6, "min_se": 4, "no_timer_max_duration": 30},
        "events": {"log": f"file://{tmp_path / 'events' / 'events.jsonl'}", "heartbeat_interval": 0.5},
        "accounts": [{"name": "acme", "ips": ["127.0.0.1"]}],
        "gateways": [
            {
                "name": f"gw{i + 1}",
                "vendor": f"vendor{i + 1}",
                "host": "127.0.0.1",
                "port": port,
                "transport": transport,
                # SIPp's call scenarios do not answer OPTIONS (a probe aborts their call): tests of the
                # gateway probes turn them on with -aa carriers.
                "probe": False,
            }
            for i, port in enumerate(gateways)
        ],
        "routes": [{"prefix": "1555", "gateways": [f"gw{i + 1}" for i in range(len(gateways))]}],
    }
    for key, value in sections.items():
        raw[key] = {**raw[key], **value} if isinstance(raw.get(key), dict) else value
    return raw
