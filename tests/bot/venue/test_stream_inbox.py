"""The hand-over of stream messages from pybit's thread to the event loop."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from bot.venue.stream import _Inbox


def test_messages_cross_in_order_and_a_burst_costs_one_wake_up() -> None:
    async def scenario() -> list[list[dict[str, Any]]]:
        inbox = _Inbox(asyncio.get_running_loop())
        burst = threading.Thread(target=lambda: [inbox.put({"n": n}) for n in range(5)])
        burst.start()
        burst.join()  # all five arrive before the loop takes any
        first = await inbox.take()
        later = threading.Thread(target=inbox.put, args=({"n": 5},))
        later.start()
        second = await asyncio.wait_for(inbox.take(), 5)
        later.join()
        return [first, second]

    first, second = asyncio.run(scenario())

    assert first == [{"n": n} for n in range(5)]
    assert second == [{"n": 5}]
