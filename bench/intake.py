"""Intake benchmark: signal to order, against the floor measured in the same run.

One machine, one clock: `time.perf_counter_ns` (CLOCK_MONOTONIC, shared by every process on
Linux). The simulator runs in this process; each order-create request is stamped as it
reaches `SimExchange.place_order` (orderLinkIds are deterministic, so a signal id says which
order is its own). The bot runs as a subprocess (`python -m bot run`) against it, as a user
runs it, with 20 strategies on 20 keys (Bybit allows 10 orders/s per account: at 100
signals/s each key then runs at half its limit), each signal routed to one strategy by its
`strategy` field.

The simulator walks BTCUSDT's price by 1 bp every 100 ms, as a trading market ticks: the
bot's prices then come from the public ticker stream, as they would live (with a price that
never moves, a quiet stream is only heard from at its pings, and the bot fetches prices by
REST whenever the last word is older than `venue.market_cache_s`).

Measured, each over `--signals` signals at a steady `--rate` and at twice that:

- **webhook 202**: the sender's wait, request sent → answer received;
- **signal → order**: request sent → the order-create request at the simulator;
- **MQTT → order**: publish (QoS 1) to a real mosquitto → the order-create at the simulator;
- **floor**: a bare POST to an empty endpoint on the bot's own server stack (`bot.app`'s
  app on uvicorn, the endpoint served as the webhooks are, in a subprocess), and a bare pybit
  `place_order` to the same simulator, both at the same pace;
  the bot's overhead is signal → order minus (POST + place_order), p50 and p99;
- **burst**: 300 signals at once over 3 strategies and 3 keys, the simulator enforcing
  Bybit's limits: time to the last order against the minimum the limits allow, and 10006s;
- **footprint**: the bot's start-up time to ready, RSS after start-up, after the loads, and
  half-way through and after `--footprint-signals` (10,000) more at 100/s (no growth), CPU per
  signal over the loads and over each half of the footprint's signals (no growth).

The timed loads start once the bot's start-up reads have left Bybit's IP window
(`STARTUP_QUIET_S` after it is ready): with 20 keys on one address, start-up asks the venue
8 things a key (the key, its position mode per symbol, then positions, executions, closed PnL,
open orders and the wallet once, as each account stream connects: 160 requests in a second;
14 a key, 280, before they were read once and shared), and the bot
holds every address to `IP_REQUESTS_PER_WINDOW` (550) requests in any 5 s, Bybit's limit less
a margin. A 50/s load started at once filled that window 4.2 s in, with the start-up's
requests still in it, and every key's orders then waited up to 0.15-0.6 s for them to age
out (the p99 of about 230 ms at 50/s: one stall in 2,000 signals, at signal 210 in every run):
the bot keeping Bybit's IP limit after a start, not its signal-to-order path. At 100/s the
orders alone are 500 in 5 s: with the exit scans' reads (2 a key every 25 orders) that load
runs near the limit all along, and its tail includes waits for it.

The bot's journal is NORMAL (its default); `--journal-synchronous FULL` runs it as
config/mainnet.toml does, its promises waiting for the disk. The bot runs wherever the system
schedules it (its default); `--cpus 1` pins it to CPU 1 (`cpus = [1]`, see bot/cpus.py).

`--raw` keeps every signal's own figures in the report (`raw` beside each load's summary: its
id, when it was sent and when its order arrived, in Unix ns, its latency and the 202's wait), so
that the slow ones can be placed in time and against the bot's log; `--work-dir` keeps that log
(`bot.log`) and the journal (`var/`) instead of removing them.

Run: `make bench-intake` or `python -m bench.intake [--signals N] [--rate R] [--json-out F]
[--raw] [--work-dir D]`.
Exit code 0: every signal became exactly one order; 1: a correctness check failed; 2: the
benchmark could not run. Targets are reported, never enforced.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as paho_mqtt
import requests
import uvicorn
from fastapi import APIRouter, Request, Response
from paho.mqtt.enums import CallbackAPIVersion
from pybit.unified_trading import HTTP
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from bench.common import (
    UNLIMITED_RISK,
    Spread,
    cpu_seconds,
    finish,
    free_port,
    machine,
    rss_mb,
    run_started_at,
    say_error,
    stop_children_on_sigterm,
    this_tree,
    wait_until,
)
from bot.app import DirectRoute, create_app
from bot.config import HttpConfig
from bot.execution.ids import order_link_id
from bot.execution.pacing import IP_WINDOW_S
from bot.http_limits import guarded_protocol
from bot.sim import SimAccountSpec, SimExchange, SimServer, SimulatorConfig
from signals.voiceofchain import SIGNATURE_HEADER, sign

__all__ = ["main", "run"]

#: Keys (one strategy each): 100 signals/s at Bybit's 10 orders/s per account would run every
#: key at its limit, measuring the pacing queue; 20 keys keep each at half of it.
STRATEGIES: Final = 20
BURST_SIGNALS: Final = 300
BURST_KEYS: Final = 3
ORDERS_PER_S_PER_KEY: Final = 10  # Bybit's /v5/order/create limit per UID
WEBHOOK_SECRET: Final = "bench-webhook-secret-" + "0" * 16
#: The footprint load: 100/s over 20 keys, half of Bybit's limits (what 2 CPUs sustain).
FOOTPRINT_RATE: Final = 100.0
TARGETS: Final = {
    "overhead_p50_ms": 1.0,
    "overhead_p99_ms": 2.0,
    "webhook_202_p99_ms": 2.0,
    "burst_ratio": 1.2,
    "rss_mb": 150.0,
    "ready_s": 2.0,
}
_MS: Final = 1_000_000
#: How long after the bot is ready the timed loads wait: its start-up's requests then have
#: left the address's window (`IP_WINDOW_S`), and the loads measure signal to order, not the
#: start-up's share of Bybit's IP limit (see the module's docstring).
STARTUP_QUIET_S: Final = IP_WINDOW_S + 0.5
#: How long a footprint reading waits for the bot to finish the work of the signals before it.
SETTLE_S: Final = 1.0
#: The simulator's price walk of BTCUSDT during the run: 1 bp a step, every 100 ms.
MARKET_WALK: Final = {"seed": 11, "step_bps": 1, "interval_ms": 100}


@dataclass(frozen=True)
class BotOptions:
    """The bot's settings a run compares: `journal_synchronous` (NORMAL, its default; FULL,
    as config/mainnet.toml sets it) and `cpus` (empty, its default: any)."""

    synchronous: str = "NORMAL"
    cpus: tuple[int, ...] = ()


class BenchError(Exception):
    """The benchmark could not run (not a finding about the bot)."""


def _wait(probe: Callable[[], bool], timeout_s: float, what: str) -> None:
    if not wait_until(probe, timeout_s):
        raise BenchError(f"timed out after {timeout_s:g} s waiting for {what}")


def _process_stats(pid: int) -> tuple[float, float]:
    """(RSS in MB, CPU seconds user+system) of a running process."""
    rss, cpu = rss_mb(pid), cpu_seconds(pid)
    if rss is None or cpu is None:
        raise BenchError(f"process {pid} is gone")
    return rss, cpu


#: `time.perf_counter_ns()` minus `time.time_ns()`, read once: the raw samples' stamps on the
#: one clock every process shares, as Unix time for a reader to set beside the bot's log.
_PERF_TO_UNIX_NS: Final = time.time_ns() - time.perf_counter_ns()


def _raw(
    sent: dict[str, int], arrivals: dict[str, int], ids: dict[str, str], waits: dict[str, int]
) -> list[dict[str, Any]]:
    """Each signal's own figures, in the order sent: its id, sent and order-arrival as Unix ns,
    signal → order and the 202's wait in ms (None where there was no order or no answer)."""
    rows = []
    for link, at in sorted(sent.items(), key=lambda item: item[1]):
        arrived = arrivals.get(link)
        wait = waits.get(link)
        rows.append(
            {
                "id": ids[link],
                "sent_unix_ns": at + _PERF_TO_UNIX_NS,
                "order_unix_ns": None if arrived is None else arrived + _PERF_TO_UNIX_NS,
                "latency_ms": None if arrived is None else round((arrived - at) / _MS, 3),
                "answer_ms": None if wait is None else round(wait / _MS, 3),
            }
        )
    return rows


def _summary(samples_ns: Sequence[int]) -> dict[str, float | int]:
    spread = Spread.of(samples_ns, _MS)
    if spread is None:
        nan = float("nan")
        return {"n": 0, "p50_ms": nan, "p99_ms": nan, "max_ms": nan, "mean_ms": nan}
    return spread.named("_ms")


class _Simulator:
    """The simulator in this process, stamping each order-create as it arrives."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.exchange = SimExchange(SimulatorConfig(seed=11, starting_balance_usdt=10**7))
        # A market that trades: the price ticks every 100 ms, as Bybit pushes a ticker, so the
        # bot's prices come from the public stream as they would live.
        self.exchange.update_prices({"BTCUSDT": {"walk": MARKET_WALK}})
        for key in keys:
            self.exchange.add_account(
                SimAccountSpec(
                    api_key=key, api_secret=SecretStr(f"{key}-secret"), ips=["127.0.0.1"]
                )
            )
        self.arrivals: dict[str, int] = {}
        original = self.exchange.place_order

        def stamped(api_key: str, params: Any) -> dict[str, Any]:
            if params.order_link_id:
                self.arrivals.setdefault(params.order_link_id, time.perf_counter_ns())
            return original(api_key, params)

        self.exchange.place_order = stamped  # type: ignore[method-assign]
        self.server = SimServer(self.exchange)

    def __enter__(self) -> _Simulator:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def rate_limited(self) -> int:
        return int(self.exchange.stats()["answers_by_ret_code"].get("10006", 0))


_BOT_CONFIG: Final = """
environment = "sim"
state_dir = "{state}"
journal_synchronous = "{synchronous}"
cpus = {cpus}
[http]
host = "127.0.0.1"
port = {port}
[venue]
sim_url = "{sim_url}"
[risk]
symbols = ["BTCUSDT"]
{limits}max_signal_age_s = 60
[sources.voiceofchain]
requests_per_s = 100000
burst = 100000
{mqtt}
"""


class _Bot:
    """`python -m bot run` as a subprocess, with one `follow` strategy per key."""

    def __init__(
        self,
        work: Path,
        sim_url: str,
        keys: Sequence[str],
        mqtt_port: int,
        options: BotOptions,
    ) -> None:
        """`mqtt_port` 0: no MQTT."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        client_id = f"bench-{secrets.token_hex(3)}"
        mqtt = (
            f'[mqtt]\nenabled = true\nport = {mqtt_port}\nclient_id = "{client_id}"'
            if mqtt_port
            else ""
        )
        text = _BOT_CONFIG.format(
            state=work / "var",
            synchronous=options.synchronous,
            cpus=list(options.cpus),
            port=self.port,
            sim_url=sim_url,
            mqtt=mqtt,
            limits=UNLIMITED_RISK,
        )
        for index in range(len(keys)):
            text += (
                f'\n[keys.k{index}]\nenvironment = "sim"\n[strategies.s{index}]\nplugin = "follow"'
                f'\nkey = "k{index}"\n[strategies.s{index}.params]\nrisk_fraction = 0.001\n'
                "max_notional_usdt = 200\n"
            )
        self.config = work / "bot.toml"
        self.config.write_text(text)
        self.env = this_tree(os.environ) | {"BOT_WEBHOOK_SECRET_VOICEOFCHAIN": WEBHOOK_SECRET}
        for index, key in enumerate(keys):
            self.env[f"BOT_KEY_K{index}_API_KEY"] = key
            self.env[f"BOT_KEY_K{index}_API_SECRET"] = f"{key}-secret"
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_s = 0.0
        self.log = work / "bot.log"

    def start(self) -> None:
        started = time.perf_counter()
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own CLI
                [sys.executable, "-m", "bot", "run", "--config", str(self.config)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.config.parent,
            )

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise BenchError(f"the bot exited at start-up: {self.log.read_text()[-800:]}")
            try:
                return requests.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        _wait(ready, 30, "the bot to be ready")
        self.ready_s = time.perf_counter() - started

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


def _signal_body(signal_id: str, strategy: str) -> bytes:
    return json.dumps(
        {
            "id": signal_id,
            "symbol": "BTCUSDT",
            "side": "buy",
            "stop_loss": 90000,
            "strategy": strategy,
            "ts": int(time.time() * 1000),
        }
    ).encode()


def _paced(count: int, rate: float, send: Callable[[int], None], workers: int = 16) -> None:
    """Call `send(i)` for i in range(count) at a steady `rate`, on a pool of threads."""
    interval = 1 / rate
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for index in range(count):
            due = start + index * interval
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            pool.submit(send, index)


def _webhook_load(
    bot: _Bot,
    sim: _Simulator,
    count: int,
    rate: float,
    tag: str,
    strategies: int,
    raw: bool = False,
) -> dict[str, Any]:
    """`count` signed signals at `rate`; the 202 wait and signal → order per signal (and each
    signal's own figures under `raw` when `raw`)."""
    local = threading.local()
    sent: dict[str, int] = {}
    ids: dict[str, str] = {}
    waits: dict[str, int] = {}  # by orderLinkId
    answers: dict[str, int | str] = {}  # by orderLinkId: the status, or why there was none

    def send(index: int) -> None:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        strategy = f"s{index % strategies}"
        signal_id = f"{tag}-{index}"
        body = _signal_body(signal_id, strategy)
        headers = {SIGNATURE_HEADER: sign(WEBHOOK_SECRET, body, int(time.time()))}
        link = order_link_id(strategy, "voiceofchain", signal_id, 0)
        started = time.perf_counter_ns()
        sent[link] = started
        ids[link] = signal_id
        try:
            answer = session.post(
                f"{bot.url}/webhooks/voiceofchain", data=body, headers=headers, timeout=10
            )
        except requests.RequestException as exc:  # reported with the answers, not lost
            answers[link] = f"no answer ({type(exc).__name__})"
            return
        waits[link] = time.perf_counter_ns() - started
        answers[link] = answer.status_code

    _paced(count, rate, send)
    accepted = [link for link, answer in answers.items() if answer == 202]

    def orders_missing() -> int:
        return sum(link not in sim.arrivals for link in accepted)

    if not wait_until(lambda: orders_missing() == 0, 60):
        raise BenchError(
            f"{tag}: {orders_missing()} of the {len(accepted)} accepted signals had no order "
            "after 60 s (the bot's log says why)"
        )
    report: dict[str, Any] = {
        "rate_per_s": rate,
        "accepted": len(accepted),
        "answers": dict(Counter(str(answer) for answer in answers.values())),
        "webhook_202": _summary(list(waits.values())),
        "signal_to_order": _summary([sim.arrivals[link] - sent[link] for link in accepted]),
    }
    if raw:
        report["raw"] = _raw(sent, sim.arrivals, ids, waits)
    return report


def _mqtt_load(
    sim: _Simulator, port: int, count: int, rate: float, strategies: int, raw: bool = False
) -> dict[str, Any]:
    """`count` signals published with QoS 1 at `rate`; publish → order per signal (and each
    signal's own figures under `raw` when `raw`)."""
    client = paho_mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{secrets.token_hex(3)}"
    )
    client.connect("127.0.0.1", port)
    client.loop_start()
    sent: dict[str, int] = {}
    ids: dict[str, str] = {}
    lock = threading.Lock()
    try:

        def publish(index: int) -> None:
            strategy = f"s{index % strategies}"
            signal_id = f"mqtt-{index}"
            body = _signal_body(signal_id, strategy)
            link = order_link_id(strategy, "voiceofchain", signal_id, 0)
            with lock:
                ids[link] = signal_id
                sent[link] = time.perf_counter_ns()
                client.publish(f"signals/voiceofchain/{strategy}", body, qos=1)

        _paced(count, rate, publish, workers=1)
        _wait(lambda: all(link in sim.arrivals for link in sent), 60, "every MQTT order")
    finally:
        client.loop_stop()
        client.disconnect()
    report: dict[str, Any] = {
        "rate_per_s": rate,
        "publish_to_order": _summary([sim.arrivals[link] - at for link, at in sent.items()]),
    }
    if raw:
        report["raw"] = _raw(sent, sim.arrivals, ids, {})
    return report


def _floor_server(port: int) -> None:
    """A bare POST endpoint on the bot's own HTTP stack: `bot.app.create_app` on uvicorn with
    the bot's guarded protocol (`bot.http_limits`), the endpoint a `DirectRoute` as the
    webhooks are (run in a subprocess by `--serve-floor`)."""

    async def empty(request: Request) -> Response:
        await request.body()
        return Response(status_code=202)

    async def healthy() -> dict[str, Any]:
        return {"ready": True}

    router = APIRouter()
    router.add_api_route("/empty", empty, methods=["POST"], route_class_override=DirectRoute)
    app = create_app([router], healthy)
    limits = HttpConfig()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="error",
        access_log=False,
        http=guarded_protocol(limits.max_connections, limits.head_timeout_s),
    )


@contextmanager
def _floor_endpoint() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(  # noqa: S603 - our own module
        [sys.executable, "-m", "bench.intake", "--serve-floor", str(port)],
        env=this_tree(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/empty"

    def up() -> bool:
        try:
            return requests.post(url, data=b"{}", timeout=1).status_code == 202
        except requests.RequestException:
            return False

    try:
        _wait(up, 20, "the floor endpoint")
        yield url
    finally:
        process.terminate()
        process.wait(10)


def _floor(sim: _Simulator, keys: Sequence[str], count: int, rate: float) -> dict[str, Any]:
    """A bare POST and a bare pybit place_order, at the same pace."""
    local = threading.local()
    posts: list[int] = []
    with _floor_endpoint() as url:

        def post(index: int) -> None:
            session = getattr(local, "session", None) or requests.Session()
            local.session = session
            body = _signal_body(f"floor-{index}", "s0")
            started = time.perf_counter_ns()
            session.post(url, data=body, timeout=10)
            posts.append(time.perf_counter_ns() - started)

        _paced(count, rate, post)
    sessions = []
    for key in keys:
        session = HTTP(api_key=key, api_secret=f"{key}-secret", max_retries=1)
        session.endpoint = sim.server.url
        sessions.append(session)
    placed: dict[str, int] = {}

    def place(index: int) -> None:
        link = f"floor-{index}-{secrets.token_hex(4)}"
        placed[link] = time.perf_counter_ns()
        sessions[index % len(sessions)].place_order(
            category="linear",
            symbol="BTCUSDT",
            side="Buy",
            orderType="Market",
            qty="0.001",
            orderLinkId=link,
        )

    _paced(count, rate, place)
    _wait(lambda: all(link in sim.arrivals for link in placed), 30, "the floor's orders")
    return {
        "bare_post": _summary(posts),
        "bare_place_order_to_arrival": _summary(
            [sim.arrivals[link] - at for link, at in placed.items()]
        ),
    }


def _burst(work: Path, signals: int, options: BotOptions) -> dict[str, Any]:
    """`signals` (300) at once over 3 strategies and 3 keys, Bybit's limits enforced."""
    keys = [f"burst-key-{index}" for index in range(BURST_KEYS)]
    with _Simulator(keys) as sim:
        (work / "burst").mkdir(exist_ok=True)
        bot = _Bot(work / "burst", sim.server.url, keys, 0, options)
        bot.start()
        try:
            first = time.perf_counter_ns()
            result = _webhook_load(bot, sim, signals, 100_000, "burst", BURST_KEYS)
            last = max(sim.arrivals.values())
        finally:
            bot.stop()
        per_key = signals / BURST_KEYS
        # The first 10 of a key go at once, then 10 more each second.
        minimum_s = max(per_key - ORDERS_PER_S_PER_KEY, 1) / ORDERS_PER_S_PER_KEY
        elapsed_s = (last - first) / 1e9
        return {
            "signals": signals,
            "orders": result["signal_to_order"]["n"],
            "rate_limited_10006": sim.rate_limited(),
            "elapsed_s": round(elapsed_s, 2),
            "minimum_s": minimum_s,
            "ratio": round(elapsed_s / minimum_s, 3),
        }


@contextmanager
def _mosquitto(work: Path) -> Iterator[int]:
    binary = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").is_file() else None
    )
    if binary is None:
        raise BenchError("mosquitto is not installed: `make setup` installs it")
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    process = subprocess.Popen(  # noqa: S603 - the broker
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def accepts() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            return False
        return True

    try:
        _wait(accepts, 10, "mosquitto")
        yield port
    finally:
        process.terminate()
        process.wait(10)


def run(
    signals: int = 2000,
    rate: float = 50.0,
    work_dir: Path | None = None,
    burst_signals: int = BURST_SIGNALS,
    footprint_signals: int = 10_000,
    options: BotOptions | None = None,
    raw: bool = False,
) -> dict[str, Any]:
    """The whole benchmark; returns the report. `options`: the bot's settings under test
    (its defaults when None); `raw`: keep each signal's own figures in the loads' reports.
    `work_dir` is kept (the bot's log, its journal); without it, a temporary one is removed."""
    options = options or BotOptions()
    owned = work_dir is None
    work = work_dir or Path(tempfile.mkdtemp(prefix="bench-intake-"))
    keys = [f"bench-key-{index}" for index in range(STRATEGIES)]
    failures: list[str] = []
    try:
        with _Simulator(keys) as sim, _mosquitto(work) as broker:
            bot = _Bot(work, sim.server.url, keys, broker, options)
            bot.start()
            try:
                time.sleep(STARTUP_QUIET_S)
                rss_start, cpu_start = _process_stats(bot.pid)
                loads = [
                    _webhook_load(bot, sim, signals, pace, f"w{int(pace)}", STRATEGIES, raw)
                    for pace in (rate, rate * 2)
                ]
                mqtt = _mqtt_load(sim, broker, signals // 2, rate, STRATEGIES, raw)
                rss_end, cpu_end = _process_stats(bot.pid)
                # Footprint: many more signals; RSS and CPU per signal over each half (no
                # growth: a journal lookup that scans grows with every signal). Each reading
                # waits for the work of the signals before it (fills, the journal) to end.
                half = footprint_signals // 2
                time.sleep(SETTLE_S)
                _, cpu_settled = _process_stats(bot.pid)
                _webhook_load(bot, sim, half, FOOTPRINT_RATE, "fa", STRATEGIES)
                time.sleep(SETTLE_S)
                rss_half, cpu_half = _process_stats(bot.pid)
                _webhook_load(bot, sim, footprint_signals - half, FOOTPRINT_RATE, "fb", STRATEGIES)
                time.sleep(SETTLE_S)
                rss_full, cpu_full = _process_stats(bot.pid)
            finally:
                bot.stop()
            floor = _floor(sim, keys, signals // 2, rate)
        burst = _burst(work, burst_signals, options)
        total = sum(load["signal_to_order"]["n"] for load in loads) + mqtt["publish_to_order"]["n"]
        for load in loads:
            if load["accepted"] != signals:
                failures.append(
                    f"{load['rate_per_s']}/s: {load['accepted']} of {signals} accepted; "
                    f"answers {load['answers']}"
                )
        if burst["orders"] != burst_signals:
            failures.append(f"burst: {burst['orders']} orders of {burst_signals}")
        floor_ms = {
            q: floor["bare_post"][q] + floor["bare_place_order_to_arrival"][q]
            for q in ("p50_ms", "p99_ms")
        }
        for load in loads:
            load["overhead_over_floor_ms"] = {
                q: round(load["signal_to_order"][q] - floor_ms[q], 3) for q in ("p50_ms", "p99_ms")
            }
            load["ratio_to_floor"] = round(
                load["signal_to_order"]["p50_ms"] / floor_ms["p50_ms"], 2
            )
        return {
            "started_at": run_started_at(),
            "machine": machine(),
            "journal_synchronous": options.synchronous,
            "bot_cpus": list(options.cpus),
            "signals_per_load": signals,
            "strategies_and_keys": STRATEGIES,
            "webhook": loads,
            "mqtt": mqtt,
            "floor": floor,
            "floor_ms": floor_ms,
            "burst": burst,
            "footprint": {
                "ready_s": round(bot.ready_s, 2),
                "rss_after_start_mb": round(rss_start, 1),
                "rss_after_load_mb": round(rss_end, 1),
                "footprint_signals": footprint_signals,
                "rss_after_half_mb": round(rss_half, 1),
                "rss_after_all_mb": round(rss_full, 1),
                "cpu_ms_per_signal": round((cpu_end - cpu_start) * 1000 / max(total, 1), 3),
                "cpu_ms_per_signal_first_half": round(
                    (cpu_half - cpu_settled) * 1000 / max(half, 1), 3
                ),
                "cpu_ms_per_signal_second_half": round(
                    (cpu_full - cpu_half) * 1000 / max(footprint_signals - half, 1), 3
                ),
            },
            "targets": TARGETS,
            "failures": failures,
        }
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)


def _work_dir_problem(work: Path) -> str | None:
    """Why `work` cannot hold a run (created if absent; a used one would hand the bot an old
    journal), or None."""
    try:
        work.mkdir(parents=True, exist_ok=True)
        if any(work.iterdir()):
            return f"--work-dir {work} is not empty (a run there would reuse its journal)"
    except OSError as exc:
        return f"--work-dir {work}: {exc.strerror or exc}"
    return None


def _table(report: dict[str, Any]) -> Table:
    table = Table(
        title=f"intake {report['started_at']} ({report['machine']['cpus']} CPUs, journal "
        f"{report['journal_synchronous']}, bot on CPUs {report['bot_cpus'] or 'any'}), ms"
    )
    for column in ("what", "n", "p50", "p99", "max"):
        table.add_column(column)

    def row(what: str, summary: dict[str, float]) -> None:
        table.add_row(
            what,
            str(summary["n"]),
            f"{summary['p50_ms']:.2f}",
            f"{summary['p99_ms']:.2f}",
            f"{summary['max_ms']:.2f}",
        )

    for load in report["webhook"]:
        pace = f"{load['rate_per_s']:g}/s"
        row(f"webhook 202 @ {pace}", load["webhook_202"])
        row(f"signal -> order @ {pace}", load["signal_to_order"])
    row(
        f"MQTT publish -> order @ {report['mqtt']['rate_per_s']:g}/s",
        report["mqtt"]["publish_to_order"],
    )
    row("floor: bare POST", report["floor"]["bare_post"])
    row("floor: bare place_order -> sim", report["floor"]["bare_place_order_to_arrival"])
    return table


def main(argv: Sequence[str] | None = None) -> int:
    stop_children_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--signals", type=int, default=2000, help="per load (>= 2000 for the report)"
    )
    parser.add_argument("--rate", type=float, default=50.0, help="signals/s; also run at twice it")
    parser.add_argument("--footprint-signals", type=int, default=10_000, help="RSS after these")
    parser.add_argument(
        "--journal-synchronous",
        choices=("NORMAL", "FULL"),
        default="NORMAL",
        help="the bot's journal_synchronous (FULL: as config/mainnet.toml)",
    )
    parser.add_argument(
        "--cpus",
        type=int,
        nargs="*",
        default=[],
        help="pin the bot to these CPUs (its cpus setting); default: any",
    )
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument(
        "--raw",
        action="store_true",
        help="keep each signal's figures in the report (sent, order, latency, id)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="run in this directory and keep it (the bot's log, its journal); default: a "
        "temporary one, removed",
    )
    parser.add_argument("--serve-floor", type=int, default=0, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.serve_floor:
        _floor_server(arguments.serve_floor)
        return 0
    console = Console(width=shutil.get_terminal_size((120, 24)).columns)
    if arguments.work_dir is not None:
        problem = _work_dir_problem(arguments.work_dir)
        if problem:
            say_error(console, "benchmark could not run", problem)
            return 2
    try:
        report = run(
            arguments.signals,
            arguments.rate,
            work_dir=arguments.work_dir,
            footprint_signals=arguments.footprint_signals,
            options=BotOptions(arguments.journal_synchronous, tuple(arguments.cpus)),
            raw=arguments.raw,
        )
    except BenchError as exc:
        say_error(console, "benchmark could not run", exc)
        return 2
    console.print(_table(report))
    for load in report["webhook"]:
        console.print(
            f"overhead over the floor @ {load['rate_per_s']:g}/s: p50 "
            f"{load['overhead_over_floor_ms']['p50_ms']} ms, p99 "
            f"{load['overhead_over_floor_ms']['p99_ms']} ms (ratio {load['ratio_to_floor']}x)",
            highlight=False,
        )
    console.print(f"burst: {report['burst']}", highlight=False)
    console.print(f"footprint: {report['footprint']}", highlight=False)
    return finish(console, report, "intake", arguments.json_out)


if __name__ == "__main__":
    sys.exit(main())
