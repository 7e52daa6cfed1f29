"""Run a history through the real bot, against the simulator, on a virtual clock.

Everything is the production path: the bot is `bot.service.Service` (webhook, journal,
strategies, risk gate, executor, account stream), in this process; the venue is the
simulator, which the bot reaches through pybit over loopback. Only the calendar is replayed:
a `VirtualClock` (`bot.clock`) jumps to each record's time, so signals are fresh when they
arrive and the risk gate counts minutes and UTC days as they were.

One record at a time, in time order: a signal is signed and POSTed to the source's webhook, a
price point is set on the simulator (which fills crossed limit orders and triggers stops);
then the driver waits until the bot has finished with it, that is until the journal holds no
unprocessed signal, the simulator no pending fill, and the books every fill the simulator made.
The next record therefore meets the account, the limits and the prices the last one left.

The replay's own settings differ from the configuration only where a replay must: its own
state directory (never the configured journal), a free loopback port, the simulator started
here with the first price points and Bybit's per-second limits lifted (they bind wall-clock
seconds, and a replay packs a month into a few of them: the gate's own limits, on the virtual
clock, still apply), orders reaching the simulator's matching engine at once whatever the
configuration sets (its `market_fill_delay_ms` is wall-clock time too), prices read fresh for
every signal (no `market_cache_s`: the next record may be hours later), no MQTT, and no
notifications (a month of replayed fills is not news for the operator's phone).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import requests
import uvloop
from pydantic import SecretStr

from bot import clock
from bot.config import BotSettings, ConfigError, Environment, secret_resolver
from bot.journal import Journal
from bot.replay.history import History, HistoryError, PricePoint, Record, SignalRecord
from bot.secrets import split_secrets, webhook_secret_name
from bot.service import Service
from bot.sim import DEFAULT_RATE_LIMITS_PER_S, SimExchange
from bot.simulated import start_simulator
from signals.voiceofchain import SIGNATURE_HEADER, sign

__all__ = ["Answer", "ReplayError", "ReplayRun", "check_replayable", "replay", "replay_settings"]

#: How long one record may take the bot (wall clock) before the replay gives up on it.
SETTLE_TIMEOUT_S: Final = 30.0
#: The virtual clock starts this long before the first record: start-up takes a little
#: (wall-clock) time, and the first signal must not arrive already aged by it.
_LEAD: Final = timedelta(minutes=1)
_POLL_S: Final = 0.001
_SEND_TIMEOUT_S: Final = 10.0
_UNLIMITED: Final = 1_000_000_000


class ReplayError(Exception):
    """The replay could not finish; the message says where and why."""


@dataclass
class Answer:
    """The webhook's answer to one signal line."""

    line: int
    signal_id: str
    status: int
    detail: str


@dataclass
class ReplayRun:
    """What a finished replay leaves for its report: the journal, and what the driver saw."""

    journal_path: Path
    start_prices: dict[str, Decimal]
    answers: list[Answer] = field(default_factory=list)
    startup_s: float = 0.0
    elapsed_s: float = 0.0
    #: The funding the keys' accounts paid at the 8-hour settlements they held positions
    #: through, net of what they received (USDT): the venue's, per position, not per strategy.
    funding_paid_usdt: Decimal = Decimal(0)


def replay(
    settings: BotSettings,
    history: History,
    *,
    state_dir: Path,
    secrets_dir: Path,
    source: str,
    on_record: Callable[[Record], None] = lambda record: None,
) -> ReplayRun:
    """Replay `history` (its signals from `source`) with `settings` into a fresh journal in
    `state_dir`; `on_record` hears of each record once the bot has finished with it."""
    replaying = replay_settings(settings, state_dir, source)
    started = time.monotonic()
    virtual = clock.VirtualClock(history.start - _LEAD)
    with clock.installed(virtual), ExitStack() as resources:
        resolver = secret_resolver(replaying, secrets_dir)
        server = start_simulator(replaying, resolver)
        resources.callback(server.stop)
        _open_at_first_prices(server.exchange, history)
        start_prices = server.exchange.prices()
        venue = replaying.venue.model_copy(update={"sim_url": server.url})
        bot = replaying.model_copy(update={"venue": venue})
        secret = split_secrets(resolver.get(webhook_secret_name(source)))[0]
        driver = _Driver(history, virtual, server.exchange, bot.journal_path, secret, on_record)
        service = Service(bot, secrets_dir=secrets_dir)
        try:
            uvloop.run(service.run(ready=lambda ready: driver.start(ready, source, started)))
        finally:
            driver.stop()
        driver.raise_failure()
        return ReplayRun(
            journal_path=bot.journal_path,
            start_prices=start_prices,
            answers=driver.answers,
            startup_s=driver.startup_s,
            elapsed_s=driver.elapsed_s,
            funding_paid_usdt=server.exchange.funding_paid(),
        )


def check_replayable(settings: BotSettings, source: str) -> None:
    """ConfigError unless `settings` can replay signals of `source`: a `sim` configuration
    (a replay never trades anywhere else) with that webhook source enabled."""
    if settings.environment is not Environment.SIM:
        raise ConfigError(
            f"bot replay trades against the simulator only; the configuration's environment is "
            f'{settings.environment}: use a configuration with environment = "sim"'
        )
    settings.require_source(source)


def replay_settings(settings: BotSettings, state_dir: Path, source: str) -> BotSettings:
    """The configuration as a replay runs it (see the module's docstring for each change)."""
    check_replayable(settings, source)
    receiving = settings.sources[source]
    unthrottled = receiving.model_copy(update={"requests_per_s": _UNLIMITED, "burst": _UNLIMITED})
    limits = {**DEFAULT_RATE_LIMITS_PER_S, **settings.sim.get("rate_limits_per_s", {})}
    return settings.model_copy(
        update={
            "state_dir": state_dir,
            "journal_synchronous": "NORMAL",  # a replay's journal is rebuilt by replaying again
            "http": settings.http.model_copy(update={"host": "127.0.0.1", "port": 0}),
            "venue": settings.venue.model_copy(update={"sim_url": "", "market_cache_s": 0.0}),
            "mqtt": settings.mqtt.model_copy(update={"enabled": False, "control_topic": ""}),
            "notify": settings.notify.model_copy(update={"events": ()}),
            "sources": {**settings.sources, source: unthrottled},
            "sim": {
                **settings.sim,
                "rate_limits_per_s": dict.fromkeys(limits, _UNLIMITED),
                "other_private_per_s": _UNLIMITED,
                "ip_requests_per_5s": _UNLIMITED,
                "faults": {},
                "market_fill_delay_ms": 0,
            },
        }
    )


def _open_at_first_prices(exchange: SimExchange, history: History) -> None:
    """The venue starts where the history does: each symbol at its first price point. Every
    later one is checked too (a price above the instrument's maxPrice), before the replay
    starts rather than halfway through it."""
    listed = exchange.config.instruments
    for symbol, (line, price) in history.first_prices().items():
        if symbol not in listed:
            raise HistoryError(
                f"{history.path}:{line}: {symbol} is not listed on the simulator "
                f"(it lists {', '.join(sorted(listed))}; [sim.instruments] adds more)"
            )
        try:
            exchange.set_prices({symbol: price})
        except ValueError as exc:
            raise HistoryError(f"{history.path}:{line}: {exc}") from None
    for point in history.price_points:
        try:
            exchange.check_prices(point.prices)
        except ValueError as exc:
            raise HistoryError(f"{history.path}:{point.line}: {exc}") from None


class _Driver:
    """Feeds the records to the running bot from a thread of its own, one at a time."""

    def __init__(
        self,
        history: History,
        virtual: clock.VirtualClock,
        exchange: SimExchange,
        journal_path: Path,
        secret: SecretStr,
        on_record: Callable[[Record], None],
    ) -> None:
        self._history = history
        self._clock = virtual
        self._exchange = exchange
        self._journal_path = journal_path
        self._secret = secret
        self._on_record = on_record
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._error: Exception | None = None
        self._url = ""
        self._hand_over: Callable[[], None] = lambda: None
        self.answers: list[Answer] = []
        self.startup_s = 0.0
        self.elapsed_s = 0.0

    def start(self, service: Service, source: str, started: float) -> None:
        """The service is ready (called on its event loop): start feeding it."""
        self.startup_s = time.monotonic() - started
        self._url = f"http://127.0.0.1:{service.http_port}/webhooks/{source}"
        if service.journal is not None:
            self._hand_over = service.journal.write_deferred
        loop = asyncio.get_running_loop()

        def stop_service() -> None:
            with contextlib.suppress(RuntimeError):  # its loop is closed: it stopped already
                loop.call_soon_threadsafe(service.request_stop)

        self._thread = threading.Thread(
            target=self._run, args=(stop_service,), name="replay-driver", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """The service has stopped (however): the driver stops too, and is waited for."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()

    def raise_failure(self) -> None:
        """Raise what kept the driver from replaying every record, if anything did."""
        if self._thread is None:
            raise ReplayError("the bot stopped before it was ready; see its log")
        if self._error is not None:
            raise self._error

    def _run(self, stop_service: Callable[[], None]) -> None:
        try:
            self._replay_all()
        except Exception as exc:  # raised by raise_failure(), on the main thread
            self._error = exc
        finally:
            stop_service()

    def _replay_all(self) -> None:
        with self._session() as session, self._journal() as journal:
            began = time.monotonic()
            for record in self._history.records:
                if self._stopping.is_set():
                    raise ReplayError("the bot stopped before the replay finished")
                self._clock.advance_to(record.ts)
                if isinstance(record, PricePoint):
                    self._exchange.set_prices(record.prices)
                else:
                    self._send(session, record)
                self._settle(journal, record)
                self._on_record(record)
            self.elapsed_s = time.monotonic() - began

    def _send(self, session: requests.Session, record: SignalRecord) -> None:
        signature = sign(self._secret.get_secret_value(), record.body, int(time.time()))
        try:
            answer = session.post(
                self._url,
                data=record.body,
                headers={"Content-Type": "application/json", SIGNATURE_HEADER: signature},
                timeout=_SEND_TIMEOUT_S,
            )
        except requests.RequestException as exc:
            raise ReplayError(
                f"the bot stopped taking signals at {self._history.path}:{record.line} "
                f"({type(exc).__name__}): interrupted, or see its log"
            ) from None
        detail = "" if answer.status_code in (200, 202) else _detail(answer)
        self.answers.append(Answer(record.line, record.signal.id, answer.status_code, detail))

    def _settle(self, journal: Journal, record: Record) -> None:
        """Wait until the bot has finished with `record` (see the module's docstring)."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while not self._settled(journal):
            self._hand_over()
            if self._stopping.is_set():
                raise ReplayError("the bot stopped before the replay finished")
            if time.monotonic() > deadline:
                raise ReplayError(
                    f"{self._history.path}:{record.line}: the bot had not finished with this "
                    f"record after {SETTLE_TIMEOUT_S:g} s (wall clock); see its log"
                )
            time.sleep(_POLL_S)

    def _settled(self, journal: Journal) -> bool:
        # The simulator first: it answers from memory, the journal with queries, which take
        # the GIL from the bot being waited for.
        stats = self._exchange.stats()
        if stats["pending_events"] != 0 or journal.unprocessed_signals():
            return False
        return bool(stats["fills"] == journal.execution_count())  # funding is no fill

    @contextmanager
    def _session(self) -> Iterator[requests.Session]:
        with requests.Session() as session:
            session.trust_env = False  # loopback: never through a proxy from the environment
            yield session

    @contextmanager
    def _journal(self) -> Iterator[Journal]:
        journal = Journal(self._journal_path, read_only=True)
        try:
            yield journal
        finally:
            journal.close()


def _detail(answer: requests.Response) -> str:
    """What the webhook said about a refused signal, in one line."""
    try:
        body: Any = answer.json()
    except ValueError:
        return answer.text[:200]
    return str(body.get("detail") or body) if isinstance(body, dict) else str(body)
