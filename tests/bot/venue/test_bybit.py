"""BybitVenue through real pybit against the simulator: reads, classification, no secrets."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal

import pytest
from pydantic import SecretStr

from bot.config import Environment
from bot.execution.executor import build_request
from bot.messages import Execution, PositionUpdate, Side
from bot.secrets import ApiCredentials
from bot.sim import SimAccountSpec, SimExchange, SimFaults, SimServer, SimulatorConfig
from bot.venue.bybit import READ_ATTEMPTS, BybitVenue
from bot.venue.errors import AmbiguousError, KeyFatalError, RetryableError
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


def test_position_fills_and_orders_are_read_back_in_bybit_shapes(venue: BybitVenue) -> None:
    request = build_request(approve(make_intent(side="Sell", signal_id="short-1")), "main")

    async def trade() -> tuple[list[PositionUpdate], list[Execution], object, object]:
        await venue.place_order(request)  # an acknowledgement: the fill follows, as on Bybit
        for _ in range(200):
            found = await venue.get_order(request.order_link_id, "BTCUSDT")
            if found is not None and found.status == "Filled":
                break
            await asyncio.sleep(0.01)
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
