"""The intake benchmark in short form: it runs end to end and every signal becomes exactly one
order (its timings are reported by `make bench-intake`, never asserted)."""

from __future__ import annotations

import os
from pathlib import Path

from bench.intake import BotOptions, run


def test_the_intake_benchmark_places_one_order_per_signal(tmp_path: Path) -> None:
    # Pinned to one CPU, as `--cpus` runs it (and the pinning's path is run end to end).
    cpus = (max(os.sched_getaffinity(0)),) if hasattr(os, "sched_getaffinity") else ()
    report = run(
        signals=40,
        rate=20,
        work_dir=tmp_path,
        burst_signals=45,
        footprint_signals=60,
        options=BotOptions(cpus=cpus),
    )

    assert report["failures"] == []
    assert report["bot_cpus"] == list(cpus)
    assert [load["signal_to_order"]["n"] for load in report["webhook"]] == [40, 40]
    assert report["mqtt"]["publish_to_order"]["n"] == 20
    assert report["burst"]["orders"] == 45
    assert report["burst"]["rate_limited_10006"] == 0
    assert report["footprint"]["rss_after_load_mb"] > 0
    halves = ("cpu_ms_per_signal_first_half", "cpu_ms_per_signal_second_half")
    assert all(report["footprint"][half] > 0 for half in halves)
