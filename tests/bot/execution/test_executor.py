"""The executor against the real simulator through real pybit: one order per intent, ever."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loguru import logger
from pydantic import SecretStr

from bot.config import Environment
from bot.execution.config import ExecutionConfig
from bot.execution.executor import Executor, build_request
from bot.journal import Journal
from bot.messages import (
    OrderEvent,
    OrderIntent,
    OrderRequest,
    OrderStatus,
    OrderType,
    RiskDecision,
    Side,
)
from bot.risk.gate import RiskGate
from bot.secrets import ApiCredentials
from bot.sim import SimAccountSpec, SimExchange, SimFaults, SimServer, SimulatorConfig
from bot.sim.params import AmendOrderParams, PositionQueryParams
from bot.venue.bybit import BybitVenue
from bot.venue.errors import AmbiguousError
from tests.bot.sim.kit import place
from tests.factories import UNLIMITED, approve, make_intent

KEY, SECRET = "executor-test-key", "executor-test-secret-value"
_ids = itertools.count()
FAST = ExecutionConfig(backoff_base_s=0.01, backoff_max_s=0.05, lookup_delays_s=(0.01, 0.05))


@pytest.fixture(scope="module")
def exchange() -> Iterator[tuple[SimExchange, str]]:
    exchange = SimExchange(SimulatorConfig(seed=7))
    exchange.add_account(SimAccountSpec(api_key=KEY, api_secret=SecretStr(SECRET)))
    exchange.add_account(
        SimAccountSpec(api_key="read-only-key", api_secret=SecretStr(SECRET), read_only=True)
    )
    with SimServer(exchange) as server:
        yield exchange, server.url


@pytest.fixture(autouse=True)
def no_faults(exchange: tuple[SimExchange, str]) -> None:
    exchange[0].set_faults(SimFaults())


def make_executor(
    url: str, journal: Journal, api_key: str = KEY, config: ExecutionConfig = FAST
) -> tuple[Executor, BybitVenue]:
    credentials = ApiCredentials("k", SecretStr(api_key), SecretStr(SECRET))
    venue = BybitVenue(credentials, Environment.SIM, sim_url=url, timeout_s=2)
    return Executor(journal, {"k": venue}, config), venue


def intent(qty: str = "0.001", signal_id: str | None = None) -> OrderIntent:
    return make_intent(qty=Decimal(qty), signal_id=signal_id or f"exec-{next(_ids)}")


def orders_for(exchange: SimExchange, item: OrderIntent) -> list[dict[str, object]]:
    link_id = build_request(approve(item), "k").order_link_id
    return [o for o in exchange.orders() if o["orderLinkId"] == link_id]


def squat(exchange: SimExchange, request: OrderRequest) -> None:
    """Another client's order, as `request` says, placed at the exchange itself (outside the
    key's rate limit, which the tests' own orders share)."""
    place(exchange, KEY, **request.to_bybit_params())


def test_market_order_is_placed_filled_and_journaled(
    exchange: tuple[SimExchange, str], tmp_path: Path
) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    executor, venue = make_executor(exchange[1], journal)
    item = intent()

    event = asyncio.run(executor.execute(approve(item), "k"))

    assert event.status is OrderStatus.FILLED
    assert event.avg_price == Decimal(97000)
    record = journal.order(event.order_link_id)
    assert record is not None
    assert record.status is OrderStatus.FILLED
    assert len(orders_for(exchange[0], item)) == 1
    venue.close()


def test_executing_the_same_intent_again_sends_nothing(
    exchange: tuple[SimExchange, str], tmp_path: Path
) -> None:
    executor, venue = make_executor(exchange[1], Journal(tmp_path / "j.sqlite3"))
    item = intent()
    asyncio.run(executor.execute(approve(item), "k"))
    before = exchange[0].stats()["requests_by_path"].get("/v5/order/create", 0)

    again = asyncio.run(executor.execute(approve(item), "k"))

    assert again.status is OrderStatus.FILLED
    assert exchange[0].stats()["requests_by_path"]["/v5/order/create"] == before
    assert len(orders_for(exchange[0], item)) == 1
    venue.close()


def test_a_lost_journal_cannot_cause_a_second_order(
    exchange: tuple[SimExchange, str], tmp_path: Path
) -> None:
    item = intent()
    first, venue1 = make_executor(exchange[1], Journal(tmp_path / "old.sqlite3"))
    asyncio.run(first.execute(approve(item), "k"))
    fresh, venue2 = make_executor(exchange[1], Journal(tmp_path / "new.sqlite3"))

    event = asyncio.run(fresh.execute(approve(item), "k"))

    assert event.status is OrderStatus.FILLED  # 110072, then looked up: it is ours
    assert len(orders_for(exchange[0], item)) == 1
    venue1.close()
    venue2.close()


def test_another_clients_order_under_our_order_link_id_is_not_taken_for_ours(
    exchange: tuple[SimExchange, str], tmp_path: Path
) -> None:
    # Another program on the key (a second bot with the same strategy names, or one that
    # copies the id scheme) places a sell under the orderLinkId our buy will use.
    item = intent()
    ours = build_request(approve(item), "k")
    executor, venue = make_executor(exchange[1], Journal(tmp_path / "j.sqlite3"))
    squatter = ours.model_copy(
        update={"side": Side.SELL, "order_type": OrderType.LIMIT, "price": Decimal(120000)}
    )
    asyncio.run(venue.place_order(squatter))

    event = asyncio.run(executor.execute(approve(item), "k"))

    assert event.status is OrderStatus.REJECTED
    assert "another client's order" in event.reason and "side Sell, not Buy" in event.reason
    (only,) = orders_for(exchange[0], item)  # theirs; ours was never placed, nor adopted
    assert only["side"] == "Sell"
    venue.close()


@pytest.mark.parametrize(
    ("theirs", "named"),
    [
        ({"qty": Decimal("0.002")}, "qty 0.002, not 0.001"),
        ({"stop_loss": Decimal(90000)}, "stopLoss 90000, not 0"),
        ({"take_profit": Decimal(99000)}, "takeProfit 99000, not 0"),
    ],
)
def test_another_clients_order_of_our_symbol_side_and_type_but_other_terms_is_not_ours(
    exchange: tuple[SimExchange, str], tmp_path: Path, theirs: dict[str, object], named: str
) -> None:
    # The orderLinkId scheme is public: another program can place its own buy under the id
    # our buy will use before we send it. Only the terms tell it from ours.
    item = intent()
    ours = build_request(approve(item), "k")
    executor, venue = make_executor(exchange[1], Journal(tmp_path / "j.sqlite3"))
    squat(exchange[0], ours.model_copy(update=theirs))

    event = asyncio.run(executor.execute(approve(item), "k"))

    assert event.status is OrderStatus.REJECTED
    assert "another client's order" in event.reason and named in event.reason
    (only,) = orders_for(exchange[0], item)  # theirs; ours was never placed, nor adopted
    assert only["qty"] == str(theirs.get("qty", "0.001"))
    venue.close()


def test_another_clients_order_under_our_order_link_id_in_another_symbol_is_found(
    exchange: tuple[SimExchange, str], tmp_path: Path
) -> None:
    item = intent()
    ours = build_request(approve(item), "k")
    executor, venue = make_executor(exchange[1], Journal(tmp_path / "j.sqlite3"))
    squat(exchange[0], ours.model_copy(update={"symbol": "ETHUSDT", "qty": Decimal("0.01")}))

    event = asyncio.run(executor.execute(approve(item), "k"))

    assert event.status is OrderStatus.REJECTED  # at once, not after its attempts are spent
    assert "symbol ETHUSDT, not BTCUSDT" in event.reason
    assert [o["symbol"] for o in orders_for(exchange[0], item)] == ["ETHUSDT"]
    venue.close()


def test_our_order_amended_by_another_client_before_we_knew_its_id_stays_ours(
    exchange: tuple[SimExchange, str], tmp_path: Path
) -> None:
    # Our resting buy reached the venue, but its answer was lost (a crash, a cut connection):
    # the journal holds it Submitting, with no orderId. Another client amends it meanwhile.
    ours, journal, order_id = _ours_amended(exchange[0], tmp_path)
    executor, venue = make_executor(exchange[1], journal)
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(m.record["message"]), level="WARNING")
    try:
        asyncio.run(executor.reconcile("k", limit=None, resend=True))
    finally:
        logger.remove(sink)

    record = journal.order(ours.order_link_id)
    assert record is not None
    assert (record.status, record.order_id, record.venue_qty) == (
        OrderStatus.NEW,
        order_id,
        Decimal("0.003"),
    )
    at_venue = [o for o in exchange[0].orders() if o["orderLinkId"] == ours.order_link_id]
    assert [o["orderStatus"] for o in at_venue] == ["New"]  # one, ours
    assert any("qty 0.003, not 0.002" in line and "taken as ours" in line for line in warnings)
    venue.close()


def test_another_clients_order_made_before_our_first_send_is_not_taken_as_ours(
    exchange: tuple[SimExchange, str], tmp_path: Path
) -> None:
    # A second program with our strategy names (or a second copy of this bot) places its
    # own order under the id our signal will use; then our bot journals its first send and
    # is killed before the answer (110072: the id was taken). On the restart the look-up
    # finds the other order, other terms, made seconds before our first send left: it
    # cannot be ours, and must not be taken as ours, amended (booking its fills to the
    # strategy, with the signal's own order and stop loss never placed).
    item = intent()
    ours = build_request(approve(item), "k")
    squat(exchange[0], ours.model_copy(update={"qty": Decimal("0.002")}))
    journal = Journal(tmp_path / "j.sqlite3")
    journal.record_order(ours)
    journal.record_order_event(
        OrderEvent(
            order_link_id=ours.order_link_id,
            status=OrderStatus.SUBMITTING,
            ts=datetime.now(UTC) + timedelta(seconds=5),
            signing_offset_ms=0,
        )
    )

    status, held, reason = _reconciled(exchange[1], journal, ours)

    assert status is OrderStatus.REJECTED
    assert "another client's order" in reason and "qty 0.002, not 0.001" in reason
    assert "made at the venue before our first send" in reason
    assert held is None
    (only,) = orders_for(exchange[0], item)  # theirs; ours was never placed, nor adopted
    assert only["qty"] == "0.002"


def test_an_exact_copy_of_our_order_under_our_order_link_id_is_taken_as_ours(
    exchange: tuple[SimExchange, str], tmp_path: Path
) -> None:
    # As after a lost journal: what the venue holds is in every way the order we would send.
    item = intent()
    executor, venue = make_executor(exchange[1], Journal(tmp_path / "j.sqlite3"))
    squat(exchange[0], build_request(approve(item), "k"))

    event = asyncio.run(executor.execute(approve(item), "k"))

    assert event.status is OrderStatus.FILLED
    assert len(orders_for(exchange[0], item)) == 1
    venue.close()


def test_a_dropped_answer_is_looked_up_and_found(
    exchange: tuple[SimExchange, str], tmp_path: Path
) -> None:
    executor, venue = make_executor(exchange[1], Journal(tmp_path / "j.sqlite3"))
    item = intent()
    exchange[0].set_faults(SimFaults(drop_response_after_accept=1.0))

    event = asyncio.run(executor.execute(approve(item), "k"))

    assert event.status is OrderStatus.FILLED
    assert len(orders_for(exchange[0], item)) == 1
    venue.close()


def test_when_the_lookup_fails_too_the_order_is_unknown_and_a_replay_settles_it(
    exchange: tuple[SimExchange, str], tmp_path: Path
) -> None:
    executor, venue = make_executor(exchange[1], Journal(tmp_path / "j.sqlite3"))
    item = intent()
    # An earlier order: the symbol's leverage is known, so the next send is the create.
    assert asyncio.run(executor.execute(approve(intent()), "k")).status is OrderStatus.FILLED
    exchange[0].set_faults(SimFaults(timeout_10016=1.0))  # every call, lookups included

    lost = asyncio.run(executor.execute(approve(item), "k"))
    exchange[0].set_faults(SimFaults())
    replayed = asyncio.run(executor.execute(approve(item), "k"))

    assert lost.status is OrderStatus.UNKNOWN
    assert replayed.status is OrderStatus.FILLED
    assert len(orders_for(exchange[0], item)) == 1
    venue.close()


def test_a_sent_order_its_journal_left_pending_is_taken_as_the_venue_shows_it(
    exchange: tuple[SimExchange, str], tmp_path: Path
) -> None:
    """Its Submitting unwritten (a full disk) while it traveled, a sent order stayed Pending
    at run time until its signal went stale, counted in flight beside its own fill; the
    loop's pass now looks it up (and still never sends one the venue lacks)."""
    journal = Journal(tmp_path / "j.sqlite3")
    executor, venue = make_executor(exchange[1], journal)
    approvals = [approve(intent()) for _ in range(2)]
    sent, unsent = (build_request(approval, "k") for approval in approvals)
    journal.record_decisions([approval.decision for approval in approvals], [sent, unsent])
    squat(exchange[0], sent)  # it reached the venue (and filled); the journal never heard
    for _ in range(500):  # the venue fills a market order a moment after taking it
        shown = [o for o in exchange[0].orders() if o["orderLinkId"] == sent.order_link_id]
        if shown and shown[0]["orderStatus"] == "Filled":
            break
        time.sleep(0.01)

    asyncio.run(executor.reconcile("k"))  # the loop's pass

    assert journal.order(sent.order_link_id).status is OrderStatus.FILLED
    assert journal.order(unsent.order_link_id).status is OrderStatus.PENDING
    assert not [o for o in exchange[0].orders() if o["orderLinkId"] == unsent.order_link_id]
    venue.close()


def test_an_order_the_venue_said_it_holds_is_never_rejected_as_unseen(
    exchange: tuple[SimExchange, str], tmp_path: Path
) -> None:
    # The first answer lost, every resend refused 110072, and the venue slow to show the
    # order (longer than unseen_final_after_s): it holds it, so it is ours, filled, found.
    journal = Journal(tmp_path / "j.sqlite3")
    credentials = ApiCredentials("k", SecretStr(KEY), SecretStr(SECRET))
    venue = BybitVenue(credentials, Environment.SIM, sim_url=exchange[1], timeout_s=2)
    patient = FAST.model_copy(update={"unseen_final_after_s": 0.2})
    executor = Executor(journal, {"k": venue}, patient)
    item = intent()
    exchange[0].set_faults(
        SimFaults(
            drop_response_after_accept=1.0,
            order_visibility_lag=1.0,
            order_visibility_lag_ms=2500,
        )
    )

    async def sent_then_reconciled() -> list[OrderStatus]:
        statuses = [(await executor.execute(approve(item), "k")).status]
        await asyncio.sleep(0.5)  # past unseen_final_after_s, the order still not shown
        await executor.reconcile("k")  # the loop's pass: it looks, never resends
        statuses.append(journal.order(build_request(approve(item), "k").order_link_id).status)
        exchange[0].set_faults(SimFaults())
        await asyncio.sleep(2.5)  # now the venue shows it
        await executor.reconcile("k")
        statuses.append(journal.order(build_request(approve(item), "k").order_link_id).status)
        return statuses

    statuses = asyncio.run(sent_then_reconciled())

    assert statuses[:2] == [OrderStatus.UNKNOWN, OrderStatus.UNKNOWN]  # never Rejected
    assert statuses[2] is OrderStatus.FILLED
    assert len(orders_for(exchange[0], item)) == 1
    venue.close()


@pytest.mark.parametrize(
    ("journaled_ago_s", "held", "sent"),
    [(0, None, True), (600, None, False), (600, "0.002", True), (0, "0", False)],
    ids=["just decided", "long ago", "long ago, its position held", "its position gone"],
)
def test_a_never_sent_reduce_only_order_is_judged_by_its_position_or_else_its_age(
    exchange: tuple[SimExchange, str],
    tmp_path: Path,
    journaled_ago_s: int,
    held: str | None,
    sent: bool,
) -> None:
    # A target decided just now for a signal an hour old (a ladder's limit entry filled late),
    # cut short by a crash before its send: the start-up sends it. With the books to judge by
    # (`held`: the strategy's position there), it is sent while the position is held,
    # however long ago it was decided (the chaos soak's ladders lost their targets to a
    # restart after max_signal_age_s), never once it is gone. Without them, one decided long
    # ago is not sent: its position may be gone.
    journal = Journal(tmp_path / "j.sqlite3")
    credentials = ApiCredentials("k", SecretStr(KEY), SecretStr(SECRET))
    venue = BybitVenue(credentials, Environment.SIM, sim_url=exchange[1], timeout_s=2)
    gate = RiskGate(UNLIMITED.model_copy(update={"max_signal_age_s": 60}))
    executor = Executor(
        journal,
        {"k": venue},
        FAST.model_copy(update={"unseen_final_after_s": 0}),
        staleness=gate.stale_reason,
        closable_size=None if held is None else lambda key, strategy, symbol: Decimal(held),
    )
    asyncio.run(executor.execute(approve(intent(qty="0.002")), "k"))  # the long it takes profit on
    hour_old = datetime.now(UTC) - timedelta(hours=1)
    target = approve(
        make_intent(
            signal_id=f"exec-{next(_ids)}",
            side=Side.SELL,
            order_type=OrderType.LIMIT,
            qty=Decimal("0.002"),
            price=Decimal(120000),
            reference_price=Decimal(120000),
            reduce_only=True,
            signal_ts=hour_old,
        )
    )
    request = build_request(target, "k")
    journal.record_decisions([target.decision], [request])  # Pending: the crash came here
    link = request.order_link_id
    decided_at = datetime.now(UTC) - timedelta(seconds=journaled_ago_s)
    journal._db.execute(  # as the journal holds it, on disk and in memory
        "UPDATE orders SET updated_at = ? WHERE order_link_id = ?", (decided_at.isoformat(), link)
    )
    journal._unfinished[link] = dataclasses.replace(
        journal._unfinished[link], updated_at=decided_at
    )

    notified: list[str] = []
    sink = logger.add(
        lambda m: notified.append(m.record["message"]),
        filter=lambda r: r["extra"].get("notify") == "venue_error",
    )
    try:
        asyncio.run(executor.reconcile("k", resend=True))  # the next start
    finally:
        logger.remove(sink)

    at_venue = [o for o in exchange[0].orders() if o["orderLinkId"] == link]
    assert bool(at_venue) is sent
    # The trader is told to check the position's targets and stop only while it may be open
    # (no books to say): one gone (the soak's seed 303, a ladder's stop fired while the bot
    # was down) has none left to check, and was a venue_error notification all the same.
    assert bool(notified) is (not sent and held is None), notified
    if not sent:
        record = journal.order(link)
        assert record is not None and record.status is OrderStatus.REJECTED
        why = "last tried too long ago" if held is None else "follow no longer holds the position"
        assert f"never sent at the venue, and not to be sent now: {why}" in record.reason
    venue.close()


def resting(executor: Executor, journal: Journal) -> OrderRequest:
    """A limit buy under the market, resting at the venue: its request, as journaled."""
    item = make_intent(
        order_type=OrderType.LIMIT,
        price=Decimal(90000),
        reference_price=Decimal(90000),
        qty=Decimal("0.001"),
        signal_id=f"exec-{next(_ids)}",
    )
    event = asyncio.run(executor.execute(approve(item), "k"))
    assert event.status is OrderStatus.NEW
    record = journal.order(event.order_link_id)
    assert record is not None
    return record.request


def test_an_order_a_venue_lost_is_journaled_cancelled_not_held_open_for_ever(
    exchange: tuple[SimExchange, str], tmp_path: Path
) -> None:
    # Reproduced with `bot sim` started again while the bot ran: the resting order gone
    # with the venue's state, every look-up missed it, and the journal held it New for ever,
    # counted in the exposure and the open orders, past any cancel (110001).
    journal = Journal(tmp_path / "j.sqlite3")
    executor, venue = make_executor(exchange[1], journal)
    request = resting(executor, journal)
    journal.flush()  # its acknowledgement (New) written
    venue.close()
    fresh = SimExchange(SimulatorConfig(seed=8))  # the venue again, without its state
    fresh.add_account(SimAccountSpec(api_key=KEY, api_secret=SecretStr(SECRET)))
    at_once = FAST.model_copy(update={"unseen_final_after_s": 0})
    with SimServer(fresh) as server:
        executor, venue = make_executor(server.url, journal, config=at_once)

        async def two_passes() -> list[OrderStatus]:
            statuses = []
            for _ in range(2):
                await executor.reconcile("k")
                record = journal.order(request.order_link_id)
                assert record is not None
                statuses.append(record.status)
            return statuses

        statuses = asyncio.run(two_passes())
        venue.close()

    assert statuses == [OrderStatus.NEW, OrderStatus.CANCELLED]  # one miss is never enough
    record = journal.order(request.order_link_id)
    assert record is not None and "gone from the venue" in record.reason
    assert journal.unfinished_orders() == []


def test_an_order_the_venue_holds_is_never_journaled_gone(
    exchange: tuple[SimExchange, str], tmp_path: Path
) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    at_once = FAST.model_copy(update={"unseen_final_after_s": 0})
    executor, venue = make_executor(exchange[1], journal, config=at_once)
    request = resting(executor, journal)
    journal.flush()  # its acknowledgement (New) written

    async def three_passes() -> None:
        for _ in range(3):
            await executor.reconcile("k")

    asyncio.run(three_passes())

    record = journal.order(request.order_link_id)
    assert record is not None and record.status is OrderStatus.NEW
    venue.close()


def test_a_cancel_the_venue_carried_out_but_answered_unclearly_is_a_cancel(
    exchange: tuple[SimExchange, str], tmp_path: Path
) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    executor, venue = make_executor(exchange[1], journal)
    request = resting(executor, journal)
    exchange[0].set_faults(SimFaults(accept_then_10016=1.0))  # done, then "Server error."

    event = asyncio.run(executor.cancel(request))

    assert event is not None and event.status is OrderStatus.CANCELLED
    venue.close()


def test_a_cancel_the_venue_never_answers_is_tried_a_bounded_number_of_times_then_raised(
    exchange: tuple[SimExchange, str], tmp_path: Path
) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    executor, venue = make_executor(exchange[1], journal)
    request = resting(executor, journal)
    before = exchange[0].stats()["requests_by_path"].get("/v5/order/cancel", 0)
    exchange[0].set_faults(SimFaults(timeout_10016=1.0))  # nothing carried out, ever

    with pytest.raises(AmbiguousError):
        asyncio.run(executor.cancel(request))

    exchange[0].set_faults(SimFaults())
    assert exchange[0].stats()["requests_by_path"]["/v5/order/cancel"] - before == 3
    link = request.order_link_id
    assert [o["orderStatus"] for o in exchange[0].orders() if o["orderLinkId"] == link] == ["New"]
    venue.close()


def test_venue_rejection_is_journaled_with_bybit_reason(
    exchange: tuple[SimExchange, str], tmp_path: Path
) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    executor, venue = make_executor(exchange[1], journal)

    event = asyncio.run(executor.execute(approve(intent(qty="50")), "k"))  # far beyond the balance

    assert event.status is OrderStatus.REJECTED
    assert event.ret_code == 110007
    record = journal.order(event.order_link_id)
    assert record is not None
    assert record.reason
    venue.close()


def test_a_key_the_venue_refuses_is_switched_off(
    exchange: tuple[SimExchange, str], tmp_path: Path
) -> None:
    executor, venue = make_executor(exchange[1], Journal(tmp_path / "j.sqlite3"), "read-only-key")

    refused = asyncio.run(executor.execute(approve(intent()), "k"))
    sent = exchange[0].stats()["requests_by_path"]["/v5/order/create"]
    next_one = asyncio.run(executor.execute(approve(intent()), "k"))

    assert (refused.status, refused.ret_code) == (OrderStatus.REJECTED, 10005)
    assert next_one.status is OrderStatus.REJECTED
    assert "disabled" in next_one.reason
    assert exchange[0].stats()["requests_by_path"]["/v5/order/create"] == sent
    venue.close()


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    attempts=st.integers(min_value=1, max_value=4),
    drop=st.sampled_from([0.0, 0.5, 1.0]),
    fail=st.sampled_from([0.0, 0.5]),
)
def test_repeated_execution_under_faults_never_creates_a_second_order(
    exchange: tuple[SimExchange, str], tmp_path: Path, attempts: int, drop: float, fail: float
) -> None:
    journal = Journal(tmp_path / f"j-{next(_ids)}.sqlite3")
    executor, venue = make_executor(exchange[1], journal)
    item = intent()
    exchange[0].set_faults(SimFaults(drop_response_after_accept=drop, timeout_10016=fail))

    for _ in range(attempts):
        asyncio.run(executor.execute(approve(item), "k"))

    assert len(orders_for(exchange[0], item)) <= 1
    venue.close()
    journal.close()


def sim_leverage(exchange: SimExchange, symbol: str = "BTCUSDT") -> str:
    rows = exchange.positions(KEY, PositionQueryParams(category="linear", symbol=symbol))["list"]
    return str(rows[0]["leverage"])


def set_leverage_calls(exchange: SimExchange) -> int:
    return int(exchange.stats()["requests_by_path"].get("/v5/position/set-leverage", 0))


def test_the_approved_leverage_is_set_on_the_venue_once_before_the_order(
    exchange: tuple[SimExchange, str], tmp_path: Path
) -> None:
    sim, url = exchange
    executor, _ = make_executor(url, Journal(tmp_path / "j.sqlite3"))
    before = set_leverage_calls(sim)
    at_seven = [intent().model_copy(update={"leverage": Decimal(7)}) for _ in range(2)]

    events = [asyncio.run(executor.execute(approve(item), "k")) for item in at_seven]

    assert [event.status for event in events] == [OrderStatus.FILLED] * 2
    assert sim_leverage(sim) == "7"
    assert set_leverage_calls(sim) == before + 1  # the second order found it set already


def test_the_executor_refuses_an_approval_the_gate_did_not_make(tmp_path: Path) -> None:
    executor = Executor(Journal(tmp_path / "j.sqlite3"), {}, FAST)
    forged = RiskDecision(intent=intent(), approved=True, reason="trust me")

    with pytest.raises(TypeError, match="must come from the risk gate"):
        asyncio.run(executor.execute_all([forged], "k"))


def _ours_amended(
    exchange: SimExchange, tmp_path: Path, *, offset_ms: int | None = 0
) -> tuple[OrderRequest, Journal, str]:
    """A resting buy of ours that reached the venue, its answer lost (journaled Submitting,
    sent with `offset_ms`, or None: its Submitting was lost in a crash); then another client
    amended it."""
    item = make_intent(
        qty=Decimal("0.002"),
        order_type=OrderType.LIMIT,
        price=Decimal(90000),
        reference_price=Decimal(90000),
        signal_id=f"exec-{next(_ids)}",
    )
    ours = build_request(approve(item), "k")
    journal = Journal(tmp_path / "j.sqlite3")
    journal.record_order(ours)
    if offset_ms is not None:
        journal.record_order_event(
            OrderEvent(
                order_link_id=ours.order_link_id,
                status=OrderStatus.SUBMITTING,
                signing_offset_ms=offset_ms,
            )
        )
    order_id = place(exchange, KEY, **ours.to_bybit_params())
    exchange.set_faults(SimFaults())
    exchange.amend_order(
        KEY,
        AmendOrderParams.model_validate(
            {"category": "linear", "symbol": "BTCUSDT", "orderId": order_id, "qty": "0.003"}
        ),
    )
    return ours, journal, order_id


def _reconciled(
    url: str, journal: Journal, request: OrderRequest, offset_ms: int | None = None
) -> tuple[OrderStatus, str | None, str]:
    config = FAST.model_copy(update={"lookup_delays_s": (1.0, 2.0)})
    executor, venue = make_executor(url, journal, config=config)
    if offset_ms is not None:
        venue._clock.offset_ms = offset_ms  # what a resync would set now
    try:
        asyncio.run(executor.reconcile("k", limit=None, resend=True))
    finally:
        venue.close()
    record = journal.order(request.order_link_id)
    assert record is not None
    return record.status, record.order_id, record.reason


def test_our_amended_order_stays_ours_when_the_signing_offset_rose_since_its_send(
    exchange: tuple[SimExchange, str], tmp_path: Path
) -> None:
    # Sent with offset 0; our clock then stepped back 5 s (NTP), or the venue's moved: the
    # offset now is +5 s. By it, our send would seem to come 5 s later than it did.
    ours, journal, order_id = _ours_amended(exchange[0], tmp_path)
    exchange[0].set_faults(SimFaults(clock_skew_ms=5000))

    status, held, reason = _reconciled(exchange[1], journal, ours, offset_ms=5000)

    assert (status, held) == (OrderStatus.NEW, order_id), reason


def test_our_amended_order_stays_ours_in_a_burst_of_clock_skew(
    exchange: tuple[SimExchange, str], tmp_path: Path
) -> None:
    # The look-up meets a +6 s burst (as the soak injects): 10002, the resync sets +6 s,
    # while the order's createdTime is on the exchange's clock, which the burst leaves.
    ours, journal, order_id = _ours_amended(exchange[0], tmp_path)
    exchange[0].set_faults(
        SimFaults(clock_skew_burst=1.0, clock_skew_burst_ms=6000, clock_skew_burst_window_ms=60_000)
    )

    status, held, reason = _reconciled(exchange[1], journal, ours)

    assert (status, held) == (OrderStatus.NEW, order_id), reason


def test_our_amended_order_stays_ours_when_resent_under_a_submitting_of_a_higher_offset(
    exchange: tuple[SimExchange, str], tmp_path: Path
) -> None:
    # Our clock 3 s ahead: the first try (journaled Submitting, offset 0) is refused unread,
    # 10002; the resync sets -3 s and the resend, under that same Submitting, lands.
    exchange[0].set_faults(SimFaults(clock_skew_ms=-3000))
    ours, journal, order_id = _ours_amended(exchange[0], tmp_path)
    exchange[0].set_faults(SimFaults(clock_skew_ms=-3000))

    status, held, reason = _reconciled(exchange[1], journal, ours, offset_ms=-3000)

    assert (status, held) == (OrderStatus.NEW, order_id), reason


def test_our_amended_order_stays_ours_when_its_first_send_went_unjournaled(
    exchange: tuple[SimExchange, str], tmp_path: Path
) -> None:
    # Run 1 sent it and died before its Submitting was written (the journal says Pending).
    # Run 2's look-up does not see it yet (a venue slow to show a new order), so run 2
    # sends, is told 110072, and looks again: the one journaled Submitting is run 2's,
    # seconds after ours was made.
    exchange[0].set_faults(SimFaults(order_visibility_lag=1.0, order_visibility_lag_ms=3500))
    ours, journal, order_id = _ours_amended(exchange[0], tmp_path, offset_ms=None)
    time.sleep(2.5)

    status, held, reason = _reconciled(exchange[1], journal, ours)

    assert (status, held) == (OrderStatus.NEW, order_id), reason


def test_an_opening_order_whose_signal_went_stale_while_it_waited_for_room_is_not_sent(
    tmp_path: Path,
) -> None:
    # Its staleness was checked before the wait for room under the key's order rate limit
    # (up to 30 s): the order left after its signal's deadline, as the halt's did before
    # the hold asked again once the pacing let it go.
    limited = SimExchange(SimulatorConfig(seed=7, order_create_per_s=1))
    limited.add_account(SimAccountSpec(api_key=KEY, api_secret=SecretStr(SECRET)))
    journal = Journal(tmp_path / "j.sqlite3")
    stale_after = [float("inf")]
    with SimServer(limited) as server:
        credentials = ApiCredentials("k", SecretStr(KEY), SecretStr(SECRET))
        venue = BybitVenue(credentials, Environment.SIM, sim_url=server.url, timeout_s=2)
        executor = Executor(
            journal,
            {"k": venue},
            FAST,
            staleness=lambda ts: "stale" if time.monotonic() > stale_after[0] else None,
        )
        first, late = intent(), intent()

        async def scenario() -> OrderEvent:
            await executor.execute(approve(first), "k")  # the key learns its limit: 1/s
            stale_after[0] = time.monotonic() + 0.3  # within the wait for the next slot
            return await executor.execute(approve(late), "k")

        event = asyncio.run(scenario())
        venue.close()

    assert event.status is OrderStatus.REJECTED
    assert event.reason == "not sent: stale"
    assert orders_for(limited, late) == []


def test_an_entry_a_close_withdrew_before_it_reached_the_venue_is_never_sent_at_a_restart(
    exchange: tuple[SimExchange, str], tmp_path: Path
) -> None:
    """An opening order journaled but not at the venue (a leg a journal failure left
    Pending, or sends that never landed) is withdrawn by a close: its cancel is asked, the
    venue holds nothing to cancel. A restart within the signal's age resent it, opening the
    position the close had just flattened."""
    journal = Journal(tmp_path / "j.sqlite3")
    executor, venue = make_executor(exchange[1], journal)
    item = intent()
    approval = approve(item)
    request = build_request(approval, "k")
    asyncio.run(journal.call(journal.record_decisions, [approval.decision], [request]))
    asyncio.run(executor.withdraw_openings("k", item.strategy, item.symbol))
    assert journal.order(request.order_link_id).cancel_requested

    restarted, venue_after = make_executor(
        exchange[1], journal, config=FAST.model_copy(update={"unseen_final_after_s": 0.0})
    )
    asyncio.run(restarted.reconcile("k", limit=None, resend=True))
    journal.flush()

    assert orders_for(exchange[0], item) == []
    record = journal.order(request.order_link_id)
    assert record.status is OrderStatus.REJECTED
    assert "withdrawn (its cancel asked) and not found at the venue" in record.reason
    venue.close()
    venue_after.close()
