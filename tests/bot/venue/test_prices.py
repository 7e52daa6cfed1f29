"""Prices from the public ticker stream: real pybit against the simulator's `/v5/public/linear`."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
from pydantic import SecretStr

from bot.account import Account
from bot.config import Environment
from bot.journal import Journal
from bot.market import MarketData
from bot.secrets import ApiCredentials
from bot.sim import SimAccountSpec, SimExchange, SimServer, SimulatorConfig
from bot.venue import prices
from bot.venue.bybit import BybitVenue
from bot.venue.prices import HEARTBEAT_S, PriceStream
from tests.bot.test_service import RunningBot, signal
from tests.conftest import wait_for, write_key_secrets

T = TypeVar("T")
KEY, SECRET = "prices-key", "prices-secret"


class LoopThread:
    """An event loop in a thread, running the price stream as the service would."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, call: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(call, self.loop).result(30)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture
def sim() -> Iterator[tuple[SimExchange, SimServer]]:
    exchange = SimExchange(SimulatorConfig())
    exchange.add_account(SimAccountSpec(api_key=KEY, api_secret=SecretStr(SECRET), note="k"))
    with SimServer(exchange) as server:
        yield exchange, server


@pytest.fixture
def streaming(sim: tuple[SimExchange, SimServer]) -> Iterator[tuple[PriceStream, LoopThread]]:
    _, server = sim
    stream = PriceStream(Environment.SIM, sim_url=server.url)
    loop = LoopThread()

    async def start() -> None:
        stream.watch(["BTCUSDT"])
        asyncio.get_running_loop().create_task(stream.run())

    loop.run(start())
    try:
        yield stream, loop
    finally:
        loop.close()


def watch(stream: PriceStream, loop: LoopThread, symbols: list[str]) -> None:
    """`stream.watch(symbols)` on the stream's loop, as MarketData calls it."""

    async def on_the_loop() -> None:
        stream.watch(symbols)

    loop.run(on_the_loop())


def streamed(stream: PriceStream, symbol: str = "BTCUSDT") -> Decimal | None:
    held = stream.price(symbol, max_age_s=60)
    return None if held is None else held[0]


def test_a_watched_symbol_has_the_venue_price_and_follows_its_changes(
    sim: tuple[SimExchange, SimServer], streaming: tuple[PriceStream, LoopThread]
) -> None:
    exchange, _ = sim
    stream, _ = streaming
    start = exchange.prices()["BTCUSDT"]

    assert wait_for(lambda: streamed(stream), what="the first ticker") == start

    exchange.set_prices({"BTCUSDT": start + 250})
    wait_for(lambda: streamed(stream) == start + 250 or None, what="the new price pushed")


def test_a_symbol_asked_for_later_is_subscribed_on_the_live_connection(
    sim: tuple[SimExchange, SimServer], streaming: tuple[PriceStream, LoopThread]
) -> None:
    exchange, _ = sim
    stream, loop = streaming
    wait_for(lambda: streamed(stream), what="the first ticker")

    watch(stream, loop, ["ETHUSDT"])

    assert wait_for(lambda: streamed(stream, "ETHUSDT"), what="ETH") == exchange.prices()["ETHUSDT"]
    assert stream.connects == 1


def test_a_dropped_stream_gives_no_price_until_it_is_back_and_subscribed_again(
    sim: tuple[SimExchange, SimServer], streaming: tuple[PriceStream, LoopThread]
) -> None:
    exchange, server = sim
    stream, _ = streaming
    wait_for(lambda: streamed(stream), what="the first ticker")
    dropped = requests.post(f"{server.url}/sim/streams/drop", json={}, timeout=5).json()
    assert dropped["dropped"] >= 1
    # While it is down (at least the 0.5 s of the first backoff) the price is not given:
    # the caller fetches it by REST ...
    wait_for(lambda: not stream.live, what="the stream down")
    assert streamed(stream) is None
    wait_for(lambda: stream.connects == 2 or None, 30, "the reconnection")
    # ... and once it is back, the symbols watched before are subscribed again.
    exchange.set_prices({"BTCUSDT": Decimal(91234)})
    wait_for(lambda: streamed(stream) == Decimal(91234) or None, what="the price after reconnect")


def test_a_price_is_not_given_once_the_connection_is_silent_for_longer_than_asked(
    streaming: tuple[PriceStream, LoopThread],
) -> None:
    stream, _ = streaming
    wait_for(lambda: streamed(stream), what="the first ticker")

    assert stream.price("BTCUSDT", max_age_s=60) is not None
    assert stream.price("BTCUSDT", max_age_s=0) is None  # heard from 0 s ago is impossible


def test_a_quiet_but_live_market_keeps_its_streamed_price_within_a_second(
    streaming: tuple[PriceStream, LoopThread],
) -> None:
    # The simulator's price does not move: no ticker comes after the first, only the pongs
    # of the stream's heartbeat, so the price stays usable under the one-second default.
    stream, _ = streaming
    wait_for(lambda: streamed(stream), what="the first ticker")
    silent_for = 3 * HEARTBEAT_S + 0.6  # past the heartbeat's phase, and past one second

    time.sleep(silent_for)
    ages = []
    for _ in range(10):
        held = stream.price("BTCUSDT", max_age_s=1.0)
        assert held is not None, "a live stream with a quiet market gave no price"
        ages.append(held[1])
        time.sleep(HEARTBEAT_S / 3)

    assert max(ages) < 1.0


def test_a_symbol_silent_too_long_goes_to_rest_though_the_connection_lives(
    streaming: tuple[PriceStream, LoopThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pongs prove the connection, not that the venue still serves this subscription.
    stream, _ = streaming
    wait_for(lambda: streamed(stream), what="the first ticker")
    monkeypatch.setattr(prices, "TICKER_SILENCE_S", 0.5)

    time.sleep(0.8)

    assert stream.price("BTCUSDT", max_age_s=1.0) is None


def test_market_data_sizes_from_the_stream_without_asking_the_venue(
    sim: tuple[SimExchange, SimServer], streaming: tuple[PriceStream, LoopThread], tmp_path: Path
) -> None:
    exchange, server = sim
    stream, loop = streaming
    wait_for(lambda: streamed(stream), what="the first ticker")
    credentials = ApiCredentials("main", SecretStr(KEY), SecretStr(SECRET))
    venue = BybitVenue(credentials, Environment.SIM, sim_url=server.url, timeout_s=2)
    journal = Journal(tmp_path / "journal.sqlite3")
    venues = {venue.name: venue}
    market = MarketData(
        venues, Account(journal, venues), journal, 1.0, price_streams={venue.name: stream}
    )
    before = exchange.stats()["requests_by_path"].get("/v5/market/tickers", 0)

    async def price() -> Decimal:
        _, last = await market.quote(venue.name, "BTCUSDT")
        return last

    try:
        last = loop.run(price())
    finally:
        venue.close()
        journal.close()

    assert last == exchange.prices()["BTCUSDT"]
    assert exchange.stats()["requests_by_path"].get("/v5/market/tickers", 0) == before
    assert market.price_age_s("BTCUSDT") < 60


def test_the_bot_trades_on_streamed_prices_and_reports_the_stream(
    sim_config: Callable[..., Path], sim: tuple[SimExchange, SimServer], tmp_path: Path
) -> None:
    exchange, server = sim
    write_key_secrets(tmp_path, KEY, SECRET)
    bot = RunningBot(sim_config(extra=f'\n[venue]\nsim_url = "{server.url}"\n')).start()
    try:
        wait_for(
            lambda: (
                requests.get(f"{bot.url}/healthz", timeout=10).json()["price_streams"]
                == {"prices-sim": "live"}
                or None
            ),
            what="the price stream live",
        )
        before = exchange.stats()["requests_by_path"].get("/v5/market/tickers", 0)
        for index in range(3):
            assert bot.post(signal(f"streamed-{index}")).status_code == 202
        wait_for(
            lambda: (
                all(bot.journal_status(f"streamed-{i}") == ["Filled"] for i in range(3)) or None
            ),
            what="three filled orders",
        )
        after = exchange.stats()["requests_by_path"].get("/v5/market/tickers", 0)
        exposition = requests.get(f"{bot.url}/metrics", timeout=10).text
    finally:
        bot.stop()

    assert after == before  # every signal's price came from the stream
    # Its own series, never taken for a key's account stream.
    assert 'bot_price_stream_live{environment="sim"} 1.0' in exposition
    assert 'bot_account_stream_live{key="prices-sim"}' not in exposition


def test_a_symbol_the_venue_does_not_list_costs_only_its_own_price(
    sim: tuple[SimExchange, SimServer], streaming: tuple[PriceStream, LoopThread]
) -> None:
    exchange, _ = sim
    stream, loop = streaming
    wait_for(lambda: streamed(stream), what="the first ticker")

    watch(stream, loop, ["NOPEUSDT", "ETHUSDT"])

    assert wait_for(lambda: streamed(stream, "ETHUSDT"), what="ETH") == exchange.prices()["ETHUSDT"]
    assert streamed(stream, "NOPEUSDT") is None
    assert streamed(stream) is not None  # the connection stayed up with BTC on it
    assert stream.connects == 1
