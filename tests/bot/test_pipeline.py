"""The pipeline's routing and its guard rails around plug-in strategies, with real stages."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path

import pytest
from loguru import logger

from bot.account import Account, StrandedBy
from bot.execution.executor import Executor
from bot.journal import Journal
from bot.market import MarketData
from bot.messages import OrderEvent, OrderIntent, OrderStatus, OrderType, Side, Signal, parse_signal
from bot.pipeline import Pipeline, StrategySlot
from bot.risk.config import RiskConfig
from bot.risk.gate import RiskGate
from bot.runner import StrategyRunner
from bot.sim import SimExchange, SimFaults
from strategies.base import (
    Position,
    Strategy,
    StrategyContext,
    StrategyOutput,
    StrategyParams,
)
from strategies.follow import Follow
from tests.conftest import client_orders, sim_venues
from tests.factories import approve, make_intent


class Exploding(Strategy):
    def on_signal(self, signal: Signal, context: StrategyContext) -> StrategyOutput:
        raise ZeroDivisionError("plug-in bug")


class Impostor(Strategy):
    """Tries to trade under another strategy's name, i.e. with that strategy's key."""

    def on_signal(self, signal: Signal, context: StrategyContext) -> Sequence[OrderIntent]:
        assert signal.side is not None
        intent = self.intent(signal, context, side=signal.side, qty=Decimal("0.001"))
        return [intent.model_copy(update={"strategy": "follow"})]


class Renamed(Impostor):
    """Renames itself before building intents, so they carry the other strategy's name."""

    def on_signal(self, signal: Signal, context: StrategyContext) -> Sequence[OrderIntent]:
        self.name = "follow"
        assert signal.side is not None
        return [self.intent(signal, context, side=signal.side, qty=Decimal("0.001"))]


class TwoOnOneLeg(Impostor):
    def on_signal(self, signal: Signal, context: StrategyContext) -> Sequence[OrderIntent]:
        assert signal.side is not None
        intent = self.intent(signal, context, side=signal.side, qty=Decimal("0.001"))
        return [intent, intent.model_copy(update={"qty": Decimal("0.002")})]


class TwoLegs(Impostor):
    def on_signal(self, signal: Signal, context: StrategyContext) -> Sequence[OrderIntent]:
        assert signal.side is not None
        intent = self.intent(signal, context, side=signal.side, qty=Decimal("0.001"))
        return [intent, intent.model_copy(update={"leg": 1})]


class OtherSymbol(Impostor):
    """Trades a symbol its signal is not about (priced at the signal's, it slipped the
    limits: 0.05 BTC valued at ETH's price)."""

    def on_signal(self, signal: Signal, context: StrategyContext) -> Sequence[OrderIntent]:
        intent = self.intent(signal, context, side=Side.BUY, qty=Decimal("0.001"))
        return [intent.model_copy(update={"symbol": "ETHUSDT"})]


class PriceForger(Impostor):
    """Writes its own price into the context it was given, then buys 0.5 BTC (48,500 USDT)."""

    def on_signal(self, signal: Signal, context: StrategyContext) -> Sequence[OrderIntent]:
        object.__setattr__(context, "last_price", Decimal(20))  # the attack
        return [self.intent(signal, context, side=Side.BUY, qty=Decimal("0.5"))]


class PositionForger(Impostor):
    """Gives itself a position in the context, as if it held one."""

    def on_signal(self, signal: Signal, context: StrategyContext) -> Sequence[OrderIntent]:
        context.positions["BTCUSDT"] = Position(Decimal("0.001"), Decimal(97000))  # type: ignore[index]
        return []


class NanCopy(Impostor):
    """Returns an intent copied with an update, which pydantic does not validate."""

    def on_signal(self, signal: Signal, context: StrategyContext) -> Sequence[OrderIntent]:
        intent = self.intent(signal, context, side=Side.BUY, qty=Decimal("0.001"))
        return [intent.model_copy(update={"qty": Decimal("NaN")})]


@pytest.fixture
def stages(tmp_path: Path) -> Iterator[tuple[Pipeline, Journal, SimExchange]]:
    with ExitStack() as resources:
        exchange, venues = sim_venues(resources)
        plugins: list[tuple[str, Strategy, str, str]] = [
            ("follow", Follow("follow", Follow.Params()), "k1", "voc"),
            ("exploding", Exploding("exploding", StrategyParams()), "k2", "voc"),
            ("impostor", Impostor("impostor", StrategyParams()), "k2", "other"),
            ("renamed", Renamed("renamed", StrategyParams()), "k2", "renamed"),
            ("two_legs", TwoOnOneLeg("two_legs", StrategyParams()), "k2", "legs"),
            ("legs", TwoLegs("legs", StrategyParams()), "k2", "two"),
            ("other_symbol", OtherSymbol("other_symbol", StrategyParams()), "k2", "cross"),
            ("forger", PriceForger("forger", StrategyParams()), "k2", "forge"),
            ("holder", PositionForger("holder", StrategyParams()), "k2", "held"),
            ("nan_copy", NanCopy("nan_copy", StrategyParams()), "k2", "nan"),
            ("follow_nan", Follow("follow_nan", Follow.Params()), "k1", "nan"),
        ]
        slots = {
            name: StrategySlot(name, plugin, key, frozenset({source}))
            for name, plugin, key, source in plugins
        }
        journal = Journal(tmp_path / "journal.sqlite3")
        executor = Executor(journal, venues)
        pipeline = Pipeline(
            journal,
            slots,
            RiskGate(RiskConfig()),
            executor,
            MarketData(venues, Account(journal, venues), journal, 1.0),
            StrategyRunner(budget_s=5.0),
        )
        yield pipeline, journal, exchange


def signal(source: str = "voc", **fields: object) -> Signal:
    body: dict[str, object] = {
        "id": f"p-{source}",
        "symbol": "BTCUSDT",
        "side": "buy",
        "stop_loss": 95000,
        "ts": datetime.now(UTC).isoformat(),
    }
    body.update(fields)
    return parse_signal(source, body)


def process(pipeline: Pipeline, journal: Journal, item: Signal) -> None:
    """Submit a signal as an adapter does and wait until its lanes have run it."""
    asyncio.run(with_lanes(pipeline, partial(submit_and_drain, pipeline, item)))


async def submit_and_drain(pipeline: Pipeline, item: Signal) -> None:
    """Submit a signal and wait until the lanes (running: `with_lanes`) have run it."""
    assert await pipeline.submit(item)
    await pipeline.drain()


async def with_lanes(pipeline: Pipeline, work: Callable[[], Awaitable[None]]) -> None:
    """`work()` while the pipeline's lanes run."""
    lanes = asyncio.create_task(pipeline.run())
    try:
        await work()
    finally:
        lanes.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await lanes


def decisions(journal: Journal) -> dict[str | None, tuple[str, str]]:
    return {row.strategy: (row.decision, row.reason) for row in journal.trace()}


def test_a_raising_strategy_is_journaled_and_does_not_stop_the_others(
    stages: tuple[Pipeline, Journal, SimExchange],
) -> None:
    pipeline, journal, exchange = stages

    process(pipeline, journal, signal())

    found = decisions(journal)
    assert found["exploding"] == ("failed", "on_signal raised ZeroDivisionError: plug-in bug")
    assert found["follow"][0] == "approved"
    assert len(client_orders(exchange.orders())) == 1


async def _failed_while_the_journal_was_held(
    pipeline: Pipeline, journal: Journal, item: Signal, errors: list[str]
) -> None:
    """Submit `item` (answered 202), then hold the journal's write lock, as another program
    (a backup tool) would, until its lane has failed to journal its work: what a full disk
    does, undone at once."""
    journal._db.execute("PRAGMA busy_timeout=50")  # fail fast, not after 5 s
    holder = sqlite3.connect(journal.path, isolation_level=None)
    try:
        assert await pipeline.submit(item)
        holder.execute("BEGIN IMMEDIATE")  # before its lane decides it
        for _ in range(200):
            if errors:
                break
            await asyncio.sleep(0.01)
        holder.execute("COMMIT")
    finally:
        holder.close()


async def _orders_placed(exchange: SimExchange, count: int) -> None:
    for _ in range(500):
        if len(client_orders(exchange.orders())) >= count:
            return
        await asyncio.sleep(0.01)


def test_a_signal_the_journal_could_not_decide_runs_again_once_it_writes(
    stages: tuple[Pipeline, Journal, SimExchange],
) -> None:
    # Reproduced on a full disk: a signal answered 202 whose decision and order could not be
    # journaled stayed unprocessed (a traceback in the log) until the next start, which
    # declined it as stale, though the disk had room again seconds later.
    pipeline, journal, exchange = stages
    errors: list[str] = []
    handler = logger.add(errors.append, format="{message}\n{exception}", level="ERROR")

    async def held_then_released() -> None:
        held = signal(id="held", strategy="follow")
        await _failed_while_the_journal_was_held(pipeline, journal, held, errors)
        await _orders_placed(exchange, 1)
        await pipeline.drain()
        journal.flush()

    try:
        asyncio.run(with_lanes(pipeline, held_then_released))
    finally:
        logger.remove(handler)

    assert [line.strip() for line in errors] == [
        "signal held could not be journaled (database is locked); it runs again in 1 s"
    ]
    assert decisions(journal)["follow"][0] == "approved"
    assert len(client_orders(exchange.orders())) == 1
    assert journal.unprocessed_signals() == []


def test_a_signal_run_again_for_its_journal_is_not_overtaken_by_a_later_one_of_its_lane(
    stages: tuple[Pipeline, Journal, SimExchange],
) -> None:
    # Run again from a timer while its lane went on, a signal the journal failed came after
    # a later one of the same key and symbol that arrived once the journal wrote again: an
    # entry re-run after its own close would have opened a position nothing closes.
    pipeline, journal, exchange = stages
    errors: list[str] = []
    handler = logger.add(errors.append, format="{message}", level="ERROR")

    async def failed_then_a_later_one() -> None:
        first = signal(id="first", strategy="follow")
        await _failed_while_the_journal_was_held(pipeline, journal, first, errors)
        assert await pipeline.submit(signal(id="second", strategy="follow"))
        await _orders_placed(exchange, 2)
        await pipeline.drain()
        journal.flush()

    try:
        asyncio.run(with_lanes(pipeline, failed_then_a_later_one))
    finally:
        logger.remove(handler)

    links = {row.signal_id: row.order_link_id for row in journal.trace() if row.order_link_id}
    assert links.keys() == {"first", "second"}, decisions(journal)  # both traded, ...
    created = {o["orderLinkId"]: int(o["createdTime"]) for o in client_orders(exchange.orders())}
    assert created[links["first"]] <= created[links["second"]]  # ... in their order


def _disk_full_at_the_first_send(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal's disk full once, as the first order's send attempt (Submitting) is
    written: that order travels unjournaled, and the signal (or tick) fails midway."""
    record_order_event = journal.record_order_event
    failures = [sqlite3.OperationalError("database or disk is full")]

    def full_once(event: OrderEvent) -> bool:
        if event.status is OrderStatus.SUBMITTING and failures:
            raise failures.pop()
        return record_order_event(event)

    monkeypatch.setattr(journal, "record_order_event", full_once)


@pytest.mark.parametrize("looked_up_meanwhile", [False, True])
def test_a_signal_run_again_sends_the_legs_its_journal_failure_left_unsent(
    stages: tuple[Pipeline, Journal, SimExchange],
    monkeypatch: pytest.MonkeyPatch,
    looked_up_meanwhile: bool,
) -> None:
    # The disk full as its first leg was sent: that leg's Submitting unwritten, the signal
    # failed with both legs decided, and its run again skipped the strategy that decided
    # them. Its second leg stayed Pending, never sent, until its signal went stale.
    # `looked_up_meanwhile`: the reconciliation loop looks that leg up (slowly) as the signal
    # runs again, which passed over a leg it found in flight: the loop never sends a Pending
    # one, so it was never sent either.
    pipeline, journal, exchange = stages
    _disk_full_at_the_first_send(journal, monkeypatch)
    executor = pipeline._executor
    venue = executor._venues["k2"]
    get_order = venue.get_order

    async def slowly(order_link_id: str, symbol: str) -> object:
        if order_link_id.startswith("legs-1-"):
            await asyncio.sleep(1.5)
        return await get_order(order_link_id, symbol)

    async def reconciling() -> None:
        while True:
            await asyncio.sleep(0.1)
            await executor.reconcile("k2")

    async def two_legs() -> None:
        loop = asyncio.create_task(reconciling()) if looked_up_meanwhile else None
        if loop is not None:
            monkeypatch.setattr(venue, "get_order", slowly)
        assert await pipeline.submit(signal("two", id="legs", strategy="legs"))
        for _ in range(800):
            if len(client_orders(exchange.orders())) == 2 and pipeline.queued == 0:
                break
            await asyncio.sleep(0.01)
        await pipeline.drain()
        if loop is not None:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        journal.flush()

    asyncio.run(with_lanes(pipeline, two_legs))

    assert len(client_orders(exchange.orders())) == 2  # each leg once
    statuses = [order.status for order in journal.unfinished_orders()]
    assert statuses == []
    assert journal.unprocessed_signals() == []


def test_market_data_the_venue_cannot_give_declines_under_its_own_rule(
    stages: tuple[Pipeline, Journal, SimExchange],
) -> None:
    pipeline, journal, exchange = stages
    exchange.set_faults(SimFaults(http_5xx=1.0))  # prices and equity cannot be fetched

    process(pipeline, journal, signal())

    (row,) = [row for row in journal.decisions() if row.strategy == "follow"]
    assert (row.approved, row.rule) == (False, "MARKET_DATA")  # the venue's, not the strategy's
    assert decisions(journal)["follow"][1].startswith("market data unavailable")
    assert client_orders(exchange.orders()) == []


def test_a_strategy_cannot_trade_under_another_strategys_name(
    stages: tuple[Pipeline, Journal, SimExchange],
) -> None:
    pipeline, journal, exchange = stages

    process(pipeline, journal, signal(source="other"))

    assert decisions(journal)["impostor"][1] == (
        "strategy returned an intent for another strategy or signal"
    )
    assert client_orders(exchange.orders()) == []


def test_a_strategy_that_renames_itself_still_trades_only_as_itself(
    stages: tuple[Pipeline, Journal, SimExchange],
) -> None:
    pipeline, journal, exchange = stages

    process(pipeline, journal, signal(source="renamed"))

    assert decisions(journal)["renamed"][1] == (
        "strategy returned an intent for another strategy or signal"
    )
    assert client_orders(exchange.orders()) == []


def test_two_intents_for_one_leg_are_declined_not_half_placed(
    stages: tuple[Pipeline, Journal, SimExchange],
) -> None:
    pipeline, journal, exchange = stages

    process(pipeline, journal, signal(source="legs"))

    assert "several intents for one leg" in decisions(journal)["two_legs"][1]
    assert client_orders(exchange.orders()) == []


def test_an_intent_for_a_symbol_the_signal_is_not_about_is_declined(
    stages: tuple[Pipeline, Journal, SimExchange],
) -> None:
    pipeline, journal, exchange = stages

    process(pipeline, journal, signal("cross"))

    assert (
        "an intent for ETHUSDT, but its call was about BTCUSDT"
        in (decisions(journal)["other_symbol"][1])
    )
    assert client_orders(exchange.orders()) == []


def test_the_gate_prices_an_intent_at_the_bots_price_whatever_the_strategy_wrote(
    stages: tuple[Pipeline, Journal, SimExchange],
) -> None:
    pipeline, journal, exchange = stages

    process(pipeline, journal, signal("forge"))

    (row,) = [row for row in journal.decisions() if row.strategy == "forger"]
    assert not row.approved  # 48,500 USDT, over the notional limit
    assert client_orders(exchange.orders()) == []


def test_a_strategy_cannot_write_into_its_contexts_positions(
    stages: tuple[Pipeline, Journal, SimExchange],
) -> None:
    pipeline, journal, _ = stages

    process(pipeline, journal, signal("held"))

    assert decisions(journal)["holder"] == (
        "failed",
        "on_signal raised TypeError: the context's mappings are read-only: copy one with "
        "dict(...) to change it",
    )


def test_an_intent_copied_with_a_bad_value_is_declined_and_the_others_still_trade(
    stages: tuple[Pipeline, Journal, SimExchange],
) -> None:
    pipeline, journal, exchange = stages

    process(pipeline, journal, signal("nan"))

    found = decisions(journal)
    assert found["nan_copy"][0] == "declined"
    assert "strategy returned an invalid OrderIntent: qty:" in found["nan_copy"][1]
    assert found["follow_nan"][0] == "approved"
    assert len(client_orders(exchange.orders())) == 1


def test_strategy_field_routes_to_that_strategy_only(
    stages: tuple[Pipeline, Journal, SimExchange],
) -> None:
    pipeline, journal, _ = stages

    process(pipeline, journal, signal(strategy="follow"))

    assert set(decisions(journal)) == {"follow"}


def test_a_signal_nobody_subscribes_to_is_journaled_with_the_reason(
    stages: tuple[Pipeline, Journal, SimExchange],
) -> None:
    pipeline, journal, _ = stages

    process(pipeline, journal, signal(strategy="ghost"))

    assert decisions(journal) == {
        "ghost": ("declined", "strategy 'ghost' is not configured for source 'voc'")
    }


def test_an_id_reused_for_another_signal_is_warned_of_and_a_resend_is_not(
    stages: tuple[Pipeline, Journal, SimExchange],
) -> None:
    pipeline = stages[0]
    first = signal("nobody", id="reused")
    resent = signal("nobody", id="reused", ts=datetime.now(UTC).isoformat())  # a later copy
    other = signal("nobody", id="reused", side="sell", stop_loss=99000)
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(m.record["message"]), level="WARNING")

    async def submit_all() -> list[bool]:
        return [await pipeline.submit(item) for item in (first, resent, other, other)]

    try:
        accepted = asyncio.run(submit_all())
    finally:
        logger.remove(sink)

    assert accepted == [True, False, False, False]
    reused = [line for line in warnings if "was used before for another signal" in line]
    assert len(reused) == 1 and "(another side, stop_loss)" in reused[0]  # once, not per retry


def test_a_signal_waits_for_its_strategys_stranded_cancels_before_it_is_decided(
    stages: tuple[Pipeline, Journal, SimExchange],
) -> None:
    # Reproduced (a soak whose ladder flipped every few tens of ms after a restart): the
    # targets of a position that had turned were still being cancelled when the next signal
    # turned it back; left out of its context, they rested on the new position for a second,
    # at levels meant for the gone one, until their cancels landed.
    pipeline, journal, exchange = stages
    executor = pipeline._executor
    venue = executor._venues["k1"]
    send_cancel = venue.cancel_order

    async def slow_cancel(order_link_id: str, symbol: str) -> bool:
        await asyncio.sleep(1.0)  # a venue slow to answer the cancel
        return await send_cancel(order_link_id, symbol)

    async def scenario() -> None:
        await submit_and_drain(pipeline, signal(id="opens"))
        target = make_intent(
            side=Side.SELL,
            qty=Decimal("0.001"),
            order_type=OrderType.LIMIT,
            price=Decimal(150000),
            reduce_only=True,
            signal_source="voc",
            signal_id="opens",
            leg=1,
        )
        await executor.execute(approve(target), "k1")
        venue.cancel_order = slow_cancel  # type: ignore[method-assign]
        executor.position_closed(StrandedBy("k1", "BTCUSDT", "follow", was_long=True))
        await submit_and_drain(pipeline, signal(id="next"))

    asyncio.run(with_lanes(pipeline, scenario))

    placed = {
        (row.signal_id, row.leg): row.order_link_id
        for row in journal.trace()
        if row.strategy == "follow" and row.order_link_id
    }
    at_venue = {o["orderLinkId"]: o for o in exchange.orders()}
    target, after = at_venue[placed["opens", 1]], at_venue[placed["next", 0]]
    assert target["orderStatus"] == "Cancelled"
    assert int(str(target["updatedTime"])) <= int(str(after["createdTime"]))


class TwoLegsOnce(Strategy):
    """At its first tick, two buys of BTCUSDT (legs 0 and 1); nothing after."""

    timer_interval_s = 0.2
    timer_symbols = ("BTCUSDT",)

    def __init__(self, name: str, params: StrategyParams) -> None:
        super().__init__(name, params)
        self.ticked = False

    def on_signal(self, signal: Signal, context: StrategyContext) -> StrategyOutput | None:
        return None

    def on_timer(self, tick: Signal, context: StrategyContext) -> StrategyOutput | None:
        if self.ticked:
            return None
        self.ticked = True
        first = self.intent(tick, context, side=Side.BUY, qty=Decimal("0.001"))
        return [first, first.model_copy(update={"leg": 1})]


def test_a_ticks_legs_its_journal_failure_left_unsent_are_carried_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk full as a tick's first leg was sent: a tick has no run again (it is not
    journaled, the next one comes), so its second leg, decided and journaled Pending, was
    never sent (the reconciliation loop only looks a Pending order up)."""
    with ExitStack() as resources:
        exchange, venues = sim_venues(resources)
        slot = StrategySlot("ticker", TwoLegsOnce("ticker", StrategyParams()), "k1", frozenset())
        journal = Journal(tmp_path / "journal.sqlite3")
        pipeline = Pipeline(
            journal,
            {"ticker": slot},
            RiskGate(RiskConfig()),
            Executor(journal, venues),
            MarketData(venues, Account(journal, venues), journal, 1.0),
            StrategyRunner(budget_s=5.0),
        )
        _disk_full_at_the_first_send(journal, monkeypatch)

        async def ticking() -> None:
            timers = asyncio.create_task(pipeline.run_timers())
            try:
                for _ in range(600):
                    if len(client_orders(exchange.orders())) == 2:
                        break
                    await asyncio.sleep(0.01)
            finally:
                timers.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await timers
            await pipeline.drain()
            journal.flush()

        asyncio.run(with_lanes(pipeline, ticking))

        assert len(client_orders(exchange.orders())) == 2  # each leg once
        assert journal.unfinished_orders() == []
