"""The B2BUA's Prometheus metrics (``metrics.b2bua_port``): read from the core when scraped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import Metric

from b2bua.core import B2BUACore
from sipledger.metrics import counter, gauge, histogram

Families = Callable[[], Iterator[Metric]]

# Every family ``families`` yields (counters get ``_total`` on the wire, the histogram ``_bucket``,
# ``_sum`` and ``_count``): what dashboards may name (tests/test_dashboard.py).
NAMES = ("sipledger_b2bua_active_calls", "sipledger_b2bua_calls", "sipledger_b2bua_setup_latency_seconds",
         "sipledger_b2bua_refreshes", "sipledger_b2bua_byes_sent", "sipledger_b2bua_refused_requests",
         "sipledger_b2bua_takeovers", "sipledger_b2bua_commands_applied", "sipledger_b2bua_spool_bytes",
         "sipledger_b2bua_info", "sipledger_b2bua_gateway_up", "sipledger_b2bua_gateway_probe_rtt_seconds",
         "sipledger_b2bua_gateway_probes", "sipledger_b2bua_gateway_skips",
         "sipledger_b2bua_prepaid_available", "sipledger_b2bua_prepaid_ready",
         # call analysis (b2bua/signalling_trace.py): what was recorded, and what the bounds dropped
         "sipledger_b2bua_traces", "sipledger_b2bua_trace_buffered_bytes")


def families(core: Callable[[], B2BUACore | None], publisher: Any, node: str,
             signalling: Any = None) -> Families:
    """The families of one node; ``core`` returns the running core (None before start); ``signalling``
    is the call signalling records' publisher (None when recording is off)."""

    def collect() -> Iterator[Metric]:
        c = core()
        if c is None:
            return
        m = c.metrics
        yield gauge("sipledger_b2bua_active_calls", "Calls this node holds now", c.active_calls)
        yield counter("sipledger_b2bua_calls", "Call attempts ended, by result (end reason)",
                      labels=["result"], samples=(((r,), n) for r, n in sorted(m.ended.items())))
        yield histogram("sipledger_b2bua_setup_latency_seconds",
                        "INVITE received to 200 OK relayed to the caller", m.setup_latency.cumulative(),
                        m.setup_latency.total)
        yield counter("sipledger_b2bua_refreshes", "Session refreshes by leg and outcome (ok or the cause)",
                      labels=["leg", "outcome"],
                      samples=(((leg, o), n) for (leg, o), n in sorted(m.refreshes.items())))
        yield counter("sipledger_b2bua_byes_sent", "BYEs this node sent, by the end reason they enforced",
                      labels=["reason"], samples=(((r,), n) for r, n in sorted(m.byes_sent.items())))
        yield counter("sipledger_b2bua_refused_requests", "Requests of no account refused, by cause",
                      labels=["cause"],
                      samples=(((cause,), n) for cause, n in sorted(c.refusals.by_cause.items())))
        yield counter("sipledger_b2bua_takeovers", "Calls of lost nodes this node ended",
                      c.stats["takeovers"])
        yield counter("sipledger_b2bua_commands_applied", "Pipeline commands obeyed",
                      c.stats["commands_applied"])
        spool = getattr(publisher, "spool", None)
        # Bytes, from the segment files' sizes: counting records would read the whole spool per scrape
        # during the broker outage it is there for.
        yield gauge("sipledger_b2bua_spool_bytes", "Bytes of events waiting in the disk spool for the "
                    "broker (0: everything delivered, or no Kafka)",
                    spool.pending_bytes() if spool is not None else 0)
        yield gauge("sipledger_b2bua_info", "This node", labels=["node"], samples=[((node,), 1)])
        # Probed gateways only (probe = false: never judged, always routed to). The set is fixed at start.
        gws = sorted(c.gateway_table.health.values(), key=lambda h: h.name)
        yield gauge("sipledger_b2bua_gateway_up", "1 while calls are routed to the gateway (up, or not "
                    "judged yet since the start), 0 while it is down", labels=["gateway"],
                    samples=[((h.name,), 0 if h.state == "down" else 1) for h in gws])
        yield gauge("sipledger_b2bua_gateway_probe_rtt_seconds", "Round trip of the gateway's last answered "
                    "OPTIONS probe", labels=["gateway"],
                    samples=[((h.name,), h.last_rtt_ms / 1000) for h in gws if h.last_rtt_ms is not None])
        yield counter("sipledger_b2bua_gateway_probes", "OPTIONS probes of the gateway, by outcome "
                      "(answered; lost: no answer in time, or a status that does not count as alive)",
                      labels=["gateway", "outcome"],
                      samples=[s for h in gws for s in (((h.name, "answered"), h.probes_answered),
                                                        ((h.name, "lost"), h.probes_lost))])
        yield counter("sipledger_b2bua_gateway_skips", "Call attempts routed around the gateway while it "
                      "was down", labels=["gateway"], samples=[((h.name,), h.skipped) for h in gws])
        # Prepaid accounts (config, so a fixed set): what a new call would be priced on, for a low-balance
        # alert (VOS3000's Balance Alarm); refusals and credit-limit BYEs are in _calls and _byes_sent.
        credit = c.credit
        yield gauge("sipledger_b2bua_prepaid_available", "A prepaid account's available balance as this "
                    "node sees it (the pipeline's balance less the holds of open calls), in its rate "
                    "currency",
                    labels=["account"],
                    samples=[((a,), float(credit.available(a))) for a in sorted(credit.prepaid)])
        yield gauge("sipledger_b2bua_prepaid_ready", "1 once this node has the prepaid balances (until then "
                    "prepaid calls get 503)", 1 if credit.ready else 0)
        trace = c.trace
        ts = trace.stats if trace is not None else {}
        sink_dropped = getattr(signalling, "dropped", 0)
        yield counter("sipledger_b2bua_traces", "Call signalling records (sipledger trace): calls recorded, "
                      "records published, discarded (failed_calls: the call did not fail), evicted (the "
                      "node's max_buffered_bytes) and dropped (the Kafka spool full)", labels=["outcome"],
                      samples=[*(((k,), ts.get(k, 0)) for k in ("recorded", "published", "discarded",
                                                                 "evicted")), (("dropped",), sink_dropped)])
        yield gauge("sipledger_b2bua_trace_buffered_bytes", "Bytes of signalling held for calls being "
                    "recorded", trace.buffered if trace is not None else 0)

    return collect
