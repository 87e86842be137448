"""The ``sipledger`` command."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import click

from . import config as config_mod
from .config import Config, ConfigError

DEFAULT_CONFIG = "sipledger.toml"


def _load_config(path: str | None, overrides: tuple[str, ...]) -> Config:
    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = DEFAULT_CONFIG
    try:
        return config_mod.load(path, overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def with_config(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command ``--config PATH`` and repeatable ``--set section.key=value``; pass ``cfg``."""

    @click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                  help=f"TOML configuration (default: ./{DEFAULT_CONFIG} when present)")
    @click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                  help="Override one configuration key (repeatable)")
    @functools.wraps(fn)
    def wrapper(*args: Any, config_path: str | None, overrides: tuple[str, ...], **kwargs: Any) -> Any:
        return fn(*args, cfg=_load_config(config_path, overrides), **kwargs)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sipledger")
def main() -> None:
    """sipledger: SIP B2BUA + event-sourced CDR pipeline that stops zombie calls."""


# --- stack -----------------------------------------------------------------------------------

@main.group()
def stack() -> None:
    """Local Kafka (KRaft) and ClickHouse 18.16 as plain processes on 127.0.0.1."""


def _stack_dir(cfg: Config) -> Path:
    return cfg.path(cfg.stack.dir).resolve()


def _topics(cfg: Config) -> dict[str, int]:
    k = cfg.kafka
    return {k.topic_events: k.partitions, k.topic_commands: k.partitions, k.topic_alerts: k.partitions,
            k.topic_cdrs: k.partitions, k.topic_dead_letter: 1, k.topic_signalling: k.partitions,
            k.topic_balances: 1}


def _topic_configs(cfg: Config) -> dict[str, dict[str, str]]:
    from .stack.kafka_broker import BALANCES_CONFIGS

    return {cfg.kafka.topic_balances: BALANCES_CONFIGS}


@stack.command("up")
@click.option("--only", type=click.Choice(["kafka", "clickhouse"]), default=None,
              help="Start one service only")
@with_config
def stack_up(cfg: Config, only: str | None) -> None:
    """Start the services (or report the ones already running), create topics, apply the DDL."""
    from .stack import services

    try:
        for line in services.up(_stack_dir(cfg), cfg, _topics(cfg), only=only,
                                configs=_topic_configs(cfg)):
            click.echo(line)
    except services.StackError as exc:
        raise click.ClickException(str(exc)) from None


@stack.command("down")
@with_config
def stack_down(cfg: Config) -> None:
    """Stop every service the stack started; nothing is left running."""
    from .stack import services

    for line in services.down(_stack_dir(cfg)):
        click.echo(line)


@stack.command("status")
@with_config
def stack_status(cfg: Config) -> None:
    """Show what runs, its pid, port and URL. Exit 1 when a service is down."""
    from .stack import services

    lines, all_up = services.status(_stack_dir(cfg))
    for line in lines:
        click.echo(line)
    sys.exit(0 if all_up else 1)


@stack.command("migrate")
@click.option("--store", "store_url", default=None, help="Store URL (default: store.url)")
@with_config
def stack_migrate(cfg: Config, store_url: str | None) -> None:
    """Apply the ClickHouse DDL in schemas/clickhouse/ (idempotent)."""
    from .store import StoreError, migrate, open_store

    try:
        with open_store(store_url or cfg.store.url, str(cfg.base_dir)) as store:
            applied = migrate(store)
            click.echo(f"{store.url} (ClickHouse {store.dialect.version}): applied {', '.join(applied)}")
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None


@stack.command("init")
@with_config
def stack_init(cfg: Config) -> None:
    """Create the topics on kafka.bootstrap and apply the DDL to store.url (existing services)."""
    from .stack import kafka_broker
    from .stack.process import StackError
    from .store import StoreError, migrate, open_store

    try:
        created = kafka_broker.create_topics(cfg.kafka.bootstrap, _topics(cfg), timeout=120,
                                             configs=_topic_configs(cfg))
        click.echo(f"kafka {cfg.kafka.bootstrap}: created {', '.join(created) or 'nothing (all exist)'}")
        with open_store(cfg.store.url, str(cfg.base_dir)) as store:
            migrate(store)
            click.echo(f"store {store.url}: schema applied (ClickHouse {store.dialect.version})")
    except (StackError, StoreError) as exc:
        raise click.ClickException(str(exc)) from None


@stack.command("fetch-kafka")
@with_config
def stack_fetch_kafka(cfg: Config) -> None:
    """Download Kafka's jars from Maven Central into the stack folder (cached)."""
    from .stack import kafka_broker
    from .stack.process import StackError

    try:
        libs = kafka_broker.fetch(_stack_dir(cfg))
    except StackError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"kafka jars: {libs} ({len(list(libs.glob('*.jar')))} jars)")


# --- config ----------------------------------------------------------------------------------

@main.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@click.option("--probe", is_flag=True, help="Also connect to the broker and the store and say what answered")
@with_config
def config_check(cfg: Config, probe: bool) -> None:
    """Load and validate the configuration; print the effective settings and addresses.

    With --probe, connect to Kafka (when events.log is kafka://) and to the store, and exit 1 naming
    the address that did not answer.
    """
    from .config_probe import effective_addresses, probe_addresses

    t = cfg.timers
    click.echo(f"ok: node {cfg.node.id}, {len(cfg.accounts)} accounts, {len(cfg.gateways)} gateways, "
               f"{len(cfg.routes)} routes")
    click.echo(f"timers: session_ttl={t.session_ttl}s segment={t.session_update_segment} "
               f"no_timer_max_duration={t.no_timer_max_duration}s max_call_duration={t.max_call_duration}s")
    for what, where in effective_addresses(cfg):
        click.echo(f"{what}: {where}")
    if probe:
        failed = False
        for what, ok, detail in probe_addresses(cfg):
            click.echo(f"{'ok' if ok else 'FAILED'}: {what}: {detail}")
            failed |= not ok
        if failed:
            sys.exit(1)


@config_group.command("keys")
def config_keys() -> None:
    """List every configuration key with its default and VOS3000 equivalent."""
    for key, doc, default, vos in config_mod.describe():
        vos_txt = f"  [VOS3000 {vos}]" if vos else ""
        click.echo(f"{key} = {json.dumps(default)}{vos_txt}\n    {doc}")


# --- cdrs ------------------------------------------------------------------------------------

@main.command("cdrs")
@click.option("--store", "store_url", default=None, help="Store URL (default: store.url)")
@click.option("--since", default=None, help="Only calls that ended at or after this UTC time (ISO 8601)")
@click.option("--until", default=None, help="Only calls that ended before this UTC time (ISO 8601)")
@click.option("--account", default=None, help="Only this account")
@click.option("--call-id", default=None, help="Only this call")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl")
@with_config
def cdrs(cfg: Config, store_url: str | None, since: str | None, until: str | None, account: str | None,
         call_id: str | None, fmt: str) -> None:
    """Export CDRs (one per call, duplicates folded) as JSON lines or CSV."""
    from .store import StoreError
    from .store.cdr_export import export_cdrs
    from .store.remote import open_reader

    try:
        with open_reader(store_url or cfg.store.url, str(cfg.base_dir)) as store:
            export_cdrs(store, sys.stdout, fmt=fmt, since=since, until=until, account=account,
                        call_id=call_id)
    except (StoreError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


# --- balance (prepaid) -----------------------------------------------------------------------

class _BalanceGroup(click.Group):
    """``sipledger balance [ACCOUNT]`` shows, ``sipledger balance add ...`` tops up: a first word that is
    no subcommand is an account to show."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            return "show", self.commands["show"], args
        return super().resolve_command(ctx, args)


def _balance_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        click.option("--store", "store_url", default=None, help="Store URL (default: store.url)"),
        click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table"),
        click.option("--json", "as_json", is_flag=True, help="Same as --format json"),
    ]):
        fn = opt(fn)
    return fn


def _show_balances(cfg: Config, account: str | None, store_url: str | None, fmt: str, as_json: bool) -> None:
    from .balance import fetch_balances, render_table
    from .store import StoreError

    try:
        with _reader(cfg, store_url) as store:
            balances = fetch_balances(store, cfg, account)
    except (StoreError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json or fmt == "json":
        click.echo(json.dumps([b.as_dict() for b in balances], indent=2))
        return
    if not balances:
        click.echo("no prepaid accounts and no ledger entries")
        return
    click.echo(render_table(balances))


@main.group("balance", cls=_BalanceGroup, invoke_without_command=True)
@_balance_options
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help=f"TOML configuration (default: ./{DEFAULT_CONFIG} when present)")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override one configuration key (repeatable)")
@click.pass_context
def balance_group(ctx: click.Context, store_url: str | None, fmt: str, as_json: bool, config_path: str | None,
                  overrides: tuple[str, ...]) -> None:
    """Prepaid balances: `sipledger balance [ACCOUNT]` shows balance, reserved (held for calls up now)
    and available per account, from the store's ledger; `sipledger balance add ACCOUNT AMOUNT` tops up."""
    if ctx.invoked_subcommand is None:  # a subcommand loads the configuration it is given itself
        _show_balances(_load_config(config_path, overrides), None, store_url, fmt, as_json)


@balance_group.command("show")
@click.argument("account")
@_balance_options
@with_config
def balance_show(cfg: Config, account: str, store_url: str | None, fmt: str, as_json: bool) -> None:
    """One account's balance, reserved and available (also `sipledger balance ACCOUNT`)."""
    _show_balances(cfg, account, store_url, fmt, as_json)


@balance_group.command("add")
@click.argument("account")
@click.argument("amount")
@click.option("--note", default="", help="Free text kept with the top-up (up to 256 characters)")
@click.option("--id", "topup_id", default=None,
              help="The top-up's id: the ledger counts one id once, so a retry with the same id is safe "
                   "(default: a new one, printed)")
@click.option("--to", "target", default=None, help="Events log to write to (default: events.log)")
@click.option("--json", "as_json", is_flag=True, help="Print the event written as JSON")
@with_config
def balance_add(cfg: Config, account: str, amount: str, note: str, topup_id: str | None, target: str | None,
                as_json: bool) -> None:
    """Top up ACCOUNT by AMOUNT (in its rate currency): an account.topup event into the events log,
    counted once per id by the pipeline's ledger, also on replay."""
    from .balance import parse_amount, publish_topup, topup_event
    from .events_tools import SendError

    if account not in {a.name for a in cfg.accounts}:
        raise click.ClickException(f"no account {account!r} in the configuration")
    if topup_id is not None and not 0 < len(topup_id) <= 57:
        raise click.ClickException("--id must have 1 to 57 characters")
    try:
        event = topup_event(account, parse_amount(amount), topup_id, note)
        where = publish_topup(cfg, event, target)
    except (ValueError, SendError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(event))
        return
    prepaid = next(a.prepaid for a in cfg.accounts if a.name == account)
    click.echo(f"top-up {event['topup_id']} of {event['amount']} for account {account} written to {where}"
               + ("" if prepaid else " (the account is not prepaid: its calls are not limited by it)"))


# --- report ------------------------------------------------------------------------------------

def report_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        click.option("--store", "store_url", default=None, help="Store URL (default: store.url)"),
        click.option("--since", default=None, help="Calls that ended at or after (UTC, ISO 8601)"),
        click.option("--until", default=None, help="Calls that ended before (UTC, ISO 8601)"),
    ]):
        fn = opt(fn)
    return fn


def _period(since: str | None, until: str | None) -> Any:
    from .report.runaway import Period
    from .store.cdr_export import utc_ms

    return Period(utc_ms(since, "--since") if since else None, utc_ms(until, "--until") if until else None)


def _reader(cfg: Config, store_url: str | None) -> Any:
    from .store import StoreError
    from .store.remote import open_reader

    try:
        return open_reader(store_url or cfg.store.url, str(cfg.base_dir))
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None


@main.group("report")
def report_group() -> None:
    """Runaway-cost, cost-impact, what-if and quality reports from the CDRs."""


@report_group.command("runaway-cost")
@report_options
@click.option("--by", type=click.Choice(["account", "vendor", "prefix", "day"]), default="account")
@click.option("--prefix-len", default=2, show_default=True, help="Digits of the callee that make a prefix")
@click.option("--top", default=10, show_default=True, help="Top offenders to list")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "html"]), default="table")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="Write here instead of standard output (html default: runaway-report.html)")
@with_config
def report_runaway(cfg: Config, store_url: str | None, since: str | None, until: str | None, by: str,
                   prefix_len: int, top: int, fmt: str, output: str | None) -> None:
    """Calls, zombies, exposure (minutes, sell and buy cost, calls still open at the carrier),
    unverified minutes, calls ended at a limit, top offenders."""
    from .report import render
    from .report.runaway import runaway_cost
    from .report.what_if import configured_cap
    from .store import StoreError

    period = _period(since, until)
    try:
        with _reader(cfg, store_url) as store:
            rep = runaway_cost(store, by, period, prefix_len, top)
            if fmt == "html":
                path = Path(output or "runaway-report.html")
                configured = configured_cap(cfg.timers.no_timer_max_duration, cfg.timers.max_call_duration)
                path.write_text(render.html_report(store, rep, period, configured))
                click.echo(f"wrote {path}")
                return
    except (StoreError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    out = open(output, "w") if output else sys.stdout  # noqa: SIM115 - closed below when ours
    try:
        if fmt == "table":
            render.runaway_table(rep, out)
        elif fmt == "json":
            out.write(json.dumps({"by": by, "rows": rep.rows, "totals": rep.totals,
                                  "top_offenders": rep.top_offenders}, default=str, indent=2) + "\n")
        else:
            render.write_rows([*rep.rows, rep.totals], "csv", out)
    finally:
        if output:
            out.close()


@report_group.command("cost-impact")
@report_options
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
@with_config
def report_cost_impact(cfg: Config, store_url: str | None, since: str | None, until: str | None,
                       fmt: str) -> None:
    """Zombie exposure x rate -> cost per incident and per month, from your own CDRs."""
    from .report import render
    from .report.runaway import cost_impact

    with _reader(cfg, store_url) as store:
        rows = cost_impact(store, _period(since, until))
    render.write_rows(rows, fmt, sys.stdout, "Cost impact of zombie calls")


@report_group.command("what-if")
@report_options
@click.option("--caps", default=None,
              help="Candidate no-timer caps for every account, seconds, e.g. 900,1800,3600 "
                   "(default: around each account's cap in force, e.g. 5,10,15,20,30,40 for 20 s)")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
@with_config
def report_what_if(cfg: Config, store_url: str | None, since: str | None, until: str | None,
                   caps: str | None, fmt: str) -> None:
    """For candidate no-timer caps: calls that would be cut vs exposure saved; a cap per account."""
    from .report import render
    from .report.what_if import configured_cap, what_if

    cap_list = None
    if caps is not None:
        try:
            cap_list = tuple(int(c) for c in caps.split(","))
        except ValueError:
            raise click.ClickException("--caps takes whole seconds separated by commas") from None
        if any(c <= 0 for c in cap_list):
            raise click.ClickException("--caps takes caps of at least 1 s")
    configured = configured_cap(cfg.timers.no_timer_max_duration, cfg.timers.max_call_duration)
    with _reader(cfg, store_url) as store:
        rows, best = what_if(store, _period(since, until), cap_list, configured)
    render.write_rows([r.as_dict() for r in rows], fmt, sys.stdout, "No-timer cap what-if")
    if fmt == "table":
        for rec in render.recommendations(rows, best):
            in_force = rec["cap_in_force_s"]
            cap = rec["recommended_no_timer_cap_s"]
            if in_force is None:
                why = "no cap in force known"
            elif cap == in_force:
                why = "keep the cap in force" if rec["net_benefit"] == 0 else "the cap in force is best"
            else:
                why = f"in force: {in_force} s"
            click.echo(f"recommended no-timer cap for {rec['account']}: {cap} s ({why}; "
                       f"net benefit {rec['net_benefit']})")


@report_group.command("quality")
@report_options
@click.option("--min-asr", default="0.30", show_default=True, help="ASR alarm threshold")
@click.option("--max-zombie-minutes", default="60", show_default=True, help="Zombie-minute alarm per hour")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
@with_config
def report_quality(cfg: Config, store_url: str | None, since: str | None, until: str | None, min_asr: str,
                   max_zombie_minutes: str, fmt: str) -> None:
    """ASR, ACD, PDD and minutes per vendor and hour, with alarms (exit 3 when any fires)."""
    from decimal import Decimal

    from .report import render
    from .report.quality import Thresholds, alarms, quality

    with _reader(cfg, store_url) as store:
        rows = quality(store, _period(since, until))
    render.write_rows(rows, fmt, sys.stdout, "Vendor quality per hour")
    found = alarms(rows, Thresholds(min_asr=Decimal(min_asr), max_zombie_minutes=Decimal(max_zombie_minutes)))
    for a in found:
        click.echo(a, err=True)
    if found:
        sys.exit(3)


# --- pipeline ----------------------------------------------------------------------------------

@main.command("pipeline")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--app-id", default=None,
              help="Kafka mode: the workers' faust app id = consumer group (default: sipledger-pipeline)")
@with_config
def pipeline_cmd(cfg: Config, log_level: str, app_id: str | None) -> None:
    """Run the pipeline: faust workers on Kafka (events.log = kafka://...) or embedded (file:// + chDB)."""
    from . import logsetup

    logsetup.configure(log_level)
    if cfg.events.log.startswith("kafka:"):
        from pipeline import faust_app

        faust_app.run(cfg, {"loglevel": log_level, **({"app_id": app_id} if app_id else {})})
        return
    import signal
    import threading

    from pipeline.embedded import EmbeddedPipeline
    from pipeline.metrics import embedded_families, serve_pipeline

    from .store import StoreError

    try:
        pipe = EmbeddedPipeline(cfg)
    except (StoreError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        metrics = serve_pipeline(cfg, embedded_families(pipe))
    except ConfigError as exc:
        pipe.close()
        raise click.ClickException(str(exc)) from None
    endpoint = pipe.serve_queries()
    click.echo(f"pipeline: following {pipe.paths.events}, store {pipe.store.url}, queries at {endpoint}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        pipe.run(stop)
    finally:
        if metrics is not None:
            from .metrics import stop

            stop(metrics)
        pipe.close()
        click.echo(f"pipeline: stopped; {pipe.stats}")


@main.command("replay")
@click.option("--from", "source", required=True, help="kafka, kafka://host:port or file:///path/events.jsonl")
@click.option("--to", "target", required=True, help="Store URL to rebuild the CDRs into")
@click.option("--rates", default=None, help="Sell-side rate deck CSV (default: pipeline.sell_rates)")
@click.option("--buy-rates", default=None, help="Buy-side rate deck CSV (default: pipeline.buy_rates)")
@click.option("--replace", is_flag=True, help="Empty the target's cdrs table first")
@with_config
def replay_cmd(cfg: Config, source: str, target: str, rates: str | None, buy_rates: str | None,
               replace: bool) -> None:
    """Rebuild every CDR from the event log into a fresh table (optionally re-rated).

    The log is the only clock: deadlines are judged on each node's own events and calls are orphaned
    where the log holds a node.lost verdict, exactly as live; calls still open at its end stay open.
    """
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from pipeline.processor import Processor, load_decks, policy_from_config
    from pipeline.replay import deck_from, open_log, replay

    from .store import StoreError, open_store
    from .topic_reader import TopicReadError

    sell, buy = load_decks(cfg)
    sell = deck_from(rates) or sell
    buy = deck_from(buy_rates) or buy
    proc = Processor(policy_from_config(cfg), sell, buy, {a.name: a.bill_mode for a in cfg.accounts})
    try:
        log_iter = open_log(source, cfg)
        with open_store(target, str(cfg.base_dir)) as store, Progress(
                SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                transient=True, disable=not sys.stderr.isatty()) as bar:
            task = bar.add_task("replaying", total=None)
            res = replay(log_iter, proc, store, replace=replace,
                         progress=lambda n: bar.update(task, description=f"replayed {n:,} events"))
    except (StoreError, TopicReadError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"replayed {res.events} events ({res.invalid} invalid skipped, {res.late_events} late "
               f"events of closed calls ignored) into {target}: {res.cdrs} CDRs, {res.open_calls} calls "
               "still open")


@main.command("nettest")
@click.argument("target")
@click.option("--count", "-n", default=10, show_default=True, help="Pings per transport")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between pings")
@click.option("--timeout", default=1.0, show_default=True, help="Seconds to wait for each answer")
@click.option("--transport", type=click.Choice(["udp", "tcp", "both"]), default=None,
              help="Default: the gateway's transport, or udp for a host:port")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@with_config
def nettest_cmd(cfg: Config, target: str, count: int, interval: float, timeout: float,
                transport: str | None, fmt: str) -> None:
    """SIP OPTIONS round trips to a gateway (by name) or any host:port: loss, RTT min/avg/max, jitter,
    and the statuses seen, per transport (VOS3000's network test). Exit 1 when nothing answered."""
    from .nettest import resolve, run

    label, address, transports = resolve(target, cfg)
    if transport is not None:
        transports = ("udp", "tcp") if transport == "both" else (transport,)

    def show(t: str, i: int, p: Any) -> None:
        if fmt == "table":
            what = f"{p.status} in {p.rtt_ms:.1f} ms" if p.status is not None else (p.error or "no answer")
            click.echo(f"  {t} #{i}: {what}")

    if fmt == "table":
        click.echo(f"OPTIONS to {label} ({address}), {count} per transport, every {interval:g} s")
    results = [r.as_dict() for r in run(address, transports, count, interval, timeout, label, show)]
    if fmt == "json":
        click.echo(json.dumps(results, indent=2))
    else:
        for r in results:
            rtt = ("-" if r["rtt_avg_ms"] is None else
                   f"{r['rtt_min_ms']}/{r['rtt_avg_ms']}/{r['rtt_max_ms']} ms")
            jitter = "-" if r["jitter_ms"] is None else f"{r['jitter_ms']} ms"
            click.echo(f"{r['transport']}: {r['answered']}/{r['sent']} answered, loss {r['loss_pct']}%, "
                       f"rtt min/avg/max {rtt}, jitter {jitter}, statuses {r['statuses']}")
    if not any(r["answered"] for r in results):
        sys.exit(1)


@main.command("route")
@click.argument("number")
@click.option("--account", default=None, help="The calling account (its sell rate)")
@click.option("--at", "at", default=None, help="UTC time the rates apply at (default: now)")
@click.option("--probe", is_flag=True, help="Ping each gateway once (SIP OPTIONS) for its health")
@click.option("--reports/--no-reports", "with_reports", default=True, show_default=True,
              help="What the B2BUA nodes last reported of each gateway (gateway.down / gateway.up, read "
                   "from the store)")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@with_config
def route_cmd(cfg: Config, number: str, account: str | None, at: str | None, probe: bool,
              with_reports: bool, fmt: str) -> None:
    """Where a call to NUMBER would go and what it would get, without placing it: the matched prefix,
    the gateways in order (with what the nodes last reported of their health, and with --probe their
    answer now), the sell and buy rates, and the limits."""
    import time

    from pipeline.processor import load_decks

    from .route_view import analyse, reported_text
    from .sip_ping import ping
    from .store.cdr_export import utc_ms

    try:
        at_ms = utc_ms(at, "--at") if at else int(time.time() * 1000)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if account is not None and account not in {a.name for a in cfg.accounts}:
        raise click.ClickException(f"no account {account!r} in the configuration")
    sell, buy = load_decks(cfg)

    def health(gw: Any) -> str:
        p = ping(f"{gw.host}:{gw.port}", gw.transport, 1.0)
        return f"up ({p.status}, {p.rtt_ms:.1f} ms)" if p.status is not None else \
            f"down ({p.error or 'no answer'})"

    reports, note = _gateway_reports(cfg) if with_reports else ({}, None)
    available, credit_note = _available_balance(cfg, account)
    view = analyse(cfg, number, account, at_ms, sell, buy, health if probe else None, reports, available)
    if note:
        view["reports_note"] = note
    if credit_note:
        view["credit_note"] = credit_note
    if fmt == "json":
        click.echo(json.dumps(view, indent=2))
        return
    if not view["routable"]:
        click.echo(f"{number}: no route (the caller would get 404)")
        sys.exit(1)
    sr = view["sell_rate"]
    click.echo(f"{number} matches prefix {view['prefix']!r} at {view['at']}")
    click.echo("sell: " + (f"{sr['rate_per_minute']} {sr['currency']}/min, {sr['increments']}, fee "
                           f"{sr['connection_fee']}, minimum {sr['minimum_duration_s']} s (prefix "
                           f"{sr['prefix']!r}, account {account})" if sr else
                           f"no sell rate{'' if account else ' (give --account)'}"))
    for gw in view["gateways"]:
        br = gw["buy_rate"]
        buy_txt = (f"{br['rate_per_minute']} {br['currency']}/min {br['increments']} fee "
                   f"{br['connection_fee']}" if br else "no buy rate")
        click.echo(f"  {gw['order']}. {gw['gateway']} {gw['address']} vendor {gw['vendor']}: {buy_txt}; "
                   f"{gw['health']}")
        if with_reports:
            said = reported_text(gw["reported"]) if gw["probed_by_b2bua"] else "not probed by the B2BUA"
            click.echo(f"     reported: {said}")
    if note:
        click.echo(f"  ({note})")
    lim = view["limits"]
    st = lim["session_timer"]
    click.echo(f"limits: session timer {st['session_expires_s']} s (refresh every {st['refresh_every_s']} s, "
               f"Min-SE {st['min_se_s']}), no-timer cap {lim['no_timer_cap_s'] or 'off'}, "
               f"max duration {lim['max_call_duration_s'] or 'off'}")
    credit = lim["credit"]
    if credit is not None:
        if credit["refused"]:
            said = f"refused, {credit['refused']}"
        elif credit["available"] is None:
            said = f"balance unknown ({view.get('credit_note')})"
        else:
            limit = credit["credit_limit_s"]
            said = (f"{limit} s" if limit is not None else "no limit (free per minute)") + \
                f" (hold {credit['hold']})"
        click.echo(f"credit (prepaid, available {credit['available'] or '?'}, minimum "
                   f"{credit['min_balance']}): {said}")


def _available_balance(cfg: Config, account: str | None) -> tuple[Decimal | None, str | None]:
    """A prepaid account's available balance in the store's ledger, and a note when it could not be read
    (an embedded store that does not exist yet is not created for this)."""
    from urllib.parse import urlparse

    from .balance import fetch_balances
    from .store.remote import open_reader, unquote_path

    acc = next((a for a in cfg.accounts if a.name == account), None)
    if acc is None or not acc.prepaid:
        return None, None
    url = cfg.store.url
    if urlparse(url).scheme == "chdb" and not Path(unquote_path(url, str(cfg.base_dir))).exists():
        return None, f"no store at {url} yet"
    try:
        with open_reader(url, str(cfg.base_dir)) as store:
            (bal,) = fetch_balances(store, cfg, acc.name)
    except Exception as exc:  # a view beside the route: whatever the store says, the route still shows
        return None, f"balance unavailable: {exc}"[:300]
    return bal.available, None


def _gateway_reports(cfg: Config) -> tuple[dict[str, list[dict[str, Any]]], str | None]:
    """The nodes' last gateway reports from the store, and a note when they could not be read. An
    embedded store that does not exist yet is not created for this."""
    from urllib.parse import urlparse

    from .route_view import LAST_REPORTS_SQL, last_reports
    from .store.remote import open_reader, unquote_path

    url = cfg.store.url
    if urlparse(url).scheme == "chdb" and not Path(unquote_path(url, str(cfg.base_dir))).exists():
        return {}, f"no gateway reports: no store at {url} yet"
    try:
        with open_reader(url, str(cfg.base_dir)) as store:
            return last_reports(store.query(LAST_REPORTS_SQL)), None
    except Exception as exc:  # a view beside the route: whatever the store says, the route still shows
        return {}, f"gateway reports unavailable: {exc}"[:300]


@main.command("audit")
@click.option("--from", "source", default=None,
              help="The event log: kafka, kafka://host:port or file:///path (default: events.log)")
@click.option("--store", "store_url", default=None, help="Store URL (default: store.url)")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("--show", default=50, show_default=True, help="Discrepancies listed in the table output")
@with_config
def audit_cmd(cfg: Config, source: str | None, store_url: str | None, fmt: str, show: int) -> None:
    """Reconcile the CDR store with the event log, call by call (exit 1 on any discrepancy).

    Every call the log ends has exactly one CDR with its end reason and times; every call a node.lost
    verdict orphans has one orphaned CDR with its exposure; calls the log leaves open have none; no
    CDR exists without events.
    """
    from pipeline.replay import open_log

    from .audit import KINDS, audit_store
    from .store import StoreError
    from .store.remote import open_reader
    from .topic_reader import TopicReadError

    src = source or cfg.events.log
    try:
        with open_reader(store_url or cfg.store.url, str(cfg.base_dir)) as store:
            res = audit_store(open_log(src, cfg), store)
    except (StoreError, TopicReadError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    counts = res.counts()
    if fmt == "json":
        click.echo(json.dumps({"ok": res.ok, "events": res.events, "invalid_events": res.invalid,
                               "calls": res.calls, "cdrs": res.cdrs, "ended": res.ended,
                               "orphaned": res.orphaned, "open": res.open, "discrepancies": dict(counts),
                               "details": [{"kind": d.kind, "call_id": d.call_id, "detail": d.detail}
                                           for d in res.discrepancies]}, indent=2))
    else:
        click.echo(f"log {src}: {res.events} events ({res.invalid} invalid), {res.calls} calls: "
                   f"{res.ended} ended by their node, {res.orphaned} orphaned by a verdict, {res.open} open")
        click.echo(f"store: {res.cdrs} CDRs")
        for kind in KINDS:
            if counts[kind]:
                click.echo(f"  {counts[kind]:6d}  {kind}")
        for d in res.discrepancies[:show]:
            click.echo(f"  {d.kind}: {d.call_id}: {d.detail}")
        if len(res.discrepancies) > show:
            click.echo(f"  ... {len(res.discrepancies) - show} more (--format json lists them all)")
        click.echo("audit passed: the store matches the log" if res.ok else
                   f"audit FAILED: {len(res.discrepancies)} discrepancies")
    if not res.ok:
        sys.exit(1)


@main.command("status")
@click.option("--app-id", default=None,
              help="The workers' faust app id = consumer group (default: the one `sipledger pipeline` uses)")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@with_config
def status_cmd(cfg: Config, app_id: str | None, fmt: str) -> None:
    """Kafka mode: per-partition lag of the workers' group, each partition's restore state and worker,
    the store writers' pending rows (from the broker alone; no Kafka Java tools)."""
    from pipeline.call_table import DEFAULT_APP_ID

    from .pipeline_status import StatusError, collect, render

    if not cfg.events.log.startswith("kafka:"):
        raise click.ClickException("`sipledger status` shows the faust workers of Kafka mode "
                                   f"(events.log = kafka://...), not events.log = {cfg.events.log!r}")
    try:
        status = collect(cfg.kafka.bootstrap, cfg.kafka.topic_events, app_id or DEFAULT_APP_ID)
    except StatusError as exc:
        raise click.ClickException(f"{exc} (kafka.bootstrap)") from None
    if fmt == "json":
        click.echo(json.dumps(status, indent=2))
    else:
        render(status, click.echo)


@main.command("calls")
@click.option("--store", "store_url", default=None, help="Store URL of the running embedded pipeline")
@click.option("--app-id", default=None,
              help="Kafka mode: the faust app id the workers run with (default: the one "
                   "`sipledger pipeline` uses)")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@with_config
def calls_cmd(cfg: Config, store_url: str | None, app_id: str | None, fmt: str) -> None:
    """Calls active right now (current-call monitor), from the running pipeline's state.

    Kafka mode (events.log = kafka://...) reads the workers' call-state changelog topic up to its
    current end; embedded mode asks the running pipeline or reads its checkpoint.
    """
    from .calls_view import active_calls, render_calls

    try:
        calls = active_calls(cfg, store_url, app_id)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    if fmt == "json":
        click.echo(json.dumps(calls, indent=2))
    else:
        render_calls(calls)


@main.command("trace")
@click.argument("call_id", required=False)
@click.option("--import", "import_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Read a pcap or pcapng capture (of any switch) instead of the store")
@click.option("--export", "export_file", type=click.Path(dir_okay=False), default=None,
              help="Write the call as a capture: FILE.pcapng (with the memos as comments) or a classic pcap")
@click.option("--full", is_flag=True, help="Each message's headers (and body, when recorded) too")
@click.option("--format", "fmt", type=click.Choice(["table", "html", "json"]), default="table")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None,
              help="Write the ladder (table, html or json) to this file instead of stdout")
@click.option("--store", "store_url", default=None, help="Store URL (default: store.url)")
@click.option("--limit", default=20, show_default=True, help="Without CALL_ID: how many recent calls to list")
@with_config
def trace_cmd(cfg: Config, call_id: str | None, import_file: str | None, export_file: str | None, full: bool,
              fmt: str, as_json: bool, out_file: str | None, store_url: str | None, limit: int) -> None:
    """Call analysis: the signalling of CALL_ID's two legs side by side (caller | B2BUA | carrier), with
    the times, the first lines and the B2BUA's memos (VOS3000's "Call Analysis").

    CALL_ID is the call id of the call's events, or either leg's SIP Call-ID. Without it, the latest
    recorded calls are listed. Calls are recorded by the B2BUA per account (trace = true), by
    [trace] sample_rate, or when they fail ([trace] failed_calls). Exit 1 when nothing is found.
    """
    from pathlib import Path

    from .store import StoreError
    from .trace_ladder import render_html, render_text
    from .trace_pcap import CaptureError, write_capture
    from .trace_view import as_json as ladders_json
    from .trace_view import from_capture, from_store, recent

    fmt = "json" if as_json else fmt
    if import_file is None and call_id is None:
        store = _reader(cfg, store_url)
        try:
            with store:
                calls = recent(store, limit)
        except StoreError as exc:
            raise click.ClickException(str(exc).splitlines()[0]) from None
        if fmt == "json":
            click.echo(json.dumps(calls, indent=2))
        else:
            click.echo(f"{'start (UTC)':<25} {'call id':<38} {'node':<12} {'account':<12} {'end reason':<22} "
                       "entries")
            for c in calls:
                reason = (c["end_reason"] or "-") + (" (failed)" if c["failed"] else "")
                click.echo(f"{c['start']:<25} {c['call_id']:<38} {c['node']:<12} {c['account'] or '-':<12} "
                           f"{reason:<22} {c['entries']}")
        sys.exit(0 if calls else 1)
    try:
        if import_file is not None:
            ladders = from_capture(Path(import_file), call_id)
            source = import_file
        else:
            assert call_id is not None
            store = _reader(cfg, store_url)
            with store:
                ladders = from_store(store, call_id)
            source = store.url
    except (StoreError, CaptureError) as exc:
        raise click.ClickException(str(exc).splitlines()[0]) from None
    if not ladders:
        what = f"call {call_id}" if call_id else "any SIP dialog"
        click.echo(f"no signalling of {what} in {source}", err=True)
        sys.exit(1)
    if export_file is not None:
        if len(ladders) > 1:
            raise click.ClickException(f"{len(ladders)} calls in {source}: name one with CALL_ID to export "
                                       "it")
        n = write_capture(ladders[0].records, Path(export_file))
        click.echo(f"wrote {n} packets to {export_file}", err=True)
    if fmt == "json":
        text = json.dumps(ladders_json(ladders), indent=2) + "\n"
    elif fmt == "html":
        text = render_html(ladders, f"Call analysis: {call_id or Path(source).name}")
    else:
        text = "\n".join(render_text(lad, full=full) for lad in ladders)
    if out_file is not None:
        Path(out_file).write_text(text)
        click.echo(f"wrote {out_file}", err=True)
    else:
        click.echo(text, nl=False)


@main.group("alerts")
def alerts_group() -> None:
    """Zombie-call alerts for people."""


@alerts_group.command("tail")
@click.option("--follow", "-f", is_flag=True, help="Keep printing alerts as they arrive")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@with_config
def alerts_tail(cfg: Config, follow: bool, fmt: str) -> None:
    """Print zombie alerts and gateway alerts (from Kafka or the embedded alerts journal)."""
    from .alerts_view import tail_alerts
    from .topic_reader import TopicReadError

    try:
        with contextlib.suppress(KeyboardInterrupt):
            tail_alerts(cfg, follow, fmt, functools.partial(click.echo, nl=True))
    except TopicReadError as exc:
        raise click.ClickException(str(exc)) from None


# --- events: another switch's events (docs/events.md) --------------------------------------------------

@main.group("events")
def events_group() -> None:
    """Validate, send and convert call events from your own switch (contract: docs/events.md)."""


def _line_source(path: str) -> Any:
    from .events_tools import LineSource

    try:
        return LineSource(path)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None


@events_group.command("validate")
@click.argument("file")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              help="text: one line per problem and a summary; json: one document for scripts")
def events_validate(file: str, fmt: str) -> None:
    """Check a file of events (JSON lines, - for standard input) against the schemas and the rules
    between events: seq per call from 1 without gaps, one node per call, nothing after
    call.terminated, one event per event_id. Prints `line N: field F: reason` for each problem and
    exits 1; otherwise a one-line summary."""
    from .events_tools import check_lines

    src = _line_source(file)
    res = check_lines(src.lines())
    if fmt == "json":
        click.echo(json.dumps({"file": src.name, **res.as_dict()}, indent=2))
    else:
        for p in res.problems:
            click.echo(str(p))
        if res.ok:
            click.echo(f"ok: {src.name}: {res.summary()}")
        else:
            click.echo(f"{len(res.problems)} problems in {src.name}: {res.summary()}")
        for node in res.silent_nodes:
            click.echo(f"note: node {node} sends no node.heartbeat: its clock moves with its own events, "
                       "and a live pipeline declares it lost when it has open calls and no heartbeat for "
                       "pipeline.node_timeout (a batch loaded with replay is fine; docs/events.md)",
                       err=True)
    if not res.ok:
        sys.exit(1)


@events_group.command("send")
@click.argument("file")
@click.option("--to", "target", default=None,
              help="kafka://host:port or file:///path/events.jsonl (default: events.log)")
@click.option("--topic", default=None, help="Kafka topic (default: kafka.topic_events)")
@click.option("--skip-invalid", is_flag=True,
              help="Send the rest of a file with problems: skip (and print) each bad line, and the "
                   "whole call when leaving the line out would leave the call with a gap")
@with_config
def events_send(cfg: Config, file: str, target: str | None, topic: str | None, skip_invalid: bool) -> None:
    """Validate a file of events (- for standard input), then publish it: to Kafka keyed by call id
    (node.heartbeat and node.lost to every partition, acks=all, each call's order kept), or appended
    to a journal file. Nothing is sent from a file with problems unless --skip-invalid."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .events_tools import SendError, check_lines, open_sink, send_lines

    src = _line_source(file)
    check = check_lines(src.lines())
    if check.problems and not skip_invalid:
        for p in check.problems:
            click.echo(str(p), err=True)
        raise click.ClickException(f"{len(check.problems)} problems in {src.name}: nothing sent (fix them, "
                                   "or --skip-invalid to send the rest)")
    url = target or cfg.events.log
    try:
        sink = open_sink(url, topic or cfg.kafka.topic_events, cfg.base_dir)
    except (SendError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    journal = getattr(sink, "path", None)
    if journal is not None and file != "-" and Path(journal).resolve() == Path(file).resolve():
        sink.close()
        raise click.ClickException(f"{file} is the journal it would be appended to")
    try:
        with Progress(TextColumn("sending"), BarColumn(), MofNCompleteColumn(), TextColumn("lines"),
                      TimeElapsedColumn(), transient=True, disable=not sys.stderr.isatty()) as bar:
            task = bar.add_task("send", total=check.lines)
            res = send_lines(src.lines(), sink, check, skip_invalid,
                             progress=lambda n: bar.update(task, completed=n))
    except SendError as exc:
        raise click.ClickException(f"{exc} (re-sending the whole file is safe: duplicate event ids are "
                                   "dropped)") from None
    finally:
        sink.close()
    for p in res.skipped:
        click.echo(f"skipped {p}", err=True)
    per_part = getattr(sink, "per_partition", None)
    parts = (" (records per partition: " + ", ".join(f"{p}={n}" for p, n in sorted(per_part.items())) + ")"
             if per_part else "")
    click.echo(f"sent {res.events} events of {res.calls} calls ({res.broadcasts} node events to every "
               f"partition; {res.records} records) to {sink.target}{parts}; skipped {len(res.skipped)} lines")


@events_group.command("from-cdr")
@click.argument("file")
@click.option("--format", "fmt", type=click.Choice(["asterisk", "freeswitch"]), required=True,
              help="asterisk: cdr_csv Master.csv; freeswitch: mod_cdr_csv with the default template")
@click.option("--node", default=None, help="Node name of the switch in the events (default: the format)")
@click.option("--tz", default="UTC", show_default=True,
              help="Time zone of the CSV's stamps (both switches write local time; Asterisk writes UTC "
                   "with usegmtime)")
@click.option("--account-from", default="accountcode", show_default=True,
              help="Column that names the billed account")
@click.option("--default-account", default="unknown", show_default=True,
              help="Account of rows whose account column is empty")
@click.option("--out", "-o", type=click.Path(dir_okay=False), default=None,
              help="Write the events here (default: standard output)")
def events_from_cdr(file: str, fmt: str, node: str | None, tz: str, account_from: str, default_account: str,
                    out: str | None) -> None:
    """Turn an Asterisk or FreeSWITCH CDR CSV (- for standard input) into call events, in time order, as
    JSON lines: call.setup, call.routed (when the carrier is known), call.answered, call.terminated.
    Rows that cannot be converted are named on standard error (exit 1); the others are written."""
    from .cdr_import import Options, convert

    opts = Options(fmt, node or fmt, tz, account_from, default_account)
    try:
        fh = sys.stdin if file == "-" else open(file, newline="", encoding="utf-8", errors="replace")  # noqa: SIM115
    except OSError as exc:
        raise click.ClickException(f"cannot read {file}: {exc.strerror}") from None
    try:
        res = convert(fh, opts)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if fh is not sys.stdin:
            fh.close()
    text = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in res.events)
    if out:
        Path(out).write_text(text)
    else:
        sys.stdout.write(text)
    for err in res.errors:
        click.echo(str(err), err=True)
    click.echo(f"converted {res.calls} calls ({res.answered} answered) into {len(res.events)} events"
               f"{' in ' + out if out else ''}; {res.duplicates} repeated rows, {len(res.errors)} rows "
               "skipped", err=True)
    if res.errors:
        sys.exit(1)


@events_group.command("doc")
@click.option("--out", "-o", type=click.Path(dir_okay=False), default=None,
              help="Write the page here (e.g. docs/events.md) instead of standard output")
@click.option("--check", is_flag=True, help="Exit 1 if --out differs from what would be written")
def events_doc(out: str | None, check: bool) -> None:
    """The event contract page (docs/events.md), generated from schemas/."""
    from .contract_doc import render

    page = render()
    if check:
        if not out:
            raise click.ClickException("--check needs --out FILE")
        current = Path(out).read_text() if Path(out).is_file() else None
        if current != page:
            click.echo(f"{out} is stale: run `sipledger events doc --out {out}`", err=True)
            sys.exit(1)
        click.echo(f"{out} is up to date")
        return
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(page)
        click.echo(f"wrote {out}")
    else:
        sys.stdout.write(page)


@main.group("notebook")
def notebook_group() -> None:
    """The analysis notebooks (notebooks/*.ipynb), run headless."""


@notebook_group.command("run")
@click.argument("name")
@click.option("--store", "store_url", default=None,
              help="Store URL the notebook reads (SIPLEDGER_STORE_URL; default: store.url of the config)")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help=f"TOML configuration (SIPLEDGER_CONFIG; default: ./{DEFAULT_CONFIG} when present)")
@click.option("--events-log", default=None,
              help="Log to reconcile the store with (SIPLEDGER_EVENTS_LOG; default: events.log)")
@click.option("--sell-rates", default=None, help="Sell-side rate deck (SIPLEDGER_SELL_RATES; default: "
              "pipeline.sell_rates)")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Write the executed notebook (with its figures) to this .ipynb")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds one cell may run")
def notebook_run(name: str, store_url: str | None, config_path: str | None, events_log: str | None,
                 sell_rates: str | None, out_path: str | None, timeout: float) -> None:
    """Execute notebooks/NAME.ipynb (billing_accuracy, runaway_cost) and print its output.

    Exit 1 when a cell fails: billing_accuracy fails when the store does not pass its suite or does
    not match the event log.
    """
    from . import notebook_run as nbrun

    if config_path is None and Path(DEFAULT_CONFIG).is_file():
        config_path = DEFAULT_CONFIG
    cfg = _load_config(config_path, ())
    try:
        path = nbrun.find(name)
    except nbrun.NotebookError as exc:
        raise click.ClickException(str(exc)) from None
    env = {"SIPLEDGER_STORE_URL": store_url or nbrun.absolute_store_url(cfg.store.url, cfg.base_dir)}
    if config_path is not None:
        env["SIPLEDGER_CONFIG"] = str(Path(config_path).resolve())
    if events_log is not None:
        env["SIPLEDGER_EVENTS_LOG"] = events_log
    if sell_rates is not None:
        env["SIPLEDGER_SELL_RATES"] = str(Path(sell_rates).resolve())
    click.echo(f"notebook {path}: store {env['SIPLEDGER_STORE_URL']}", err=True)
    try:
        result = nbrun.run(path, env, timeout=timeout, out=Path(out_path) if out_path else None)
    except nbrun.NotebookError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("".join(result.text), nl=False)
    if out_path:
        click.echo(f"executed notebook written to {out_path} ({result.images} figures)", err=True)
    if not result.ok:
        click.echo(f"notebook {path.name} FAILED: {result.error}", err=True)
        sys.exit(1)


@main.command("demo")
@click.option("--dir", "folder", default=".sipledger/demo", show_default=True,
              help="Working folder of the demo (emptied first): its config, journal, store, report")
@click.option("--fast", is_flag=True, help="A shorter run (about 40 s) with fewer calls")
@click.option("--seed", default=7, show_default=True, help="Traffic mix seed")
@with_config
def demo_cmd(cfg: Config, folder: str, fast: bool, seed: int) -> None:
    """B2BUA nodes + simulated callers and carriers over real SIP + the embedded pipeline.

    The demo writes its own configuration into its folder (timers scaled down so it ends in about
    two minutes); --config only says where relative paths start.
    """
    from .demo import run_demo

    run_demo(cfg.path(folder), fast=fast, seed=seed)


def _register_b2bua() -> None:
    from .b2bua_cli import b2bua_command

    main.add_command(b2bua_command)


_register_b2bua()

if __name__ == "__main__":
    main()
