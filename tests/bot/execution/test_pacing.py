"""Pacing: a rolling window per endpoint, corrected by what the venue says."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bot import metrics
from bot.execution.pacing import IpGate, Pacer, PaceTooLong, RateWindow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_full_window_waits_until_the_oldest_request_leaves_it() -> None:
    clock = Clock()
    window = RateWindow(2, clock=clock)

    async def scenario() -> float:
        for _ in range(2):
            (await window.acquire()).finish(clock)
        return window._wait_s()

    wait = asyncio.run(scenario())

    assert 1.0 < wait <= 1.05  # the window plus a small guard for clock granularity


def test_a_request_still_queued_counts_until_it_leaves() -> None:
    clock = Clock()
    window = RateWindow(1, clock=clock)

    async def scenario() -> tuple[float, float]:
        slot = await window.acquire()  # under way: no answer yet
        before = window._wait_s()
        window.release(slot)  # its caller was cancelled: it never left
        return before, window._wait_s()

    before, after = asyncio.run(scenario())

    assert before > 0
    assert after == 0


def test_the_venues_headers_set_the_limit_and_pause_an_exhausted_window() -> None:
    clock = Clock()
    window = RateWindow(10, clock=clock)

    window.observe(limit=5, remaining=0, reset_in_s=0.4)

    assert window.limit == 5
    assert abs(window._wait_s() - 0.4) < 1e-9


def test_each_endpoint_has_its_own_documented_limit() -> None:
    pacer = Pacer()

    assert pacer.window("/v5/order/create").limit == 10
    assert pacer.window("/v5/order/realtime").limit == 50
    assert pacer.window("/v5/order/create") is pacer.window("/v5/order/create")


def test_an_ip_ban_pauses_every_endpoint_of_every_key() -> None:
    clock = Clock()
    gate = IpGate(clock=clock)
    first, second = Pacer(clock=clock, ip_gate=gate), Pacer(clock=clock, ip_gate=gate)

    first.ip_gate.pause(600)

    assert first.window("/v5/order/create")._wait_s() == 600
    assert second.window("/v5/position/list")._wait_s() == 600
    assert second.window("")._wait_s() == 600  # public endpoints too


def test_a_wait_longer_than_the_caller_allows_is_refused_not_slept() -> None:
    clock = Clock()
    window = RateWindow(10, clock=clock)
    window.pause(600)

    with pytest.raises(PaceTooLong) as refused:
        asyncio.run(window.acquire(max_wait_s=30))

    assert refused.value.wait_s == 600


def test_requests_the_venue_counted_but_we_did_not_take_room() -> None:
    clock = Clock()
    window = RateWindow(10, clock=clock)

    async def first_request() -> None:
        (await window.acquire()).finish(clock)

    asyncio.run(first_request())
    window.observe(limit=10, remaining=2, reset_in_s=None)  # a crashed run used 7 more

    async def fill() -> int:
        sent = 0
        while window._wait_s() == 0:
            (await window.acquire()).finish(clock)
            sent += 1
        return sent

    assert asyncio.run(fill()) == 2


def test_a_new_window_sends_one_request_at_a_time_until_the_venue_answers() -> None:
    clock = Clock()
    window = RateWindow(10, clock=clock)

    async def scenario() -> tuple[float, float]:
        first = await window.acquire()  # under way, no answer yet
        blocked = window._wait_s()
        first.finish(clock)
        window.observe(limit=10, remaining=9, reset_in_s=None)
        return blocked, window._wait_s()

    blocked, after = asyncio.run(scenario())

    assert blocked > 0
    assert after == 0


def test_a_full_ip_window_holds_every_key_and_endpoint_until_its_oldest_request_leaves() -> None:
    clock = Clock()
    gate = IpGate(clock=clock, limit=3, window_s=5.0)
    first, second = Pacer(clock=clock, ip_gate=gate), Pacer(clock=clock, ip_gate=gate)

    async def send_three() -> None:
        for window in (first.window(""), first.window("/v5/order/create"), second.window("")):
            (await window.acquire()).finish(clock)

    asyncio.run(send_three())

    # Each key's own windows have room; the machine's address has none.
    assert 5.0 < second.window("/v5/position/list")._wait_s() <= 5.05
    clock.now += 5.02
    assert second.window("/v5/position/list")._wait_s() == 0


def test_a_burst_over_many_keys_never_puts_more_than_the_ip_limit_in_any_window() -> None:
    gate = IpGate(limit=5, window_s=0.2)
    pacers = [Pacer(ip_gate=gate) for _ in range(4)]
    granted: list[float] = []

    async def request(pacer: Pacer, path: str) -> None:
        slot = await pacer.window(path).acquire()
        granted.append(time.monotonic())
        slot.finish()

    async def burst() -> None:
        await asyncio.gather(
            *(request(pacer, path) for pacer in pacers for path in ("", "/v5/order/realtime") * 2)
        )

    asyncio.run(burst())

    assert len(granted) == 16
    busiest = max(sum(1 for t in granted if start <= t < start + 0.2) for start in granted)
    assert busiest <= 5


def test_a_restarted_process_counts_what_the_killed_one_sent_within_the_window(
    tmp_path: Path,
) -> None:
    ring = tmp_path / "ip_requests.bin"
    killed = IpGate(limit=3)
    killed.remember(ring)
    for _ in range(3):
        killed.count()
    # kill -9: nothing is closed or flushed; the mapped file still holds the times.

    restarted = IpGate(limit=3)
    restarted.remember(ring)

    assert restarted.wait_s() > 4.9  # the window is full until those three age out
    fresh = IpGate(limit=3)
    fresh.remember(tmp_path / "another.bin")
    assert fresh.wait_s() == 0


def test_requests_older_than_the_window_are_not_counted_again(tmp_path: Path) -> None:
    ring = tmp_path / "ip_requests.bin"
    ring.write_bytes(struct.pack("<3d", *(time.time() - 6.0 for _ in range(3))))

    restarted = IpGate(limit=3)
    restarted.remember(ring)

    assert restarted.wait_s() == 0
    assert ring.stat().st_size == 1024 * 8  # grown to its ring, never emptied


def test_a_restarted_process_keeps_to_a_ban_the_killed_one_was_given(tmp_path: Path) -> None:
    """Requests sent during a ban prolong it: a bot killed and started again waits it out."""
    ring = tmp_path / "ip_requests.bin"
    killed = IpGate()
    killed.remember(ring)
    killed.pause(600)

    restarted = IpGate()
    restarted.remember(ring)

    assert 595 < restarted.paused_for() <= 600
    assert restarted.wait_s() == pytest.approx(restarted.paused_for(), abs=0.5)


@pytest.mark.parametrize(
    ("recorded", "believed"),
    [
        (lambda now: f"{now - 5}", (0.0, 0.0)),  # over
        (lambda now: "not a time", (0.0, 0.0)),  # unreadable
        (lambda now: "nan", (0.0, 0.0)),
        (lambda now: f"{now + 10 * 86400}", (3590.0, 3600.0)),  # a clock set back: capped
    ],
)
def test_a_remembered_ban_that_is_over_or_unbelievable_stops_nothing_for_long(
    tmp_path: Path, recorded: Callable[[float], str], believed: tuple[float, float]
) -> None:
    (tmp_path / "ip_requests.ban").write_text(recorded(time.time()))
    gate = IpGate()
    gate.remember(tmp_path / "ip_requests.bin")
    low, high = believed
    assert low <= gate.paused_for() <= high


def test_a_shorter_pause_never_shortens_the_remembered_ban(tmp_path: Path) -> None:
    ring = tmp_path / "ip_requests.bin"
    gate = IpGate()
    gate.remember(ring)
    gate.pause(600)
    gate.pause(30)  # a later 10006 of the whole address, say
    restarted = IpGate()
    restarted.remember(ring)
    assert restarted.paused_for() > 590


def test_time_held_at_each_limit_is_counted_for_the_operator() -> None:
    # A benchmark found orders held 0.15-0.6 s at the address's limit (the start-up's reads
    # filled its 5 s window) with nothing an operator could see it by.
    def waited(limit: str) -> float:
        return (
            metrics.REGISTRY.get_sample_value(
                "bot_venue_pacing_wait_seconds_total", {"limit": limit}
            )
            or 0.0
        )

    before = {limit: waited(limit) for limit in ("ip", "key")}
    ip_window = RateWindow(100, ip_gate=IpGate(limit=1, window_s=0.05), calibrated=True)
    key_window = RateWindow(1, calibrated=True)

    async def two_each() -> None:
        for window in (ip_window, key_window):
            for _ in range(2):
                (await window.acquire()).finish()

    asyncio.run(two_each())

    assert waited("ip") - before["ip"] >= 0.05  # the address's window, then its guard
    assert waited("key") - before["key"] >= 1.0  # the key's window of 1 s
