"""The replay benchmark in short form: it runs end to end and every signal trades and closes
(its speed is reported by `make bench-replay`, never asserted)."""

from __future__ import annotations

from pathlib import Path

from bench.replay import run


def test_the_replay_benchmark_trades_and_closes_every_signal(tmp_path: Path) -> None:
    report = run(signals=30, work_dir=tmp_path)

    assert report["failures"] == []
    assert (report["signals"], report["price_points"]) == (30, 90)
    assert report["signals_per_s"] > 0
