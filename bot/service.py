"""`bot run`: build every stage from the settings and run them in one asyncio process.

Start-up refuses, with the reason, anything unsafe: mainnet without both opt-ins, a missing
secret outside `sim`, a key bound to another environment. In `sim` it starts the simulator
in-process (unless `venue.sim_url` points at one) and registers the configured keys with it.

SIGTERM or SIGINT stops the HTTP server and the signal sources first (no new signals), lets
the workers finish what is queued and in flight for up to `drain_timeout_s`, then closes
everything. Whatever is not finished stays unprocessed in the journal and is picked up on the
next start; an MQTT message not journaled yet stays unacknowledged with the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import signal
import socket
import threading
import time
from collections.abc import (
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import uvicorn
from starlette.types import ASGIApp

from bot import metrics, notify
from bot.account import UNATTRIBUTED, Account, StrategyBook
from bot.admin import AdminCommand, AdminRoutes, parse_command
from bot.app import create_app
from bot.audit import AuditLog, RequestObserver
from bot.coalesce import Coalesced
from bot.config import (
    BotSettings,
    ConfigError,
    Environment,
    secret_names,
    secret_resolver,
    unheard_sources,
)
from bot.execution.executor import Executor
from bot.execution.ids import strategies_named_by
from bot.execution.pacing import IP_REQUESTS_FILE, SHARED_IP_GATE
from bot.execution.reconcile import Reconciler
from bot.health import Readiness, VenueHealth, body_of
from bot.http_limits import guarded_protocol, raise_descriptor_limit
from bot.journal import Journal, OrderRecord, lock_journal
from bot.keys.audit import KeyAudit, Verdict, audit_key, one_account, strategies_by_key
from bot.keys.rotation import KeyGuard
from bot.logs import logger
from bot.market import MarketData
from bot.messages import OrderEvent, utc_now
from bot.net import cannot_listen, http_url, tcp_listener
from bot.pipeline import Pipeline, StrategySlot
from bot.plugins import load_strategy
from bot.risk.counts import counting_since
from bot.risk.gate import RiskGate
from bot.risk.kill_switch import KillSwitch, announce_state
from bot.risk.states import ScopeState, TradingState
from bot.risk.usage import restored_ledger
from bot.runner import StrategyRunner
from bot.secrets import (
    ADMIN_SECRET_NAME,
    ApiCredentials,
    MissingSecretError,
    UnusableSecretError,
    same_api_key,
)
from bot.state_metrics import StateCollector
from bot.venue.bybit import BybitVenue
from bot.venue.errors import KeyFatalError, VenueError
from bot.venue.prices import PriceStream
from bot.venue.stream import AccountStream, SupervisedStream
from signals.base import SignalSink
from signals.config import PASSWORD_SECRET_NAME as MQTT_PASSWORD_NAME
from signals.mqtt import MqttControl
from signals.sources import SignalSource, SourceContext, build_sources
from signals.voiceofchain import UsedSignatures

if TYPE_CHECKING:
    from bot.sim import SimExchange

__all__ = ["Service", "check_mainnet_opt_in"]

T = TypeVar("T")

#: SIGTERM to exit: the drain gets what is left once a venue call in flight could time out.
SHUTDOWN_BUDGET_S: Final = 10.0
#: A key check the venue did not answer at start-up is asked again after this, then twice as
#: long each time, up to the longest wait (within `venue.start_wait_s` in all).
_FIRST_KEY_CHECK_WAIT_S: Final = 2.0
_LONGEST_KEY_CHECK_WAIT_S: Final = 30.0
#: How long start-up waits for each key's account stream to connect and close its gap (the
#: key's start-up read) before it reads the key by REST itself: a few round trips.
_STREAM_START_WAIT_S: Final = 5.0


def check_mainnet_opt_in(settings: BotSettings, *, mainnet_flag: bool) -> None:
    """Mainnet needs `allow_mainnet = true` in the config *and* `--mainnet` on the command line."""
    if settings.environment is not Environment.MAINNET:
        if mainnet_flag:
            raise ConfigError(
                f"--mainnet given but the configuration's environment is {settings.environment}"
            )
        return
    missing = []
    if not settings.allow_mainnet:
        missing.append("allow_mainnet = true in the configuration")
    if not mainnet_flag:
        missing.append("--mainnet on the command line")
    if missing:
        raise ConfigError(
            "refusing to trade real money on mainnet without both opt-ins; missing: "
            + " and ".join(missing)
        )


def open_venue(
    settings: BotSettings,
    credentials: ApiCredentials,
    sim_url: str,
    observers: Sequence[RequestObserver] = (),
) -> BybitVenue:
    """The venue of one key; the key's own environment alone decides where it goes."""
    return BybitVenue(
        credentials,
        settings.keys[credentials.name].environment,
        sim_url=sim_url,
        recv_window_ms=settings.venue.recv_window_ms,
        timeout_s=settings.venue.timeout_s,
        max_wait_s=settings.execution.max_retry_wait_s,
        observers=observers,
    )


async def audit_credentials(
    settings: BotSettings,
    credentials: ApiCredentials,
    sim_url: str,
    observers: Sequence[RequestObserver] = (),
) -> KeyAudit:
    """Audit a key through a session of its own (so new secrets are tried before use)."""
    venue = await asyncio.to_thread(open_venue, settings, credentials, sim_url, observers)
    try:
        return await audit_key(
            credentials.name,
            settings.keys[credentials.name].environment,
            strategies_by_key(settings).get(credentials.name, ()),
            venue,
        )
    finally:
        await asyncio.to_thread(venue.close)


@dataclass(frozen=True)
class _Stages:
    pipeline: Pipeline
    executor: Executor
    reconciler: Reconciler
    account: Account
    venues: Mapping[str, BybitVenue]
    app: ASGIApp
    keys: KeyGuard
    sources: list[SignalSource]
    control: MqttControl | None
    price_streams: list[PriceStream]
    kill_switch: KillSwitch


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service drains first, then exits."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class Service:
    """The running bot. `run()` returns after a clean shutdown."""

    def __init__(
        self,
        settings: BotSettings,
        *,
        secrets_dir: Path,
        mainnet_flag: bool = False,
        drain_timeout_s: float | None = None,
    ) -> None:
        check_mainnet_opt_in(settings, mainnet_flag=mainnet_flag)
        self.settings = settings
        self._resolver = secret_resolver(settings, secrets_dir)
        self._drain_timeout_s = (
            drain_timeout_s
            if drain_timeout_s is not None
            else max(1.0, SHUTDOWN_BUDGET_S - settings.venue.timeout_s)
        )
        self._started = time.monotonic()
        self._server: _Server | None = None
        self._stop = asyncio.Event()
        self.sim_url = ""
        self.http_port = 0
        #: The journal once opened: for what drives the bot in-process (`bot replay`).
        self.journal: Journal | None = None
        self._journal_id: str | None = None  # the journal's identity, once it is open
        self._simulator: SimExchange | None = None
        self._on_hangup: Callable[[], None] = lambda: None

    def request_stop(self) -> None:
        """Stop taking signals and shut down (from the event loop's thread)."""
        self._stop.set()
        if self._server is not None:
            self._server.should_exit = True

    async def run(self, *, ready: Callable[[Service], None] | None = None) -> None:
        resources = ExitStack()
        try:
            # Bind first: a port in use fails before anything (the simulator) is started.
            sock = self._bind()
            resources.callback(sock.close)
            _ignore_hangups()  # until its handler is in place: start-up reads the secrets
            # Start-up does file, SQLite and thread I/O: keep it off the event loop too.
            stages = await _to_its_end(asyncio.to_thread(self._build, resources))
            with self._stop_on_signals():
                if not await self._unless_stopped(self._check_accounts(stages)):
                    logger.warning("stopped during the start-up checks")
                    return
                self._server = _Server(
                    uvicorn.Config(
                        stages.app,
                        host=self.settings.http.host,
                        port=self.settings.http.port,
                        log_config=None,
                        access_log=False,
                        lifespan="off",
                        timeout_graceful_shutdown=5,
                        http=guarded_protocol(
                            raise_descriptor_limit(
                                self.settings.http.max_connections, self._simulator_descriptors()
                            ),
                            self.settings.http.head_timeout_s,
                        ),
                    )
                )
                try:
                    await self._serve(stages, sock, ready)
                finally:  # before the journal and venues close under them
                    await stages.kill_switch.stop()
        finally:
            # Closing venues waits for their threads' last calls: not on the event loop.
            await asyncio.to_thread(resources.close)

    async def _serve(
        self, stages: _Stages, sock: socket.socket, ready: Callable[[Service], None] | None
    ) -> None:
        assert self._server is not None
        async with asyncio.TaskGroup() as tasks:
            # The account streams connect (and close their gaps) while start-up settles.
            background = [
                tasks.create_task(stream.run()) for stream in stages.account.streams.values()
            ]
            background += [tasks.create_task(stream.run()) for stream in stages.price_streams]
            if not await self._unless_stopped(self._settle_last_run(stages)):
                logger.warning(
                    "stopped during start-up; unfinished orders settle on the next start"
                )
                for task in background:
                    task.cancel()
                return
            # What start-up built lives as long as the bot: keep it out of every collection.
            # Now, before any strategy code runs: the full collection holds the interpreter
            # lock for tens of milliseconds (more on a busy host), and a strategy call in
            # flight then (a signal a crash left, queued again; a message the broker
            # redelivers) overran its time budget and was journaled failed, never traded.
            gc.collect()
            gc.freeze()
            await stages.pipeline.start_strategies()
            gc.freeze()  # what on_start built (a model, a cache) too: frozen, not collected
            # The lanes start after every strategy's on_start: what start-up queued (signals
            # left unfinished, fill hooks due, fills the gap-fill booked) waits for them.
            background.append(tasks.create_task(stages.pipeline.run()))
            background.append(tasks.create_task(stages.pipeline.run_timers()))
            background += [tasks.create_task(stages.reconciler.run(key)) for key in stages.venues]
            background.append(tasks.create_task(stages.keys.run()))
            sources = [tasks.create_task(source.run()) for source in stages.sources]
            background += sources
            if stages.control is not None:
                background.append(tasks.create_task(stages.control.run()))
            self._on_hangup = stages.keys.wake
            # Read while the socket is open: a stop (SIGTERM, Ctrl-C) that comes as the server
            # starts closes it before the wait below sees the server started.
            port = sock.getsockname()[1]
            serving = tasks.create_task(self._server.serve(sockets=[sock]))
            while not self._server.started and not serving.done():  # noqa: ASYNC110 - uvicorn exposes only a flag
                await asyncio.sleep(0.01)
            if self._server.started and not self._server.should_exit:
                self.http_port = port
                logger.info(
                    "bot ready: {env}, webhooks on {url}",
                    env=self.settings.environment,
                    url=http_url(self.settings.http.host, self.http_port),
                )
                if ready is not None:
                    ready(self)
            await serving
            # Every source stops taking signals before the drain, or an MQTT stream would keep
            # it busy to its limit: a message not journaled yet stays unacknowledged in the
            # broker's session and comes again on the next start (one cut off in its journal
            # write is a duplicate then, resumed from the journal). Awaited, so the drain starts
            # with every source disconnected. The control topic is no signal source and listens
            # on: with the HTTP server gone, it is the only way a halt still reaches the drain.
            for task in sources:
                task.cancel()
            await asyncio.gather(*sources, return_exceptions=True)
            logger.info(
                "HTTP server and signal sources stopped; draining {n} queued signals",
                n=stages.pipeline.queued,
            )
            try:
                await asyncio.wait_for(stages.pipeline.drain(), self._drain_timeout_s)
            except TimeoutError:
                logger.warning("drain timed out; unfinished signals resume on the next start")
            for task in background:
                task.cancel()
        logger.info("bot stopped")

    async def _refuse_bad_keys(self, venues: Mapping[str, BybitVenue]) -> list[KeyAudit]:
        """Audit every key in use; refuse to start while one is refused or cannot be asked,
        or two are keys of one account. Returns the audits."""
        audits = await self._audit_keys(venues)
        for audit in audits:
            log = logger.info if audit.verdict is Verdict.OK else logger.bind(notify="key").warning
            row = audit.row()
            # `reason` is a field of --log-json's line as well as of the message: the
            # separator belongs to the message alone.
            log(
                "key {key} ({env}): {verdict}; permissions {permissions}, IP binding "
                "{ip_binding}, expires {expiry}" + ("; {reason}" if audit.reason else ""),
                **{name: value for name, value in row.items() if name != "reason"},
                env=audit.environment.value,
                reason=audit.reason,
            )
        refused = [audit for audit in audits if not audit.verdict.usable]
        if refused:
            raise ConfigError(
                "refusing to start: "
                + "; ".join(f"key {a.key} is {a.verdict.value}: {a.reason}" for a in refused)
                + " (`bot keys check` shows every key)"
            )
        shared = one_account(audits)
        if shared is not None:
            raise ConfigError(f"refusing to start: {shared}")
        return audits

    async def _audit_keys(self, venues: Mapping[str, BybitVenue]) -> list[KeyAudit]:
        """Every key's audit. A key the venue did not answer about is asked again, with
        growing waits, for up to `venue.start_wait_s`: a venue in maintenance or a network
        still coming up at boot delays the start instead of stopping it. A key refused stops
        the waiting at once: nothing the venue says later would start the bot."""
        users = strategies_by_key(self.settings)

        async def audit(names: Sequence[str]) -> dict[str, KeyAudit]:
            audits = await asyncio.gather(
                *(
                    audit_key(name, venues[name].environment, users.get(name, ()), venues[name])
                    for name in names
                )
            )
            return dict(zip(names, audits, strict=True))

        audits = await audit(list(venues))
        deadline = time.monotonic() + self.settings.venue.start_wait_s
        wait = _FIRST_KEY_CHECK_WAIT_S
        while True:
            unanswered = [n for n, a in audits.items() if a.verdict is Verdict.UNREACHABLE]
            refused = any(a.verdict is Verdict.REFUSED for a in audits.values())
            left = deadline - time.monotonic()
            if not unanswered or refused or left <= 0:
                return list(audits.values())
            pause = min(wait, left)
            logger.warning(
                "the venue did not answer the check of key {keys} ({reason}); asking again "
                "in {pause:.0f} s, for {left:.0f} s more before refusing to start "
                "(venue.start_wait_s)",
                keys=", ".join(unanswered),
                reason=audits[unanswered[0]].reason,
                pause=pause,
                left=left,
            )
            await asyncio.sleep(pause)
            wait = min(wait * 2, _LONGEST_KEY_CHECK_WAIT_S)
            audits.update(await audit(unanswered))

    async def _refuse_hedge_mode(self, venues: Mapping[str, BybitVenue]) -> None:
        """Orders carry positionIdx 0: every key's account must be in one-way mode."""
        for key_name, venue in venues.items():
            try:
                hedged = await venue.hedge_mode_symbols(self.settings.risk.symbols)
            except VenueError as exc:
                logger.warning(
                    "could not read the position mode of key {key}: {error}",
                    key=key_name,
                    error=str(exc),
                )
                continue
            if hedged:
                raise ConfigError(
                    f"the account of key {key_name} trades {', '.join(hedged)} in hedge mode; "
                    "this bot places one-way orders (positionIdx 0). Switch the account to "
                    "one-way mode (Bybit: Derivatives settings, Position Mode: One-Way, or "
                    "POST /v5/position/switch-mode with mode 0) and start again"
                )

    async def _unless_stopped(self, work: Coroutine[Any, Any, None]) -> bool:
        """Run a start-up step unless a stop comes first (False then: the step is cancelled)."""
        step = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({step, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if step.done():
            step.result()
            return True
        step.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await step
        return False

    async def _check_accounts(self, stages: _Stages) -> None:
        """Refuse to start with a key that fails its audit or an account in hedge mode; the
        key guard learns each key's account (a rotated key must be of the same one)."""
        stages.keys.remember_accounts(await self._refuse_bad_keys(stages.venues))
        await self._refuse_hedge_mode(stages.venues)

    async def _settle_last_run(self, stages: _Stages) -> None:
        """Every order a previous run left unfinished is settled with the venue (and sent if
        it never left) before the first new signal, and the fills of those the venue shows
        filled are in the books, as is what the venue did while the bot was down; then
        unfinished signals run again in their original order."""
        journal = self.journal
        assert journal is not None
        unfinished: dict[str, list[str]] = {key: [] for key in stages.venues}
        for record in await journal.call(journal.unfinished_orders):
            unfinished.setdefault(record.request.key_name, []).append(record.request.order_link_id)
        # What the venue did while the bot was down goes into the books first: a reduce-only
        # order a crash left unsent is judged by its position, and what runs next (the signals
        # left unfinished, then new ones) is sized from them. Each key's stream closes its gap
        # by REST as it connects (it must: what happens between a read and the subscription
        # would be lost), so that read is the start's, awaited for a moment: a second read of
        # every key's orders, positions, wallet and fills came in the same second as the
        # stream's, spending the address's request budget just before the first orders. A
        # key whose stream is not live by then, or whose stream's gap close missed a part (a
        # read refused or timed out), is caught up by REST now, not by the reconciliation
        # loop after the first signals have run.
        keeper = stages.account.keeper
        await _first_attempts(stages.account.streams.values(), _STREAM_START_WAIT_S)
        await asyncio.gather(
            *(
                keeper.close_gap(venue)
                for key, venue in stages.venues.items()
                if not (stages.account.live(key) and keeper.gap_closed(key))
            )
        )
        settled = await asyncio.gather(
            *(stages.executor.reconcile(key, limit=None, resend=True) for key in stages.venues)
        )
        if sum(settled):
            logger.info("reconciled {n} unfinished orders with the venue", n=sum(settled))
        await asyncio.gather(
            *(keeper.catch_up_settled(stages.venues[key], unfinished[key]) for key in stages.venues)
        )
        books = stages.account.projection.books()
        self._warn_of_removed_strategies(await journal.call(journal.unfinished_orders), books)
        self._warn_of_moved_strategies(books)
        await stages.kill_switch.resume_halt_work(books)
        await asyncio.gather(
            *(
                self._warn_of_unknown_orders(key, venue, keeper.open_orders_read(key))
                for key, venue in stages.venues.items()
            )
        )
        await stages.pipeline.recover()

    def _warn_of_removed_strategies(
        self, unfinished: Sequence[OrderRecord], books: Sequence[StrategyBook]
    ) -> None:
        """A strategy removed from the configuration leaves its orders and positions at the
        venue, which the bot no longer follows nor counts in its exposure: said at start-up,
        each strategy once."""
        left: dict[str, list[str]] = {}
        for record in unfinished:
            request = record.request
            if request.strategy not in self.settings.strategies:
                left.setdefault(request.strategy, []).append(
                    f"order {request.order_link_id} ({record.status.value})"
                )
        for book in books:
            if book.size and book.strategy not in {*self.settings.strategies, UNATTRIBUTED}:
                left.setdefault(book.strategy, []).append(
                    f"position {book.size.normalize():f} {book.symbol} on key {book.key_name}"
                )
        for strategy, what in left.items():
            logger.bind(notify="venue_error").warning(
                "strategy {strategy} is not configured, but the journal holds its {what}: the "
                "bot neither follows nor counts them in its exposure; configure it again and "
                "`bot halt --strategy {strategy} --cancel-open --flatten`, or close them at "
                "the venue",
                strategy=strategy,
                what=", ".join(what),
            )

    def _warn_of_moved_strategies(self, books: Sequence[StrategyBook]) -> None:
        """A strategy moved to another key leaves its positions on the key before, where its
        exits and flattens, which act on its own key, never close them: said at start-up.
        While the bot follows that key (another strategy trades on it) they count towards the
        strategy's exposure limits (`restored_ledger`); else they are followed by nothing."""
        strategies = self.settings.strategies
        followed = {strategy.key for strategy in strategies.values()}
        for book in books:
            strategy = strategies.get(book.strategy)
            if not book.size or strategy is None or book.key_name == strategy.key:
                continue
            counted = (
                "it counts towards the strategy's exposure limits"
                if book.key_name in followed
                else "no strategy trades on that key now, so the bot neither follows it nor "
                "counts it in the strategy's exposure"
            )
            logger.bind(notify="venue_error").warning(
                "strategy {strategy} trades on key {key}, but holds a position of {size} "
                "{symbol} on key {before} from before: {counted}, and neither its exits nor "
                "`bot halt --flatten` close it; close it at the venue, or set "
                "strategies.{strategy}.key back to {before} until it is closed",
                strategy=book.strategy,
                key=strategy.key,
                size=f"{book.size.normalize():f}",
                symbol=book.symbol,
                before=book.key_name,
                counted=counted,
            )

    async def _warn_of_unknown_orders(
        self, key_name: str, venue: BybitVenue, read: Sequence[OrderEvent] | None
    ) -> None:
        """An order open at the venue under an orderLinkId of one of the key's strategies
        that the journal does not hold was placed by a bot on another journal (this one is
        new, or lost, or an older backup; or another instance trading this key, which a
        shared MQTT subscription allows): the bot neither follows it nor counts it in its
        exposure, and a new journal would otherwise start beside it without a word. Said at
        start-up, each order once; never cancelled here, since another instance's order is
        live. `read`: the key's open orders as the start-up's gap close read them (None:
        it could not, and they are asked for here)."""
        journal = self.journal
        assert journal is not None
        strategies = strategies_by_key(self.settings)[key_name]
        orders = read
        if orders is None:
            try:
                orders = await venue.open_orders()
            except VenueError as exc:
                logger.warning(
                    "could not list the open orders of key {key} for orders the journal does "
                    "not know: {error}",
                    key=key_name,
                    error=str(exc),
                )
                return
        for order in orders:
            named = strategies_named_by(order.order_link_id, strategies)
            if not named or await journal.call(journal.order, order.order_link_id) is not None:
                continue
            price = "" if order.venue_price is None else f" at {order.venue_price.normalize():f}"
            qty = "" if order.venue_qty is None else f" {order.venue_qty.normalize():f}"
            logger.bind(notify="venue_error").warning(
                "key {key} has an open order the journal does not know: {id} ({side}{qty} "
                "{symbol}{price}), an orderLinkId of strategy {strategy}, placed by a bot on "
                "another journal (this one new, lost, or an older backup; or another bot "
                "instance trading this key); the bot neither follows it nor counts it in its "
                "exposure: unless another instance placed it, cancel it at the venue, or stop "
                "and restore the journal that placed it",
                key=key_name,
                id=order.order_link_id,
                side=order.side.value if order.side is not None else "?",
                qty=qty,
                symbol=order.symbol or "?",
                price=price,
                strategy=" or ".join(named),
            )

    def _bind(self) -> socket.socket:
        """Bind the HTTP port here, so a port in use is a clear error (uvicorn would exit)."""
        host, port = self.settings.http.host, self.settings.http.port
        try:
            sock = tcp_listener(host, port)
        except OSError as exc:
            raise ConfigError(
                cannot_listen(
                    host,
                    port,
                    exc,
                    who="another bot",
                    host_option="--host or BOT_HTTP__HOST",
                    port_option="--port or BOT_HTTP__PORT",
                )
            ) from None
        sock.listen(2048)
        sock.setblocking(False)
        return sock

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """SIGTERM and SIGINT stop the bot; SIGHUP looks at the key secrets now."""
        loop = asyncio.get_running_loop()
        installed = []
        handlers = {
            signal.SIGTERM: self.request_stop,
            signal.SIGINT: self.request_stop,
            signal.SIGHUP: lambda: self._on_hangup(),
        }
        for sig, handler in handlers.items():
            try:
                loop.add_signal_handler(sig, handler)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):  # not the main thread (tests)
                pass
        try:
            yield
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            if installed:
                _ignore_hangups()  # removed, its handler leaves the default: ending the bot

    def _build(self, resources: ExitStack) -> _Stages:
        settings = self.settings
        # A bot already on this journal stops the start before anything runs; so does a
        # strategy plug-in that cannot load.
        resources.callback(lock_journal(settings.journal_path).close)
        # Before any plug-in runs: one that fails with a secret in its message is scrubbed.
        self._resolver.redact_early(secret_names(settings))
        strategies = {
            name: StrategySlot(
                name,
                load_strategy(name, config, settings.source),
                config.key,
                frozenset(config.sources),
            )
            for name, config in settings.strategies.items()
        }
        # Before the other stages, so that every event of the run reaches the operator.
        notifier = notify.start(
            settings.notify,
            self._resolver.optional(notify.NOTIFY_URLS_NAME),
            f"bybit-signal-bot ({settings.environment})",
        )
        if notifier is not None:
            resources.callback(notifier.close)  # after the stages: their last events go out
        # Before the journal: a key without its secret stops the start with nothing created.
        credentials = {
            key_name: self._resolver.credentials(key_name)
            for key_name in sorted({slot.key_name for slot in strategies.values()})
        }
        problem = same_api_key(credentials.values())
        if problem is not None:
            raise ConfigError(problem)
        if self._starts_simulator():  # a bad [sim] section too stops the start before it
            from bot.simulated import simulator_config

            simulator_config(settings)
        new = not settings.journal_path.exists()
        journal = Journal(settings.journal_path, synchronous=settings.journal_synchronous)
        resources.callback(journal.close)
        if new:  # said once made: a journal refused (its WAL left alone) never was
            logger.info("new journal at {path}", path=settings.journal_path.absolute())
        journal.claim_environment(settings.environment.value)
        self._journal_id = journal.identity()
        self.journal = journal
        journal.checkpoint_in_background()
        # The address's request count outlives the process (the journal's lock: one per dir).
        ip_requests = settings.state_dir / IP_REQUESTS_FILE
        try:
            SHARED_IP_GATE.remember(ip_requests)
        except OSError as exc:  # a directory, a pipe, a device, another user's file
            why = str(exc.strerror or exc).rstrip(".")
            raise ConfigError(
                f"cannot keep the venue's request times in {ip_requests}: {why}; it must be a "
                "regular file the bot's user can write (check its owner and mode, or remove "
                "it: the bot makes a new one)"
            ) from None
        resources.callback(SHARED_IP_GATE.forget)
        self.sim_url = self._venue_url(resources, journal)
        venue_health = VenueHealth()
        audit_log = AuditLog(settings.audit_dir, settings.audit)
        resources.callback(audit_log.close)  # after the venues (registered later) are closed
        # Every signed request: the audit log, the metrics, the readiness of the venue.
        observers = (audit_log.write, metrics.observe_venue_request, venue_health.observe)
        venues = {}
        for key_name, key_credentials in credentials.items():
            venue = open_venue(settings, key_credentials, self.sim_url, observers)
            resources.callback(venue.close)
            venues[key_name] = venue
        account = Account(journal, venues)
        for key_name, venue in venues.items():
            account.streams[key_name] = AccountStream(
                credentials[key_name],
                settings.keys[key_name].environment,
                account.keeper.apply,
                partial(account.keeper.close_gap, venue),
                sim_url=self.sim_url,
                observers=observers,
            )
        gate = self._risk_gate(journal, account, strategies)
        users = strategies_by_key(settings)
        executor = Executor(
            journal,
            venues,
            settings.execution,
            staleness=gate.stale_reason,
            stream_live=account.live,
            stream_connection=account.live_connection,
            order_changed=gate.ledger.follow,
            blocked=gate.block_reason,
            booked_qty=account.projection.booked_qty,
            closable_size=account.projection.closable_size,
            order_journaled=account.keeper.expect_order,
            order_identified=account.keeper.order_identified,
            stop_moving=lambda key_name, move: account.keeper.expect_level(
                key_name, move.symbol, "StopLoss", move.stop_loss
            ),
            leverage_cap=lambda key_name, symbol: gate.opening_leverage_cap(
                users.get(key_name, ()), symbol
            ),
            unjournaled=gate.withdraw,
        )
        account.keeper.follow_sends(executor.in_flight)
        account.on_order_update(executor.order_updated)
        account.on_position_update(executor.position_updated)
        account.on_position_closed(executor.position_closed)
        account.on_fill_booked(executor.fill_booked)
        account.on_order_update(gate.ledger.follow)
        account.on_fill_booked(gate.ledger.fill_booked)
        account.on_fill_applied(gate.fill_applied)  # a loss at its limit: REDUCING at once
        # One public price stream per environment the keys trade in, following the allowed
        # symbols from the start (and any other a signal asks about).
        price_streams = {
            environment: PriceStream(environment, sim_url=self.sim_url)
            for environment in sorted({settings.keys[key].environment for key in venues})
        }
        for stream in price_streams.values():
            stream.watch(settings.risk.symbols)
        market = MarketData(
            venues,
            account,
            journal,
            settings.venue.market_cache_s,
            price_streams={key: price_streams[settings.keys[key].environment] for key in venues},
        )
        runner = StrategyRunner()
        resources.callback(runner.close)
        for name, config in settings.strategies.items():
            runner.add(
                name, budget_s=config.time_budget_ms / 1000, max_failures=config.max_failures
            )
        pipeline = Pipeline(
            journal,
            strategies,
            gate,
            executor,
            market,
            runner,
            booked_qty=account.projection.booked_qty,
            strategy_size=account.projection.strategy_size,
        )
        account.on_fill_booked(pipeline.fill_booked)
        sources = self._signal_sources(journal, pipeline.submit)
        key_of = {name: slot.key_name for name, slot in strategies.items()}
        kill_switch = KillSwitch(
            gate,
            executor,
            journal,
            market,
            account,
            key_of,
            # Its intents are closes (reduce-only): they are judged without exposure prices.
            lambda intent, instrument, price: pipeline.decide(intent, instrument, price, {}),
        )

        # A signed command is acted on once, whichever way in it comes and however often,
        # across restarts too: the journal remembers it before it is acted on, and that it
        # was (one a crash cut short is taken once more).
        async def remember(digest: bytes, until: float, now: float, redelivered: bool) -> bool:
            return await journal.call(
                partial(journal.record_used_command, redelivered=redelivered), digest, until, now
            )

        async def acted(digest: bytes) -> None:
            await journal.call(journal.record_command_acted, digest)

        used = UsedSignatures(
            remembered=journal.used_commands(time.time(), carried_out=True),
            remember=remember,
            acted=acted,
        )
        control = self._mqtt_control(kill_switch, used)
        readiness = Readiness(
            journal,
            venues,
            executor.disabled_reason,
            venue_health,
            lambda key: account.streams[key].down_for(),
            settings.venue.unready_after_s,
            SHARED_IP_GATE.paused_for,
        )
        state_metrics = StateCollector(journal, account, gate, market, key_of)
        metrics.REGISTRY.register(state_metrics)
        resources.callback(metrics.REGISTRY.unregister, state_metrics)
        app = create_app(
            [router for source in sources if (router := source.router()) is not None],
            partial(
                self._health,
                readiness,
                pipeline,
                Coalesced(partial(asyncio.to_thread, journal.counts)),
                account,
                sources,
                list(price_streams.values()),
                control,
                kill_switch,
            ),
            self._admin_routes(kill_switch, used),
            refresh_metrics=state_metrics.refresh,
        )
        reconciler = Reconciler(executor, journal, venues, settings.execution, account)

        def swap(fresh: ApiCredentials) -> None:
            venues[fresh.name].rotate(fresh)
            account.streams[fresh.name].rotate(fresh)

        keys = KeyGuard(
            credentials,
            resolve=self._resolver.credentials,
            audit=partial(audit_credentials, settings, sim_url=self.sim_url, observers=observers),
            swap=swap,
            switch_off=lambda name, reason: executor.disable_key(name, KeyFatalError(reason)),
            introduce=self._introduce_to_simulator,
        )
        return _Stages(
            pipeline=pipeline,
            executor=executor,
            reconciler=reconciler,
            account=account,
            venues=venues,
            app=app,
            keys=keys,
            sources=sources,
            control=control,
            price_streams=list(price_streams.values()),
            kill_switch=kill_switch,
        )

    def _signal_sources(self, journal: Journal, sink: SignalSink) -> list[SignalSource]:
        """Every configured way in for signals: refusals journaled, status readable."""

        def rejected(source: str, kind: str, reason: str, where: str) -> None:
            journal.submit(journal.record_rejection, source, kind, reason, where)

        async def status(source: str, signal_id: str) -> dict[str, Any] | None:
            rows = await journal.call(journal.trace, 1, (source, signal_id))
            if not rows:
                return None
            first = rows[0]
            return {
                "source": first.source,
                "id": first.signal_id,
                "symbol": first.symbol,
                "received_at": first.received_at,
                "decisions": [
                    {k: v for k, v in row.as_dict().items() if k not in ("source", "signal_id")}
                    for row in rows
                ],
            }

        resolver = self._resolver

        async def note_once(note: str) -> bool:
            return await journal.call(journal.note_once, note)

        for unheard in unheard_sources(self.settings):
            logger.warning("{line}", line=unheard)
        context = SourceContext(
            sink, resolver.get, resolver.optional, rejected, status, note_once=note_once
        )
        try:
            return build_sources(self.settings.sources, self.settings.mqtt, context)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def _mqtt_control(self, kill_switch: KillSwitch, used: UsedSignatures) -> MqttControl | None:
        """The kill switch on `<mqtt.control_topic>/halt|resume`, if configured."""
        mqtt = self.settings.mqtt
        if not (mqtt.enabled and mqtt.control_topic):
            return None
        try:
            secret = self._resolver.get(ADMIN_SECRET_NAME)
        except MissingSecretError as exc:
            raise ConfigError(f"mqtt.control_topic needs the admin secret: {exc}") from None
        states = {"halt": TradingState.HALTED, "resume": TradingState.ACTIVE}

        async def apply(command: str, body: bytes) -> str:
            if command not in states:
                raise ValueError(f"unknown command {command!r}: the topic ends in halt or resume")
            entered, parsed = parse_command(
                body,
                states[command],
                self.settings.strategies,
                self.settings.environment,
                self._journal_id,
            )
            report = await kill_switch.enter(
                entered, cancel_open=parsed.cancel_open, flatten=parsed.flatten
            )
            return json.dumps(report)

        password = self._resolver.optional(MQTT_PASSWORD_NAME)
        return MqttControl(mqtt, apply, secret=secret, password=password, used=used)

    def _admin_routes(self, kill_switch: KillSwitch, used: UsedSignatures) -> AdminRoutes | None:
        """The kill switch's routes, if an admin secret exists (generated in `sim`)."""
        try:
            secret = self._resolver.get(ADMIN_SECRET_NAME)
        except UnusableSecretError:
            raise  # set, but broken: the kill switch must not go quietly
        except MissingSecretError:
            if self._resolver.empty_in_environment(ADMIN_SECRET_NAME):
                logger.warning(
                    "{name} is in the environment, empty, and taken as not set: the /admin "
                    "routes are off (`bot halt` cannot reach this bot); set it, or unset it",
                    name=ADMIN_SECRET_NAME,
                )
            else:
                logger.info("no {name}: the /admin routes are off", name=ADMIN_SECRET_NAME)
            return None

        async def enter(state: ScopeState, command: AdminCommand) -> dict[str, Any]:
            return await kill_switch.enter(
                state, cancel_open=command.cancel_open, flatten=command.flatten
            )

        return AdminRoutes(
            secret,
            enter,
            self.settings.strategies,
            used=used,
            environment=self.settings.environment,
            journal_id=self._journal_id,
        )

    def _risk_gate(
        self, journal: Journal, account: Account, strategies: Mapping[str, StrategySlot]
    ) -> RiskGate:
        """The gate, its exposure read from the account's books, with the orders a previous
        run left in flight reserved again and today's orders counted."""
        key_of = {name: slot.key_name for name, slot in strategies.items()}
        ledger = restored_ledger(journal, account.projection, key_of, journal.unfinished_orders())
        overrides = {name: config.risk for name, config in self.settings.strategies.items()}
        for name, override in overrides.items():
            for overruled in self.settings.risk.overruled_values(override):
                logger.warning(
                    "strategies.{name}.risk.{overruled}: a strategy's limits can only tighten "
                    "[risk]'s; change [risk] too to loosen it",
                    name=name,
                    overruled=overruled,
                )
        gate = RiskGate(
            self.settings.risk,
            overrides,
            ledger,
            pnl_today=account.projection.pnl_today,
            last_loss_at=account.projection.last_loss_at,
            state_entered=lambda state: _journal_state(journal, state),
        )
        for strategy, created_at in journal.order_times_since(counting_since(utc_now())):
            gate.counts.count(strategy, created_at)  # a restart resets neither day nor minute
        for state in journal.trading_states():  # a halt survives a restart
            gate.set_state(state)
        return gate

    def _venue_url(self, resources: ExitStack, journal: Journal) -> str:
        """The simulator's URL in `sim` (started here unless configured), else ""."""
        if not self._starts_simulator():
            return (
                self.settings.venue.sim_url if self.settings.environment is Environment.SIM else ""
            )
        from bot.simulated import start_simulator  # only `sim` without a sim_url needs it

        server = start_simulator(self.settings, self._resolver, journal)
        resources.callback(server.stop)
        self._simulator = server.exchange
        return server.url

    def _simulator_descriptors(self) -> int:
        """The most descriptors the in-process simulator's clients may hold (0 if none runs
        here): its HTTP and WebSocket connections share this process's limit."""
        if not self._starts_simulator():
            return 0
        from bot.sim import server, websocket  # only `sim` without a sim_url loads them

        return server.MAX_CONNECTIONS + websocket.MAX_CONNECTIONS

    def _starts_simulator(self) -> bool:
        """Whether this run starts its own simulator: `sim` without a `venue.sim_url`."""
        return self.settings.environment is Environment.SIM and not self.settings.venue.sim_url

    def _introduce_to_simulator(self, old: ApiCredentials, new: ApiCredentials) -> None:
        """A key rotated in `sim` becomes a second key of the same account in the bot's own
        simulator, as a key created on Bybit would be (an external simulator: see `bot sim`)."""
        if self._simulator is None or self._simulator.account_spec(new.api_key.get_secret_value()):
            return
        spec = self._simulator.account_spec(old.api_key.get_secret_value())
        if spec is None:
            return
        self._simulator.add_account(
            spec.model_copy(
                update={
                    "api_key": new.api_key.get_secret_value(),
                    "api_secret": new.api_secret,
                    "account_of": spec.account_of or spec.api_key,
                }
            )
        )

    async def _health(
        self,
        readiness: Readiness,
        pipeline: Pipeline,
        journal_counts: Coalesced[dict[str, int]],
        account: Account,
        sources: list[SignalSource],
        price_streams: list[PriceStream],
        control: MqttControl | None,
        kill_switch: KillSwitch,
    ) -> dict[str, Any]:
        """Liveness, readiness with each check's verdict, and a short status."""
        signal_sources = {source.name: source.health() for source in sources}
        checks = await readiness.checks(signal_sources)
        # The journal's counts only when it answers: a locked one must not hold the answer.
        counts = await journal_counts() if checks["journal"].ok else None
        return {
            **body_of(checks),
            "environment": self.settings.environment.value,
            # Which journal it keeps: `bot risk status` shows a bot's states only for its own.
            "journal_id": self._journal_id,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "queued_signals": pipeline.queued,
            "journal": counts,
            # A key off its stream is followed by REST reconciliation: degraded, not down.
            "account_streams": {
                key: "live" if account.live(key) else "down (REST reconciliation)"
                for key in account.streams
            },
            # Prices come from the venue's REST API while a price stream is down: degraded.
            "price_streams": {
                stream.name: "live" if stream.live else "down (REST prices)"
                for stream in price_streams
            },
            "signal_sources": signal_sources,
            # The states in force, which the journal may lack (a halt entered while it could
            # not write): `bot risk status` asks for them, not to show such a halt as ACTIVE.
            "trading_states": {
                state.scope: {
                    "state": state.state.value,
                    "reason": state.reason,
                    "since": state.since.isoformat(),
                    "automatic": state.automatic,
                    "journaled": journaled,
                }
                for state, journaled in kill_switch.states()
            },
            # Halt and resume also come over HTTP (bot halt): degraded, not down.
            **(
                {}
                if control is None
                else {
                    "mqtt_control": "listening"
                    if control.connected
                    else "down (commands over HTTP only)"
                }
            ),
        }


async def _first_attempts(streams: Iterable[SupervisedStream], wait_s: float) -> None:
    """Wait up to `wait_s` for each stream's first connection to be live or to fail."""
    waits = [asyncio.ensure_future(stream.first_attempt()) for stream in streams]
    if not waits:
        return
    try:
        await asyncio.wait(waits, timeout=wait_s)
    finally:
        for wait in waits:
            wait.cancel()


async def _to_its_end(work: Coroutine[Any, Any, T]) -> T:
    """`work`'s result; cancelled meanwhile (Ctrl-C during start-up), it still runs to its end
    before the cancellation goes on. A thread's work cannot be stopped: cancelled at once, the
    start-up's clean-up would close what its thread is still opening (the journal, the
    simulator), which then went on unlocked and unclosed (a crash at exit, once in five)."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        while not task.done():  # a second Ctrl-C waits too
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({task})
        raise


def _ignore_hangups() -> None:
    """SIGHUP asks a running bot to look at its key secrets now (`_stop_on_signals`); while
    no handler of the bot's takes it, its default action would end the bot instead: a key
    rotated during a start-up or a stop. Only the main thread may set it (tests run the
    service in others)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _journal_state(journal: Journal, state: ScopeState) -> None:
    """A state a risk rule entered: announced, and queued in the journal (the gate decides
    synchronously; the write follows on the journal's thread)."""
    announce_state(state)
    journal.submit(journal.record_trading_state, state)
