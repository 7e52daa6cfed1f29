"""The kill switch's flatten waits for the books to hold the fills the venue reported before
it reads them; what is still behind then gets a row, not done, and is not closed."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from bot.risk import kill_switch as kill_switch_module
from bot.risk.kill_switch import KillSwitch


def switch(booked: dict[str, Decimal]) -> KillSwitch:
    """A kill switch whose account's books hold `booked` (orderLinkId -> filled qty); the
    rest of its parts are never reached here."""
    projection = SimpleNamespace(booked_qty=lambda link: booked.get(link, Decimal(0)))
    unused: Any = None
    return KillSwitch(
        unused, unused, unused, unused, SimpleNamespace(projection=projection), {}, unused
    )


def test_the_books_caught_up_give_no_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kill_switch_module, "_BOOKED_WAIT_S", 0.2)
    caught_up = switch({"l1": Decimal("0.01")})
    caught_up._reported_fills["l1"] = ("follow", "BTCUSDT", Decimal("0.01"))

    assert asyncio.run(caught_up._books_behind(frozenset({"follow"}))) == []
    assert caught_up._reported_fills == {}


def test_books_still_behind_give_a_row_not_done_and_are_not_waited_for_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kill_switch_module, "_BOOKED_WAIT_S", 0.2)
    behind = switch({"l1": Decimal("0.004")})  # the venue reported 0.01 filled
    behind._reported_fills["l1"] = ("follow", "BTCUSDT", Decimal("0.01"))

    rows = asyncio.run(behind._books_behind(frozenset({"follow"})))

    assert [(row["strategy"], row["symbol"], row["done"]) for row in rows] == [
        ("follow", "BTCUSDT", False)
    ]
    assert "not closed" in str(rows[0]["status"])
    assert behind._reported_fills == {}  # the next command does not wait for it


def test_fills_of_strategies_outside_the_scope_are_not_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kill_switch_module, "_BOOKED_WAIT_S", 0.2)
    other = switch({})
    other._reported_fills["l1"] = ("other", "BTCUSDT", Decimal("0.01"))

    assert asyncio.run(other._books_behind(frozenset({"follow"}))) == []
    assert "l1" in other._reported_fills  # its own command's flatten still waits for it
