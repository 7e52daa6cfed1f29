"""Readiness and metrics as an operator relies on them: each failure actually provoked.

The journal is locked by another connection, a key expires at the venue, the venue goes
away; each turns /healthz to 503 naming the check and why, while /livez stays 200.
/metrics carries the state series with no `_created` noise.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from bot.audit import VenueRequest
from bot.execution.pacing import SHARED_IP_GATE
from bot.health import VenueHealth
from bot.pipeline import SIGNAL_WRITE_WAIT_S
from bot.sim import SimServer
from tests.bot.test_service import RunningBot, signal
from tests.conftest import venue_with_key, wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bot(sim_config: Callable[..., Path]) -> Iterator[RunningBot]:
    running = RunningBot(sim_config()).start()
    yield running
    running.stop()


def health(bot: RunningBot) -> requests.Response:
    return requests.get(f"{bot.url}/healthz", timeout=10)


def problems(bot: RunningBot) -> list[str]:
    answer = health(bot)
    return [] if answer.status_code == 200 else list(answer.json()["problems"])


def test_ready_and_live_when_all_is_well(bot: RunningBot) -> None:
    answer = health(bot)

    assert answer.status_code == 200
    body = answer.json()
    assert (body["live"], body["ready"], body["problems"]) == (True, True, [])
    assert set(body["checks"]) == {"journal", "keys", "venue", "signal_sources"}
    assert requests.get(f"{bot.url}/livez", timeout=10).json() == {"live": True}


def test_a_locked_journal_is_not_ready_until_released(bot: RunningBot) -> None:
    other = sqlite3.connect(bot.settings.journal_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another writer holds the journal
        locked = problems(bot)
        assert requests.get(f"{bot.url}/livez", timeout=10).status_code == 200
    finally:
        other.execute("ROLLBACK")
        other.close()

    assert [problem.split(":")[0] for problem in locked] == ["journal"]
    assert "locked" in locked[0]
    assert wait_for(lambda: health(bot).status_code == 200, what="ready again")


def test_senders_are_answered_503_in_time_while_the_journal_is_locked_and_nothing_is_stored(
    bot: RunningBot,
) -> None:
    """Each sender waited 5 s more than the one before (each write waited out SQLite's lock
    timeout in turn), and one whose client gave up was stored and traded later all the same
    (hostile-input probe): a signal is now stored within the bound or never."""
    other = sqlite3.connect(bot.settings.journal_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another program (a backup) holds the journal
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(6) as senders:
            answers = list(senders.map(lambda n: bot.post(signal(f"locked-{n}")), range(6)))
        waited_s = time.monotonic() - started
    finally:
        other.execute("ROLLBACK")
        other.close()

    assert [answer.status_code for answer in answers] == [503] * 6
    # A bound, not a speed check: in turn, six senders would have waited 30 s.
    assert waited_s < 3 * SIGNAL_WRITE_WAIT_S, waited_s
    assert bot.post(signal("after")).status_code == 202
    wait_for(lambda: bot.journal_status("after"), what="the next signal decided")
    stored = bot.read_journal(lambda journal: journal.counts()["signals"])
    assert stored == 1  # none of the six refused ever was


def test_a_journal_moved_away_under_the_bot_is_not_ready_until_put_back(
    bot: RunningBot, tmp_path: Path
) -> None:
    # Reproduced: the journal moved away while the bot ran, /healthz answered 500 with a
    # traceback ("no such table: signals": its reader had made a new, empty file at the
    # path), and the bot went on journaling into a file no longer there, lost at its stop.
    path = bot.settings.journal_path
    path.rename(tmp_path / "moved.sqlite3")

    answer = health(bot)

    assert answer.status_code == 503
    (problem,) = answer.json()["problems"]
    assert problem.startswith("journal: ")
    assert f"journal {path} was removed or replaced while the bot runs" in problem
    assert not path.exists()  # nothing made in its place
    (tmp_path / "moved.sqlite3").rename(path)
    assert wait_for(lambda: health(bot).status_code == 200, what="ready again")


def test_a_key_the_venue_refuses_is_not_ready(
    sim_config: Callable[..., Path], tmp_path: Path
) -> None:
    expires = datetime.now(UTC) + timedelta(seconds=3)
    exchange = venue_with_key(tmp_path, "short-lived-key", "short-lived-secret", expires)
    with SimServer(exchange) as server:
        bot = RunningBot(sim_config(extra=f'\n[venue]\nsim_url = "{server.url}"\n')).start()
        try:
            assert health(bot).status_code == 200
            wait_for(lambda: datetime.now(UTC) > expires, what="the key to expire")
            bot.post(signal("after-expiry"))
            found = wait_for(
                lambda: [p for p in problems(bot) if p.startswith("keys")], what="not ready"
            )
        finally:
            bot.stop()

    assert "follow_sim" in found[0]


def test_a_venue_gone_for_longer_than_unready_after_s_is_not_ready(
    sim_config: Callable[..., Path], tmp_path: Path
) -> None:
    server = SimServer(venue_with_key(tmp_path, "venue-key", "venue-secret")).start()
    config = sim_config(extra=f'\n[venue]\nsim_url = "{server.url}"\nunready_after_s = 1\n')
    bot = RunningBot(config).start()
    try:
        wait_for(lambda: health(bot).status_code == 200, what="ready with the venue up")
        server.stop()
        found = wait_for(
            lambda: [p for p in problems(bot) if p.startswith("venue")], what="not ready"
        )
        live = requests.get(f"{bot.url}/livez", timeout=10).status_code
    finally:
        bot.stop()

    assert "follow_sim" in found[0] and "down for" in found[0]
    assert live == 200


def test_an_address_the_venue_banned_is_not_ready_at_once(bot: RunningBot) -> None:
    # What a 403 from Bybit's edge does (bot.venue.bybit): the whole address waits.
    SHARED_IP_GATE.pause(600)
    try:
        banned = problems(bot)
    finally:
        SHARED_IP_GATE.until = 0.0  # the ban is over (the gate is the process's own)

    assert len(banned) == 1 and banned[0].startswith("venue: the venue refuses this address")
    assert "for 600 s more" in banned[0] or "for 599 s more" in banned[0]
    assert health(bot).status_code == 200


def test_metrics_show_the_state_with_no_created_series(bot: RunningBot) -> None:
    bot.post(signal("metric-1"))
    bot.post(signal("metric-1"))  # a duplicate
    wait_for(lambda: bot.sim_orders(), what="an order")

    def scraped() -> str | None:
        text = requests.get(f"{bot.url}/metrics", timeout=10).text
        filled = 'bot_orders{ret_code="",status="Filled",strategy="follow"} 1.0' in text
        booked = 'bot_position_qty{key="follow_sim",strategy="follow"' in text
        return text if filled and booked else None

    text = wait_for(scraped, what="the fill in the journal and the books")

    assert "_created" not in text
    for series in (
        'bot_decisions_total{outcome="approved",rule="",strategy="follow"} 1.0',
        'bot_signals_total{outcome="accepted",source="voiceofchain"}',
        'bot_signals_total{outcome="duplicate",source="voiceofchain"}',
        'bot_last_signal_timestamp_seconds{source="voiceofchain"}',
        'bot_account_stream_live{key="follow_sim"} 1.0',
        'bot_trading_state{scope="follow",state="ACTIVE"} 1.0',
        'bot_exposure_usdt{strategy="follow"}',
        'bot_fees_usdt{strategy="follow"}',
        'bot_equity_usdt{key="follow_sim"}',
        "bot_journal_bytes ",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
    ):
        assert series in text, series


def test_the_grafana_dashboard_queries_only_series_the_bot_serves(bot: RunningBot) -> None:
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    wanted = {
        re.sub(r"_(total|bucket)$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b(?:bot|process)_[a-z_]+", target["expr"])
    }
    text = requests.get(f"{bot.url}/metrics", timeout=10).text
    served = {
        re.sub(r"_total$", "", name) for name in re.findall(r"^# TYPE (\S+)", text, flags=re.M)
    }

    assert wanted - served == set()


def test_venue_health_counts_only_missing_answers_as_failures() -> None:
    now = [100.0]
    health = VenueHealth(clock=lambda: now[0])

    def request(**outcome: object) -> VenueRequest:
        fields: dict[str, Any] = {"ret_code": None, "http_status": None, "error": None}
        fields.update(outcome)
        return VenueRequest(
            at=0.0,
            key="k",
            environment="sim",
            endpoint="/v5/order/create",
            method="POST",
            order_link_id=None,
            latency_ms=1.0,
            **fields,
        )

    health.observe(request(error="ReadTimeout"))
    now[0] = 130.0
    health.observe(request(http_status=503))  # still failing: since the first
    failing = health.failing_for("k")
    health.observe(request(ret_code=10001, http_status=200))  # a refusal is an answer

    assert failing == 30.0
    assert health.failing_for("k") == 0.0
