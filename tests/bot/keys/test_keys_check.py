"""`bot keys check` as a user runs it: before any `bot run`, a table or JSON lines, exit 1
when a key is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

PROFILES = """
[keys.spare]
environment = "sim"

[sim.key_profiles.spare]
ips = ["*"]
permissions = { ContractTrade = ["Order", "Position"], Wallet = ["Withdraw"] }
"""


def keys_check(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", "keys", "check", "--config", str(config), *args],
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "200"},  # one line per row (80-column layout: issue 12)
    )


def test_every_key_is_audited_without_a_journal_and_a_refusal_exits_1(
    sim_config: Callable[..., Path],
) -> None:
    config = sim_config(extra=PROFILES)

    done = keys_check(config, "--json")

    assert done.returncode == 1, done.stderr
    rows = {row["key"]: row for row in map(json.loads, done.stdout.splitlines())}
    assert rows["follow_sim"]["verdict"] == "ok"
    assert rows["follow_sim"]["ip_binding"] == "127.0.0.1"
    assert rows["spare"]["verdict"] == "refused"
    assert rows["spare"]["strategies"] == ""
    assert "Wallet permissions (Withdraw)" in rows["spare"]["reason"]
    assert "not bound to an IP address" in rows["spare"]["reason"]
    assert not (config.parent / "var" / "journal.sqlite3").exists()


def test_a_clean_configuration_exits_0_with_a_table(sim_config: Callable[..., Path]) -> None:
    done = keys_check(sim_config())

    assert done.returncode == 0, done.stderr
    assert "follow_sim" in done.stdout
    assert "ok" in done.stdout
