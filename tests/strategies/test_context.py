"""The context a strategy gets: read-only, yet copied, compared and pickled as a dict is."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from decimal import Decimal

import pytest

from strategies.base import Position, ReadOnlyDict, StrategyContext
from tests.strategies.contexts import context


def test_its_mappings_cannot_be_written() -> None:
    snapshot = context(position_qty="0.01")

    with pytest.raises(TypeError, match="read-only"):
        snapshot.positions["ETHUSDT"] = Position(Decimal(1), Decimal(3000))  # type: ignore[index]
    with pytest.raises(TypeError, match="read-only"):
        snapshot.balances.update(equity=Decimal(10**9))  # type: ignore[attr-defined]


def test_it_copies_and_pickles_to_an_equal_context_that_stays_read_only() -> None:
    snapshot = context(position_qty="0.01")

    copies = [
        copy.copy(snapshot),
        copy.deepcopy(snapshot),
        pickle.loads(pickle.dumps(snapshot)),  # noqa: S301 - our own bytes
        dataclasses.replace(snapshot),
    ]

    for other in copies:
        assert other == snapshot
        with pytest.raises(TypeError, match="read-only"):
            other.positions.clear()  # type: ignore[attr-defined]
    assert dataclasses.asdict(snapshot)["positions"]["BTCUSDT"]["qty"] == Decimal("0.01")
    assert dict(snapshot.positions) == {"BTCUSDT": snapshot.positions["BTCUSDT"]}


def test_a_copy_has_mappings_of_its_own() -> None:
    snapshot = context(position_qty="0.01")

    other = dataclasses.replace(snapshot)

    assert isinstance(other, StrategyContext)
    assert other.positions is not snapshot.positions


def test_a_read_only_dict_is_made_from_keys_too() -> None:
    made = ReadOnlyDict.fromkeys(["equity"], Decimal(0))

    assert made == {"equity": Decimal(0)} and isinstance(made, ReadOnlyDict)
