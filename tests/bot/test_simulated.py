"""The in-process simulator's accounts for the configured sim keys (bot/simulated.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bot.config import load_settings, secret_resolver
from bot.simulated import sim_accounts


def ips_of(config: Path) -> dict[str, list[str]]:
    settings = load_settings(config)
    accounts = sim_accounts(settings, secret_resolver(settings, config.parent / "secrets"))
    return {account.note: list(account.ips) for account in accounts}


def test_a_key_is_bound_to_loopback_unless_its_profile_names_its_ips(
    sim_config: Callable[..., Path],
) -> None:
    config = sim_config(
        extra="""
[keys.expiring]
environment = "sim"

[keys.unbound]
environment = "sim"

[sim.key_profiles.expiring]
expired_at = "2099-01-01T00:00:00Z"

[sim.key_profiles.unbound]
ips = ["*"]
"""
    )

    assert ips_of(config) == {
        "follow_sim": ["127.0.0.1"],  # no profile
        "expiring": ["127.0.0.1"],  # a profile of its expiry only: still bound
        "unbound": ["*"],  # the profile says so
    }
