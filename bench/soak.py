"""Chaos soak of the real bot: a standalone simulator, `bot run` killed with SIGKILL, faults on.

Black box, through the public faces only: `bot sim` and `bot run` as subprocesses, signed
webhooks, the simulator's `/sim/*` admin routes and `bot orders --json`. It checks what a
quant deploying real money relies on after crashes and venue faults:

- every accepted signal reaches a decision (none lost),
- no leg becomes two orders at the venue (no duplicates),
- nothing is left non-terminal once the bot is quiet, but a ladder's targets resting for the
  position they take profit on; and no reduce-only order outlives its position, nor fills on
  a new one its position turned into (a take profit at a gone position's levels),
- the journal agrees with the venue order by order (status and filled quantity),
- the bot paces itself under Bybit's per-key limits (no 10006 of its own making),
  and its wall time is close to the minimum those limits allow.

Run: `make soak`, `python -m bench.soak --signals 1000 --kills 10 --faults 0.2`.
Exit code 0: correctness targets met; 1: a correctness target failed; 2: the soak itself
could not run (a process would not start, ...).
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

import httpx
from rich.console import Console
from rich.table import Table

from bench.common import (
    REPO_ROOT,
    UNLIMITED_RISK,
    Check,
    Process,
    free_port,
    run_started_at,
    say_error,
    stop_children_on_sigterm,
    wait_until,
    write_results,
)
from bot.execution.ids import order_link_id
from bot.journal import Journal, JournalError
from bot.messages import Execution, Side
from signals.voiceofchain import SIGNATURE_HEADER, sign
from strategies.ladder import BREAK_EVEN_CLOSE_LEG

__all__ = ["SoakOptions", "SoakReport", "main", "run_soak"]

SOURCE: Final = "voiceofchain"
SYMBOLS: Final = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
STRATEGIES: Final = ("alpha", "beta", "gamma")
#: Strategies run as `ladder` (the others `follow`): an entry, reduce-only targets laid out
#: by its `on_fill`, a break-even stop after the first, their cancel once the position closes.
LADDERS: Final = frozenset({"gamma"})
LADDER_LEGS: Final = range(BREAK_EVEN_CLOSE_LEG + 1)
TARGET_DISTANCES: Final = (Decimal("0.005"), Decimal("0.01"), Decimal("0.015"))
#: Every symbol's price walks (5 bps every 100 ms), so targets fill and stops fire while the
#: bot is killed and started again.
PRICE_WALK: Final = {"step_bps": 5, "interval_ms": 100}
WEBHOOK_SECRET_NAME: Final = "bot_webhook_secret_voiceofchain"  # noqa: S105 - a file name
ORDER_CREATE_PER_S: Final = 10  # Bybit's (and the simulator's) per-key order/create limit
STOP_DISTANCE: Final = Decimal("0.02")

HTTP_TIMEOUT_S: Final = 5.0
PROCESS_START_TIMEOUT_S: Final = 30.0
ORDERS_CLI_TIMEOUT_S: Final = 60.0
SIGNAL_RETRY_BUDGET_S: Final = 90.0  # per signal: resend while the bot is down or busy
MAX_START_ATTEMPTS: Final = 5
SAMPLES: Final = 10

JOURNAL_TERMINAL: Final = frozenset({"Filled", "Cancelled", "Rejected"})
JOURNAL_NON_TERMINAL: Final = frozenset(
    {"Pending", "Submitting", "New", "PartiallyFilled", "Unknown"}
)
VENUE_TO_JOURNAL: Final = {
    "Filled": "Filled",
    "Cancelled": "Cancelled",
    "PartiallyFilledCanceled": "Cancelled",
    "Deactivated": "Cancelled",
    "Rejected": "Rejected",
    "New": "New",
    "PartiallyFilled": "PartiallyFilled",
    "Untriggered": "New",
    "Triggered": "New",
    "Created": "New",
    "Active": "New",
}
TRANSIENT_REASONS: Final = (
    "Too many visits",
    "10006",
    "Server Timeout",
    "10016",
    "HTTP 5",
    "timed out",
    "Timeout",
    "Connection",
)
FAULT_DURATIONS_MS: Final = {
    "delay_ms": 250,  # well under venue.timeout_s
    "order_visibility_lag_ms": 500,
    "clock_skew_burst_ms": 6000,  # beyond recv_window_ms (5000): signed requests fail 10002
    "clock_skew_burst_window_ms": 250,
}
VENUE_TERMINAL: Final = frozenset(
    {"Filled", "Cancelled", "PartiallyFilledCanceled", "Deactivated", "Rejected"}
)


class SoakError(Exception):
    """The soak itself cannot go on (a process would not start, a port is taken, ...)."""


@dataclass(frozen=True)
class SoakOptions:
    """One soak's shape. Times are wall-clock seconds."""

    signals: int = 1000
    kills: int = 10
    faults: float = 0.20  # total probability, split across the simulator's fault kinds
    seed: int | None = None
    rate_per_s: float = 30.0  # the three keys' combined order limit: the bot must keep up
    max_signal_age_s: float = 6.0
    long_restart_share: float = 0.3  # share of restarts delayed beyond max_signal_age_s
    quiesce_timeout_s: float = 90.0
    quiet_for_s: float = 3.0
    reconcile_s: float = 8.0
    keep_state: bool = False
    #: Share of starts SIGKILLed again 0.5-3 s after launch, mostly while start-up settles
    #: the last run's orders (before /healthz answers, where the chaos never kills).
    startup_kill_share: float = 0.0
    work_dir: Path | None = None
    json_out: Path | None = None
    log: Callable[[str], None] = field(default=lambda line: print(line, flush=True))


@dataclass
class SoakReport:
    """Everything the soak measured; `failures` lists the correctness checks that failed."""

    options: dict[str, Any]
    started_at: str
    checks: list[Check]
    facts: dict[str, Any]
    state_dir: str | None

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if check.correctness and not check.ok]

    def describe_failures(self) -> str:
        lines = []
        for check in self.failures:
            lines.append(f"{check.name}: {check.value} (target {check.target})")
            lines.extend(f"    {sample}" for sample in check.samples)
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            "options": self.options,
            "started_at": self.started_at,
            "ok": not self.failures,
            "checks": [asdict(check) for check in self.checks],
            "facts": self.facts,
            "state_dir": self.state_dir,
        }


# --------------------------------------------------------------------------- set-up


def _key_name(strategy: str) -> str:
    return f"key_{strategy}"


def _write_secrets(directory: Path) -> str:
    """Files for three keys and the webhook secret (mode 0600); returns the webhook secret."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def put(name: str, value: str) -> None:
        path = directory / name
        path.write_text(value + "\n", encoding="utf-8")
        path.chmod(0o600)

    for strategy in STRATEGIES:
        put(f"bot_key_{_key_name(strategy)}_api_key", f"soak{secrets.token_hex(8)}")
        put(f"bot_key_{_key_name(strategy)}_api_secret", secrets.token_hex(24))
    webhook_secret = secrets.token_hex(24)
    put(WEBHOOK_SECRET_NAME, webhook_secret)
    return webhook_secret


def _config_text(state_dir: Path, bot_port: int, sim_port: int, max_signal_age_s: float) -> str:
    strategies = "".join(
        f"""
[keys.{_key_name(name)}]
environment = "sim"

[strategies.{name}]
plugin = "{"ladder" if name in LADDERS else "follow"}"
key = "{_key_name(name)}"
sources = ["{SOURCE}"]

[strategies.{name}.params]
risk_fraction = 0.01
max_notional_usdt = 500
"""
        for name in STRATEGIES
    )
    return f"""# Written by bench/soak.py for one soak run.
environment = "sim"
state_dir = "{state_dir}"

[http]
host = "127.0.0.1"
port = {bot_port}

[venue]
sim_url = "http://127.0.0.1:{sim_port}"

[sim]
starting_balance_usdt = 100000

[risk]
symbols = {json.dumps(list(SYMBOLS))}
# The soak is about the order lifecycle: the limits stay out of its way.
{UNLIMITED_RISK}max_signal_age_s = {max_signal_age_s}
{strategies}"""


# --------------------------------------------------------------------------- processes


def _http_ok(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


class Harness:
    """The simulator and the bot as subprocesses, plus the soak's HTTP client."""

    def __init__(self, options: SoakOptions, root: Path) -> None:
        self.options = options
        self.root = root
        self.state_dir = root / "var"
        self.secrets_dir = root / "secrets"
        self.logs_dir = root / "logs"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.sim_port = free_port()
        self.bot_port = free_port()
        self.sim_url = f"http://127.0.0.1:{self.sim_port}"
        self.bot_url = f"http://127.0.0.1:{self.bot_port}"
        self.config = root / "bot.toml"
        self.webhook_secret = _write_secrets(self.secrets_dir)
        self.config.write_text(
            _config_text(self.state_dir, self.bot_port, self.sim_port, options.max_signal_age_s),
            encoding="utf-8",
        )
        self.client = httpx.Client(timeout=HTTP_TIMEOUT_S)
        self.sim: Process | None = None
        self.bot: Process | None = None
        self.bot_starts = 0
        self.start_failures: list[str] = []
        self.startup_kills = 0
        self._startup_rng = random.Random(options.seed)  # noqa: S311 - chaos, not security
        self._lock = threading.Lock()

    def _bot_argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "bot", *args, "--config", str(self.config)]

    def start_sim(self) -> None:
        argv = [
            *self._bot_argv("sim", "--port", str(self.sim_port)),
            "--secrets-dir",
            str(self.secrets_dir),
        ]
        sim = self.sim = Process("sim", argv, self.logs_dir / "sim.log", cwd=REPO_ROOT)
        stats = f"{self.sim_url}/sim/stats"
        wait_until(
            lambda: not sim.alive or _http_ok(self.client, stats), PROCESS_START_TIMEOUT_S, 0.05
        )
        if not (sim.alive and _http_ok(self.client, stats)):
            raise SoakError(f"the simulator did not come up:\n{sim.tail()}")

    def start_bot(self) -> None:
        """Start `bot run` and wait until /healthz answers; a few attempts, then SoakError."""
        while self.bot_starts > 0 and self._startup_rng.random() < self.options.startup_kill_share:
            bot = self._launch_bot()
            time.sleep(self._startup_rng.uniform(0.5, 3.0))
            bot.kill()
            self.startup_kills += 1
            self.options.log(f"kill -9 during start #{self.bot_starts}")
        for _attempt in range(MAX_START_ATTEMPTS):
            bot = self._launch_bot()
            if self._came_up(bot):
                return
            code = bot.popen.poll()
            self.start_failures.append(f"start #{self.bot_starts} failed (exit {code})")
            self.options.log(f"bot start #{self.bot_starts} failed (exit {code}):\n{bot.tail()}")
            bot.kill()
            time.sleep(1.0)
        raise SoakError(f"the bot did not start in {MAX_START_ATTEMPTS} attempts")

    def _launch_bot(self) -> Process:
        """One more `bot run`, the harness's current bot from now on."""
        argv = [*self._bot_argv("run", "--log-json"), "--secrets-dir", str(self.secrets_dir)]
        with self._lock:
            self.bot_starts += 1
            self.bot = Process("bot", argv, self.logs_dir / "bot.log", cwd=REPO_ROOT)
            return self.bot

    def _came_up(self, bot: Process) -> bool:
        """Wait until `bot` answers /healthz (True) or exits (False)."""
        healthz = f"{self.bot_url}/healthz"
        wait_until(
            lambda: not bot.alive or _http_ok(self.client, healthz), PROCESS_START_TIMEOUT_S, 0.05
        )
        return bot.alive and _http_ok(self.client, healthz)

    def kill_bot(self) -> None:
        with self._lock:
            bot = self.bot
        if bot is not None:
            bot.kill()

    def stop_bot(self) -> bool:
        with self._lock:
            bot = self.bot
        return True if bot is None else bot.stop()

    def bot_alive(self) -> bool:
        with self._lock:
            return self.bot is not None and self.bot.alive

    def close(self) -> None:
        for process in (self.bot, self.sim):
            if process is not None:
                process.kill()
        self.client.close()

    # ---- the simulator's admin routes

    def start_price_walks(self, seed: int) -> None:
        self._set_prices(
            {
                symbol: {"walk": {"seed": seed + index, **PRICE_WALK}}
                for index, symbol in enumerate(SYMBOLS)
            }
        )

    def stop_price_walks(self) -> None:
        self._set_prices({symbol: {"walk": None} for symbol in SYMBOLS})

    def _set_prices(self, prices: Mapping[str, Any]) -> None:
        answer = self.client.post(f"{self.sim_url}/sim/prices", json=dict(prices))
        if answer.status_code != 200:
            raise SoakError(f"POST /sim/prices {prices}: {answer.status_code} {answer.text}")

    def sim_get(self, route: str) -> Any:
        answer = self.client.get(f"{self.sim_url}{route}")
        answer.raise_for_status()
        return answer.json()

    def set_faults(self, faults: Mapping[str, float | int]) -> dict[str, Any]:
        answer = self.client.post(f"{self.sim_url}/sim/faults", json=dict(faults))
        if answer.status_code != 200:
            raise SoakError(f"POST /sim/faults {dict(faults)}: {answer.status_code} {answer.text}")
        result: dict[str, Any] = answer.json()
        return result

    def unfinished_orders(self) -> int | None:
        """How many orders the journal still holds unfinished (None while it cannot say):
        the bot is not done while it still reconciles one."""
        path = self.state_dir / "journal.sqlite3"
        if not path.exists():
            return None
        try:
            journal = Journal(path, read_only=True)
        except JournalError:
            return None
        try:
            return len(journal.unfinished_orders())
        except sqlite3.Error:
            return None
        finally:
            journal.close()

    def fills(self) -> tuple[list[Execution], dict[str, datetime | None]]:
        """The journal's fills, every key's, and when the venue made each of our reduce-only
        orders among them, by the venue's clock: the earliest createdTime of the venue's
        reports journaled for it (None: none said). Read once the bot is stopped."""
        try:
            journal = Journal(self.state_dir / "journal.sqlite3", read_only=True)
        except JournalError as exc:
            raise SoakError(f"the journal cannot be read: {exc}") from exc
        try:
            fills = [fill for fill, _allocation in journal.executions()]
            made_at: dict[str, datetime | None] = {}
            for link in sorted({fill.order_link_id for fill in fills if fill.order_link_id}):
                record = journal.order(link)
                if record is None or not record.request.reduce_only:
                    continue
                made_at[link] = min(
                    (
                        event.venue_created_at
                        for event in journal.order_events(link)
                        if event.venue_created_at is not None
                    ),
                    default=None,
                )
            return fills, made_at
        finally:
            journal.close()

    def journal(self) -> list[dict[str, Any]]:
        """`bot orders --json`, every signal: one dict per (signal, decision) row."""
        return self._json_lines("orders", "--json", "--limit", "1000000")

    def books(self) -> list[dict[str, Any]]:
        """`bot positions --json`: each strategy's book per key and symbol, as the journal's
        fills make it, and each key's account row."""
        return self._json_lines("positions", "--json")

    def _json_lines(self, *command: str) -> list[dict[str, Any]]:
        """A read-only `bot` command's JSON lines."""
        argv = self._bot_argv(*command)
        done = subprocess.run(  # noqa: S603 - our own interpreter and arguments
            argv,
            capture_output=True,
            text=True,
            timeout=ORDERS_CLI_TIMEOUT_S,
            cwd=REPO_ROOT,
            check=False,
        )
        if done.returncode != 0:
            raise SoakError(f"bot {command[0]} failed ({done.returncode}): {done.stderr.strip()}")
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def fault_plan(available: Mapping[str, Any], total: float) -> dict[str, float | int]:
    """Split `total` across every probability the simulator offers; durations set moderately.

    Read from `GET /sim/faults`, so fault kinds added to the simulator later are used too.
    A steady clock skew stays 0 (it breaks every signed request: a different test); bursts of
    skew beyond recv_window are short, so they come and go like a drifting clock.
    """
    if total <= 0:
        return {}
    probabilities = [
        name for name, value in available.items() if isinstance(value, float) and 0 <= value <= 1
    ]
    plan: dict[str, float | int] = {}
    if probabilities:
        plan.update(dict.fromkeys(probabilities, round(total / len(probabilities), 6)))
    durations = [
        name
        for name, value in available.items()
        if isinstance(value, int) and not isinstance(value, bool) and name.endswith("_ms")
    ]
    plan.update(
        {name: FAULT_DURATIONS_MS.get(name, 500) for name in durations if name != "clock_skew_ms"}
    )
    return plan


# --------------------------------------------------------------------------- load


@dataclass
class SoakSignal:
    """One signal of the load and what became of it at the webhook."""

    id: str
    strategy: str
    symbol: str
    action: str
    body: bytes = b""
    attempts: int = 0
    answers: list[str] = field(default_factory=list)
    outcome: str = "unsent"  # accepted | duplicate-after-lost | duplicate-first | refused | unsent

    @property
    def accepted(self) -> bool:
        return self.outcome in {"accepted", "duplicate-after-lost", "duplicate-first"}

    @property
    def link_id(self) -> str:
        return order_link_id(self.strategy, SOURCE, self.id, 0)


def plan_signals(count: int, rng: random.Random, run_tag: str) -> list[SoakSignal]:
    """Opens and closes interleaved per (strategy, symbol), routed by `strategy` (a ladder's
    only opens: it closes through its targets and stop)."""
    plan = []
    open_legs: Counter[tuple[str, str]] = Counter()
    for index in range(count):
        strategy, symbol = rng.choice(STRATEGIES), rng.choice(SYMBOLS)
        stream = (strategy, symbol)
        close = strategy not in LADDERS and open_legs[stream] > 0 and rng.random() < 0.4
        open_legs[stream] = 0 if close else open_legs[stream] + 1
        plan.append(
            SoakSignal(
                id=f"soak-{run_tag}-{index:05d}",
                strategy=strategy,
                symbol=symbol,
                action="close" if close else "open",
            )
        )
    return plan


def _body(item: SoakSignal, prices: Mapping[str, Decimal], rng: random.Random) -> bytes:
    payload: dict[str, object] = {
        "id": item.id,
        "symbol": item.symbol,
        "strategy": item.strategy,
        "ts": int(time.time() * 1000),
    }
    if item.action == "close":
        payload["action"] = "close"
    else:
        side = rng.choice(("buy", "sell"))
        price = prices[item.symbol]
        factor = 1 - STOP_DISTANCE if side == "buy" else 1 + STOP_DISTANCE
        places = 0 if price >= 1000 else 2
        payload.update(
            {"action": "open", "side": side, "stop_loss": float(round(price * factor, places))}
        )
        if item.strategy in LADDERS:
            direction = 1 if side == "buy" else -1
            payload["take_profit"] = [
                float(round(price * (1 + direction * distance), places))
                for distance in TARGET_DISTANCES
            ]
    return json.dumps(payload, separators=(",", ":")).encode()


class Sender:
    """Posts the signals in order at `rate_per_s`; resends one until the bot answers it."""

    def __init__(
        self, harness: Harness, plan: list[SoakSignal], rate_per_s: float, rng: random.Random
    ) -> None:
        self.harness = harness
        self.plan = plan
        self.rate_per_s = rate_per_s
        self.rng = rng
        self.progress = 0  # index of the signal being sent; read by the chaos thread
        self.stop = threading.Event()
        self.prices: dict[str, Decimal] = {}
        self.answer_counts: Counter[str] = Counter()

    def refresh_prices(self) -> None:
        answer = self.harness.sim_get("/sim/prices")
        self.prices = {symbol: Decimal(value) for symbol, value in answer["prices"].items()}

    def run(self) -> None:
        url = f"{self.harness.bot_url}/webhooks/{SOURCE}"
        interval = 1.0 / self.rate_per_s
        next_at = time.monotonic()
        for index, item in enumerate(self.plan):
            if self.stop.is_set():
                return
            self.progress = index
            if index % 10 == 0:  # the prices walk: a ladder's targets are set from them
                self.refresh_prices()
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._deliver(url, item)
            # Keep the pace; after an outage, catch up by at most one second of signals.
            next_at = max(next_at + interval, time.monotonic() - 1.0)
        self.progress = len(self.plan)

    def _deliver(self, url: str, item: SoakSignal) -> None:
        item.body = _body(item, self.prices, self.rng)  # `ts` is when it was first sent
        deadline = time.monotonic() + SIGNAL_RETRY_BUDGET_S
        backoff = 0.05
        while not self.stop.is_set() and time.monotonic() < deadline:
            item.attempts += 1
            answer = self._post(url, item.body)
            item.answers.append(answer)
            self.answer_counts[answer] += 1
            if answer == "202":
                item.outcome = "accepted"
                return
            if answer == "200":
                # A duplicate: an earlier attempt was journaled but its answer was lost.
                item.outcome = "duplicate-after-lost" if item.attempts > 1 else "duplicate-first"
                return
            if answer.startswith("4") and answer != "429":
                item.outcome = "refused"
                return
            time.sleep(backoff)  # 503, 429, 5xx, connection refused/reset, timeout
            backoff = min(backoff * 2, 0.5)
        item.outcome = "refused" if item.answers else "unsent"

    def _post(self, url: str, body: bytes) -> str:
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.harness.webhook_secret, body, int(time.time())),
        }
        try:
            return str(self.harness.client.post(url, content=body, headers=headers).status_code)
        except httpx.TimeoutException:
            return "timeout"
        except httpx.TransportError:
            return "connection-error"


@dataclass
class KillRecord:
    at_signal: int
    restart_delay_s: float
    downtime_s: float = 0.0
    long: bool = False


class Chaos:
    """SIGKILLs the bot at random points of the load and restarts it, sometimes late."""

    def __init__(
        self, harness: Harness, sender: Sender, options: SoakOptions, rng: random.Random
    ) -> None:
        self.harness = harness
        self.sender = sender
        self.options = options
        self.rng = rng
        self.kills: list[KillRecord] = []
        self.unexpected_exits: list[str] = []
        self.error: BaseException | None = None
        self.done = threading.Event()
        count = len(sender.plan)
        low, high = max(1, count // 20), max(2, count * 19 // 20)
        population = range(low, high)
        wanted = options.kills
        points = (
            rng.sample(population, wanted)
            if wanted <= len(population)
            else [rng.randrange(low, high) for _ in range(wanted)]
        )
        longs = round(wanted * options.long_restart_share)
        if wanted >= 2:
            longs = max(1, longs)
        long_flags = [True] * longs + [False] * (wanted - longs)
        rng.shuffle(long_flags)
        self.schedule = [
            KillRecord(
                at_signal=point,
                long=is_long,
                restart_delay_s=(
                    options.max_signal_age_s + rng.uniform(1.0, 2.5)
                    if is_long
                    else rng.uniform(0.0, 1.0)
                ),
            )
            for point, is_long in zip(sorted(points), long_flags, strict=True)
        ]

    def run(self) -> None:
        try:
            for record in self.schedule:
                while self.sender.progress < record.at_signal:
                    if self.sender.stop.is_set():
                        return
                    self.watch()
                    time.sleep(0.01)
                time.sleep(self.rng.uniform(0.0, 0.25))  # a random phase of the signal's path
                started = time.monotonic()
                self.harness.kill_bot()
                self.options.log(
                    f"kill -9 at signal {record.at_signal}; restart in "
                    f"{record.restart_delay_s:.1f} s"
                )
                time.sleep(record.restart_delay_s)
                self.harness.start_bot()
                record.downtime_s = round(time.monotonic() - started, 3)
                self.kills.append(record)
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        finally:
            self.done.set()

    def watch(self) -> None:
        """Restart a bot that died without being killed (and remember that it did)."""
        bot = self.harness.bot
        if bot is not None and not bot.alive:
            detail = f"exit {bot.popen.returncode}: {bot.tail(5)}"
            self.unexpected_exits.append(detail)
            self.options.log(f"bot exited on its own ({detail}); restarting")
            self.harness.start_bot()


# --------------------------------------------------------------------------- quiescence


def _snapshot(harness: Harness) -> tuple[Any, ...] | None:
    """What changes while the bot works: its queue, its unfinished orders and journal
    counts, the venue's orders and the order writes it received."""
    try:
        health = harness.client.get(f"{harness.bot_url}/healthz").json()
        stats = harness.sim_get("/sim/stats")
    except (httpx.HTTPError, ValueError):
        return None
    requests = stats.get("requests_by_path", {})
    return (
        health.get("queued_signals"),
        harness.unfinished_orders(),
        json.dumps(health.get("journal"), sort_keys=True),
        stats.get("orders"),
        stats.get("open_orders"),
        # Order writes only: the bot's periodic reads (exit scans, closed PnL, a stream's
        # REST catch-up) go on while nothing changes, and must not count as activity.
        sum(n for path, n in requests.items() if path.startswith("/v5/order/c")),
        requests.get("/v5/order/create", 0),
    )


def wait_for_quiescence(harness: Harness, options: SoakOptions) -> tuple[bool, float]:
    """Wait until nothing changes for `quiet_for_s` with an empty queue and every order the
    journal holds unfinished open at the venue (a ladder's resting targets; none the bot
    still sends or reconciles).

    Returns (quiet, monotonic time of the last order the bot created): the walking prices
    fill resting targets and fire stops later on, which is the market's time, not the bot's.
    """
    deadline = time.monotonic() + options.quiesce_timeout_s
    last: tuple[Any, ...] | None = None
    last_change = last_create = time.monotonic()
    while time.monotonic() < deadline:
        current = _snapshot(harness)
        now = time.monotonic()
        if current is not None and (last is None or current[-1] != last[-1]):
            last_create = now
        if current != last or current is None:
            last, last_change = current, now
        elif (
            current[0] == 0
            and current[1] == current[4]
            and now - last_change >= options.quiet_for_s
        ):
            return True, last_create
        time.sleep(0.25)
    return False, last_create


# --------------------------------------------------------------------------- checks


def books_against_venue(
    books: Sequence[Mapping[str, Any]], venue_positions: Sequence[Mapping[str, Any]]
) -> list[str]:
    """Each (key, symbol) where the strategies' books (`bot positions`) do not add up to the
    venue's position: a fill lost, or booked twice."""

    def signed(side: object, size: object) -> Decimal:
        return -_decimal(size) if side == "Sell" else _decimal(size)

    ours: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for row in books:
        if row.get("row") == "position":
            ours[(str(row.get("key")), str(row.get("symbol")))] += signed(
                row.get("side"), row.get("size")
            )
    venue = {
        (str(p.get("note")), str(p.get("symbol"))): signed(p.get("side"), p.get("size"))
        for p in venue_positions
    }
    return [
        f"{key} {symbol}: books {ours.get((key, symbol), 0)}, venue {venue.get((key, symbol), 0)}"
        for key, symbol in sorted(set(ours) | set(venue))
        if ours.get((key, symbol), 0) != venue.get((key, symbol), 0)
    ]


def carried_into_new_positions(
    fills: Sequence[Execution], made_at: Mapping[str, datetime]
) -> list[str]:
    """Our reduce-only orders that filled on a position opened after the one they were made
    for had turned: a ladder's target left resting through a flip (its cancel cut off by a
    kill, or never asked) that took profit on a later position at the gone one's levels.

    `fills`: every fill the journal holds, of every key (the venue's own exits too: they move
    the position); `made_at`: our reduce-only orders by orderLinkId, each with when the venue
    made it (its reports' createdTime). Both are the venue's clock, so they are compared with
    each other only, never with the journal's own times (the bot's clock, which the venue
    need not share). An order is named when, after the venue made it, its key's position in
    the symbol (the fills summed in the venue's time order) was non-zero on the side the
    order adds to, and the order filled after that: the venue fills a reduce-only order only
    on a position it reduces, so the one it filled came after the turn.

    Fills in one venue millisecond are summed together (their order within it is not known,
    whatever order the stream told them in), and a turn counts only strictly after the
    order's millisecond and strictly before its fill's: a target filled as the flip that
    turns its position fills, or made as its position turns, is no evidence. A target that
    fills just before a flip is decided fills on its own position and is not named. Nor is
    one that rested into a new position but was cancelled unfilled: a flip may go out while
    the old targets' cancel is on its way (`reduce-only orders of closed positions` sees any
    left resting at the end)."""
    books: dict[tuple[str, str], list[Execution]] = defaultdict(list)
    for fill in fills:
        books[(fill.key_name, fill.symbol)].append(fill)
    carried: list[str] = []
    for (key, symbol), book in sorted(books.items()):
        moves: dict[datetime, Decimal] = defaultdict(Decimal)
        for fill in book:
            moves[fill.ts] += fill.signed_qty
        timeline: list[tuple[datetime, Decimal]] = []  # the position after each millisecond
        position = Decimal(0)
        for ts in sorted(moves):
            position += moves[ts]
            timeline.append((ts, position))
        named: set[str] = set()
        for fill in sorted(book, key=lambda fill: fill.ts):
            link = fill.order_link_id
            made = made_at.get(link)
            if made is None or link in named:
                continue
            reduces_long = fill.side is Side.SELL
            turn = next(
                (
                    (ts, held)
                    for ts, held in timeline
                    if made < ts < fill.ts and held != 0 and (held > 0) != reduces_long
                ),
                None,
            )
            if turn is not None:
                named.add(link)
                carried.append(
                    f"{link} ({key} {symbol} {fill.side}, made {_clock(made)}): its position "
                    f"turned to {turn[1].normalize():f} at {_clock(turn[0])}; it filled "
                    f"{fill.qty.normalize():f} at {_clock(fill.ts)}, on a new one"
                )
    return carried


def _clock(ts: datetime) -> str:
    return ts.strftime("%H:%M:%S.%f")[:-3]


def _decimal(text: object) -> Decimal:
    try:
        return Decimal(str(text)) if text not in (None, "") else Decimal(0)
    except InvalidOperation:
        return Decimal(-1)


def _min_orders(signals: int) -> int:
    """The fewest orders a soak of `signals` must see placed to mean anything: a quarter.
    (Seed 1498241957's full soak placed 642 for 1,000: the rest were closes with no position
    and signals gone stale while the bot was down.)"""
    return signals // 4


def _sampled(items: Sequence[str]) -> list[str]:
    return list(items[:SAMPLES]) + (
        [f"... and {len(items) - SAMPLES} more"] if len(items) > SAMPLES else []
    )


def evaluate(
    plan: Sequence[SoakSignal],
    journal: Sequence[Mapping[str, Any]],
    books: Sequence[Mapping[str, Any]],
    venue_orders: Sequence[Mapping[str, Any]],
    venue_positions: Sequence[Mapping[str, Any]],
    stats: Mapping[str, Any],
    wall_s: float,
    downtime_s: float,
    rate_per_s: float,
    fills: Sequence[Execution],
    reduce_only_made_at: Mapping[str, datetime | None],
) -> tuple[list[Check], dict[str, Any]]:
    """Compare what was accepted, what the journal says (its orders, its `fills` and, from
    them, the strategies' `books`) and what the venue holds. `reduce_only_made_at`: when the
    venue made each of our reduce-only orders that filled (`Harness.fills`).

    The venue's own orders (a position's take profit / stop loss: no orderLinkId, a
    stopOrderType) are not the bot's: they are counted apart, and the checks of the bot's
    orders, and the journal's rows for them (decision `exit`), leave them out."""
    venue_exits = [o for o in venue_orders if not o.get("orderLinkId") and o.get("stopOrderType")]
    venue_orders = [o for o in venue_orders if o.get("orderLinkId")]
    by_id = {item.id: item for item in plan}
    accepted = [item for item in plan if item.accepted]
    key_to_strategy = {_key_name(name): name for name in STRATEGIES}
    # (targeted strategy, signal, leg): leg 0, and a ladder's targets and break-even close
    expected_link = {
        order_link_id(item.strategy, SOURCE, item.id, leg): (item, leg)
        for item in plan
        for leg in (LADDER_LEGS if item.strategy in LADDERS else (0,))
    }
    # The side of each key's position per symbol: a reduce-only order must face it.
    held = {(str(p.get("note")), str(p.get("symbol"))): str(p.get("side")) for p in venue_positions}

    def faces_its_position(order: Mapping[str, Any]) -> bool:
        side = held.get((str(order.get("note")), str(order.get("symbol"))))
        return side is not None and side != order.get("side")

    rows_by_signal: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    rows_by_link: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in journal:
        rows_by_signal[str(row.get("signal_id"))].append(row)
        if row.get("order_link_id"):
            rows_by_link[str(row["order_link_id"])].append(row)
    venue_by_link: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for order in venue_orders:
        venue_by_link[str(order.get("orderLinkId"))].append(order)

    # Duplicates: one orderLinkId twice at the venue, or one (strategy, signal, leg) twice.
    duplicates: list[str] = []
    legs: dict[tuple[str, str, int], list[str]] = defaultdict(list)
    for link, orders in venue_by_link.items():
        if len(orders) > 1:
            duplicates.append(
                f"orderLinkId {link}: {len(orders)} venue orders "
                f"({', '.join(str(o.get('orderId')) for o in orders)})"
            )
        routed = expected_link.get(link)
        if routed is not None:
            item, leg = routed
            legs[(item.strategy, item.id, leg)].append(link)
    for (strategy, signal_id, leg), links in legs.items():
        if len(set(links)) > 1:
            duplicates.append(f"{strategy}/{signal_id} leg {leg}: orders {sorted(set(links))}")
    duplicate_count = sum(len(orders) - 1 for orders in venue_by_link.values()) + sum(
        len(set(links)) - 1 for links in legs.values()
    )

    # Lost: accepted, but no decision (or an approval with no order, or a failed strategy
    # call) in the journal.
    lost: list[str] = []
    for item in accepted:
        rows = rows_by_signal.get(item.id, [])
        if not rows:
            lost.append(f"{item.id} ({item.strategy} {item.action} {item.symbol}): not in journal")
        elif all(row.get("decision") == "pending" for row in rows):
            lost.append(f"{item.id} ({item.strategy} {item.action} {item.symbol}): still pending")
        elif any(
            row.get("decision") == "approved" and not row.get("order_link_id") for row in rows
        ):
            lost.append(f"{item.id}: approved but no order in the journal")
        elif failed := [row for row in rows if row.get("decision") == "failed"]:
            # The bundled strategies never fail on their own: a failed call (an overrun, a
            # call refused while another still ran) was a signal the bot never traded.
            lost.append(f"{item.id}: failed ({failed[0].get('reason')})")

    # Reduce-only orders still open where their key holds no position they would reduce: a
    # ladder's targets that outlived the stop (or close, or turn) that ended it.
    stranded = [
        f"{order.get('orderLinkId')} ({order.get('note')} {order.get('symbol')} "
        f"{order.get('side')}): {order.get('orderStatus')}, no position it reduces"
        for order in venue_orders
        if order.get("reduceOnly")
        and order.get("orderStatus") not in VENUE_TERMINAL
        and not faces_its_position(order)
    ]
    resting = {  # a target resting for the position it takes profit on: not unfinished work
        str(order.get("orderLinkId"))
        for order in venue_orders
        if order.get("reduceOnly")
        and order.get("orderStatus") in ("New", "PartiallyFilled")
        and faces_its_position(order)
    }

    # Reduce-only orders that rested through their position's turn and filled on the next.
    made_at = {link: at for link, at in reduce_only_made_at.items() if at is not None}
    carried = carried_into_new_positions(fills, made_at)

    # Non-terminal: in the journal or at the venue, after quiescence and a reconciliation.
    non_terminal: list[str] = []
    for link, rows in rows_by_link.items():
        status = rows[0].get("status")
        if link in resting and status in ("New", "PartiallyFilled"):
            continue
        if status not in JOURNAL_TERMINAL:
            at_venue = venue_by_link.get(link, [])
            venue = at_venue[0].get("orderStatus") if at_venue else "absent"
            non_terminal.append(
                f"journal {link} (signal {rows[0].get('signal_id')}): {status} (venue: {venue})"
            )
    for order in venue_orders:
        if order.get("orderStatus") not in VENUE_TERMINAL and order.get("orderLinkId") not in (
            resting
        ):
            non_terminal.append(
                f"venue {order.get('orderLinkId')} ({order.get('note')}): "
                f"{order.get('orderStatus')}"
            )

    # Disagreements between the journal and the venue, order by order.
    disagreements: list[str] = []
    for link in sorted(set(rows_by_link) | set(venue_by_link)):
        rows, orders = rows_by_link.get(link, []), venue_by_link.get(link, [])
        routed = expected_link.get(link)
        owner_signal = rows[0].get("signal_id") if rows else routed[0].id if routed else "?"
        if not orders:
            status = rows[0].get("status")
            if status != "Rejected" and status not in JOURNAL_NON_TERMINAL:
                disagreements.append(
                    f"{link} (signal {owner_signal}): journal {status}, absent at the venue"
                )
            continue
        order = orders[0]
        venue_status = str(order.get("orderStatus"))
        owner = key_to_strategy.get(str(order.get("note")))
        routed = expected_link.get(link)
        if routed is None or owner != routed[0].strategy:
            disagreements.append(
                f"{link} at the venue ({order.get('note')}, {venue_status}) belongs to no "
                "(strategy, signal) the soak routed"
            )
        if not rows:
            disagreements.append(
                f"{link} (signal {owner_signal}): at the venue ({venue_status}, "
                f"cumExecQty {order.get('cumExecQty')}), absent in the journal"
            )
            continue
        row = rows[0]
        journal_status, mapped = row.get("status"), VENUE_TO_JOURNAL.get(venue_status, venue_status)
        if journal_status != mapped:
            disagreements.append(
                f"{link} (signal {owner_signal}): journal {journal_status}, venue {venue_status}"
            )
        elif _decimal(row.get("filled_qty")) != _decimal(order.get("cumExecQty")):
            disagreements.append(
                f"{link} (signal {owner_signal}): journal filled {row.get('filled_qty')}, "
                f"venue cumExecQty {order.get('cumExecQty')}"
            )

    # The books against the venue: every fill the venue made is in the journal, once.
    unbooked = books_against_venue(books, venue_positions)

    # A leg decided twice by one strategy (e.g. run again after a restart): not an order
    # twice, but the journal no longer tells one story per signal.
    decided: Counter[tuple[str, str, str]] = Counter(
        (str(row.get("signal_id")), str(row.get("strategy")), str(row.get("leg")))
        for row in journal
        if row.get("decision") not in ("pending", "exit")
    )
    repeated = [
        f"{signal_id} ({strategy}, leg {leg}): {count} decisions"
        for (signal_id, strategy, leg), count in sorted(decided.items())
        if count > 1
    ]

    # Approved orders the journal gave up on after an error the design calls transient
    # (10006 is retryable; 10016, 5xx and timeouts are ambiguous): a trade that never happened.
    gave_up = [
        f"{link} (signal {rows[0].get('signal_id')}): {rows[0].get('status')}: "
        f"{rows[0].get('reason')}"
        for link, rows in sorted(rows_by_link.items())
        if rows[0].get("status") == "Rejected"
        and any(mark in str(rows[0].get("reason")) for mark in TRANSIENT_REASONS)
    ]

    # Pace: 10006 answers the bot earned itself (injected ones subtracted).
    answered_10006 = int(stats.get("answers_by_ret_code", {}).get("10006", 0))
    injected_10006 = int(stats.get("faults_injected", {}).get("rate_limit_10006", 0))
    own_10006 = max(0, answered_10006 - injected_10006)
    # No fault injects an HTTP 403: each one is the IP limit, which bans every key.
    ip_bans = int(stats.get("answers_by_http_status", {}).get("403", 0))
    per_key = Counter(str(order.get("note")) for order in venue_orders)
    # The fastest any bot could finish: no sooner than the load is offered, and no sooner
    # than the busiest key's orders fit through its order/create limit.
    offered_s = len(plan) / rate_per_s
    paced_s = max(per_key.values(), default=0) / ORDER_CREATE_PER_S
    minimum_s = max(offered_s, paced_s)
    active_s = max(0.0, wall_s - downtime_s)
    ratio = active_s / minimum_s if minimum_s else 0.0

    unaccepted = [
        f"{item.id}: {item.outcome} after {item.attempts} attempts ({', '.join(item.answers[-3:])})"
        for item in plan
        if not item.accepted
    ]
    decisions = Counter(
        str(row.get("decision")) for row in journal if row.get("signal_id") in by_id
    )
    reasons = Counter(
        str(row.get("reason"))[:60]
        for row in journal
        if row.get("decision") in {"rejected", "declined"} and row.get("signal_id") in by_id
    )
    statuses = Counter(str(order.get("orderStatus")) for order in venue_orders)

    checks = [
        Check(
            "signals accepted",
            f"{len(accepted)}/{len(plan)}",
            "all",
            not unaccepted,
            True,
            _sampled(unaccepted),
        ),
        # A soak in which few signals trade would pass every check below and prove nothing.
        Check(
            "orders at the venue",
            len(venue_orders),
            f">= {_min_orders(len(plan))}",
            len(venue_orders) >= _min_orders(len(plan)),
            True,
            [f"decisions: {dict(decisions)}", f"reasons: {dict(reasons.most_common(3))}"],
        ),
        Check("duplicate orders", duplicate_count, "0", not duplicates, True, _sampled(duplicates)),
        Check("lost signals", len(lost), "0", not lost, True, _sampled(lost)),
        Check(
            "non-terminal orders",
            len(non_terminal),
            "0",
            not non_terminal,
            True,
            _sampled(non_terminal),
        ),
        Check(
            "reduce-only orders of closed positions",
            len(stranded),
            "0",
            not stranded,
            True,
            _sampled(stranded),
        ),
        Check(
            "reduce-only orders carried into a new position",
            len(carried),
            "0",
            not carried,
            True,
            _sampled(carried),
        ),
        Check(
            "journal/venue disagreements",
            len(disagreements),
            "0",
            not disagreements,
            True,
            _sampled(disagreements),
        ),
        Check(
            "books unlike the venue's positions",
            len(unbooked),
            "0",
            not unbooked,
            True,
            _sampled(unbooked),
        ),
        Check(
            "orders given up on a transient error",
            len(gave_up),
            "0",
            not gave_up,
            False,
            _sampled(gave_up),
        ),
        Check("signals decided twice", len(repeated), "0", not repeated, False, _sampled(repeated)),
        Check(
            "10006 from our own pace",
            own_10006,
            "0",
            own_10006 == 0,
            False,
            [f"{answered_10006} answered, {injected_10006} injected"],
        ),
        Check(
            "HTTP 403 (IP limit) answers",
            ip_bans,
            "0",
            ip_bans == 0,
            True,  # every key stops for at least 10 minutes: an outage
            ["over Bybit's 600 requests per 5 s: every key banned"] if ip_bans else [],
        ),
        Check(
            "wall time / limits' minimum",
            round(ratio, 2),
            "<= 1.2",
            0 < ratio <= 1.2,
            False,
            [
                f"wall {wall_s:.1f} s - bot down {downtime_s:.1f} s = {active_s:.1f} s; "
                f"minimum {minimum_s:.1f} s = the larger of the load's offer time "
                f"{offered_s:.1f} s and {max(per_key.values(), default=0)} orders on the "
                f"busiest key at {ORDER_CREATE_PER_S}/s ({paced_s:.1f} s)"
            ],
        ),
    ]
    facts = {
        "decisions": dict(decisions),
        "decline_or_reject_reasons": dict(reasons.most_common(10)),
        "venue_order_statuses": dict(statuses),
        "venue_exit_statuses": dict(Counter(str(o.get("orderStatus")) for o in venue_exits)),
        "venue_orders_per_key": dict(per_key),
        # Our filled reduce-only orders the carried-over check judged, and those it could not
        # (no venue report of them journaled with when the venue made them).
        "reduce_only_filled": {
            "judged": len(made_at),
            "made_unknown": len(reduce_only_made_at) - len(made_at),
        },
        "wall_s": round(wall_s, 3),
        "downtime_s": round(downtime_s, 3),
        "limits_minimum_s": minimum_s,
        "answers_by_ret_code": stats.get("answers_by_ret_code", {}),
        "answers_by_http_status": stats.get("answers_by_http_status", {}),
        "faults_injected": stats.get("faults_injected", {}),
        "requests_by_path": stats.get("requests_by_path", {}),
        "signal_outcomes": dict(Counter(item.outcome for item in plan)),
    }
    return checks, facts


# --------------------------------------------------------------------------- the soak


def run_soak(options: SoakOptions) -> SoakReport:
    """Run one soak and report; subprocesses never outlive it."""
    seed = options.seed if options.seed is not None else secrets.randbits(32)
    rng = random.Random(seed)  # noqa: S311 - load shape, not security
    started_at = run_started_at()
    root = options.work_dir or Path(tempfile.mkdtemp(prefix="soak-"))
    root.mkdir(parents=True, exist_ok=True)
    harness = Harness(options, root)
    chaos_thread: threading.Thread | None = None
    sender: Sender | None = None
    log = options.log
    try:
        harness.start_sim()
        harness.start_price_walks(seed)
        harness.start_bot()
        faults = fault_plan(harness.sim_get("/sim/faults"), options.faults)
        harness.set_faults(faults)
        log(f"soak {started_at}: seed {seed}, state in {root}, faults {faults}")

        plan = plan_signals(options.signals, rng, f"{seed:08x}")
        sender = Sender(harness, plan, options.rate_per_s, random.Random(rng.random()))  # noqa: S311
        chaos = Chaos(harness, sender, options, random.Random(rng.random()))  # noqa: S311
        chaos_thread = threading.Thread(target=chaos.run, name="chaos", daemon=True)
        load_started = time.monotonic()
        chaos_thread.start()
        sender.run()
        log(f"load sent in {time.monotonic() - load_started:.1f} s: {dict(sender.answer_counts)}")
        chaos.done.wait(PROCESS_START_TIMEOUT_S * MAX_START_ATTEMPTS)
        if chaos.error is not None:
            raise SoakError(f"chaos failed: {chaos.error}") from chaos.error
        if not harness.bot_alive():
            chaos.watch()

        quiet, last_change = wait_for_quiescence(harness, options)
        wall_s = last_change - load_started
        downtime_s = sum(record.downtime_s for record in chaos.kills)
        log(f"{'quiet' if quiet else 'NOT quiet'} after {wall_s:.1f} s of load")
        harness.set_faults({})
        # The prices hold still from here: what the bot is then given time to catch up with
        # is all the venue will hold when it is read.
        harness.stop_price_walks()
        time.sleep(options.reconcile_s)
        if not harness.bot_alive():
            chaos.watch()
            time.sleep(options.reconcile_s)
        stopped_cleanly = harness.stop_bot()

        venue_orders = harness.sim_get("/sim/orders")["orders"]
        venue_positions = harness.sim_get("/sim/positions")["positions"]
        stats = harness.sim_get("/sim/stats")
        journal = harness.journal()
        fills, reduce_only_made_at = harness.fills()
        if options.keep_state:
            (root / "venue.json").write_text(
                json.dumps({"orders": venue_orders, "positions": venue_positions, "stats": stats}),
                encoding="utf-8",
            )
        checks, facts = evaluate(
            plan,
            journal,
            harness.books(),
            venue_orders,
            venue_positions,
            stats,
            wall_s,
            downtime_s,
            options.rate_per_s,
            fills,
            reduce_only_made_at,
        )
        checks.insert(
            1,
            Check(
                "quiescence reached",
                "yes" if quiet else f"no ({options.quiesce_timeout_s:.0f} s)",
                "yes",
                quiet,
                False,
            ),
        )
        facts.update(
            {
                "seed": seed,
                "faults": faults,
                "kills": [asdict(record) for record in chaos.kills],
                "bot_starts": harness.bot_starts,
                "start_failures": harness.start_failures,
                "unexpected_exits": chaos.unexpected_exits,
                "stopped_cleanly_on_sigterm": stopped_cleanly,
                "webhook_answers": dict(sender.answer_counts),
            }
        )
        return SoakReport(
            options={
                key: str(value) if isinstance(value, Path) else value
                for key, value in asdict(options).items()
                if key != "log"
            }
            | {"seed": seed},
            started_at=started_at,
            checks=checks,
            facts=facts,
            state_dir=str(root) if options.keep_state or options.work_dir else None,
        )
    finally:
        if sender is not None:
            sender.stop.set()
        if chaos_thread is not None:
            chaos_thread.join(PROCESS_START_TIMEOUT_S)
        harness.close()
        if not options.keep_state and options.work_dir is None:
            shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- output


def print_report(report: SoakReport, console: Console) -> None:
    table = Table(title=f"soak {report.started_at} (seed {report.options.get('seed')})")
    for column in ("check", "value", "target", ""):
        table.add_column(column, overflow="fold")
    for check in report.checks:
        mark = "ok" if check.ok else ("FAIL" if check.correctness else "miss")
        table.add_row(check.name, str(check.value), check.target, mark)
    console.print(table)
    facts = report.facts
    console.print(
        f"kills: {len(facts.get('kills', []))}, bot starts: {facts.get('bot_starts')}, "
        f"unexpected exits: {len(facts.get('unexpected_exits', []))}, "
        f"clean SIGTERM stop: {facts.get('stopped_cleanly_on_sigterm')}",
        highlight=False,
    )
    console.print(f"decisions: {facts.get('decisions')}", highlight=False)
    console.print(f"reasons: {facts.get('decline_or_reject_reasons')}", highlight=False)
    console.print(f"venue statuses: {facts.get('venue_order_statuses')}", highlight=False)
    console.print(f"venue's TP/SL orders: {facts.get('venue_exit_statuses')}", highlight=False)
    console.print(f"reduce-only orders filled: {facts.get('reduce_only_filled')}", highlight=False)
    console.print(f"retCodes: {facts.get('answers_by_ret_code')}", highlight=False)
    console.print(f"faults injected: {facts.get('faults_injected')}", highlight=False)
    for check in report.checks:
        if not check.ok and check.samples:
            console.print(f"[bold]{check.name}[/] (first {SAMPLES}):")
            for sample in check.samples:
                console.print(f"  {sample}", highlight=False, soft_wrap=True)
    if report.state_dir:
        console.print(f"state and logs kept in {report.state_dir}", highlight=False)


def write_json(report: SoakReport, path: Path | None) -> Path:
    return write_results(report.as_json(), "soak", report.started_at, path)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=1000, help="signals to send (1000)")
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs of the bot (10)")
    parser.add_argument("--faults", type=float, default=0.2, help="total fault probability (0.2)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the load and the chaos")
    parser.add_argument("--rate", type=float, default=30.0, help="signals per second (30)")
    parser.add_argument("--max-signal-age", type=float, default=6.0, help="risk.max_signal_age_s")
    parser.add_argument(
        "--startup-kills", type=float, default=0.0, help="share of starts killed early (0)"
    )
    parser.add_argument("--json-out", type=Path, default=None, help="result file")
    parser.add_argument(
        "--keep-state", action="store_true", help="keep config, journal and logs for a look"
    )
    arguments = parser.parse_args(argv)
    if arguments.signals < 1 or arguments.kills < 0 or not 0 <= arguments.faults <= 1:
        parser.error("--signals >= 1, --kills >= 0, 0 <= --faults <= 1")
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    stop_children_on_sigterm()
    arguments = _arguments(argv)
    options = SoakOptions(
        signals=arguments.signals,
        kills=arguments.kills,
        faults=arguments.faults,
        seed=arguments.seed,
        rate_per_s=arguments.rate,
        max_signal_age_s=arguments.max_signal_age,
        keep_state=arguments.keep_state,
        startup_kill_share=arguments.startup_kills,
        json_out=arguments.json_out,
    )
    console = Console()
    try:
        report = run_soak(options)
    except SoakError as exc:
        say_error(console, "soak could not run", exc)
        return 2
    print_report(report, console)
    console.print(f"results: {write_json(report, options.json_out)}", highlight=False)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
