"""docker-compose.yml, checked offline by docker-compose 1.29 (no Docker engine runs here)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from sipledger.cli import main

REPO = Path(__file__).resolve().parents[1]
COMPOSE = shutil.which("docker-compose")


def _config(path: Path) -> subprocess.CompletedProcess:
    assert COMPOSE, "docker-compose is installed by deploy/install.sh"
    return subprocess.run([COMPOSE, "-f", str(path), "config", "-q"], capture_output=True, text=True,
                          cwd=path.parent, timeout=60)


def test_compose_file_is_valid() -> None:
    res = _config(REPO / "docker-compose.yml")
    assert res.returncode == 0, res.stderr


def test_a_broken_compose_file_is_caught(tmp_path: Path) -> None:
    text = (REPO / "docker-compose.yml").read_text().replace("healthcheck:", "healthchek:", 1)
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(text)
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    res = _config(bad)
    assert res.returncode != 0
    assert "healthchek" in res.stderr


def test_services_run_commands_that_exist() -> None:
    doc = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"kafka", "clickhouse", "b2bua", "pipeline"} <= set(services)
    for name in ("kafka", "clickhouse"):
        assert "healthcheck" in services[name]
        assert services[name]["volumes"]
    for name in ("init", "b2bua", "pipeline"):
        svc = services[name]
        assert svc["build"] == "."
        cmd = svc["command"]
        group = main.commands.get(cmd[0])
        assert group is not None, f"{name}: sipledger has no subcommand {cmd[0]!r}"
        if hasattr(group, "commands") and not cmd[1].startswith("-"):
            assert cmd[1] in group.commands, f"{name}: no 'sipledger {cmd[0]} {cmd[1]}'"
        conf = cmd[cmd.index("--config") + 1]
        assert conf == "/etc/sipledger/sipledger.toml"
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "deploy/docker/sipledger.toml /etc/sipledger/sipledger.toml" in dockerfile


@pytest.mark.parametrize("path", ["deploy/docker/sipledger.toml", "sipledger.toml"])
def test_shipped_configs_load(path: str) -> None:
    from sipledger import config

    config.load(REPO / path)


def test_the_b2bua_service_advertises_a_reachable_address(tmp_path: Path) -> None:
    # It binds 0.0.0.0 in its container; its Contact must name an address peers can send the BYE to.
    from b2bua.core import CoreConfig
    from sipledger import config

    res = subprocess.run([COMPOSE, "-f", str(REPO / "docker-compose.yml"), "config"], capture_output=True,
                         text=True, cwd=REPO, timeout=60, env={"PATH": "/usr/bin:/bin",
                                                               "SIPLEDGER_SIP_ADDRESS": "198.51.100.7"})
    assert res.returncode == 0, res.stderr
    cmd = yaml.safe_load(res.stdout)["services"]["b2bua"]["command"]
    overrides = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--set"]
    cfg = config.load(REPO / "deploy/docker/sipledger.toml", overrides)
    assert cfg.sip.listen_host == "0.0.0.0"
    assert CoreConfig.from_config(cfg).local_host == "198.51.100.7"
    with pytest.raises(config.ConfigError, match=r"sip\.advertised_host"):
        CoreConfig.from_config(config.load(REPO / "deploy/docker/sipledger.toml"))


def test_prometheus_and_grafana_are_provisioned_from_the_repository() -> None:
    doc = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = doc["services"]
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts {source}, which is not in the repository"
    assert set(services["prometheus"]["depends_on"]) == {"b2bua", "pipeline"}
    assert "grafana-clickhouse-datasource" in services["grafana"]["environment"]["GF_INSTALL_PLUGINS"]
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == "/etc/grafana/dashboards/sipledger.json"
    assert (REPO / "deploy/grafana/dashboards/sipledger.json").is_file()
