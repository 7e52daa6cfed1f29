"""A strategy's `on_fill` that a crash interrupts runs on the next start: `bot run` killed
(-9) while the ladder's entry fill is booked but its legs are not yet asked for, then started
again against the same standalone simulator."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest
import requests

from bot.config import load_settings
from bot.execution.ids import order_link_id
from bot.journal import Journal
from tests.bot.test_cli import BUY_BTC, send
from tests.conftest import StartBot, client_orders, free_port, wait_for

#: The ladder, with the crash window held open: the first run's entry `on_fill` marks that it
#: has begun and then waits (within its budget) for the kill; later runs are the plain ladder.
PLUGIN = """
import time
from pathlib import Path

from strategies.ladder import TakeProfitLadder


class Interrupted(TakeProfitLadder):
    def on_fill(self, fill, signal, context):
        begun = Path("on_fill_begun")
        if fill.leg == 0 and not begun.exists():
            begun.write_text(fill.order_link_id)
            time.sleep(60)
        return super().on_fill(fill, signal, context)
"""
STRATEGY = """
[strategies.ladder]
plugin = "slowladder:Interrupted"
key = "follow_sim"
time_budget_ms = 60000

[strategies.ladder.params]
max_notional_usdt = 500
weights = [2, 3]
"""


@pytest.fixture
def simulator(sim_config: Callable[..., Path]) -> Iterator[tuple[Path, int, int]]:
    """A bot configuration with only the crash-prone ladder, and a standalone simulator it
    trades with (which outlives the bot): (config, the bot's port, the simulator's port)."""
    sim_port, http_port = free_port(), free_port()
    config = sim_config(port=http_port)
    config.write_text(config.read_text().split("[strategies.follow]")[0] + STRATEGY)
    (config.parent / "slowladder.py").write_text(PLUGIN)
    sim = subprocess.Popen(
        [sys.executable, "-m", "bot", "sim", "--port", str(sim_port), "--config", str(config)],
        cwd=config.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _orders(sim_port) is not None, 30, "the simulator")
        yield config, http_port, sim_port
    finally:
        sim.kill()
        sim.wait(10)


def _orders(sim_port: int) -> dict[str, dict[str, object]] | None:
    """The bot's orders at the simulator by orderLinkId; None while it does not answer."""
    try:
        answer = requests.get(f"http://127.0.0.1:{sim_port}/sim/orders", timeout=5)
    except requests.RequestException:
        return None
    return {str(order["orderLinkId"]): order for order in client_orders(answer.json()["orders"])}


def test_a_ladder_killed_inside_on_fill_places_its_legs_on_the_next_start(
    simulator: tuple[Path, int, int], start_bot: StartBot
) -> None:
    config, port, sim_port = simulator
    env = {"BOT_VENUE__SIM_URL": f"http://127.0.0.1:{sim_port}"}
    journal_path = load_settings(config).journal_path
    entry, first, second = (
        order_link_id("ladder", "voiceofchain", "l-1", leg) for leg in (0, 1, 2)
    )

    def due_hooks() -> list[str]:
        with closing(Journal(journal_path, read_only=True)) as journal:
            return [fill.order_link_id for fill, _ in journal.due_fill_hooks()]

    crashing = start_bot(config, port, env=env)
    sent = send(config, *BUY_BTC, "--take-profit", "98000", "--take-profit", "99000", "--id", "l-1")
    assert sent.stdout.startswith("202 "), sent.stdout + sent.stderr
    wait_for(lambda: (config.parent / "on_fill_begun").exists(), what="the entry's on_fill")
    # The fill is journaled with its hook due (the journal's deferred write has landed).
    wait_for(lambda: due_hooks() == [entry], what="the entry's hook journaled as due")
    crashing.kill()  # kill -9 inside the hook: no leg was asked for
    crashing.wait(10)
    assert set(_orders(sim_port) or {}) == {entry}

    restarted = start_bot(config, port, env=env)
    legs = wait_for(
        lambda: orders if {first, second} <= set(orders := _orders(sim_port) or {}) else None,
        what="the ladder's legs after the restart",
    )
    wait_for(lambda: due_hooks() == [], what="the hook journaled as done")
    restarted.terminate()
    output, _ = restarted.communicate(timeout=30)

    assert set(legs) == {entry, first, second}  # each leg once, the entry never again
    assert [(legs[leg]["price"], legs[leg]["qty"]) for leg in (first, second)] == [
        ("98000", "0.002"),
        ("99000", "0.003"),
    ]
    assert "re-queued 1 strategy fill hooks (on_fill) left unfinished by the last run" in output
