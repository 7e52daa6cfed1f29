"""A Bybit-V5-compatible exchange simulator, served over loopback HTTP for pybit to talk to.

Typical use (tests, `sim` mode):

    exchange = SimExchange(SimulatorConfig())
    exchange.add_account(SimAccountSpec(api_key="k", api_secret=SecretStr("s")))
    with SimServer(exchange) as server:
        session = pybit.unified_trading.HTTP(api_key="k", api_secret="s")
        session.endpoint = server.url

Orders are acknowledged first and trade a few ms later on the exchange's engine thread, which
`SimServer` runs; without a server, drive it with `exchange.advance(ms)` / `run_due()`.
"""

from bot.sim.app import create_app
from bot.sim.config import (
    DEFAULT_RATE_LIMITS_PER_S,
    InstrumentSpec,
    PriceWalk,
    SimAccountSpec,
    SimFaults,
    SimKeyProfile,
    SimulatorConfig,
    parse_faults,
)
from bot.sim.errors import DuplicateAccountError, RetCode, SimError
from bot.sim.exchange import SimExchange
from bot.sim.records import ResumedOrder, ResumedPosition
from bot.sim.server import DEFAULT_SIM_PORT, SimServer, run_forever

__all__ = [
    "DEFAULT_RATE_LIMITS_PER_S",
    "DEFAULT_SIM_PORT",
    "DuplicateAccountError",
    "InstrumentSpec",
    "PriceWalk",
    "ResumedOrder",
    "ResumedPosition",
    "RetCode",
    "SimAccountSpec",
    "SimError",
    "SimExchange",
    "SimFaults",
    "SimKeyProfile",
    "SimServer",
    "SimulatorConfig",
    "create_app",
    "parse_faults",
    "run_forever",
]
