"""The in-process simulator resumes from the journal (bot/service.py `start_simulator` with a
journal): crafted journals, as a crash at an awkward moment leaves them, and what the resumed
exchange then holds. The whole bot across restarts: tests/bot/test_admin.py and
test_order_flow.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bot.config import BotSettings, load_settings, secret_resolver
from bot.execution.executor import build_request
from bot.journal import Journal
from bot.messages import Execution, ExitOrder, OrderEvent, OrderStatus, OrderType, Side
from bot.sim import SimServer
from bot.sim.params import PositionQueryParams, parse_params
from bot.simulated import start_simulator
from tests.conftest import client_orders
from tests.factories import approve, make_intent, sim_position, stop_loss

NOW = datetime.now(UTC)


@pytest.fixture
def settings(sim_config: Callable[..., Path]) -> BotSettings:
    return load_settings(sim_config())


@pytest.fixture
def journal(settings: BotSettings) -> Iterator[Journal]:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    opened = Journal(settings.journal_path)
    yield opened
    opened.close()


@pytest.fixture
def resume(
    settings: BotSettings, journal: Journal, tmp_path: Path
) -> Iterator[Callable[[], SimServer]]:
    servers: list[SimServer] = []

    def start() -> SimServer:
        resolver = secret_resolver(settings, tmp_path / "no-secrets")
        servers.append(start_simulator(settings, resolver, journal))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def _stop(order_id: str, side: Side, trigger: int, at: datetime = NOW) -> ExitOrder:
    return stop_loss(order_id=order_id, side=side, trigger_price=Decimal(trigger), ts=at)


def _position(server: SimServer, settings: BotSettings) -> dict[str, Any]:
    """The sim key's BTCUSDT position row, as /v5/position/list answers it."""
    api_key = (settings.state_dir / "secrets" / "bot_key_follow_sim_api_key").read_text().strip()
    params = parse_params(PositionQueryParams, {"category": "linear", "symbol": "BTCUSDT"})
    row: dict[str, Any] = server.exchange.positions(api_key, params)["list"][0]
    return row


def test_a_resumed_stop_waits_at_the_simulator_under_its_journaled_id(
    journal: Journal, resume: Callable[[], SimServer], settings: BotSettings
) -> None:
    """A crash right after a restart must not lose the stop (V1 of the probe), and a restart
    must not replace it: the simulator holds it under the id the journal knows, so the bot
    sees no stop gone and no new one (each restart once added a cancelled stop to `bot
    orders`)."""
    journal.record_exit(_stop("stop-of-the-long", Side.SELL, 90000))
    journal.record_position(sim_position(Decimal("0.01"), ts=NOW))

    server = resume()

    assert _position(server, settings)["stopLoss"] == "90000"
    (stop,) = [o for o in server.exchange.orders() if o["stopOrderType"] == "StopLoss"]
    assert (stop["orderId"], stop["orderStatus"], stop["triggerPrice"]) == (
        "stop-of-the-long",
        "Untriggered",
        "90000",
    )
    assert [e.order_id for e in journal.waiting_exits()] == ["stop-of-the-long"]


def test_a_stop_the_price_passed_before_the_crash_triggers_on_resume(
    journal: Journal, resume: Callable[[], SimServer], settings: BotSettings
) -> None:
    """The last report's mark is past the stop: the exchange that held it would have closed
    the position (V3 of the probe); the resumed one does, instead of dropping the stop."""
    journal.record_exit(_stop("passed", Side.BUY, 95000))  # a short's stop, above
    journal.record_position(sim_position(Decimal("-0.01"), mark_price=Decimal(95500), ts=NOW))

    server = resume()
    server.exchange.advance(50)  # the engine: the triggered market order fills

    assert _position(server, settings)["size"] == "0"
    (stop,) = [o for o in server.exchange.orders() if o["stopOrderType"] == "StopLoss"]
    assert (stop["orderStatus"], stop["triggerPrice"]) == ("Filled", "95000")


def test_a_resting_limit_is_not_filled_by_a_stale_resumed_price(
    journal: Journal, resume: Callable[[], SimServer]
) -> None:
    """The journal's last mark (180, from a position closed long ago) is below a buy limit
    at 189 that the old exchange had resting: the price resumes above it (V2 of the probe)."""
    journal.record_position(sim_position(Decimal(0), symbol="SOLUSDT", price=Decimal(180), ts=NOW))
    _resting_buy(journal, "SOLUSDT", Decimal(189))

    server = resume()
    server.exchange.advance(50)

    (order,) = client_orders(server.exchange.orders())
    assert order["orderStatus"] == "New"
    assert server.exchange.prices()["SOLUSDT"] > Decimal(189)


def test_a_limit_another_client_amended_resumes_as_the_venue_last_held_it(
    journal: Journal, resume: Callable[[], SimServer]
) -> None:
    """Another client moved the resting buy from 189 to 185 and made it 3 SOL: the resumed
    exchange holds it so, not as the bot first asked for it."""
    journal.record_position(sim_position(Decimal(0), symbol="SOLUSDT", price=Decimal(190), ts=NOW))
    link = _resting_buy(journal, "SOLUSDT", Decimal(189))
    amended = OrderEvent(
        order_link_id=link,
        status=OrderStatus.NEW,
        order_id="rest-1",
        order_type=OrderType.LIMIT,
        venue_qty=Decimal(3),
        venue_price=Decimal(185),
    )
    assert journal.record_order_event(amended)

    server = resume()

    (order,) = client_orders(server.exchange.orders())
    assert (order["orderLinkId"], order["price"], order["qty"]) == (link, "185", "3")


def test_a_fill_journaled_without_a_position_report_is_in_the_resumed_position(
    journal: Journal, resume: Callable[[], SimServer], settings: BotSettings
) -> None:
    """A fill fetched by REST while the stream was down comes with no position report: the
    resumed position counts it (V4 of the probe)."""
    journal.record_position(sim_position(Decimal("-0.14"), ts=NOW))
    journal.record_execution(
        _fill("later", Side.SELL, Decimal("0.14"), NOW + timedelta(seconds=2)), {}
    )

    server = resume()

    assert _position(server, settings)["size"] == "0.28"
    assert _position(server, settings)["side"] == "Sell"


def test_a_flat_symbols_leverage_is_resumed_for_the_orders_that_rest_on_it(
    journal: Journal, resume: Callable[[], SimServer], settings: BotSettings
) -> None:
    journal.record_position(sim_position(Decimal(0), leverage=Decimal(3), ts=NOW))

    server = resume()

    assert _position(server, settings)["leverage"] == "3"


def _fill(exec_id: str, side: Side, qty: Decimal, at: datetime) -> Execution:
    return Execution(
        exec_id=exec_id,
        key_name="follow_sim",
        order_id=f"order-{exec_id}",
        order_link_id="",
        symbol="BTCUSDT",
        side=side,
        qty=qty,
        price=Decimal(97000),
        fee=Decimal(0),
        ts=at,
    )


def _resting_buy(journal: Journal, symbol: str, price: Decimal) -> str:
    """A buy limit of 1 `symbol` at `price`, acknowledged: its orderLinkId."""
    intent = make_intent(
        signal_id="resting",
        symbol=symbol,
        qty=Decimal("1"),
        order_type=OrderType.LIMIT,
        price=price,
        reference_price=price,
        stop_loss=price * Decimal("0.95"),
    )
    approval = approve(intent)
    request = build_request(approval, "follow_sim")
    journal.record_decisions([approval.decision], [request])
    journal.record_order_event(
        OrderEvent(order_link_id=request.order_link_id, status=OrderStatus.NEW, order_id="rest-1")
    )
    return request.order_link_id
