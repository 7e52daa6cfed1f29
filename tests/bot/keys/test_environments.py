"""Environments cannot mix: a key's environment alone decides its REST and stream URLs, and
mainnet needs `allow_mainnet = true` in the file *and* `--mainnet`, whatever else is set.

The URLs are recorded, never connected to: no network beyond loopback."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from pydantic import SecretStr

from bot.config import ConfigError, Environment, load_settings
from bot.secrets import ApiCredentials
from bot.service import check_mainnet_opt_in, open_venue
from bot.venue.base import BYBIT_URLS, venue_urls
from bot.venue.stream import AccountStream

SIM_URL = "http://127.0.0.1:9"


def credentials(name: str = "main") -> ApiCredentials:
    return ApiCredentials(name, SecretStr("key-value-123456"), SecretStr("secret-value-123456"))


async def ignore(*args: object) -> None:
    return None


def config(tmp_path: Path, environment: str, *, allow_mainnet: bool = False) -> Path:
    path = tmp_path / "bot.toml"
    path.write_text(
        f'environment = "{environment}"\nallow_mainnet = {str(allow_mainnet).lower()}\n'
        f'[keys.main]\nenvironment = "{environment}"\n'
        '[strategies.follow]\nplugin = "follow"\nkey = "main"\n'
    )
    return path


@pytest.mark.parametrize(
    "environment", [Environment.MAINNET, Environment.TESTNET, Environment.DEMO]
)
def test_a_key_goes_only_to_its_own_environment(tmp_path: Path, environment: Environment) -> None:
    settings = load_settings(config(tmp_path, environment.value))
    rest, stream = BYBIT_URLS[environment]

    venue = open_venue(settings, credentials(), "")
    try:
        assert venue.endpoint == rest
    finally:
        venue.close()
    assert AccountStream(credentials(), environment, ignore, ignore).url == stream
    others = [urls for env, urls in BYBIT_URLS.items() if env is not environment]
    assert all(rest not in pair and stream not in pair for pair in others)


def test_the_simulator_is_reachable_only_from_sim() -> None:
    assert venue_urls(Environment.SIM, SIM_URL) == (SIM_URL, "ws://127.0.0.1:9/v5/private")
    for environment in (Environment.MAINNET, Environment.TESTNET, Environment.DEMO):
        with pytest.raises(ValueError, match="forbidden elsewhere"):
            venue_urls(environment, SIM_URL)  # no flag sends a real key to the simulator
    with pytest.raises(ValueError, match="required in sim"):
        venue_urls(Environment.SIM, "")


@pytest.mark.parametrize("environment", ["mainnet", "testnet", "demo"])
def test_a_simulator_url_outside_sim_is_refused_not_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, environment: str
) -> None:
    # Reproduced: BOT_VENUE__SIM_URL (or sim_url in the file) with a testnet or mainnet
    # configuration was accepted and ignored, so that a bot its user meant to point at a
    # local simulator traded with the real key on Bybit.
    monkeypatch.setenv("BOT_VENUE__SIM_URL", SIM_URL)

    with pytest.raises(ConfigError) as refused:
        load_settings(config(tmp_path, environment))

    assert (
        f"venue.sim_url = '{SIM_URL}' from BOT_VENUE__SIM_URL, but the bot runs in "
        f"{environment}" in str(refused.value)
    )
    monkeypatch.delenv("BOT_VENUE__SIM_URL")
    path = config(tmp_path, environment)
    path.write_text(path.read_text() + f'[venue]\nsim_url = "{SIM_URL}"\n')
    with pytest.raises(ConfigError, match=f"venue.sim_url = '{SIM_URL}' in {path}, but"):
        load_settings(path)


def test_an_environment_variable_cannot_move_a_key_to_another_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BOT_ENVIRONMENT", "mainnet")

    with pytest.raises(ConfigError, match="bound to testnet, but the bot runs in mainnet"):
        load_settings(config(tmp_path, "testnet"))


@pytest.mark.parametrize(
    ("in_file", "flag", "variable"), list(itertools.product((False, True), repeat=3))
)
def test_mainnet_needs_the_file_opt_in_and_the_flag_and_nothing_else_will_do(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    in_file: bool,
    flag: bool,
    variable: bool,
) -> None:
    if variable:
        monkeypatch.setenv("BOT_ALLOW_MAINNET", "true")
    path = config(tmp_path, "mainnet", allow_mainnet=in_file)

    try:
        check_mainnet_opt_in(load_settings(path), mainnet_flag=flag)
    except ConfigError as refused:
        message = str(refused)
    else:
        message = ""

    if in_file and flag and not variable:
        assert message == ""
        return
    if variable:
        assert "BOT_ALLOW_MAINNET is not accepted" in message
    else:
        assert "missing:" in message
        assert ("allow_mainnet = true" in message) is not in_file
        assert ("--mainnet" in message) is not flag


@pytest.mark.parametrize("environment", ["sim", "testnet", "demo"])
def test_mainnet_flag_on_another_environment_is_refused(tmp_path: Path, environment: str) -> None:
    settings = load_settings(config(tmp_path, environment))

    with pytest.raises(ConfigError, match="--mainnet given but"):
        check_mainnet_opt_in(settings, mainnet_flag=True)
