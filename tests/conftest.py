"""Shared test helpers: configuration files, free ports, polling with a bound."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Final, TypeVar

import pytest
import requests
from pydantic import SecretStr

from bot.config import Environment
from bot.logs import logger
from bot.secrets import ApiCredentials
from bot.sim import SimAccountSpec, SimExchange, SimServer, SimulatorConfig
from bot.venue.bybit import BybitVenue

T = TypeVar("T")

# As the bot does for its configuration's folder (appended: never shadowing the bot's own
# modules), so that a strategy written beside config/bot.toml imports in its tests, as
# docs/strategies.md has them in tests/ and `make test` collects them.
sys.path.append(str(Path(__file__).resolve().parents[1] / "config"))

# A suite started in the background of a script (`make test &`, `nohup ... &`) inherits
# SIGINT ignored, and so would every `bot` it starts, which then outlives a Ctrl-C: the tests
# that press one need it as a terminal delivers it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

SIM_CONFIG = """
environment = "sim"
state_dir = "{state_dir}"

[http]
host = "127.0.0.1"
port = {port}

[risk]
symbols = ["BTCUSDT", "ETHUSDT"]
max_order_notional_usdt = 1000
# Room for the end-to-end tests' bursts; the exposure rules are tested in tests/bot/risk.
max_position_notional_usdt = 100000
max_strategy_exposure_usdt = 100000
max_total_exposure_usdt = 100000
max_open_orders = 1000
max_orders_per_minute = 1000
max_orders_per_day = 100000
max_signal_age_s = 60

[keys.follow_sim]
environment = "sim"

[strategies.follow]
plugin = "follow"
key = "follow_sim"

[strategies.follow.params]
risk_fraction = 0.01
max_notional_usdt = 500
"""


def write_key_secrets(folder: Path, api_key: str, api_secret: str) -> None:
    """The `follow_sim` key's secrets as files in `folder/no-secrets`, where the tests' bots
    look (for a simulator the test starts itself, with an account of that key)."""
    secrets = folder / "no-secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / "bot_key_follow_sim_api_key").write_text(api_key)
    (secrets / "bot_key_follow_sim_api_secret").write_text(api_secret)


def venue_with_key(
    folder: Path, api_key: str, api_secret: str, expired_at: datetime | None = None
) -> SimExchange:
    """A simulator of the tests' own with one account for the `follow_sim` key (expiring at
    `expired_at`), the key's secrets written where the tests' bots look."""
    write_key_secrets(folder, api_key, api_secret)
    exchange = SimExchange(SimulatorConfig())
    exchange.add_account(
        SimAccountSpec(
            api_key=api_key,
            api_secret=SecretStr(api_secret),
            ips=["127.0.0.1"],
            expired_at=expired_at,
        )
    )
    return exchange


#: A second key and strategy beside follow_sim's, for the configurations `sim_config` writes.
OTHER_KEY: Final = """
[keys.other_sim]
environment = "sim"

[strategies.other]
plugin = "follow"
key = "other_sim"
"""


def two_keys_of_one_account(folder: Path) -> SimExchange:
    """`venue_with_key`'s simulator with a second key of the same account, written where the
    tests' bots look as the `other_sim` key's secrets."""
    exchange = venue_with_key(folder, "first-key-of-one-account", "its-secret-1234")
    exchange.add_account(
        SimAccountSpec(
            api_key="second-key-of-one-account",
            api_secret=SecretStr("second-secret-1234"),
            ips=["127.0.0.1"],
            account_of="first-key-of-one-account",
        )
    )
    secrets = folder / "no-secrets"
    (secrets / "bot_key_other_sim_api_key").write_text("second-key-of-one-account")
    (secrets / "bot_key_other_sim_api_secret").write_text("second-secret-1234")
    return exchange


def sim_venues(
    resources: ExitStack, keys: Sequence[str] = ("k1", "k2")
) -> tuple[SimExchange, dict[str, BybitVenue]]:
    """An in-process simulator serving an account per key (secret "secret-<key>"), and a
    venue for each; `resources` stops the server and closes the venues."""
    exchange = SimExchange(SimulatorConfig())
    for key in keys:
        exchange.add_account(SimAccountSpec(api_key=key, api_secret=SecretStr("secret-" + key)))
    server = resources.enter_context(SimServer(exchange))
    venues = {
        key: BybitVenue(
            ApiCredentials(key, SecretStr(key), SecretStr("secret-" + key)),
            Environment.SIM,
            sim_url=server.url,
        )
        for key in keys
    }
    for venue in venues.values():
        resources.callback(venue.close)
    return exchange, venues


@contextmanager
def logged_errors() -> Iterator[list[str]]:
    """loguru's ERROR lines (message and traceback) while the block runs."""
    lines: list[str] = []
    handler = logger.add(lines.append, format="{message}\n{exception}", level="ERROR")
    try:
        yield lines
    finally:
        logger.remove(handler)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def client_orders(orders: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """The orders a client placed (they carry an orderLinkId), without the venue's own: the
    take-profit / stop-loss orders Bybit holds for a position, as the simulator does."""
    return [order for order in orders if order.get("orderLinkId")]


def wait_for(probe: Callable[[], T | None], timeout_s: float = 15.0, what: str = "condition") -> T:
    """Poll `probe` until it returns something truthy; fail after `timeout_s` (a bound, not a
    performance assertion: it only keeps a broken test from hanging)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def sim_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a sim configuration into tmp_path; returns its path."""

    def write(port: int = 0, extra: str = "") -> Path:
        path = tmp_path / "bot.toml"
        path.write_text(SIM_CONFIG.format(state_dir=tmp_path / "var", port=port) + extra)
        return path

    return write


def with_environment(extra: Mapping[str, str] | None) -> dict[str, str] | None:
    """This process's environment with `extra` added; None (inherit it) without."""
    return None if extra is None else {**os.environ, **extra}


def answers(url: str) -> bool:
    """Whether `url` answers 200 now."""
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:  # not listening yet
        return False


@contextmanager
def standalone_simulator(config: Path, *options: str, cwd: Path | None = None) -> Iterator[str]:
    """`bot sim --config config *options` on a free port, a process of its own that outlives
    a killed bot, until the block ends; its URL."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bot",
            "sim",
            "--port",
            str(port),
            "--config",
            str(config),
            *options,
        ],
        cwd=cwd or config.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(f"{url}/sim/stats"), 30, "the simulator")
        yield url
    finally:
        process.kill()
        process.wait(10)


def healthy(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except requests.RequestException:  # not listening yet, or slow on a busy host: ask again
        return False


StartBot = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def start_bot() -> Iterator[StartBot]:
    """`start_bot(config, port, cwd=..., env=..., log=...)`: `bot run` in the background until it
    listens on `port` (or exits); each one still running is killed after the test. Its output
    is piped, or appended to the file `log` (to be read while it runs)."""
    processes: list[subprocess.Popen[str]] = []

    def start(
        config: Path,
        port: int,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
    ) -> subprocess.Popen[str]:
        with ExitStack() as files:
            output = subprocess.PIPE if log is None else files.enter_context(log.open("a"))
            process = subprocess.Popen(
                [sys.executable, "-m", "bot", "run", "--config", str(config), "--port", str(port)],
                cwd=cwd or config.parent,
                env=with_environment(env),
                stdout=output,
                stderr=subprocess.STDOUT,
                text=True,
            )
        processes.append(process)
        wait_for(lambda: healthy(port) or process.poll() is not None, 30, "the bot to listen")
        assert process.poll() is None, log.read_text() if log else process.communicate()[0]
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(10)
