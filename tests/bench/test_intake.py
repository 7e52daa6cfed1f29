"""The intake benchmark in short form: it runs end to end and every signal becomes exactly one
order (its timings are reported by `make bench-intake`, never asserted)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.intake import BotOptions, main, run


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
        raw=True,
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
    # --raw: each signal's own figures, in the order sent, one per signal of the load.
    loads = [(load, 40) for load in report["webhook"]] + [(report["mqtt"], 20)]
    for load, signals in loads:
        rows = load["raw"]
        assert len(rows) == signals
        assert [row["sent_unix_ns"] for row in rows] == sorted(row["sent_unix_ns"] for row in rows)
        assert all(row["order_unix_ns"] > row["sent_unix_ns"] for row in rows)
        assert all(row["latency_ms"] > 0 for row in rows)
    assert {row["id"] for row in report["webhook"][0]["raw"]} == {f"w20-{i}" for i in range(40)}
    assert all(row["answer_ms"] > 0 for row in report["webhook"][0]["raw"])
    # The work directory given is kept: the bot's log is there to read beside the samples.
    assert (tmp_path / "bot.log").stat().st_size > 0


def test_a_used_work_dir_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A run in a used directory would hand the bot the last run's journal. The path is long,
    # as a CI runner's are: the line must not wrap at the terminal's width.
    used = tmp_path / ("a-long-directory-name-" * 4) / "work"
    used.mkdir(parents=True)
    (used / "bot.log").write_text("an earlier run")

    code = main(["--work-dir", str(used)])

    assert code == 2
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert f"{used} is not empty" in out
    assert "Traceback" not in out
