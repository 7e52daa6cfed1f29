"""Funding settled by the simulator, every 8 h from 00:00 UTC, as Bybit settles and records it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import SecretStr

from bot import clock
from bot.sim import SimAccountSpec, SimExchange, SimulatorConfig
from bot.sim.params import ExecutionQueryParams, TradingStopParams, TransactionLogParams
from bot.sim.views import FUNDING_RATE
from tests.bot.sim.kit import place, position_row, wallet_row

KEY = "funding-key"
FILL_DELAY_MS = 5
#: A settlement (08:00 UTC), and the exchange's start ten seconds before it.
SETTLEMENT = datetime(2026, 12, 6, 8, tzinfo=UTC)
SETTLEMENT_MS = int(SETTLEMENT.timestamp() * 1000)
EIGHT_HOURS = timedelta(hours=8)


@pytest.fixture
def calendar() -> Iterator[clock.VirtualClock]:
    virtual = clock.VirtualClock(SETTLEMENT - timedelta(seconds=10))
    with clock.installed(virtual):
        yield virtual


@pytest.fixture
def exchange(calendar: clock.VirtualClock) -> SimExchange:
    return SimExchange(
        SimulatorConfig(
            seed=1,
            accounts=[SimAccountSpec(api_key=KEY, api_secret=SecretStr("s"))],
            market_fill_delay_ms=FILL_DELAY_MS,
            prices={"BTCUSDT": "97000", "ETHUSDT": "3500"},
        )
    )


def _open(exchange: SimExchange, side: str, qty: str, symbol: str = "BTCUSDT") -> None:
    place(exchange, KEY, side=side, qty=qty, symbol=symbol)
    exchange.advance(FILL_DELAY_MS)


def _pass(exchange: SimExchange, calendar: clock.VirtualClock, moment: datetime) -> None:
    """The calendar reaches `moment`, and the engine wakes as its thread would by then."""
    calendar.advance_to(moment)
    exchange.advance(int(EIGHT_HOURS.total_seconds() * 1000))


def _fundings(exchange: SimExchange) -> list[dict[str, Any]]:
    query = ExecutionQueryParams.model_validate({"category": "linear", "execType": "Funding"})
    rows: list[dict[str, Any]] = exchange.executions(KEY, query)["list"]
    return rows


def _settlements(exchange: SimExchange) -> list[dict[str, Any]]:
    query = TransactionLogParams.model_validate({"type": "SETTLEMENT"})
    rows: list[dict[str, Any]] = exchange.transaction_log(KEY, query)["list"]
    return rows


def _wallet(exchange: SimExchange) -> Decimal:
    return Decimal(wallet_row(exchange, KEY)["totalWalletBalance"])


def test_a_long_held_through_a_settlement_pays_funding_recorded_as_bybit_does(
    exchange: SimExchange, calendar: clock.VirtualClock
) -> None:
    # Arrange: a long of 0.01 BTC at 97,000 before 08:00
    _open(exchange, "Buy", "0.01")
    wallet_before = _wallet(exchange)
    realised_before = Decimal(position_row(exchange, KEY)["cumRealisedPnl"])

    # Act
    _pass(exchange, calendar, SETTLEMENT + timedelta(milliseconds=5))

    # Assert: 0.01 x 97,000 x 0.0001 = 0.097 USDT paid, at 08:00 exactly
    paid = Decimal("0.01") * Decimal(97000) * FUNDING_RATE
    [funding] = _fundings(exchange)
    assert funding["execType"] == "Funding"
    assert funding["execTime"] == str(SETTLEMENT_MS)
    assert (funding["side"], funding["execQty"], funding["execPrice"]) == ("Buy", "0.01", "97000")
    assert Decimal(funding["execFee"]) == paid
    assert Decimal(funding["feeRate"]) == FUNDING_RATE
    assert (funding["orderType"], funding["orderLinkId"], funding["createType"]) == (
        "UNKNOWN",
        "",
        "",
    )
    assert (funding["orderPrice"], funding["orderQty"], funding["closedSize"]) == ("0", "0", "0")
    assert _wallet(exchange) == wallet_before - paid
    position = position_row(exchange, KEY)
    assert Decimal(position["cumRealisedPnl"]) == realised_before - paid
    assert position["size"] == "0.01"  # funding moves no position
    [entry] = _settlements(exchange)
    assert entry["type"] == "SETTLEMENT"
    assert Decimal(entry["funding"]) == -paid  # the log's sign: what the account received
    assert Decimal(entry["fee"]) == 0
    assert Decimal(entry["change"]) == -paid
    assert Decimal(entry["cashBalance"]) == _wallet(exchange)
    assert (entry["size"], entry["orderId"], entry["tradeId"]) == (
        "0.01",
        funding["orderId"],
        funding["execId"],
    )


def test_a_short_receives_funding_while_the_rate_is_positive(
    exchange: SimExchange, calendar: clock.VirtualClock
) -> None:
    _open(exchange, "Sell", "0.5", symbol="ETHUSDT")
    wallet_before = _wallet(exchange)

    _pass(exchange, calendar, SETTLEMENT + timedelta(milliseconds=5))

    received = Decimal("0.5") * Decimal(3500) * FUNDING_RATE
    [funding] = _fundings(exchange)
    assert funding["side"] == "Sell"
    assert Decimal(funding["execFee"]) == -received  # execFee: positive when paid
    assert Decimal(funding["feeRate"]) == -FUNDING_RATE  # Bybit: -rate for a short
    assert _wallet(exchange) == wallet_before + received
    [entry] = _settlements(exchange)
    assert Decimal(entry["funding"]) == received
    assert entry["size"] == "-0.5"


def test_each_position_pays_at_the_mark_price_of_the_settlement(
    exchange: SimExchange, calendar: clock.VirtualClock
) -> None:
    _open(exchange, "Buy", "0.01")
    _open(exchange, "Buy", "1", symbol="ETHUSDT")
    exchange.set_prices({"BTCUSDT": "98000"})  # the mark moves before the settlement

    _pass(exchange, calendar, SETTLEMENT + timedelta(milliseconds=5))

    paid = {row["symbol"]: Decimal(row["execFee"]) for row in _fundings(exchange)}
    assert paid == {
        "BTCUSDT": Decimal("0.01") * Decimal(98000) * FUNDING_RATE,
        "ETHUSDT": Decimal(3500) * FUNDING_RATE,
    }


def test_nothing_is_settled_before_the_boundary_nor_for_a_flat_account(
    exchange: SimExchange, calendar: clock.VirtualClock
) -> None:
    _open(exchange, "Buy", "0.01")
    calendar.advance_to(SETTLEMENT - timedelta(seconds=1))
    exchange.advance(1_000)
    assert _fundings(exchange) == []

    _open(exchange, "Sell", "0.01")  # flat again before 08:00
    _pass(exchange, calendar, SETTLEMENT + timedelta(milliseconds=5))

    assert _fundings(exchange) == []


def test_a_position_opened_after_a_boundary_the_engine_has_not_woken_for_does_not_pay_it(
    exchange: SimExchange, calendar: clock.VirtualClock
) -> None:
    # The calendar jumps past 08:00 (a replay's clock does) with the engine not yet awake:
    # the order placed then comes after the boundary, whose settlement runs first.
    calendar.advance_to(SETTLEMENT + timedelta(minutes=1))

    _open(exchange, "Buy", "0.01")
    exchange.advance(int(EIGHT_HOURS.total_seconds() * 1000))

    assert _fundings(exchange) == []


def test_a_calendar_jump_over_several_boundaries_settles_each_at_its_own_time(
    exchange: SimExchange, calendar: clock.VirtualClock
) -> None:
    _open(exchange, "Buy", "0.01")

    # A replay's clock jumps a day ahead, then the history's next price comes
    calendar.advance_to(SETTLEMENT + 2 * EIGHT_HOURS + timedelta(minutes=1))
    exchange.set_prices({"BTCUSDT": "99000"})

    times = sorted(int(row["execTime"]) for row in _fundings(exchange))
    hours8 = int(EIGHT_HOURS.total_seconds() * 1000)
    assert times == [SETTLEMENT_MS, SETTLEMENT_MS + hours8, SETTLEMENT_MS + 2 * hours8]
    # settled at the mark before the move: the history had no price in between
    assert {row["execPrice"] for row in _fundings(exchange)} == {"97000"}
    balances = [Decimal(entry["cashBalance"]) for entry in reversed(_settlements(exchange))]
    assert balances == sorted(balances, reverse=True)  # each paid once, in turn
    assert len(set(balances)) == 3


def test_a_request_after_a_boundary_comes_after_its_settlement_never_before(
    exchange: SimExchange, calendar: clock.VirtualClock
) -> None:
    # Settled only at the next price move, the payment came after a trading-stop made past
    # 08:00 and stamped the position back at 08:00, so a client keeping the newest position
    # report dropped it (a review found it).
    _open(exchange, "Buy", "0.01")
    calendar.advance_to(SETTLEMENT + timedelta(hours=1))  # a replay's jump, the engine asleep

    exchange.set_trading_stop(
        KEY,
        TradingStopParams.model_validate(
            {"category": "linear", "symbol": "BTCUSDT", "stopLoss": "90000", "positionIdx": 0}
        ),
    )

    [funding] = _fundings(exchange)  # settled before the request acted
    after = position_row(exchange, KEY)
    assert int(after["updatedTime"]) >= int(funding["execTime"])
    exchange.set_prices({"BTCUSDT": "97100"})
    assert len(_fundings(exchange)) == 1


def test_a_failing_settlement_leaves_the_next_wake_up_scheduled(
    exchange: SimExchange, calendar: clock.VirtualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    _open(exchange, "Buy", "0.01")

    def broken(*_: object) -> None:
        raise RuntimeError("a bug")

    with monkeypatch.context() as patched:
        patched.setattr(exchange, "_charge_funding", broken)
        with pytest.raises(RuntimeError):  # the engine's thread keeps it for inspection
            _pass(exchange, calendar, SETTLEMENT + timedelta(milliseconds=5))
    _pass(exchange, calendar, SETTLEMENT + EIGHT_HOURS + timedelta(milliseconds=5))

    assert exchange.funding_paid() > 0  # by the engine's wake-up, before any request's look
    assert [row["execTime"] for row in _fundings(exchange)] == [
        str(SETTLEMENT_MS + int(EIGHT_HOURS.total_seconds() * 1000))
    ]
