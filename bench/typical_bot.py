"""A typical webhook bot and ours, side by side, against one simulator.

The typical bot is the pattern users deploy: a small Flask app (`app.run(threaded=True)`,
werkzeug's threaded server) that checks the same `X-Signature` HMAC as our webhook and calls
pybit's `HTTP(...).place_order(...)` synchronously inside the request, then answers 200. Its
source is `TYPICAL_BOT_SOURCE` below, written to a file and run as a subprocess, with pybit
pointed at the simulator (`session.endpoint`, testnet=False); its orderLinkId is the signal id.

Our bot is `python -m bot run --config <tmp config>` as a subprocess: one `follow` strategy,
loose risk limits, its key secrets and webhook secret in environment variables, against the
same simulator (`[venue] sim_url`). Each bot trades with its own simulator account (both bound
to 127.0.0.1), so each has its own per-UID rate limits.

The simulator (`bot.sim`) runs in this process, as do the senders. What is stamped, where:

- **sender wait**: client side, in the sender's thread, `time.perf_counter_ns` just before the
  request is sent (a new TCP connection per signal, as TradingView opens one) and when the
  whole answer has been read.
- **signal to order**: from that same "sent" stamp to the order-create request reaching the
  simulator's `SimExchange.place_order` (wrapped; the first arrival of the signal's
  orderLinkId). After the gateway: signature checked, any injected delay already served.
- **CPU per signal**: user + system CPU of the bot's process (`/proc/<pid>/stat`, every
  thread; clock-tick resolution), from just before the first signal to `settle` after the
  last order reached the simulator, divided by the signals. Also reported: the process's idle
  CPU rate measured beforehand, and the per-signal figure with that idle rate taken out.

Scenarios, each for both bots (after a few warm-up signals each, not counted):

1. **steady**: N signals at R/s to one bot, then to the other (never both at once), over three
   symbols, alternating buy and sell so positions stay small. Bybit's 10 orders/s per UID
   would throttle either bot at 50/s, so the simulator's order/create limit is raised to
   twice the rate (and its per-IP limit lifted): both bots see the same limits.
2. **stall**: every venue request is held `stall_ms` (`SimFaults(delay=1.0, delay_ms=...)`);
   S signals per bot are sent at a steady pace, both bots interleaved, each sender giving up
   after 3 s (TradingView's limit). The stall stays on until `stall_ms` after the last signal
   was sent, then is cleared; then every signal of our bot it accepted must become exactly one
   order (it journals before answering), and what the typical bot lost is reported (senders
   that timed out, orders placed after their sender gave up, signals with no order, repeats).

Targets, reported, not enforced: our CPU per signal no more than the typical bot's; under the
stall every sender of ours answered in under 5 ms and none timed out.

Run: `python -m bench.typical_bot [--signals 500 --rate 50 --stall-signals 20 ...]`.
Exit code 0: it ran and every signal our bot accepted became exactly one order; 1: a
correctness check failed; 2: the benchmark itself could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.metadata
import json
import logging
import math
import os
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import SecretStr
from rich.console import Console
from rich.table import Table
from starlette.requests import ClientDisconnect

from bench.common import (
    REPO_ROOT,
    UNLIMITED_RISK,
    Check,
    Process,
    cpu_seconds,
    free_port,
    latency_ms,
    machine,
    run_started_at,
    say_error,
    stop_children_on_sigterm,
    wait_until,
    write_results,
)
from bot.config import load_settings
from bot.execution.ids import order_link_id
from bot.journal import Journal
from bot.sim import (
    DEFAULT_RATE_LIMITS_PER_S,
    SimAccountSpec,
    SimExchange,
    SimFaults,
    SimServer,
    SimulatorConfig,
)
from bot.sim.params import PlaceOrderParams
from signals.voiceofchain import SIGNATURE_HEADER, sign

__all__ = [
    "TYPICAL_BOT_SOURCE",
    "BenchError",
    "TypicalBotOptions",
    "main",
    "print_report",
    "run",
    "write_json",
]

BotName = Literal["typical", "ours"]
BOTS: Final[tuple[BotName, ...]] = ("typical", "ours")

SOURCE: Final = "voiceofchain"
STRATEGY: Final = "follow"
KEY_NAME: Final = "follow_bench"
WEBHOOK_PATH: Final = f"/webhooks/{SOURCE}"
TYPICAL_PATH: Final = "/webhook"
SYMBOLS: Final = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
STOP_DISTANCE: Final = Decimal("0.02")
BALANCE_USDT: Final = Decimal(100_000)
TRADINGVIEW_TIMEOUT_S: Final = 3.0
TARGET_STALL_WAIT_MS: Final = 5.0

START_TIMEOUT_S: Final = 45.0
STEADY_SENDER_TIMEOUT_S: Final = 10.0
POLL_S: Final = 0.02
SAMPLES: Final = 10
MAX_SENDERS: Final = 64
_PRICES: Final = SimulatorConfig().prices  # the simulator's starting prices (they stay put)

#: The typical bot, verbatim: what a user copies from a tutorial and deploys.
TYPICAL_BOT_SOURCE: Final = '''\
"""TradingView -> Bybit: verify the alert's signature, place the order, answer."""

import hashlib
import hmac
import json
import os
import time

from flask import Flask, abort, request
from pybit.unified_trading import HTTP

WEBHOOK_SECRET = os.environ["WEBHOOK_SECRET"].encode()
QTY = {"BTCUSDT": "0.001", "ETHUSDT": "0.01", "SOLUSDT": "0.1"}

session = HTTP(
    testnet=False,
    api_key=os.environ["BYBIT_API_KEY"],
    api_secret=os.environ["BYBIT_API_SECRET"],
)
session.endpoint = os.environ["BYBIT_URL"]  # the simulator; Bybit's own URL in production

app = Flask(__name__)


def verified(header, body):
    """X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 over "<t>." + body>."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    if "t" not in fields or "v1" not in fields:
        return False
    expected = hmac.new(
        WEBHOOK_SECRET, fields["t"].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    fresh = abs(time.time() - int(fields["t"])) < 300
    return fresh and hmac.compare_digest(expected, fields["v1"])


@app.post("/webhook")
def webhook():
    body = request.get_data()
    if not verified(request.headers.get("X-Signature", ""), body):
        abort(401)
    alert = json.loads(body)
    try:
        result = session.place_order(
            category="linear",
            symbol=alert["symbol"],
            side="Buy" if alert["side"] == "buy" else "Sell",
            orderType="Market",
            qty=QTY[alert["symbol"]],
            stopLoss=str(alert["stop_loss"]),
            orderLinkId=alert["id"],
        )
    except Exception as exc:
        app.logger.error("order for %s failed: %s", alert["id"], exc)
        return {"ok": False, "error": str(exc)}, 500
    return {"ok": True, "orderId": result["result"]["orderId"]}, 200


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ["PORT"]), threaded=True)
'''


class BenchError(Exception):
    """The benchmark itself cannot go on (a process would not start, a port is taken, ...)."""


@dataclass(frozen=True)
class TypicalBotOptions:
    """One run's shape. Times are seconds unless named otherwise."""

    signals: int = 500
    rate_per_s: float = 50.0
    stall_signals: int = 20
    stall_ms: int = 5000
    #: Signals per second and bot while the venue stalls (both bots interleaved).
    stall_rate_per_s: float = 10.0
    sender_timeout_s: float = TRADINGVIEW_TIMEOUT_S
    warmup: int = 5
    #: Before the steady load: how long each bot's idle CPU rate is measured.
    idle_s: float = 3.0
    #: After the last order reached the simulator: how long the CPU window stays open (the
    #: fills, order updates and journal writes an order brings with it).
    settle_s: float = 1.0
    #: Bound on waiting for orders to reach the simulator once the senders are done.
    orders_timeout_s: float = 30.0
    #: After the stall is cleared: bound on waiting for every signal's order.
    recover_timeout_s: float = 60.0
    work_dir: Path | None = None
    json_out: Path | None = None
    #: Our bot pinned to these CPUs (its `cpus` setting); empty: any, its default. The
    #: typical bot always runs as its users run it.
    our_cpus: tuple[int, ...] = ()
    log: Callable[[str], None] = field(default=lambda line: print(line, flush=True))

    def check(self) -> None:
        if self.signals < 1 or self.stall_signals < 1 or self.warmup < 0:
            raise ValueError("signals and stall_signals must be at least 1, warmup at least 0")
        if not 0 < self.rate_per_s <= 1000 or not 0 < self.stall_rate_per_s <= 1000:
            raise ValueError("rates must be in (0, 1000] signals/s")
        if not 0 < self.stall_ms <= 60_000:
            raise ValueError("stall_ms must be 1..60000 (the simulator's bound)")
        if self.sender_timeout_s <= 0:
            raise ValueError("sender_timeout_s must be positive")


# --------------------------------------------------------------------------- figures


# --------------------------------------------------------------------------- the simulator


class OrderClock:
    """Wraps the in-process `SimExchange.place_order`: the first moment each orderLinkId's
    create request reached it (`perf_counter_ns`), and how many times it came."""

    def __init__(self, exchange: SimExchange) -> None:
        self._lock = threading.Lock()
        self.first: dict[str, int] = {}
        self.attempts: Counter[str] = Counter()
        original = exchange.place_order

        def place_order(api_key: str, params: PlaceOrderParams) -> dict[str, Any]:
            now = time.perf_counter_ns()
            link = params.order_link_id or ""
            with self._lock:
                self.first.setdefault(link, now)
                self.attempts[link] += 1
            return original(api_key, params)

        # Before the server is built: its routes take the exchange's bound method then.
        exchange.place_order = place_order  # type: ignore[method-assign]

    def arrived(self, links: Sequence[str]) -> bool:
        with self._lock:
            return all(link in self.first for link in links)

    def first_of(self, link: str) -> int | None:
        with self._lock:
            return self.first.get(link)


class AbandonedRequests(logging.Filter):
    """Counts, and keeps out of the output, the simulator's traceback for a request whose
    client hung up while it was held (a venue call that timed out during the stall)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ClientDisconnect):
            self.count += 1
            return False
        return True


def _counter_delta(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """`after - before` of nested counters, leaving out what did not change."""
    delta: dict[str, Any] = {}
    for name, value in after.items():
        if isinstance(value, Mapping):
            inner = _counter_delta(before.get(name, {}), value)
            if inner:
                delta[name] = inner
        elif isinstance(value, int) and value != before.get(name, 0):
            delta[name] = value - before.get(name, 0)
    return delta


def _simulator(rate_per_s: float, accounts: Sequence[SimAccountSpec]) -> SimExchange:
    limits = dict(DEFAULT_RATE_LIMITS_PER_S)
    limits["/v5/order/create"] = max(limits["/v5/order/create"], math.ceil(2 * rate_per_s))
    return SimExchange(
        SimulatorConfig(
            rate_limits_per_s=limits,
            ip_requests_per_5s=1_000_000,  # both bots and the senders share 127.0.0.1
            starting_balance_usdt=BALANCE_USDT,
            accounts=list(accounts),
        )
    )


def _account(note: str) -> tuple[SimAccountSpec, str, str]:
    api_key, api_secret = f"bench{secrets.token_hex(8)}", secrets.token_hex(24)
    spec = SimAccountSpec(
        api_key=api_key,
        api_secret=SecretStr(api_secret),
        balance_usdt=BALANCE_USDT,
        ips=["127.0.0.1"],  # our bot's start-up key audit wants an IP-bound key
        note=note,
    )
    return spec, api_key, api_secret


# --------------------------------------------------------------------------- processes


def _base_env() -> dict[str, str]:
    """This environment without any BOT_ variable (the bot's configuration overrides)."""
    return {name: value for name, value in os.environ.items() if not name.startswith("BOT_")}


def _get(port: int, path: str, timeout_s: float = 2.0) -> tuple[int, bytes] | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


@dataclass
class Bot:
    """One bot under test: its process, where to send, how its orders are named."""

    name: BotName
    process: Process
    port: int
    path: str
    secret: str
    api_key: str
    accepted_status: int  # what it answers a new signal with

    def link(self, signal_id: str) -> str:
        if self.name == "ours":
            return order_link_id(STRATEGY, SOURCE, signal_id, 0)
        return signal_id


def _ours_config(state_dir: Path, port: int, sim_url: str, rate_per_s: float) -> str:
    return f"""# Written by bench/typical_bot.py for one run.
environment = "sim"
state_dir = "{state_dir}"

[http]
host = "127.0.0.1"
port = {port}

[venue]
sim_url = "{sim_url}"

[sources.voiceofchain]
# The bench's senders all come from 127.0.0.1: room for the configured rate.
requests_per_s = {max(50, math.ceil(2 * rate_per_s))}
burst = {max(100, math.ceil(4 * rate_per_s))}

[risk]
symbols = {json.dumps(list(SYMBOLS))}
# Loose limits: the bench is about latency and CPU, not the risk rules.
{UNLIMITED_RISK}max_signal_age_s = 60

[keys.{KEY_NAME}]
environment = "sim"

[strategies.{STRATEGY}]
plugin = "follow"
key = "{KEY_NAME}"

[strategies.{STRATEGY}.params]
risk_fraction = 0.01
max_notional_usdt = 500
"""


def _start_typical(root: Path, sim_url: str, api_key: str, api_secret: str) -> Bot:
    script = root / "typical_webhook_bot.py"
    script.write_text(TYPICAL_BOT_SOURCE, encoding="utf-8")
    port, secret = free_port(), secrets.token_hex(24)
    env = _base_env() | {
        "WEBHOOK_SECRET": secret,
        "BYBIT_API_KEY": api_key,
        "BYBIT_API_SECRET": api_secret,
        "BYBIT_URL": sim_url,
        "PORT": str(port),
        "PYTHONUNBUFFERED": "1",
    }
    argv = [sys.executable, str(script)]
    process = Process("typical", argv, root / "typical.log", cwd=root, env=env)
    return Bot("typical", process, port, TYPICAL_PATH, secret, api_key, 200)


def _start_ours(
    root: Path, sim_url: str, api_key: str, api_secret: str, options: TypicalBotOptions
) -> tuple[Bot, Path]:
    port, secret = free_port(), secrets.token_hex(24)
    config = root / "bot.toml"
    config.write_text(
        _ours_config(root / "var", port, sim_url, options.rate_per_s), encoding="utf-8"
    )
    (root / "no-secrets").mkdir(exist_ok=True)
    env = _base_env() | {
        f"BOT_KEY_{KEY_NAME.upper()}_API_KEY": api_key,
        f"BOT_KEY_{KEY_NAME.upper()}_API_SECRET": api_secret,
        f"BOT_WEBHOOK_SECRET_{SOURCE.upper()}": secret,
        "BOT_CPUS": ",".join(map(str, options.our_cpus)),  # empty: none, the default
    }
    argv = [
        sys.executable,
        "-m",
        "bot",
        "run",
        "--config",
        str(config),
        "--secrets-dir",
        str(root / "no-secrets"),
    ]
    process = Process("ours", argv, root / "ours.log", cwd=REPO_ROOT, env=env)
    return Bot("ours", process, port, WEBHOOK_PATH, secret, api_key, 202), config


def _typical_ready(bot: Bot) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", bot.port), 0.5):
        return True
    return False


def _ours_ready(bot: Bot) -> bool:
    """/healthz answers 200 and every account stream is live."""
    answer = _get(bot.port, "/healthz")
    if answer is None or answer[0] != 200:
        return False
    try:
        streams = json.loads(answer[1]).get("account_streams", {})
    except ValueError:
        return False
    return bool(streams) and all(state == "live" for state in streams.values())


def _wait_ready(bot: Bot, ready: Callable[[Bot], bool]) -> None:
    if not wait_until(lambda: not bot.process.alive or ready(bot), START_TIMEOUT_S, POLL_S):
        raise BenchError(
            f"the {bot.name} bot was not ready within {START_TIMEOUT_S} s:\n{bot.process.tail()}"
        )
    if not bot.process.alive:
        raise BenchError(
            f"the {bot.name} bot exited (code {bot.process.popen.returncode}):\n"
            f"{bot.process.tail()}"
        )


# --------------------------------------------------------------------------- senders


@dataclass
class Sent:
    """One signal as its sender saw it."""

    bot: BotName
    signal_id: str
    sent_ns: int
    answered_ns: int | None = None
    status: int | None = None
    error: str = ""
    timed_out: bool = False

    @property
    def wait_ns(self) -> int | None:
        return None if self.answered_ns is None else self.answered_ns - self.sent_ns


def _signal_body(signal_id: str, index: int) -> bytes:
    """Three symbols in turn; each symbol's signals alternate buy and sell."""
    symbol = SYMBOLS[index % len(SYMBOLS)]
    buy = (index // len(SYMBOLS)) % 2 == 0
    price = _PRICES[symbol]
    stop = price * (1 - STOP_DISTANCE if buy else 1 + STOP_DISTANCE)
    body = {
        "id": signal_id,
        "symbol": symbol,
        "side": "buy" if buy else "sell",
        "stop_loss": float(stop.quantize(Decimal("0.01"))),
        "ts": int(time.time() * 1000),
    }
    return json.dumps(body).encode()


def _post(bot: Bot, signal_id: str, body: bytes, timeout_s: float) -> Sent:
    """Send one signed signal on a new connection, as a webhook sender does; never raises."""
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(bot.secret, body, int(time.time())),
    }
    connection = http.client.HTTPConnection("127.0.0.1", bot.port, timeout=timeout_s)
    sent = Sent(bot.name, signal_id, time.perf_counter_ns())
    try:
        connection.request("POST", bot.path, body, headers)
        answer = connection.getresponse()
        answer.read()
        sent.answered_ns = time.perf_counter_ns()
        sent.status = answer.status
    except TimeoutError:
        sent.timed_out = True
        sent.error = f"no answer within {timeout_s} s"
    except (OSError, http.client.HTTPException) as exc:
        sent.error = f"{type(exc).__name__}: {exc}"
    finally:
        connection.close()
    if sent.wait_ns is not None and sent.wait_ns > timeout_s * 1e9:
        sent.timed_out = True  # answered, but later than the sender waits
    return sent


@dataclass(frozen=True)
class Planned:
    at_s: float  # from the start of the schedule
    bot: Bot
    signal_id: str
    index: int


def _send(plan: Sequence[Planned], timeout_s: float) -> list[Sent]:
    """Send each planned signal at its time from a pool of senders (a slow answer never
    delays the next send); every sender gives up after `timeout_s`."""
    workers = max(1, min(MAX_SENDERS, len(plan)))
    futures: list[Future[Sent]] = []
    with ThreadPoolExecutor(workers, thread_name_prefix="sender") as pool:
        started = time.perf_counter()
        for item in sorted(plan, key=lambda p: p.at_s):
            pause = started + item.at_s - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            body = _signal_body(item.signal_id, item.index)
            futures.append(pool.submit(_post, item.bot, item.signal_id, body, timeout_s))
        try:
            return [future.result(timeout=timeout_s + 30.0) for future in futures]
        except TimeoutError:
            raise BenchError(f"a sender did not finish within {timeout_s + 30.0} s") from None


def _paced(bot: Bot, ids: Sequence[str], rate_per_s: float, offset_s: float = 0.0) -> list[Planned]:
    return [
        Planned(offset_s + index / rate_per_s, bot, signal_id, index)
        for index, signal_id in enumerate(ids)
    ]


# --------------------------------------------------------------------------- one run


class Harness:
    """The simulator, both bots and what they did; `close` stops everything."""

    def __init__(self, options: TypicalBotOptions, root: Path) -> None:
        self.options = options
        self.root = root
        typical_spec, typical_key, typical_secret = _account("typical")
        ours_spec, ours_key, ours_secret = _account(KEY_NAME)
        self.exchange = _simulator(options.rate_per_s, [typical_spec, ours_spec])
        self.clock = OrderClock(self.exchange)
        self.server = SimServer(self.exchange)
        self.abandoned = AbandonedRequests()
        self.bots: dict[BotName, Bot] = {}
        self.sent: list[Sent] = []
        self.config_path: Path | None = None
        self._keys = {"typical": (typical_key, typical_secret), "ours": (ours_key, ours_secret)}

    def start(self) -> None:
        logging.getLogger("uvicorn.error").addFilter(self.abandoned)
        try:
            self.server.start()
        except RuntimeError as exc:
            raise BenchError(f"the simulator would not start: {exc}") from None
        sim_url = self.server.url
        self.bots["typical"] = _start_typical(self.root, sim_url, *self._keys["typical"])
        ours, self.config_path = _start_ours(self.root, sim_url, *self._keys["ours"], self.options)
        self.bots["ours"] = ours
        _wait_ready(self.bots["typical"], _typical_ready)
        _wait_ready(ours, _ours_ready)

    def close(self) -> dict[BotName, bool]:
        """Stop both bots and the simulator; which bots stopped on SIGTERM."""
        clean: dict[BotName, bool] = {}
        for name, bot in self.bots.items():
            clean[name] = bot.process.stop()
        with contextlib.suppress(RuntimeError):
            self.server.stop()
        logging.getLogger("uvicorn.error").removeFilter(self.abandoned)
        return clean

    def alive(self) -> None:
        for bot in self.bots.values():
            if not bot.process.alive:
                raise BenchError(
                    f"the {bot.name} bot exited (code {bot.process.popen.returncode}):\n"
                    f"{bot.process.tail()}"
                )

    def send(self, plan: Sequence[Planned], timeout_s: float) -> list[Sent]:
        self.alive()
        sent = _send(plan, timeout_s)
        self.sent.extend(sent)
        return sent

    def orders_by_link(self, bot: Bot) -> Counter[str]:
        """The bot's orders by orderLinkId (not the venue's own TP/SL orders, which have none)."""
        return Counter(
            str(order["orderLinkId"])
            for order in self.exchange.orders(bot.api_key)
            if order["orderLinkId"]
        )

    def wait_orders(self, bot: Bot, ids: Sequence[str], timeout_s: float) -> bool:
        links = [bot.link(signal_id) for signal_id in ids]
        return wait_until(lambda: self.clock.arrived(links), timeout_s, POLL_S)

    def warm_up(self) -> None:
        """A few signals each, 10 a second: imports, connections and caches warmed."""
        for bot in self.bots.values():
            ids = [f"w-{bot.name}-{index}" for index in range(self.options.warmup)]
            sent = self.send(_paced(bot, ids, 10.0), STEADY_SENDER_TIMEOUT_S)
            accepted = [s.signal_id for s in sent if s.status == bot.accepted_status]
            self.wait_orders(bot, accepted, self.options.orders_timeout_s)

    def idle_cpu_ms_per_s(self) -> dict[BotName, float | None]:
        """Each bot's CPU while nothing is sent, in ms per second (measured together)."""
        before = {name: cpu_seconds(bot.process.pid) for name, bot in self.bots.items()}
        started = time.perf_counter()
        time.sleep(self.options.idle_s)
        elapsed = time.perf_counter() - started
        rates: dict[BotName, float | None] = {}
        for name, bot in self.bots.items():
            after, first = cpu_seconds(bot.process.pid), before[name]
            used = None if after is None or first is None else after - first
            rates[name] = None if used is None else round(used * 1000 / elapsed, 2)
        return rates

    def journal_rows(self) -> dict[str, list[dict[str, Any]]]:
        """Our bot's journal (read-only), by signal id."""
        if self.config_path is None:
            return {}
        try:
            journal = Journal(load_settings(self.config_path).journal_path, read_only=True)
        except Exception as exc:  # a missing or locked journal is reported, not fatal
            return {"": [{"error": f"{type(exc).__name__}: {exc}"}]}
        try:
            rows: dict[str, list[dict[str, Any]]] = {}
            for row in journal.trace(1_000_000):
                rows.setdefault(row.signal_id, []).append(row.as_dict())
            return rows
        finally:
            journal.close()


def _outcome(
    harness: Harness, bot: Bot, sent: Sequence[Sent], orders: Counter[str]
) -> dict[str, Any]:
    """Sender waits, signal-to-order and order counts of one bot's signals in a scenario."""
    waits = [s.wait_ns for s in sent if s.wait_ns is not None and not s.timed_out]
    to_order = []
    for s in sent:
        first = harness.clock.first_of(bot.link(s.signal_id))
        if first is not None:
            to_order.append(first - s.sent_ns)
    counts = [orders.get(bot.link(s.signal_id), 0) for s in sent]
    gave_up = [s for s in sent if s.timed_out or s.status is None]
    statuses = Counter(str(s.status) if s.status is not None else "no answer" for s in sent)
    return {
        "signals": len(sent),
        "answers": dict(sorted(statuses.items())),
        "accepted": sum(1 for s in sent if s.status == bot.accepted_status),
        "senders_timed_out": sum(1 for s in sent if s.timed_out),
        "sender_errors": sorted({s.error for s in sent if s.error})[:SAMPLES],
        "sender_wait_ms": latency_ms(waits),
        "sender_wait_all_ms": latency_ms(
            [s.wait_ns if s.wait_ns is not None else _gave_up_ns(harness) for s in sent]
        ),
        "signal_to_order_ms": latency_ms(to_order),
        "orders": {
            "exactly_one": sum(1 for count in counts if count == 1),
            "none": sum(1 for count in counts if count == 0),
            "more_than_one": sum(1 for count in counts if count > 1),
            "create_requests": sum(harness.clock.attempts[bot.link(s.signal_id)] for s in sent),
        },
        "orders_after_sender_gave_up": sum(
            1 for s in gave_up if orders.get(bot.link(s.signal_id), 0) > 0
        ),
    }


def _gave_up_ns(harness: Harness) -> int:
    """A sender that got no answer waited as long as it was willing to."""
    return int(harness.options.sender_timeout_s * 1e9)


def _steady(harness: Harness, bot: Bot, idle_ms_per_s: float | None) -> dict[str, Any]:
    options = harness.options
    ids = [f"s-{bot.name}-{index}" for index in range(options.signals)]
    plan = _paced(bot, ids, options.rate_per_s)
    cpu_before = cpu_seconds(bot.process.pid)
    window_start = time.perf_counter()
    sent = harness.send(plan, STEADY_SENDER_TIMEOUT_S)
    send_span_s = (max(s.sent_ns for s in sent) - min(s.sent_ns for s in sent)) / 1e9
    accepted = [s.signal_id for s in sent if s.status == bot.accepted_status]
    drained = harness.wait_orders(bot, accepted, options.orders_timeout_s)
    time.sleep(options.settle_s)
    cpu_after = cpu_seconds(bot.process.pid)
    window_s = time.perf_counter() - window_start
    result = _outcome(harness, bot, sent, harness.orders_by_link(bot))
    result["drained"] = drained
    result["achieved_rate_per_s"] = round((len(sent) - 1) / send_span_s, 1) if send_span_s else 0
    cpu: dict[str, float | None] = {
        "window_s": round(window_s, 2),
        "cpu_s": None,
        "per_signal_ms": None,
        "idle_ms_per_s": idle_ms_per_s,
        "per_signal_net_ms": None,
    }
    if cpu_before is not None and cpu_after is not None:
        used = cpu_after - cpu_before
        cpu["cpu_s"] = round(used, 3)
        cpu["per_signal_ms"] = round(used * 1000 / len(sent), 3)
        if idle_ms_per_s is not None:
            net = used * 1000 - idle_ms_per_s * window_s
            cpu["per_signal_net_ms"] = round(max(0.0, net) / len(sent), 3)
    result["cpu"] = cpu
    return result


@contextlib.contextmanager
def _faults(exchange: SimExchange, faults: SimFaults) -> Iterator[None]:
    exchange.set_faults(faults)
    try:
        yield
    finally:
        exchange.set_faults(SimFaults())


def _stall(harness: Harness) -> dict[str, Any]:
    """Both bots, interleaved, while every venue request is held `stall_ms`."""
    options = harness.options
    ids = {name: [f"x-{name}-{index}" for index in range(options.stall_signals)] for name in BOTS}
    half_step = 0.5 / options.stall_rate_per_s
    plan = _paced(harness.bots["typical"], ids["typical"], options.stall_rate_per_s) + _paced(
        harness.bots["ours"], ids["ours"], options.stall_rate_per_s, offset_s=half_step
    )
    stall = SimFaults(delay=1.0, delay_ms=options.stall_ms)
    stats_before, abandoned_before = harness.exchange.stats(), harness.abandoned.count
    with _faults(harness.exchange, stall):
        stalled_at = time.perf_counter()
        sent = harness.send(plan, options.sender_timeout_s)
        since_last_s = (time.perf_counter_ns() - max(s.sent_ns for s in sent)) / 1e9
        # The last signal's first venue request is held the full stall: keep it on until then.
        hold = options.stall_ms / 1000 + 0.1 - since_last_s
        if hold > 0:
            time.sleep(hold)
        stalled_s = time.perf_counter() - stalled_at
    cleared = time.perf_counter()
    results: dict[str, Any] = {"stall_ms": options.stall_ms, "stalled_s": round(stalled_s, 2)}
    for name in BOTS:
        bot = harness.bots[name]
        mine = [s for s in sent if s.bot == name]
        expected = [
            s.signal_id for s in mine if name == "typical" or s.status == bot.accepted_status
        ]
        results[name] = {"recovered": harness.wait_orders(bot, expected, options.recover_timeout_s)}
    time.sleep(options.settle_s)
    for name in BOTS:
        bot = harness.bots[name]
        mine = [s for s in sent if s.bot == name]
        results[name] |= _outcome(harness, bot, mine, harness.orders_by_link(bot))
    results["recovered_in_s"] = round(time.perf_counter() - cleared, 2)
    stats = _counter_delta(stats_before, harness.exchange.stats())
    results["simulator"] = {
        "answers_by_ret_code": stats.get("answers_by_ret_code", {}),
        "answers_by_http_status": stats.get("answers_by_http_status", {}),
        "signed_requests_by_key": stats.get("signed_requests_by_key_note", {}),
        "abandoned_by_client_while_held": harness.abandoned.count - abandoned_before,
    }
    return results


# --------------------------------------------------------------------------- checks


def _ours_checks(harness: Harness, journal: Mapping[str, list[dict[str, Any]]]) -> list[Check]:
    """Every signal our bot accepted became exactly one order; none became two; no order it
    placed belongs to no signal."""
    ours = harness.bots["ours"]
    orders = harness.orders_by_link(ours)
    sent = [s for s in harness.sent if s.bot == "ours"]
    accepted = [s for s in sent if s.status == ours.accepted_status]
    missing = [s.signal_id for s in accepted if orders.get(ours.link(s.signal_id), 0) == 0]
    twice = [s.signal_id for s in sent if orders.get(ours.link(s.signal_id), 0) > 1]
    known = {ours.link(s.signal_id) for s in sent}
    strays = sorted(link for link in orders if link not in known)

    def why(signal_id: str) -> str:
        rows = journal.get(signal_id, [])
        said = "; ".join(f"{r.get('decision')}: {r.get('reason')}" for r in rows) or "no row"
        return f"{signal_id}: {said}"

    refused = [s for s in sent if s.status is not None and s.status >= 300]
    return [
        Check(
            "ours: accepted signals that became an order",
            f"{len(accepted) - len(missing)}/{len(accepted)}",
            "all",
            not missing,
            True,
            [why(signal_id) for signal_id in missing[:SAMPLES]],
        ),
        Check(
            "ours: signals that became more than one order",
            len(twice),
            "0",
            not twice,
            True,
            [
                f"{signal_id}: {orders[ours.link(signal_id)]} orders"
                for signal_id in twice[:SAMPLES]
            ],
        ),
        Check("ours: orders of no signal", len(strays), "0", not strays, True, strays[:SAMPLES]),
        Check(
            "ours: signals refused (answer >= 300)",
            len(refused),
            "0",
            not refused,
            False,  # not accepted, so owed no order; reported
            [f"{s.signal_id}: {s.status}" for s in refused[:SAMPLES]],
        ),
    ]


def _targets(scenarios: Mapping[str, Any]) -> list[Check]:
    checks: list[Check] = []
    steady = scenarios.get("steady", {})
    typical_cpu = steady.get("typical", {}).get("cpu", {}).get("per_signal_ms")
    ours_cpu = steady.get("ours", {}).get("cpu", {}).get("per_signal_ms")
    if typical_cpu is not None and ours_cpu is not None:
        checks.append(
            Check(
                "steady: our CPU per signal vs the typical bot's",
                f"{ours_cpu:.2f} / {typical_cpu:.2f} ms",
                "<=",
                ours_cpu <= typical_cpu,
                False,
            )
        )
    stall = scenarios.get("stall", {}).get("ours")
    if stall:
        worst = stall["sender_wait_all_ms"]["max"]
        checks.append(
            Check(
                "stall: our slowest sender wait",
                f"{worst} ms",
                f"< {TARGET_STALL_WAIT_MS:g} ms",
                worst is not None and worst < TARGET_STALL_WAIT_MS,
                False,
            )
        )
        checks.append(
            Check(
                "stall: our senders that timed out",
                stall["senders_timed_out"],
                "0",
                stall["senders_timed_out"] == 0,
                False,
            )
        )
    return checks


# --------------------------------------------------------------------------- the run


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def run(options: TypicalBotOptions) -> dict[str, Any]:
    """Both scenarios for both bots; the report. Raises BenchError if it could not run;
    nothing it started outlives it."""
    options.check()
    started_at = run_started_at()
    root = options.work_dir or Path(tempfile.mkdtemp(prefix="typical-bot-"))
    root.mkdir(parents=True, exist_ok=True)
    wall = time.monotonic()
    harness = Harness(options, root)
    scenarios: dict[str, Any] = {}
    stopped_cleanly: dict[BotName, bool] = {}
    logs: dict[str, str] = {}
    try:
        options.log("starting the simulator and both bots")
        harness.start()
        harness.warm_up()
        options.log(f"idle CPU for {options.idle_s:g} s")
        idle = harness.idle_cpu_ms_per_s()
        steady: dict[str, Any] = {}
        for name in BOTS:
            options.log(f"steady: {options.signals} signals at {options.rate_per_s:g}/s -> {name}")
            steady[name] = _steady(harness, harness.bots[name], idle[name])
        scenarios["steady"] = steady
        options.log(
            f"stall: {options.stall_ms} ms on every venue request, {options.stall_signals} "
            f"signals per bot at {options.stall_rate_per_s:g}/s"
        )
        scenarios["stall"] = _stall(harness)
        journal = harness.journal_rows()
        harness.alive()
        checks = _ours_checks(harness, journal)
        ours_journal = Counter(
            str(row.get("decision")) for rows in journal.values() for row in rows
        )
    finally:
        stopped_cleanly = harness.close()
        for name, bot in harness.bots.items():
            logs[name] = bot.process.tail(5)
        if options.work_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    checks += _targets(scenarios)
    return {
        "started_at": started_at,
        "ok": not any(check.correctness and not check.ok for check in checks),
        "options": {
            "signals": options.signals,
            "rate_per_s": options.rate_per_s,
            "stall_signals": options.stall_signals,
            "stall_ms": options.stall_ms,
            "stall_rate_per_s": options.stall_rate_per_s,
            "sender_timeout_s": options.sender_timeout_s,
            "warmup": options.warmup,
            "idle_s": options.idle_s,
            "settle_s": options.settle_s,
        },
        "scenarios": scenarios,
        "checks": [asdict(check) for check in checks],
        "targets": {
            "ours_cpu_per_signal": "<= the typical bot's",
            "ours_stall_sender_wait_ms": f"< {TARGET_STALL_WAIT_MS:g} (every sender)",
            "ours_stall_senders_timed_out": 0,
        },
        "ours_journal_decisions": dict(sorted(ours_journal.items())),
        "stopped_on_sigterm": stopped_cleanly,
        "machine": {
            **machine(),
            "clock_ticks_per_s": os.sysconf("SC_CLK_TCK"),
            "pybit": _version("pybit"),
            "flask": _version("flask"),
            "werkzeug": _version("werkzeug"),
            "our_cpus": list(options.our_cpus) or "any",
        },
        "simulator": {
            "order_create_per_s": harness.exchange.config.rate_limit_per_s("/v5/order/create"),
            "market_fill_delay_ms": harness.exchange.config.market_fill_delay_ms,
            "in_process": True,
        },
        "log_tails": logs,
        "wall_s": round(time.monotonic() - wall, 1),
        "typical_bot_source": TYPICAL_BOT_SOURCE,
    }


# --------------------------------------------------------------------------- output


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _lat(stats: Mapping[str, Any]) -> str:
    return f"{_ms(stats['p50'])} / {_ms(stats['p99'])} / {_ms(stats['max'])}"


def _orders(result: Mapping[str, Any]) -> str:
    orders = result["orders"]
    return f"{orders['exactly_one']} / {orders['none']} / {orders['more_than_one']}"


def print_report(report: Mapping[str, Any], console: Console) -> None:
    options = report["options"]
    table = Table(title=f"a typical webhook bot and ours, {report['started_at']}")
    for column in ("scenario", "what", "typical", "ours"):
        table.add_column(column, no_wrap=True)
    steady = report["scenarios"].get("steady")
    if steady:
        label = f"steady {options['signals']} @ {options['rate_per_s']:g}/s"
        rows: list[tuple[str, Callable[[Mapping[str, Any]], str]]] = [
            ("sender wait p50/p99/max ms", lambda r: _lat(r["sender_wait_ms"])),
            ("signal -> order p50/p99/max ms", lambda r: _lat(r["signal_to_order_ms"])),
            ("CPU per signal ms", lambda r: _ms(r["cpu"]["per_signal_ms"])),
            ("  less idle CPU ms", lambda r: _ms(r["cpu"]["per_signal_net_ms"])),
            ("  idle CPU ms/s", lambda r: _ms(r["cpu"]["idle_ms_per_s"])),
            ("answers", lambda r: ", ".join(f"{k}: {v}" for k, v in r["answers"].items())),
            ("orders: one / none / >1", _orders),
            ("achieved rate /s", lambda r: f"{r['achieved_rate_per_s']:g}"),
        ]
        for what, cell in rows:
            table.add_row(label, what, cell(steady["typical"]), cell(steady["ours"]))
            label = ""
    stall = report["scenarios"].get("stall")
    if stall:
        label = f"stall {stall['stall_ms']} ms, {options['stall_signals']} each"
        timeout = f"{options['sender_timeout_s']:g}"
        rows = [
            ("sender wait p50/p99/max ms", lambda r: _lat(r["sender_wait_all_ms"])),
            (f"senders timed out at {timeout} s", lambda r: str(r["senders_timed_out"])),
            ("signal -> order p50/p99/max ms", lambda r: _lat(r["signal_to_order_ms"])),
            ("orders: one / none / >1", _orders),
            ("order create requests", lambda r: str(r["orders"]["create_requests"])),
            ("orders after the sender gave up", lambda r: str(r["orders_after_sender_gave_up"])),
            ("answers", lambda r: ", ".join(f"{k}: {v}" for k, v in r["answers"].items())),
        ]
        for what, cell in rows:
            table.add_row(label, what, cell(stall["typical"]), cell(stall["ours"]))
            label = ""
    console.print(table)
    if stall:
        sim = stall["simulator"]
        codes = ", ".join(f"{k}: {v}" for k, v in sim["answers_by_ret_code"].items())
        console.print(
            f"stall: the venue stalled {stall['stalled_s']} s; the simulator answered retCode "
            f"{{{codes}}}; {sim['abandoned_by_client_while_held']} requests were abandoned by "
            f"their client while held; {stall['recovered_in_s']} s from clearing it to the count",
            highlight=False,
        )
    checks = report["checks"]
    correct = [c for c in checks if c["correctness"]]
    console.print(
        f"correctness (ours): {sum(1 for c in correct if c['ok'])}/{len(correct)} ok",
        highlight=False,
    )
    for check in checks:
        mark = (
            ("ok" if check["ok"] else "FAIL")
            if check["correctness"]
            else ("met" if check["ok"] else "missed")
        )
        if check["correctness"] and check["ok"]:
            continue
        console.print(
            f"  {mark} {check['name']}: {check['value']} (target {check['target']})",
            highlight=False,
        )
        for sample in check["samples"]:
            console.print(f"    {sample}", highlight=False)
    machine = report["machine"]
    console.print(
        f"{machine['cpus']} CPUs, Python {machine['python']}, pybit {machine['pybit']}, "
        f"Flask {machine['flask']}; simulator order/create "
        f"{report['simulator']['order_create_per_s']}/s per UID; ours on CPUs "
        f"{machine['our_cpus']}; wall {report['wall_s']} s",
        highlight=False,
    )


def write_json(report: Mapping[str, Any], path: Path | None) -> Path:
    return write_results(report, "typical-bot", report["started_at"], path)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench.typical_bot", description=(__doc__ or "").splitlines()[0]
    )
    defaults = TypicalBotOptions()
    parser.add_argument("--signals", type=int, default=defaults.signals, help="steady signals")
    parser.add_argument("--rate", type=float, default=defaults.rate_per_s, help="steady /s")
    parser.add_argument("--stall-signals", type=int, default=defaults.stall_signals)
    parser.add_argument("--stall-ms", type=int, default=defaults.stall_ms)
    parser.add_argument(
        "--stall-rate", type=float, default=defaults.stall_rate_per_s, help="/s per bot"
    )
    parser.add_argument(
        "--sender-timeout", type=float, default=defaults.sender_timeout_s, help="s (stall)"
    )
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument("--idle", type=float, default=defaults.idle_s, help="idle CPU s")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="config, logs, journal (kept); default tmp"
    )
    parser.add_argument("--json-out", type=Path, default=None, help="result file")
    parser.add_argument(
        "--our-cpus", type=int, nargs="*", default=[], help="pin our bot to these CPUs"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    stop_children_on_sigterm()
    arguments = _arguments(argv)
    console = Console(width=shutil.get_terminal_size((120, 24)).columns)
    options = TypicalBotOptions(
        signals=arguments.signals,
        rate_per_s=arguments.rate,
        stall_signals=arguments.stall_signals,
        stall_ms=arguments.stall_ms,
        stall_rate_per_s=arguments.stall_rate,
        sender_timeout_s=arguments.sender_timeout,
        warmup=arguments.warmup,
        idle_s=arguments.idle,
        work_dir=arguments.work_dir,
        json_out=arguments.json_out,
        our_cpus=tuple(arguments.our_cpus),
    )
    try:
        options.check()
    except ValueError as exc:
        say_error(console, "bad options", exc)
        return 2
    try:
        report = run(options)
    except (BenchError, OSError) as exc:
        say_error(console, "benchmark could not run", exc)
        return 2
    print_report(report, console)
    console.print(f"results: {write_json(report, options.json_out)}", highlight=False)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
