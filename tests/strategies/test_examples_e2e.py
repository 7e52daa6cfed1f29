"""Each example strategy through the whole bot: a signal posted to the webhook, real pybit
against a simulator the test owns, the exchange's own book read back."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from loguru import logger
from pydantic import SecretStr

from bot.execution.ids import order_link_id
from bot.messages import OrderStatus
from bot.sim import SimAccountSpec, SimExchange, SimServer, SimulatorConfig
from bot.sim.params import PositionQueryParams
from tests.bot.test_admin import admin_answer, decision_of
from tests.bot.test_exposure_e2e import books
from tests.bot.test_service import RunningBot, signal
from tests.conftest import client_orders, wait_for, write_key_secrets

KEY, SECRET = "examples-key", "examples-secret"
SOURCE = "voiceofchain"


@dataclass
class Trading:
    """The bot running one example strategy, named `name`, against `exchange`."""

    bot: RunningBot
    exchange: SimExchange
    server: SimServer
    name: str
    config: Path

    def restart(self, while_down: Callable[[], None] = lambda: None) -> None:
        """Stop the bot, run `while_down`, start it again on the same journal."""
        self.bot.stop()
        while_down()
        self.bot = RunningBot(self.config).start()

    def link(self, signal_id: str, leg: int = 0) -> str:
        return order_link_id(self.name, SOURCE, signal_id, leg)

    def orders(self) -> dict[str, dict[str, Any]]:
        return {str(order["orderLinkId"]): order for order in client_orders(self.exchange.orders())}

    def position(self, symbol: str = "BTCUSDT") -> dict[str, Any]:
        query = PositionQueryParams.model_validate({"category": "linear", "symbol": symbol})
        row: dict[str, Any] = self.exchange.positions(KEY, query)["list"][0]
        return row

    def set_price(self, price: int) -> None:
        """Move the market through the simulator's admin route, as a demo would."""
        answer = requests.post(f"{self.server.url}/sim/prices", json={"BTCUSDT": price}, timeout=10)
        assert answer.status_code == 200, answer.text


@pytest.fixture
def trading(
    sim_config: Callable[..., Path], tmp_path: Path
) -> Iterator[Callable[[str, str, str], Trading]]:
    """Start the bot with one strategy (`name`, `plugin`, its params as TOML lines)."""
    write_key_secrets(tmp_path, KEY, SECRET)
    exchange = SimExchange(SimulatorConfig())
    exchange.add_account(SimAccountSpec(api_key=KEY, api_secret=SecretStr(SECRET)))
    started: list[Trading] = []
    with SimServer(exchange) as server:

        def start(name: str, plugin: str, params: str = "", venue: str = "") -> Trading:
            config = sim_config()
            base = config.read_text().split("[strategies.follow]")[0]
            config.write_text(
                base
                + f'[strategies.{name}]\nplugin = "{plugin}"\nkey = "follow_sim"\n'
                + f"[strategies.{name}.params]\n{params}\n"
                + f'[venue]\nsim_url = "{server.url}"\n{venue}'
            )
            run = Trading(RunningBot(config).start(), exchange, server, name, config)
            started.append(run)
            return run

        try:
            yield start
        finally:
            for run in started:
                run.bot.stop()


def test_follow_places_one_order_with_the_stop(trading: Callable[..., Trading]) -> None:
    run = trading("follow", "follow", "max_notional_usdt = 500")

    assert run.bot.post(signal("f-1", stop_loss=95000, take_profit=[99000])).status_code == 202
    wait_for(lambda: run.bot.journal_status("f-1") == ["Filled"], what="the order filled")

    [order] = client_orders(run.exchange.orders())
    assert order["orderLinkId"] == run.link("f-1")
    assert (order["side"], order["orderType"], order["qty"]) == ("Buy", "Market", "0.005")
    assert (order["stopLoss"], order["takeProfit"]) == ("95000", "99000")
    assert (run.position()["size"], run.position()["stopLoss"]) == ("0.005", "95000")


LADDER = "max_notional_usdt = 500\nweights = [2, 3]"


def enter_and_reach_the_first_target(run: Trading) -> dict[str, str]:
    """Enter the ladder, check its legs, move the market to its first target; the stop move
    the journal records then."""
    entry, first, second = (run.link("l-1", leg) for leg in (0, 1, 2))

    # Enter: 0.005 BTC at the market (97000) with the stop at 95000.
    posted = run.bot.post(signal("l-1", stop_loss=95000, take_profit=[99000, 98000]))
    assert posted.status_code == 202

    # The entry's fill makes the legs: reduce-only limits at the targets, 2:3.
    legs = wait_for(
        lambda: run.orders() if {first, second} <= set(run.orders()) else None, what="legs"
    )
    assert legs[entry]["orderStatus"] == "Filled"
    assert [(legs[leg]["price"], legs[leg]["qty"]) for leg in (first, second)] == [
        ("98000", "0.002"),
        ("99000", "0.003"),
    ]
    assert all(legs[leg]["reduceOnly"] and legs[leg]["side"] == "Sell" for leg in (first, second))
    assert run.position()["stopLoss"] == "95000"

    # The market reaches the first target: leg 1 fills, and the ladder moves its stop.
    run.set_price(98500)
    [move] = wait_for(
        lambda: run.bot.read_journal(lambda journal: journal.stop_moves()), what="a stop move"
    )
    assert run.orders()[first]["orderStatus"] == "Filled"
    assert run.orders()[second]["orderStatus"] == "New"
    return move


def test_ladder_enters_then_scales_out_and_moves_its_stop_to_break_even(
    trading: Callable[..., Trading],
) -> None:
    run = trading("ladder", "ladder", LADDER)  # market_cache_s = 1 s: the stop reads afresh
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(m.record["message"]), level="WARNING")
    try:
        move = enter_and_reach_the_first_target(run)
        wait_for(  # the venue's report of the moved stop has reached the bot
            lambda: (
                run.bot.read_journal(
                    lambda journal: [e.trigger_price for e in journal.waiting_exits()]
                )
                == [Decimal(97000)]
            ),
            what="the stop's new level journaled",
        )
    finally:
        logger.remove(sink)

    assert (move["strategy"], move["outcome"]) == ("ladder", "moved"), move["reason"]
    position = run.position()
    assert Decimal(position["stopLoss"]) == Decimal(position["avgPrice"]) == Decimal(97000)
    assert position["size"] == "0.003"
    assert not [line for line in warnings if "moved at the venue" in line]  # the bot's own


def test_the_ladders_targets_are_cancelled_when_its_stop_closes_the_position(
    trading: Callable[..., Trading],
) -> None:
    run = trading("ladder", "ladder", LADDER)
    entry, first, second = (run.link("l-2", leg) for leg in (0, 1, 2))
    assert run.bot.post(signal("l-2", stop_loss=95000, take_profit=[99000, 98000])).status_code
    wait_for(lambda: {first, second} <= set(run.orders()), what="the legs")

    run.set_price(94900)  # through the stop: the venue closes the position

    orders = wait_for(
        lambda: (
            (
                found
                if all(found[leg]["orderStatus"] == "Cancelled" for leg in (first, second))
                else None
            )
            if (found := run.orders())
            else None
        ),
        what="both targets cancelled",
    )
    assert orders[entry]["orderStatus"] == "Filled"
    assert run.position()["size"] == "0"
    statuses = wait_for(
        lambda: (
            rows
            if (rows := run.bot.journal_status("l-2"))
            and all(OrderStatus(status).is_terminal for status in rows)
            else None
        ),
        what="the journal's legs terminal",
    )
    assert sorted(statuses) == ["Cancelled", "Cancelled", "Filled"]

    # The next ladder's targets have the reduce-only room to themselves: none is refused.
    run.set_price(97000)
    tries = itertools.count(3)

    def priced_at_the_move() -> str | None:
        """A ladder signal's id, once one is decided at the new price: the bot prices from
        the ticker stream, and one decided before the move reached it is declined (its stop
        on the wrong side of the old price)."""
        signal_id = f"l-{next(tries)}"
        sent = signal(signal_id, stop_loss=95000, take_profit=[99000, 98000])
        assert run.bot.post(sent).status_code == 202
        decided = wait_for(
            lambda: rows if "pending" not in (rows := run.bot.journal_status(signal_id)) else None,
            what=f"a decision for {signal_id}",
        )
        return None if decided == ["declined"] else signal_id

    placed = wait_for(priced_at_the_move, what="a ladder priced at the new market")
    later = [run.link(placed, leg) for leg in (1, 2)]
    legs = wait_for(lambda: o if set(later) <= set(o := run.orders()) else None, what="legs")
    assert [legs[leg]["orderStatus"] for leg in later] == ["New", "New"]


def test_a_ladders_targets_go_with_its_position_though_a_new_one_opened_while_the_bot_was_down(
    trading: Callable[..., Trading],
) -> None:
    run = trading("ladder", "ladder", LADDER)
    old_legs = [run.link("l-5", leg) for leg in (1, 2)]
    new_legs = [run.link("l-6", leg) for leg in (1, 2)]
    assert run.bot.post(signal("l-5", stop_loss=95000, take_profit=[99000, 98000])).status_code
    wait_for(lambda: set(old_legs) <= set(run.orders()), what="the first ladder's targets")
    later = signal("l-6", entry=94000, stop_loss=92000, take_profit=[95500, 96000])
    assert run.bot.post(later).status_code == 202
    wait_for(lambda: run.link("l-6") in run.orders(), what="the second ladder's resting entry")

    def stop_fires_then_the_next_entry_fills() -> None:
        for price in (94900, 93900, 94500):  # the first stop, then the second entry's bid
            run.set_price(price)
            time.sleep(0.1)

    # The venue's position is never seen flat: closed and opened again while the bot was down.
    run.restart(while_down=stop_fires_then_the_next_entry_fills)

    wait_for(lambda: set(new_legs) <= set(run.orders()), what="the new targets")
    wait_for(
        lambda: all(run.orders()[leg]["orderStatus"] == "Cancelled" for leg in old_legs),
        what="the first ladder's targets cancelled",
    )
    time.sleep(2.5)  # two reconciliation passes: neither takes the new targets for stranded
    assert [run.orders()[leg]["orderStatus"] for leg in new_legs] == ["New", "New"]
    assert run.position()["size"] == "0.005"


def test_a_halt_with_flatten_closes_a_ladder_whose_targets_rest(
    trading: Callable[..., Trading],
) -> None:
    run = trading("ladder", "ladder", LADDER)
    first, second = (run.link("l-4", leg) for leg in (1, 2))
    assert run.bot.post(signal("l-4", stop_loss=95000, take_profit=[99000, 98000])).status_code
    wait_for(lambda: {first, second} <= set(run.orders()), what="the legs")

    answer = admin_answer(run.bot, "halt", {"reason": "drill", "flatten": True})

    assert answer.status_code == 200, answer.text
    report = answer.json()
    # The targets go first: resting, they would leave the close no room (110017).
    assert sorted((row["status"], row["done"]) for row in report["cancelled"]) == [
        ("Cancelled", True),
        ("Cancelled", True),
    ]
    assert [(row["status"], row["done"]) for row in report["flattened"]] == [("Filled", True)]
    assert run.position()["size"] == "0"


SELECTIVE = 'max_notional_usdt = 500\nsides = ["buy"]\nmin_reward_risk = 1.5'


def test_selective_places_what_passes_and_declines_what_it_filters(
    trading: Callable[..., Trading],
) -> None:
    run = trading("picky", "selective", SELECTIVE)

    # 4000 to the target over 2000 to the stop passes; 1000 over 2000 does not; nor a sell.
    assert run.bot.post(signal("good", take_profit=[101000])).status_code == 202
    assert run.bot.post(signal("poor", take_profit=[98000])).status_code == 202
    short = signal("short", side="sell", stop_loss=98000, take_profit=[90000])
    assert run.bot.post(short).status_code == 202

    assert decision_of(run.bot, "poor") == (
        "declined",
        "filtered out: reward/risk 0.50 is below 1.5",
    )
    assert decision_of(run.bot, "short") == (
        "declined",
        "filtered out: side Sell is not one of Buy",
    )
    wait_for(lambda: run.bot.journal_status("good") == ["Filled"], what="the good one filled")
    assert list(run.orders()) == [run.link("good")]


def test_follow_flips_an_opposite_position_in_one_order_carrying_the_new_stop(
    trading: Callable[..., Trading],
) -> None:
    run = trading("follow", "follow", "max_notional_usdt = 500")
    assert run.bot.post(signal("long", stop_loss=95000)).status_code == 202
    wait_for(lambda: run.bot.journal_status("long") == ["Filled"], what="the long filled")

    assert run.bot.post(signal("short", side="sell", stop_loss=99000)).status_code == 202

    wait_for(lambda: run.bot.journal_status("short") == ["Filled"], what="the flip filled")
    flip = run.orders()[run.link("short")]
    assert (flip["side"], flip["qty"], flip["reduceOnly"]) == ("Sell", "0.01", False)
    position = run.position()
    assert (position["side"], position["size"], position["stopLoss"]) == ("Sell", "0.005", "99000")
    wait_for(lambda: books(run.bot) == {"follow": Decimal("-0.005")}, what="its book short")


def test_ladder_flips_an_opposite_position_its_old_targets_cancelled_new_ones_laid(
    trading: Callable[..., Trading],
) -> None:
    run = trading("ladder", "ladder", LADDER)
    old_legs = [run.link("long", leg) for leg in (1, 2)]
    assert run.bot.post(signal("long", stop_loss=95000, take_profit=[99000, 98000])).status_code
    wait_for(lambda: set(old_legs) <= set(run.orders()), what="the long's targets")

    short = signal("short", side="sell", stop_loss=99000, take_profit=[96000, 95000])
    assert run.bot.post(short).status_code == 202

    new_legs = [run.link("short", leg) for leg in (1, 2)]
    orders = wait_for(
        lambda: (
            found
            if set(new_legs) <= set(found := run.orders())
            and all(found[leg]["orderStatus"] == "Cancelled" for leg in old_legs)
            else None
        ),
        what="the long's targets cancelled, the short's laid",
    )
    flip = orders[run.link("short")]
    assert (flip["side"], flip["qty"], flip["reduceOnly"]) == ("Sell", "0.01", False)
    assert [(orders[leg]["side"], orders[leg]["reduceOnly"]) for leg in new_legs] == [
        ("Buy", True),
        ("Buy", True),
    ]
    assert sum(Decimal(orders[leg]["qty"]) for leg in new_legs) == Decimal("0.005")
    position = run.position()
    assert (position["side"], position["size"], position["stopLoss"]) == ("Sell", "0.005", "99000")
    wait_for(lambda: books(run.bot) == {"ladder": Decimal("-0.005")}, what="its book short")
