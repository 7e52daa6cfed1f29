"""The calendar seam: the wall clock by default, a replay's virtual clock while installed, read
alike by the bot (`utc_now`) and the simulator (`now_ms`), never by request signing."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from bot import clock
from bot.messages import utc_now
from bot.sim import SimExchange, SimulatorConfig

OCTOBER = datetime(2026, 10, 1, 8, 0, tzinfo=UTC)


def test_the_wall_clock_is_the_default() -> None:
    assert abs(clock.now() - datetime.now(UTC)) < timedelta(seconds=1)
    assert abs(clock.now_ms() - time.time() * 1000) < 1000


def test_an_installed_virtual_clock_is_everyones_now_until_the_block_ends() -> None:
    exchange = SimExchange(SimulatorConfig())

    with clock.installed(clock.VirtualClock(OCTOBER)):
        bot_now, sim_now = utc_now(), exchange.now_ms()
        signing = exchange.signing_clock_ms()

    assert OCTOBER <= bot_now < OCTOBER + timedelta(seconds=1)
    assert abs(sim_now - OCTOBER.timestamp() * 1000) < 1000
    assert abs(signing - time.time() * 1000) < 1000, "requests are signed on the wall clock"
    assert abs(utc_now() - datetime.now(UTC)) < timedelta(seconds=1)


def test_a_virtual_clock_runs_at_wall_pace_and_only_jumps_forward() -> None:
    virtual = clock.VirtualClock(OCTOBER)

    virtual.advance_to(OCTOBER - timedelta(days=1))
    earlier = virtual.now()
    time.sleep(0.01)
    later = virtual.now()
    virtual.advance_to(OCTOBER + timedelta(hours=5))

    assert OCTOBER <= earlier < later < OCTOBER + timedelta(seconds=1)
    assert OCTOBER + timedelta(hours=5) <= virtual.now() < OCTOBER + timedelta(hours=5, seconds=1)
    assert virtual.now_ms() // 1000 == int((OCTOBER + timedelta(hours=5)).timestamp())


def test_one_calendar_at_a_time() -> None:
    first, second = clock.VirtualClock(OCTOBER), clock.VirtualClock(OCTOBER)

    with clock.installed(first), pytest.raises(RuntimeError), clock.installed(second):
        pass

    assert abs(utc_now() - datetime.now(UTC)) < timedelta(seconds=1)
