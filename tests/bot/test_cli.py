"""The commands as a user types them: `bot run`, `bot signal send`, `bot orders`, in processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import free_port, wait_for


def bot(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


BUY_BTC = ("--symbol", "BTCUSDT", "--side", "buy", "--stop-loss", "95000")


def send(config: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """`bot signal send` with the test's configuration."""
    return bot("signal", "send", "--config", str(config), *options, cwd=config.parent)


def healthy(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


@pytest.fixture
def running(sim_config: Callable[..., Path]) -> Iterator[tuple[Path, int, subprocess.Popen[str]]]:
    port = free_port()
    config = sim_config(port=port)
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "run", "--config", str(config)],
        cwd=config.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: healthy(port) or process.poll() is not None, 30, "the bot to listen")
        assert process.poll() is None, process.communicate()[0]
        yield config, port, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_send_then_orders_shows_the_filled_order_and_sigterm_exits_cleanly(
    running: tuple[Path, int, subprocess.Popen[str]],
) -> None:
    config, _, process = running

    sent = send(config, *BUY_BTC, "--id", "cli-1")

    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("202 ")

    def filled() -> dict[str, object] | None:
        listed = bot("orders", "--json", "--config", str(config), cwd=config.parent)
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        return next(
            (r for r in rows if r["signal_id"] == "cli-1" and r["status"] == "Filled"), None
        )

    row = wait_for(filled, what="the order to be journaled as Filled")
    assert {"signal_id", "strategy", "decision", "reason", "order_link_id", "status"} <= row.keys()
    assert (row["strategy"], row["decision"]) == ("follow", "approved")
    assert str(row["order_link_id"]).startswith("follow-0-")
    table = bot("orders", "--config", str(config), cwd=config.parent)
    assert "cli-1" in table.stdout

    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "bot stopped" in output


def test_duplicate_send_answers_200(running: tuple[Path, int, subprocess.Popen[str]]) -> None:
    config, _, _ = running
    args = ("--symbol", "ETHUSDT", "--side", "sell", "--stop-loss", "3600", "--id", "dup-1")

    first, second = send(config, *args), send(config, *args)

    assert first.stdout.startswith("202 ")
    assert second.stdout.startswith("200 ")


def test_send_without_a_running_bot_says_so(sim_config: Callable[..., Path]) -> None:
    config = sim_config(port=free_port())

    sent = send(config, *BUY_BTC)

    assert sent.returncode == 2
    assert "Is `bot run` running?" in sent.stderr


def test_orders_before_any_run_explains(sim_config: Callable[..., Path]) -> None:
    config = sim_config()

    listed = bot("orders", "--config", str(config), cwd=config.parent)

    assert listed.returncode == 2
    assert "has the bot run" in listed.stderr


def test_unknown_config_key_stops_run_with_its_name(sim_config: Callable[..., Path]) -> None:
    config = sim_config(extra="\n[venue]\nrecv_windw_ms = 5000\n")

    result = bot("run", "--config", str(config), cwd=config.parent)

    assert result.returncode == 2
    assert "unknown key 'venue.recv_windw_ms'" in result.stderr
    assert str(config) in result.stderr


def test_missing_secret_outside_sim_names_variable_and_file(
    sim_config: Callable[..., Path], tmp_path: Path
) -> None:
    text = sim_config().read_text().replace('"sim"', '"testnet"')
    config = tmp_path / "testnet.toml"
    config.write_text(text)

    result = bot(
        "run", "--config", str(config), "--secrets-dir", str(tmp_path / "secrets"), cwd=tmp_path
    )

    assert result.returncode == 2
    assert "BOT_KEY_FOLLOW_SIM_API_KEY" in result.stderr
    assert str(tmp_path / "secrets" / "bot_key_follow_sim_api_key") in result.stderr


def test_standalone_simulator_keeps_state_across_a_killed_bot(
    sim_config: Callable[..., Path],
) -> None:
    sim_port, http_port = free_port(), free_port()
    config = sim_config(port=http_port)
    cwd = config.parent
    sim = subprocess.Popen(
        [sys.executable, "-m", "bot", "sim", "--port", str(sim_port), "--config", str(config)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    env = {**os.environ, "BOT_VENUE__SIM_URL": f"http://127.0.0.1:{sim_port}"}
    processes = [sim]

    def start_bot() -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "bot", "run", "--config", str(config)],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        processes.append(process)
        wait_for(lambda: healthy(http_port), 30, "the bot to listen")
        return process

    def sim_orders() -> list[dict[str, object]]:
        return requests.get(f"http://127.0.0.1:{sim_port}/sim/orders", timeout=5).json()["orders"]

    survivor = (*BUY_BTC, "--id", "survivor")
    try:
        wait_for(lambda: sim.poll() is not None or _listening(sim_port), 30, "the simulator")
        first = start_bot()
        assert send(config, *survivor).stdout.startswith("202 ")
        wait_for(sim_orders, what="the order at the simulator")
        first.kill()  # kill -9: nothing acknowledged may be lost
        first.wait(10)

        second = start_bot()
        resent = send(config, *survivor)
        second.send_signal(signal.SIGTERM)
        second.wait(30)

        assert resent.stdout.startswith("200 ")  # the journal survived kill -9
        assert len(sim_orders()) == 1
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)


def _listening(port: int) -> bool:
    try:
        requests.get(f"http://127.0.0.1:{port}/sim/stats", timeout=1)
    except requests.ConnectionError:
        return False
    return True
