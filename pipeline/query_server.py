"""Loopback HTTP endpoint of the embedded pipeline: read-only SQL on its store, and active calls.

Only SELECT-like statements are served (the endpoint is for readers while this process
holds the chDB store); it binds 127.0.0.1 only.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sipledger.store import Store, StoreError
from sipledger.store.remote import encode_value

_READ_ONLY = re.compile(r"^\s*(SELECT|WITH|SHOW|DESCRIBE|DESC|EXISTS)\b", re.IGNORECASE)


class QueryServer:
    def __init__(self, store: Store, lock: threading.Lock, calls: Callable[[], list[dict[str, Any]]]) -> None:
        self.store, self.lock, self.calls = store, lock, calls
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep the pipeline's output clean
                pass

            def _send(self, code: int, body: Any) -> None:
                data = json.dumps(body, default=encode_value).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/info":
                    self._send(200, {"version": server.store.dialect.version, "url": server.store.url})
                elif self.path == "/calls":
                    self._send(200, {"calls": server.calls()})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                if self.path != "/query":
                    self._send(404, {"error": "not found"})
                    return
                try:
                    length = int(self.headers.get("Content-Length", "0"))
                    req = json.loads(self.rfile.read(length))
                    sql = req["sql"]
                except (ValueError, KeyError):
                    self._send(400, {"error": "expected JSON {sql, params}"})
                    return
                if not _READ_ONLY.match(sql):
                    self._send(403, {"error": "only read queries are served"})
                    return
                try:
                    with server.lock:
                        rows = server.store.query(sql, req.get("params") or None)
                except StoreError as exc:
                    self._send(400, {"error": str(exc)})
                    return
                self._send(200, {"rows": rows})

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="query-server", daemon=True)

    def start(self) -> str:
        self._thread.start()
        return self.endpoint

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
