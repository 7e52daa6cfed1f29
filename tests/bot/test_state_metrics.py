"""The journal's counts for /metrics: read beside the writes, never queued behind them, and
one read for scrapes that come together."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any, cast

from bot.journal import Journal, Tallies
from bot.state_metrics import StateCollector
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
