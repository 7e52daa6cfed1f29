"""The short soak: ~100 signals, two SIGKILLs (one restart later than max_signal_age_s), faults on.

Asserts the correctness targets only (nothing duplicated, lost, left open or disagreeing with
the venue); timing and pace are reported by `make soak`, not asserted here.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from bench.soak import SoakOptions, books_against_venue, print_report, run_soak, write_json


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
