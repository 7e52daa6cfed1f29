"""The key audit against the simulator through pybit: each permission set, read-only, IP
binding, expiry and account type gets the verdict a careful operator would give it."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from bot.config import Environment
from bot.keys.audit import KeyAudit, Verdict, audit_key
from bot.secrets import ApiCredentials
from bot.sim import SimAccountSpec, SimExchange, SimServer, SimulatorConfig
from bot.venue.bybit import BybitVenue
from bot.venue.errors import KeyFatalError
from bot.venue.shapes import KeyInfo
from tests.conftest import free_port

SECRET = "audit-test-secret-value"
_keys = itertools.count()


@pytest.fixture(scope="module")
def sim() -> Iterator[tuple[SimExchange, str]]:
    exchange = SimExchange(SimulatorConfig(seed=3))
    with SimServer(exchange) as server:
        yield exchange, server.url


def audit(
    sim: tuple[SimExchange, str], strategies: tuple[str, ...] = ("follow",), **profile: Any
) -> KeyAudit:
    """Open a sim key with `profile` and audit it as the bot would."""
    exchange, url = sim
    api_key = f"audit-key-{next(_keys)}"
    if profile.pop("unknown", False) is False:
        exchange.add_account(
            SimAccountSpec(api_key=api_key, api_secret=SecretStr(SECRET), **profile)
        )
    return run_audit(url, api_key, strategies)


def run_audit(url: str, api_key: str, strategies: tuple[str, ...]) -> KeyAudit:
    credentials = ApiCredentials("k", SecretStr(api_key), SecretStr(SECRET))
    venue = BybitVenue(credentials, Environment.SIM, sim_url=url, timeout_s=2)
    try:
        return asyncio.run(audit_key("k", Environment.SIM, strategies, venue))
    finally:
        venue.close()


BOUND = {"ips": ["127.0.0.1"]}


def test_a_trading_key_bound_to_this_ip_is_ok(sim: tuple[SimExchange, str]) -> None:
    result = audit(sim, **BOUND)

    assert (result.verdict, result.reason) == (Verdict.OK, "")
    assert result.row()["permissions"] == "ContractTrade:Order,Position"
    assert result.row()["expiry"] == "never"


def test_a_key_without_ip_binding_is_warned_about(sim: tuple[SimExchange, str]) -> None:
    result = audit(sim)  # ips ["*"]

    assert result.verdict is Verdict.WARN
    assert "not bound to an IP address" in result.reason
    assert result.row()["ip_binding"] == "none"


def test_a_read_only_key_cannot_serve_a_trading_strategy(sim: tuple[SimExchange, str]) -> None:
    result = audit(sim, read_only=True, **BOUND)
    shared = audit(sim, strategies=("follow", "ladder"), read_only=True, **BOUND)
    unused = audit(sim, strategies=(), read_only=True, **BOUND)

    assert result.verdict is Verdict.REFUSED
    assert "read-only, but strategy follow trades with it" in result.reason
    assert "read-only, but strategies follow, ladder trade with it" in shared.reason
    assert unused.verdict is Verdict.OK  # no strategy trades with it


@pytest.mark.parametrize("right", ["AccountTransfer", "SubMemberTransfer", "Withdraw"])
def test_any_wallet_permission_is_refused(sim: tuple[SimExchange, str], right: str) -> None:
    permissions = {"ContractTrade": ["Order", "Position"], "Wallet": [right]}

    result = audit(sim, permissions=permissions, **BOUND)

    assert result.verdict is Verdict.REFUSED
    assert f"Wallet permissions ({right}) let the key move money" in result.reason


def test_permissions_beyond_trading_are_refused(sim: tuple[SimExchange, str]) -> None:
    permissions = {
        "ContractTrade": ["Order", "Position"],
        "Spot": ["SpotTrade"],
        "Exchange": ["ExchangeHistory"],
    }

    result = audit(sim, permissions=permissions, **BOUND)

    assert result.verdict is Verdict.REFUSED
    assert "beyond what its strategies trade (Spot:SpotTrade Exchange:ExchangeHistory)" in (
        result.reason
    )


def test_a_key_that_cannot_set_leverage_is_refused(sim: tuple[SimExchange, str]) -> None:
    result = audit(sim, permissions={"ContractTrade": ["Order"]}, **BOUND)

    assert result.verdict is Verdict.REFUSED
    assert "ContractTrade Position missing" in result.reason


def test_a_classic_account_is_refused(sim: tuple[SimExchange, str]) -> None:
    result = audit(sim, uta=0, **BOUND)

    assert result.verdict is Verdict.REFUSED
    assert "not a unified trading account" in result.reason


def test_expiry_is_shown_warned_about_then_refused(sim: tuple[SimExchange, str]) -> None:
    now = datetime.now(UTC)

    later = audit(sim, expired_at=now + timedelta(days=60, hours=1))
    soon = audit(sim, expired_at=now + timedelta(days=5, hours=1))
    gone = audit(sim, expired_at=now - timedelta(days=1))

    assert later.days_left == 60
    assert "(60 days)" in later.row()["expiry"]
    assert soon.verdict is Verdict.WARN
    assert "in 5 days: rotate it before then" in soon.reason
    assert gone.verdict is Verdict.REFUSED  # the venue refuses an expired key outright
    assert "refused the key: Your api key has expired. Is it" in gone.reason  # one full stop


def test_a_key_the_venue_does_not_know_is_refused_as_of_another_environment(
    sim: tuple[SimExchange, str],
) -> None:
    result = audit(sim, unknown=True)

    assert result.verdict is Verdict.REFUSED
    assert "Is it a key of another environment, mistyped, expired or deleted?" in result.reason
    # A sim key is made by the configuration, not on a website: a standalone `bot sim` knows
    # those of the secrets it started with, so the remedy is to share them, not to create one.
    assert "same configuration, state_dir and secrets directory" in result.reason
    assert "Create a sim key" not in result.reason


def test_a_refused_key_of_a_real_venue_is_to_be_created_again() -> None:
    class Refusing:
        endpoint = "https://api-testnet.bybit.com"

        async def api_key_info(self) -> KeyInfo:
            raise KeyFatalError("API key is invalid.", ret_code=10003)

    result = asyncio.run(audit_key("k", Environment.TESTNET, ("follow",), Refusing()))

    assert result.verdict is Verdict.REFUSED
    assert result.reason.endswith("deleted? Create a testnet key and write its secrets again")


def test_a_venue_that_does_not_answer_makes_the_key_unreachable_not_refused() -> None:
    result = run_audit(f"http://127.0.0.1:{free_port()}", "nobody-listens", ("follow",))

    assert result.verdict is Verdict.UNREACHABLE
    assert not result.verdict.usable
