"""The plug-in API's hooks and guard rails through the pipeline, against the simulator.

Signal-driven cases run the pipeline's real stages in-process (as tests/bot/test_pipeline.py
does), so the risk gate can be asked directly; fills and timers need the account stream, so
those run the real bot (tests/bot/test_service.py's RunningBot) with these plug-ins.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
import requests
from pybit.unified_trading import HTTP

from bot import pipeline as pipeline_module
from bot.account import Account
from bot.execution.config import ExecutionConfig
from bot.execution.executor import Executor
from bot.execution.ids import order_link_id
from bot.journal import DecisionRow, Journal
from bot.logs import logger
from bot.market import MarketData
from bot.messages import (
    Instrument,
    OrderEvent,
    OrderIntent,
    OrderStatus,
    RiskDecision,
    Side,
    Signal,
    utc_now,
)
from bot.pipeline import TIMER_SOURCE, Pipeline, StrategySlot, StrategyStartError
from bot.risk.config import RiskConfig
from bot.risk.gate import RiskGate
from bot.risk.states import HaltWork, ScopeState, TradingState
from bot.runner import StrategyRunner
from bot.sim import SimExchange, SimFaults
from bot.sim.params import AmendOrderParams, PositionQueryParams
from bot.venue.bybit import BybitVenue
from strategies.base import (
    Fill,
    OrderRejection,
    Strategy,
    StrategyContext,
    StrategyOutput,
    StrategyParams,
)
from strategies.follow import Follow
from strategies.ladder import TakeProfitLadder
from tests.bot.test_admin import admin
from tests.bot.test_pipeline import signal
from tests.bot.test_service import RunningBot
from tests.bot.test_service import signal as posted
from tests.conftest import client_orders, sim_venues, wait_for
from tests.factories import approve, make_intent

T = TypeVar("T")

#: What the plug-ins below heard, by strategy name (they run on their own threads).
HEARD: dict[str, list[Any]] = defaultdict(list)


@pytest.fixture(autouse=True)
def _fresh_ears() -> Iterator[None]:
    HEARD.clear()
    yield
    HEARD.clear()


def small_buy(strategy: Strategy, item: Signal, context: StrategyContext, **fields: Any) -> Any:
    """A 0.001 BTC market buy for `item` (about 97 USDT)."""
    return strategy.intent(item, context, side=Side.BUY, qty=Decimal("0.001"), **fields)


class Silent(Strategy):
    def on_signal(self, signal: Signal, context: StrategyContext) -> StrategyOutput:
        return []


class ReturnsNone(Strategy):
    def on_signal(self, signal: Signal, context: StrategyContext) -> StrategyOutput:
        return None  # type: ignore[return-value]  # a plug-in's mistake


class Exploding(Strategy):
    def on_signal(self, signal: Signal, context: StrategyContext) -> StrategyOutput:
        raise ZeroDivisionError("plug-in bug")


def compute_for(seconds: float) -> None:
    """Burn CPU on the calling thread (a strategy's own work, which its budget counts)."""
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


class Slow(Strategy):
    def on_signal(self, signal: Signal, context: StrategyContext) -> StrategyOutput:
        compute_for(0.3)
        return self.decline("too late to matter")


class Trojan(OrderIntent):
    """An intent whose reading runs the plug-in's code: the bot reads it to validate it."""

    def __iter__(self) -> Any:
        if self.signal_id.startswith("exit"):
            raise SystemExit("the plug-in's exit")
        compute_for(0.3)
        return super().__iter__()


class ReturnsATrojan(Strategy):
    def on_signal(self, signal: Signal, context: StrategyContext) -> StrategyOutput:
        return [Trojan.model_validate(dict(small_buy(self, signal, context)))]


class Deliberate(Strategy):
    """Thinks for 50 ms (well within its budget), then buys a little."""

    def on_signal(self, signal: Signal, context: StrategyContext) -> StrategyOutput:
        time.sleep(0.05)
        return [self.intent(signal, context, side=Side.BUY, qty=context.instrument.min_order_qty)]


class GreedyThenModest(Strategy):
    """Asks for too much, then, told why, for too much again and for a little."""

    def on_signal(self, signal: Signal, context: StrategyContext) -> StrategyOutput:
        return [self.intent(signal, context, side=Side.BUY, qty=Decimal(1))]  # ~97000 USDT

    def on_order_rejected(
        self, rejection: OrderRejection, signal: Signal, context: StrategyContext
    ) -> StrategyOutput:
        HEARD[self.name].append(rejection)
        return [
            self.intent(signal, context, side=Side.BUY, qty=Decimal(1), leg=1),
            small_buy(self, signal, context, leg=2),
        ]


class RetriesTheSameLeg(GreedyThenModest):
    """Asks for too much, then, told why, for less under the same leg (`intent`'s default)."""

    def on_order_rejected(
        self, rejection: OrderRejection, signal: Signal, context: StrategyContext
    ) -> StrategyOutput:
        HEARD[self.name].append(rejection)
        return [small_buy(self, signal, context)]


class ChangesItsSignal(Strategy):
    """Rewrites the signal it was given to another symbol, then trades that symbol."""

    def on_signal(self, signal: Signal, context: StrategyContext) -> StrategyOutput:
        signal.raw["symbol"] = "ETHUSDT"
        object.__setattr__(signal, "symbol", "ETHUSDT")
        return [self.intent(signal, context, side=Side.BUY, qty=Decimal("0.001"))]


class ClosesNothing(Strategy):
    """A reduce-only sell with no position: the gate passes it, the exchange refuses it."""

    def on_signal(self, signal: Signal, context: StrategyContext) -> StrategyOutput:
        return [
            self.intent(signal, context, side=Side.SELL, qty=Decimal("0.001"), reduce_only=True)
        ]

    def on_order_rejected(
        self, rejection: OrderRejection, signal: Signal, context: StrategyContext
    ) -> StrategyOutput | None:
        HEARD[self.name].append(rejection)
        return None


class EarlyStop(Strategy):
    """Moves a stop before it has anything to protect."""

    def on_signal(self, signal: Signal, context: StrategyContext) -> StrategyOutput:
        return [self.move_stop(signal, stop_loss=Decimal(90000))]


class BadStart(Strategy):
    def on_start(self) -> None:
        raise RuntimeError("model file missing")

    def on_signal(self, signal: Signal, context: StrategyContext) -> StrategyOutput:
        return []


class SlowStart(BadStart):
    """Loads a model for 200 ms, as on_start's documentation suggests it may."""

    def on_start(self) -> None:
        time.sleep(0.2)


# the pipeline's stages, in-process ----------------------------------------------------------

#: Room for several orders per test: only the order notional cap (1000 USDT) bites.
ROOMY = RiskConfig(
    max_position_notional_usdt=Decimal(100000),
    max_strategy_exposure_usdt=Decimal(100000),
    max_total_exposure_usdt=Decimal(100000),
    max_orders_per_minute=1000,
)


@dataclass
class Stages:
    pipeline: Pipeline
    journal: Journal
    gate: RiskGate
    exchange: SimExchange
    account: Account
    venues: Mapping[str, BybitVenue]

    def process(self, *signals: Signal, together: bool = False) -> None:
        """Submit each signal as an adapter does and wait until it has run, one at a time
        (`together`: all of them at once, then wait)."""

        self.run(self.submit(*signals, together=together))

    async def submit(self, *signals: Signal, together: bool = False) -> None:
        for item in signals:
            assert await self.pipeline.submit(item)
            if not together:
                await self.pipeline.drain()
        await self.pipeline.drain()

    def run(self, scenario: Coroutine[Any, Any, T]) -> T:
        """`scenario` on a new event loop with the pipeline's lanes running (once per test:
        the pipeline's stages stay bound to the loop they first ran on)."""

        async def with_lanes() -> T:
            lanes = asyncio.create_task(self.pipeline.run())
            try:
                return await scenario
            finally:
                lanes.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await lanes

        return asyncio.run(with_lanes())

    async def book_fills(self, key: str = "k1") -> None:
        """Book every fill of `key` at the simulator, as the account stream would (there is
        none here), and let the hooks they queue run."""
        for fill in await self.venues[key].executions_since(None):
            await self.account.keeper.apply(fill)
        await self.pipeline.drain()

    def rows(self, strategy: str) -> list[tuple[str, str]]:
        """(decision, reason) of each of `strategy`'s decisions, oldest first."""
        return [
            (row.decision, row.reason)
            for row in sorted(self.journal.trace(1000), key=lambda row: row.received_at)
            if row.strategy == strategy
        ]

    def orders_of(self, strategy: str) -> list[dict[str, Any]]:
        prefix = f"{strategy[:8]}-"
        return [o for o in self.exchange.orders() if str(o["orderLinkId"]).startswith(prefix)]


Build = Callable[..., Stages]


@pytest.fixture
def build(tmp_path: Path) -> Iterator[Build]:
    """Pipeline stages for the plug-ins given as {name: (strategy, key, source)}, against an
    in-process simulator with accounts k1 and k2; `budgets_s` and `max_failures` per name;
    the account's fills reach the pipeline's `on_fill` through `Stages.book_fills`."""
    with ExitStack() as resources:

        def make(
            plugins: Mapping[str, tuple[Strategy, str, str]],
            budgets_s: Mapping[str, float] | None = None,
            max_failures: int = 3,
            market_cache_s: float = 1.0,
            risk: RiskConfig = ROOMY,
        ) -> Stages:
            exchange, venues = sim_venues(resources)
            journal = Journal(tmp_path / "journal.sqlite3")
            resources.callback(journal.close)
            runner = StrategyRunner(budget_s=5.0, max_failures=max_failures)
            resources.callback(runner.close)
            for name, budget_s in (budgets_s or {}).items():
                runner.add(name, budget_s=budget_s, max_failures=max_failures)
            gate = RiskGate(risk)
            slots = {
                name: StrategySlot(name, plugin, key, frozenset({source}))
                for name, (plugin, key, source) in plugins.items()
            }
            account = Account(journal, venues)
            # The executor tells the account of its orders, as in the bot: a fill that comes
            # before its order's answer is otherwise held for it.
            executor = Executor(
                journal,
                venues,
                closable_size=account.projection.closable_size,
                order_journaled=account.keeper.expect_order,
                order_identified=account.keeper.order_identified,
            )
            pipeline = Pipeline(
                journal,
                slots,
                gate,
                executor,
                MarketData(venues, account, journal, market_cache_s),
                runner,
                booked_qty=account.projection.booked_qty,
                strategy_size=account.projection.strategy_size,
            )
            account.on_fill_booked(pipeline.fill_booked)
            account.on_position_closed(executor.position_closed)
            return Stages(pipeline, journal, gate, exchange, account, venues)

        yield make


def follow() -> Follow:
    return Follow("follow", Follow.Params())


@pytest.mark.parametrize(
    ("plugin", "reason"),
    [
        (Silent("quiet", StrategyParams()), "no intents"),
        (ReturnsNone("quiet", StrategyParams()), "on_signal returned None, not a list"),
    ],
    ids=["empty-list", "none"],
)
def test_a_strategy_wanting_nothing_is_journaled_as_a_decline_with_the_reason(
    build: Build, plugin: Strategy, reason: str
) -> None:
    stages = build({"quiet": (plugin, "k2", "voc")})

    stages.process(signal())

    assert stages.rows("quiet") == [("declined", reason)]
    assert client_orders(stages.exchange.orders()) == []


def test_a_raising_or_overrunning_strategy_is_journaled_failed_and_the_others_trade(
    build: Build,
) -> None:
    stages = build(
        {
            "exploding": (Exploding("exploding", StrategyParams()), "k2", "voc"),
            "slow": (Slow("slow", StrategyParams()), "k2", "voc"),
            "follow": (follow(), "k1", "voc"),
        },
        budgets_s={"slow": 0.05},
    )

    stages.process(signal())

    assert stages.rows("exploding") == [
        ("failed", "on_signal raised ZeroDivisionError: plug-in bug")
    ]
    assert stages.rows("slow") == [("failed", "on_signal overran its time budget of 50 ms")]
    assert [decision for decision, _ in stages.rows("follow")] == ["approved"]
    assert len(stages.orders_of("follow")) == 1


def test_reading_what_a_strategy_returned_runs_on_its_thread_within_its_budget(
    build: Build,
) -> None:
    """An intent's own `__iter__` that computes past the budget is an overrun (it held up the
    event loop and every webhook answer), and one that calls sys.exit() fails the call (it
    stopped the bot)."""
    stages = build(
        {
            "trojan": (ReturnsATrojan("trojan", StrategyParams()), "k2", "voc"),
            "follow": (follow(), "k1", "voc"),
        },
        budgets_s={"trojan": 0.05},
    )

    stages.process(signal(id="exit-1"), signal(id="sleep-1"))

    assert stages.rows("trojan") == [
        ("failed", "on_signal raised SystemExit: the plug-in's exit"),
        ("failed", "on_signal overran its time budget of 50 ms"),
    ]
    assert stages.orders_of("trojan") == []
    assert len(stages.orders_of("follow")) == 2


def test_max_failures_in_a_row_halt_the_strategy_and_the_others_keep_trading(
    build: Build,
) -> None:
    stages = build(
        {
            "exploding": (Exploding("exploding", StrategyParams()), "k2", "voc"),
            "follow": (follow(), "k1", "voc"),
        },
        max_failures=3,
    )

    stages.process(*(signal(id=f"h-{n}") for n in range(4)))

    halted = stages.gate.state_of("exploding")
    assert halted.state is TradingState.HALTED
    assert halted.reason == (
        "its code failed 3 times in a row; last: on_signal raised ZeroDivisionError: plug-in bug"
    )
    assert [(s.scope, s.state) for s in stages.journal.trading_states()] == [
        ("exploding", TradingState.HALTED)
    ]
    assert stages.gate.state_of("follow").state is TradingState.ACTIVE
    assert [decision for decision, _ in stages.rows("exploding")] == ["failed"] * 4
    assert len(stages.orders_of("follow")) == 4  # before, at and after the halt


def test_a_strategy_failing_under_a_persons_halt_leaves_that_halt_and_its_work_standing(
    build: Build,
) -> None:
    """Its own halt replaced the person's, which ended the flatten that halt was still
    retrying (the venue refusing), and the journal forgot it (review of the halt's work)."""
    stages = build(
        {"exploding": (Exploding("exploding", StrategyParams()), "k2", "voc")}, max_failures=3
    )
    persons = ScopeState("exploding", TradingState.HALTED, "drill", utc_now())
    stages.gate.set_state(persons)
    stages.journal.record_trading_state(persons, HaltWork.FLATTEN)

    stages.process(*(signal(id=f"h-{n}") for n in range(4)))

    assert stages.gate.state_of("exploding") is persons
    assert stages.journal.trading_states() == [persons]
    assert stages.journal.unfinished_halt_work() == {"exploding": HaltWork.FLATTEN}
    assert stages.pipeline._halted_for_failures("exploding")  # its ticks stop, as halted


def test_signals_of_two_symbols_at_once_both_reach_a_strategy(build: Build) -> None:
    # One lane per (key, symbol): both signals call the strategy at the same time.
    stages = build({"both": (Deliberate("both", StrategyParams()), "k2", "voc")})

    stages.process(
        signal(id="btc-1"), signal(id="eth-1", symbol="ETHUSDT", stop_loss=3000), together=True
    )

    assert [decision for decision, _ in stages.rows("both")] == ["approved", "approved"]
    assert sorted(o["symbol"] for o in stages.orders_of("both")) == ["BTCUSDT", "ETHUSDT"]


def test_on_order_rejected_hears_the_gates_rule_and_what_it_returns_is_carried_out_once(
    build: Build,
) -> None:
    stages = build({"greedy": (GreedyThenModest("greedy", StrategyParams()), "k2", "voc")})

    stages.process(signal(id="greedy-1"))

    [rejection] = HEARD["greedy"]  # its own leg 1, refused again, is not told to it
    assert (rejection.leg, rejection.symbol, rejection.rule) == (0, "BTCUSDT", "MAX_ORDER_NOTIONAL")
    assert "exceeds max_order_notional_usdt = 1000" in rejection.reason
    assert rejection.order_link_id is None
    assert [decision for decision, _ in stages.rows("greedy")] == [
        "rejected",
        "rejected",
        "approved",
    ]
    [placed] = client_orders(stages.exchange.orders())
    assert placed["orderLinkId"] == order_link_id("greedy", "voc", "greedy-1", 2)
    assert placed["qty"] == "0.001"


def test_a_leg_asked_for_again_by_on_order_rejected_is_declined_and_holds_nothing(
    build: Build,
) -> None:
    # Reproduced: the retry was approved under the refused leg's orderLinkId, never sent
    # (the leg was over), and its reservation counted as an open order for the whole run.
    stages = build({"retry": (RetriesTheSameLeg("retry", StrategyParams()), "k2", "voc")})

    stages.process(signal(id="retry-1"))

    assert [rejection.leg for rejection in HEARD["retry"]] == [0]
    [refused, declined] = stages.rows("retry")
    assert refused[0] == "rejected"
    assert declined[0] == "declined"
    assert "returned leg 0 again" in declined[1] and "leg=N" in declined[1]
    assert client_orders(stages.exchange.orders()) == []
    assert stages.gate.ledger.open_orders("retry") == 0


def test_a_strategy_that_changes_the_signal_it_was_given_changes_only_its_own_copy(
    build: Build,
) -> None:
    # Reproduced: strategies were given the pipeline's own signal, so one that rewrote its
    # symbol had an intent for ETHUSDT judged as if the call had been about it, at BTCUSDT's
    # price and rules (an order 30 times its notional limit), and the next strategy saw the
    # rewritten signal.
    stages = build(
        {
            "changer": (ChangesItsSignal("changer", StrategyParams()), "k2", "voc"),
            "follow": (Follow("follow", Follow.Params()), "k1", "voc"),
        }
    )

    stages.process(signal(id="changed-1"))

    [(decision, reason)] = stages.rows("changer")
    assert decision == "declined"
    assert "an intent for ETHUSDT, but its call was about BTCUSDT" in reason
    assert [order["symbol"] for order in stages.orders_of("follow")] == ["BTCUSDT"]
    assert stages.orders_of("changer") == []


def test_on_order_rejected_hears_the_venues_refusal(build: Build) -> None:
    stages = build({"closer": (ClosesNothing("closer", StrategyParams()), "k2", "voc")})

    stages.process(signal(id="close-1"))

    [rejection] = HEARD["closer"]
    assert (rejection.leg, rejection.rule) == (0, "VENUE")
    assert rejection.order_link_id == order_link_id("closer", "voc", "close-1", 0)
    assert rejection.reason == "current position is zero, cannot fix reduce-only order qty"
    [row] = stages.journal.trace()
    assert (row.decision, row.status, row.reason) == ("approved", "Rejected", rejection.reason)


def test_a_stop_move_without_a_position_is_journaled_as_rejected_and_never_sent(
    build: Build,
) -> None:
    stages = build({"early": (EarlyStop("early", StrategyParams()), "k2", "voc")})

    stages.process(signal(id="early-1"))

    [move] = stages.journal.stop_moves()
    assert (move["strategy"], move["key_name"], move["symbol"]) == ("early", "k2", "BTCUSDT")
    assert move["outcome"] == "rejected"
    assert move["reason"].startswith("NO_POSITION: strategy early holds no BTCUSDT position")
    assert "/v5/position/trading-stop" not in stages.exchange.stats()["requests_by_path"]
    assert stages.rows("early") == [("declined", "no orders: stop moves only")]  # its answer


class GuardsItsEntry(Strategy):
    """Buys a little, then asks for a stop once the entry has filled (as a ladder's
    break-even after its first target)."""

    def on_signal(self, signal: Signal, context: StrategyContext) -> StrategyOutput:
        return [small_buy(self, signal, context)]

    def on_fill(
        self, fill: Fill, signal: Signal, context: StrategyContext
    ) -> StrategyOutput | None:
        if fill.leg != 0:
            return None
        return [self.move_stop(signal, stop_loss=Decimal(90000))]


def test_a_stop_move_the_venue_refuses_for_a_position_closed_meanwhile_is_no_alarm(
    build: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The chaos soak's seed 505 (--faults 0.3 --kills 30 --startup-kills 0.5): a ladder's
    # targets filled one after the other, the first one's break-even move reached the venue
    # after the last had closed the position, and the venue's 10001 ("can not set tp/sl/ts
    # for zero position") was notified as a rejection leaving the position less protected,
    # while the books already held it closed: there was nothing left to protect.
    stages = build({"guard": (GuardsItsEntry("guard", StrategyParams()), "k1", "voc")})
    executor = stages.pipeline._executor
    move_stop = executor.move_stop

    async def closed_on_the_way(move: Any, key_name: str) -> tuple[str, str]:
        """The strategy's own close fills (and is booked) while the move is on its way."""
        close = make_intent(
            strategy="guard",
            signal_source="voc",
            signal_id="guard-1",
            side=Side.SELL,
            qty=Decimal("0.001"),
            reduce_only=True,
        )
        shown = await executor.execute(approve(close.model_copy(update={"leg": 1})), "k1")
        assert shown.status.value == "Filled"
        for fill in await stages.venues["k1"].executions_since(None):
            await stages.account.keeper.apply(fill)
        return await move_stop(move, key_name)

    monkeypatch.setattr(executor, "move_stop", closed_on_the_way)
    notified: list[str] = []
    sink = logger.add(
        lambda m: notified.append(m.record["message"]),
        filter=lambda r: r["extra"].get("notify") == "rejection",
    )

    async def entered_then_hooked() -> None:
        await stages.submit(signal(id="guard-1"))
        await stages.book_fills()  # the entry's fill: its on_fill asks for the stop

    try:
        stages.run(entered_then_hooked())
    finally:
        logger.remove(sink)

    [move] = stages.journal.stop_moves()
    assert move["outcome"] == "rejected"
    assert "zero position" in move["reason"]
    assert "nothing left to protect" in move["reason"]
    assert notified == []


def test_on_start_raising_stops_the_start_naming_the_strategy(build: Build) -> None:
    stages = build(
        {
            "follow": (follow(), "k1", "voc"),
            "bad_start": (BadStart("bad_start", StrategyParams()), "k2", "voc"),
        }
    )

    with pytest.raises(StrategyStartError) as stopped:
        asyncio.run(stages.pipeline.start_strategies())

    assert str(stopped.value) == (
        "strategy bad_start: on_start raised RuntimeError: model file missing"
    )


def test_on_start_may_take_longer_than_a_signals_budget(build: Build) -> None:
    stages = build(
        {"loader": (SlowStart("loader", StrategyParams()), "k2", "voc")},
        budgets_s={"loader": 0.05},
    )

    asyncio.run(stages.pipeline.start_strategies())  # loads its model for 200 ms


# fills and timers: the whole bot ------------------------------------------------------------


class Listener(Strategy):
    """Buys 0.002 BTC on each signal and writes down every fill it is told of."""

    def on_signal(self, signal: Signal, context: StrategyContext) -> StrategyOutput:
        return [self.intent(signal, context, side=Side.BUY, qty=Decimal("0.002"))]

    def on_fill(
        self, fill: Fill, signal: Signal, context: StrategyContext
    ) -> StrategyOutput | None:
        HEARD[self.name].append((fill, signal.id, context.position_qty))
        return None


class Stacker(Strategy):
    """Buys 0.001 BTC on each signal and writes down what its context showed."""

    def on_signal(self, signal: Signal, context: StrategyContext) -> StrategyOutput:
        HEARD[self.name].append((context.open_orders, context.position_qty))
        return [small_buy(self, signal, context)]


class Ticker(Strategy):
    """On its first tick, buys 0.001 of the tick's symbol."""

    timer_interval_s: ClassVar[float | None] = 0.1
    timer_symbols: ClassVar[tuple[str, ...]] = ("BTCUSDT",)

    def on_signal(self, signal: Signal, context: StrategyContext) -> StrategyOutput:
        return []

    def on_timer(self, tick: Signal, context: StrategyContext) -> StrategyOutput | None:
        HEARD[self.name].append(tick)
        if len(HEARD[self.name]) > 1:
            return None
        return [small_buy(self, tick, context)]


class TwoSymbolTicker(Ticker):
    timer_symbols: ClassVar[tuple[str, ...]] = ("BTCUSDT", "ETHUSDT")

    def on_timer(self, tick: Signal, context: StrategyContext) -> StrategyOutput | None:
        HEARD[self.name].append(tick)
        return None


class PropertyTicker(Ticker):
    """Its symbols are a property, counted each time it is read."""

    reads: ClassVar[int] = 0

    @property  # type: ignore[override]
    def timer_symbols(self) -> tuple[str, ...]:
        PropertyTicker.reads += 1
        return ("BTCUSDT",)

    def on_timer(self, tick: Signal, context: StrategyContext) -> StrategyOutput | None:
        HEARD[self.name].append(tick)
        return None


class SlowTicker(Ticker):
    """Ticked every 10 ms, each tick taking 40 ms (within its budget)."""

    timer_interval_s: ClassVar[float | None] = 0.01

    def on_timer(self, tick: Signal, context: StrategyContext) -> StrategyOutput | None:
        HEARD[self.name].append(tick)
        time.sleep(0.04)
        return None


class FailingTicker(Ticker):
    """Every tick raises while `failing`."""

    failing: ClassVar[bool] = True

    def on_timer(self, tick: Signal, context: StrategyContext) -> StrategyOutput | None:
        HEARD[self.name].append(tick)
        if FailingTicker.failing:
            raise RuntimeError("tick bug")
        return None


def only(plugin: str, extra: str = "") -> Callable[[Callable[..., Path]], Path]:
    """A sim configuration whose one strategy `hooked` is this module's `plugin`."""

    def write(sim_config: Callable[..., Path]) -> Path:
        config = sim_config()
        base = config.read_text().split("[strategies.follow]")[0]
        config.write_text(
            base
            + f'[strategies.hooked]\nplugin = "{__name__}:{plugin}"\nkey = "follow_sim"\n'
            + extra
        )
        return config

    return write


@contextlib.contextmanager
def running(config: Path) -> Iterator[RunningBot]:
    bot = RunningBot(config).start()
    try:
        yield bot
    finally:
        bot.stop()


def test_on_fill_hears_the_fill_of_its_market_order(sim_config: Callable[..., Path]) -> None:
    with running(only("Listener")(sim_config)) as bot:
        assert bot.post(posted("fill-1")).status_code == 202
        [(fill, signal_id, position)] = wait_for(lambda: HEARD["hooked"], what="on_fill")
        [order] = bot.sim_orders()

    assert signal_id == "fill-1"
    assert fill.order_link_id == order["orderLinkId"]
    assert (fill.leg, fill.symbol, fill.side, fill.reduce_only) == (0, "BTCUSDT", Side.BUY, False)
    assert (fill.qty, fill.order_qty, fill.order_filled_qty) == (Decimal("0.002"),) * 3
    assert fill.order_done
    assert fill.price == Decimal(str(order["avgPrice"]))
    assert position == Decimal("0.002")  # its context already holds the fill


def test_a_signal_right_after_a_fill_sees_the_order_done_and_the_position_held(
    sim_config: Callable[..., Path],
) -> None:
    # Back to back, so each waits in the strategy's lane for the one before: its context is
    # built the moment the previous order is filled, whose journal writes are still waiting.
    with running(only("Stacker")(sim_config)) as bot:
        for index in range(4):
            assert bot.post(posted(f"stack-{index}")).status_code == 202
        wait_for(lambda: len(bot.sim_orders()) == 4, what="four orders")

    seen = HEARD["hooked"]
    assert [open_orders for open_orders, _ in seen] == [()] * 4
    assert [position for _, position in seen] == [Decimal("0.001") * n for n in range(4)]


def test_each_partial_fill_reports_how_much_was_filled_by_then(
    sim_config: Callable[..., Path],
) -> None:
    config = only("Listener", extra="\n[sim]\npartial_fills = 2\n")(sim_config)
    with running(config) as bot:
        assert bot.post(posted("partly-1")).status_code == 202
        heard = wait_for(
            lambda: HEARD["hooked"] if len(HEARD["hooked"]) >= 2 else None, what="fills"
        )

    fills = [fill for fill, _, _ in heard]
    assert [fill.qty for fill in fills] == [Decimal("0.001"), Decimal("0.001")]
    assert [fill.order_filled_qty for fill in fills] == [Decimal("0.001"), Decimal("0.002")]
    assert [fill.order_done for fill in fills] == [False, True]


def test_on_timer_ticks_become_orders(sim_config: Callable[..., Path]) -> None:
    with running(only("Ticker")(sim_config)) as bot:
        [order] = wait_for(lambda: bot.sim_orders(), what="the tick's order")
        ticks = wait_for(
            lambda: HEARD["hooked"] if len(HEARD["hooked"]) >= 2 else None, what="2 ticks"
        )

    first = ticks[0]
    assert (first.source, first.symbol, first.side) == (TIMER_SOURCE, "BTCUSDT", None)
    assert order["orderLinkId"] == order_link_id("hooked", TIMER_SOURCE, first.id, 0)
    assert (order["symbol"], order["side"], order["qty"]) == ("BTCUSDT", "Buy", "0.001")


def test_every_tick_of_every_symbol_has_its_own_id(sim_config: Callable[..., Path]) -> None:
    with running(only("TwoSymbolTicker")(sim_config)):
        ticks = wait_for(
            lambda: HEARD["hooked"] if len(HEARD["hooked"]) >= 4 else None, what="4 ticks"
        )

    assert len({tick.id for tick in ticks}) == len(ticks)


def test_a_strategys_timer_attributes_are_read_once_not_at_every_tick(
    sim_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # They were read on the event loop at every tick: a property that blocked (a file or a
    # network read of the symbols) held up every lane each time.
    monkeypatch.setattr(PropertyTicker, "reads", 0)
    with running(only("PropertyTicker")(sim_config)):
        wait_for(lambda: len(HEARD["hooked"]) >= 3, what="three ticks")

    assert PropertyTicker.reads <= 2  # checked as the plug-in loads, kept as its slot is made


def test_ticks_of_a_slow_on_timer_do_not_pile_up(sim_config: Callable[..., Path]) -> None:
    # Reproduced: a tick was queued every interval whatever waited already, so an on_timer
    # slower than its interval left an ever longer queue behind it (and a stop that had to
    # drain it).
    with running(only("SlowTicker")(sim_config)) as bot:
        wait_for(lambda: len(HEARD["hooked"]) >= 3, what="three ticks")
        queued = []
        for _ in range(10):
            time.sleep(0.05)
            health = requests.get(f"{bot.url}/healthz", timeout=5).json()
            queued.append(health["queued_signals"])

    assert max(queued) <= 1, queued  # the one tick waiting for the one running


def test_a_strategy_halted_for_failing_ticks_is_not_ticked_again_even_after_a_restart(
    sim_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FailingTicker, "failing", True)
    config = only("FailingTicker")(sim_config)
    with running(config):
        wait_for(lambda: len(HEARD["hooked"]) >= 3, what="three failed ticks")
        time.sleep(1.0)  # ten more ticks' time
        ticked = len(HEARD["hooked"])
    with running(config):  # the halt is journaled: it holds in the next run too
        time.sleep(1.0)

    assert ticked == 3  # halted after max_failures (3): every later tick skipped
    assert len(HEARD["hooked"]) == 3


def test_an_operators_halt_after_a_resume_does_not_stop_the_ticks(
    sim_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Halted by the operator (not for failing), a strategy's on_timer may still close
    positions (reduce-only orders pass a halt): it is ticked."""
    monkeypatch.setattr(FailingTicker, "failing", True)
    with running(only("FailingTicker")(sim_config)) as bot:
        wait_for(lambda: len(HEARD["hooked"]) >= 3, what="three failed ticks")
        monkeypatch.setattr(FailingTicker, "failing", False)
        assert admin(bot, "resume", {"strategy": "hooked"}) == 200
        assert admin(bot, "halt", {"strategy": "hooked", "reason": "news at 14:00"}) == 200
        before = len(HEARD["hooked"])
        wait_for(lambda: len(HEARD["hooked"]) > before + 2, what="ticks while halted")


class LegAndStop(Strategy):
    """Buys 0.002 BTC; once that is filled, a reduce-only take profit at 105000 (leg 1) and
    its stop moved to 90000.05 (off the 0.1 tick)."""

    def on_signal(self, signal: Signal, context: StrategyContext) -> StrategyOutput:
        return [self.intent(signal, context, side=Side.BUY, qty=Decimal("0.002"))]

    def on_fill(
        self, fill: Fill, signal: Signal, context: StrategyContext
    ) -> StrategyOutput | None:
        HEARD[self.name].append(fill)
        if fill.leg != 0:
            return None
        target = self.intent(
            signal,
            context,
            side=Side.SELL,
            qty=Decimal("0.002"),
            price=Decimal(105000),
            reduce_only=True,
            leg=1,
        )
        return [target, self.move_stop(signal, stop_loss=Decimal("90000.05"))]


def test_a_stop_move_off_the_tick_is_rounded_toward_the_price_and_set(build: Build) -> None:
    stages = build({"hooked": (LegAndStop("hooked", StrategyParams()), "k1", "voc")})

    async def fill_then_hook() -> None:
        await stages.submit(signal())
        await stages.book_fills()

    stages.run(fill_then_hook())

    [move] = stages.journal.stop_moves()
    assert (move["stop_loss"], move["outcome"]) == ("90000.1", "moved")  # up: a long's stop
    query = PositionQueryParams.model_validate({"category": "linear", "symbol": "BTCUSDT"})
    [position] = stages.exchange.positions("k1", query)["list"]
    assert position["stopLoss"] == "90000.1"


def test_a_hook_run_again_after_a_crash_leaves_out_what_it_already_did(build: Build) -> None:
    stages = build({"hooked": (LegAndStop("hooked", StrategyParams()), "k1", "voc")})
    journal = stages.journal

    async def hooked_then_killed_then_started() -> None:
        await stages.submit(signal())
        await stages.book_fills()
        await until(lambda: journal.due_fill_hooks() == [])
        # As a kill between carrying the hook out and journaling it done leaves the journal.
        [(fill, _)] = list(journal.executions())
        journal._db.execute(
            "INSERT INTO fill_hooks_due (exec_id, booked) VALUES (?, '0.002')", (fill.exec_id,)
        )
        await stages.pipeline.recover()  # the next start
        await stages.pipeline.drain()
        await until(lambda: journal.due_fill_hooks() == [])

    stages.run(hooked_then_killed_then_started())

    assert len(HEARD["hooked"]) == 2  # the hook did run again
    legs = [row.leg for row in stages.journal.decisions() if row.strategy == "hooked"]
    assert sorted(legs) == [0, 1]  # each leg decided once, not twice
    assert len(stages.journal.stop_moves()) == 1
    assert len(stages.orders_of("hooked")) == 2


def test_an_on_fill_without_market_data_is_tried_again_until_it_runs(
    build: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline_module, "FILL_HOOK_RETRIES_S", (0.3, 0.3))
    stages = build(
        {"hooked": (LegAndStop("hooked", StrategyParams()), "k1", "voc")}, market_cache_s=0.1
    )

    async def outage_while_the_fill_is_booked() -> None:
        await stages.submit(signal())
        fills = await stages.venues["k1"].executions_since(None)
        stages.exchange.set_faults(SimFaults(http_5xx=1.0))
        await asyncio.sleep(0.2)  # the cached price is too old now
        for fill in fills:
            await stages.account.keeper.apply(fill)
        await stages.pipeline.drain()
        assert HEARD["hooked"] == []  # no context: the strategy was not called
        assert [fill.exec_id for fill, _ in stages.journal.due_fill_hooks()] == [
            fill.exec_id for fill in fills
        ]
        stages.exchange.set_faults(SimFaults())
        await asyncio.sleep(0.5)  # the first retry comes 0.3 s after the failure
        await stages.pipeline.drain()
        await until(lambda: stages.journal.due_fill_hooks() == [])

    stages.run(outage_while_the_fill_is_booked())

    assert len(HEARD["hooked"]) == 1
    assert len(stages.orders_of("hooked")) == 2  # the entry and its target leg
    assert [row.rule for row in stages.journal.decisions() if not row.approved] == ["MARKET_DATA"]
    wait_for(lambda: stages.journal.due_fill_hooks() == [], what="the hook journaled done")


def test_an_on_fill_through_an_outage_longer_than_its_quick_retries_still_runs(
    build: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline_module, "FILL_HOOK_RETRIES_S", (0.1,))
    monkeypatch.setattr(pipeline_module, "FILL_HOOK_SLOW_RETRIES_S", (0.4,) * 3)
    stages = build(
        {"hooked": (LegAndStop("hooked", StrategyParams()), "k1", "voc")}, market_cache_s=0.05
    )
    warnings: list[str] = []
    handler = logger.add(warnings.append, format="{message}", level="WARNING")

    def declines() -> list[DecisionRow]:
        return [row for row in stages.journal.decisions() if not row.approved]

    async def outage_past_the_quick_retries() -> None:
        await stages.submit(signal())
        fills = await stages.venues["k1"].executions_since(None)
        stages.exchange.set_faults(SimFaults(http_5xx=1.0))
        await asyncio.sleep(0.1)  # the cached price is too old now
        for fill in fills:
            await stages.account.keeper.apply(fill)
        await until(lambda: len(declines()) >= 2)  # the run and its one quick retry
        assert HEARD["hooked"] == []
        stages.exchange.set_faults(SimFaults())
        await until(lambda: stages.journal.due_fill_hooks() == [])

    try:
        stages.run(outage_past_the_quick_retries())
    finally:
        logger.remove(handler)

    assert len(HEARD["hooked"]) == 1  # run by a slow retry, not left for the next start
    assert len(stages.orders_of("hooked")) == 2
    assert {row.rule for row in declines()} == {"MARKET_DATA"}
    assert any("tried again each minute for an hour" in line for line in warnings)


def test_an_on_fill_the_journal_could_not_write_is_tried_again_once_it_writes(
    build: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seen on a full disk: a ladder's on_fill, whose target legs could not be journaled,
    # failed with a traceback and was not tried again: the position went without its
    # targets until the next start, though the disk had room again seconds later. Here
    # another program holds the journal's write lock for a while (a backup tool).
    monkeypatch.setattr(pipeline_module, "FILL_HOOK_RETRIES_S", (0.3,))
    stages = build({"hooked": (LegAndStop("hooked", StrategyParams()), "k1", "voc")})
    journal = stages.journal
    errors: list[str] = []
    handler = logger.add(errors.append, format="{message}\n{exception}", level="ERROR")

    async def held_while_the_hook_runs() -> None:
        await stages.submit(signal())
        for fill in await stages.venues["k1"].executions_since(None):
            await stages.account.keeper.apply(fill)
        journal.flush()  # the fill and its due hook are in the journal
        journal._db.execute("PRAGMA busy_timeout=50")  # fail fast, not after 5 s
        holder = sqlite3.connect(journal.path, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")  # before the lane runs the hook
            await until(lambda: bool(errors))
            holder.execute("COMMIT")
        finally:
            holder.close()
        await until(lambda: journal.due_fill_hooks() == [])

    try:
        stages.run(held_while_the_hook_runs())
    finally:
        logger.remove(handler)

    assert len(stages.orders_of("hooked")) == 2  # the entry and its target leg
    assert [line.strip() for line in errors] == [
        f"on_fill of {stages.orders_of('hooked')[0]['orderLinkId']} could not be journaled "
        "(database is locked); it is tried again"
    ]


class TwoTargets(Strategy):
    """Buys 0.002 BTC; once that is filled, two reduce-only take profits (legs 1 and 2)."""

    def on_signal(self, signal: Signal, context: StrategyContext) -> StrategyOutput:
        return [self.intent(signal, context, side=Side.BUY, qty=Decimal("0.002"))]

    def on_fill(
        self, fill: Fill, signal: Signal, context: StrategyContext
    ) -> StrategyOutput | None:
        if fill.leg != 0:
            return None
        return [
            self.intent(
                signal,
                context,
                side=Side.SELL,
                qty=Decimal("0.001"),
                price=Decimal(price),
                reduce_only=True,
                leg=leg,
            )
            for leg, price in ((1, 105000), (2, 106000))
        ]


def test_an_on_fill_run_again_sends_the_legs_its_journal_failure_left_unsent(
    build: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The disk full as its first target was sent: that leg's Submitting unwritten, the hook
    # failed with both targets decided, and its run again left out what was decided. The
    # second target stayed Pending, sent by nothing, until the next start.
    monkeypatch.setattr(pipeline_module, "FILL_HOOK_RETRIES_S", (0.3,))
    stages = build({"hooked": (TwoTargets("hooked", StrategyParams()), "k1", "voc")})
    journal = stages.journal
    record_order_event = journal.record_order_event
    failures = [sqlite3.OperationalError("database or disk is full")]

    def full_once(event: OrderEvent) -> bool:
        leg = event.order_link_id.split("-")[1]
        if event.status is OrderStatus.SUBMITTING and leg == "1" and failures:
            raise failures.pop()
        return record_order_event(event)

    monkeypatch.setattr(journal, "record_order_event", full_once)

    async def hooked() -> None:
        await stages.submit(signal())
        await stages.book_fills()
        await until(lambda: journal.due_fill_hooks() == [])

    stages.run(hooked())

    assert not failures  # the disk was full once
    assert len(stages.orders_of("hooked")) == 3  # the entry and both targets, each once


async def until(probe: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait on the event loop (the journal's deferred writes need it) until `probe()`."""
    async with asyncio.timeout(timeout_s):
        while not probe():  # noqa: ASYNC110 - the journal's state has no event to wait on
            await asyncio.sleep(0.01)


class LimitListener(Listener):
    """Bids for 0.002 BTC at 96900 (under the market) and writes down every fill."""

    def on_signal(self, signal: Signal, context: StrategyContext) -> StrategyOutput:
        return [
            self.intent(signal, context, side=Side.BUY, qty=Decimal("0.002"), price=Decimal(96900))
        ]


def test_an_order_another_client_shrank_is_done_when_what_the_venue_holds_is_filled(
    build: Build,
) -> None:
    stages = build({"hooked": (LimitListener("hooked", StrategyParams()), "k1", "voc")})
    link = order_link_id("hooked", "voc", "p-voc", 0)

    async def shrunk_then_filled() -> None:
        await stages.submit(signal())
        amend = {"category": "linear", "symbol": "BTCUSDT", "orderLinkId": link, "qty": "0.001"}
        stages.exchange.amend_order("k1", AmendOrderParams.model_validate(amend))
        for report in await stages.venues["k1"].open_orders():  # as the stream would say
            await stages.account.keeper.apply(report)
        async with asyncio.timeout(10):  # the price crosses the bid once it rests
            while not await stages.venues["k1"].executions_since(None):
                stages.exchange.set_prices({"BTCUSDT": Decimal(96800)})
                await asyncio.sleep(0.05)
        await stages.book_fills()

    stages.run(shrunk_then_filled())

    [(fill, _, _)] = HEARD["hooked"]
    assert (fill.qty, fill.order_qty, fill.order_filled_qty) == (Decimal("0.001"),) * 3
    assert fill.order_done  # a ladder lays out its legs now


def test_a_fill_booked_at_start_up_and_found_due_by_recover_is_heard_of_once(
    build: Build,
) -> None:
    stages = build({"hooked": (LegAndStop("hooked", StrategyParams()), "k1", "voc")})

    async def start_up() -> None:
        lanes = asyncio.create_task(stages.pipeline.run())
        await stages.submit(signal())  # the entry, placed and filled at the venue
        lanes.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await lanes
        # A restart: the gap-fill books the fill (its hook queued, the lanes not running
        # yet), then `recover` finds the hook the fill's journal write marked due.
        for fill in await stages.venues["k1"].executions_since(None):
            await stages.account.keeper.apply(fill)
        await stages.pipeline.recover()
        lanes = asyncio.create_task(stages.pipeline.run())
        try:
            await stages.pipeline.drain()
            await until(lambda: stages.journal.due_fill_hooks() == [])
        finally:
            lanes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lanes

    asyncio.run(start_up())

    assert len(HEARD["hooked"]) == 1
    assert len(stages.journal.stop_moves()) == 1


class Reverser(Strategy):
    """Buys 0.002 BTC; on a signal with a `side`, closes that (reduce-only) and, in the same
    batch, opens 0.002 to `side` with a reduce-only target 5 % away."""

    def on_signal(self, signal: Signal, context: StrategyContext) -> StrategyOutput:
        if context.position_qty == 0:
            return [self.intent(signal, context, side=Side.BUY, qty=Decimal("0.002"))]
        assert signal.side is not None
        long = signal.side is Side.BUY
        target = context.last_price * (Decimal("1.05") if long else Decimal("0.95"))
        return [
            self.intent(
                signal, context, side=Side.SELL, qty=Decimal("0.002"), reduce_only=True, leg=0
            ),
            self.intent(signal, context, side=signal.side, qty=Decimal("0.002"), leg=1),
            self.intent(
                signal,
                context,
                side=Side.SELL if long else Side.BUY,
                qty=Decimal("0.002"),
                price=target.quantize(Decimal(1)),
                reduce_only=True,
                leg=2,
            ),
        ]


@pytest.mark.parametrize("side", ["buy", "sell"], ids=["same side again", "turned"])
def test_a_close_keeps_the_reduce_only_target_its_own_signal_placed_for_the_next_position(
    build: Build, side: str
) -> None:
    stages = build({"hooked": (Reverser("hooked", StrategyParams()), "k1", "voc")})
    target = order_link_id("hooked", "voc", "second", 2)

    async def close_and_reopen() -> None:
        await stages.submit(signal(id="first"))
        await stages.submit(signal(id="second", side=side))
        await stages.book_fills()  # the close brings the strategy's book to zero
        await asyncio.sleep(0.3)  # any cancel it set off has run

    stages.run(close_and_reopen())

    [order] = [o for o in stages.orders_of("hooked") if o["orderLinkId"] == target]
    assert order["orderStatus"] == "New"


# a stop the price has crossed, and hooks long after their signal --------------------------


def ladder() -> TakeProfitLadder:
    return TakeProfitLadder("ladder", TakeProfitLadder.Params())


async def price_to(stages: Stages, price: int, *, filling: str) -> None:
    """Move the simulator's price until the resting order `filling` is filled."""
    stages.exchange.set_prices({"BTCUSDT": Decimal(price)})
    async with asyncio.timeout(10):
        while not any(  # noqa: ASYNC110 - the simulator's state has no event to wait on
            o["orderLinkId"] == filling and o["orderStatus"] == "Filled"
            for o in stages.exchange.orders()
        ):
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("when", ["before the check", "between the check and the send"])
def test_a_break_even_stop_the_price_has_crossed_closes_the_position_at_market(
    build: Build, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    stages = build({"ladder": (ladder(), "k1", "voc")})
    first, second = (order_link_id("ladder", "voc", "p-voc", leg) for leg in (1, 2))
    close = order_link_id("ladder", "voc", "p-voc", 11)
    if when == "between the check and the send":
        # The price the bot checks is still above the entry; the venue's, when the move
        # arrives, is not: the venue refuses it, and the bot looks again.
        market = stages.pipeline._market
        fresh_price = market.fresh_price
        checks = iter([Decimal(97300)])

        async def one_stale_check(key_name: str, symbol: str) -> Decimal:
            return next(checks, None) or await fresh_price(key_name, symbol)

        async def stale_from_the_target_on() -> None:
            monkeypatch.setattr(market, "fresh_price", one_stale_check)

    async def target_then_back_below_the_entry() -> None:
        await stages.submit(signal(take_profit=[97100, 105000]))  # entry at 97000
        await stages.book_fills()  # the ladder lays out its two targets
        await price_to(stages, 97200, filling=first)
        stages.exchange.set_prices({"BTCUSDT": Decimal(96900)})  # back below the entry
        if when == "between the check and the send":
            await stale_from_the_target_on()
        await stages.book_fills()  # the first target's fill: break-even, or a close

    stages.run(target_then_back_below_the_entry())

    [move] = stages.journal.stop_moves()
    assert (move["stop_loss"], move["outcome"]) == ("97000", "closed"), move["reason"]
    status = {o["orderLinkId"]: o["orderStatus"] for o in stages.orders_of("ladder")}
    assert (status[second], status[close]) == ("Cancelled", "Filled")  # its room freed first
    query = PositionQueryParams.model_validate({"category": "linear", "symbol": "BTCUSDT"})
    [position] = stages.exchange.positions("k1", query)["list"]
    assert position["size"] == "0"


@pytest.mark.parametrize("closed_by_hand", [False, True], ids=["position-held", "closed-by-hand"])
def test_a_break_even_close_a_crash_left_unsent_is_sent_by_the_next_start_after_its_room(
    build: Build, monkeypatch: pytest.MonkeyPatch, closed_by_hand: bool
) -> None:
    """The bot dies once the close at market is journaled, before the targets it needs the
    room of are cancelled. The next start, however long after, cancels them and sends the
    close while the strategy holds the position; it sends nothing if the position was closed
    meanwhile (by hand: a fill the books learn of only at the start)."""
    stages = build({"ladder": (ladder(), "k1", "voc")})
    second = order_link_id("ladder", "voc", "p-voc", 2)
    close = order_link_id("ladder", "voc", "p-voc", 11)
    executor = stages.pipeline._executor
    make_room = executor._make_room

    async def dying_before_the_room(request: Any, **wait: float) -> None:
        if request.closes_position:
            await asyncio.Event().wait()  # the bot is killed here
        await make_room(request, **wait)

    monkeypatch.setattr(executor, "_make_room", dying_before_the_room)

    async def target_then_back_below_the_entry_then_killed() -> None:
        await stages.submit(signal(take_profit=[97100, 105000]))
        await stages.book_fills()
        await price_to(stages, 97200, filling=order_link_id("ladder", "voc", "p-voc", 1))
        stages.exchange.set_prices({"BTCUSDT": Decimal(96900)})
        hooks = asyncio.create_task(stages.book_fills())
        async with asyncio.timeout(10):
            while stages.journal.order(close) is None:  # noqa: ASYNC110 - no event to wait on
                await asyncio.sleep(0.02)
        hooks.cancel()

    stages.run(target_then_back_below_the_entry_then_killed())
    assert stages.journal.order(close).status.value == "Pending"  # type: ignore[union-attr]
    if closed_by_hand:  # while the bot is down
        by_hand = HTTP(api_key="k1", api_secret="secret-k1")
        by_hand.endpoint = stages.venues["k1"].endpoint
        by_hand.place_order(
            category="linear", symbol="BTCUSDT", side="Sell", orderType="Market", qty="0.005"
        )

    restarted = Executor(
        stages.journal,
        stages.venues,
        ExecutionConfig(unseen_final_after_s=0),  # its look-ups over
        staleness=lambda ts: "signal is 4000.0 s old (max_signal_age_s = 300)",  # a day down
        closable_size=stages.account.projection.closable_size,
    )

    async def the_start() -> None:  # as the bot's: the books catch up, then the orders settle
        await stages.account.keeper.close_gap(stages.venues["k1"])
        await restarted.reconcile("k1", limit=None, resend=True)

    asyncio.run(the_start())

    status = {o["orderLinkId"]: o["orderStatus"] for o in stages.orders_of("ladder")}
    query = PositionQueryParams.model_validate({"category": "linear", "symbol": "BTCUSDT"})
    [position] = stages.exchange.positions("k1", query)["list"]
    record = stages.journal.order(close)
    assert record is not None
    assert position["size"] == "0"
    if closed_by_hand:
        assert close not in status  # never sent (the target goes as a closed position's)
        assert record.status.value == "Rejected"
        assert "ladder no longer holds the position it was to reduce" in record.reason
    else:
        assert (status[second], status[close]) == ("Cancelled", "Filled")


def test_a_close_the_gate_refuses_leaves_the_targets_resting(
    build: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    stages = build({"ladder": (ladder(), "k1", "voc")})
    second = order_link_id("ladder", "voc", "p-voc", 2)
    decide = stages.pipeline.decide

    def refusing_the_close(
        intent: OrderIntent, instrument: Instrument, price: Decimal, *prices: Any
    ) -> Any:
        if intent.leg != 11:
            return decide(intent, instrument, price, *prices)
        return RiskDecision(intent=intent, approved=False, rule="TEST", reason="refused here")

    monkeypatch.setattr(stages.pipeline, "decide", refusing_the_close)

    async def target_then_back_below_the_entry() -> None:
        await stages.submit(signal(take_profit=[97100, 105000]))
        await stages.book_fills()
        await price_to(stages, 97200, filling=order_link_id("ladder", "voc", "p-voc", 1))
        stages.exchange.set_prices({"BTCUSDT": Decimal(96900)})
        await stages.book_fills()

    stages.run(target_then_back_below_the_entry())

    [move] = stages.journal.stop_moves()
    assert move["outcome"] == "rejected" and "refused here" in move["reason"]
    status = {o["orderLinkId"]: o["orderStatus"] for o in stages.orders_of("ladder")}
    assert status[second] == "New"  # still there to take profit: nothing was cancelled


class LimitThenMore(Strategy):
    """Bids 0.002 BTC at 96900; once filled, adds 0.001 at market (leg 1) and a reduce-only
    target at 105000 (leg 2)."""

    def on_signal(self, signal: Signal, context: StrategyContext) -> StrategyOutput:
        return [
            self.intent(signal, context, side=Side.BUY, qty=Decimal("0.002"), price=Decimal(96900))
        ]

    def on_fill(
        self, fill: Fill, signal: Signal, context: StrategyContext
    ) -> StrategyOutput | None:
        if fill.leg != 0 or not fill.order_done:
            return None
        return [
            small_buy(self, signal, context, leg=1),
            self.intent(
                signal,
                context,
                side=Side.SELL,
                qty=Decimal("0.003"),
                price=Decimal(105000),
                reduce_only=True,
                leg=2,
            ),
        ]


def test_what_a_fill_long_after_its_signal_calls_for_is_not_stale(build: Build) -> None:
    stages = build(
        {"hooked": (LimitThenMore("hooked", StrategyParams()), "k1", "voc")},
        risk=ROOMY.model_copy(update={"max_signal_age_s": 1.0}),
    )

    async def filled_after_the_signal_went_stale() -> None:
        await stages.submit(signal())
        await asyncio.sleep(1.2)  # the signal is stale now; the fill to come is not
        await price_to(stages, 96800, filling=order_link_id("hooked", "voc", "p-voc", 0))
        await stages.book_fills()

    stages.run(filled_after_the_signal_went_stale())

    decisions = [row for row in stages.journal.decisions() if row.strategy == "hooked"]
    assert [(row.leg, row.approved) for row in sorted(decisions, key=lambda r: r.leg)] == [
        (0, True),
        (1, True),
        (2, True),
    ], [row.reason for row in decisions]
