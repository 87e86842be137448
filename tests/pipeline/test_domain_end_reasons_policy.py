from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.domain.end_reasons import END_REASONS, VOS3000_EQUIVALENT, ZOMBIE_REASONS, is_zombie
from pipeline.domain.policy import Policy

COMMON = Path(__file__).resolve().parents[2] / "schemas" / "common.json"


def test_vocabulary_matches_the_contract_exactly() -> None:
    contract = json.loads(COMMON.read_text())["$defs"]["end_reason"]["enum"]
    assert set(contract) == END_REASONS
    assert all(VOS3000_EQUIVALENT[r] for r in contract)


def test_vos3000_counterparts_billing_staff_look_for() -> None:
    assert "Response Timeout" in VOS3000_EQUIVALENT["response_timeout"]
    assert "Call Limit Exceeded" in VOS3000_EQUIVALENT["call_limit_exceeded"]
    assert "486" in VOS3000_EQUIVALENT["busy"]
    assert "404" in VOS3000_EQUIVALENT["no_route"]
    assert "401" in VOS3000_EQUIVALENT["auth_failed"]
    assert "Account Locked" in VOS3000_EQUIVALENT["auth_failed"]


def test_zombie_reasons() -> None:
    expected = {"session_expired", "session_refresh_failed", "liveness_probe_failed",
                "no_timer_limit", "max_duration_limit", "pipeline_terminate", "orphaned"}
    assert expected == ZOMBIE_REASONS
    assert is_zombie("orphaned") and not is_zombie("normal_caller_bye") and not is_zombie("busy")
    with pytest.raises(ValueError):
        is_zombie("hung_up")


def test_policy_defaults_and_frozen() -> None:
    p = Policy()
    assert (p.max_call_duration, p.no_timer_max_duration, p.session_timeout_early_hangup) == (0, 7200, 0)
    assert (p.grace_period_s, p.node_timeout_s, p.unknown_call_timeout_s) == (5, 30, 60)
    with pytest.raises(AttributeError):
        p.grace_period_s = 1  # type: ignore[misc]
    with pytest.raises(ValueError):
        Policy(grace_period_s=-1)
