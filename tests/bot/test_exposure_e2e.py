"""The exposure limits and the leverage cap, through the real bot against its simulator:
what a restart, a moving price, a symbol's first order and shared slugs must not get past."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import pytest
import requests
from pybit.unified_trading import HTTP

from bot.account import AccountProjection
from bot.logs import logger
from bot.sim import SimServer
from bot.venue.stream import AccountStream
from tests.bot.test_admin import decision_of
from tests.bot.test_service import RunningBot, signal
from tests.conftest import venue_with_key, wait_for

#: Room for one order of about 875 USDT (BTC or ETH at the follow plug-in's 900 cap), not two.
LIMITS = """
[risk]
symbols = ["BTCUSDT", "ETHUSDT"]
max_order_notional_usdt = 1000
max_position_notional_usdt = 100000
max_strategy_exposure_usdt = {strategy_limit}
max_total_exposure_usdt = 100000
max_open_orders = 1000
max_orders_per_minute = 1000
max_orders_per_day = 100000
max_signal_age_s = 60
max_leverage = 3
"""


@pytest.fixture
def limited(sim_config: Callable[..., Path]) -> Callable[[int], Path]:
    """The tests' sim configuration with LIMITS as its [risk] section."""

    def write(strategy_limit: int) -> Path:
        config = sim_config()
        head, rest = config.read_text().split("[risk]", 1)
        keys = "[keys.follow_sim]" + rest.split("[keys.follow_sim]", 1)[1]
        text = head + LIMITS.format(strategy_limit=strategy_limit) + "\n" + keys
        config.write_text(text.replace("max_notional_usdt = 500", "max_notional_usdt = 900"))
        return config

    return write


@pytest.fixture
def running() -> Iterator[list[RunningBot]]:
    """The bots a test starts, stopped after it."""
    bots: list[RunningBot] = []
    yield bots
    for bot in bots:
        bot.stop()


def filled(bot: RunningBot, signal_id: str, **fields: object) -> None:
    assert bot.post(signal(signal_id, **fields)).status_code == 202
    wait_for(lambda: bot.journal_status(signal_id) == ["Filled"], what=f"{signal_id} filled")


def test_a_position_in_a_symbol_no_signal_has_priced_since_a_restart_still_counts(
    limited: Callable[[int], Path], running: list[RunningBot]
) -> None:
    # Reproduced: after a restart the BTC position counted as 0 until a BTC signal came.
    config = limited(1500)
    first = RunningBot(config).start()
    running.append(first)
    filled(first, "btc-1", stop_loss=96000)  # about 873 USDT
    first.stop()
    running.remove(first)

    restarted = RunningBot(config).start()
    running.append(restarted)
    assert restarted.post(signal("eth-1", symbol="ETHUSDT", stop_loss=3460)).status_code == 202

    rule_and_reason = decision_of(restarted, "eth-1")
    assert rule_and_reason[0] == "rejected"
    assert "exposure could reach" in rule_and_reason[1]


def test_a_position_counts_at_the_current_price_not_at_its_last_signals(
    limited: Callable[[int], Path], running: list[RunningBot]
) -> None:
    # Reproduced: BTC rose 55 % after its signal; its position still counted at 97000.
    bot = RunningBot(limited(2000)).start()
    running.append(bot)
    filled(bot, "btc-1", stop_loss=96000)
    moved = requests.post(f"{bot.service.sim_url}/sim/prices", json={"BTCUSDT": 150000}, timeout=10)
    assert moved.status_code == 200

    assert bot.post(signal("eth-1", symbol="ETHUSDT", stop_loss=3460)).status_code == 202

    assert decision_of(bot, "eth-1")[0] == "rejected"  # 0.009 x 150000 + ~875 > 2000


def test_a_symbols_first_order_trades_at_no_more_than_max_leverage(
    limited: Callable[[int], Path], running: list[RunningBot]
) -> None:
    # Reproduced: the simulator's 10x stayed for the first order; max_leverage is 3.
    bot = RunningBot(limited(100000)).start()
    running.append(bot)

    filled(bot, "lev-1", stop_loss=96000)

    answer = requests.get(f"{bot.service.sim_url}/sim/positions", timeout=10).json()
    leverages = {
        Decimal(str(p["leverage"])) for p in answer["positions"] if p["symbol"] == "BTCUSDT"
    }
    assert leverages == {Decimal(3)}


LADDERS = """
[keys.follow_sim]
environment = "sim"
shared = true

[strategies.momentum_btc]
plugin = "ladder"
key = "follow_sim"

[strategies.momentum_btc.params]
max_notional_usdt = 500

[strategies.momentum_eth]
plugin = "ladder"
key = "follow_sim"

[strategies.momentum_eth.params]
max_notional_usdt = 500
"""


def test_ladders_whose_names_share_a_slug_each_get_their_targets(
    sim_config: Callable[..., Path], running: list[RunningBot]
) -> None:
    # Reproduced: momentum_btc's fill hook was told momentum_eth's (empty) position, and
    # placed no targets.
    config = sim_config()
    config.write_text(config.read_text().split("[keys.follow_sim]")[0] + LADDERS)
    bot = RunningBot(config).start()
    running.append(bot)

    body = signal("lad-1", stop_loss=96000, take_profit=[98000, 99000], strategy="momentum_btc")
    assert bot.post(body).status_code == 202

    orders = wait_for(lambda: len(bot.sim_orders()) >= 3 and bot.sim_orders(), what="targets")
    assert len(orders) == 3  # the entry and its two targets


def sim_position(bot: RunningBot) -> Decimal:
    """The key's BTCUSDT position as the simulator holds it."""
    answer = requests.get(f"{bot.service.sim_url}/sim/positions", timeout=10).json()
    return sum(
        (Decimal(str(p["size"])) for p in answer["positions"] if p["symbol"] == "BTCUSDT"),
        Decimal(0),
    )


def test_a_close_withdraws_the_entry_still_resting_so_it_cannot_open_later(
    sim_config: Callable[..., Path], running: list[RunningBot]
) -> None:
    # Reproduced: the close was declined (nothing to close yet) and the entry filled later.
    bot = RunningBot(sim_config()).start()
    running.append(bot)
    assert bot.post(signal("open-l", entry=96500, stop_loss=96000)).status_code == 202
    wait_for(lambda: bot.journal_status("open-l") == ["New"], what="the entry resting")

    assert bot.post(signal("close-l", action="close")).status_code == 202
    wait_for(lambda: bot.journal_status("open-l") == ["Cancelled"], what="the entry withdrawn")
    moved = requests.post(f"{bot.service.sim_url}/sim/prices", json={"BTCUSDT": 96400}, timeout=10)
    assert moved.status_code == 200

    assert sim_position(bot) == 0
    assert decision_of(bot, "close-l")[0] == "declined"  # nothing had filled: nothing to close


def test_a_close_right_after_a_slow_market_entry_leaves_no_position(
    sim_config: Callable[..., Path], running: list[RunningBot]
) -> None:
    # The venue fills market orders 3 s after taking them, past the 2 s the bot follows one.
    bot = RunningBot(sim_config(extra="\n[sim]\nmarket_fill_delay_ms = 3000\n")).start()
    running.append(bot)
    assert bot.post(signal("open-1", stop_loss=96000)).status_code == 202
    assert bot.post(signal("close-1", action="close")).status_code == 202

    decision_of(bot, "close-1")
    wait_for(lambda: bot.journal_status("open-1") in (["Cancelled"], ["Filled"]), what="settled")
    time.sleep(3.5)  # a fill the venue still owed would have come by now

    assert sim_position(bot) == 0


@contextmanager
def own_venue(
    limited: Callable[[int], Path], tmp_path: Path, key: str
) -> Iterator[tuple[Path, HTTP]]:
    """A simulator of the test's own with an account of `key` (secret `<key>-secret`): a
    configuration pointing at it, and a pybit client of that account (what a person does
    by hand)."""
    secret = f"{key}-secret"
    with SimServer(venue_with_key(tmp_path, key, secret)) as server:
        config = limited(100000)
        config.write_text(config.read_text() + f'\n[venue]\nsim_url = "{server.url}"\n')
        by_hand = HTTP(api_key=key, api_secret=secret)
        by_hand.endpoint = server.url
        yield config, by_hand


@contextmanager
def restarted_after_leverage_set_by_hand(
    limited: Callable[[int], Path],
    tmp_path: Path,
    running: list[RunningBot],
    *trades: tuple[str, dict[str, object]],
) -> Iterator[tuple[RunningBot, str]]:
    """A bot that made `trades` (signal id, fields; each filled), stopped; 10x set on
    BTCUSDT by hand meanwhile (the tests' max_leverage is 3); started again: (the restarted
    bot, the simulator's URL)."""
    with own_venue(limited, tmp_path, "lev-key") as (config, by_hand):
        first = RunningBot(config).start()
        running.append(first)
        for signal_id, fields in trades:
            filled(first, signal_id, **fields)
        first.stop()
        running.remove(first)
        by_hand.set_leverage(
            category="linear", symbol="BTCUSDT", buyLeverage="10", sellLeverage="10"
        )
        restarted = RunningBot(config).start()
        running.append(restarted)
        yield restarted, by_hand.endpoint


def test_a_leverage_changed_while_the_bot_was_down_is_capped_again(
    limited: Callable[[int], Path], tmp_path: Path, running: list[RunningBot]
) -> None:
    # Reproduced: the journal's last report (3x, the position flat) was taken as the venue's
    # leverage after a restart; the 10x set by hand meanwhile stayed for the next order.
    trades = (("lev-1", {"stop_loss": 96000}), ("lev-1-close", {"action": "close"}))
    with restarted_after_leverage_set_by_hand(limited, tmp_path, running, *trades) as (bot, url):
        filled(bot, "lev-2", stop_loss=96000)

        answer = requests.get(f"{url}/sim/positions", timeout=10).json()
    leverages = {
        Decimal(str(p["leverage"])) for p in answer["positions"] if p["symbol"] == "BTCUSDT"
    }
    assert leverages == {Decimal(3)}


def test_a_leverage_raised_under_an_open_position_while_the_bot_was_down_is_warned_of(
    limited: Callable[[int], Path], tmp_path: Path, running: list[RunningBot]
) -> None:
    # Reproduced: the leverage was only judged when it changed after this run's first order
    # in the symbol; 10x set by hand (max_leverage 3) under the position left open while the
    # bot was down went unsaid until then, however long the position stayed that exposed.
    said: list[str] = []
    sink = logger.add(lambda m: said.append(m.record["message"]), level="WARNING")
    try:
        trades = (("lev-open", {"stop_loss": 96000}),)
        with restarted_after_leverage_set_by_hand(limited, tmp_path, running, *trades):
            wait_for(lambda: any("max_leverage" in line for line in said), what="the warning")
            time.sleep(1)  # a second report of the same 10x (the stream's) is no news
    finally:
        logger.remove(sink)

    (line,) = [line for line in said if "max_leverage" in line]
    assert "open BTCUSDT position on key follow_sim is at 10x, above max_leverage 3x" in line
    assert "when this run first heard of it" in line


OPPOSED = """
[keys.follow_sim]
environment = "sim"
shared = true

[strategies.alpha]
plugin = "follow"
key = "follow_sim"

[strategies.alpha.params]
max_notional_usdt = 500

[strategies.beta]
plugin = "follow"
key = "follow_sim"

[strategies.beta.params]
max_notional_usdt = 300
"""


def books(bot: RunningBot) -> dict[str, Decimal]:
    """Each strategy's BTCUSDT book, as the journal rebuilds it (as `bot positions` does)."""
    projection = bot.read_journal(AccountProjection.from_journal)
    return {book.strategy: book.size for book in projection.books() if book.symbol == "BTCUSDT"}


@pytest.mark.parametrize("flattened_by", ["alpha's close", "the position's stop loss"])
def test_strategies_opposed_on_a_shared_key_hold_nothing_once_the_venue_is_flat(
    flattened_by: str, sim_config: Callable[..., Path], running: list[RunningBot]
) -> None:
    # Reproduced: alpha long 0.005, beta short 0.003, so the key is long 0.002; alpha's
    # reduce-only close (trimmed by the venue to 0.002) or the position's stop flattened
    # the key, and the books kept alpha long 0.003 and beta short 0.003 (their sum the
    # venue's 0, so no drift was seen): beta's close was refused 110017, and each went on
    # counting a position that does not exist.
    config = sim_config()
    config.write_text(config.read_text().split("[keys.follow_sim]")[0] + OPPOSED)
    bot = RunningBot(config).start()
    running.append(bot)
    filled(bot, "a-open", strategy="alpha", stop_loss=95000)
    filled(bot, "b-open", strategy="beta", side="sell", stop_loss=99000)
    assert sim_position(bot) == Decimal("0.002")

    if flattened_by == "alpha's close":
        filled(bot, "a-close", strategy="alpha", action="close")
    else:
        moved = requests.post(
            f"{bot.service.sim_url}/sim/prices", json={"BTCUSDT": 94000}, timeout=10
        )
        assert moved.status_code == 200
    wait_for(lambda: sim_position(bot) == 0, what="the key flat")

    time.sleep(0.5)  # the fills' reports and their journal writes

    assert books(bot) == {"alpha": 0, "beta": 0}


def test_a_position_closed_while_the_bot_was_down_is_in_the_books_before_any_signal_runs(
    limited: Callable[[int], Path],
    tmp_path: Path,
    running: list[RunningBot],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Reproduced: with the account stream slow to connect at the start, the fills made while
    # the bot was down reached the books only at the reconciliation loop's first pass, after
    # the lanes had started: a signal then was sized from a position already gone.
    with own_venue(limited, tmp_path, "gap-key") as (config, by_hand):
        first = RunningBot(config).start()
        running.append(first)
        filled(first, "gap-open", stop_loss=96000)
        held = books(first)["follow"]
        first.stop()
        running.remove(first)
        by_hand.place_order(
            category="linear", symbol="BTCUSDT", side="Sell", orderType="Market", qty=str(held)
        )

        async def never_connects(self: AccountStream) -> None:
            await asyncio.Event().wait()

        monkeypatch.setattr(AccountStream, "run", never_connects)
        restarted = RunningBot(config).start()
        running.append(restarted)

        assert held > 0
        assert books(restarted) == {"follow": 0}  # at once: no signal could see it long
