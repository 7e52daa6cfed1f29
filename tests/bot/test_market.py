"""MarketData reuses a price or an equity for max_age_s, then asks the venue again."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from bot.account import Account
from bot.config import Environment
from bot.journal import Journal
from bot.market import MarketData
from bot.secrets import ApiCredentials
from bot.sim import SimAccountSpec, SimExchange, SimServer, SimulatorConfig
from bot.venue.bybit import BybitVenue
from strategies.base import StrategyParams


@pytest.fixture
def sim() -> Iterator[tuple[SimExchange, BybitVenue]]:
    exchange = SimExchange(SimulatorConfig())
    exchange.add_account(SimAccountSpec(api_key="market-key", api_secret=SecretStr("secret-m")))
    with SimServer(exchange) as server:
        credentials = ApiCredentials("k", SecretStr("market-key"), SecretStr("secret-m"))
        venue = BybitVenue(credentials, Environment.SIM, sim_url=server.url)
        yield exchange, venue
        venue.close()


def test_cached_for_max_age_then_fetched_again(
    sim: tuple[SimExchange, BybitVenue], tmp_path: Path
) -> None:
    exchange, venue = sim
    journal = Journal(tmp_path / "journal.sqlite3")
    now = [0.0]
    account = Account(journal, {"k": venue})  # no live stream: equity comes by REST
    market = MarketData({"k": venue}, account, journal, max_age_s=1.0, clock=lambda: now[0])

    def requests(path: str) -> int:
        return int(exchange.stats()["requests_by_path"].get(path, 0))

    async def views(times: list[float]) -> None:
        for at in times:
            now[0] = at
            await market.context("k", "follow", StrategyParams(), "BTCUSDT")

    asyncio.run(views([0.0, 0.5, 1.0]))
    cached = (requests("/v5/market/tickers"), requests("/v5/account/wallet-balance"))
    asyncio.run(views([1.6]))

    assert cached == (1, 1)
    assert requests("/v5/market/tickers") == 2
    assert requests("/v5/account/wallet-balance") == 2
