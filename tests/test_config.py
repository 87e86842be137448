from pathlib import Path

import pytest
from click.testing import CliRunner

from sipledger import config as config_mod
from sipledger.cli import main
from sipledger.config import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_example_config_loads_with_vos3000_defaults() -> None:
    cfg = config_mod.load(REPO / "sipledger.toml")
    assert cfg.timers.session_ttl == 600
    assert cfg.timers.session_update_segment == 2
    assert cfg.timers.no_timer_max_duration == 7200
    assert cfg.sip.invite_timeout == 32.0
    assert cfg.sip.resend_interval_ms == 500
    assert [g.name for g in cfg.gateways] == ["carrier-a", "carrier-b"]


def test_unknown_key_names_the_key(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[timers]\nsession_tll = 600\n")
    with pytest.raises(ConfigError) as err:
        config_mod.load(p)
    assert err.value.key == "timers.session_tll"
    assert "session_ttl" in str(err.value)  # the message lists what was meant


def test_unknown_section_and_bad_values_name_the_key(tmp_path: Path) -> None:
    cases = {
        "[timerz]\nx = 1\n": "timerz",
        "[timers]\nsession_ttl = \"ten\"\n": "timers.session_ttl",
        "[timers]\nsession_update_segment = 0\n": "timers.session_update_segment",
        "[sip]\nrefresh_method = \"options\"\n": "sip.refresh_method",
        "[[routes]]\nprefix = \"1\"\ngateways = [\"nope\"]\n": "routes[0].gateways",
        "[[accounts]]\nname = \"a\"\nusername = \"u\"\n": "accounts[0].password",
        "[vos3000]\nSS_SIP_SESSION_TTX = 1\n": "vos3000.SS_SIP_SESSION_TTX",
    }
    for text, key in cases.items():
        p = tmp_path / "c.toml"
        p.write_text(text)
        with pytest.raises(ConfigError) as err:
            config_mod.load(p)
        assert err.value.key == key, text


def test_vos3000_names_map_onto_keys(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[vos3000]\nSS_SIP_SESSION_TTL = "300"\nSS_SIP_NO_TIMER_REINVITE_INTERVAL = 1800\n'
                 "SS_MAX_CALL_DURATION = 3600\nSS_SIP_SESSION_UPDATE_SEGMENT = 3\n"
                 "SS_SIP_SESSION_TIMEOUT_EARLY_HANGUP = 10\nSS_SIP_TIMEOUT = 60\n")
    cfg = config_mod.load(p)
    t = cfg.timers
    assert (t.session_ttl, t.no_timer_max_duration, t.max_call_duration) == (300, 1800, 3600)
    assert (t.session_update_segment, t.session_timeout_early_hangup) == (3, 10)
    assert cfg.sip.invite_timeout == 60.0


def test_vos3000_name_conflicting_with_key_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[timers]\nsession_ttl = 600\n[vos3000]\nSS_SIP_SESSION_TTL = 300\n")
    with pytest.raises(ConfigError) as err:
        config_mod.load(p)
    assert err.value.key == "vos3000.SS_SIP_SESSION_TTL"


def test_set_overrides_take_toml_values() -> None:
    cfg = config_mod.load(REPO / "sipledger.toml", ["timers.max_call_duration=90",
                                                    'node.id="edge-7"', "sip.transports=['udp']"])
    assert cfg.timers.max_call_duration == 90
    assert cfg.node.id == "edge-7"
    assert cfg.sip.transports == ["udp"]


def test_every_key_is_documented() -> None:
    rows = config_mod.describe()
    assert all(doc for _, doc, _, _ in rows)
    vos = {v for *_, v in rows if v}
    assert {"SS_SIP_SESSION_TTL", "SS_SIP_SESSION_UPDATE_SEGMENT", "SS_SIP_NO_TIMER_REINVITE_INTERVAL",
            "SS_MAX_CALL_DURATION", "SS_SIP_SESSION_TIMEOUT_EARLY_HANGUP", "SS_SIP_TIMEOUT"} <= vos


def test_cli_reports_bad_config_and_exits_nonzero(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[pipeline]\nnode_timeout = -1\n")
    res = CliRunner().invoke(main, ["config", "check", "--config", str(p)])
    assert res.exit_code != 0
    assert "pipeline.node_timeout" in res.output


def test_every_subcommand_has_help() -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["--help"])
    assert res.exit_code == 0
    names = [line.split()[0] for line in res.output.split("Commands:")[1].splitlines() if line.strip()]
    assert "stack" in names and "cdrs" in names
    for name in names:
        sub = runner.invoke(main, [name, "--help"])
        assert sub.exit_code == 0, name
        assert "Usage:" in sub.output
