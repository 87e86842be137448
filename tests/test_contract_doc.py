"""docs/events.md is generated from schemas/ (sipledger/contract_doc.py) and never goes stale."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from schemas.validation import EVENT_TYPES, validate_event
from sipledger import contract_doc
from sipledger.cli import main
from sipledger.events_tools import check_lines

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "events.md"


def test_the_committed_page_is_what_the_generator_writes() -> None:
    assert PAGE.read_text() == contract_doc.render(), (
        "docs/events.md is stale: run `python3 -m sipledger events doc --out docs/events.md`")


def sections() -> dict[str, str]:
    text = PAGE.read_text()
    parts = re.split(r"^### ", text, flags=re.M)[1:]
    return {p.split("\n", 1)[0].strip(): p for p in parts}


@pytest.mark.parametrize("etype", EVENT_TYPES)
def test_every_type_has_its_purpose_every_field_and_a_valid_example(etype: str) -> None:
    section = sections()[etype]
    schema = json.loads((REPO / "schemas" / "events" / f"{etype}.json").read_text())
    assert section.split("\n")[2] == schema["title"] + "."
    for name in schema["properties"]:
        if name in contract_doc.ENVELOPE and "$ref" in schema["properties"][name]:
            continue  # documented once, in the envelope table
        if name == "type":
            continue
        row = re.search(rf"^\| `{re.escape(name)}` \| (.+?) \| (yes|no) \| (.*) \|$", section, re.M)
        assert row, f"{etype}.{name} has no row"
        assert row.group(2) == ("yes" if name in schema["required"] else "no"), f"{etype}.{name}"
    example = json.loads(section.split("```json\n", 1)[1].split("```", 1)[0])
    assert example == contract_doc.EXAMPLES[etype]
    assert example["type"] == etype
    validate_event(example)


def test_the_envelope_rules_and_end_reasons_are_on_the_page() -> None:
    text = PAGE.read_text()
    envelope = text.split("## Envelope", 1)[1].split("## Rules", 1)[0]
    for name in contract_doc.ENVELOPE:
        assert f"| `{name}` |" in envelope
    for phrase in ("`seq` runs per call from 1, without gaps", "UTC with milliseconds and a trailing `Z`",
                   "One call, one node", "keyed by its `call_id`", "sent to *every* partition",
                   "A node that sends no heartbeats", "its clock moves with its own events",
                   "`pipeline.node_timeout` (30 s; its call events do not count)",
                   "`pipeline.max_event_lead` (10 s)"):
        assert phrase in text, phrase
    common = json.loads((REPO / "schemas" / "common.json").read_text())
    for reason in common["$defs"]["end_reason"]["enum"]:
        assert f"| `{reason}` |" in text


def test_the_examples_and_the_minimal_call_form_valid_streams() -> None:
    stream = contract_doc.example_stream()
    res = check_lines((n, json.dumps(e).encode()) for n, e in enumerate(stream, start=1))
    assert res.ok, [str(p) for p in res.problems]
    assert (res.calls, res.ended, res.heartbeats, res.verdicts) == (1, 1, 1, 1)
    minimal = PAGE.read_text().split("## A minimal call", 1)[1].split("```json\n", 1)[1].split("```", 1)[0]
    lines = [line.encode() for line in minimal.splitlines()]
    res = check_lines(enumerate(lines, start=1))
    assert res.ok and (res.events, res.calls, res.ended) == (4, 1, 1)


def test_every_integrator_note_names_a_field_the_schemas_have() -> None:
    def fields(schema: dict, prefix: str = "") -> set[str]:
        out = set()
        for name, prop in schema.get("properties", {}).items():
            out.add(prefix + name)
            out |= fields(prop, prefix + name + ".")
        return out

    for (etype, path) in contract_doc.NOTES:
        if etype == "envelope":
            schema = json.loads((REPO / "schemas" / "common.json").read_text())["$defs"]["envelope_fields"]
        else:
            schema = json.loads((REPO / "schemas" / "events" / f"{etype}.json").read_text())
        assert path in fields(schema), (etype, path)


def test_doc_command_writes_and_checks_the_page(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "docs" / "events.md"
    res = runner.invoke(main, ["events", "doc", "--out", str(out)])
    assert res.exit_code == 0 and out.read_text() == contract_doc.render()
    assert runner.invoke(main, ["events", "doc", "--out", str(out), "--check"]).exit_code == 0
    out.write_text(out.read_text().replace("Envelope", "Envelop", 1))
    res = runner.invoke(main, ["events", "doc", "--out", str(out), "--check"])
    assert res.exit_code == 1 and "is stale" in res.output
    res = runner.invoke(main, ["events", "doc"])
    assert res.stdout == contract_doc.render()


def test_the_readme_links_the_contract_page() -> None:
    readme = (REPO / "README.md").read_text()
    assert "docs/events.md" in readme
    assert "## Streaming another switch's events" in readme
