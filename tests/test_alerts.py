"""Alerts for people: webhook delivery with retries and a dead-letter file, and `alerts tail`."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

from click.testing import CliRunner
from kafka import KafkaProducer

from pipeline.webhook import WebhookNotifier
from schemas.validation import validate_alert
from sipledger.cli import main
from sipledger.eventlog import FileJournal, read_journal

ALERT = {
    "alert_id": "a-1",
    "kind": "enforcement_missed",
    "call_id": "call-42",
    "node": "node-1",
    "account": "acme",
    "vendor": "carrier-a",
    "ran_ms": 7_205_000,
    "unverified_ms": 7_200_000,
    "estimated_cost": "2.400000",
    "currency": "USD",
    "message": "no_timer_limit deadline passed 5 s ago without call.terminated",
    "ts": "2026-11-25T12:00:05.000Z",
    "schema_version": 1,
}


class _Flaky(BaseHTTPRequestHandler):
    fail_first = 2
    received: ClassVar[list[dict]] = []
    attempts = 0

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        type(self).attempts += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if type(self).attempts <= type(self).fail_first:
            self.send_response(503)
            self.end_headers()
            return
        type(self).received.append(body)
        self.send_response(204)
        self.end_headers()


def test_webhook_retries_until_the_endpoint_takes_the_alert(tmp_path: Path) -> None:
    validate_alert(ALERT)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = WebhookNotifier(
        f"http://127.0.0.1:{server.server_address[1]}/alerts",
        tmp_path / "dead.jsonl",
        attempts=5,
        backoff=0.05,
    )
    hook.send(ALERT)
    hook.close()
    server.shutdown()
    assert _Flaky.received == [ALERT]
    assert _Flaky.attempts == 3
    assert hook.delivered == 1 and hook.dead_lettered == 0


def test_webhook_gives_up_into_the_dead_letter_file(tmp_path: Path) -> None:
    hook = WebhookNotifier(
        "http://127.0.0.1:9/alerts", tmp_path / "dead.jsonl", attempts=3, backoff=0.01, timeout=1
    )
    hook.send(ALERT)
    hook.close()
    dead = [json.loads(r) for _, r in read_journal(tmp_path / "dead.jsonl")]
    assert len(dead) == 1 and dead[0]["alert"] == ALERT and dead[0]["webhook_error"]
    assert hook.dead_lettered == 1


def test_alerts_tail_reads_the_embedded_journal(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[events]\nlog = "file://{tmp_path}/events.jsonl"\n')
    j = FileJournal(tmp_path / "alerts.jsonl")
    j.publish(ALERT)
    j.publish(ALERT)  # a restarted pipeline may repeat one: shown once
    j.publish(dict(ALERT, alert_id="a-2", kind="orphaned", call_id="call-43", message="node node-2 lost"))
    j.close()
    res = CliRunner().invoke(main, ["alerts", "tail", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 2
    assert "enforcement_missed" in lines[0] and "call call-42" in lines[0] and "account acme" in lines[0]
    assert "vendor carrier-a" in lines[0] and "ran 7,205s" in lines[0] and "cost 2.4000 USD" in lines[0]
    assert "no_timer_limit deadline passed" in lines[0]
    js = CliRunner().invoke(main, ["alerts", "tail", "--config", str(cfg), "--format", "json"])
    assert [json.loads(x)["alert_id"] for x in js.output.split("\n") if x] == ["a-1", "a-2"]


def test_alerts_tail_reads_kafka(real_stack, tmp_path: Path) -> None:
    topic = f"alerts-{tmp_path.name[-8:]}"
    from sipledger.stack.kafka_broker import create_topics

    create_topics(real_stack.kafka_bootstrap, {topic: 2})
    producer = KafkaProducer(bootstrap_servers=real_stack.kafka_bootstrap, acks="all")
    producer.send(topic, key=b"call-42", value=json.dumps(ALERT).encode())
    producer.flush()
    producer.close()
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[events]\nlog = "kafka://{real_stack.kafka_bootstrap}"\n'
        f'[kafka]\nbootstrap = "{real_stack.kafka_bootstrap}"\ntopic_alerts = "{topic}"\n'
    )
    res = CliRunner().invoke(main, ["alerts", "tail", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "call call-42" in res.output and "enforcement_missed" in res.output


def test_alerts_tail_follow_on_kafka_prints_an_alert_produced_after_it_started(real_stack,
                                                                              tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    from sipledger.stack.kafka_broker import create_topics

    topic = f"alerts-f-{tmp_path.name[-8:]}"
    create_topics(real_stack.kafka_bootstrap, {topic: 2})
    cfg = tmp_path / "c.toml"
    # only events.log names the broker: kafka.bootstrap follows it
    cfg.write_text(f'[events]\nlog = "kafka://{real_stack.kafka_bootstrap}"\n'
                   f'[kafka]\ntopic_alerts = "{topic}"\n')
    out = tmp_path / "tail.out"
    with open(out, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "sipledger", "alerts", "tail", "--follow",
                                 "--config", str(cfg)], stdout=fh, stderr=subprocess.STDOUT)
    try:
        time.sleep(4)  # it has read to the (empty) end and is following
        assert proc.poll() is None, out.read_text()
        producer = KafkaProducer(bootstrap_servers=real_stack.kafka_bootstrap, acks="all")
        producer.send(topic, key=b"call-77", value=json.dumps(dict(ALERT, alert_id="late-1",
                                                                    call_id="call-77")).encode())
        producer.flush()
        producer.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "call call-77" not in out.read_text():
            time.sleep(0.2)
        assert "call call-77" in out.read_text(), out.read_text()
    finally:
        proc.terminate()
        proc.wait(10)
