"""The typical-bot comparison in short form: 30 signals at 30/s, then 5 per bot in a 4 s stall.

Asserts correctness (every signal our bot accepted became exactly one order, before and after
the stall) and the report's shape; timing and CPU are reported by the benchmark, never
asserted here.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from bench.typical_bot import BOTS, TypicalBotOptions, print_report, run, write_json

LATENCY_FIELDS = {"n", "p50", "p99", "max", "mean"}


def test_short_run_turns_every_accepted_signal_of_ours_into_one_order(tmp_path: Path) -> None:
    options = TypicalBotOptions(
        signals=30,
        rate_per_s=30.0,
        stall_signals=5,
        stall_ms=4000,
        warmup=2,
        idle_s=0.5,
        settle_s=0.5,
        orders_timeout_s=15.0,
        recover_timeout_s=20.0,
        work_dir=tmp_path / "work",
        json_out=tmp_path / "typical-bot.json",
    )

    report = run(options)

    print_report(report, Console(width=120))
    failures = [c for c in report["checks"] if c["correctness"] and not c["ok"]]
    assert report["ok"], f"logs in {options.work_dir}: {failures}"
    steady, stall = report["scenarios"]["steady"], report["scenarios"]["stall"]
    for name in BOTS:
        assert steady[name]["signals"] == 30
        assert set(steady[name]["sender_wait_ms"]) == LATENCY_FIELDS
        assert set(steady[name]["signal_to_order_ms"]) == LATENCY_FIELDS
        assert {"per_signal_ms", "per_signal_net_ms", "idle_ms_per_s"} <= set(steady[name]["cpu"])
        assert stall[name]["signals"] == 5
        assert set(stall[name]["sender_wait_all_ms"]) == LATENCY_FIELDS
        assert {"senders_timed_out", "orders_after_sender_gave_up"} <= set(stall[name])
    assert steady["ours"]["answers"] == {"202": 30}
    assert steady["ours"]["orders"]["exactly_one"] == 30
    assert steady["ours"]["orders"]["more_than_one"] == 0
    assert steady["typical"]["orders"]["exactly_one"] == 30  # the harness matches its orders
    assert stall["ours"]["answers"] == {"202": 5}
    assert stall["ours"]["orders"]["exactly_one"] == 5
    assert stall["ours"]["orders"]["more_than_one"] == 0
    assert stall["typical"]["orders"]["more_than_one"] == 0
    assert {"cpus", "python"} <= set(report["machine"])
    written = json.loads(write_json(report, options.json_out).read_text())
    assert written["scenarios"]["stall"]["stall_ms"] == 4000
