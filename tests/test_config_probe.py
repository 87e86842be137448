"""One broker address, resolved and probed: `sipledger config check [--probe]` on the real services."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from sipledger import config as config_mod
from sipledger.cli import main
from sipledger.config import ConfigError


def test_events_log_names_the_broker_for_every_process() -> None:
    cfg = config_mod.load(None, ['events.log="kafka://10.1.2.3:9093"'])
    assert cfg.kafka.bootstrap == "10.1.2.3:9093"
    same = config_mod.load(None, ['events.log="kafka://10.1.2.3:9093"', 'kafka.bootstrap="10.1.2.3:9093"'])
    assert same.kafka.bootstrap == "10.1.2.3:9093"
    with pytest.raises(ConfigError) as err:
        config_mod.load(None, ['events.log="kafka://10.1.2.3:9093"', 'kafka.bootstrap="127.0.0.1:9092"'])
    assert err.value.key == "kafka.bootstrap"


def test_check_probe_finds_the_broker_and_store_and_names_a_wrong_one(real_stack, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[events]\nlog = "kafka://{real_stack.kafka_bootstrap}"\n'
                   f'[store]\nurl = "{real_stack.clickhouse_url("probe_ok")}"\n')
    runner = CliRunner()
    migrated = runner.invoke(main, ["stack", "migrate", "--config", str(cfg)])
    assert migrated.exit_code == 0, migrated.output
    ok = runner.invoke(main, ["config", "check", "--probe", "--config", str(cfg)])
    assert ok.exit_code == 0, ok.output
    assert f"ok: Kafka: {real_stack.kafka_bootstrap} answers" in ok.output
    assert "ok: store:" in ok.output and "ClickHouse 18.16" in ok.output
    bad = runner.invoke(main, ["config", "check", "--probe", "--config", str(cfg),
                               "--set", 'events.log="kafka://127.0.0.1:9"'])
    assert bad.exit_code == 1
    failed = [line for line in bad.output.splitlines() if line.startswith("FAILED")]
    assert failed == ["FAILED: Kafka: 127.0.0.1:9 does not answer (KafkaTimeoutError)"], bad.output
