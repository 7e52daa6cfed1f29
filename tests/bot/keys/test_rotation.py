"""Rotating a key while signals flow: new secrets are audited before use, a refused key
never signs a request, and no signal is lost or fails on the way."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from pydantic import SecretStr

from bot.sim import SimAccountSpec, SimExchange, SimServer, SimulatorConfig
from tests.bot.test_service import RunningBot, signal
from tests.conftest import client_orders, wait_for, write_key_secrets

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
                assert bot.post(signal(signal_id)).status_code == 202
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
