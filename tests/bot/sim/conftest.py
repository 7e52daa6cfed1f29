"""Fixtures the simulator's route tests share. A module that uses them defines `KEY` and
`SECRET` (its account's credentials) and a `start_sim` fixture (its simulators)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from pybit.unified_trading import HTTP

from bot.sim import SimServer
from tests.bot.sim.kit import pybit_sessions


@pytest.fixture
def server(start_sim: Callable[..., SimServer]) -> SimServer:
    """A simulator as the module's `start_sim` makes it by default."""
    return start_sim()


@pytest.fixture
def connect(request: pytest.FixtureRequest) -> Iterator[Callable[..., HTTP]]:
    """pybit sessions signing with the module's KEY and SECRET (see `kit.pybit_sessions`)."""
    with pybit_sessions(request.module.KEY, request.module.SECRET) as make:
        yield make


@pytest.fixture
def session(server: SimServer, connect: Callable[..., HTTP]) -> HTTP:
    return connect(server)
