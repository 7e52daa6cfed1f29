"""What every benchmark needs: free ports, bounded waits, a subprocess with its log, a
process's CPU and memory, the risk limits that stay out of a benchmark's way, and one line of
a report."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TextIO

from rich.console import Console

__all__ = [
    "REPO_ROOT",
    "UNLIMITED_RISK",
    "Check",
    "Process",
    "cpu_seconds",
    "free_port",
    "latency_ms",
    "machine",
    "rss_mb",
    "run_started_at",
    "stop_children_on_sigterm",
    "this_tree",
    "wait_until",
]

#: How long a benchmark's subprocess gets to stop on SIGTERM before it is killed.
STOP_TIMEOUT_S: Final = 20.0

#: `[risk]` lines (under the section header, beside `symbols` and `max_signal_age_s`) that
#: keep the gate's limits out of a benchmark about latency, pacing or the lifecycle.
UNLIMITED_RISK: Final = """\
max_order_notional_usdt = 100000
max_position_notional_usdt = 100000000
max_strategy_exposure_usdt = 100000000
max_total_exposure_usdt = 1000000000
max_daily_loss_usdt = 100000000
max_open_orders = 100000
max_orders_per_minute = 1000000
max_orders_per_day = 10000000
"""


def stop_children_on_sigterm() -> None:
    """A SIGTERM of the benchmark (a `kill`, a CI timeout) ends it through its `finally`
    blocks, which stop its bots and simulator, instead of leaving them running."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the clean-up
    raise SystemExit(128 + signum)


class Process:
    """A subprocess with its output in a log file (a header line for each start), in a
    session of its own so that a Ctrl-C of the benchmark does not reach it directly; stopped
    with SIGTERM, then SIGKILL."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        cwd: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`env` replaces the environment (None: this one's)."""
        self.name = name
        self.log_path = log_path
        self._log: TextIO = log_path.open("a", encoding="utf-8")
        self._log.write(f"\n===== {datetime.now(UTC).isoformat()} {' '.join(argv)}\n")
        self._log.flush()
        self.popen = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            list(argv),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=None if env is None else dict(env),
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL, then reap."""
        if self.alive:
            self.popen.send_signal(signal.SIGKILL)
        self._reap(STOP_TIMEOUT_S)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """SIGTERM and wait; SIGKILL after `timeout_s`. True if it exited on SIGTERM."""
        if not self.alive:
            self._reap(1.0)
            return True
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return False
        self._reap(1.0)
        return True

    def tail(self, lines: int = 15) -> str:
        """The last lines of its log."""
        if not self._log.closed:
            self._log.flush()
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _reap(self, timeout_s: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout_s)
        if not self._log.closed:
            self._log.close()


@dataclass
class Check:
    """One line of a report: a measured value against its target."""

    name: str
    value: float | int | str
    target: str
    ok: bool
    correctness: bool  # a failure here fails the benchmark (exit code 1)
    samples: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(probe: Callable[[], bool], timeout_s: float, interval_s: float = 0.01) -> bool:
    """Poll `probe` until it is true (True) or `timeout_s` has passed (False)."""
    deadline = time.monotonic() + timeout_s
    while not probe():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
    return True


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process (all its threads) so far, from /proc; None if unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process, from /proc; None if unknown."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"
#: The tree these benchmarks belong to: the bot they start is this tree's.
REPO_ROOT: Final = Path(__file__).resolve().parent.parent


def this_tree(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with this tree first on PYTHONPATH, so that a `python -m bot` started in another
    directory runs this tree's bot, not the installed package's (a benchmark run from another
    checkout, to compare two versions, then measures that checkout's code)."""
    path = os.pathsep.join(filter(None, (str(REPO_ROOT), env.get("PYTHONPATH", ""))))
    return {**env, "PYTHONPATH": path}


@dataclass(frozen=True)
class Spread:
    """How a set of durations spreads: their count, nearest-rank p50 and p99, max and mean,
    in one unit (3 decimals). Every benchmark summarises durations with this one definition."""

    n: int
    p50: float
    p99: float
    max: float
    mean: float

    @classmethod
    def of(cls, nanoseconds: Sequence[int], unit_ns: float) -> Spread | None:
        """The spread of `nanoseconds` in units of `unit_ns` (1e6: ms); None without any."""
        if not nanoseconds:
            return None
        ordered = sorted(nanoseconds)

        def rank(q: float) -> float:
            return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)] / unit_ns, 3)

        return cls(
            n=len(ordered),
            p50=rank(0.50),
            p99=rank(0.99),
            max=round(ordered[-1] / unit_ns, 3),
            mean=round(sum(ordered) / len(ordered) / unit_ns, 3),
        )

    def named(self, suffix: str) -> dict[str, float | int]:
        """As a report's fields: `n`, then `p50{suffix}`, `p99{suffix}`, `max...`, `mean...`."""
        return {
            "n": self.n,
            **{f"{name}{suffix}": getattr(self, name) for name in ("p50", "p99", "max", "mean")},
        }


def latency_ms(nanoseconds: Sequence[int]) -> dict[str, float | int | None]:
    """Nearest-rank p50/p99, the max and the mean, in milliseconds (None without samples)."""
    spread = Spread.of(nanoseconds, 1e6)
    if spread is None:
        return {"n": 0, "p50": None, "p99": None, "max": None, "mean": None}
    return dict(spread.named(""))


def run_started_at() -> str:
    """Now (UTC) as a run's id: its report's `started_at` and its results file's name."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def machine() -> dict[str, Any]:
    """The machine a run measured, for its report."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_results(report: Any, name: str, started_at: str, path: Path | None = None) -> Path:
    """Write a benchmark's JSON report to `path`, else bench/results/<name>-<started_at>.json;
    returns where it went."""
    target = path or RESULTS_DIR / f"{name}-{started_at}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return target


def say_error(console: Console, label: str, problem: object) -> None:
    """Print a one-line error, `label: problem`, never wrapped at the terminal's width (a long
    path must not split the line a user or a script reads)."""
    console.print(f"[bold red]{label}:[/] {problem}", highlight=False, soft_wrap=True)


def finish(console: Console, report: dict[str, Any], name: str, path: Path | None) -> int:
    """Write the report, say where, list its failed checks; the benchmark's exit code (0, or
    1 when a correctness check failed)."""
    target = write_results(report, name, str(report["started_at"]), path)
    console.print(f"results: {target}", highlight=False, soft_wrap=True)
    for failure in report["failures"]:
        say_error(console, "failed", failure)
    return 1 if report["failures"] else 0
