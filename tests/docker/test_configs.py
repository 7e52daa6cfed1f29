"""config/testnet.toml and config/mainnet.toml: what they hold, and that `bot keys check` and
`bot run` with them fail fast, in one line, when Bybit cannot be reached.

No request leaves this machine: Bybit's hosts are reached through an HTTPS proxy on loopback
that refuses every connection, or accepts and never answers (a black hole)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bot.config import BotSettings, ConfigError, Environment, load_settings
from bot.secrets import api_key_names
from bot.service import check_mainnet_opt_in
from bot.venue.bybit import READ_ATTEMPTS
from tests.docker.deploy import ROOT

OFFLINE = ROOT / "config" / "bot.toml"
TESTNET = ROOT / "config" / "testnet.toml"
MAINNET = ROOT / "config" / "mainnet.toml"
BOT = Path(sys.executable).parent / "bot"
#: Where a configuration may differ from the offline default and still be "the same".
_ITS_OWN = {"environment", "allow_mainnet", "state_dir", "keys", "strategies", "sim"}
#: Each risk limit: True when a smaller value is the stricter one.
_SMALLER_IS_STRICTER = {
    "max_order_notional_usdt": True,
    "max_position_notional_usdt": True,
    "max_strategy_exposure_usdt": True,
    "max_total_exposure_usdt": True,
    "max_open_orders": True,
    "max_leverage": True,
    "max_orders_per_minute": True,
    "max_orders_per_day": True,
    "cooldown_after_loss_s": False,
    "max_daily_loss_usdt": True,
    "max_limit_distance_pct": True,
    "max_price_age_s": True,
    "max_stop_distance_pct": True,
    "max_signal_age_s": True,
}


def _dump(settings: BotSettings) -> dict[str, Any]:
    return {k: v for k, v in settings.model_dump(mode="json").items() if k not in _ITS_OWN}


def test_testnet_is_the_offline_default_with_one_strategy_on_a_testnet_key() -> None:
    offline = load_settings(OFFLINE)

    testnet = load_settings(TESTNET)

    assert testnet.environment is Environment.TESTNET
    assert not testnet.allow_mainnet
    (strategy,) = testnet.strategies.values()
    assert testnet.keys[strategy.key].environment is Environment.TESTNET
    assert strategy.key == "follow_testnet"
    assert strategy.model_copy(update={"key": "follow_sim"}) == offline.strategies["follow"]
    differences = {key for key, value in _dump(testnet).items() if _dump(offline).get(key) != value}
    assert not differences, (
        f"config/testnet.toml differs from the offline default in {sorted(differences)}: keep "
        "the two in step"
    )
    assert testnet.state_dir != offline.state_dir  # its own journal


def test_mainnet_template_is_opted_out_and_stricter_than_the_offline_default() -> None:
    offline = load_settings(OFFLINE)

    mainnet = load_settings(MAINNET)

    assert mainnet.environment is Environment.MAINNET
    assert mainnet.allow_mainnet is False
    assert mainnet.journal_synchronous == "FULL"
    assert mainnet.risk.require_stop_loss
    assert set(mainnet.risk.symbols) <= set(offline.risk.symbols)
    for limit, smaller_is_stricter in _SMALLER_IS_STRICTER.items():
        ours, default = getattr(mainnet.risk, limit), getattr(offline.risk, limit)
        stricter = ours <= default if smaller_is_stricter else ours >= default
        assert stricter, f"risk.{limit} = {ours} is looser than the offline default {default}"
    for strategy in mainnet.strategies.values():
        assert mainnet.keys[strategy.key].environment is Environment.MAINNET
        assert Decimal(str(strategy.params["risk_fraction"])) < Decimal("0.01")


def test_every_mainnet_limit_carries_a_comment() -> None:
    section = ""
    uncommented = []

    for number, line in enumerate(MAINNET.read_text(encoding="utf-8").splitlines(), 1):
        text = line.strip()
        if text.startswith("["):
            section = text.split("]")[0].strip("[")
        elif "=" in text and not text.startswith("#") and "#" not in text:
            uncommented.append(f"{number}: [{section}] {text}")

    assert not uncommented, "\n".join(uncommented)


def test_mainnet_refuses_to_start_without_both_opt_ins() -> None:
    settings = load_settings(MAINNET)

    with pytest.raises(ConfigError, match="allow_mainnet = true") as flag_only:
        check_mainnet_opt_in(settings, mainnet_flag=True)
    with pytest.raises(ConfigError, match="--mainnet") as neither:
        check_mainnet_opt_in(settings, mainnet_flag=False)
    opted_in = settings.model_copy(update={"allow_mainnet": True})

    check_mainnet_opt_in(opted_in, mainnet_flag=True)  # both: no error
    assert "--mainnet" not in str(flag_only.value)
    assert "allow_mainnet = true" in str(neither.value)


# --- against an unreachable Bybit -------------------------------------------------------------


@pytest.fixture
def refusing_proxy() -> str:
    """A loopback port nothing listens on: every connection is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def black_hole_proxy() -> Iterator[str]:
    """A loopback port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def dummy_secrets(tmp_path: Path) -> Path:
    """Every secret either configuration names, as Docker mounts them: one file each."""
    folder = tmp_path / "run-secrets"
    folder.mkdir()
    names = ["BOT_WEBHOOK_SECRET_VOICEOFCHAIN", "BOT_ADMIN_SECRET"]
    for config in (TESTNET, MAINNET):
        for key in load_settings(config).keys:
            names += api_key_names(key)
    for name in names:
        path = folder / name.lower()
        path.write_text(f"dummy-{name.lower()}-0123456789abcdef\n")
        path.chmod(0o400)
    return folder


def _bot(args: list[str], proxy: str, tmp_path: Path, **env: str) -> tuple[int, str, str, float]:
    """`bot ...` with Bybit behind `proxy`, the state in tmp_path; (exit code, stdout, stderr,
    seconds)."""
    environ = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("BOT_") and "proxy" not in name.lower()
    }
    environ.update(
        HTTPS_PROXY=proxy,
        HTTP_PROXY=proxy,
        NO_PROXY="",
        BOT_STATE_DIR=str(tmp_path / "state"),
        **env,
    )
    started = time.monotonic()
    result = subprocess.run(
        [str(BOT), *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.returncode, result.stdout, result.stderr, time.monotonic() - started


def _assert_no_secret(text: str, secrets: Path) -> None:
    for path in secrets.iterdir():
        assert path.read_text().strip() not in text, f"the value of {path.name} was printed"


@pytest.mark.parametrize("config", [TESTNET, MAINNET], ids=["testnet", "mainnet"])
def test_keys_check_reports_an_unreachable_venue_in_one_line(
    config: Path, refusing_proxy: str, dummy_secrets: Path, tmp_path: Path
) -> None:
    settings = load_settings(config)

    code, out, err, _ = _bot(
        ["keys", "check", "--json", "--config", str(config), "--secrets-dir", str(dummy_secrets)],
        refusing_proxy,
        tmp_path,
    )

    assert code == 1, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [row["key"] for row in rows] == sorted(settings.keys)
    for row in rows:
        assert row["verdict"] == "unreachable"
        assert row["environment"] == settings.environment.value
        assert "could not ask the" in row["reason"] and "bybit.com" in row["reason"]
        assert "\n" not in row["reason"]
    assert "Traceback" not in err
    _assert_no_secret(out + err, dummy_secrets)


def test_keys_check_gives_up_on_a_silent_venue_within_its_timeouts(
    black_hole_proxy: str, dummy_secrets: Path, tmp_path: Path
) -> None:
    """Every request has a timeout: a venue that never answers costs READ_ATTEMPTS timeouts
    (plus a second of backoff), never a hang. The table is the one a person reads."""
    timeout_s = 1.0

    code, out, err, elapsed = _bot(
        ["keys", "check", "--wide", "--config", str(TESTNET)],
        black_hole_proxy,
        tmp_path,
        BOT_SECRETS_DIR=str(dummy_secrets),
        BOT_VENUE__TIMEOUT_S=str(timeout_s),
    )

    assert code == 1, err
    assert "unreachable" in out and "follow_testnet" in out
    assert "Traceback" not in err
    # Start-up of the command (a few seconds on a busy machine) plus the bounded audit.
    assert elapsed < 30 + READ_ATTEMPTS * timeout_s, f"took {elapsed:.1f} s"
    _assert_no_secret(out + err, dummy_secrets)


def test_bot_run_on_testnet_refuses_to_start_with_an_unreachable_key_in_one_line(
    refusing_proxy: str, dummy_secrets: Path, tmp_path: Path
) -> None:
    code, _, err, _ = _bot(
        ["run", "--config", str(TESTNET), "--secrets-dir", str(dummy_secrets), "--port", "0"],
        refusing_proxy,
        tmp_path,
        BOT_VENUE__START_WAIT_S="1",
    )
    errors = [line for line in err.splitlines() if line.startswith("error:")]

    assert code == 2, err
    assert len(errors) == 1
    assert "follow_testnet is unreachable" in errors[0]
    assert "the venue did not answer the check of key follow_testnet" in err
    assert "Traceback" not in err
    _assert_no_secret(err, dummy_secrets)


def test_bot_run_on_mainnet_without_the_config_opt_in_refuses_in_one_line(
    refusing_proxy: str, dummy_secrets: Path, tmp_path: Path
) -> None:
    code, _, err, _ = _bot(
        ["run", "--mainnet", "--config", str(MAINNET), "--secrets-dir", str(dummy_secrets)],
        refusing_proxy,
        tmp_path,
    )

    assert code == 2, err
    assert err.strip().splitlines()[-1] == (
        "error: refusing to trade real money on mainnet without both opt-ins; missing: "
        "allow_mainnet = true in the configuration"
    )
