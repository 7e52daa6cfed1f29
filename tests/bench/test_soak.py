"""The short soak: ~100 signals, two SIGKILLs (one restart later than max_signal_age_s), faults on.

Asserts the correctness targets only (nothing duplicated, lost, left open or disagreeing with
the venue); timing and pace are reported by `make soak`, not asserted here.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import count
from pathlib import Path

from rich.console import Console

from bench.soak import (
    SoakOptions,
    books_against_venue,
    carried_into_new_positions,
    print_report,
    run_soak,
    write_json,
)
from bot.messages import Execution, Side

T0 = datetime(2026, 12, 3, 12, 58, 42, tzinfo=UTC)
_EXEC_IDS = count()


def test_short_soak_meets_the_correctness_targets(tmp_path: Path) -> None:
    options = SoakOptions(
        signals=100,
        kills=2,
        faults=0.20,
        seed=20240601,
        max_signal_age_s=5.0,
        quiesce_timeout_s=30.0,
        quiet_for_s=2.0,
        reconcile_s=4.0,
        work_dir=tmp_path,
        json_out=tmp_path / "soak.json",
    )

    report = run_soak(options)

    print_report(report, Console(width=120))
    write_json(report, options.json_out)
    assert not report.failures, (
        f"soak failed (state and logs in {report.state_dir}):\n{report.describe_failures()}"
    )


def test_books_that_do_not_add_up_to_the_venues_position_are_named() -> None:
    books = [
        {"row": "position", "key": "key_alpha", "symbol": "BTCUSDT", "side": "Buy", "size": "0.01"},
        {"row": "position", "key": "key_beta", "symbol": "SOLUSDT", "side": "Sell", "size": "2.8"},
        {"row": "account", "key": "key_alpha", "equity": "100000"},
    ]
    venue = [
        {"note": "key_alpha", "symbol": "BTCUSDT", "side": "Buy", "size": "0.01"},
        {"note": "key_beta", "symbol": "SOLUSDT", "side": "Sell", "size": "5.6"},
        {"note": "key_gamma", "symbol": "ETHUSDT", "side": "Buy", "size": "0.1"},
    ]

    assert books_against_venue(books, venue) == [
        "key_beta SOLUSDT: books -2.8, venue -5.6",
        "key_gamma ETHUSDT: books 0, venue 0.1",
    ]


def _at(ms: int) -> datetime:
    """A venue time, `ms` milliseconds after T0."""
    return T0 + timedelta(milliseconds=ms)


def _fill(link: str, side: Side, qty: str, ms: int) -> Execution:
    """A journaled fill of key_gamma's ETHUSDT at venue time `ms` (`link` "": the venue's own
    stop loss)."""
    return Execution(
        exec_id=f"exec-{next(_EXEC_IDS)}",
        key_name="key_gamma",
        order_id=f"venue-{link or 'stop'}",
        order_link_id=link,
        symbol="ETHUSDT",
        side=side,
        qty=Decimal(qty),
        price=Decimal(3500),
        fee=Decimal(0),
        ts=_at(ms),
    )


ENTRY = _fill("gamma-0-a", Side.BUY, "0.14", 0)  # long 0.14; its targets are made at 5 ms
FLIP = _fill("gamma-0-b", Side.SELL, "0.28", 400)  # short 0.14: the targets' position turned
FLIP_BACK = _fill("gamma-0-c", Side.BUY, "0.28", 800)  # long 0.14 again: a new position
TARGETS = {"gamma-1-a": _at(5), "gamma-2-a": _at(5), "gamma-1-c": _at(805)}


def test_a_target_that_rested_through_a_turn_and_filled_on_the_next_position_is_named() -> None:
    fills = [ENTRY, FLIP, FLIP_BACK, _fill("gamma-1-a", Side.SELL, "0.04", 12_000)]

    assert carried_into_new_positions(fills, TARGETS) == [
        "gamma-1-a (key_gamma ETHUSDT Sell, made 12:58:42.005): its position turned to -0.14 "
        "at 12:58:42.400; it filled 0.04 at 12:58:54.000, on a new one"
    ]


def test_fills_that_took_profit_on_their_own_position_are_not_named() -> None:
    cases = {
        # A target filled milliseconds before the flip was decided: the flip's fill (sized by
        # the position the bot knew) leaves the short that much larger.
        "filled before the flip": [
            ENTRY,
            _fill("gamma-1-a", Side.SELL, "0.04", 390),
            _fill("gamma-0-b", Side.SELL, "0.28", 400),
            FLIP_BACK,
        ],
        # The same, with the stream telling the target's fill after the flip's (and the
        # flip back's): the journal holds them in the order they came.
        "told in another order": [
            ENTRY,
            _fill("gamma-0-b", Side.SELL, "0.28", 400),
            FLIP_BACK,
            _fill("gamma-1-a", Side.SELL, "0.04", 399),
        ],
        # Filled by the venue in the millisecond its position turned: which came first within
        # it is not known.
        "filled as its position turned": [
            ENTRY,
            _fill("gamma-0-b", Side.SELL, "0.28", 400),
            _fill("gamma-1-a", Side.SELL, "0.04", 400),
            _fill("gamma-0-c", Side.BUY, "0.32", 800),
        ],
        # The new position's own target, made after the flip back: the turn was before it.
        "the new ladder's target": [
            ENTRY,
            FLIP,
            FLIP_BACK,
            _fill("gamma-1-c", Side.SELL, "0.04", 5_000),
        ],
        # The old targets rested through the turn and back but were cancelled unfilled (a
        # flip may go out while their cancel is on its way): no fill, nothing taken.
        "cancelled unfilled": [ENTRY, FLIP, FLIP_BACK],
        # The stop closed the position (flat is no turn) and the target never filled; a
        # partial fill of it before then was on its own position.
        "its position stopped out": [
            ENTRY,
            _fill("gamma-2-a", Side.SELL, "0.05", 200),
            _fill("", Side.SELL, "0.09", 300),
        ],
    }

    for name, fills in cases.items():
        assert carried_into_new_positions(fills, TARGETS) == [], name


def test_an_order_whose_making_is_not_known_is_not_judged() -> None:
    fills = [ENTRY, FLIP, FLIP_BACK, _fill("gamma-1-a", Side.SELL, "0.04", 12_000)]

    assert carried_into_new_positions(fills, {"gamma-2-a": _at(5)}) == []
