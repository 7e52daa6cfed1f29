"""Rotating a key while signals flow: new secrets are audited before use, a refused key
never signs a request, and no signal is lost or fails on the way."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import requests
from pydantic import SecretStr

from bot.sim import SimAccountSpec, SimExchange, SimServer, SimulatorConfig
from tests.bot.test_cli import send
from tests.bot.test_service import RunningBot
from tests.bot.test_service import signal as signal_body
from tests.conftest import (
    StartBot,
    client_orders,
    free_port,
    standalone_simulator,
    wait_for,
    write_key_secrets,
)

BOUND = ["127.0.0.1"]
TRADING = {"ContractTrade": ["Order", "Position"]}


def keys_of_one_account() -> SimExchange:
    """One account holding the key in service, a key with a Wallet right, and a good key."""
    exchange = SimExchange(SimulatorConfig(seed=5))
    exchange.add_account(
        SimAccountSpec(
            api_key="rot-old", api_secret=SecretStr("old-secret-1"), ips=BOUND, note="old"
        )
    )
    for note, permissions in (("bad", {**TRADING, "Wallet": ["Withdraw"]}), ("new", TRADING)):
        exchange.add_account(
            SimAccountSpec(
                api_key=f"rot-{note}",
                api_secret=SecretStr(f"{note}-secret-1"),
                ips=BOUND,
                permissions=permissions,
                note=note,
                account_of="rot-old",
            )
        )
    return exchange


def signed(exchange: SimExchange, note: str) -> dict[str, int]:
    table: dict[str, dict[str, int]] = exchange.stats()["signed_requests_by_key_note"]
    return table.get(note, {})


def test_a_rotated_key_is_audited_first_and_no_signal_fails(
    sim_config: Callable[..., Path], tmp_path: Path
) -> None:
    exchange = keys_of_one_account()
    with SimServer(exchange) as server:
        write_key_secrets(tmp_path, "rot-old", "old-secret-1")
        bot = RunningBot(sim_config(extra=f'\n[venue]\nsim_url = "{server.url}"\n')).start()
        sent: list[str] = []
        stop = threading.Event()

        def flow() -> None:  # a signal every 50 ms until told to stop
            while not stop.is_set():
                signal_id = f"flow-{len(sent)}"
                assert bot.post(signal_body(signal_id)).status_code == 202
                sent.append(signal_id)
                stop.wait(0.05)

        sender = threading.Thread(target=flow)
        sender.start()
        try:
            wait_for(lambda: len(sent) >= 3, what="signals flowing")
            write_key_secrets(tmp_path, "rot-bad", "bad-secret-1")
            wait_for(lambda: signed(exchange, "bad"), what="the bad key audited")
            count = len(sent)
            wait_for(lambda: len(sent) >= count + 3, what="signals after the refusal")
            write_key_secrets(tmp_path, "rot-new", "new-secret-1")
            wait_for(
                lambda: "/v5/order/create" in signed(exchange, "new"), what="orders on the new key"
            )
            count = len(sent)
            wait_for(lambda: len(sent) >= count + 3, what="signals after the rotation")
        finally:
            stop.set()
            sender.join(10)
        try:
            wait_for(
                lambda: all(bot.journal_status(s) == ["Filled"] for s in sent),
                timeout_s=30,
                what="every signal filled",
            )
        finally:
            bot.stop()

    assert set(signed(exchange, "bad")) == {"/v5/user/query-api"}  # audited, never used
    assert "/v5/order/create" in signed(exchange, "old")
    assert len(client_orders(exchange.orders())) == len(
        sent
    )  # one order per signal, none lost or doubled


def test_sighup_audits_again_new_secrets_refused_before(
    sim_config: Callable[..., Path], start_bot: StartBot, tmp_path: Path
) -> None:
    """The new key's files were written before the key existed on the venue (or with a
    permission to fix): refused, the old key stays. Once the operator has fixed that on the
    venue, SIGHUP must audit the same secrets again and put them in service."""
    port = free_port()
    config = sim_config(port=port)
    write_key_secrets(tmp_path, "rot-old", "old-secret-1")
    secrets_dir = str(tmp_path / "no-secrets")
    simulator = standalone_simulator(config, "--secrets-dir", secrets_dir, cwd=tmp_path)
    with simulator as url:
        env = {"BOT_VENUE__SIM_URL": url, "BOT_SECRETS_DIR": secrets_dir}
        bot = start_bot(config, port, env=env)
        audits = _key_audits(tmp_path)
        write_key_secrets(tmp_path, "rot-late", "late-secret-1")  # not on the venue yet
        bot.send_signal(signal.SIGHUP)
        wait_for(lambda: _key_audits(tmp_path) > audits, what="the new secrets refused")
        late = {"api_key": "rot-late", "api_secret": "late-secret-1", "note": "late"}
        added = requests.post(
            f"{url}/sim/accounts", json={**late, "ips": BOUND, "account_of": "rot-old"}, timeout=5
        )
        assert added.status_code == 201, added.text
        bot.send_signal(signal.SIGHUP)

        def signed_by_late_key() -> dict[str, int]:
            table = requests.get(f"{url}/sim/stats", timeout=5).json()
            return dict(table["signed_requests_by_key_note"].get("late", {}))

        wait_for(signed_by_late_key, what="the same secrets audited again after SIGHUP")
        sent = send(config, "--symbol", "BTCUSDT", "--side", "buy", "--stop-loss", "95000")
        assert sent.stdout.startswith("202 "), sent.stdout + sent.stderr
        wait_for(
            lambda: "/v5/order/create" in signed_by_late_key(),
            what="the order signed with the new key",
        )


def _key_audits(folder: Path) -> int:
    """The key audits (`/v5/user/query-api`) in the bot's audit log so far."""
    log = folder / "var" / "audit" / "audit.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    return sum(json.loads(line)["endpoint"] == "/v5/user/query-api" for line in lines)
