"""`bot keys check` as a user runs it: before any `bot run`, a table or JSON lines, exit 1
when a key is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bot.sim import SimServer
from tests.conftest import OTHER_KEY, two_keys_of_one_account

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


def test_two_keys_of_one_account_are_refused_as_bot_run_refuses_them(
    sim_config: Callable[..., Path], tmp_path: Path
) -> None:
    # Reproduced: both keys showed `ok` and exited 0, where `bot run` refuses to start with
    # them: a second key of follow_sim's account given to other_sim.
    exchange = two_keys_of_one_account(tmp_path)
    secrets = tmp_path / "no-secrets"
    with SimServer(exchange) as server:
        config = sim_config(extra=f'\n[venue]\nsim_url = "{server.url}"\n{OTHER_KEY}')
        done = keys_check(config, "--json", "--secrets-dir", str(secrets))

    assert done.returncode == 1, done.stderr
    rows = {row["key"]: row for row in map(json.loads, done.stdout.splitlines())}
    for key in ("follow_sim", "other_sim"):
        assert rows[key]["verdict"] == "refused"
        assert rows[key]["reason"].startswith("keys follow_sim and other_sim are keys of one")


def test_two_sim_keys_holding_one_api_key_are_one_line_not_a_traceback(
    sim_config: Callable[..., Path], tmp_path: Path
) -> None:
    # Reproduced: the in-process simulator's DuplicateAccountError, as an unexpected error
    # with its traceback.
    secrets = tmp_path / "no-secrets"
    secrets.mkdir()
    for name in ("follow_sim", "other_sim"):
        (secrets / f"bot_key_{name}_api_key").write_text("one-key-of-two-names")
        (secrets / f"bot_key_{name}_api_secret").write_text("its-secret-1234")

    done = keys_check(sim_config(extra=OTHER_KEY), "--secrets-dir", str(secrets))

    assert done.returncode == 2
    assert done.stderr.startswith("error: keys follow_sim and other_sim hold the same API key")
    assert "Traceback" not in done.stderr


def test_an_audit_log_it_cannot_open_is_one_line_not_a_traceback(
    sim_config: Callable[..., Path], tmp_path: Path
) -> None:
    # Reproduced: a state_dir that is a file (or another user's) ended `bot keys check` in
    # the AuditLog's ConfigError, uncaught, with its traceback.
    config = sim_config(extra='\n[venue]\nsim_url = "http://127.0.0.1:9"\n')
    not_a_directory = tmp_path / "state-file"
    not_a_directory.write_text("")

    done = subprocess.run(
        [sys.executable, "-m", "bot", "keys", "check", "--config", str(config)],
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={
            **os.environ,
            "BOT_STATE_DIR": str(not_a_directory),
            "BOT_KEY_FOLLOW_SIM_API_KEY": "follow-sim-key",
            "BOT_KEY_FOLLOW_SIM_API_SECRET": "follow-sim-secret",
        },
    )

    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr == (
        f"error: cannot open the audit log in {not_a_directory / 'audit'}: Not a directory; "
        "check state_dir and its permissions\n"
    )


def test_a_profile_of_no_configured_sim_key_is_refused_naming_the_key_it_meant(
    sim_config: Callable[..., Path],
) -> None:
    # Reproduced: a misspelt profile name was ignored without a word, the key it meant kept
    # the default profile, and `bot keys check` showed `ok` for what was to be read-only.
    config = sim_config(extra="\n[sim.key_profiles.folow_sim]\nread_only = true\n")

    done = keys_check(config)

    assert done.returncode == 2, done.stdout
    assert done.stderr == (
        f"error: sim.key_profiles.folow_sim in {config} is the profile of no sim key in "
        "[keys]: did you mean 'follow_sim'? name one of ['follow_sim'] or remove it\n"
    )
