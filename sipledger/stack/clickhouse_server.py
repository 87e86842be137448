"""ClickHouse server (Debian's clickhouse-server, 18.16) run as a user process with our own config."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

from ..ports import free_port
from .process import ServiceRecord, StackError, port_open, running_record, start

NAME = "clickhouse"

_CONFIG = """\
<?xml version="1.0"?>
<yandex>
  <logger>
    <level>warning</level>
    <log>{home}/log/server.log</log>
    <errorlog>{home}/log/error.log</errorlog>
    <size>100M</size>
    <count>2</count>
  </logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>{port}</tcp_port>
  <http_port>{http_port}</http_port>
  <interserver_http_port>{inter_port}</interserver_http_port>
  <path>{home}/data/</path>
  <tmp_path>{home}/tmp/</tmp_path>
  <user_files_path>{home}/user_files/</user_files_path>
  <format_schema_path>{home}/format_schemas/</format_schema_path>
  <users_config>{home}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>536870912</mark_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
  <timezone>UTC</timezone>
</yandex>
"""

_USERS = """\
<?xml version="1.0"?>
<yandex>
  <profiles>
    <default>
      <max_memory_usage>4000000000</max_memory_usage>
      <load_balancing>random</load_balancing>
    </default>
  </profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <quotas>
    <default>
      <interval><duration>3600</duration><queries>0</queries><errors>0</errors>
        <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
      </interval>
    </default>
  </quotas>
</yandex>
"""


def binary() -> str:
    path = shutil.which("clickhouse-server") or shutil.which("clickhouse")
    if path is None:
        raise StackError("clickhouse-server is not installed; run deploy/install.sh")
    return path


def _ready(port: int) -> bool:
    from clickhouse_driver import Client

    # The port first: a refused connection inside the driver is logged as a warning with its traceback,
    # which reads like a failure while the server is merely still starting.
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    try:
        Client("127.0.0.1", port=port, connect_timeout=1, send_receive_timeout=2).execute("SELECT 1")
        return True
    except Exception:
        return False


def up(stack_dir: Path, port: int = 0, timeout: float = 60.0) -> tuple[ServiceRecord, bool]:
    rec = running_record(stack_dir, NAME)
    if rec is not None:
        return rec, False
    home = (stack_dir / "clickhouse").resolve()
    for sub in ("data", "tmp", "user_files", "format_schemas", "log"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    # The ports are chosen once and kept with the stack, so every store.url written for it stays
    # right across `stack down` / `stack up` (a configured port still wins; a taken one is replaced).
    ports_file = home / "ports.json"
    saved = json.loads(ports_file.read_text()) if ports_file.exists() else {}
    if saved and port in (0, saved.get("port")) and not any(port_open(saved[k]) for k in
                                                             ("port", "http_port", "inter_port")):
        port, http_port, inter_port = saved["port"], saved["http_port"], saved["inter_port"]
    else:
        port, http_port, inter_port = port or free_port(), free_port(), free_port()
    ports_file.write_text(json.dumps({"port": port, "http_port": http_port, "inter_port": inter_port}))
    conf = home / "config.xml"
    conf.write_text(_CONFIG.format(home=home, port=port, http_port=http_port, inter_port=inter_port))
    (home / "users.xml").write_text(_USERS)
    exe = binary()
    cmd = [exe, f"--config-file={conf}"] if exe.endswith("clickhouse-server") else \
        [exe, "server", f"--config-file={conf}"]
    rec = start(stack_dir, NAME, cmd, port, home / "log" / "stdout.log", ready=lambda: _ready(port),
                timeout=timeout, cwd=home)
    return rec, True


def url(rec: ServiceRecord, database: str = "sipledger") -> str:
    return f"clickhouse://default:@127.0.0.1:{rec.port}/{database}"
