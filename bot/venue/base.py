"""The venue seam: what the executor and market data need from an exchange.

`Venue` is implemented by `bot.venue.bybit.BybitVenue` for every environment (the simulator
included: it is reached through pybit exactly like Bybit). Test fakes implement the same
Protocol. Methods raise the classified errors of `bot.venue.errors`, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Final, Protocol

from bot.config import Environment
from bot.messages import (
    ClosedPnl,
    Execution,
    ExitOrder,
    Instrument,
    OrderEvent,
    OrderRequest,
    PositionUpdate,
    WalletUpdate,
)

__all__ = [
    "BYBIT_URLS",
    "EXIT_SCAN_ORDERS",
    "PUBLIC_LINEAR_URLS",
    "SETTLE_COIN",
    "Venue",
    "check_sim_url",
    "public_stream_url",
    "venue_urls",
]

#: How many of a symbol's latest orders `Venue.exit_orders` reads (Bybit's page size).
EXIT_SCAN_ORDERS: Final = 50
#: The settle coin of what the bot trades and asks the venue for (positions, orders).
SETTLE_COIN: Final = "USDT"

#: Bybit's V5 hosts per environment: (REST, private stream). The only place they are named.
BYBIT_URLS: Final = {
    Environment.MAINNET: ("https://api.bybit.com", "wss://stream.bybit.com/v5/private"),
    Environment.TESTNET: (
        "https://api-testnet.bybit.com",
        "wss://stream-testnet.bybit.com/v5/private",
    ),
    Environment.DEMO: ("https://api-demo.bybit.com", "wss://stream-demo.bybit.com/v5/private"),
}


#: Bybit's public stream of USDT perpetuals per environment. Demo trading has no public
#: stream of its own: it trades on mainnet's market data.
PUBLIC_LINEAR_URLS: Final = {
    Environment.MAINNET: "wss://stream.bybit.com/v5/public/linear",
    Environment.TESTNET: "wss://stream-testnet.bybit.com/v5/public/linear",
    Environment.DEMO: "wss://stream.bybit.com/v5/public/linear",
}


def public_stream_url(environment: Environment, sim_url: str = "") -> str:
    """The public (market data) stream of `environment`, decided by it alone."""
    check_sim_url(environment, sim_url)
    if environment is Environment.SIM:
        return sim_url.rstrip("/").replace("http", "ws", 1) + "/v5/public/linear"
    return PUBLIC_LINEAR_URLS[environment]


def check_sim_url(environment: Environment, sim_url: str) -> None:
    """A key's environment alone decides where it connects: the simulator's URL is required
    in `sim` and refused everywhere else (no flag can send a real key to the simulator)."""
    if (environment is Environment.SIM) != bool(sim_url):
        raise ValueError("a simulator URL is required in sim and forbidden elsewhere")


def venue_urls(environment: Environment, sim_url: str = "") -> tuple[str, str]:
    """(REST, private stream) URLs of a key of `environment`: decided by it alone."""
    check_sim_url(environment, sim_url)
    if environment is Environment.SIM:
        rest = sim_url.rstrip("/")
        return rest, rest.replace("http", "ws", 1) + "/v5/private"
    return BYBIT_URLS[environment]


class Venue(Protocol):
    """An exchange account reached with one API key.

    Required: `place_order`, `cancel_order`, `set_leverage`, `set_trading_stop`, `get_order`,
    `exit_orders`, `open_orders`, `positions`, `executions_since`, `closed_pnl_since`,
    `wallet`, `hedge_mode_symbols`, `last_price`, `instrument`, `close`.
    """

    name: str

    @property
    def clock_offset_ms(self) -> int:
        """The venue's clock minus ours (ms), as requests are signed with now."""
        ...

    async def place_order(
        self, request: OrderRequest, hold: Callable[[], str | None] | None = None
    ) -> OrderEvent:
        """Send one order; returns its acknowledgement (status New, with the venue's id).
        `hold`, asked right before it leaves (after any wait for room under the rate limits),
        returns a reason not to send it after all: then `HeldError`, nothing sent."""
        ...

    async def cancel_order(self, order_link_id: str, symbol: str) -> bool:
        """Cancel an open order; False if the venue holds no open order by that id."""
        ...

    async def set_leverage(self, symbol: str, leverage: Decimal) -> None:
        """Trade `symbol` at `leverage` (both sides: one-way mode); already so is success."""
        ...

    async def symbol_leverage(self, symbol: str) -> Decimal | None:
        """The account's leverage on `symbol` (one-way mode), whether or not it holds a
        position there; None if the venue shows none."""
        ...

    async def set_trading_stop(
        self, symbol: str, *, stop_loss: Decimal | None, take_profit: Decimal | None
    ) -> None:
        """Move the open position's stop loss / take profit (e.g. the stop to break-even):
        None leaves a level as it is, zero cancels it; already so is success."""
        ...

    async def get_order(self, order_link_id: str, symbol: str) -> OrderEvent | None:
        """The venue's view of the order under `order_link_id` (ours trades `symbol`; one
        another client placed under the id may trade another), or None if it holds none."""
        ...

    async def exit_orders(self, symbol: str, waiting: Collection[str] = ()) -> list[ExitOrder]:
        """The venue's stop-loss / take-profit executions among the latest `EXIT_SCAN_ORDERS`
        orders on `symbol`, newest first; then those of `waiting` (orderIds of exits the
        journal holds waiting there) not among them, each asked for by its id: other
        clients' orders on the account can push an exit out of the latest ones."""
        ...

    async def open_orders(self) -> list[OrderEvent]:
        """Every open order of the account (the bot's and any other)."""
        ...

    async def positions(self) -> list[PositionUpdate]:
        """Every position of the account."""
        ...

    async def executions_since(self, since: datetime | None) -> list[Execution]:
        """Fills from `since` on (None: the venue's default window), oldest first."""
        ...

    async def closed_pnl_since(self, since: datetime | None) -> list[ClosedPnl]:
        """Closing orders' realized PnL (net of fees) from `since` on."""
        ...

    async def wallet(self) -> WalletUpdate: ...

    async def hedge_mode_symbols(self, symbols: Sequence[str]) -> list[str]:
        """Which of `symbols` the account trades in hedge mode (the bot needs one-way)."""
        ...

    async def last_price(self, symbol: str) -> Decimal: ...

    async def instrument(self, symbol: str) -> Instrument: ...

    def close(self) -> None: ...
