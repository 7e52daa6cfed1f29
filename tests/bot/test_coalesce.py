"""A blocking read shared by the callers that come while it runs."""

from __future__ import annotations

import asyncio
import threading
from functools import partial

from bot.coalesce import Coalesced


def test_callers_during_a_read_share_it_and_a_later_caller_reads_again() -> None:
    reads: list[int] = []
    gate = threading.Event()

    def read() -> int:
        gate.wait(5)
        reads.append(len(reads) + 1)
        return len(reads)

    coalesced = Coalesced(partial(asyncio.to_thread, read))

    async def callers() -> tuple[list[int], int]:
        together = [asyncio.ensure_future(coalesced()) for _ in range(5)]
        await asyncio.sleep(0.05)
        gate.set()
        first = await asyncio.gather(*together)
        return first, await coalesced()

    first, later = asyncio.run(callers())

    assert first == [1] * 5
    assert later == 2
    assert reads == [1, 2]


def test_a_failed_read_fails_its_callers_and_the_next_call_reads_again() -> None:
    outcomes = iter([OSError("disk"), 7])

    def read() -> int:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    coalesced = Coalesced(partial(asyncio.to_thread, read))

    async def twice() -> tuple[BaseException | int, int]:
        first = (await asyncio.gather(coalesced(), return_exceptions=True))[0]
        return first, await coalesced()

    failed, read_again = asyncio.run(twice())

    assert isinstance(failed, OSError)
    assert read_again == 7
