"""The deployment's tests: docker/, compose, the testnet and mainnet configurations."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # `-m "not slow"` leaves out the image's install reproduction (a fresh venv, about a
    # minute); `make test` runs it.
    config.addinivalue_line("markers", "slow: installs packages into a fresh virtual environment")
