"""The gate's reproductions, through the whole bot: real pybit against the simulator.

- A follow sell with an entry far below the market passed as 1,000 USDT and filled for 2,425.
- A plug-in setting reference_price=1 got a 48,500 USDT order through a 1,000 USDT cap.
- A plug-in sizing 900 USDT while the price doubled (within its time budget) got a 1,746 USDT
  order through a 1,000 USDT cap: the gate judged it at the price its context was built at.
All are now priced at the venue's price and rejected; the simulator never sees an order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import requests

from bot.messages import Signal
from strategies.base import Strategy, StrategyContext, StrategyOutput
from tests.bot.test_admin import decision_of, sim_price
from tests.bot.test_service import RunningBot, signal
from tests.conftest import wait_for


class Liar(Strategy):
    """A plug-in that claims its 0.5 BTC market order is priced at 1 USDT."""

    def on_signal(self, signal: Signal, context: StrategyContext) -> StrategyOutput:
        assert signal.side is not None
        intent = self.intent(signal, context, side=signal.side, qty=Decimal("0.5"))
        return [intent.model_copy(update={"reference_price": Decimal(1)})]


LIAR = """
[strategies.follow]
plugin = "tests.bot.risk.test_gate_e2e:Liar"
key = "follow_sim"
"""


#: Set by `Pondering` once it has sized its order; set by the test once the price has moved.
SIZED = threading.Event()
MOVED = threading.Event()


class Pondering(Strategy):
    """A plug-in that sizes 900 USDT at its context's price, then thinks (within its budget)
    until the test has moved the market."""

    def on_signal(self, signal: Signal, context: StrategyContext) -> StrategyOutput:
        assert signal.side is not None
        qty = context.instrument.round_qty(Decimal(900) / context.last_price)
        SIZED.set()
        MOVED.wait(10)
        return [self.intent(signal, context, side=signal.side, qty=qty)]


PONDERING = """
[strategies.follow]
plugin = "tests.bot.risk.test_gate_e2e:Pondering"
key = "follow_sim"
time_budget_ms = 20000
"""


def ticker_pushes(bot: RunningBot) -> tuple[int, int]:
    """(messages sent, messages queued) on the simulator's public (linear) streams."""
    rows = requests.get(f"{bot.service.sim_url}/sim/streams", timeout=10).json()["connections"]
    linear = [row for row in rows if row["channel"] == "linear"]
    return sum(row["messagesSent"] for row in linear), sum(row["queued"] for row in linear)


def sim_link_ids(bot: RunningBot) -> list[object]:
    return [order["orderLinkId"] for order in bot.sim_orders()]


def test_a_sell_with_an_entry_far_below_the_market_is_priced_at_the_market(
    sim_config: Callable[..., Path],
) -> None:
    config = sim_config()  # a limit 55 % from the market passes the price sanity rule here
    config.write_text(
        config.read_text().replace("[risk]\n", "[risk]\nmax_limit_distance_pct = 90\n")
    )
    bot = RunningBot(config).start()
    try:
        market = sim_price(bot)
        entry = round(market * 0.45)  # follow sizes 500 USDT at the entry: ~1,100 at market
        far = signal("far-entry", side="sell", entry=entry, stop_loss=round(market * 0.5))

        assert bot.post(far).status_code == 202
        decision, reason = decision_of(bot, "far-entry")

        assert decision == "rejected"
        assert reason.startswith("notional ") and "exceeds max_order_notional_usdt = 1000" in reason
        assert sim_link_ids(bot) == []
    finally:
        bot.stop()


def test_a_plug_in_lying_about_its_price_gains_nothing(
    sim_config: Callable[..., Path],
) -> None:
    config = sim_config()
    config.write_text(config.read_text().split("[strategies.follow]")[0] + LIAR)
    bot = RunningBot(config).start()
    try:
        assert bot.post(signal("liar")).status_code == 202
        decision, reason = decision_of(bot, "liar")

        assert decision == "rejected"
        assert "exceeds max_order_notional_usdt = 1000" in reason
        assert sim_link_ids(bot) == []
    finally:
        bot.stop()


def test_an_order_is_judged_at_the_price_when_it_is_decided_not_when_its_strategy_began(
    sim_config: Callable[..., Path],
) -> None:
    config = sim_config()
    config.write_text(config.read_text().split("[strategies.follow]")[0] + PONDERING)
    bot = RunningBot(config).start()
    try:
        doubled = round(sim_price(bot) * 2)
        assert bot.post(signal("pondering")).status_code == 202
        assert SIZED.wait(10), "the strategy was not called"
        sent, _ = ticker_pushes(bot)
        moved = requests.post(
            f"{bot.service.sim_url}/sim/prices", json={"BTCUSDT": doubled}, timeout=10
        )
        assert moved.status_code == 200
        # The bot's price stream has the new price pushed to it before the strategy answers.
        wait_for(
            lambda: ticker_pushes(bot)[0] > sent and ticker_pushes(bot)[1] == 0,
            what="the new ticker pushed",
        )
        MOVED.set()

        decision, reason = decision_of(bot, "pondering")

        assert decision == "rejected"
        assert "exceeds max_order_notional_usdt = 1000" in reason
        assert sim_link_ids(bot) == []
    finally:
        MOVED.set()
        bot.stop()
