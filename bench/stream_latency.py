"""Stream latency: from a fill at the simulator to the bot's account projection.

One process, one clock (`time.perf_counter_ns`). The simulator (`bot.sim`) runs in-process on
a loopback port; the bot's own pieces run on an asyncio loop beside it, wired as
`bot.service` wires them: `Account` (journal replay, `AccountKeeper`, `AccountProjection`) on a
SQLite `Journal` opened as the service opens it, a `BybitVenue` for the REST gap-closing on
connect, and the key's `AccountStream` (pybit's private WebSocket) feeding `keeper.apply`.

What is stamped, and where:

- **fill**: at the simulator, as it executes the fill. A `StreamSink` attached to the exchange
  ahead of the server's stream hub is called synchronously inside the fill (engine thread,
  exchange lock held) just before the hub is handed the `execution` push.
- **keeper**: when the `Execution` reaches `AccountKeeper.apply` on the bot's loop (after the
  socket, pybit's thread, the hop onto the loop, parsing, and the messages queued before it).
- **projection**: when `AccountProjection.apply_execution` has applied that execId (wrapped).
- **floor**: a bare pybit `WebSocket` client of the same key and topics, with nothing else
  running, stamping in its execution callback on pybit's thread: what the simulator and pybit
  cost by themselves, so the bot's overhead is what lies above it.

The load: one key, one symbol, market orders placed at the simulator directly (`SimExchange.
place_order`, at most 10 orders/s, Bybit's order/create limit per UID), each executed in equal
partial fills (`partial_fills`) spaced evenly, as a large order sweeping the book would be:
20 fills/s (10 orders/s x 2 fills, 50 ms apart) and 200 fills/s (10 orders/s x 20 fills,
5 ms apart). Before each order the journal records it (Pending, Submitting) through
`journal.call`, as the executor does, so its fills are attributed to a strategy. Each pass
(floor, bot) of each load gets a fresh simulator and journal.

Run: `make bench-stream`, `python -m bench.stream_latency [--fills 2000 --rate 200 ...]`.
Exit code 0: every fill reached the projection exactly once and the sizes agree with the
simulator (timing targets are reported, not enforced); 1: a correctness check failed;
2: the benchmark itself could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal

import httpx
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from bench.common import (
    Check,
    Spread,
    run_started_at,
    say_error,
    write_results,
)
from bot.account import Account
from bot.config import Environment
from bot.execution.ids import order_link_id
from bot.journal import Journal
from bot.logs import configure
from bot.messages import Execution, OrderEvent, OrderRequest, OrderStatus, OrderType, Side
from bot.secrets import ApiCredentials
from bot.sim import SimAccountSpec, SimExchange, SimServer, SimulatorConfig
from bot.sim.client import SimWebSocket
from bot.sim.params import PlaceOrderParams, PositionQueryParams
from bot.venue.bybit import BybitVenue
from bot.venue.stream import TOPICS, AccountStream, StreamMessage

__all__ = [
    "LoadSpec",
    "PathName",
    "StreamLatencyOptions",
    "StreamLatencyReport",
    "main",
    "print_report",
    "run_stream_latency",
    "write_json",
]

SYMBOL: Final = "SOLUSDT"
KEY_NAME: Final = "bench"
STRATEGY: Final = "latency"
SOURCE: Final = "bench"
ORDER_CREATE_PER_S: Final = 10  # Bybit's (and the simulator's) per-UID order/create limit
TARGET_P99_MS: Final = 5.0
BALANCE_USDT: Final = Decimal(1_000_000)
POLL_S: Final = 0.02
STREAM_CLOSE_GRACE_S: Final = 0.5
SAMPLES: Final = 10

PathName = Literal["floor", "bot"]


class BenchError(Exception):
    """The benchmark itself cannot go on (a server would not start, a stream not connect)."""


@dataclass(frozen=True)
class LoadSpec:
    """One load: `fills` fills at `fills_per_s`, from `orders_per_s` market orders a second,
    each split into equal partial fills spaced evenly."""

    name: str
    fills_per_s: int
    fills: int
    orders_per_s: int

    def __post_init__(self) -> None:
        if not 0 < self.orders_per_s <= ORDER_CREATE_PER_S:
            raise ValueError(f"orders_per_s must be 1..{ORDER_CREATE_PER_S}")
        if self.fills_per_s % self.orders_per_s or not 0 < self.fills_per_s <= 1000:
            raise ValueError("fills_per_s must be a multiple of orders_per_s, at most 1000")
        if not 1 <= self.pieces <= 100:
            raise ValueError("fills_per_s / orders_per_s must be 1..100 (the sim's partial_fills)")
        if self.fills < self.pieces:
            raise ValueError("fills must cover at least one order")

    @property
    def pieces(self) -> int:
        """Partial fills per order."""
        return self.fills_per_s // self.orders_per_s

    @property
    def orders(self) -> int:
        return math.ceil(self.fills / self.pieces)

    @property
    def expected_fills(self) -> int:
        return self.orders * self.pieces

    @property
    def spacing_ms(self) -> int:
        """Between two partial fills of one order (the simulator's market_fill_delay_ms)."""
        return max(1, round(1000 / self.fills_per_s))

    def describe(self) -> str:
        return (
            f"{self.fills_per_s} fills/s ({self.orders_per_s} orders/s x {self.pieces} "
            f"fills, {self.spacing_ms} ms apart)"
        )


DEFAULT_LOADS: Final = (
    LoadSpec("modest", fills_per_s=20, fills=300, orders_per_s=10),
    LoadSpec("200/s", fills_per_s=200, fills=2000, orders_per_s=10),
)


@dataclass(frozen=True)
class StreamLatencyOptions:
    loads: tuple[LoadSpec, ...] = DEFAULT_LOADS
    connect_timeout_s: float = 20.0
    drain_timeout_s: float = 60.0
    #: After the last fill arrived: how long to keep watching for a second application.
    settle_s: float = 0.3
    work_dir: Path | None = None
    json_out: Path | None = None
    log: Callable[[str], None] = field(default=lambda line: print(line, flush=True))


@dataclass
class Latency:
    """Nearest-rank percentiles of one set of latencies, in milliseconds."""

    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @classmethod
    def of(cls, nanoseconds: Sequence[int]) -> Latency:
        spread = Spread.of(nanoseconds, 1e6)
        if spread is None:
            return cls(0, math.nan, math.nan, math.nan, math.nan)
        return cls(spread.n, spread.p50, spread.p99, spread.max, spread.mean)


@dataclass
class PassResult:
    """One pass (floor or bot) of one load."""

    load: str
    path: PathName
    expected_fills: int
    fills_at_sim: int
    delivered: int  # distinct execIds that reached the end of the path
    missing: list[str]
    duplicates: list[str]  # execIds applied (or received) more than once
    unknown: list[str]  # execIds that reached the end but were never stamped at the sim
    achieved_fills_per_s: float
    latency: Latency
    segments: dict[str, Latency] = field(default_factory=dict)
    sim_size: str = ""
    strategy_size: str = ""
    position_size: str = ""
    journal_calls: dict[str, dict[str, float]] = field(default_factory=dict)
    #: How long `AccountKeeper.apply` took per message type (the relay applies one at a time).
    keeper_apply: dict[str, Latency] = field(default_factory=dict)
    drained: bool = True


@dataclass
class StreamLatencyReport:
    options: dict[str, Any]
    started_at: str
    passes: list[PassResult]
    checks: list[Check]
    facts: dict[str, Any]

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if check.correctness and not check.ok]

    def describe_failures(self) -> str:
        lines = []
        for check in self.failures:
            lines.append(f"{check.name}: {check.value} (target {check.target})")
            lines.extend(f"    {sample}" for sample in check.samples)
        return "\n".join(lines)

    def result(self, load: str, path: PathName) -> PassResult | None:
        return next((p for p in self.passes if p.load == load and p.path == path), None)

    def as_json(self) -> dict[str, Any]:
        return {
            "options": self.options,
            "started_at": self.started_at,
            "ok": not self.failures,
            "target_p99_ms": TARGET_P99_MS,
            "passes": [asdict(result) for result in self.passes],
            "checks": [asdict(check) for check in self.checks],
            "facts": self.facts,
        }


# --------------------------------------------------------------------------- stamps


class FillClock:
    """A `StreamSink` attached to the exchange ahead of the server's hub: the exchange calls
    it inside each fill (engine thread, lock held), where it stamps the execId."""

    def __init__(self) -> None:
        self.at_sim: dict[str, int] = {}

    def wants_private(self, api_key: str, topic: str) -> bool:
        return topic == "execution"

    def push_private(self, api_key: str, topic: str, rows: list[dict[str, Any]]) -> None:
        now = time.perf_counter_ns()
        for row in rows:
            self.at_sim.setdefault(str(row.get("execId")), now)

    def wants_market_data(self, symbol: str) -> bool:
        return False

    def price_moved(self, symbol: str, cs: int, row: dict[str, str]) -> None:
        return None

    def wants_trades(self, symbol: str) -> bool:
        return False

    def push_trade(self, symbol: str, row: dict[str, Any]) -> None:
        return None

    def push_liquidation(self, symbol: str, row: dict[str, Any]) -> None:
        return None


def _journal_timer(journal: Journal) -> dict[str, list[tuple[int, int]]]:
    """Wrap `journal.call` to time each call: (await total, work on the journal thread), ns."""
    timings: dict[str, list[tuple[int, int]]] = defaultdict(list)
    original = journal.call

    async def call(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        work = [0]

        def run() -> Any:
            started = time.perf_counter_ns()
            try:
                return method(*args, **kwargs)
            finally:
                work[0] = time.perf_counter_ns() - started

        started = time.perf_counter_ns()
        try:
            return await original(run)
        finally:
            name = getattr(method, "__name__", "call")
            timings[name].append((time.perf_counter_ns() - started, work[0]))

    journal.call = call  # type: ignore[method-assign]
    return timings


def _summarise_journal(timings: Mapping[str, list[tuple[int, int]]]) -> dict[str, dict[str, float]]:
    summary = {}
    for name, pairs in sorted(timings.items()):
        total = Latency.of([pair[0] for pair in pairs])
        work = Latency.of([pair[1] for pair in pairs])
        summary[name] = {
            "calls": total.count,
            "await_p50_ms": total.p50_ms,
            "await_p99_ms": total.p99_ms,
            "work_p50_ms": work.p50_ms,
            "work_p99_ms": work.p99_ms,
            "work_total_ms": round(sum(pair[1] for pair in pairs) / 1e6, 1),
        }
    return summary


# --------------------------------------------------------------------------- one pass


def _credentials() -> ApiCredentials:
    return ApiCredentials(
        KEY_NAME, SecretStr(f"bench{secrets.token_hex(8)}"), SecretStr(secrets.token_hex(24))
    )


def _exchange(load: LoadSpec, credentials: ApiCredentials) -> SimExchange:
    return SimExchange(
        SimulatorConfig(
            market_fill_delay_ms=load.spacing_ms,
            partial_fills=load.pieces,
            accounts=[
                SimAccountSpec(
                    api_key=credentials.api_key.get_secret_value(),
                    api_secret=credentials.api_secret,
                    balance_usdt=BALANCE_USDT,
                    note=KEY_NAME,
                )
            ],
        )
    )


def _sim_size(exchange: SimExchange, api_key: str) -> Decimal:
    rows = exchange.positions(
        api_key, PositionQueryParams.model_validate({"category": "linear", "symbol": SYMBOL})
    )["list"]
    size = sum(
        (Decimal(row["size"]) * (-1 if row.get("side") == "Sell" else 1) for row in rows),
        Decimal(0),
    )
    return size.normalize() if size else Decimal(0)


async def _wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(POLL_S)
    return True


async def _wait_subscribed(client: httpx.AsyncClient, timeout_s: float) -> None:
    """Until the simulator shows an authenticated connection with every private topic."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = await client.get("/sim/streams")
        connections = answer.json()["connections"]
        if any(
            conn.get("authenticated") and set(TOPICS) <= set(conn.get("topics", []))
            for conn in connections
        ):
            return
        if time.monotonic() > deadline:
            raise BenchError(f"no subscribed stream connection within {timeout_s} s: {connections}")
        await asyncio.sleep(POLL_S)


async def _generate(
    load: LoadSpec, exchange: SimExchange, api_key: str, journal: Journal | None
) -> None:
    """Place the load's market orders, paced to an absolute schedule; journaled first (Pending,
    Submitting) when a journal is given, as the executor does."""
    loop = asyncio.get_running_loop()
    step = exchange.config.instruments[SYMBOL].qty_step
    started = loop.time()
    for index in range(load.orders):
        await asyncio.sleep(max(0.0, started + index / load.orders_per_s - loop.time()))
        buy = index % 2 == 0
        signal_id = f"{load.name}-{index}"
        request = OrderRequest(
            order_link_id=order_link_id(STRATEGY, SOURCE, signal_id, 0),
            key_name=KEY_NAME,
            strategy=STRATEGY,
            signal_source=SOURCE,
            signal_id=signal_id,
            leg=0,
            symbol=SYMBOL,
            side=Side.BUY if buy else Side.SELL,
            order_type=OrderType.MARKET,
            # Buys twice the sells: the position grows, so its size is a real check.
            qty=step * load.pieces * (2 if buy else 1),
        )
        if journal is not None:
            await journal.call(journal.record_order, request)
            await journal.call(
                journal.record_order_event,
                OrderEvent(order_link_id=request.order_link_id, status=OrderStatus.SUBMITTING),
            )
        params = PlaceOrderParams.model_validate(request.to_bybit_params())
        await asyncio.to_thread(exchange.place_order, api_key, params)


def _outcome(
    load: LoadSpec,
    path: PathName,
    clock: FillClock,
    reached: Mapping[str, list[int]],
) -> PassResult:
    at_sim = dict(clock.at_sim)
    reached = {exec_id: list(stamps) for exec_id, stamps in reached.items()}
    latencies = [stamps[0] - at_sim[e] for e, stamps in reached.items() if e in at_sim]
    span_ns = max(at_sim.values(), default=0) - min(at_sim.values(), default=0)
    return PassResult(
        load=load.name,
        path=path,
        expected_fills=load.expected_fills,
        fills_at_sim=len(at_sim),
        delivered=sum(1 for e in reached if e in at_sim),
        missing=sorted(set(at_sim) - set(reached)),
        duplicates=sorted(e for e, stamps in reached.items() if len(stamps) > 1),
        unknown=sorted(set(reached) - set(at_sim)),
        achieved_fills_per_s=round((len(at_sim) - 1) / (span_ns / 1e9), 1) if span_ns else 0.0,
        latency=Latency.of(latencies),
    )


async def _floor_pass(load: LoadSpec, options: StreamLatencyOptions) -> PassResult:
    """The simulator's push latency to a bare pybit client: fill -> pybit's callback."""
    credentials = _credentials()
    exchange = _exchange(load, credentials)
    clock = FillClock()
    exchange.attach_stream(clock)
    received: dict[str, list[int]] = defaultdict(list)

    def on_execution(message: dict[str, Any]) -> None:  # on pybit's thread
        now = time.perf_counter_ns()
        for row in message.get("data") or []:
            received[str(row.get("execId"))].append(now)

    def ignore(message: dict[str, Any]) -> None:
        return None

    def connect(url: str) -> SimWebSocket:
        socket = SimWebSocket(
            url,
            channel_type="private",
            testnet=False,
            api_key=credentials.api_key.get_secret_value(),
            api_secret=credentials.api_secret.get_secret_value(),
            retries=2,
            restart_on_error=False,
        )
        socket.order_stream(ignore)
        socket.execution_stream(on_execution)
        socket.position_stream(ignore)
        socket.wallet_stream(ignore)
        return socket

    server = SimServer(exchange)
    await asyncio.to_thread(server.start)
    socket: SimWebSocket | None = None
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=5.0) as client:
            socket = await asyncio.wait_for(
                asyncio.to_thread(connect, server.ws_url + "/v5/private"),
                options.connect_timeout_s,
            )
            await _wait_subscribed(client, options.connect_timeout_s)
        await _generate(load, exchange, credentials.api_key.get_secret_value(), None)
        drained = await _wait_for(
            lambda: (
                len(clock.at_sim) >= load.expected_fills and len(received) >= load.expected_fills
            ),
            options.drain_timeout_s,
        )
        await asyncio.sleep(options.settle_s)
        result = _outcome(load, "floor", clock, received)
        result.drained = drained
        return result
    finally:
        if socket is not None:
            await asyncio.to_thread(socket.exit)
        await asyncio.to_thread(server.stop)


async def _bot_pass(load: LoadSpec, root: Path, options: StreamLatencyOptions) -> PassResult:
    """The bot's path: fill -> AccountStream -> AccountKeeper -> AccountProjection."""
    credentials = _credentials()
    api_key = credentials.api_key.get_secret_value()
    exchange = _exchange(load, credentials)
    clock = FillClock()
    exchange.attach_stream(clock)
    server = SimServer(exchange)
    await asyncio.to_thread(server.start)
    # A fill's account writes are synchronous=NORMAL whatever `journal_synchronous` says.
    journal = Journal(root / f"journal-{load.name.replace('/', '-')}.sqlite3")
    venue = BybitVenue(credentials, Environment.SIM, sim_url=server.url)
    task: asyncio.Task[None] | None = None
    try:
        account = await asyncio.to_thread(Account, journal, {KEY_NAME: venue})
        projection = account.projection
        timings = _journal_timer(journal)
        applied: dict[str, list[int]] = defaultdict(list)
        at_keeper: dict[str, int] = {}
        original_apply = projection.apply_execution

        def apply_execution(
            execution: Execution, allocation: Mapping[str, Decimal], *, of_our_order: bool = True
        ) -> None:
            original_apply(execution, allocation, of_our_order=of_our_order)
            applied[execution.exec_id].append(time.perf_counter_ns())

        projection.apply_execution = apply_execution  # type: ignore[method-assign]

        keeper_timings: dict[str, list[int]] = defaultdict(list)

        async def on_message(report: StreamMessage) -> None:
            started = time.perf_counter_ns()
            if isinstance(report, Execution):
                at_keeper.setdefault(report.exec_id, started)
            try:
                await account.keeper.apply(report)
            finally:
                keeper_timings[type(report).__name__].append(time.perf_counter_ns() - started)

        connected = asyncio.Event()

        async def on_connected() -> None:
            await account.keeper.close_gap(venue)
            connected.set()

        stream = AccountStream(
            credentials, Environment.SIM, on_message, on_connected, sim_url=server.url
        )
        account.streams[KEY_NAME] = stream
        task = asyncio.create_task(stream.run())
        async with httpx.AsyncClient(base_url=server.url, timeout=5.0) as client:
            try:
                await asyncio.wait_for(connected.wait(), options.connect_timeout_s)
            except TimeoutError:
                raise BenchError(
                    f"the account stream did not connect within {options.connect_timeout_s} s"
                ) from None
            await _wait_subscribed(client, options.connect_timeout_s)
        timings.clear()  # only what happens under load
        keeper_timings.clear()
        await _generate(load, exchange, api_key, journal)

        def settled() -> bool:
            return (
                len(clock.at_sim) >= load.expected_fills
                and len(applied) >= load.expected_fills
                and (position := projection.position(KEY_NAME, SYMBOL)) is not None
                and position.size == _sim_size(exchange, api_key)
            )

        drained = await _wait_for(settled, options.drain_timeout_s)
        await asyncio.sleep(options.settle_s)
        result = _outcome(load, "bot", clock, applied)
        result.drained = drained
        at_sim = dict(clock.at_sim)
        result.segments = {
            "fill -> keeper.apply": Latency.of(
                [t - at_sim[e] for e, t in at_keeper.items() if e in at_sim]
            ),
            "keeper.apply -> projection": Latency.of(
                [stamps[0] - at_keeper[e] for e, stamps in applied.items() if e in at_keeper]
            ),
        }
        position = projection.position(KEY_NAME, SYMBOL)
        result.sim_size = str(_sim_size(exchange, api_key))
        result.strategy_size = str(projection.strategy_size(KEY_NAME, STRATEGY, SYMBOL).normalize())
        result.position_size = "" if position is None else str(position.size.normalize())
        result.journal_calls = _summarise_journal(timings)
        result.keeper_apply = {
            name: Latency.of(durations) for name, durations in sorted(keeper_timings.items())
        }
        return result
    finally:
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=options.connect_timeout_s)
            # pybit runs the socket's on_close callback on its own thread after `exit()` has
            # returned; it posts to this loop, which must still be open when it does.
            await asyncio.sleep(STREAM_CLOSE_GRACE_S)
        await asyncio.to_thread(venue.close)
        await asyncio.to_thread(journal.close)
        await asyncio.to_thread(server.stop)


# --------------------------------------------------------------------------- the run


def _samples(items: Sequence[str]) -> list[str]:
    return list(items[:SAMPLES])


def evaluate(passes: Sequence[PassResult]) -> list[Check]:
    """Correctness checks (each fill exactly once, sizes agree) and the p99 targets."""
    checks: list[Check] = []
    for result in passes:
        where = f"{result.load} {result.path}"
        checks.append(
            Check(
                f"{where}: fills executed at the sim",
                f"{result.fills_at_sim}/{result.expected_fills}",
                "all",
                result.fills_at_sim == result.expected_fills,
                True,
            )
        )
        end = "projection" if result.path == "bot" else "pybit callback"
        checks.append(
            Check(
                f"{where}: fills that reached the {end}",
                f"{result.delivered}/{result.fills_at_sim}",
                "all",
                not result.missing and result.delivered == result.fills_at_sim,
                True,
                _samples(result.missing),
            )
        )
        checks.append(
            Check(
                f"{where}: applied more than once" if result.path == "bot" else f"{where}: twice",
                len(result.duplicates),
                "0",
                not result.duplicates,
                True,
                _samples(result.duplicates),
            )
        )
        if result.unknown:
            checks.append(
                Check(
                    f"{where}: fills never stamped at the sim",
                    len(result.unknown),
                    "0",
                    False,
                    True,
                    _samples(result.unknown),
                )
            )
        if result.path == "bot":
            checks.append(
                Check(
                    f"{where}: strategy book size = sim position",
                    f"{result.strategy_size} / {result.sim_size}",
                    "equal",
                    bool(result.sim_size) and result.strategy_size == result.sim_size,
                    True,
                )
            )
            checks.append(
                Check(
                    f"{where}: venue position in projection = sim position",
                    f"{result.position_size} / {result.sim_size}",
                    "equal",
                    bool(result.sim_size) and result.position_size == result.sim_size,
                    True,
                )
            )
            checks.append(
                Check(
                    f"{where}: fill -> projection p99",
                    f"{result.latency.p99_ms} ms",
                    f"< {TARGET_P99_MS} ms",
                    result.latency.p99_ms < TARGET_P99_MS,
                    False,
                )
            )
    return checks


def _filesystem(path: Path) -> str:
    """The file system type under `path` (where the journal's fsyncs go), if `df` says."""
    df = shutil.which("df")
    if df is None:
        return "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        answer = subprocess.run(  # noqa: S603 - a fixed command on our own path
            [df, "--output=fstype", str(path)], capture_output=True, text=True, timeout=5
        )
        lines = answer.stdout.split()
        return lines[-1] if len(lines) > 1 else "?"
    return "?"


async def _run_passes(options: StreamLatencyOptions, root: Path, passes: list[PassResult]) -> None:
    for load in options.loads:
        options.log(f"{load.name}: {load.describe()}, {load.expected_fills} fills")
        for path in ("floor", "bot"):
            started = time.monotonic()
            if path == "floor":
                result = await _floor_pass(load, options)
            else:
                result = await _bot_pass(load, root, options)
            passes.append(result)
            options.log(
                f"  {path}: {result.delivered}/{result.fills_at_sim} fills, "
                f"p50 {result.latency.p50_ms} ms, p99 {result.latency.p99_ms} ms, "
                f"max {result.latency.max_ms} ms ({time.monotonic() - started:.1f} s)"
            )


def run_stream_latency(options: StreamLatencyOptions) -> StreamLatencyReport:
    """Run every load's floor and bot passes; nothing it started outlives it."""
    started_at = run_started_at()
    root = options.work_dir or Path(tempfile.mkdtemp(prefix="stream-latency-"))
    root.mkdir(parents=True, exist_ok=True)
    passes: list[PassResult] = []
    wall = time.monotonic()
    try:
        asyncio.run(_run_passes(options, root, passes))
    finally:
        if options.work_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return StreamLatencyReport(
        options={
            "loads": [asdict(load) | {"describe": load.describe()} for load in options.loads],
            "drain_timeout_s": options.drain_timeout_s,
        },
        started_at=started_at,
        passes=passes,
        checks=evaluate(passes),
        facts={
            "clock": "time.perf_counter_ns, one process",
            "journal_dir_filesystem": _filesystem(
                root.parent if options.work_dir is None else root
            ),
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "wall_s": round(time.monotonic() - wall, 1),
        },
    )


# --------------------------------------------------------------------------- output


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def print_report(report: StreamLatencyReport, console: Console) -> None:
    table = Table(title=f"stream latency {report.started_at}: from the fill at the simulator, ms")
    for column in ("load", "up to", "n", "p50", "p99", "max", f"p99<{TARGET_P99_MS:g}"):
        table.add_column(column, no_wrap=True)
    for load in dict.fromkeys(result.load for result in report.passes):
        floor, bot = report.result(load, "floor"), report.result(load, "bot")
        rate = max((r.achieved_fills_per_s for r in report.passes if r.load == load), default=0)
        label = f"{load} ({rate:.0f}/s)"
        if floor is not None:
            lat = floor.latency
            row = (str(lat.count), _ms(lat.p50_ms), _ms(lat.p99_ms), _ms(lat.max_ms))
            table.add_row(label, "floor: bare pybit callback", *row, "")
            label = ""
        if bot is None:
            continue
        lat = bot.latency
        row = (str(lat.count), _ms(lat.p50_ms), _ms(lat.p99_ms), _ms(lat.max_ms))
        table.add_row(label, "bot: projection applied", *row, _mark(lat.p99_ms < TARGET_P99_MS))
        for name, seg in bot.segments.items():
            row = (str(seg.count), _ms(seg.p50_ms), _ms(seg.p99_ms), _ms(seg.max_ms))
            table.add_row("", f"  {name}", *row, "")
        if floor is not None:
            above = (
                _ms(round(lat.p50_ms - floor.latency.p50_ms, 3)),
                _ms(round(lat.p99_ms - floor.latency.p99_ms, 3)),
                _ms(round(lat.max_ms - floor.latency.max_ms, 3)),
            )
            table.add_row("", "  bot above floor", "", *above, "")
    console.print(table)
    correct = sum(1 for check in report.checks if check.correctness and check.ok)
    total = sum(1 for check in report.checks if check.correctness)
    console.print(f"correctness checks: {correct}/{total} ok", highlight=False)
    for check in report.checks:
        if not check.ok:
            mark = "FAIL" if check.correctness else "miss"
            console.print(
                f"  {mark} {check.name}: {check.value} (target {check.target})", highlight=False
            )
            for sample in check.samples:
                console.print(f"    {sample}", highlight=False)
    for result in report.passes:
        if result.path == "bot":
            _print_breakdown(result, console)
    console.print(
        "journal (a fill's writes: synchronous=NORMAL) on "
        f"{report.facts.get('journal_dir_filesystem')}; {report.facts.get('cpus')} CPUs; "
        f"wall {report.facts.get('wall_s')} s",
        highlight=False,
    )


def _mark(ok: bool) -> str:
    return "ok" if ok else "miss"


def _print_breakdown(result: PassResult, console: Console) -> None:
    """Where the bot's time goes under this load: keeper.apply per message type (the relay
    applies them one at a time), and each journal call (await = hop + queue + work)."""
    table = Table(title=f"{result.load}: the bot's time per message and journal call, ms")
    for column in ("what", "n", "p50", "p99", "work p50", "work p99", "work total"):
        table.add_column(column, no_wrap=True)
    for name, lat in result.keeper_apply.items():
        table.add_row(
            f"keeper.apply({name})", str(lat.count), _ms(lat.p50_ms), _ms(lat.p99_ms), "", "", ""
        )
    for name, stats in result.journal_calls.items():
        table.add_row(
            f"journal.call({name})",
            str(int(stats["calls"])),
            _ms(stats["await_p50_ms"]),
            _ms(stats["await_p99_ms"]),
            _ms(stats["work_p50_ms"]),
            _ms(stats["work_p99_ms"]),
            f"{stats['work_total_ms']:.0f}",
        )
    console.print(table)


def write_json(report: StreamLatencyReport, path: Path | None) -> Path:
    return write_results(report.as_json(), "stream-latency", report.started_at, path)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench.stream_latency", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--rate", type=int, default=200, help="fills/s of the loaded run (200)")
    parser.add_argument("--fills", type=int, default=2000, help="fills of the loaded run (2000)")
    parser.add_argument(
        "--modest-rate", type=int, default=20, help="fills/s of the modest run (20)"
    )
    parser.add_argument(
        "--modest-fills", type=int, default=300, help="fills of the modest run (300)"
    )
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="where the journals go (kept); default tmp"
    )
    parser.add_argument("--json-out", type=Path, default=None, help="result file")
    return parser.parse_args(argv)


def _load(name: str, fills_per_s: int, fills: int) -> LoadSpec:
    """As many orders a second as Bybit allows (10) that split `fills_per_s` evenly."""
    for orders_per_s in range(ORDER_CREATE_PER_S, 0, -1):
        if fills_per_s % orders_per_s == 0:
            return LoadSpec(name, fills_per_s, fills, orders_per_s)
    raise ValueError(f"{fills_per_s} fills/s cannot be split evenly")  # unreachable: 1 divides


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _arguments(argv)
    console = Console(width=shutil.get_terminal_size((120, 24)).columns)
    try:
        loads = (
            _load("modest", arguments.modest_rate, arguments.modest_fills),
            _load(f"{arguments.rate}/s", arguments.rate, arguments.fills),
        )
    except ValueError as exc:
        say_error(console, "bad load", exc)
        return 2
    options = StreamLatencyOptions(
        loads=loads,
        work_dir=arguments.work_dir,
        json_out=arguments.json_out,
    )
    configure(level="WARNING")
    try:
        report = run_stream_latency(options)
    except BenchError as exc:
        say_error(console, "benchmark could not run", exc)
        return 2
    print_report(report, console)
    console.print(f"results: {write_json(report, options.json_out)}", highlight=False)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
