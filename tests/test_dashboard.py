"""The Grafana dashboard of docker-compose.yml (deploy/grafana/dashboards/sipledger.json).

Every ClickHouse panel's SQL runs, with Grafana's ``$__from``/``$__to`` (epoch milliseconds) in place,
on chDB and on the real ClickHouse 18.16, each holding the CDRs and alerts the embedded pipeline built
from the same log, and both answer the same rows. Every Prometheus panel names only metrics the exporters
define. The provisioning files name the data sources the panels use.
"""

from __future__ import annotations

import json
import re
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from b2bua.metrics import NAMES as B2BUA_NAMES
from pipeline.embedded import EmbeddedPipeline
from pipeline.metrics import EMBEDDED_NAMES, FAUST_NAMES
from pipeline.synthetic import SyntheticSpec, generate
from sipledger import config as config_mod
from sipledger.store import open_store

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "sipledger.json"
RATES = REPO / "sipledger" / "data" / "rates"
CH_TYPE = "grafana-clickhouse-datasource"


def panels(node: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in node.get("panels", []):
        out.append(p)
        out += panels(p)  # collapsed rows hold their panels
    return out


def targets(kind: str) -> list[tuple[str, dict[str, Any]]]:
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t) for p in panels(dash) for t in p.get("targets", [])
            if t["datasource"]["type"] == kind]


def clickhouse_queries() -> list[tuple[str, str]]:
    return [(title, t["rawSql"]) for title, t in targets(CH_TYPE)]


def substitute(sql: str, start_ms: int, end_ms: int) -> str:
    """What Grafana sends: its global variables replaced by epoch milliseconds."""
    out = sql.replace("${__from}", str(start_ms)).replace("${__to}", str(end_ms))
    out = out.replace("$__from", str(start_ms)).replace("$__to", str(end_ms))
    assert "$" not in out, f"a variable the test does not know: {out}"
    return out


def normalise(rows: list[dict[str, Any]]) -> list[tuple[tuple[str, str], ...]]:
    def value(v: Any) -> str:
        if isinstance(v, float | Decimal):
            return f"{float(v):.6g}"
        return str(v)

    return sorted(tuple((k, value(v)) for k, v in r.items()) for r in rows)


@pytest.fixture(scope="module")
def stores(real_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The same log folded by the embedded pipeline into chDB and into ClickHouse 18.16: CDRs, alerts."""
    tmp = tmp_path_factory.mktemp("dashboard")
    events = [json.dumps(e) for e in generate(SyntheticSpec(calls=800, seed=17, no_timer_cap_s=60),
                                               verdict_after_ms=30_000)]
    urls = {"chdb": f"chdb://{tmp}/store",
            "clickhouse-18.16": real_stack.clickhouse_url(f"dashboard_{uuid.uuid4().hex[:8]}")}
    for name, url in urls.items():
        folder = tmp / name
        folder.mkdir()
        (folder / "events.jsonl").write_text("\n".join(events) + "\n")
        cfg = config_mod.from_dict({
            "events": {"log": f"file://{folder}/events.jsonl"}, "store": {"url": url},
            "timers": {"no_timer_max_duration": 60},
            "pipeline": {"sell_rates": f"{RATES}/sell.csv", "buy_rates": f"{RATES}/buy.csv",
                         "node_timeout": 3600.0}}, folder)
        pipe = EmbeddedPipeline(cfg)
        try:
            while pipe.step(force_flush=True):
                pass
            assert pipe.stats["events"] == len(events) and pipe.sink.pending() == 0
            assert pipe.stats["cdrs"] and pipe.stats["alerts"], pipe.stats
        finally:
            pipe.close()
    return urls


def test_the_dashboard_has_the_panels_the_issue_asks_for() -> None:
    titles = {title for title, _ in clickhouse_queries()}
    assert {"ASR, ACD and PDD per vendor", "Zombie minutes and exposure per account",
            "Calls ended at each limit"} <= titles
    for _, sql in clickhouse_queries():
        # FINAL: a CDR written twice counts once.
        assert "FINAL" in sql and "$__from" in sql and "$__to" in sql
        assert not re.search(r"DateTime64|\$__time|\$__fromTime|\$__toTime", sql)  # none exists on 18.16


def test_every_clickhouse_panel_runs_on_chdb_and_clickhouse_18_16(stores: dict[str, str]) -> None:
    opened = {name: open_store(url) for name, url in stores.items()}
    try:
        versions = {name: s.query("SELECT version() AS v")[0]["v"] for name, s in opened.items()}
        assert versions["clickhouse-18.16"].startswith("18.16"), versions
        bounds = opened["chdb"].query("SELECT min(end_ms) AS lo, max(end_ms) AS hi FROM cdrs")[0]
        alerts = opened["chdb"].query("SELECT min(ts_ms) AS lo, max(ts_ms) AS hi FROM zombie_alerts")[0]
        start = min(int(bounds["lo"]), int(alerts["lo"]))
        end = max(int(bounds["hi"]), int(alerts["hi"])) + 1
        for title, sql in clickhouse_queries():
            answers = {}
            for name, store in opened.items():
                try:
                    answers[name] = store.query(substitute(sql, start, end))
                except Exception as exc:  # name the panel and the server
                    raise AssertionError(f"panel {title!r} fails on {name} ({versions[name]}): "
                                         f"{exc}") from exc
            print(f"{title}: {len(answers['chdb'])} rows on chDB {versions['chdb']} and on ClickHouse "
                  f"{versions['clickhouse-18.16']}")
            assert answers["chdb"], f"panel {title!r} shows nothing for the whole data set"
            assert normalise(answers["chdb"]) == normalise(answers["clickhouse-18.16"]), title
            # The time range is honoured: a range before the data shows nothing.
            assert not opened["chdb"].query(substitute(sql, start - 10_000, start - 5_000)), title
    finally:
        for store in opened.values():
            store.close()


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bsipledger_[a-z0-9_]+", expr))


def _family(sample: str) -> str:
    for suffix in ("_total", "_bucket", "_sum", "_count"):
        if sample.endswith(suffix) and sample.removesuffix(suffix) in {*B2BUA_NAMES, *EMBEDDED_NAMES,
                                                                       *FAUST_NAMES}:
            return sample.removesuffix(suffix)
    return sample


def test_every_prometheus_panel_names_metrics_the_exporters_define() -> None:
    defined = {*B2BUA_NAMES, *EMBEDDED_NAMES, *FAUST_NAMES}
    seen: set[str] = set()
    for title, target in targets("prometheus"):
        names = _metric_names(target["expr"])
        assert names, f"{title}: {target['expr']}"
        for name in names:
            assert _family(name) in defined, f"panel {title!r} names {name}, which no exporter defines"
            seen.add(_family(name))
    # The issue's list: B2BUA and pipeline figures are all on the dashboard.
    asked = {"b2bua_active_calls", "b2bua_calls", "b2bua_setup_latency_seconds", "b2bua_refreshes",
             "b2bua_byes_sent", "b2bua_spool_bytes", "b2bua_refused_requests", "pipeline_events",
             "pipeline_partition_lag", "pipeline_deadlines_pending", "pipeline_commands", "pipeline_alerts",
             "pipeline_sink_pending_rows", "pipeline_sink_oldest_pending_seconds", "pipeline_dead_letters"}
    assert {f"sipledger_{n}" for n in asked} <= seen


def test_provisioning_names_the_dashboards_data_sources_and_scrapes_the_services() -> None:
    sources = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/sipledger.yml").read_text())
    by_uid = {d["uid"]: d for d in sources["datasources"]}
    dash = json.loads(DASHBOARD.read_text())
    used = {(t["datasource"]["type"], t["datasource"]["uid"])
            for p in panels(dash) for t in p.get("targets", [])}
    assert used == {(d["type"], uid) for uid, d in by_uid.items()}
    ch = by_uid["clickhouse"]["jsonData"]
    docker_cfg = config_mod.load(REPO / "deploy/docker/sipledger.toml")
    assert f"clickhouse://{ch['username']}:@{ch['host']}:{ch['port']}/{ch['defaultDatabase']}" == \
        docker_cfg.store.url
    prom = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    targets_ = {j["job_name"]: j["static_configs"][0]["targets"] for j in prom["scrape_configs"]}
    assert targets_ == {"sipledger-b2bua": [f"b2bua:{docker_cfg.metrics.b2bua_port}"],
                        "sipledger-pipeline": [f"pipeline:{docker_cfg.metrics.pipeline_port}"]}
    assert docker_cfg.metrics.listen_host == "0.0.0.0"  # scraped from the prometheus container
    assert by_uid["prometheus"]["url"] == "http://prometheus:9090"
