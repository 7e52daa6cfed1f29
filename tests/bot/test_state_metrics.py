"""The journal's counts for /metrics: read beside the writes, never queued behind them, and
one read for scrapes that come together."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from bot.journal import Journal, Tallies
from bot.messages import Decline, parse_signal
from bot.state_metrics import UNCONFIGURED, StateCollector
from tests.factories import make_request


def test_the_counts_are_read_while_the_journals_thread_is_busy(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite3", synchronous="NORMAL")
    journal.record_order(make_request(order_link_id="alpha-0-x", strategy="alpha"))
    release = threading.Event()

    def long_write() -> None:
        with journal._transaction():  # a write transaction held open, as a slow commit does
            release.wait(30)

    busy = journal.submit(long_write)
    try:
        counted: list[Tallies] = []
        reader = threading.Thread(target=lambda: counted.append(journal.tallies()))
        reader.start()
        reader.join(10)

        assert counted, "the counts waited for the journal's thread"
        assert [row[0] for row in counted[0].orders] == ["alpha"]
    finally:
        release.set()
        busy.result(10)
        journal.close()


def test_scrapes_that_come_together_share_one_read(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite3", synchronous="NORMAL")
    reads = []
    gate = threading.Event()
    real = journal.tallies

    def slow_tallies() -> Tallies:
        reads.append(1)
        gate.wait(10)
        return real()

    journal.tallies = slow_tallies  # type: ignore[method-assign]
    nothing = cast(Any, None)
    collector = StateCollector(journal, nothing, nothing, nothing, {})

    async def three_scrapes_then_one() -> None:
        scrapes = [asyncio.ensure_future(collector.refresh()) for _ in range(3)]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(*scrapes)
        await collector.refresh()  # a later scrape reads afresh

    try:
        asyncio.run(three_scrapes_then_one())
    finally:
        journal.close()

    assert len(reads) == 2


def test_strategies_a_signal_names_but_none_configured_share_one_label(tmp_path: Path) -> None:
    """A signal may name any strategy (`"strategy": "junk-123"`); its decline is journaled
    under that name, but /metrics must not grow a series per name a sender makes up."""
    journal = Journal(tmp_path / "journal.sqlite3", synchronous="NORMAL")
    for index in range(20):
        signal = parse_signal(
            "voiceofchain",
            {
                "id": f"s{index}",
                "symbol": "BTCUSDT",
                "side": "buy",
                "strategy": f"junk{index}",
                "ts": datetime.now(UTC).isoformat(),
            },
        )
        journal.record_signal(signal)
        journal.record_decline(signal, Decline(strategy=f"junk{index}", reason="not configured"))
    journal.record_decline(
        parse_signal(
            "voiceofchain",
            {"id": "s-ok", "symbol": "BTCUSDT", "side": "buy", "ts": datetime.now(UTC).isoformat()},
        ),
        Decline(strategy="alpha", reason="no stop_loss"),
    )
    nothing = cast(Any, None)
    collector = StateCollector(journal, nothing, nothing, nothing, {"alpha": "alpha_key"})
    try:
        asyncio.run(collector.refresh())
        decisions = next(m for m in collector._journal_counts() if m.name == "bot_decisions")
    finally:
        journal.close()

    counts = {sample.labels["strategy"]: sample.value for sample in decisions.samples}
    assert counts == {"alpha": 1, UNCONFIGURED: 20}
