"""`sipledger events validate` and `events send` (sipledger/events_tools.py): against the contract, a
journal, the real Kafka broker, and end to end from an Asterisk CDR file to the reports and the audit."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from kafka.partitioner.default import murmur2

from pipeline.domain.timeutil import format_ts, parse_ts
from pipeline.embedded import EmbeddedPipeline
from pipeline.synthetic import SyntheticSpec, generate
from sipledger import config as config_mod
from sipledger.cli import main
from sipledger.contract_doc import example_stream
from sipledger.eventlog import FileJournal, read_journal
from sipledger.events_tools import check_lines
from sipledger.stack.kafka_broker import create_topics
from sipledger.store import open_store
from sipledger.store.cdr_export import fetch_cdrs
from sipledger.topic_reader import read_to_end

REPO = Path(__file__).resolve().parents[1]
AST_SAMPLE = REPO / "examples" / "asterisk-Master.csv"
RATES = REPO / "sipledger" / "data" / "rates"


def call(cid: str, node: str = "sw1", t: str = "2026-11-25T10:00:0", answered: bool = True) -> list[dict]:
    base = {"call_id": cid, "node": node, "schema_version": 1}
    evs = [{**base, "type": "call.setup", "ts": f"{t}0.000Z", "caller": "100", "callee": "442071234567",
            "account": "acme", "source_ip": "unknown", "timer_supported": False}]
    if answered:
        evs.append({**base, "type": "call.answered", "ts": f"{t}1.000Z", "timer_mode": "no_timer",
                    "session_expires": None, "refresher": {"caller": None, "carrier": None},
                    "effective_limit_s": None, "limit_source": "none"})
    evs.append({**base, "type": "call.terminated", "ts": f"{t}9.000Z", "reason": "normal_caller_bye",
                "initiator": "caller", "sip_status": None})
    for seq, e in enumerate(evs, start=1):
        e.update(seq=seq, event_id=f"{cid}-{seq}")
    return evs


def jl(events: list[dict]) -> str:
    return "".join(json.dumps(e) + "\n" for e in events)


def bad_file() -> tuple[str, list[str]]:
    """A file with one problem of each kind, and the lines `events validate` must print for it."""
    good = call("good")  # lines 1-3
    lines = [json.dumps(e) for e in good]
    lines.append("{not json")  # 4
    lines.append(json.dumps({**call("t")[0], "type": "call.exploded"}))  # 5
    setup = call("miss")[0]
    del setup["callee"]
    lines.append(json.dumps(setup))  # 6
    lines.append(json.dumps({**call("typ")[0], "timer_supported": "yes"}))  # 7
    lines.append(json.dumps({**good[1], "ts": "2026-11-25T10:00:02.000Z"}))  # 8: good-2's id, other content
    lines.append(json.dumps(good[2]))  # 9: a verbatim repeat: harmless
    gap = call("gap")
    lines += [json.dumps(gap[0]), json.dumps({**gap[2], "seq": 4})]  # 10, 11: seq 2 and 3 missing
    late = call("late")[1:]  # 12, 13: seq 2 and 3 without seq 1
    lines += [json.dumps(e) for e in late]
    two = call("two")
    lines += [json.dumps(two[0]), json.dumps({**two[1], "node": "sw2"}), json.dumps(two[2])]  # 14-16
    after = call("after", answered=False)  # setup, terminated (seq 2)
    lines += [json.dumps(after[0]), json.dumps(after[1]),
              json.dumps({**call("after")[1], "seq": 3, "event_id": "after-3"})]  # 17-19
    lines.append("")  # 20: blank lines are not events
    lines.append(json.dumps({"event_id": "hb-1", "call_id": "node:elsewhere", "seq": 1,
                             "type": "node.heartbeat", "ts": "2026-11-25T10:00:00.000Z", "node": "sw1",
                             "schema_version": 1, "active_calls": 0}))  # 21
    expected = [
        "line 4: not valid JSON: unexpected character, expected a string key: line 1 column 2 (char 1)",
        "line 5: field type: unknown event type 'call.exploded'",
        "line 6: field callee: 'callee' is a required property",
        "line 7: field timer_supported: 'yes' is not of type 'boolean'",
        "line 8: field event_id: event_id 'good-2' already names a different event (line 2); the pipeline "
        "would drop this one as a duplicate",
        "line 11: field seq: call gap has no seq 2-3 (seqs run from 1 without gaps; the pipeline holds every "
        "later event of the call)",
        "line 12: field seq: call late starts at seq 2: seq 1 missing (seqs run from 1 without gaps)",
        "line 15: field node: call two belongs to node 'sw1' (line 14), not 'sw2': one call, one node",
        "line 16: field seq: call two has no seq 2 (seqs run from 1 without gaps; the pipeline holds every "
        "later event of the call)",
        "line 19: field seq: call after ended with call.terminated seq 2 (line 18); nothing may follow it",
        "line 21: field call_id: a node.heartbeat of node 'sw1' has call_id 'node:elsewhere', not 'node:sw1'",
    ]
    return "\n".join(lines) + "\n", expected


def test_validate_names_line_and_field_of_every_bad_event(tmp_path: Path) -> None:
    text, expected = bad_file()
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    res = CliRunner().invoke(main, ["events", "validate", str(path)])
    assert res.exit_code == 1
    out = res.stdout.splitlines()
    assert out[:-1] == expected
    assert out[-1].startswith(f"11 problems in {path}: 16 events on 20 lines: 5 calls (5 ended")
    # The same from standard input, and as one JSON document for scripts.
    res = CliRunner().invoke(main, ["events", "validate", "-", "--format", "json"], input=text)
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert doc["ok"] is False and doc["file"] == "standard input"
    assert [(p["line"], p["field"]) for p in doc["problems"]] == [
        (4, None), (5, "type"), (6, "callee"), (7, "timer_supported"), (8, "event_id"), (11, "seq"),
        (12, "seq"), (15, "node"), (16, "seq"), (19, "seq"), (21, "call_id")]
    assert doc["repeated_events"] == 1
    assert {p["call_id"] for p in doc["problems"]} >= {"t", "miss", "typ", "gap", "late", "two", "after"}


def test_a_call_starts_with_its_call_setup_at_seq_1() -> None:
    setup, answered, end = call("swap")
    swapped = [{**answered, "seq": 1}, {**setup, "seq": 2}, end]
    res = check_lines((n, json.dumps(e).encode()) for n, e in enumerate(swapped, start=1))
    assert [str(p) for p in res.problems] == [
        "line 1: field type: call swap: seq 1 is a call.answered; a call starts with its call.setup",
        "line 2: field seq: call swap: its call.setup has seq 2; the call.setup is seq 1",
    ]
    assert res.bad_calls() == {"swap"}


def test_validate_passes_a_good_stream_with_one_summary_line(tmp_path: Path) -> None:
    events = list(generate(SyntheticSpec(calls=200, seed=3), verdict_after_ms=20_000)) + example_stream()
    path = tmp_path / "good.jsonl"
    path.write_text(jl(events))
    res = CliRunner().invoke(main, ["events", "validate", str(path)])
    assert res.exit_code == 0, res.output
    assert res.stdout.count("\n") == 1 and res.stdout.startswith(f"ok: {path}: {len(events)} events")
    assert res.stderr == ""  # every node heart-beats: nothing to note
    converted = tmp_path / "cdr.jsonl"
    converted.write_text(jl(call("c1")))
    res = CliRunner().invoke(main, ["events", "validate", str(converted)])
    assert res.exit_code == 0
    assert "note: node sw1 sends no node.heartbeat" in res.stderr
    res = CliRunner().invoke(main, ["events", "validate", str(tmp_path / "nothing.jsonl")])
    assert res.exit_code == 1 and "no file" in res.output


def journal_events(path: Path) -> list[dict]:
    return [json.loads(raw) for _, raw in read_journal(path)]


def test_send_appends_a_checked_file_to_a_journal_and_refuses_a_bad_one(tmp_path: Path) -> None:
    runner = CliRunner()
    events = call("a") + call("b", t="2026-11-25T10:01:0")
    src = tmp_path / "in.jsonl"
    src.write_text(jl(events))
    journal = tmp_path / "log" / "events.jsonl"
    res = runner.invoke(main, ["events", "send", str(src), "--to", f"file://{journal}"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == (f"sent 6 events of 2 calls (0 node events to every partition; 6 records) "
                                  f"to file://{journal}; skipped 0 lines")
    assert journal_events(journal) == events
    # A file with problems sends nothing, and says why.
    text, expected = bad_file()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(text)
    res = runner.invoke(main, ["events", "send", str(bad), "--to", f"file://{journal}"])
    assert res.exit_code == 1
    assert res.stderr.splitlines()[:len(expected)] == expected
    assert "11 problems in" in res.stderr and "nothing sent" in res.stderr
    assert journal_events(journal) == events
    # --skip-invalid sends the rest, each skipped line printed. A line whose absence would leave its call
    # with a gap takes its whole call along (the pipeline would hold half a call forever); a second version
    # of an event, or an event after the call.terminated, goes alone.
    res = runner.invoke(main, ["events", "send", str(bad), "--to", f"file://{journal}", "--skip-invalid"])
    assert res.exit_code == 0, res.output
    sent = journal_events(journal)[len(events):]
    assert [(e["call_id"], e["seq"]) for e in sent] == [
        ("good", 1), ("good", 2), ("good", 3), ("good", 3), ("after", 1), ("after", 2)]
    skipped = [line for line in res.stderr.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 20 - 6
    assert "skipped line 13: skipped with its call late, which has an invalid event" in skipped
    assert "skipped line 14: skipped with its call two, which has an invalid event" in skipped
    assert "skipped line 7: field timer_supported: 'yes' is not of type 'boolean'" in skipped
    assert res.stdout.strip() == (f"sent 6 events of 2 calls (0 node events to every partition; 6 records) "
                                  f"to file://{journal}; skipped 14 lines")
    # The journal the file would be appended to cannot be the file itself.
    res = runner.invoke(main, ["events", "send", str(journal), "--to", f"file://{journal}"])
    assert res.exit_code == 1 and "is the journal it would be appended to" in res.output


def test_send_to_the_real_broker_keys_calls_and_broadcasts_node_events(real_stack, tmp_path: Path) -> None:
    topic = f"ext-events-{uuid.uuid4().hex[:8]}"
    create_topics(real_stack.kafka_bootstrap, {topic: 4})
    spec = SyntheticSpec(calls=300, seed=5)
    events = list(generate(spec, verdict_after_ms=20_000))
    node_events = [e for e in events if e["type"] in ("node.heartbeat", "node.lost")]
    call_events = [e for e in events if e["type"] not in ("node.heartbeat", "node.lost")]
    assert node_events and any(e["type"] == "node.lost" for e in node_events)
    src = tmp_path / "stream.jsonl"
    src.write_text(jl(events))
    res = CliRunner().invoke(main, ["events", "send", str(src), "--to", f"kafka://{real_stack.kafka_bootstrap}",
                                    "--topic", topic])
    assert res.exit_code == 0, res.output
    records = list(read_to_end(real_stack.kafka_bootstrap, topic))
    assert len(records) == len(call_events) + 4 * len(node_events)
    per_partition = Counter(r.partition for r in records)
    line = res.stdout.strip()
    assert line.startswith(f"sent {len(events)} events of {spec.calls} calls ({len(node_events)} node events "
                           f"to every partition; {len(records)} records) to kafka://{real_stack.kafka_bootstrap}/"
                           f"{topic} (records per partition: ")
    assert line.endswith(", ".join(f"{p}={per_partition[p]}" for p in range(4)) + "); skipped 0 lines")
    by_partition: dict[int, list[dict]] = defaultdict(list)
    for r in records:
        ev = json.loads(r.value)
        assert r.key.decode() == ev["call_id"]
        by_partition[r.partition].append(ev)
    for p in range(4):
        # Every partition has every heartbeat and the verdict, in the order sent.
        assert [e for e in by_partition[p] if e["call_id"].startswith("node:")] == node_events
    seen_on: dict[str, set[int]] = defaultdict(set)
    for p, evs in by_partition.items():
        per_call: dict[str, list[int]] = defaultdict(list)
        for e in evs:
            if not e["call_id"].startswith("node:"):
                seen_on[e["call_id"]].add(p)
                per_call[e["call_id"]].append(e["seq"])
        for cid, seqs in per_call.items():
            assert seqs == sorted(seqs), cid  # each call in order
            # The partition the B2BUA's publisher would choose: kafka-python's murmur2 of the key.
            assert (murmur2(cid.encode()) & 0x7FFFFFFF) % 4 == p
    assert all(len(ps) == 1 for ps in seen_on.values()) and len(seen_on) == spec.calls
    assert sorted(json.dumps(e, sort_keys=True) for evs in by_partition.values() for e in evs
                  if not e["call_id"].startswith("node:")) == sorted(json.dumps(e, sort_keys=True)
                                                                    for e in call_events)
    # A topic that does not exist is named, not waited for.
    res = CliRunner().invoke(main, ["events", "send", str(src), "--to", f"kafka://{real_stack.kafka_bootstrap}",
                                    "--topic", "no-such-topic"])
    assert res.exit_code == 1 and "no topic 'no-such-topic'" in res.output


def write_config(tmp: Path) -> Path:
    cfg = tmp / "sipledger.toml"
    cfg.write_text(f"""
[events]
log = "file://{tmp}/log/events.jsonl"
[store]
url = "chdb://{tmp}/store"
[pipeline]
sell_rates = "{RATES}/sell.csv"
buy_rates = "{RATES}/buy.csv"
""")
    return cfg


def test_a_converted_asterisk_cdr_file_sent_to_a_journal_gives_cdrs_the_reports_read(tmp_path: Path) -> None:
    runner = CliRunner()
    cfg = write_config(tmp_path)
    events_file = tmp_path / "asterisk.jsonl"
    res = runner.invoke(main, ["events", "from-cdr", "--format", "asterisk", "--tz", "Europe/Berlin",
                               "--node", "pbx-berlin", str(AST_SAMPLE), "--out", str(events_file)])
    assert res.exit_code == 0, res.output
    # events send's default target is the configuration's events.log.
    res = runner.invoke(main, ["events", "send", str(events_file), "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "sent 115 events of 32 calls" in res.stdout
    log = f"file://{tmp_path}/log/events.jsonl"
    store = f"chdb://{tmp_path}/store"
    res = runner.invoke(main, ["replay", "--config", str(cfg), "--from", log, "--to", store])
    assert res.exit_code == 0, res.output
    assert "32 CDRs, 0 calls still open" in res.output

    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    answer = {e["call_id"]: parse_ts(e["ts"]) for e in events if e["type"] == "call.answered"}
    end = {e["call_id"]: parse_ts(e["ts"]) for e in events if e["type"] == "call.terminated"}
    talk_ms = {c: end[c] - a for c, a in answer.items()}
    long_calls = {c for c, ms in talk_ms.items() if ms > 7200 * 1000}
    assert len(long_calls) == 3

    s = open_store(store)
    cdrs = {c["call_id"]: c for c in fetch_cdrs(s)}
    s.close()
    assert len(cdrs) == 32
    for cid, ms in talk_ms.items():
        # Judged against the pipeline's own no-timer cap (the events announce none).
        assert (cdrs[cid]["duration_ms"], cdrs[cid]["timer_mode"], cdrs[cid]["effective_limit_s"]) == (
            ms, "no_timer", 7200)
    over_cap = {c for c, cdr in cdrs.items() if cdr["duration_ms"] > (cdr["effective_limit_s"] or 0) * 1000
                and cdr["answer_ts"] is not None}
    assert over_cap == long_calls
    assert all(cdrs[c]["sell_rate"] is not None for c in long_calls if cdrs[c]["account"] != "unknown")

    res = runner.invoke(main, ["report", "runaway-cost", "--config", str(cfg), "--format", "json"])
    assert res.exit_code == 0, res.output
    totals = json.loads(res.stdout)["totals"]
    assert (totals["calls"], totals["answered"], totals["zombie_calls"]) == (32, 22, 0)
    assert Decimal(totals["minutes"]) == (Decimal(sum(talk_ms.values())) / 60_000).quantize(Decimal("0.01"))
    assert Decimal(totals["sell_cost"]) > 0 and Decimal(totals["buy_cost"]) > 0
    # The long calls against the no-timer cap in force: the what-if says the cap would have cut them.
    res = runner.invoke(main, ["report", "what-if", "--config", str(cfg), "--caps", "7200",
                               "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert sum(r["cut_calls"] for r in rows) == 3
    assert all(r["in_force_s"] == 7200 for r in rows)
    html = tmp_path / "report.html"
    res = runner.invoke(main, ["report", "runaway-cost", "--config", str(cfg), "--format", "html",
                               "-o", str(html)])
    assert res.exit_code == 0 and "No-timer cap what-if" in html.read_text()

    res = runner.invoke(main, ["audit", "--config", str(cfg), "--from", log, "--store", store])
    assert res.exit_code == 0, res.output
    assert "audit passed" in res.output and "32 calls: 32 ended by their node" in res.output


@pytest.mark.parametrize("fmt", ["asterisk", "freeswitch"])
def test_doc_examples_and_converted_samples_validate_from_standard_input(fmt: str) -> None:
    sample = REPO / "examples" / f"{fmt}-Master.csv"
    converted = CliRunner().invoke(main, ["events", "from-cdr", "--format", fmt, str(sample)])
    assert converted.exit_code == 0
    res = CliRunner().invoke(main, ["events", "validate", "-"], input=converted.stdout)
    assert res.exit_code == 0, res.output


def test_a_live_pipeline_orphans_the_open_calls_of_a_node_that_sends_no_heartbeats(tmp_path: Path) -> None:
    """What docs/events.md warns of: call events are no sign of life. Caught up, the embedded pipeline
    gives up on a node with open calls and no heartbeat after node_timeout; a node that heart-beats keeps
    its calls."""
    cfg_path = write_config(tmp_path)
    cfg_path.write_text(cfg_path.read_text() + "node_timeout = 5\n")
    cfg = config_mod.load(cfg_path)
    # Answered and still open: setup and answer only.
    quiet, beating = call("quiet-1", node="quiet")[:2], call("beating-1", node="beating")[:2]

    def beat(k: int, at_ms: int) -> dict:
        return {"event_id": f"hb-{k}", "call_id": "node:beating", "seq": k, "type": "node.heartbeat",
                "ts": format_ts(at_ms), "node": "beating", "schema_version": 1, "active_calls": 1}

    t0 = parse_ts("2026-11-25T10:00:02.000Z")
    src = tmp_path / "live.jsonl"
    src.write_text(jl([beat(1, t0), *quiet, *beating]))
    assert CliRunner().invoke(main, ["events", "send", str(src), "--config", str(cfg_path)]).exit_code == 0
    clock = [t0 / 1000]
    pipe = EmbeddedPipeline(cfg, clock=lambda: clock[0])
    journal = FileJournal(pipe.paths.events)
    try:
        pipe.step()
        for k in range(2, 12):
            clock[0] += 1
            journal.publish(beat(k, int(clock[0] * 1000)))
            journal.flush()
            pipe.step()
            time.sleep(0.01)  # the verdict comes back from the probe pool
        pipe.step(force_flush=True)
        lost = [e for e in journal_events(pipe.paths.events) if e["type"] == "node.lost"]
        assert [e["node"] for e in lost] == ["quiet"]
        pipe.step(force_flush=True)
        cdrs = {c["call_id"]: c for c in fetch_cdrs(pipe.store)}
    finally:
        journal.close()
        pipe.close()
    assert cdrs["quiet-1"]["end_reason"] == "orphaned" and "beating-1" not in cdrs
