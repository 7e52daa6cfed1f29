"""Ordering and pacing through the whole bot: real uvicorn, the real simulator, real pybit.

What the order lifecycle issue reproduced, each now a test: a burst on one key is paced, not
refused with 10006; a close sent right after its open runs after it; a signal whose order was
in flight when the bot died is settled with the venue on restart, even if it is stale by then.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from loguru import logger
from pybit.unified_trading import HTTP
from pydantic import SecretStr

from bot.config import ConfigError, load_settings
from bot.execution.executor import build_request
from bot.journal import Journal
from bot.messages import (
    Execution,
    OrderEvent,
    OrderRequest,
    OrderStatus,
    Side,
    parse_signal,
)
from bot.sim import SimAccountSpec, SimExchange, SimFaults, SimServer, SimulatorConfig
from bot.venue.bybit import READ_ATTEMPTS
from tests.bot.test_service import RunningBot, signal
from tests.conftest import venue_with_key, wait_for, write_key_secrets
from tests.factories import approve, make_intent, sim_position


def sim_stats(bot: RunningBot) -> dict[str, dict[str, int]]:
    answer: dict[str, dict[str, int]] = requests.get(
        f"{bot.service.sim_url}/sim/stats", timeout=10
    ).json()
    return answer


def test_a_burst_on_one_key_is_paced_not_refused(sim_config: Callable[..., Path]) -> None:
    bot = RunningBot(sim_config()).start()
    try:
        ids = [f"burst-{i}" for i in range(40)]

        answers = [bot.post(signal(signal_id)).status_code for signal_id in ids]

        assert answers == [202] * 40

        def all_filled() -> bool:
            rows = bot.rows()
            return sum(1 for row in rows if row["status"] == "Filled") == 40

        wait_for(all_filled, 60, "40 filled orders")
        assert len(bot.sim_orders()) == 40
        assert "10006" not in sim_stats(bot)["answers_by_ret_code"]
    finally:
        bot.stop()


def test_a_close_right_after_its_open_runs_after_it(sim_config: Callable[..., Path]) -> None:
    bot = RunningBot(sim_config()).start()
    try:
        for round_ in range(5):
            opened = bot.post(signal(f"open-{round_}"))
            closed = bot.post(
                {
                    "id": f"close-{round_}",
                    "symbol": "BTCUSDT",
                    "action": "close",
                    "ts": int(time.time() * 1000),
                }
            )
            assert (opened.status_code, closed.status_code) == (202, 202)

        def settled() -> list[dict[str, object]] | None:
            rows = [r for r in bot.rows() if str(r["signal_id"]).startswith("close-")]
            done = len(rows) == 5 and all(r["status"] == "Filled" for r in rows)
            return rows if done else None

        closes = wait_for(settled, 60, "every close filled")
        assert all(row["side"] == "Sell" for row in closes)
    finally:
        bot.stop()


def test_a_close_right_after_an_open_whose_answer_was_lost_closes_it(
    sim_config: Callable[..., Path],
) -> None:
    """The open's answer lost and the venue slower to show it than the open's sends wait
    (it ends Unknown): the close's withdrawal of it found nothing to cancel and nothing yet
    at the venue, and the close was declined (no position), the one it filled left open."""
    bot = RunningBot(sim_config()).start()
    faults = f"{bot.service.sim_url}/sim/faults"
    lost_and_late = {
        "drop_response_after_accept": 1.0,
        "order_visibility_lag": 1.0,
        "order_visibility_lag_ms": 8000,
    }
    try:
        requests.post(faults, json=lost_and_late, timeout=10)
        opened = bot.post(signal("lost-open"))
        closed = bot.post(
            {"id": "close", "symbol": "BTCUSDT", "action": "close", "ts": int(time.time() * 1000)}
        )
        assert (opened.status_code, closed.status_code) == (202, 202)

        def positions() -> list[object]:
            answer = requests.get(f"{bot.service.sim_url}/sim/positions", timeout=10).json()
            return [p for p in answer["positions"] if p["size"] != "0"]

        wait_for(lambda: bot.journal_status("close") == ["Filled"], 30, "the close filled")
        assert positions() == []
    finally:
        requests.post(faults, json={}, timeout=10)
        bot.stop()


def test_orders_in_flight_at_a_crash_are_settled_before_any_new_signal(
    sim_config: Callable[..., Path], tmp_path: Path
) -> None:
    # Arrange: the journal a kill -9 leaves behind, against an exchange that outlives the bot.
    write_key_secrets(tmp_path, "crash-key", "crash-secret")
    exchange = SimExchange(SimulatorConfig())
    exchange.add_account(
        SimAccountSpec(api_key="crash-key", api_secret=SecretStr("crash-secret"), note="k")
    )
    with SimServer(exchange) as server:
        config = sim_config(extra=f'\n[venue]\nsim_url = "{server.url}"\n')
        settings = load_settings(config)
        an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
        journal = Journal(settings.journal_path)
        reached = _in_flight(journal, "reached-venue", an_hour_ago, OrderStatus.SUBMITTING)
        lost = _in_flight(journal, "never-sent-stale", an_hour_ago, OrderStatus.SUBMITTING)
        pending = _in_flight(journal, "pending-fresh", datetime.now(UTC), OrderStatus.PENDING)
        journal.close()
        session = HTTP(api_key="crash-key", api_secret="crash-secret")
        session.endpoint = server.url
        session.place_order(**reached.to_bybit_params())  # it arrived; the answer died with us

        # Act: start the bot; it is ready only after start-up reconciliation.
        bot = RunningBot(config).start()
        try:
            at_ready = _statuses(bot)
            settled = wait_for(
                lambda: (now := _statuses(bot))[reached.order_link_id] == "Filled" and now,
                what="the reached order followed to Filled",
            )
            at_venue = [order["orderLinkId"] for order in bot.sim_orders()]
        finally:
            bot.stop()

    # Assert: before the first new signal could arrive, the stale order that reached the venue
    # was found there (not declined as stale), the one that never left was declined, and the
    # fresh one was sent, once.
    assert at_ready[reached.order_link_id] in {"New", "PartiallyFilled", "Filled"}
    assert at_ready[lost.order_link_id] == "Rejected"
    assert at_ready[pending.order_link_id] in {"New", "PartiallyFilled", "Filled"}
    assert settled[pending.order_link_id] == "Filled"
    assert sorted(at_venue) == sorted([reached.order_link_id, pending.order_link_id])


def _statuses(bot: RunningBot) -> dict[str, str]:
    return {
        str(row["order_link_id"]): str(row["status"]) for row in bot.rows() if row["order_link_id"]
    }


def test_a_key_that_goes_bad_while_running_stops_its_strategy_with_a_reason_per_signal(
    sim_config: Callable[..., Path], tmp_path: Path
) -> None:
    expires = datetime.now(UTC) + timedelta(seconds=3)
    exchange = venue_with_key(tmp_path, "short-lived-key", "short-lived-secret", expires)
    with SimServer(exchange) as server:
        bot = RunningBot(sim_config(extra=f'\n[venue]\nsim_url = "{server.url}"\n')).start()
        try:
            wait_for(lambda: datetime.now(UTC) > expires, what="the key to expire")
            assert bot.post(signal("refused-1")).status_code == 202
            wait_for(lambda: _decided(bot, "refused-1"), what="a decision for the first signal")
            assert bot.post(signal("refused-2")).status_code == 202
            row = wait_for(lambda: _decided(bot, "refused-2"), what="a decision for the next")
        finally:
            bot.stop()

    assert row["decision"] == "rejected"
    assert str(row["reason"]).startswith("key follow_sim is disabled by the venue")
    # The first signal's order was refused (or its first read was): the second cost nothing.
    assert exchange.stats()["requests_by_path"].get("/v5/order/create", 0) <= 1


def test_a_key_the_venue_does_not_know_stops_the_start_with_the_reason(
    sim_config: Callable[..., Path], tmp_path: Path
) -> None:
    write_key_secrets(tmp_path, "nobody-knows-this-key", "whatever")
    exchange = SimExchange(SimulatorConfig())
    with SimServer(exchange) as server:
        bot = RunningBot(sim_config(extra=f'\n[venue]\nsim_url = "{server.url}"\n'))

        with pytest.raises(ConfigError) as refused:
            bot.start()

    message = str(refused.value)
    assert message.startswith("refusing to start: key follow_sim is refused:")
    assert "Is it a key of another environment" in message
    assert "/v5/order/create" not in exchange.stats()["requests_by_path"]


def test_a_venue_that_does_not_answer_the_key_check_delays_the_start_until_it_does(
    sim_config: Callable[..., Path], tmp_path: Path
) -> None:
    # A venue in maintenance, or a network still coming up when the machine boots, failed the
    # key check's four reads within a second and stopped the start (exit 2).
    exchange = venue_with_key(tmp_path, "late-key", "late-secret")
    exchange.set_faults(SimFaults(http_5xx=1.0))
    with SimServer(exchange) as server:
        bot = RunningBot(sim_config(extra=f'\n[venue]\nsim_url = "{server.url}"\n'))
        bot.start_in_background()
        wait_for(
            lambda: (
                exchange.stats()["requests_by_path"].get("/v5/user/query-api", 0) > READ_ATTEMPTS
            ),
            what="the key check asked again after its reads failed",
        )
        exchange.set_faults(SimFaults())  # the venue is back
        try:
            bot.wait_ready()
            assert bot.post(signal("after-the-outage")).status_code == 202
            row = wait_for(lambda: _decided(bot, "after-the-outage"), what="a decision")
        finally:
            bot.stop()

    assert row["decision"] == "approved"


def test_a_venue_that_never_answers_the_key_check_refuses_the_start_after_its_wait(
    sim_config: Callable[..., Path], tmp_path: Path
) -> None:
    exchange = venue_with_key(tmp_path, "never-key", "never-secret")
    exchange.set_faults(SimFaults(http_5xx=1.0))
    records: list[dict[str, Any]] = []
    handler = logger.add(lambda message: records.append(message.record), level="WARNING")
    try:
        with SimServer(exchange) as server:
            bot = RunningBot(
                sim_config(extra=f'\n[venue]\nsim_url = "{server.url}"\nstart_wait_s = 1\n')
            )
            with pytest.raises(ConfigError) as refused:
                bot.start()
    finally:
        logger.remove(handler)

    assert str(refused.value).startswith("refusing to start: key follow_sim is unreachable:")
    # The audit's line: `reason` (a field of --log-json's line too) is the reason itself, not
    # the message's "; " before it.
    [audit_line] = [r for r in records if r["extra"].get("verdict") == "unreachable"]
    assert audit_line["extra"]["reason"].startswith("could not ask the sim venue")
    assert audit_line["message"].endswith("; " + audit_line["extra"]["reason"])
    # Asked at once (its reads take a second of backoff), then once more when 1 s is left.
    assert exchange.stats()["requests_by_path"]["/v5/user/query-api"] == 2 * READ_ATTEMPTS
    assert "/v5/order/create" not in exchange.stats()["requests_by_path"]


def _decided(bot: RunningBot, signal_id: str) -> dict[str, object] | None:
    rows = [r for r in bot.rows() if r["signal_id"] == signal_id]
    return rows[0] if rows and rows[0]["decision"] != "pending" else None


def test_a_stop_during_start_up_reconciliation_is_honoured(
    sim_config: Callable[..., Path], tmp_path: Path
) -> None:
    write_key_secrets(tmp_path, "slow-key", "slow-secret")
    exchange = SimExchange(SimulatorConfig())
    exchange.add_account(SimAccountSpec(api_key="slow-key", api_secret=SecretStr("slow-secret")))
    with SimServer(exchange) as server:
        config = sim_config(extra=f'\n[venue]\nsim_url = "{server.url}"\n')
        journal = Journal(load_settings(config).journal_path)
        _in_flight(journal, "in-flight", datetime.now(UTC), OrderStatus.SUBMITTING)
        journal.close()
        exchange.set_faults(SimFaults(delay=1.0, delay_ms=3000))  # every look-up hangs
        bot = RunningBot(config)
        bot.start_in_background()
        time.sleep(1.0)  # inside start-up reconciliation by now

        bot.stop_within(8.0)  # the drain budget and a venue timeout, not the 3 s look-ups


def _in_flight(journal: Journal, signal_id: str, ts: datetime, status: OrderStatus) -> OrderRequest:
    """Journal a signal, its approval and its order as a crash would leave them."""
    journal.record_signal(
        parse_signal(
            "voiceofchain",
            {
                "id": signal_id,
                "symbol": "BTCUSDT",
                "side": "buy",
                "stop_loss": 95000,
                "ts": ts.isoformat(),
            },
        )
    )
    intent = make_intent(signal_id=signal_id, signal_ts=ts, qty=Decimal("0.001"))
    approval = approve(intent)
    request = build_request(approval, "follow_sim")
    journal.record_decisions([approval.decision], [request])
    if status is OrderStatus.SUBMITTING:  # sent just before the crash, at the signal's time
        journal.record_order_event(
            OrderEvent(order_link_id=request.order_link_id, status=status, ts=ts)
        )
    return request


def test_a_stop_loss_the_venue_executes_appears_under_its_order(
    sim_config: Callable[..., Path],
) -> None:
    fast = "\n[execution]\nreconcile_interval_s = 0.1\nexit_scan_interval_s = 0.2\n"
    bot = RunningBot(sim_config(extra=fast)).start()
    try:
        assert bot.post(signal("protected", stop_loss=95000)).status_code == 202
        wait_for(lambda: bot.journal_status("protected") == ["Filled"], what="the entry filled")

        def exits() -> list[dict[str, object]]:
            rows = [r for r in bot.rows() if r["signal_id"] == "protected"]
            return [r for r in rows if r["decision"] == "exit"]

        # Bybit holds the stop as a waiting order from the fill on: shown as such.
        waiting = wait_for(lambda: exits() or None, 30, "the waiting stop in the journal")
        assert [(r["reason"], r["status"]) for r in waiting] == [("StopLoss at 95000", "New")]

        moved = requests.post(
            f"{bot.service.sim_url}/sim/prices", json={"BTCUSDT": 94000}, timeout=10
        )

        assert moved.status_code == 200

        def exit_row() -> dict[str, object] | None:
            rows = [r for r in bot.rows() if r["signal_id"] == "protected"]
            exits = [r for r in rows if r["decision"] == "exit" and r["status"] == "Filled"]
            return exits[0] if exits else None

        row = wait_for(exit_row, 30, "the stop loss in the journal")
        assert row["reason"] == "StopLoss at 95000"
        assert (row["side"], row["status"], row["strategy"]) == ("Sell", "Filled", "follow")
        assert len(exits()) == 1  # the waiting order itself executed: one row, not two
    finally:
        bot.stop()


def test_a_stop_that_books_the_days_loss_past_its_limit_enters_reducing_with_no_signal(
    sim_config: Callable[..., Path],
) -> None:
    """The rule's state is journaled (and notified) when the loss is booked, not when the
    next opening signal happens to come: `bot risk status`, /metrics and the trader's
    notification say REDUCING while nothing else is sent."""
    limit = "\n[strategies.follow.risk]\nmax_daily_loss_usdt = 5\n"
    bot = RunningBot(sim_config(extra=limit)).start()
    try:
        assert bot.post(signal("losing", stop_loss=95000)).status_code == 202
        wait_for(lambda: bot.journal_status("losing") == ["Filled"], what="the entry filled")
        assert bot.read_journal(lambda journal: journal.trading_states()) == []

        moved = requests.post(
            f"{bot.service.sim_url}/sim/prices", json={"BTCUSDT": 94000}, timeout=10
        )
        assert moved.status_code == 200

        def states() -> list[tuple[str, str, bool]] | None:
            found = bot.read_journal(lambda journal: journal.trading_states())
            return [(s.scope, s.state.value, s.automatic) for s in found] or None

        assert wait_for(states, 30, "the REDUCING state in the journal") == [
            ("follow", "REDUCING", True)
        ]
    finally:
        bot.stop()


def test_an_order_filled_before_a_crash_is_found_after_it_not_sent_again(
    sim_config: Callable[..., Path],
) -> None:
    """The journal got the fill (and the position) but not the order's acknowledgement when
    the bot died; the in-process simulator restarts empty. It resumes that order under its ids,
    so the start-up look-up finds it Filled and nothing is sent twice."""
    config = sim_config()
    now = datetime.now(UTC)
    journal = Journal(load_settings(config).journal_path)
    request = _in_flight(journal, "filled-then-crashed", now, OrderStatus.SUBMITTING)
    journal.record_execution(
        Execution(
            exec_id="fill-before-crash",
            key_name="follow_sim",
            order_id="order-before-crash",
            order_link_id=request.order_link_id,
            symbol="BTCUSDT",
            side=Side.BUY,
            qty=request.qty,
            price=Decimal(97000),
            fee=Decimal("0.05"),
            ts=now,
        ),
        {"follow": request.qty},
    )
    journal.record_position(sim_position(request.qty, ts=now))
    journal.close()

    bot = RunningBot(config).start()
    try:
        wait_for(
            lambda: bot.journal_status("filled-then-crashed") == ["Filled"], what="the order found"
        )
        stats = requests.get(f"{bot.service.sim_url}/sim/stats", timeout=10).json()
        at_venue = [o for o in bot.sim_orders() if o["orderLinkId"] == request.order_link_id]
    finally:
        bot.stop()

    assert stats["requests_by_path"].get("/v5/order/create", 0) == 0
    assert [(o["orderId"], o["orderStatus"], o["cumExecQty"]) for o in at_venue] == [
        ("order-before-crash", "Filled", str(request.qty))
    ]
