"""pybit's own transport (requests) against the bot's (`bot.venue.transport.KeptAliveSession`).

The same pybit `HTTP.place_order` calls, market orders on one simulator account, sent one
after another from this process's main thread: once through a plain pybit session (requests
and urllib3, as pybit ships) and once with the session's `client` swapped for
`KeptAliveSession`, as the bot's venue does. The two alternate in blocks, so both see the
same phases of a shared host. The simulator runs in a subprocess (its CPU is not this
process's), with its rate limits lifted.

Per call: **CPU** is this thread's CPU time (`time.thread_time`) around the call, the cost a
signal pays on the bot's venue thread; **wall** is the call's `perf_counter` time, the part of
signal-to-order that is the order's own request and answer. The floor is the plain session,
measured in the same run.

Run: `make bench-transport` or `python -m bench.transport [--calls N] [--blocks B]
[--json-out FILE]`.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import requests
from pybit.unified_trading import HTTP
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from bench.common import (
    free_port,
    latency_ms,
    machine,
    run_started_at,
    say_error,
    stop_children_on_sigterm,
    wait_until,
    write_results,
)
from bot.venue.transport import KeptAliveSession

__all__ = ["main", "run"]

TRANSPORTS: Final = ("requests", "kept-alive")
_KEY_VARIABLE: Final = "BENCH_TRANSPORT_KEY"
_SECRET_VARIABLE: Final = "BENCH_TRANSPORT_SECRET"  # noqa: S105 - a variable's name
_START_TIMEOUT_S: Final = 30.0


def _serve_simulator(port: int) -> None:
    """The simulator on `port` with one account (key and secret from the environment) and
    no rate limit in the way (run in a subprocess by `--serve-sim`)."""
    from bot.sim import (
        DEFAULT_RATE_LIMITS_PER_S,
        SimAccountSpec,
        SimExchange,
        SimServer,
        SimulatorConfig,
    )

    limits = dict.fromkeys(DEFAULT_RATE_LIMITS_PER_S, 1_000_000)
    exchange = SimExchange(
        SimulatorConfig(
            rate_limits_per_s=limits,
            ip_requests_per_5s=1_000_000_000,
            starting_balance_usdt=1_000_000_000,
            accounts=[
                SimAccountSpec(
                    api_key=os.environ[_KEY_VARIABLE],
                    api_secret=SecretStr(os.environ[_SECRET_VARIABLE]),
                )
            ],
        )
    )
    with SimServer(exchange, port=port):
        while True:
            time.sleep(3600)


@contextmanager
def _simulator(key: str, secret: str) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(  # noqa: S603 - our own module
        [sys.executable, "-m", "bench.transport", "--serve-sim", str(port)],
        env=os.environ | {_KEY_VARIABLE: key, _SECRET_VARIABLE: secret},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(f"{url}/v5/market/time", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    try:
        if not wait_until(lambda: process.poll() is not None or up(), _START_TIMEOUT_S):
            raise RuntimeError(f"the simulator did not start within {_START_TIMEOUT_S} s")
        if process.poll() is not None:
            raise RuntimeError(f"the simulator exited with code {process.returncode}")
        yield url
    finally:
        process.terminate()
        process.wait(10)


def _session(transport: str, url: str, key: str, secret: str) -> HTTP:
    session = HTTP(api_key=key, api_secret=secret, testnet=False, timeout=5, max_retries=1)
    session.endpoint = url
    session.client.trust_env = False  # as the bot pins its environment once
    if transport == "kept-alive":
        kept = KeptAliveSession()
        kept.headers.update(session.client.headers)
        session.client.close()
        session.client = kept
    return session


def _timed_calls(place: Callable[[int], None], first: int, count: int) -> list[tuple[int, int]]:
    """(CPU ns, wall ns) of each of `count` calls."""
    samples = []
    for index in range(first, first + count):
        cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
        place(index)
        samples.append((time.thread_time_ns() - cpu, time.perf_counter_ns() - wall))
    return samples


def _summary(samples: Sequence[tuple[int, int]]) -> dict[str, Any]:
    return {
        "calls": len(samples),
        "cpu_mean_ms": round(statistics.fmean(cpu for cpu, _ in samples) / 1e6, 3),
        "wall_ms": latency_ms([wall for _, wall in samples]),
    }


def run(calls: int = 2000, blocks: int = 10, warmup: int = 50) -> dict[str, Any]:
    """`calls` place_order calls per transport, in `blocks` alternating blocks."""
    if calls < blocks or blocks < 1:
        raise ValueError("calls must be at least blocks, and blocks at least 1")
    key, secret = f"bench{secrets.token_hex(6)}", secrets.token_hex(24)
    samples: dict[str, list[tuple[int, int]]] = {name: [] for name in TRANSPORTS}
    with _simulator(key, secret) as url:
        sessions = {name: _session(name, url, key, secret) for name in TRANSPORTS}

        def placer(name: str) -> Callable[[int], None]:
            session = sessions[name]

            def place(index: int) -> None:
                session.place_order(
                    category="linear",
                    symbol="BTCUSDT",
                    side="Buy" if index % 2 == 0 else "Sell",
                    orderType="Market",
                    qty="0.001",
                    orderLinkId=f"{name}-{index}",
                )

            return place

        for name in TRANSPORTS:
            _timed_calls(placer(name), -warmup, warmup)  # connections, imports, caches
        per_block = calls // blocks
        for block in range(blocks):
            for name in TRANSPORTS:
                samples[name] += _timed_calls(placer(name), block * per_block, per_block)
        for session in sessions.values():
            session.client.close()
    report: dict[str, Any] = {
        "started_at": run_started_at(),
        "machine": machine(),
        "blocks": blocks,
        **{name: _summary(samples[name]) for name in TRANSPORTS},
    }
    floor, ours = report["requests"], report["kept-alive"]
    report["cpu_ratio"] = round(ours["cpu_mean_ms"] / floor["cpu_mean_ms"], 3)
    report["wall_p50_saved_ms"] = round(floor["wall_ms"]["p50"] - ours["wall_ms"]["p50"], 3)
    return report


def print_report(report: dict[str, Any], console: Console) -> None:
    table = Table(title=f"pybit place_order by transport {report['started_at']}, ms")
    for column in ("transport", "calls", "CPU mean", "wall p50", "wall p99", "wall max"):
        table.add_column(column)
    for name in TRANSPORTS:
        row, wall = report[name], report[name]["wall_ms"]
        table.add_row(
            name + (" (floor)" if name == "requests" else ""),
            str(row["calls"]),
            f"{row['cpu_mean_ms']:.3f}",
            f"{wall['p50']:.3f}",
            f"{wall['p99']:.3f}",
            f"{wall['max']:.3f}",
        )
    console.print(table)
    console.print(
        f"CPU per call: {report['cpu_ratio']:.2f}x the floor's; wall p50 "
        f"{report['wall_p50_saved_ms']:.3f} ms shorter",
        highlight=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    stop_children_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=2000, help="calls per transport")
    parser.add_argument("--blocks", type=int, default=10, help="alternating blocks")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--serve-sim", type=int, default=None, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.serve_sim is not None:
        _serve_simulator(arguments.serve_sim)
        return 0
    console = Console()
    try:
        report = run(arguments.calls, arguments.blocks)
    except (RuntimeError, ValueError) as exc:
        say_error(console, "error", exc)
        return 2
    print_report(report, console)
    target = write_results(report, "transport", str(report["started_at"]), arguments.json_out)
    console.print(f"results: {target}", highlight=False, soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
