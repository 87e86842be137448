"""The gateway health state machine (b2bua/gateway_health.py): thresholds, flapping, INVITE evidence."""

from __future__ import annotations

import pytest

from b2bua.gateway_health import GatewayHealth, GatewayTable, ProbePolicy, reply_code_matches
from sipledger.config import ConfigError, from_dict


def health(down_after: int = 3, up_after: int = 2, codes: tuple[str, ...] = ()) -> GatewayHealth:
    return GatewayHealth("gw1", ProbePolicy(True, 1.0, 0.5, down_after, up_after, codes))


def test_unknown_is_routable_and_the_first_answer_makes_it_up() -> None:
    h = health()
    assert h.state == "unknown" and h.usable
    t = h.answered(1.0, 200, 0.4, "probe_answer")
    assert t is not None and (t.state, t.previous, t.answers, t.rtt_ms, t.down_since) == ("up", "unknown", 1,
                                                                                           0.4, None)
    assert h.answered(2.0, 200, 0.5, "probe_answer") is None  # already up: nothing to report


def test_down_after_consecutive_losses_only() -> None:
    h = health(down_after=3)
    h.answered(0.0, 200, 1.0, "probe_answer")
    assert h.lost(1.0, "probe_timeout") is None
    assert h.lost(2.0, "probe_timeout") is None
    assert h.usable
    t = h.lost(3.0, "probe_timeout")
    assert t is not None and (t.state, t.previous, t.losses, t.cause) == ("down", "up", 3, "probe_timeout")
    assert (t.last_answer_at, t.last_status, t.last_rtt_ms) == (0.0, 200, 1.0)
    assert not h.usable and h.since == 3.0
    assert h.lost(4.0, "probe_timeout") is None  # already down: one transition, not one per loss


def test_a_gateway_that_never_answers_goes_down_from_unknown() -> None:
    h = health(down_after=2)
    h.lost(0.0, "probe_timeout")
    t = h.lost(1.0, "probe_timeout")
    assert t is not None and (t.previous, t.last_answer_at, t.last_status) == ("unknown", None, None)


def test_flapping_never_reaches_the_threshold() -> None:
    """Answers every other probe: each answer resets the losses, so it stays up (no alert storm)."""
    h = health(down_after=2, up_after=2)
    h.answered(0.0, 200, 1.0, "probe_answer")
    transitions = []
    for i in range(1, 41):
        t = h.lost(float(i), "probe_timeout") if i % 2 else h.answered(float(i), 200, 1.0, "probe_answer")
        transitions.append(t)
    assert transitions == [None] * 40 and h.state == "up"


def test_up_needs_up_after_answers_in_a_row() -> None:
    h = health(down_after=1, up_after=2)
    assert h.lost(0.0, "probe_timeout") is not None
    assert h.answered(1.0, 200, 1.0, "probe_answer") is None  # one answer is not enough
    assert h.lost(2.0, "probe_timeout") is None  # ... and a loss starts the count again
    assert h.answered(3.0, 200, 1.0, "probe_answer") is None
    t = h.answered(4.0, 200, 2.5, "probe_answer")
    assert t is not None and (t.state, t.previous, t.answers, t.down_since, t.rtt_ms) == ("up", "down", 2,
                                                                                          0.0, 2.5)


def test_an_invite_timeout_counts_like_a_lost_probe_and_an_invite_answer_like_an_answer() -> None:
    h = health(down_after=3)
    h.lost(0.0, "probe_timeout")
    h.lost(1.0, "invite_timeout")
    t = h.lost(2.0, "invite_timeout")
    assert t is not None and t.cause == "invite_timeout" and t.losses == 3
    h2 = health(down_after=2)
    h2.lost(0.0, "probe_timeout")
    h2.answered(0.5, 100, None, "invite_answer")  # a 100 Trying to an INVITE: the stack is alive
    assert h2.lost(1.0, "probe_timeout") is None and h2.usable
    assert h2.last_rtt_ms is None  # an INVITE answer has no probe round trip


def test_a_refused_status_is_a_loss_and_keeps_its_status() -> None:
    h = health(down_after=1, codes=("2xx",))
    t = h.lost(0.0, "probe_status", 503)
    assert t is not None and (t.cause, t.status, t.last_status) == ("probe_status", 503, 503)


def test_default_accepts_any_final_answer_but_408() -> None:
    p = ProbePolicy()
    assert all(p.accepts(s) for s in (200, 404, 403, 405, 486, 501, 503, 603))
    assert not p.accepts(408)  # what a proxy says when nothing behind it answers (Kamailio's warning)


def test_reply_codes_narrow_it_the_kamailio_way() -> None:
    p = ProbePolicy(reply_codes=("2xx", "404"))
    assert p.accepts(200) and p.accepts(202) and p.accepts(404)
    assert not p.accepts(403) and not p.accepts(503)
    assert reply_code_matches("4XX", 486) and not reply_code_matches("4xx", 503)


def _cfg(**gw: object) -> dict[str, object]:
    return {"gateways": [{"name": "gw1", **gw}], "routes": [{"prefix": "1", "gateways": ["gw1"]}]}


def test_config_defaults_and_checks() -> None:
    cfg = from_dict(_cfg())
    gw = cfg.gateways[0]
    assert (gw.probe, gw.probe_interval, gw.probe_timeout, gw.down_after, gw.up_after, gw.probe_reply_codes) \
        == (True, 10.0, 2.0, 3, 2, [])
    with pytest.raises(ConfigError, match=r"gateways\[0\]\.probe_timeout"):
        from_dict(_cfg(probe_interval=1.0, probe_timeout=2.0))
    with pytest.raises(ConfigError, match=r"gateways\[0\]\.probe_reply_codes.*'20'"):
        from_dict(_cfg(probe_reply_codes=["20"]))
    with pytest.raises(ConfigError, match=r"gateways\[0\]\.probe_reply_codes.*'1xx'"):
        from_dict(_cfg(probe_reply_codes=["1xx"]))
    with pytest.raises(ConfigError, match=r"gateways\[0\]\.down_after"):
        from_dict(_cfg(down_after=0))
    assert from_dict(_cfg(probe_reply_codes=["2xx", "404"])).gateways[0].probe_reply_codes == ["2xx", "404"]


def test_a_gateway_not_probed_is_never_judged() -> None:
    cfg = from_dict({"gateways": [{"name": "a"}, {"name": "b", "probe": False}],
                     "routes": [{"prefix": "1", "gateways": ["a", "b"]}]})
    table = GatewayTable.of(cfg.gateways)
    assert set(table.health) == {"a"} and table.usable("b") and table.usable("a")
