"""BybitVenue through real pybit against the simulator: reads, classification, no secrets."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import SecretStr

from bot.config import Environment
from bot.execution.executor import build_request
from bot.logs import logger
from bot.messages import (
    Execution,
    ExitOrder,
    OrderEvent,
    OrderRequest,
    OrderStatus,
    OrderType,
    PositionUpdate,
    Side,
)
from bot.secrets import ApiCredentials
from bot.sim import SimAccountSpec, SimExchange, SimFaults, SimServer, SimulatorConfig
from bot.sim.params import PositionQueryParams
from bot.venue.bybit import READ_ATTEMPTS, BybitVenue
from bot.venue.errors import AmbiguousError, KeyFatalError, OrderRejectedError, RetryableError
from tests.conftest import wait_for
from tests.factories import approve, make_intent

KEY, SECRET = "venue-test-key", "venue-test-secret-value"


@pytest.fixture
def sim() -> Iterator[tuple[SimExchange, SimServer]]:
    exchange = SimExchange(SimulatorConfig(seed=3))
    exchange.add_account(SimAccountSpec(api_key=KEY, api_secret=SecretStr(SECRET)))
    with SimServer(exchange) as server:
        yield exchange, server


@pytest.fixture
def venue(sim: tuple[SimExchange, SimServer]) -> Iterator[BybitVenue]:
    credentials = ApiCredentials("main", SecretStr(KEY), SecretStr(SECRET))
    venue = BybitVenue(credentials, Environment.SIM, sim_url=sim[1].url, timeout_s=2)
    yield venue
    venue.close()


def requests_to(exchange: SimExchange, path: str) -> int:
    return int(exchange.stats()["requests_by_path"].get(path, 0))


def test_reads_market_and_account_state(venue: BybitVenue) -> None:
    async def read() -> tuple[Decimal, Decimal, Decimal, Decimal]:
        instrument = await venue.instrument("BTCUSDT")
        return (
            await venue.last_price("BTCUSDT"),
            (await venue.wallet()).equity_usdt,
            instrument.qty_step,
            sum((p.size for p in await venue.positions()), Decimal(0)),
        )

    assert asyncio.run(read()) == (Decimal(97000), Decimal(10000), Decimal("0.001"), Decimal(0))


def test_a_market_order_is_capped_at_the_venues_smaller_market_maximum(venue: BybitVenue) -> None:
    instrument = asyncio.run(venue.instrument("BTCUSDT"))

    assert (instrument.max_order_qty, instrument.max_market_order_qty) == (1190, 500)
    assert instrument.max_qty(OrderType.MARKET) == 500
    assert instrument.max_qty(OrderType.LIMIT) == 1190


async def filled(venue: BybitVenue, request: OrderRequest) -> OrderEvent | None:
    """Place `request` and wait (bounded) for its fill: the answer is only an acknowledgement,
    the fill follows, as on Bybit."""
    await venue.place_order(request)
    for _ in range(200):
        found = await venue.get_order(request.order_link_id, "BTCUSDT")
        if found is not None and found.status == "Filled":
            break
        await asyncio.sleep(0.01)
    return found


def position_row(exchange: SimExchange) -> dict[str, Any]:
    """The BTCUSDT position as the simulator's `/v5/position/list` answers it."""
    query = PositionQueryParams.model_validate({"category": "linear", "symbol": "BTCUSDT"})
    row: dict[str, Any] = exchange.positions(KEY, query)["list"][0]
    return row


def test_position_fills_and_orders_are_read_back_in_bybit_shapes(venue: BybitVenue) -> None:
    request = build_request(approve(make_intent(side="Sell", signal_id="short-1")), "main")

    async def trade() -> tuple[
        list[PositionUpdate], list[Execution], OrderEvent | None, OrderEvent | None
    ]:
        found = await filled(venue, request)
        return (
            await venue.positions(),
            await venue.executions_since(None),
            found,
            await venue.get_order("follow-0-unknown", "BTCUSDT"),
        )

    positions, fills, found, missing = asyncio.run(trade())

    assert [(p.symbol, p.size) for p in positions] == [("BTCUSDT", Decimal("-0.01"))]
    assert [(f.order_link_id, f.side, f.qty) for f in fills] == [
        (request.order_link_id, Side.SELL, Decimal("0.01"))
    ]
    assert fills[0].fee > 0
    assert found is not None
    assert found.status == "Filled"
    assert missing is None


def test_trading_stop_moves_the_stop_and_an_unchanged_stop_is_success(
    sim: tuple[SimExchange, SimServer], venue: BybitVenue
) -> None:
    exchange = sim[0]
    intent = make_intent(stop_loss=Decimal(95000), take_profit=Decimal(99000))
    asyncio.run(filled(venue, build_request(approve(intent), "main")))
    exchange.set_prices({"BTCUSDT": 98000})

    async def move_to_break_even() -> None:
        await venue.set_trading_stop("BTCUSDT", stop_loss=Decimal(97000), take_profit=None)
        await venue.set_trading_stop("BTCUSDT", stop_loss=Decimal(97000), take_profit=None)

    asyncio.run(move_to_break_even())  # the second is Bybit's 34040 "not modified"

    assert (position_row(exchange)["stopLoss"], position_row(exchange)["takeProfit"]) == (
        "97000",
        "99000",
    )
    assert requests_to(exchange, "/v5/position/trading-stop") == 2
    assert exchange.stats()["answers_by_ret_code"].get("34040") == 1
    exchange.set_prices({"BTCUSDT": 96900})

    def executed() -> list[ExitOrder] | None:
        exits = asyncio.run(venue.exit_orders("BTCUSDT"))
        return exits if any(e.status is OrderStatus.FILLED for e in exits) else None

    # The stop executed; the take profit, a waiting order too, was deactivated with it.
    exits = wait_for(executed, what="the stop")
    assert sorted((e.kind, e.trigger_price, e.status) for e in exits) == [
        ("StopLoss", Decimal(97000), OrderStatus.FILLED),
        ("TakeProfit", Decimal(99000), OrderStatus.CANCELLED),
    ]


def test_trading_stop_zero_cancels_and_no_level_sends_nothing(
    sim: tuple[SimExchange, SimServer], venue: BybitVenue
) -> None:
    intent = make_intent(stop_loss=Decimal(95000), take_profit=Decimal(99000))
    asyncio.run(filled(venue, build_request(approve(intent), "main")))

    async def cancel_take_profit() -> None:
        await venue.set_trading_stop("BTCUSDT", stop_loss=None, take_profit=Decimal(0))
        await venue.set_trading_stop("BTCUSDT", stop_loss=None, take_profit=None)

    asyncio.run(cancel_take_profit())

    assert (position_row(sim[0])["stopLoss"], position_row(sim[0])["takeProfit"]) == (
        "95000",
        "0",
    )
    assert requests_to(sim[0], "/v5/position/trading-stop") == 1


@pytest.mark.parametrize(
    ("open_long", "stop_loss", "message"),
    [
        (False, Decimal(90000), "zero position"),
        (True, Decimal(98000), "must be below"),  # a long's stop above the price
    ],
)
def test_a_refused_trading_stop_is_a_rejection_sent_once(
    sim: tuple[SimExchange, SimServer],
    venue: BybitVenue,
    open_long: bool,
    stop_loss: Decimal,
    message: str,
) -> None:
    if open_long:
        asyncio.run(filled(venue, build_request(approve(make_intent()), "main")))

    with pytest.raises(OrderRejectedError) as caught:
        asyncio.run(venue.set_trading_stop("BTCUSDT", stop_loss=stop_loss, take_profit=None))

    assert caught.value.ret_code == 10001
    assert message in caught.value.message
    assert requests_to(sim[0], "/v5/position/trading-stop") == 1


def test_pybit_does_not_retry_orders_itself(
    sim: tuple[SimExchange, SimServer], venue: BybitVenue
) -> None:
    sim[0].set_faults(SimFaults(rate_limit_10006=1.0))

    with pytest.raises(RetryableError) as caught:
        asyncio.run(venue.place_order(build_request(approve(make_intent()), "main")))

    assert caught.value.ret_code == 10006
    assert requests_to(sim[0], "/v5/order/create") == 1  # the executor alone decides retries


def test_reads_are_retried_a_bounded_number_of_times(
    sim: tuple[SimExchange, SimServer], venue: BybitVenue
) -> None:
    sim[0].set_faults(SimFaults(http_5xx=1.0))

    with pytest.raises(AmbiguousError):
        asyncio.run(venue.last_price("BTCUSDT"))

    assert requests_to(sim[0], "/v5/market/tickers") == READ_ATTEMPTS


def test_an_outage_is_a_warning_once_a_while_not_one_per_retry(
    sim: tuple[SimExchange, SimServer], venue: BybitVenue
) -> None:
    # Reproduced: 20-50 warnings a second while the venue was down.
    sim[0].set_faults(SimFaults(http_5xx=1.0))
    lines: list[str] = []
    handler = logger.add(lines.append, level="WARNING", format="{message}")
    try:
        for _ in range(3):
            with pytest.raises(AmbiguousError):
                asyncio.run(venue.last_price("BTCUSDT"))
    finally:
        logger.remove(handler)

    assert sum("venue read failed, retrying" in line for line in lines) == 1


@pytest.mark.parametrize(
    ("resync_moves_the_clock", "expected_calls"),
    [(True, READ_ATTEMPTS + 1), (False, READ_ATTEMPTS)],
)
def test_a_read_whose_last_try_met_a_clock_just_fixed_gets_one_more(
    venue: BybitVenue,
    monkeypatch: pytest.MonkeyPatch,
    resync_moves_the_clock: bool,
    expected_calls: int,
) -> None:
    """A skewed venue coming back: the last try is refused 10002 and its resync moves the
    signing clock; one more try (signed right) is worth making, and only one."""
    calls: list[str] = []

    async def scripted(operation: str, *args: Any, **params: Any) -> Any:
        calls.append(operation)
        if len(calls) < READ_ATTEMPTS:
            raise AmbiguousError("HTTP 503", operation=operation)
        if len(calls) == READ_ATTEMPTS:
            # What the failure's resync does: set the clock right, or only re-estimate it.
            venue._clock.offset_ms += 6_000 if resync_moves_the_clock else 3
            raise RetryableError("timestamp", retry_after_s=0, ret_code=10002, operation=operation)
        return {"list": [{"symbol": "BTCUSDT", "lastPrice": "97000"}]}

    monkeypatch.setattr(venue, "_call", scripted)
    monkeypatch.setattr("bot.venue.bybit._READ_BACKOFF_S", (0.0, 0.0, 0.0))

    if resync_moves_the_clock:
        assert asyncio.run(venue.last_price("BTCUSDT")) == Decimal(97000)
    else:
        with pytest.raises(RetryableError):
            asyncio.run(venue.last_price("BTCUSDT"))
    assert len(calls) == expected_calls


def test_clock_drift_is_retryable(sim: tuple[SimExchange, SimServer], venue: BybitVenue) -> None:
    sim[0].set_faults(SimFaults(clock_skew_ms=60_000))

    with pytest.raises(RetryableError) as caught:
        asyncio.run(venue.place_order(build_request(approve(make_intent()), "main")))

    assert caught.value.ret_code == 10002


def test_the_signing_clock_follows_the_venue_but_never_a_stalled_answer(
    sim: tuple[SimExchange, SimServer], venue: BybitVenue
) -> None:
    sim[0].set_faults(SimFaults(clock_skew_ms=60_000))
    offset = asyncio.run(venue.sync_clock())
    assert 59_000 < offset < 61_000
    asyncio.run(venue.place_order(build_request(approve(make_intent()), "main")))  # accepted

    sim[0].set_faults(SimFaults(delay=1.0, delay_ms=1500))  # every answer held 1.5 s

    assert asyncio.run(venue.sync_clock()) == offset  # kept: half a stall is no clock


def test_a_resync_passes_over_a_try_the_venue_failed(
    sim: tuple[SimExchange, SimServer], venue: BybitVenue
) -> None:
    # A 503 on one of a resync's tries of /v5/market/time (the soak's faults) failed the
    # whole resync: the request refused 10002 went out again at the wrong offset, refused
    # again, and a cancel spent its three tries in 10 ms (seeds 918273645, 987654321).
    sim[0].set_faults(SimFaults(clock_skew_ms=60_000, http_5xx=0.3))

    offsets = [asyncio.run(venue.sync_clock()) for _ in range(5)]

    assert sim[0].stats()["faults_injected"]["http_5xx"] >= 3  # some of the tries failed
    assert all(59_000 < offset < 61_000 for offset in offsets)


def test_a_resync_whose_every_try_failed_raises_and_keeps_the_offset(
    sim: tuple[SimExchange, SimServer], venue: BybitVenue
) -> None:
    sim[0].set_faults(SimFaults(http_5xx=1.0))

    with pytest.raises(AmbiguousError):
        asyncio.run(venue.sync_clock())

    assert venue.clock_offset_ms == 0


def test_wrong_secret_is_fatal_for_the_key(sim: tuple[SimExchange, SimServer]) -> None:
    credentials = ApiCredentials("main", SecretStr(KEY), SecretStr("not-the-secret"))
    venue = BybitVenue(credentials, Environment.SIM, sim_url=sim[1].url)

    with pytest.raises(KeyFatalError) as caught:
        asyncio.run(venue.wallet())

    assert caught.value.ret_code == 10004
    venue.close()


def test_the_secret_is_in_no_repr_or_error(
    sim: tuple[SimExchange, SimServer], venue: BybitVenue
) -> None:
    sim[0].set_faults(SimFaults(rate_limit_10006=1.0))

    with pytest.raises(RetryableError) as caught:
        asyncio.run(venue.place_order(build_request(approve(make_intent()), "main")))

    sessions = venue._sessions
    texts = [
        repr(sessions),
        *(str(vars(s)) for s in sessions),
        str(caught.value),
        repr(caught.value),
    ]
    assert not [text for text in texts if SECRET in text]


def test_sim_url_is_required_in_sim_and_refused_elsewhere() -> None:
    credentials = ApiCredentials("main", SecretStr(KEY), SecretStr(SECRET))

    with pytest.raises(ValueError, match="simulator URL"):
        BybitVenue(credentials, Environment.SIM)
    with pytest.raises(ValueError, match="simulator URL"):
        BybitVenue(credentials, Environment.MAINNET, sim_url="http://127.0.0.1:1")
    testnet = BybitVenue(credentials, Environment.TESTNET)
    assert testnet.endpoint == "https://api-testnet.bybit.com"
    testnet.close()


@pytest.mark.parametrize("rows", [[], [{"execId": "e-1", "execTime": ""}]])
def test_pages_of_fills_past_the_cap_saying_no_time_are_ambiguous_not_a_crash(
    venue: BybitVenue, monkeypatch: pytest.MonkeyPatch, rows: list[dict[str, Any]]
) -> None:
    # Full pages that left more to read, but with no fill time to read on below (empty
    # pages carrying a cursor, a time not given): min() of nothing raised a ValueError.
    async def capped(*args: Any, **params: Any) -> Any:
        return rows, True

    monkeypatch.setattr(venue, "_paged", capped)

    with pytest.raises(AmbiguousError, match="no time given"):
        asyncio.run(venue.executions_since(datetime.now(UTC) - timedelta(hours=1)))


def test_fills_since_a_time_are_asked_for_up_to_the_venues_now_not_ours(
    venue: BybitVenue, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reproduced: the last window ended at our estimate of the venue's clock; a fill the venue
    # stamped past it (the estimate lagging a drift) was left out, and a start settled an
    # order Filled whose fill no book held. The window reaching now has no endTime: Bybit's
    # then runs 7 days from its startTime.
    asked: list[dict[str, Any]] = []
    pages = venue._paged

    async def recording(*args: Any, **params: Any) -> Any:
        asked.append(params)
        return await pages(*args, **params)

    monkeypatch.setattr(venue, "_paged", recording)
    eight_days_ago = datetime.now(UTC) - timedelta(days=8)

    asyncio.run(venue.executions_since(eight_days_ago))

    assert ["endTime" in params for params in asked] == [True, False]
    assert asked[1]["startTime"] == asked[0]["endTime"] + 1
