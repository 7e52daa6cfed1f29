"""The stream-latency benchmark in short form: a few hundred fills at 20/s and 200/s.

Asserts correctness only (every fill the simulator executed reached the account projection
exactly once; the strategy's book and the projected venue position equal the simulator's
position); latency is reported by `make bench-stream`, never asserted here.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from bench.stream_latency import (
    LoadSpec,
    PathName,
    StreamLatencyOptions,
    print_report,
    run_stream_latency,
    write_json,
)


def test_short_run_applies_every_fill_once_and_agrees_with_the_simulator(
    tmp_path: Path,
) -> None:
    loads = (
        LoadSpec("modest", fills_per_s=20, fills=40, orders_per_s=10),
        LoadSpec("200/s", fills_per_s=200, fills=400, orders_per_s=10),
    )
    options = StreamLatencyOptions(
        loads=loads,
        drain_timeout_s=30.0,
        work_dir=tmp_path,
        json_out=tmp_path / "stream-latency.json",
    )

    report = run_stream_latency(options)

    print_report(report, Console(width=120))
    assert write_json(report, options.json_out).exists()
    assert not report.failures, report.describe_failures()
    paths: tuple[PathName, ...] = ("floor", "bot")
    for load in loads:
        for path in paths:
            result = report.result(load.name, path)
            assert result is not None, f"{load.name} {path} did not run"
            assert result.fills_at_sim == load.expected_fills
            assert result.delivered == load.expected_fills
            assert not result.missing
            assert not result.duplicates
            assert not result.unknown
        bot = report.result(load.name, "bot")
        assert bot is not None
        assert bot.sim_size not in {"", "0"}
        assert bot.strategy_size == bot.sim_size
        assert bot.position_size == bot.sim_size
