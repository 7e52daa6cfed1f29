"""The short soak: ~100 signals, two SIGKILLs (one restart later than max_signal_age_s), faults on.

Asserts the correctness targets only (nothing duplicated, lost, left open or disagreeing with
the venue); timing and pace are reported by `make soak`, not asserted here.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from bench.soak import SoakOptions, print_report, run_soak, write_json


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
