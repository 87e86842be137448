"""The running B2BUA: the sans-I/O core wired to asyncio transports, timers, events and commands.

Everything the core decides is performed here, in order, on the event loop thread. Nothing a
peer sends can stop the process: each message and timer goes through the core's own guard, and
the adapter additionally catches anything that escapes (logging it with the message).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Hashable
from typing import Any
from urllib.parse import urlparse

from b2bua import native
from b2bua.actions import Action, Address, CancelTimer, Emit, Log, PublishTrace, Send, SetTimer
from b2bua.admission import Admission
from b2bua.balances_in import FileBalanceFollower, KafkaBalanceFollower
from b2bua.call_events import CallEventFactory
from b2bua.commands_in import FileCommandFollower, KafkaCommandFollower
from b2bua.core import B2BUACore, CoreConfig, contact_host
from b2bua.credit_book import CreditBook
from b2bua.gc_policy import CollectorPolicy
from b2bua.loop_stalls import LoopStallWatch
from b2bua.routing import RouteTable
from b2bua.signalling_trace import TraceSettings
from b2bua.sip.parser import ParserLimits
from b2bua.transport import Incoming, TcpLimits, TimerTask, Transports
from sipledger.config import Config, ConfigError
from sipledger.eventlog import FileJournal, Publisher, open_publisher
from sipledger.eventlog.kafka_publisher import SpooledKafkaPublisher
from sipledger.eventlog.signalling import (
    JournalSignallingPublisher,
    SignallingPublisher,
    open_signalling_publisher,
)

log = logging.getLogger("sipledger.b2bua")

# Stopping is bounded whatever the broker does: the event publisher gets this long to deliver what it
# spooled (the rest stays spooled on disk for the next start), and a stop that still does not finish
# (a stuck thread) ends the process after STOP_LIMIT_S.
PUBLISHER_CLOSE_S = 2.0
STOP_LIMIT_S = 8.0

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class B2BUAServer:
    def __init__(self, cfg: Config, publisher: Publisher | None = None) -> None:
        self.cfg = cfg
        self.publisher = publisher or open_publisher(cfg.events.log, cfg.kafka.topic_events,
                                                     cfg.events.spool_dir, cfg.base_dir)
        self.factory = CallEventFactory(cfg.node.id, self.publisher)
        # Call analysis: records go to a sink of their own (never the events' journal, spool or topic).
        self.signalling: SignallingPublisher | None = None
        if TraceSettings.from_config(cfg).enabled:
            self.signalling = open_signalling_publisher(cfg)
        self.core: B2BUACore | None = None
        self.transports: Transports | None = None
        self.timers: TimerTask | None = None
        self.followers: list[FileCommandFollower | KafkaCommandFollower | KafkaBalanceFollower] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.event_errors = 0
        self.metrics_server: Any = None
        self.stalls = LoopStallWatch()
        # Set by the process entry point only (``run``): the collector is process-wide, and a B2BUA
        # embedded in a test process leaves it alone.
        self.collector: CollectorPolicy | None = None
        self._collector_handle: asyncio.TimerHandle | None = None
        self._flush_scheduled = False
        self._cpu_reported = time.process_time()  # process CPU seconds at the last stall report

    @property
    def port(self) -> int:
        return self.transports.port if self.transports is not None else 0

    async def start(self) -> None:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._serve_metrics()
        limits = ParserLimits(max_message_size=cfg.sip.max_message_bytes, max_headers=cfg.sip.max_headers)
        self.transports = Transports(cfg.sip.listen_host, cfg.sip.listen_port, cfg.sip.transports,
                                     self.on_message, limits, udp_buffer_bytes=cfg.sip.udp_buffer_bytes,
                                     tcp=TcpLimits.from_config(cfg.sip),
                                     udp_read_interval=cfg.sip.udp_read_interval_ms / 1000)
        port = await self.transports.start()
        self.core = B2BUACore(
            CoreConfig.from_config(cfg, local_port=port),
            Admission(cfg.accounts, cfg.admission, os.urandom(32)),
            RouteTable.from_config(cfg),
            wall_offset=time.time() - loop.time(),
            credit=credit_book(cfg),
        )
        self.timers = TimerTask(self.on_timer, on_late=self.stalls.observe)
        self.timers.start()
        self.stalls.start(loop)
        self.perform(self.core.start(loop.time()))
        self._tasks.append(loop.create_task(self._heartbeats()))
        self._start_commands()
        self._start_balances()
        print(f"b2bua: listening on {self.transports.describe()} (node {cfg.node.id}); "
              f"core {native.STATUS}", flush=True)

    def _serve_metrics(self) -> None:
        # First, before any SIP socket: a port that is taken stops the start with the key named. The
        # families read the core when scraped (none before it exists).
        m = self.cfg.metrics
        if not m.b2bua_port:
            return
        from b2bua.metrics import families
        from sipledger.metrics import serve

        try:
            self.metrics_server, _ = serve(m.listen_host, m.b2bua_port,
                                           families(lambda: self.core, self.publisher, self.cfg.node.id,
                                                    self.signalling))
        except OSError as exc:
            raise ConfigError("metrics.b2bua_port", f"cannot listen on {m.listen_host}:{m.b2bua_port}: "
                              f"{exc.strerror or exc}") from None

    def _start_commands(self) -> None:
        cfg = self.cfg
        url = urlparse(cfg.events.log)
        follower: FileCommandFollower | KafkaCommandFollower
        if url.scheme == "kafka":
            follower = KafkaCommandFollower(url.netloc or cfg.kafka.bootstrap, cfg.kafka.topic_commands,
                                            cfg.node.id, self.on_command)
        else:
            from sipledger.eventlog.layout import EmbeddedPaths

            follower = FileCommandFollower(EmbeddedPaths.from_config(cfg).commands, self.on_command)
        follower.start()
        self.followers.append(follower)

    def _start_balances(self) -> None:
        """Prepaid balances (b2bua/balances_in.py): loaded before the first call, then followed."""
        cfg, core = self.cfg, self.core
        if core is None or not core.credit.prepaid:
            return
        url = urlparse(cfg.events.log)
        if url.scheme == "kafka":
            core.credit.ready = False

            def ready() -> None:
                core.credit.ready = True
                log.info("prepaid balances loaded: %d records", core.credit.records)

            follower = KafkaBalanceFollower(url.netloc or cfg.kafka.bootstrap, cfg.kafka.topic_balances,
                                            self.on_balance, ready)
            follower.start()
            self.followers.append(follower)
            return
        from sipledger.eventlog.layout import EmbeddedPaths

        paths = EmbeddedPaths.from_config(cfg)
        file_follower = FileBalanceFollower(paths.balances, paths.balances_snapshot, self.on_balance)
        file_follower.start()
        self.followers.append(file_follower)

    # -- inputs -----------------------------------------------------------------------------------
    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _run_core(self, step: Callable[[B2BUACore, float], list[Action]], what: Callable[[], str]) -> None:
        if self.core is None:
            return
        try:
            actions = step(self.core, self._now())
        except Exception:
            log.exception("B2BUA core failed on %s; dropped", what())
            return
        self.perform(actions)

    # Messages and timers (thousands a second) call the core directly, without the closures of _run_core.
    def on_message(self, msg: Incoming, source: Address) -> None:
        core = self.core
        if core is None:
            return
        try:
            actions = core.receive(msg, source, self._now())
        except Exception:
            log.exception("B2BUA core failed on a message from %s; dropped", source)
            return
        self.perform(actions)

    def on_timer(self, key: Hashable) -> None:
        core = self.core
        if core is None:
            return
        try:
            actions = core.timer_fired(key, self._now())
        except Exception:
            log.exception("B2BUA core failed on timer %r; dropped", key)
            return
        self.perform(actions)

    def on_command(self, cmd: dict[str, Any]) -> None:
        self._run_core(lambda core, now: core.terminate_command(cmd, now), lambda: f"command {cmd!r}"[:300])

    def on_balance(self, record: dict[str, Any]) -> None:
        self._run_core(lambda core, now: core.balance_record(record, now),
                       lambda: f"balance {record!r}"[:300])

    # -- outputs ----------------------------------------------------------------------------------
    def perform(self, actions: list[Action]) -> None:
        emitted = False
        timers, transports = self.timers, self.transports
        for a in actions:
            # By exact type, the most frequent first (a call makes 7 Send, 5 SetTimer, 5 CancelTimer and
            # 5 Emit; transaction timers stay in the core): the action classes are final dataclasses.
            try:
                if type(a) is Send:
                    if transports is not None:
                        transports.send(a.data, a.dest)
                elif type(a) is SetTimer:
                    if timers is not None:
                        timers.set(a.key, a.at)
                elif type(a) is CancelTimer:
                    if timers is not None:
                        timers.cancel(a.key)
                elif isinstance(a, Emit):
                    emitted = True
                    self.factory.emit(a.call_id, a.type, **a.fields)
                elif isinstance(a, Log):
                    log.log(_LEVELS.get(a.level, logging.INFO), "%s", a.text)
                elif isinstance(a, PublishTrace):
                    if self.signalling is not None:
                        self.signalling.publish(a.record)
                        emitted = emitted or isinstance(self.signalling, JournalSignallingPublisher)
                else:
                    # A subclass of an action would miss the exact-type branches above: say so.
                    log.error("unknown action %r; dropped", a)
            except Exception:
                # An invalid event is a bug of ours, but the call itself must go on.
                if isinstance(a, Emit):
                    self.event_errors += 1
                log.exception("could not perform %r", a)
        if emitted and isinstance(self.publisher, FileJournal) and not self._flush_scheduled:
            # Readers follow the journal live (the embedded pipeline, tests): the lines go out once
            # the loop has handled what is ready now (up to a batch of datagrams), in one write.
            if self._loop is None:
                self.publisher.flush()
            else:
                self._flush_scheduled = True
                self._loop.call_soon(self._flush_journal)

    def _flush_journal(self) -> None:
        self._flush_scheduled = False
        try:
            self.publisher.flush()
            if isinstance(self.signalling, JournalSignallingPublisher):
                self.signalling.flush()
        except Exception:
            log.exception("journal flush failed")

    # -- process-wide: the collector and the stall report ------------------------------------------
    def take_over_collector(self, policy: CollectorPolicy) -> None:
        """Run ``policy`` for this process (see b2bua/gc_policy.py): no full collection stops the loop."""
        assert self._loop is not None
        self.collector = policy
        policy.install()
        self._collector_handle = self._loop.call_later(policy.interval, self._collector_tick)

    def _collector_tick(self) -> None:
        if self.collector is None or self._loop is None:
            return
        self.collector.tick()
        self._collector_handle = self._loop.call_later(self.collector.interval, self._collector_tick)

    def stall_report(self) -> str:
        """The longest loop stall and collector pause since the last report (then both start anew)."""
        stall = self.stalls.take()
        pause = self.collector.take_longest_pause() if self.collector is not None else 0.0
        calls = self.core.active_calls if self.core is not None else 0
        # The process's CPU since the last report tells backlog (busy all along) from a host short of CPU.
        cpu_now = time.process_time()
        cpu, self._cpu_reported = cpu_now - self._cpu_reported, cpu_now
        return (f"b2bua: loop stall max {stall * 1000:.1f} ms, collector pause max {pause * 1000:.1f} ms, "
                f"{calls} calls up, CPU {cpu * 1000:.0f} ms since the last report")

    def probe_address(self) -> str | None:
        """Where the pipeline can probe this node (UDP OPTIONS), as written into its heartbeats."""
        if "udp" not in self.cfg.sip.transports or self.transports is None:
            return None
        return f"{contact_host(self.cfg)}:{self.port}"

    async def _heartbeats(self) -> None:
        address = self.probe_address()
        while True:
            try:
                self.factory.heartbeat(self.core.active_calls if self.core is not None else 0, address)
                if isinstance(self.publisher, FileJournal):
                    self.publisher.flush()
            except Exception:
                log.exception("heartbeat failed")
            await asyncio.sleep(self.cfg.events.heartbeat_interval)

    async def stop(self) -> None:
        """Stop listening and close the event publisher; calls are not hung up (another node may take
        over). Bounded: events the broker did not take within PUBLISHER_CLOSE_S stay in the spool."""
        self.stalls.stop()
        if self._collector_handle is not None:
            self._collector_handle.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Followers only bring commands in: they stop while the events go out.
        followers = asyncio.gather(*(follower.stop() for follower in self.followers))
        if self.timers is not None:
            await self.timers.stop()
        if self.transports is not None:
            await self.transports.close()
        # A thread of its own rather than the loop's default executor, whose threads asyncio.run joins
        # before it returns: a publisher thread inside kafka-python would hold up the exit.
        done = asyncio.get_running_loop().create_future()
        thread = threading.Thread(target=self._close_publisher, args=(done,), name="close-publisher",
                                  daemon=True)
        thread.start()
        try:
            await asyncio.wait_for(done, PUBLISHER_CLOSE_S + 1.0)
        except TimeoutError:
            log.warning("the event publisher did not close within %.0f s; what it did not deliver stays "
                        "spooled", PUBLISHER_CLOSE_S + 1.0)
        await followers
        if self.metrics_server is not None:
            from sipledger.metrics import stop

            await asyncio.to_thread(stop, self.metrics_server)
            self.metrics_server = None

    def _close_publisher(self, done: asyncio.Future[None]) -> None:
        try:
            if isinstance(self.publisher, SpooledKafkaPublisher):
                self.publisher.close(PUBLISHER_CLOSE_S)
            else:
                self.publisher.flush()
                self.publisher.close()
        except Exception:
            log.exception("closing the event publisher failed")
        try:
            if self.signalling is not None:
                # After the events, briefly: records left in its spool go out after the next start.
                self.signalling.close(0.3)
        except Exception:
            log.exception("closing the signalling publisher failed")
        finally:
            loop = self._loop
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))


def credit_book(cfg: Config) -> CreditBook:
    """The prepaid accounts of the config and the sell deck their calls are priced on (the pipeline's)."""
    prepaid = {a.name: a.min_balance for a in cfg.accounts if a.prepaid}
    if not prepaid:
        return CreditBook()
    from tariff import RateDeck

    path = cfg.path(cfg.pipeline.sell_rates)
    return CreditBook(prepaid, RateDeck.from_csv(path, version=path.stem))


async def serve(cfg: Config, ready: asyncio.Event | None = None, *, stop: asyncio.Event | None = None,
                on_started: Callable[[B2BUAServer], None] | None = None,
                stop_limit: float | None = None) -> None:
    """Run until SIGTERM/SIGINT (or ``stop`` is set). ``ready`` is set once the sockets are bound.

    ``stop_limit``: once stopping, end the whole process (``os._exit``) if the stop has not finished
    within this many seconds (for the process's own entry point, never for a B2BUA embedded in tests).
    """
    server = B2BUAServer(cfg)
    stop = stop or asyncio.Event()
    await server.start()
    if on_started is not None:
        on_started(server)
    if ready is not None:
        ready.set()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            # SIGUSR2: one line on stdout with the longest loop stall since the last one (benchmarks).
            loop.add_signal_handler(signal.SIGUSR2, lambda: print(server.stall_report(), flush=True))
            installed.append(signal.SIGUSR2)
    try:
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        if stop_limit is not None:
            _exit_after(stop_limit)
        await server.stop()


def _exit_after(seconds: float) -> None:
    def expire() -> None:
        log.error("not stopped within %.0f s; exiting now", seconds)
        logging.shutdown()
        os._exit(0)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def _take_over_collector(server: B2BUAServer) -> None:
    server.take_over_collector(CollectorPolicy())


def _runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    """uvloop's event loop when it is installed (a dependency; its UDP path and timers cost about half
    of asyncio's), else asyncio's own."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency, but the B2BUA runs without it
        return asyncio.run
    return uvloop.run


def run(cfg: Config) -> None:
    _runner()(serve(cfg, on_started=_take_over_collector, stop_limit=STOP_LIMIT_S))
