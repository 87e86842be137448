"""docs/events.md, generated from schemas/: the event contract for people who stream their own switch's
events into sipledger (``sipledger events doc``).

Everything about a field (type, bounds, allowed values, required or not, description) is read from the
JSON Schemas, so the page changes when they do; a test fails when the committed page differs from what
this module writes. What a schema cannot say is written here once: the rules that bind events to each
other and what the pipeline does with them (prose, with the configuration defaults read from
sipledger.config), a note for integrators where a field has no description of its own (each note must
name a field the schema has: a test holds them to it), and one example per type. The examples form one
valid stream (``sipledger events validate`` passes on them) and each is validated against its schema.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any, Final

from pipeline.domain.end_reasons import VOS3000_EQUIVALENT, ZOMBIE_REASONS
from schemas.validation import EVENT_TYPES, validate_event, validate_signalling
from sipledger import config as config_mod

ENVELOPE: Final = ("event_id", "call_id", "seq", "type", "ts", "node", "schema_version")
GENERATED_BY: Final = ("<!-- Generated from schemas/ by `sipledger events doc` (sipledger/contract_doc.py). "
                       "Do not edit by hand: change the schemas or the generator, then run "
                       "`sipledger events doc --out docs/events.md`. -->")
# $defs of common.json shown as a link to their own section instead of inline.
_LINKED: Final = {
    "dialog_leg": "object: a [dialog leg](#dialog-leg)",
    "end_reason": "string: an [end reason](#end-reasons)",
}

# For fields whose schema has no description: what an integrator should put there.
NOTES: Final[dict[tuple[str, str], str]] = {
    ("call.setup", "caller"): "Calling number as received (From / P-Asserted-Identity user part); may be "
                              "empty",
    ("call.setup", "callee"): "Dialled number; rated on its longest prefix in the rate decks",
    ("call.setup", "account"): "The customer billed (sell-side rate deck `party`, `[[accounts]]` name)",
    ("call.setup", "source_ip"): "Address the call came from; any text when unknown (the CDR import writes "
                                 "`unknown`)",
    ("call.setup", "requested_refresher"): "refresher= of the caller's Session-Expires (RFC 4028)",
    ("call.routed", "attempt"): "1 for the first carrier tried; a later attempt replaces the vendor",
    ("call.progress", "status"): "The provisional response relayed to the caller (first one sets ring time)",
    ("call.answered", "timer_mode"): "`session_timer` when RFC 4028 refreshes prove the call alive, else "
                                     "`no_timer` (the pipeline then applies timers.no_timer_max_duration)",
    ("call.answered", "refresher.caller"): "Who refreshes the caller leg's session",
    ("call.answered", "refresher.carrier"): "Who refreshes the carrier leg's session",
    ("call.answered", "limit_source"): "Which setting `effective_limit_s` comes from (`none` with a null "
                                       "limit)",
    ("envelope", "type"): "The event type (below); it names the schema the event is checked against",
    ("call.terminated", "reason"): "Why the call ended; a zombie reason marks a call nothing proved alive "
                                   "to its end",
    ("call.terminated", "takeover.dead_node"): "The lost node whose call this was",
    ("call.answered", "dialogs.caller"): "The caller leg's dialog",
    ("call.answered", "dialogs.carrier"): "The carrier leg's dialog",
    ("call.terminated", "initiator"): "Who ended the call: a party's BYE or CANCEL, or the system (limits, "
                                      "timers, failures)",
    ("call.terminated", "sip_status"): "Final SIP status of a failed setup (486, 487, 503...); null "
                                       "otherwise",
    ("call.terminated", "detail"): "Free text for people (e.g. the other switch's own hang-up cause)",
    ("session.refreshed", "leg"): "The leg whose session was refreshed",
    ("session.refreshed", "method"): "The refresh request (re-INVITE or UPDATE)",
    ("session.refreshed", "session_expires"): "Session-Expires agreed by this refresh, seconds",
    ("session.refreshed", "expires_at"): "When the session expires unless refreshed again",
    ("session.refresh_failed", "leg"): "The leg whose refresh failed",
    ("session.refresh_failed", "method"): "The refresh request that failed (null when none was sent)",
    ("session.refresh_failed", "status"): "Its error status (null: no answer, or none was expected)",
    ("liveness.probe_succeeded", "leg"): "The leg that answered the in-dialog OPTIONS",
    ("liveness.probe_succeeded", "status"): "The status it answered with",
    ("liveness.probe_failed", "leg"): "The leg that failed the in-dialog OPTIONS",
    ("liveness.probe_failed", "status"): "Its status (408, 481...); null when it did not answer",
    ("liveness.probe_failed", "cause"): "`timeout`: no answer; `status`: an error status",
    ("node.heartbeat", "call_id"): "`node:<node>`: the key heartbeats are published under",
    ("node.heartbeat", "active_calls"): "Calls the node has up now",
    ("node.lost", "call_id"): "`node:<node>` of the lost node",
    ("account.topup", "account"): "The prepaid account credited (`[[accounts]]` name)",
    ("account.topup", "note"): "Free text for people (who paid, the receipt)",
    ("call.setup", "credit.currency"): "The rate's currency, which the balance is kept in",
}

# One example per type: together one valid stream (call sw1/7f3a of node sw1, and node events).
def _ev(etype: str, seq: int, ts: str, **body: Any) -> dict[str, Any]:
    return {"event_id": f"sw1-7f3a-{seq}", "call_id": "sw1/7f3a", "seq": seq, "type": etype, "ts": ts,
            "node": "sw1", "schema_version": 1, **body}


EXAMPLES: Final[dict[str, dict[str, Any]]] = {
    "call.setup": _ev("call.setup", 1, "2026-11-25T10:00:00.000Z", caller="+15551230001",
                      callee="442071234567", account="acme", source_ip="198.51.100.7", timer_supported=True,
                      requested_session_expires=1800, requested_min_se=90, requested_refresher="uac"),
    "call.routed": _ev("call.routed", 2, "2026-11-25T10:00:00.004Z", vendor="carrier-a",
                       gateway="203.0.113.20:5060", prefix="44", attempt=1),
    "call.progress": _ev("call.progress", 3, "2026-11-25T10:00:01.250Z", status=180),
    "call.answered": _ev("call.answered", 4, "2026-11-25T10:00:07.500Z", timer_mode="session_timer",
                         session_expires=600, refresher={"caller": "peer", "carrier": None},
                         effective_limit_s=None, limit_source="none"),
    "session.refreshed": _ev("session.refreshed", 5, "2026-11-25T10:05:07.610Z", leg="caller",
                             method="UPDATE", session_expires=600, expires_at="2026-11-25T10:15:07.610Z"),
    "liveness.probe_succeeded": _ev("liveness.probe_succeeded", 6, "2026-11-25T10:06:00.000Z",
                                    leg="carrier", status=200),
    "liveness.probe_failed": _ev("liveness.probe_failed", 7, "2026-11-25T10:12:00.000Z", leg="carrier",
                                 status=None, cause="timeout"),
    "session.refresh_failed": _ev("session.refresh_failed", 8, "2026-11-25T10:15:07.610Z", leg="caller",
                                  method=None, status=None, cause="expired"),
    "call.terminated": _ev("call.terminated", 9, "2026-11-25T10:15:07.700Z", reason="session_expired",
                           initiator="system", sip_status=None,
                           detail="the caller's refresh never came"),
    "node.heartbeat": {"event_id": "hb-sw1-4711", "call_id": "node:sw1", "seq": 4711,
                       "type": "node.heartbeat", "ts": "2026-11-25T10:15:08.000Z", "node": "sw1",
                       "schema_version": 2, "active_calls": 12, "address": "198.51.100.2:5060"},
    "node.lost": {"event_id": "0c5b0f3f2d1a4e6b9a7c8d9e0f1a2b3c", "call_id": "node:sw2", "seq": 1,
                  "type": "node.lost", "ts": "2026-11-25T10:16:00.000Z", "node": "sw2", "schema_version": 2,
                  "last_heartbeat": "2026-11-25T10:15:21.000Z", "detected_by": "pipeline-1",
                  "probe": "no answer to 3 OPTIONS at 198.51.100.3:5060", "takeover_by": ["sw1"]},
    "gateway.down": {"event_id": "gw-sw1-carrier-a-1", "call_id": "gateway:sw1:carrier-a", "seq": 1,
                     "type": "gateway.down", "ts": "2026-11-25T10:16:30.512Z", "node": "sw1",
                     "schema_version": 2, "gateway": "carrier-a", "vendor": "carrier-a",
                     "address": "203.0.113.20:5060", "transport": "udp", "cause": "probe_timeout",
                     "losses": 3, "status": None, "last_answer": "2026-11-25T10:16:00.503Z",
                     "last_status": 200, "last_rtt_ms": 3.2, "probe_interval_s": 10.0, "down_after": 3},
    "gateway.up": {"event_id": "gw-sw1-carrier-a-2", "call_id": "gateway:sw1:carrier-a", "seq": 2,
                   "type": "gateway.up", "ts": "2026-11-25T10:21:10.504Z", "node": "sw1", "schema_version": 2,
                   "gateway": "carrier-a", "vendor": "carrier-a", "address": "203.0.113.20:5060",
                   "transport": "udp", "cause": "probe_answer", "answers": 2, "status": 200, "rtt_ms": 3.4,
                   "previous": "down", "down_since": "2026-11-25T10:16:30.512Z"},
    "account.topup": {"event_id": "topup-5b1f0c2e", "call_id": "account:acme", "seq": 1,
                      "type": "account.topup", "ts": "2026-11-25T09:30:00.000Z", "node": "sipledger-cli",
                      "schema_version": 2, "topup_id": "5b1f0c2e", "account": "acme", "amount": "25.00",
                      "note": "invoice 2026-118"},
}


# --- reading the schemas ------------------------------------------------------------------------------

@cache
def _schema(name: str) -> dict[str, Any]:
    return json.loads(resources.files("schemas").joinpath(name).read_text())


def _pointer(doc: dict[str, Any], pointer: str) -> Any:
    node: Any = doc
    for part in pointer.strip("/").split("/"):
        if part:
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _resolve(ref: str) -> tuple[dict[str, Any], str]:
    """(target schema, its name in common.json $defs or '') of a $ref of an event or common schema."""
    _, _, pointer = ref.partition("#")
    target = _pointer(_schema("common.json"), pointer)
    parts = pointer.strip("/").split("/")
    name = parts[1] if len(parts) == 2 and parts[0] == "$defs" else ""
    return target, name


def _deref(node: dict[str, Any]) -> tuple[dict[str, Any], str]:
    if "$ref" in node:
        target, name = _resolve(node["$ref"])
        return ({**target, **{k: v for k, v in node.items() if k != "$ref"}}, name)
    return node, ""


def _value(v: Any) -> str:
    return f"`{json.dumps(v)}`"


def describe_type(node: dict[str, Any]) -> str:
    """The type of a schema node in words: type, bounds, allowed values."""
    node, name = _deref(node)
    if name in _LINKED:
        return _LINKED[name]
    if name == "ts":
        return "string: UTC timestamp, ms, trailing `Z`"
    if "const" in node:
        return f"{_value(node['const'])} (always)"
    if "enum" in node:
        return "one of " + ", ".join(_value(v) for v in node["enum"])
    if "anyOf" in node:
        return " or ".join(describe_type(alt) for alt in node["anyOf"])
    types = node.get("type")
    text = " or ".join(str(t) for t in types) if isinstance(types, list) else str(types or "any")
    bounds: list[str] = []
    lo, hi = node.get("minLength"), node.get("maxLength")
    if lo is not None or hi is not None:
        bounds.append(f"{lo or 0}-{hi} chars" if hi is not None else f"at least {lo} chars")
    lo, hi = node.get("minimum"), node.get("maximum")
    if lo is not None and hi is not None:
        bounds.append(f"{lo}-{hi}")
    elif lo is not None:
        bounds.append(f">= {lo}")
    if "pattern" in node:
        bounds.append(f"matching `{node['pattern']}`")
    if types == "array" and "items" in node:
        text = f"array of {describe_type(node['items'])}"
        if "maxItems" in node:
            bounds.append(f"at most {node['maxItems']}")
    return f"{text} ({', '.join(bounds)})" if bounds else text


def field_rows(schema: dict[str, Any], etype: str, skip: tuple[str, ...] = (),
               prefix: str = "") -> list[tuple[str, str, bool, str]]:
    """(dotted name, type, required, description) for each field, nested objects' fields after them."""
    rows: list[tuple[str, str, bool, str]] = []
    required = set(schema.get("required", ()))
    for name, prop in schema.get("properties", {}).items():
        if not prefix and name in skip:
            continue
        path = prefix + name
        target, def_name = _deref(prop)
        # The field's own words first, then a note for integrators, then those of what it refers to.
        desc = prop.get("description") or NOTES.get((etype, path)) or target.get("description", "")
        rows.append((path, describe_type(prop), name in required, desc))
        if def_name not in _LINKED and target.get("type") == "object" and "properties" in target:
            rows += field_rows(target, etype, prefix=path + ".")
    return rows


def _purpose(schema: dict[str, Any]) -> str:
    """The schema's own description, without the sentence every event schema repeats."""
    text = schema.get("description", "")
    if text.startswith("Envelope fields"):
        return ""
    for tail in (" Envelope fields are defined in common.json", "Envelope fields are defined in common.json"):
        text = text.removesuffix(tail).rstrip()
    return text.rstrip(".") + "." if text else ""


# --- writing the page ---------------------------------------------------------------------------------

def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(rows: list[tuple[str, str, bool, str]]) -> list[str]:
    out = ["| field | type | required | description |", "| --- | --- | --- | --- |"]
    for name, typ, req, desc in rows:
        out.append(f"| `{name}` | {_cell(typ)} | {'yes' if req else 'no'} | {_cell(desc)} |")
    return out


def _json_block(obj: Any) -> list[str]:
    return ["```json", json.dumps(obj, indent=2), "```"]


def _defaults() -> dict[str, Any]:
    return {key: default for key, _doc, default, _vos in config_mod.describe()}


def _rules(d: dict[str, Any]) -> list[str]:
    hb = d["events.heartbeat_interval"]
    return [
        "## Rules across events",
        "",
        "A schema judges one event; these bind events to each other. `sipledger events validate` checks "
        "every one a file can show.",
        "",
        "- **`seq` runs per call from 1, without gaps.** The pipeline applies a call's events in `seq` "
        "order whatever order they arrive in, and holds every event after a missing `seq` until it comes: "
        "a call with a gap never closes (no CDR). `seq` 1 is the `call.setup`; events of a call whose "
        "`call.setup` never arrives raise an `unknown_call` alert after "
        f"`pipeline.unknown_call_timeout` ({d['pipeline.unknown_call_timeout']:g} s).",
        "- **`call.terminated` is final.** The first close wins; anything after it changes nothing.",
        "- **One call, one node.** Every event of a call names the same `node`; the call's deadlines are "
        "judged on that node's clock (below).",
        "- **`ts` is UTC with milliseconds and a trailing `Z`** (`2026-11-25T10:00:00.123Z`), taken from "
        "the node's own clock, and a node publishes its events in `ts` order.",
        "- **`event_id` names one event.** A second event with an id already read is dropped as a "
        "redelivery, so sending the same events twice changes nothing; two *different* events sharing an "
        "id lose one of them.",
        "- **Keys and partitions.** On Kafka (topic `kafka.topic_events`, default "
        f"`{d['kafka.topic_events']}`) every call event is keyed by its `call_id`, so one call stays in "
        "order on one partition. `node.heartbeat` and `node.lost` are keyed `node:<node>` and sent to "
        "*every* partition, so every pipeline worker sees every node's clock and verdicts. A node's "
        "reports on its routing gateways (`gateway.down`, `gateway.up`) are keyed "
        "`gateway:<node>:<gateway>` (one partition, in order; `seq` per key, from 1 again when the node "
        "restarts); they are no call's events and move no clock. In a journal "
        "file (`events.log = \"file:///...\"`) events are JSON lines, in the order written.",
        "- **Who sends what.** A switch sends its call events and, for a live stream, `node.heartbeat`. "
        "`node.lost` is the pipeline's own verdict: it is in the logs the pipeline writes to, and "
        "`events send` broadcasts it like the pipeline does when such a log is copied.",
        "- **Prepaid accounts.** `account.topup` (written by `sipledger balance add`) credits an account; it "
        "is keyed `account:<account>`, has no `seq` chain (`seq` 1) and is counted once per `topup_id`, "
        "however often it is read. A prepaid call's `call.setup` carries `credit`: the hold its node "
        "reserved; the pipeline replaces the hold with the call's rated cost when its CDR is made. The "
        "balances go back to the nodes as `account.balance` records (`schemas/account.balance.json`, one per "
        "account and events partition) on `kafka.topic_balances` or the embedded `balances.jsonl`.",
        "- **Unknown fields are refused**, like a wrong type or a missing required field: such an event "
        "goes to the dead-letter topic with the field named, and its call misses that `seq`.",
        "- **`schema_version`** is 1 or 2; version 2 adds `node.lost`, `node.heartbeat.address`, "
        "`call.answered.dialogs`, `local_cseq` and `remote_target` on refreshes and probes, "
        "`call.terminated.takeover` and `account.topup`. Both are read.",
        "",
        "### Each node's clock",
        "",
        "The pipeline decides nothing from a wall clock. A node's clock is the newest `ts` read from it: "
        "of its `node.heartbeat` events once it has sent one (they reach every partition alike), else of "
        "all its events. A call's deadline (its duration cap, its session expiry) counts as missed "
        f"only when its node's clock is `pipeline.grace_period` ({d['pipeline.grace_period']:g} s) past "
        "it without a `call.terminated`; then the pipeline publishes a `call.terminate` command for the "
        "node on `kafka.topic_commands` and an `enforcement_missed` alert (a switch that does not consume "
        "commands is only alerted). An event dated more than `pipeline.max_event_lead` "
        f"({d['pipeline.max_event_lead']:g} s) ahead of its node's clock moves it only when a second event "
        "confirms the jump.",
        "",
        "**A node that sends no heartbeats** (a batch import, a switch that cannot send them): its clock "
        "moves with its own events, so its deadlines are judged when its next event is read, and a call "
        "ended after its deadline is reported late. For a live stream, send heartbeats: only heartbeats "
        "are signs of life. A live pipeline that is caught up with the log and has read no heartbeat of a "
        f"node with open calls for `pipeline.node_timeout` ({d['pipeline.node_timeout']:g} s; its call "
        "events do not count) probes it with SIP OPTIONS at the `address` its heartbeats advertise, and "
        "without an answer (or an address) writes a `node.lost` verdict that closes the node's open calls "
        "as `orphaned`. A node that heart-beats sends one every "
        f"`events.heartbeat_interval` ({hb:g} s), and then only heartbeats move its clock. A batch of "
        "finished calls (`sipledger events from-cdr`) is best loaded with `sipledger replay`, or while "
        "no pipeline runs on the log: every call in it ends, so none can be orphaned once it is read.",
        "",
    ]


def _minimal_call() -> list[str]:
    setup = {**EXAMPLES["call.setup"], "source_ip": "unknown", "timer_supported": False,
             "requested_session_expires": None, "requested_min_se": None, "requested_refresher": None}
    answered = {**EXAMPLES["call.answered"], "seq": 3, "event_id": "sw1-7f3a-3", "timer_mode": "no_timer",
                "session_expires": None, "refresher": {"caller": None, "carrier": None}}
    end = {**EXAMPLES["call.terminated"], "seq": 4, "event_id": "sw1-7f3a-4",
           "ts": "2026-11-25T10:03:10.000Z", "reason": "normal_caller_bye", "initiator": "caller",
           "detail": "NORMAL_CLEARING"}
    lines = [json.dumps(e, separators=(",", ":")) for e in (setup, EXAMPLES["call.routed"], answered, end)]
    return [
        "## A minimal call",
        "",
        "A switch that knows only what its CDRs know sends, per call: `call.setup`, `call.routed` when it "
        "knows the carrier (the buy side is rated on `vendor`), `call.answered` if it was answered, and "
        "`call.terminated`. Without RFC 4028 refreshes or probes nothing proves the call alive after the "
        "answer, so it is `no_timer`, and the pipeline applies `timers.no_timer_max_duration` to it. "
        "A party's BYE (`normal_caller_bye`, `normal_callee_bye`) proves it alive to its end; any other "
        "end of an answered call leaves its time after the last proof as exposure. As JSON lines:",
        "",
        "```json",
        *lines,
        "```",
        "",
    ]


def _tools() -> list[str]:
    return [
        "## Tools",
        "",
        "| command | what it does |",
        "| --- | --- |",
        "| `sipledger events validate FILE` | checks a file of JSON lines against the schemas and the rules "
        "below; prints `line N: field F: reason` for every problem, exit 1 |",
        "| `sipledger events send FILE --to kafka://host:port\\|file:///path` | validates, then publishes "
        "as the B2BUA does (keyed by call id, node events to every partition, acks=all) |",
        "| `sipledger events from-cdr --format asterisk\\|freeswitch FILE` | turns an Asterisk `Master.csv` "
        "or a FreeSWITCH `mod_cdr_csv` file into events (README: *Streaming another switch's events*) |",
        "| `sipledger events doc` | writes this page from `schemas/` |",
        "",
    ]


def _end_reasons() -> list[str]:
    reasons = _schema("common.json")["$defs"]["end_reason"]["enum"]
    out = ["### End reasons", "", "`call.terminated.reason`. A *zombie* reason means nothing proved the "
           "call alive to its end (a limit cut it, a refresh or probe failed, its node was lost).", "",
           "| reason | VOS3000 counterpart | zombie |", "| --- | --- | --- |"]
    for r in reasons:
        zombie = "yes" if r in ZOMBIE_REASONS else ""
        out.append(f"| `{r}` | {_cell(VOS3000_EQUIVALENT.get(r, ''))} | {zombie} |")
    return [*out, ""]


def render() -> str:
    """The whole page (deterministic: the same schemas give the same bytes)."""
    d = _defaults()
    common = _schema("common.json")
    env = common["$defs"]["envelope_fields"]
    out = [
        "# The event contract: streaming your switch's events into sipledger",
        "",
        GENERATED_BY,
        "",
        "sipledger bills from events, not from CDRs: a call's CDR, its verified time and its runaway "
        "exposure are folded from the facts its node published. Any switch can publish them: each event "
        "is one JSON object, a Kafka record on the events topic or a line of the journal file the "
        "embedded pipeline follows. The pipeline refuses an event that breaks its schema (it goes to "
        "the dead-letter topic with the failing field named) and relies on the rules between events "
        "below.",
        "",
        *_tools(),
        "## Envelope",
        "",
        "Every event has these fields; `type` names its schema (`schemas/events/<type>.json`).",
        "",
        *_table(field_rows(env, "envelope")),
        "",
        *_rules(d),
        *_minimal_call(),
        "## Event types",
        "",
        "| type | what it says | fields beyond the envelope (required in bold) |",
        "| --- | --- | --- |",
    ]
    for etype in EVENT_TYPES:
        schema = _schema(f"events/{etype}.json")
        req = set(schema["required"])
        names = [f"**{n}**" if n in req else n for n in schema["properties"] if n not in ENVELOPE]
        out.append(f"| [`{etype}`](#{etype.replace('.', '')}) | {_cell(schema['title'])} | "
                   f"{', '.join(names)} |")
    out.append("")
    for etype in EVENT_TYPES:
        schema = _schema(f"events/{etype}.json")
        out += [f"### {etype}", "", f"{schema['title']}.", ""]
        purpose = _purpose(schema)
        if purpose:
            out += [purpose, ""]
        # Envelope fields are in the envelope table, but those a type constrains further (node events'
        # call_id, node.lost's schema_version) are listed with the type.
        plain = tuple(n for n in ENVELOPE if "$ref" in schema["properties"].get(n, {}) or n == "type")
        out += _table(field_rows(schema, etype, skip=plain))
        out += ["", "Example:", "", *_json_block(EXAMPLES[etype]), ""]
    out += ["## Shared definitions", "", *_end_reasons(), "### Dialog leg", "",
            common["$defs"]["dialog_leg"]["description"] + ".", "",
            *_table(field_rows(common["$defs"]["dialog_leg"], "dialog_leg")), ""]
    out += _signalling()
    return "\n".join(out).rstrip("\n") + "\n"


# A record as the B2BUA published it in tests/test_trace_wire.py, cut to three entries (one each kind).
SIGNALLING_EXAMPLE: Final[dict[str, Any]] = {
    "schema_version": 1, "call_id": "e36991cc-817a-419a-9434-8d50da6ff77d", "node": "wire-node",
    "account": "acme", "selected_by": "account", "local": "127.0.0.1:46018",
    "start": "2026-12-05T00:39:09.135Z", "end": "2026-12-05T00:39:09.447Z",
    "end_reason": "normal_caller_bye", "failed": False, "dropped_entries": 0,
    "entries": [
        {"n": 1, "ts": "2026-12-05T00:39:09.135Z", "kind": "sip", "leg": "caller", "direction": "in",
         "transport": "udp", "remote": "127.0.0.1:41479", "sip_call_id": "1-703@127.0.0.1",
         "first_line": "INVITE sip:15551230000@127.0.0.1:46018 SIP/2.0",
         "headers": "Via: SIP/2.0/UDP 127.0.0.1:41479;branch=z9hG4bK-703-1-0\r\nFrom: \"1000\" "
                    "<sip:1000@127.0.0.1:41479>;tag=703SIPpTag001\r\nTo: <sip:15551230000@127.0.0.1:46018>"
                    "\r\nCall-ID: 1-703@127.0.0.1\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp"
                    "\r\nContent-Length: 192",
         "body": None, "body_bytes": 192},
        {"n": 3, "ts": "2026-12-05T00:39:09.135Z", "kind": "memo", "leg": None,
         "text": "route: prefix '1555' for 15551230000, gateways gw1 (account acme)"},
        {"n": 5, "ts": "2026-12-05T00:39:09.135Z", "kind": "sip", "leg": "carrier", "direction": "out",
         "transport": "udp", "remote": "127.0.0.1:50434", "sip_call_id": "0e0036c0ad167cf1f6609050@127.0.0.1",
         "first_line": "INVITE sip:15551230000@127.0.0.1:50434 SIP/2.0",
         "headers": "Via: SIP/2.0/UDP 127.0.0.1:46018;branch=z9hG4bK4b1c\r\nCall-ID: "
                    "0e0036c0ad167cf1f6609050@127.0.0.1\r\nCSeq: 1 INVITE\r\nContent-Length: 192",
         "body": None, "body_bytes": 192},
    ],
}


def _signalling() -> list[str]:
    """The call signalling record (schemas/call_signalling.json): not an event, but a contract too."""
    schema = _schema("call_signalling.json")
    defs = schema["$defs"]
    rows: list[tuple[str, str, bool, str]] = []
    for name, prop in schema["properties"].items():
        if name == "entries":  # its items are this file's own $defs, described below
            rows.append((name, f"array of `sip` or `memo` entries (at most {prop['maxItems']})",
                         name in schema["required"], prop.get("description", "")))
        else:
            rows += field_rows({"properties": {name: prop}, "required": schema["required"]},
                               "call_signalling")
    out = ["## Call signalling records", "", f"{schema['title']} (`schemas/call_signalling.json`).", "",
           _purpose(schema), "", *_table(rows), ""]
    for kind in ("sip", "memo"):
        out += [f"### Entry `{kind}`", "", defs[kind].get("description", "") + ".", "",
                *_table(field_rows(defs[kind], f"call_signalling.{kind}")), ""]
    return [*out, "Example (three of its entries):", "", *_json_block(SIGNALLING_EXAMPLE), ""]


def example_stream() -> list[dict[str, Any]]:
    """The examples in stream order (call events by seq, then node events): one valid file."""
    others = ("node:", "gateway:", "account:")
    calls = sorted((e for e in EXAMPLES.values() if not e["call_id"].startswith(others)),
                   key=lambda e: e["seq"])
    nodes = [e for e in EXAMPLES.values() if e["call_id"].startswith(others)]
    return calls + nodes


def check_examples() -> None:
    """ContractError naming the field if an example breaks its schema; a type without one is a KeyError."""
    for etype in EVENT_TYPES:
        validate_event(EXAMPLES[etype])
    validate_signalling(SIGNALLING_EXAMPLE)
