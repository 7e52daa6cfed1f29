"""The account followed live through the private stream, end to end: real uvicorn, the
simulator's WebSocket, pybit's WebSocket client, SQLite. Fills arrive by push; a dropped
stream is caught up by REST with nothing counted twice; a shared key keeps books apart."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import requests
from loguru import logger
from pybit.unified_trading import HTTP
from pydantic import SecretStr

from bot import clock
from bot.account import UNATTRIBUTED, AccountProjection
from bot.config import ConfigError
from bot.execution.ids import order_link_id
from bot.sim import SimAccountSpec, SimExchange, SimFaults, SimServer, SimulatorConfig
from bot.sim.records import ResumedPosition
from bot.venue.base import EXIT_SCAN_ORDERS
from tests.bot.test_service import RunningBot, signal
from tests.conftest import wait_for, write_key_secrets

KEY, SECRET = "stream-key", "stream-secret"
#: The REST safety net is slowed right down, so what arrives comes by the stream.
STREAM_ONLY = "\n[execution]\nreconcile_interval_s = 60\n"
KEY_NAME = "follow_sim"
EIGHT_HOURS_MS = 8 * 3_600_000


@pytest.fixture
def exchange(tmp_path: Path) -> Iterator[tuple[SimExchange, SimServer]]:
    write_key_secrets(tmp_path, KEY, SECRET)
    exchange = SimExchange(SimulatorConfig())
    exchange.add_account(SimAccountSpec(api_key=KEY, api_secret=SecretStr(SECRET), note="k"))
    with SimServer(exchange) as server:
        yield exchange, server


def start(config: Callable[..., Path], server: SimServer, extra: str = "") -> RunningBot:
    return RunningBot(config(extra=f'\n[venue]\nsim_url = "{server.url}"\n' + extra)).start()


def books(bot: RunningBot) -> AccountProjection:
    return bot.read_journal(AccountProjection.from_journal)


def venue_fills(server: SimServer) -> list[dict[str, object]]:
    session = HTTP(api_key=KEY, api_secret=SECRET)
    session.endpoint = server.url
    return list(session.get_executions(category="linear", limit=100)["result"]["list"])


def streams(bot: RunningBot) -> dict[str, str]:
    health = requests.get(f"{bot.url}/healthz", timeout=10).json()
    return dict(health["account_streams"])


@contextmanager
def beside_another_client(
    config: Callable[..., Path], server: SimServer, level: str
) -> Iterator[tuple[RunningBot, HTTP, list[str]]]:
    """The bot following its key's stream live, another client of the key (pybit), and
    the messages the bot logs at `level` and above meanwhile."""
    said: list[str] = []
    sink = logger.add(lambda m: said.append(m.record["message"]), level=level)
    bot = start(config, server, STREAM_ONLY)
    client = HTTP(api_key=KEY, api_secret=SECRET)
    client.endpoint = server.url
    try:
        wait_for(lambda: streams(bot) == {"follow_sim": "live"}, what="the stream live")
        yield bot, client, said
    finally:
        bot.stop()
        logger.remove(sink)


def test_a_limit_order_filled_later_reaches_journal_and_books_by_the_stream(
    sim_config: Callable[..., Path], exchange: tuple[SimExchange, SimServer]
) -> None:
    sim, server = exchange
    bot = start(sim_config, server, STREAM_ONLY)
    try:
        wait_for(lambda: streams(bot) == {"follow_sim": "live"}, what="the stream live")
        assert bot.post(signal("limit-1", entry=96000)).status_code == 202
        wait_for(lambda: bot.journal_status("limit-1") == ["New"], what="the order resting")

        sim.set_prices({"BTCUSDT": Decimal(95900)})

        wait_for(lambda: bot.journal_status("limit-1") == ["Filled"], what="Filled by push")

        # The order's status and its fill are separate reports: the fill may land a moment later.
        def booked() -> AccountProjection | None:
            projection = books(bot)
            return (
                projection if projection.strategy_size("follow_sim", "follow", "BTCUSDT") else None
            )

        book = wait_for(booked, what="the fill in the books")
        size = book.strategy_size("follow_sim", "follow", "BTCUSDT")
        position = book.position("follow_sim", "BTCUSDT")
    finally:
        bot.stop()

    assert size > 0
    assert position is not None and position.size == size
    assert position.entry_price == Decimal(96000)


def test_funding_settled_on_a_held_position_moves_the_wallet_and_never_the_books(
    sim_config: Callable[..., Path], exchange: tuple[SimExchange, SimServer]
) -> None:
    """Bybit streams a funding settlement as an execution (execType Funding) of no order:
    the bot books the wallet and the position's realised PnL it moves, never a fill."""
    sim, server = exchange
    with (
        clock.installed(clock.VirtualClock(datetime.now(UTC))) as calendar,
        beside_another_client(sim_config, server, "WARNING") as (bot, client, said),
    ):
        assert bot.post(signal("held-1")).status_code == 202
        wait_for(lambda: bot.journal_status("held-1") == ["Filled"], what="the entry filled")
        held = wait_for(
            lambda: books(bot).strategy_size("follow_sim", "follow", "BTCUSDT") or None,
            what="the fill in the books",
        )

        warned_before = len(said)

        # Act: the next 8-hour boundary passes; the market's next price settles it
        boundary_ms = (sim.now_ms() // EIGHT_HOURS_MS + 1) * EIGHT_HOURS_MS
        calendar.advance_to(datetime.fromtimestamp(boundary_ms / 1000 + 1, UTC))
        sim.set_prices(sim.prices())

        [funding] = client.get_executions(category="linear", execType="Funding")["result"]["list"]
        wallet = client.get_wallet_balance(accountType="UNIFIED")["result"]["list"][0]
        venue_realised = Decimal(
            client.get_positions(category="linear", symbol="BTCUSDT")["result"]["list"][0][
                "cumRealisedPnl"
            ]
        )

        def followed() -> AccountProjection | None:
            projection = books(bot)
            position, balance = (
                projection.position(KEY_NAME, "BTCUSDT"),
                projection.wallet(KEY_NAME),
            )
            synced = (
                position is not None
                and position.cum_realized_pnl == venue_realised
                and balance is not None
                and balance.wallet_balance_usdt == Decimal(wallet["totalWalletBalance"])
            )
            return projection if synced else None

        book = wait_for(followed, what="the settlement's position and wallet followed")

    assert Decimal(funding["execFee"]) > 0  # a long pays the positive rate
    assert book.strategy_size("follow_sim", "follow", "BTCUSDT") == held
    assert book.strategy_size("follow_sim", UNATTRIBUTED, "BTCUSDT") == 0  # no fill of anyone's
    assert said[warned_before:] == []  # no drift, no unknown fill


def test_fills_while_the_stream_is_down_are_caught_up_once(
    sim_config: Callable[..., Path], exchange: tuple[SimExchange, SimServer]
) -> None:
    sim, server = exchange
    bot = start(sim_config, server)
    try:
        wait_for(lambda: streams(bot) == {"follow_sim": "live"}, what="the stream live")
        sim.set_faults(SimFaults(stream_drop=1.0))  # every push now kills the connection
        for index in range(3):
            assert bot.post(signal(f"dark-{index}")).status_code == 202
        wait_for(
            lambda: all(bot.journal_status(f"dark-{i}") == ["Filled"] for i in range(3)),
            what="three fills while the stream drops",
        )
        sim.set_faults(SimFaults())
        wait_for(lambda: streams(bot) == {"follow_sim": "live"}, 30, "the stream back")
        time.sleep(0.5)  # a reconnect's REST catch-up and any late push: both must dedupe

        journaled = [
            fill.exec_id for fill, _ in bot.read_journal(lambda journal: list(journal.executions()))
        ]
        at_venue = [str(row["execId"]) for row in venue_fills(server)]
        size = books(bot).strategy_size("follow_sim", "follow", "BTCUSDT")
    finally:
        bot.stop()

    assert sorted(journaled) == sorted(at_venue)
    assert len(set(journaled)) == len(journaled) == 3
    assert size == Decimal("0.015")


def test_a_close_by_another_client_is_caught_up_past_more_fills_than_the_pages_read(
    sim_config: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the bot is down, another client of the account closes the strategy's position
    and then trades more fills than the catch-up's pages hold (here 2 pages of 100). The
    start must still book the close: the fills past the pages are older ones, read on."""
    monkeypatch.setattr("bot.venue.bybit._MAX_PAGES", 2)
    write_key_secrets(tmp_path, KEY, SECRET)
    sim = SimExchange(SimulatorConfig(order_create_per_s=100_000, ip_requests_per_5s=100_000))
    sim.add_account(SimAccountSpec(api_key=KEY, api_secret=SecretStr(SECRET), note="k"))
    with SimServer(sim) as server:
        client = HTTP(api_key=KEY, api_secret=SECRET)
        client.endpoint = server.url
        bot = start(sim_config, server)
        try:
            assert bot.post(signal("held")).status_code == 202
            wait_for(lambda: bot.journal_status("held") == ["Filled"], what="the long")
        finally:
            bot.stop()
        client.place_order(
            category="linear",
            symbol="BTCUSDT",
            side="Sell",
            orderType="Market",
            qty="0.005",
            reduceOnly=True,
        )
        for number in range(250):
            client.place_order(
                category="linear",
                symbol="ETHUSDT",
                side="Buy" if number % 2 else "Sell",
                orderType="Market",
                qty="0.01",
            )
        bot = start(sim_config, server)
        try:
            closed = wait_for(
                lambda: books(bot).strategy_size("follow_sim", "follow", "BTCUSDT") == 0,
                what="the close booked",
            )
            journaled = len(bot.read_journal(lambda journal: list(journal.executions())))
        finally:
            bot.stop()

    assert closed
    assert journaled == 1 + 1 + 250  # ours, their close, their trades: each once


def test_a_trailing_stop_set_at_the_venue_closes_the_strategys_book_when_it_fires(
    sim_config: Callable[..., Path], exchange: tuple[SimExchange, SimServer]
) -> None:
    sim, server = exchange
    with beside_another_client(sim_config, server, "ERROR") as (bot, client, errors):
        assert bot.post(signal("trailed")).status_code == 202
        wait_for(lambda: bot.journal_status("trailed") == ["Filled"], what="the long")
        client.set_trading_stop(category="linear", symbol="BTCUSDT", trailingStop="500")
        sim.set_prices({"BTCUSDT": Decimal(98000)})
        sim.set_prices({"BTCUSDT": Decimal(97400)})  # 600 off the best: the stop fires
        book = wait_for(
            lambda: (p := books(bot)).strategy_size("follow_sim", "follow", "BTCUSDT") == 0 and p,
            what="the strategy flat",
        )

    position = book.position("follow_sim", "BTCUSDT")
    assert position is not None and position.size == 0
    assert errors == []


def test_a_stop_loss_another_client_moves_at_the_venue_is_warned_of(
    sim_config: Callable[..., Path], exchange: tuple[SimExchange, SimServer]
) -> None:
    with beside_another_client(sim_config, exchange[1], "WARNING") as (bot, client, warnings):
        assert bot.post(signal("widened")).status_code == 202  # its stop loss at 95000
        wait_for(lambda: bot.journal_status("widened") == ["Filled"], what="the long")
        stops = wait_for(
            lambda: client.get_open_orders(
                category="linear", symbol="BTCUSDT", orderFilter="StopOrder"
            )["result"]["list"],
            what="the stop loss order",
        )
        client.amend_order(
            category="linear", symbol="BTCUSDT", orderId=stops[0]["orderId"], triggerPrice="50000"
        )
        moved = wait_for(
            lambda: [line for line in warnings if "was moved at the venue" in line],
            what="the warning",
        )

    assert len(moved) == 1 and "from 95000 to 50000" in moved[0]


def test_a_stop_cancelled_while_the_stream_is_down_is_warned_of_by_the_scan(
    sim_config: Callable[..., Path], exchange: tuple[SimExchange, SimServer]
) -> None:
    sim, server = exchange
    scans = "\n[execution]\nexit_scan_interval_s = 0.5\n"
    said: list[str] = []
    sink = logger.add(lambda m: said.append(m.record["message"]), level="WARNING")
    bot = start(sim_config, server, scans)
    client = HTTP(api_key=KEY, api_secret=SECRET)
    client.endpoint = server.url
    try:
        wait_for(lambda: streams(bot) == {"follow_sim": "live"}, what="the stream live")
        assert bot.post(signal("unseen")).status_code == 202  # its stop loss at 95000
        wait_for(lambda: bot.journal_status("unseen") == ["Filled"], what="the long")
        sim.set_faults(SimFaults(stream_drop=1.0))  # no push reaches the bot now
        client.cancel_all_orders(category="linear", symbol="BTCUSDT", orderFilter="StopOrder")
        warned = wait_for(
            lambda: [line for line in said if "StopLoss" in line and "was cancelled" in line],
            what="the scan's warning",
        )
    finally:
        sim.set_faults(SimFaults())
        bot.stop()
        logger.remove(sink)

    assert len(warned) == 1 and "the position stays open without it" in warned[0]


def test_a_stop_cancelled_while_the_bot_was_down_is_found_past_another_clients_orders(
    sim_config: Callable[..., Path], tmp_path: Path
) -> None:
    """Another client of the account cancels the position's stop loss while the bot is down,
    then places more orders in the symbol than the exit scan reads (the latest
    `EXIT_SCAN_ORDERS`). The start-up scan must still find the stop cancelled and say the
    position is unprotected, not leave the journal holding it as waiting."""
    write_key_secrets(tmp_path, KEY, SECRET)
    sim = SimExchange(SimulatorConfig(order_create_per_s=1000))
    sim.add_account(SimAccountSpec(api_key=KEY, api_secret=SecretStr(SECRET), note="k"))
    said: list[str] = []
    sink = logger.add(lambda m: said.append(m.record["message"]), level="WARNING")
    try:
        with SimServer(sim) as server:
            client = HTTP(api_key=KEY, api_secret=SECRET)
            client.endpoint = server.url
            bot = start(sim_config, server)
            try:
                assert bot.post(signal("guarded")).status_code == 202  # its stop loss at 95000
                wait_for(lambda: bot.journal_status("guarded") == ["Filled"], what="the long")
            finally:
                bot.stop()
            client.cancel_all_orders(category="linear", symbol="BTCUSDT", orderFilter="StopOrder")
            for number in range(EXIT_SCAN_ORDERS + 5):
                client.place_order(
                    category="linear",
                    symbol="BTCUSDT",
                    side="Buy",
                    orderType="Limit",
                    qty="0.001",
                    price="50000",
                    orderLinkId=f"other-{number}",
                )
            client.cancel_all_orders(category="linear", symbol="BTCUSDT")
            bot = start(sim_config, server)
            try:
                warned = wait_for(
                    lambda: [line for line in said if "StopLoss at 95000 " in line],
                    what="the start-up scan's warning",
                )
                exits = [row["status"] for row in bot.rows() if row["decision"] == "exit"]
            finally:
                bot.stop()
    finally:
        logger.remove(sink)

    assert len(warned) == 1 and "was cancelled at the venue" in warned[0]
    assert "the position stays open without it" in warned[0]
    assert exits == ["Cancelled"]


def test_books_that_disagree_with_the_venue_are_fetched_again_then_warned_of_once(
    sim_config: Callable[..., Path],
    exchange: tuple[SimExchange, SimServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A position the venue holds whose fills the bot never saw (here: one the simulator
    holds with no fill, as a venue that lost them would): the books cannot know it. After a
    fetch of what may have been missed, the disagreement is said once, and the strategy's
    trades since, which keep the difference, do not say it again."""
    monkeypatch.setattr("bot.account._BOOKS_DRIFT_S", 1.0)
    sim, server = exchange
    sim.resume_account(
        KEY,
        None,
        [ResumedPosition("ETHUSDT", Decimal("0.5"), Decimal(3000), Decimal(10))],
    )
    said: list[str] = []
    sink = logger.add(lambda m: said.append(m.record["message"]), level="WARNING")
    bot = start(sim_config, server)
    try:
        warned = wait_for(
            lambda: [line for line in said if "the bot's books hold" in line],
            what="the disagreement said",
        )
        eth = signal("eth-after", symbol="ETHUSDT", stop_loss=2900)
        assert bot.post(eth).status_code == 202
        wait_for(lambda: bot.journal_status("eth-after") == ["Filled"], what="a trade since")
        time.sleep(2.5)  # more passes, with the books and the venue both moved: said once
    finally:
        bot.stop()
        logger.remove(sink)

    lines = [line for line in said if "the bot's books hold" in line]
    assert lines == warned[:1]
    assert "the venue's ETHUSDT position is 0.5, the bot's books hold 0" in lines[0]


def test_another_clients_order_under_our_next_id_that_fills_first_is_never_the_strategys(
    sim_config: Callable[..., Path], exchange: tuple[SimExchange, SimServer]
) -> None:
    """Another client on the key places a market buy under the orderLinkId the bot will use
    for its next signal; every request waits 1.5 s at the venue, so theirs fills, and the
    stream reports it, while ours is still in flight; ours is then refused as a duplicate.
    Their order and fill must reach neither our order's row nor the strategy's book."""
    sim, server = exchange
    link = order_link_id("follow", "voiceofchain", "raced", 0)
    with beside_another_client(sim_config, server, "WARNING") as (bot, client, warnings):
        # A first signal: from then on the price comes from the stream, so the next order is
        # journaled and sent at once, and is in flight when theirs is reported.
        assert bot.post(signal("warm")).status_code == 202
        wait_for(lambda: bot.journal_status("warm") == ["Filled"], what="the first order")
        held = books(bot).strategy_size("follow_sim", "follow", "BTCUSDT")
        sim.set_faults(SimFaults(delay=1.0, delay_ms=1500))
        theirs = threading.Thread(
            target=lambda: client.place_order(
                category="linear",
                symbol="BTCUSDT",
                side="Buy",
                orderType="Market",
                qty="0.002",
                orderLinkId=link,
            )
        )
        theirs.start()
        time.sleep(0.5)  # theirs reaches the venue first, and fills while ours waits there
        assert bot.post(signal("raced")).status_code == 202
        theirs.join(timeout=10)
        status = wait_for(
            lambda: (found := bot.journal_status("raced")) == ["Rejected"] and found,
            timeout_s=30,
            what="ours refused as a duplicate",
        )
        sim.set_faults(SimFaults())
        projection = wait_for(
            lambda: (p := books(bot)).strategy_size("follow_sim", UNATTRIBUTED, "BTCUSDT") and p,
            what="their fill in the unattributed book",
        )

    assert status == ["Rejected"]
    assert projection.strategy_size("follow_sim", "follow", "BTCUSDT") == held
    assert projection.strategy_size("follow_sim", UNATTRIBUTED, "BTCUSDT") == Decimal("0.002")
    assert any("another client" in line for line in warnings)


def resting_order(bot: RunningBot, client: HTTP) -> dict[str, str]:
    """A buy limit of the bot's resting at 96000 (signal "resting"), as the venue lists it."""
    assert bot.post(signal("resting", entry=96000)).status_code == 202
    wait_for(lambda: bot.journal_status("resting") == ["New"], what="the order resting")
    (order,) = client.get_open_orders(category="linear", symbol="BTCUSDT", orderFilter="Order")[
        "result"
    ]["list"]
    return order


def test_an_order_of_ours_another_client_cancels_is_warned_of_once(
    sim_config: Callable[..., Path], exchange: tuple[SimExchange, SimServer]
) -> None:
    with beside_another_client(sim_config, exchange[1], "WARNING") as (bot, client, warnings):
        order = resting_order(bot, client)
        client.cancel_order(category="linear", symbol="BTCUSDT", orderId=order["orderId"])
        wait_for(lambda: bot.journal_status("resting") == ["Cancelled"], what="the cancel")
        time.sleep(0.3)  # a late REST look-up of the same cancel must not warn again

    said = [line for line in warnings if "was cancelled at the venue, not by the bot" in line]
    assert len(said) == 1 and order["orderLinkId"] in said[0]


def test_an_order_of_ours_another_client_amends_is_warned_of_once_per_dearer_change(
    sim_config: Callable[..., Path], exchange: tuple[SimExchange, SimServer]
) -> None:
    def said() -> list[str]:
        return [line for line in warnings if "was amended at the venue, not by the bot" in line]

    with beside_another_client(sim_config, exchange[1], "WARNING") as (bot, client, warnings):
        order = resting_order(bot, client)

        def amend(**terms: str) -> None:
            client.amend_order(
                category="linear", symbol="BTCUSDT", orderId=order["orderId"], **terms
            )

        amend(price="96500")  # dearer than the signal asked: said
        wait_for(lambda: len(said()) == 1 or None, what="the dearer limit said")
        amend(price="95500")  # cheaper: nothing to say
        amend(price="96500")  # dearer again, as said before: said again, it is a new change
        wait_for(lambda: len(said()) == 2 or None, what="the limit raised again said")
        amend(stopLoss="94000")
        wait_for(lambda: len(said()) == 3 or None, what="the stop loss moved said")
        time.sleep(0.5)  # a later report or look-up of the same terms must not warn again

    lines = said()
    assert len(lines) == 3 and all(order["orderLinkId"] in line for line in lines)
    assert "price 96500, not 96000" in lines[0] and "stopLoss" not in lines[0]
    assert "stopLoss 94000, not 95000" in lines[2]


def test_a_closed_positions_pnl_at_the_venue_shows_at_once_not_at_the_next_scan(
    sim_config: Callable[..., Path], exchange: tuple[SimExchange, SimServer]
) -> None:
    # The default loop: a pass a second, exit scans a minute apart while the stream is live.
    bot = start(sim_config, exchange[1])
    try:
        wait_for(lambda: streams(bot) == {"follow_sim": "live"}, what="the stream live")
        assert bot.post(signal("opened")).status_code == 202
        wait_for(lambda: bot.journal_status("opened") == ["Filled"], what="the long")
        time.sleep(1.5)  # the start's first exit scan is done
        close = {"id": "closed", "symbol": "BTCUSDT", "action": "close"}
        assert bot.post(close | {"ts": int(time.time() * 1000)}).status_code == 202
        wait_for(lambda: bot.journal_status("closed") == ["Filled"], what="the close")
        pnl = wait_for(
            lambda: books(bot).venue_closed_pnl_today("follow_sim") or None,
            15,
            "the venue's closed PnL, well before the next scan",
        )
    finally:
        bot.stop()

    assert pnl < 0  # the round trip's fees


SHARED = """
[keys.follow_sim]
environment = "sim"
shared = true

[strategies.second]
plugin = "follow"
key = "follow_sim"

[strategies.second.params]
risk_fraction = 0.02
max_notional_usdt = 800
"""


def test_two_strategies_on_a_shared_key_keep_their_own_positions_and_closes(
    sim_config: Callable[..., Path], exchange: tuple[SimExchange, SimServer]
) -> None:
    _, server = exchange
    config = sim_config(extra=f'\n[venue]\nsim_url = "{server.url}"\n')
    text = config.read_text().replace('[keys.follow_sim]\nenvironment = "sim"\n', "")
    config.write_text(text + SHARED)
    bot = RunningBot(config).start()
    try:
        assert bot.post(signal("both-open")).status_code == 202  # routed to both strategies
        wait_for(lambda: bot.journal_status("both-open") == ["Filled", "Filled"], what="fills")
        close = {
            "id": "first-close",
            "symbol": "BTCUSDT",
            "action": "close",
            "strategy": "follow",
            "ts": int(time.time() * 1000),
        }
        assert bot.post(close).status_code == 202
        wait_for(lambda: bot.journal_status("first-close") == ["Filled"], what="the close")
        wait_for(
            lambda: books(bot).strategy_size("follow_sim", "follow", "BTCUSDT") == 0,
            what="the first strategy flat",
        )
        book = books(bot)
    finally:
        bot.stop()

    second = book.strategy_size("follow_sim", "second", "BTCUSDT")
    position = book.position("follow_sim", "BTCUSDT")
    assert second > 0
    assert position is not None and position.size == second  # the venue holds only its share


def test_an_account_in_hedge_mode_is_refused_at_start_up_with_what_to_change(
    sim_config: Callable[..., Path], tmp_path: Path
) -> None:
    write_key_secrets(tmp_path, "hedged-key", "hedged-secret")
    exchange = SimExchange(SimulatorConfig())
    exchange.add_account(
        SimAccountSpec(api_key="hedged-key", api_secret=SecretStr("hedged-secret"), hedge_mode=True)
    )
    with SimServer(exchange) as server, pytest.raises(ConfigError, match="hedge mode") as refused:
        start(sim_config, server)

    assert "one-way mode" in str(refused.value)
