"""sipledger configuration: one TOML file, ``--set section.key=value`` overrides, VOS3000 names.

Every key is declared once, on a frozen dataclass field, with its documentation and,
where one exists, the VOS3000 parameter it corresponds to. The loader refuses unknown
keys and bad values at start-up and names the key, so a typo never silently falls back
to a default in production.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, get_type_hints


class ConfigError(ValueError):
    """A configuration problem; ``key`` is the dotted name of the offending key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config key {key!r}: {message}")
        self.key = key


def opt(default: Any, doc: str, *, vos3000: str | None = None, lo: float | None = None,
        hi: float | None = None, choices: Iterable[Any] | None = None, factory: bool = False) -> Any:
    meta = {"doc": doc, "vos3000": vos3000, "lo": lo, "hi": hi,
            "choices": tuple(choices) if choices is not None else None}
    if factory:
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    id: str = opt("node-1", "Identity of this B2BUA instance; events carry it and commands address it")


@dataclass(frozen=True, slots=True)
class SipConfig:
    listen_host: str = opt("127.0.0.1", "Address the B2BUA binds (UDP and TCP)")
    advertised_host: str = opt("", "Address peers reach the B2BUA at, put in Via, Contact, From and Call-ID "
                               "(behind NAT, in a container, or when listen_host is 0.0.0.0); "
                               "empty = listen_host")
    listen_port: int = opt(5060, "SIP port; 0 picks a free one (tests)", lo=0, hi=65535)
    transports: list[str] = opt(["udp", "tcp"], "Transports to listen on", factory=True,
                                choices=("udp", "tcp"))
    resend_interval_ms: int = opt(500, "RFC 3261 T1: first retransmission interval, ms",
                                  vos3000="SS_SIP_RESEND_INTERVAL", lo=10, hi=10_000)
    invite_timeout: float = opt(32.0, "Seconds a carrier has to answer an INVITE at all before failover",
                                vos3000="SS_SIP_TIMEOUT", lo=0.1)
    call_progress_timeout: float = opt(120.0, "Seconds a ringing carrier has to answer before CANCEL",
                                       lo=0.1)
    max_message_bytes: int = opt(65_535, "Largest SIP message accepted; larger ones are refused",
                                 lo=1024, hi=1_048_576)
    max_headers: int = opt(128, "Most header fields accepted in one message", lo=16, hi=4096)
    refresh_method: str = opt("update", "How the B2BUA refreshes sessions it is refresher for "
                              "(UPDATE falls back to re-INVITE when the peer does not allow it)",
                              choices=("update", "invite"))
    udp_buffer_bytes: int = opt(4_194_304, "SO_RCVBUF/SO_SNDBUF of the UDP socket, bytes", lo=65_536)
    udp_read_interval_ms: float = opt(0.0, "Read the UDP socket at most this often, every datagram "
                                      "waiting at once (fewer wake-ups), at the price of up to this delay on "
                                      "each message received; 0 reads each as it comes. At 2 ms: 0.91-1.00x "
                                      "the CPU a call at 300/s (bench/README.md)", lo=0, hi=50)
    tcp_max_connections: int = opt(1024, "Most inbound TCP connections at once (lowered at start to stay "
                                   "64 below the open-file limit); when full, a connection that has not "
                                   "sent a whole message yet is closed for a newcomer", lo=1)
    tcp_max_connections_per_source: int = opt(32, "Most inbound TCP connections from one address", lo=1)
    tcp_message_timeout: float = opt(10.0, "Seconds a TCP peer has to complete a message after its first "
                                     "byte, and a new connection to send its first message", lo=0.1)
    tcp_idle_timeout: float = opt(1800.0, "Seconds a TCP connection may stay without any byte before it is "
                                  "closed (CRLF keep-alives count)", lo=1)


@dataclass(frozen=True, slots=True)
class TimersConfig:
    session_ttl: int = opt(600, "Session-Expires offered and accepted on timer calls, s",
                           vos3000="SS_SIP_SESSION_TTL", lo=1)
    session_update_segment: int = opt(2, "The refresher refreshes every session_expires / this",
                                      vos3000="SS_SIP_SESSION_UPDATE_SEGMENT", lo=1, hi=10)
    min_se: int = opt(90, "Smallest Session-Expires accepted (RFC 4028 floor 90; lower only in labs), s",
                      lo=1)
    session_timeout_early_hangup: int = opt(0, "Seconds before session expiry at which timer calls "
                                            "are hung up", vos3000="SS_SIP_SESSION_TIMEOUT_EARLY_HANGUP",
                                            lo=0)
    no_timer_max_duration: int = opt(7200, "Hard cap for callers without RFC 4028 timers, s (0 = off)",
                                     vos3000="SS_SIP_NO_TIMER_REINVITE_INTERVAL", lo=0)
    max_call_duration: int = opt(0, "Hard cap for every call, s (0 = off)",
                                 vos3000="SS_MAX_CALL_DURATION", lo=0)
    liveness_probe_interval: int = opt(0, "In-dialog OPTIONS to legs without timers every N s (0 = off)",
                                       lo=0)


@dataclass(frozen=True, slots=True)
class AdmissionConfig:
    realm: str = opt("sipledger", "Digest realm of 401/407 challenges")
    digest_algorithms: list[str] = opt(["MD5", "SHA-256"], "Digest algorithms offered, one challenge each, "
                                       "preferred first (RFC 8760)", factory=True, choices=("MD5", "SHA-256"))
    nonce_ttl: int = opt(120, "Seconds a digest nonce is good for; older ones get stale=true", lo=5,
                         hi=3600)
    max_tracked_nonces: int = opt(10_000, "Nonces whose used nonce-counts are remembered (replay guard); "
                                  "a nonce pushed out earlier is answered stale=true", lo=100)
    auth_retry_limit: int = opt(3, "Failed digest answers per call before 403", lo=1)
    auth_lock_failures: int = opt(5, "Failed digest answers in a row, per user name and source address, "
                                  "that lock that name for that address", lo=1)
    auth_lock_seconds: int = opt(300, "How long the first lock lasts, s; each further lock of the same name "
                                 "and address within auth_failure_window doubles it", lo=0)
    auth_lock_max_seconds: int = opt(3600, "Longest lock after doubling, s", lo=0)
    auth_failure_window: int = opt(900, "Seconds a (user name, source) failure record is kept after its "
                                   "last failure or lock", lo=1)
    auth_max_records: int = opt(10_000, "Most (user name, source) failure records kept; the least recently "
                                "used goes first", lo=100)
    refusal_max_sources: int = opt(4096, "Most source addresses whose refused requests are counted one by "
                                   "one (the rest are counted together)", lo=16)
    refusal_log_interval: float = opt(60.0, "Seconds between summary log lines of refused requests from "
                                      "unadmitted sources", lo=1)
    max_concurrent_calls: int = opt(0, "System-wide concurrent call limit (0 = off)",
                                    vos3000="SS_MAX_CONCURRENT_CALLS", lo=0)


@dataclass(frozen=True, slots=True)
class EventsConfig:
    log: str = opt("file://.sipledger/events.jsonl",
                   "Where events go: file:///path (embedded JSON-lines journal) or kafka://host:port")
    spool_dir: str = opt(".sipledger/spool", "Local spool for events while Kafka is unreachable")
    heartbeat_interval: float = opt(1.0, "Seconds between node.heartbeat events; the pipeline judges a "
                                    "node's deadlines on its heartbeats, so this bounds how late its second "
                                    "line acts after grace", lo=0.1)


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    bootstrap: str = opt("127.0.0.1:9092", "Kafka bootstrap servers (host:port[,host:port]); "
                         "taken from events.log when that is kafka://host:port")
    partitions: int = opt(4, "Partitions of the project's topics (calls are keyed by call id)", lo=1)
    topic_events: str = opt("call-events", "Topic of call events")
    topic_commands: str = opt("call-commands", "Topic of commands to B2BUA nodes")
    topic_alerts: str = opt("zombie-alerts", "Topic of zombie alerts")
    topic_cdrs: str = opt("cdrs", "Topic of CDRs")
    topic_dead_letter: str = opt("dead-letter", "Topic of refused messages, with the reason")
    topic_signalling: str = opt("call-signalling", "Topic of call signalling records (`sipledger trace`)")
    topic_balances: str = opt("account-balances", "Compacted topic of prepaid account balances (pipeline -> "
                              "B2BUA nodes), one partition")


@dataclass(frozen=True, slots=True)
class StoreConfig:
    url: str = opt("chdb://.sipledger/store",
                   "CDR store: chdb:///path (embedded) or clickhouse://user:pass@host:9000/db")


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    grace_period: float = opt(5.0, "Seconds past a deadline before the pipeline enforces it itself", lo=0)
    node_timeout: float = opt(30.0, "Seconds without node.heartbeat (counted only while the pipeline is "
                              "caught up with the log) before a node is probed; if it does not answer, its "
                              "calls are orphaned", lo=1)
    unknown_call_timeout: float = opt(60.0, "Seconds an event may wait for its call.setup", lo=1)
    max_event_lead: float = opt(10.0, "An event dated more than this many seconds ahead of its node's clock "
                                "moves the clock only once a second event confirms it", lo=1)
    closed_call_retention: float = opt(86_400.0, "Seconds (of log time) a closed call is remembered, so "
                                       "a late redelivered event of it changes nothing", lo=60)
    probe_attempts: int = opt(3, "SIP OPTIONS sent to a silent node before it is called lost", lo=1, hi=20)
    probe_timeout: float = opt(1.0, "Seconds to wait for the answer to each node probe", lo=0.05)
    takeover: bool = opt(True, "A lost node's answered calls are ended on both legs by a surviving node "
                         "(call.takeover); needs more than one node, every node reachable by the carriers")
    takeover_timeout: float = opt(45.0, "Seconds (on the taking-over node's clock) its report may take "
                                  "before the call is closed with its exposure open", lo=1)
    sell_rates: str = opt("", "Rate deck CSV of the sell side (accounts); empty = unrated")
    buy_rates: str = opt("", "Rate deck CSV of the buy side (vendors); empty = unrated")
    webhook_url: str = opt("", "HTTP endpoint that receives each zombie alert as JSON (empty = off)")
    max_pending_rows: int = opt(1_000_000, "Rows held for a store that is slow or down before reading "
                                "pauses; until then reading, folding, commands and alerts go on", lo=1000)
    batch_size: int = opt(50_000, "Most rows per ClickHouse insert (each insert writes a part: fewer, "
                          "larger ones are cheaper)", lo=1)
    # Kafka mode (faust workers). The session timeout's default is the lowest a broker accepts by
    # default (group.min.session.timeout.ms = 6000): it is the time a dead worker's partitions sit idle.
    session_timeout: float = opt(6.0, "Kafka mode: seconds a worker may stay silent before the group "
                                 "hands its partitions to the others (a dead worker's failover time); "
                                 "at least the broker's group.min.session.timeout.ms", lo=1)
    heartbeat_interval: float = opt(1.0, "Kafka mode: seconds between a worker's group heartbeats, "
                                    "below a third of session_timeout (how soon the others notice "
                                    "a rebalance)", lo=0.1)
    rebalance_timeout: float = opt(15.0, "Kafka mode: seconds the group waits for every worker to rejoin "
                                   "a rebalance; a worker gives its batches in flight at most half of "
                                   "it before handing its partitions over", lo=1)
    shutdown_grace: float = opt(3.0, "Kafka mode: seconds a worker stopped by SIGTERM/SIGINT waits for "
                                "the batches in flight before it exits (what is not delivered by then "
                                "is re-read by the next owner)", lo=0)
    restore_stall_timeout: float = opt(10.0, "Kafka mode: seconds a partition's state restore from the "
                                       "changelog may go without receiving a record before the "
                                       "attempt is abandoned", lo=0.5)
    restore_attempts: int = opt(3, "Kafka mode: restore attempts of a partition before the worker "
                                "exits with an error (for its supervisor to restart it)", lo=1)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen_host: str = opt("127.0.0.1", "Address the Prometheus endpoints (/metrics) bind; 0.0.0.0 for a "
                           "Prometheus on another host or container")
    b2bua_port: int = opt(0, "Port of the B2BUA's Prometheus endpoint (0 = off)", lo=0, hi=65535)
    pipeline_port: int = opt(0, "Port of the pipeline's Prometheus endpoint, embedded runner or faust "
                             "worker (0 = off; one port per process on a host)", lo=0, hi=65535)


@dataclass(frozen=True, slots=True)
class TraceConfig:
    """Call analysis (VOS3000 "Call Analysis"): which calls' signalling the B2BUA records, and its bounds."""

    sample_rate: float = opt(0.0, "Share of calls (0 to 1) whose signalling is recorded and published; "
                             "accounts with trace = true are always recorded", lo=0.0, hi=1.0)
    failed_calls: bool = opt(False, "Record every call, but publish only those that failed or ended "
                             "abnormally (any end but a party's BYE or the caller's CANCEL, or a carrier "
                             "attempt failed over)")
    bodies: bool = opt(False, "Keep message bodies (SDP) in the records; off: first lines and headers only")
    max_messages: int = opt(200, "Entries (messages and memos) kept per call; beyond, the first and the "
                            "last ones are kept and the count of those between is recorded", lo=10)
    max_call_bytes: int = opt(262_144, "Bytes of signalling kept per call, the same way", lo=4096)
    max_buffered_bytes: int = opt(67_108_864, "Bytes a node buffers for calls still up; beyond, the oldest "
                                  "calls' traces are dropped (counted), never a call delayed", lo=65_536)
    linger: float = opt(2.0, "Seconds a record waits after its call ended for the last answers (the 200 "
                        "to a BYE, an ACK) before it is published", lo=0.0, hi=60.0)
    spool_max_bytes: int = opt(268_435_456, "Kafka mode: bytes of records a node spools while the broker "
                               "is away; beyond, new records are dropped (counted), events never", lo=65_536)
    retention_days: int = opt(7, "Days of records the store keeps (table call_signalling, one partition "
                              "a day; older ones are dropped by the pipeline)", lo=1)


@dataclass(frozen=True, slots=True)
class StackConfig:
    dir: str = opt(".stack", "Folder (ignored by git) for the local services' data, logs and jars")
    kafka_port: int = opt(0, "Kafka broker port on 127.0.0.1 (0 = pick a free one)", lo=0, hi=65535)
    clickhouse_port: int = opt(0, "ClickHouse native port on 127.0.0.1 (0 = pick a free one)",
                               lo=0, hi=65535)


@dataclass(frozen=True, slots=True)
class Account:
    name: str = opt("", "Account (customer) name; appears in CDRs")
    ips: list[str] = opt([], "Source IPs admitted for this account without a password", factory=True)
    username: str = opt("", "Digest user name (empty: IP admission only)")
    password: str = opt("", "Digest password")
    max_concurrent_calls: int = opt(0, "Concurrent calls allowed (0 = no limit)", lo=0)
    bill_mode: str = opt("full", "Bill the full duration or only the verified part",
                         choices=("full", "verified"))
    trace: bool = opt(False, "Record the signalling of every call of this account (`sipledger trace`)")
    prepaid: bool = opt(False, "Prepaid: calls are limited to what the balance pays for at the sell rate "
                        "(top-ups: sipledger balance add) and refused below min_balance")
    min_balance: Decimal = opt(Decimal(0), "Prepaid: the least available balance a call may start with, in "
                               "the account's rate currency (VOS3000's Minimum Balance)", lo=0)


@dataclass(frozen=True, slots=True)
class Gateway:
    name: str = opt("", "Gateway name")
    vendor: str = opt("", "Vendor billed for calls through it (defaults to the name)")
    host: str = opt("127.0.0.1", "Gateway address")
    port: int = opt(5060, "Gateway SIP port", lo=1, hi=65535)
    transport: str = opt("udp", "Transport to the gateway", choices=("udp", "tcp"))
    # Gateway health (b2bua/gateway_health.py): SIP OPTIONS from the B2BUA's own socket, over the
    # gateway's transport; a gateway that stops answering leaves routing until it answers again.
    probe: bool = opt(True, "Probe the gateway with SIP OPTIONS and route around it while it is down "
                      "(false: never probed, always routed to)")
    probe_interval: float = opt(10.0, "Seconds between OPTIONS probes of the gateway", lo=0.05)
    probe_timeout: float = opt(2.0, "Seconds a probe waits for its final answer (at most probe_interval)",
                               lo=0.01)
    down_after: int = opt(3, "Consecutive probes (or INVITEs) without an answer before the gateway is "
                          "down", lo=1, hi=100)
    up_after: int = opt(2, "Consecutive answers a down gateway must give before it is up again", lo=1,
                        hi=100)
    probe_reply_codes: list[str] = opt([], "Answers to a probe that mean alive: codes (\"200\") or classes "
                                       "(\"2xx\"); empty = any final answer but 408 (Kamailio's "
                                       "ds_ping_reply_codes; its default is 200 only)", factory=True)


@dataclass(frozen=True, slots=True)
class Route:
    prefix: str = opt("", "Callee prefix (longest match wins; empty matches all)")
    gateways: list[str] = opt([], "Gateway names, tried in order on 5xx/408/timeout", factory=True)


@dataclass(frozen=True, slots=True)
class Config:
    node: NodeConfig = field(default_factory=NodeConfig)
    sip: SipConfig = field(default_factory=SipConfig)
    timers: TimersConfig = field(default_factory=TimersConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    trace: TraceConfig = field(default_factory=TraceConfig)
    stack: StackConfig = field(default_factory=StackConfig)
    accounts: list[Account] = field(default_factory=list)
    gateways: list[Gateway] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    base_dir: Path = field(default=Path("."), compare=False)

    def path(self, value: str) -> Path:
        """Resolve a path-valued key relative to the config file's folder."""
        p = Path(value)
        return p if p.is_absolute() else (self.base_dir / p)

    def gateway(self, name: str) -> Gateway:
        for gw in self.gateways:
            if gw.name == name:
                return gw
        raise KeyError(name)

    def account(self, name: str) -> Account:
        for acc in self.accounts:
            if acc.name == name:
                return acc
        raise KeyError(name)


SECTIONS: dict[str, type] = {
    "node": NodeConfig, "sip": SipConfig, "timers": TimersConfig, "admission": AdmissionConfig,
    "events": EventsConfig, "kafka": KafkaConfig, "store": StoreConfig, "pipeline": PipelineConfig,
    "metrics": MetricsConfig, "stack": StackConfig, "trace": TraceConfig,
}
TABLE_ARRAYS: dict[str, type] = {"accounts": Account, "gateways": Gateway, "routes": Route}


def vos3000_names() -> dict[str, str]:
    """VOS3000 parameter name -> sipledger dotted key."""
    out = {}
    for sname, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            if f.metadata.get("vos3000"):
                out[f.metadata["vos3000"]] = f"{sname}.{f.name}"
    return out


def _coerce(key: str, f: dataclasses.Field, hint: Any, value: Any) -> Any:
    meta = f.metadata
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"expected a number, got {value!r}")
        value = float(value)
    elif hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
    elif hint is Decimal:
        # Money: "1.50" (exact) or a TOML number; a float is read through its shortest text, so 0.1 is 0.1.
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ConfigError(key, f"expected an amount, got {value!r}")
        try:
            value = Decimal(str(value).strip())
        except InvalidOperation:
            raise ConfigError(key, f"expected an amount, got {value!r}") from None
        if not value.is_finite():
            raise ConfigError(key, f"expected an amount, got {value!r}")
    elif hint == list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, f"expected a list of strings, got {value!r}")
        value = list(value)
    choices = meta.get("choices")
    if choices:
        items = value if isinstance(value, list) else [value]
        bad = [v for v in items if v not in choices]
        if bad:
            raise ConfigError(key, f"{bad[0]!r} is not one of {', '.join(map(str, choices))}")
    if meta.get("lo") is not None and value < meta["lo"]:
        raise ConfigError(key, f"{value!r} is below the minimum {meta['lo']}")
    if meta.get("hi") is not None and value > meta["hi"]:
        raise ConfigError(key, f"{value!r} is above the maximum {meta['hi']}")
    return value


def _build(cls: type, prefix: str, table: Any) -> Any:
    if not isinstance(table, Mapping):
        raise ConfigError(prefix, f"expected a table, got {table!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in table.items():
        key = f"{prefix}.{k}"
        if k not in fields:
            raise ConfigError(key, f"unknown key (known in [{prefix.split('[')[0]}]: {', '.join(fields)})")
        kwargs[k] = _coerce(key, fields[k], hints[k], v)
    return cls(**kwargs)


def _merge_vos3000(raw: dict[str, Any]) -> None:
    table = raw.pop("vos3000", None)
    if table is None:
        return
    if not isinstance(table, Mapping):
        raise ConfigError("vos3000", "expected a table of VOS3000 parameter names")
    names = vos3000_names()
    for vname, value in table.items():
        if vname not in names:
            raise ConfigError(f"vos3000.{vname}", f"unknown VOS3000 parameter (known: {', '.join(names)})")
        section, key = names[vname].split(".")
        # VOS3000 exports write numbers as text; accept "600" as 600.
        if isinstance(value, str):
            try:
                value = int(value) if value.strip().lstrip("-").isdigit() else float(value)
            except ValueError:
                raise ConfigError(f"vos3000.{vname}", f"expected a number, got {value!r}") from None
        sect = raw.setdefault(section, {})
        if key in sect and sect[key] != value:
            raise ConfigError(f"vos3000.{vname}",
                              f"conflicts with {section}.{key} = {sect[key]!r}; set only one of them")
        sect[key] = value


def parse_override(item: str) -> tuple[list[str], Any]:
    """``section.key=value`` -> (path, value); the value is read as TOML, else as a plain string."""
    if "=" not in item:
        raise ConfigError(item, "an override must look like section.key=value")
    key, _, text = item.partition("=")
    path = key.strip().split(".")
    if len(path) != 2 or not all(path):
        raise ConfigError(key, "an override names section.key")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return path, value


def from_dict(raw: Mapping[str, Any], base_dir: Path = Path(".")) -> Config:
    raw = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()}
    _merge_vos3000(raw)
    _one_broker_address(raw)
    kwargs: dict[str, Any] = {"base_dir": base_dir}
    for name, value in raw.items():
        if name in SECTIONS:
            kwargs[name] = _build(SECTIONS[name], name, value)
        elif name in TABLE_ARRAYS:
            if not isinstance(value, list):
                raise ConfigError(name, "expected an array of tables ([[" + name + "]])")
            kwargs[name] = [_build(TABLE_ARRAYS[name], f"{name}[{i}]", v) for i, v in enumerate(value)]
        else:
            known = [*SECTIONS, *TABLE_ARRAYS, "vos3000"]
            raise ConfigError(name, f"unknown section (known: {', '.join(known)})")
    cfg = Config(**kwargs)
    _check_references(cfg)
    return cfg


def _one_broker_address(raw: dict[str, Any]) -> None:
    """The broker is named once: ``events.log = "kafka://host:port"`` also sets ``kafka.bootstrap``
    (used by the workers, ``calls``, ``alerts``, ``replay``); naming two different brokers is an error."""
    log = raw.get("events", {}).get("log") if isinstance(raw.get("events"), dict) else None
    if not isinstance(log, str) or not log.startswith("kafka://"):
        return
    hosts = log[len("kafka://"):].strip("/")
    if not hosts:
        return
    kafka = raw.setdefault("kafka", {})
    if not isinstance(kafka, dict):
        return
    given = kafka.get("bootstrap")
    if given is None:
        kafka["bootstrap"] = hosts
    elif str(given).replace(" ", "") != hosts.replace(" ", ""):
        raise ConfigError("kafka.bootstrap", f"{given!r} names another broker than events.log {log!r}: "
                          "set one of them (events.log is enough)")


def _check_references(cfg: Config) -> None:
    p = cfg.pipeline
    if p.heartbeat_interval >= p.session_timeout:
        raise ConfigError("pipeline.heartbeat_interval", f"{p.heartbeat_interval} must be below "
                          f"pipeline.session_timeout ({p.session_timeout})")
    names = [g.name for g in cfg.gateways]
    for i, gw in enumerate(cfg.gateways):
        if not gw.name:
            raise ConfigError(f"gateways[{i}].name", "every gateway needs a name")
    if len(set(names)) != len(names):
        raise ConfigError("gateways", "gateway names must be unique")
    for i, gw in enumerate(cfg.gateways):
        _check_probe(f"gateways[{i}]", gw)
    for i, route in enumerate(cfg.routes):
        for gname in route.gateways:
            if gname not in names:
                raise ConfigError(f"routes[{i}].gateways", f"no gateway named {gname!r}")
    if cfg.trace.max_call_bytes > cfg.trace.max_buffered_bytes:
        raise ConfigError("trace.max_call_bytes", f"{cfg.trace.max_call_bytes} is above "
                          f"trace.max_buffered_bytes ({cfg.trace.max_buffered_bytes})")
    accounts = [a.name for a in cfg.accounts]
    for i, acc in enumerate(cfg.accounts):
        if not acc.name:
            raise ConfigError(f"accounts[{i}].name", "every account needs a name")
        if acc.username and not acc.password:
            raise ConfigError(f"accounts[{i}].password", "a digest user needs a password")
        if acc.prepaid and not cfg.pipeline.sell_rates:
            raise ConfigError(f"accounts[{i}].prepaid", "a prepaid account's calls are priced on the sell "
                              "rates: set pipeline.sell_rates")
    if len(set(accounts)) != len(accounts):
        raise ConfigError("accounts", "account names must be unique")


def _check_probe(prefix: str, gw: Gateway) -> None:
    if gw.probe_timeout > gw.probe_interval:
        raise ConfigError(f"{prefix}.probe_timeout", f"{gw.probe_timeout} must not exceed "
                          f"{prefix}.probe_interval ({gw.probe_interval}): one probe at a time")
    for spec in gw.probe_reply_codes:
        code = spec.lower()
        if not (len(code) == 3 and code[0] in "23456" and (code[1:] == "xx" or code[1:].isdigit())):
            raise ConfigError(f"{prefix}.probe_reply_codes", f"{spec!r} is neither a final SIP status "
                              "(\"200\") nor a class (\"2xx\")")


def load(path: str | Path | None = None, overrides: Iterable[str] = (),
         extra: Callable[[dict[str, Any]], None] | None = None) -> Config:
    """Read ``path`` (or defaults when None), apply ``section.key=value`` overrides, validate."""
    raw: dict[str, Any] = {}
    base = Path(".")
    if path is not None:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(str(p), "config file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(p), f"not valid TOML: {exc}") from None
        base = p.resolve().parent
    for item in overrides:
        (section, key), value = parse_override(item)
        if section in TABLE_ARRAYS:
            raise ConfigError(f"{section}.{key}", "arrays of tables cannot be overridden with --set")
        tbl = raw.setdefault(section, {})
        if not isinstance(tbl, dict):
            raise ConfigError(section, "expected a table")
        tbl[key] = value
    if extra is not None:
        extra(raw)
    return from_dict(raw, base)


def describe() -> list[tuple[str, str, Any, str | None]]:
    """(dotted key, doc, default, VOS3000 name) of every key, for docs and `sipledger config keys`."""
    rows = []
    for sname, cls in {**SECTIONS, **TABLE_ARRAYS}.items():
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((f"{sname}.{f.name}", f.metadata["doc"], default, f.metadata.get("vos3000")))
    return rows
