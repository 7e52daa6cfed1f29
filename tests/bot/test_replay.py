"""`bot replay FILE` as a user runs it (a process of its own), on the shipped sample and on
small histories whose outcome is known in advance; and the history reader on its own."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bot.replay import HistoryError, PricePoint, SignalRecord, read_history
from tests.conftest import SIM_CONFIG

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "config" / "examples" / "history.jsonl"

#: Two strategies, each on its own key, so each signal's outcome is its strategy's alone.
TWO_STRATEGIES = """
[keys.key_a]
environment = "sim"
[strategies.a]
plugin = "follow"
key = "key_a"
[strategies.a.params]
max_notional_usdt = 500
[keys.key_b]
environment = "sim"
[strategies.b]
plugin = "follow"
key = "key_b"
[strategies.b.params]
max_notional_usdt = 500
"""

#: `a` buys BTC at 100000 (stop 98000, target 104000) and the price falls through its stop to
#: 97500; `b` buys ETH at 3000 (stop 2900, target 3200) and the price rises through its target
#: to 3250. Follow sizes at 500 USDT: 0.005 BTC, bought at 100000 and sold at the bid a tick
#: under 97500, loses 0.005 x 2500.1 = 12.5005 USDT; 0.16 ETH (500 / 3000, down to the 0.01
#: lot) sold at 3249.99 wins 0.16 x 249.99 = 39.9984 USDT (before fees).
STOP_AND_TARGET: list[dict[str, Any]] = [
    {"ts": "2026-10-01T00:00:00Z", "prices": {"BTCUSDT": 100000, "ETHUSDT": 3000}},
    {
        "id": "a-1",
        "strategy": "a",
        "symbol": "BTCUSDT",
        "side": "buy",
        "stop_loss": 98000,
        "take_profit": 104000,
        "ts": "2026-10-01T08:00:00Z",
    },
    {"ts": "2026-10-01T12:00:00Z", "prices": {"BTCUSDT": 97500}},
    {
        "id": "b-1",
        "strategy": "b",
        "symbol": "ETHUSDT",
        "side": "buy",
        "stop_loss": 2900,
        "take_profit": [3200, 3400],
        "ts": "2026-10-02T08:00:00Z",
    },
    {"ts": "2026-10-02T12:00:00Z", "prices": {"ETHUSDT": 3250}},
]


def replay(
    tmp_path: Path, history: Path, *options: str, config: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m bot replay` in tmp_path, with the offline default configuration unless
    another is given, and no secrets but the ones a sim replay generates for itself."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "bot",
            "replay",
            str(history),
            "--config",
            str(config or ROOT / "config" / "bot.toml"),
            "--secrets-dir",
            str(tmp_path / "no-secrets"),
            *options,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def report_of(run: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 1, "--json prints the report as one JSON object on one line"
    report: dict[str, Any] = json.loads(lines[0])
    return report


def strategies_of(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["strategy"]: row for row in report["strategies"]}


def write_lines(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


@pytest.fixture
def config_of(tmp_path: Path) -> Callable[..., Path]:
    """A sim configuration (tests/conftest.py's) with these strategies instead of `follow`,
    and `risk` settings replacing its own."""

    def write(strategies: str, **risk: object) -> Path:
        text = SIM_CONFIG.format(state_dir=tmp_path / "var", port=0)
        text = text[: text.index("[keys.follow_sim]")] + strategies
        for name, value in risk.items():
            text = re.sub(rf"(?m)^{name} = .*$", f"{name} = {value}", text)
        path = tmp_path / "replay.toml"
        path.write_text(text)
        return path

    return write


# the shipped sample --------------------------------------------------------------------------


def test_the_sample_history_replays_in_one_command_with_every_kind_of_outcome(
    tmp_path: Path,
) -> None:
    run = replay(tmp_path, SAMPLE, "--json")

    report = report_of(run)
    follow = strategies_of(report)["follow"]
    assert (report["signals"], report["duplicates"], report["refused"]) == (33, 1, [])
    assert report["from"].startswith("2026-10-01") and report["to"].startswith("2026-10-31")
    assert follow["declined"] == 1  # a signal without a stop loss
    assert follow["screened"] == {"SYMBOL_NOT_ALLOWED": 1}  # never reached the strategy
    assert follow["rejected"] == {"PRICE_SANITY": 1, "STOP_LOSS": 1}
    # Every signal is accounted for once: refused first, declined, or an intent decided.
    assert follow["signals"] == 1 + follow["declined"] + follow["intents"]
    assert follow["intents"] == follow["approved"] + sum(follow["rejected"].values())
    assert follow["approved"] == follow["orders"] == 28
    assert follow["open_orders"] == 1  # a limit the price never reached
    assert follow["fills"] > follow["filled_orders"]  # stop-loss and take-profit exits too
    assert 0 < follow["wins"] < follow["trades"]
    assert follow["win_rate"] == pytest.approx(follow["wins"] / follow["trades"])
    assert Decimal(follow["fees_usdt"]) > 0
    assert Decimal(follow["unrealized_pnl_usdt"]) != 0  # a position still open at the end
    net = Decimal(follow["realized_pnl_usdt"]) - Decimal(follow["fees_usdt"])
    assert Decimal(follow["net_pnl_usdt"]) == net + Decimal(follow["unrealized_pnl_usdt"])
    assert Decimal(follow["max_drawdown_usdt"]) > 0
    assert Decimal(follow["equity"][-1][1]) == Decimal(follow["net_pnl_usdt"])
    assert not (tmp_path / "var").exists(), "a replay never touches the configured journal"


def test_the_table_names_each_figure_per_strategy(tmp_path: Path) -> None:
    run = replay(tmp_path, SAMPLE)

    assert run.returncode == 0, run.stderr
    for figure in ("refused SYMBOL_NOT_ALLOWED", "win rate", "max drawdown", "net PnL"):
        assert figure in run.stdout
    assert "33 signals and" in run.stdout and "1 duplicates" in run.stdout


# outcomes a history implies ------------------------------------------------------------------


def test_a_stop_hit_loses_and_a_target_hit_wins(
    tmp_path: Path, config_of: Callable[..., Path]
) -> None:
    history = write_lines(tmp_path / "history.jsonl", STOP_AND_TARGET)

    strategies = strategies_of(
        report_of(replay(tmp_path, history, "--json", config=config_of(TWO_STRATEGIES)))
    )

    a, b = strategies["a"], strategies["b"]
    assert (a["trades"], a["wins"], a["win_rate"]) == (1, 0, 0.0)
    assert Decimal(a["realized_pnl_usdt"]) == Decimal("-12.5005")
    assert Decimal(a["max_drawdown_usdt"]) >= Decimal("12.5005")
    assert (b["trades"], b["wins"], b["win_rate"]) == (1, 1, 1.0)
    assert Decimal(b["realized_pnl_usdt"]) == Decimal("39.9984")
    for strategy in (a, b):
        assert (strategy["signals"], strategy["approved"], strategy["fills"]) == (1, 1, 2)
        assert Decimal(strategy["fees_usdt"]) > 0
        assert Decimal(strategy["unrealized_pnl_usdt"]) == 0


def test_funding_of_each_8_hour_boundary_crossed_holding_is_the_accounts_not_a_strategys(
    tmp_path: Path, config_of: Callable[..., Path]
) -> None:
    # `a` holds 0.005 BTC from 07:00 through 08:00 and 16:00 (marked at 100000, then 101000):
    # 0.005 x 100000 x 0.0001 + 0.005 x 101000 x 0.0001 = 0.1005 USDT paid.
    history = write_lines(
        tmp_path / "held.jsonl",
        [
            {"ts": "2026-10-01T06:00:00Z", "prices": {"BTCUSDT": 100000, "ETHUSDT": 3000}},
            {
                "id": "a-held",
                "strategy": "a",
                "symbol": "BTCUSDT",
                "side": "buy",
                "stop_loss": 98000,
                "take_profit": 104000,
                "ts": "2026-10-01T07:00:00Z",
            },
            {"ts": "2026-10-01T12:00:00Z", "prices": {"BTCUSDT": 101000}},
            {"ts": "2026-10-01T17:00:00Z", "prices": {"BTCUSDT": 101000}},
        ],
    )

    report = report_of(replay(tmp_path, history, "--json", config=config_of(TWO_STRATEGIES)))

    assert Decimal(report["funding_paid_usdt"]) == Decimal("0.1005")
    a = strategies_of(report)["a"]
    assert (a["fills"], Decimal(a["realized_pnl_usdt"])) == (1, 0)  # funding is no fill


def test_an_out_of_order_file_is_replayed_in_time_order(
    tmp_path: Path, config_of: Callable[..., Path]
) -> None:
    # In file order the stop's price point would come before its signal: no loss at all.
    history = write_lines(tmp_path / "shuffled.jsonl", STOP_AND_TARGET[::-1])

    strategies = strategies_of(
        report_of(replay(tmp_path, history, "--json", config=config_of(TWO_STRATEGIES)))
    )

    assert Decimal(strategies["a"]["realized_pnl_usdt"]) == Decimal("-12.5005")
    assert Decimal(strategies["b"]["realized_pnl_usdt"]) == Decimal("39.9984")


def test_a_limit_crossed_is_a_rejection_per_rule_until_the_next_utc_day(
    tmp_path: Path, config_of: Callable[..., Path]
) -> None:
    # Signals a month old pass `max_signal_age_s` and the day's count starts again at UTC
    # midnight: the gate lives on the history's clock.
    def buy(signal_id: str, ts: str) -> dict[str, Any]:
        return {"id": signal_id, "symbol": "BTCUSDT", "side": "buy", "stop_loss": 95000, "ts": ts}

    records: list[dict[str, Any]] = [
        {"ts": "2026-10-05T09:00:00Z", "prices": {"BTCUSDT": 100000}},
        buy("d1-1", "2026-10-05T10:00:00Z"),
        buy("d1-2", "2026-10-05T14:00:00Z"),
        buy("d1-3", "2026-10-05T23:59:00Z"),
        buy("d2-1", "2026-10-06T00:01:00Z"),
    ]
    config = config_of(
        '[keys.k]\nenvironment = "sim"\n[strategies.follow]\nplugin = "follow"\nkey = "k"\n',
        max_orders_per_day=2,
    )

    follow = strategies_of(
        report_of(
            replay(tmp_path, write_lines(tmp_path / "h.jsonl", records), "--json", config=config)
        )
    )["follow"]

    assert (follow["signals"], follow["approved"]) == (4, 3)
    assert follow["rejected"] == {"MAX_ORDERS_PER_DAY": 1}


# errors --------------------------------------------------------------------------------------


def test_a_malformed_line_is_one_line_naming_its_number(tmp_path: Path) -> None:
    history = tmp_path / "broken.jsonl"
    history.write_text(
        json.dumps(STOP_AND_TARGET[0]) + "\n\n" + '{"id": "x", "symbol": "BTCUSDT", "side": \n'
    )

    run = replay(tmp_path, history)

    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert f"{history}:3: not a JSON object" in run.stderr


def test_an_invalid_signal_names_its_line_and_field(tmp_path: Path) -> None:
    history = write_lines(
        tmp_path / "h.jsonl", [{"id": "x", "symbol": "BTCUSDT", "side": "up", "ts": 1}]
    )

    run = replay(tmp_path, history)

    assert run.returncode == 2
    assert f"{history}:1: invalid signal: side: must be one of buy, sell" in run.stderr


def test_a_later_price_the_simulator_cannot_take_is_refused_before_replaying(
    tmp_path: Path,
) -> None:
    """Only each symbol's first price was checked against the simulator: a later one above the
    instrument's maxPrice stopped the replay halfway as an unexpected error (exit 1)."""
    history = write_lines(
        tmp_path / "h.jsonl",
        [*STOP_AND_TARGET, {"ts": "2026-10-03T00:00:00Z", "prices": {"BTCUSDT": 10**15}}],
    )

    run = replay(tmp_path, history)

    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    line = len(STOP_AND_TARGET) + 1
    assert f"{history}:{line}: BTCUSDT: price 1000000000000000 is above the maxPrice" in run.stderr


def run_program(program: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`program` (which patches something, then runs the CLI) in a Python of its own."""
    return subprocess.run(
        [sys.executable, "-c", program],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_plot_without_matplotlib_says_how_to_install_it_before_replaying(tmp_path: Path) -> None:
    # matplotlib made unimportable in that process, installed or not.
    program = (
        "import sys; sys.modules['matplotlib'] = None; from bot.cli import main; "
        f"sys.argv = ['bot', 'replay', {str(SAMPLE)!r}, '--plot', 'out.png', '--config', "
        f"{str(ROOT / 'config' / 'bot.toml')!r}]; main()"
    )

    run = run_program(program, tmp_path)

    assert run.returncode == 2
    assert "--plot needs matplotlib" in run.stderr
    assert "pip install -e '.[plot]'" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "out.png").exists()


def test_plot_draws_prices_signals_and_equity(
    tmp_path: Path, config_of: Callable[..., Path]
) -> None:
    pytest.importorskip("matplotlib")
    history = write_lines(tmp_path / "history.jsonl", STOP_AND_TARGET)

    run = replay(tmp_path, history, "--plot", "chart.png", config=config_of(TWO_STRATEGIES))

    assert run.returncode == 0, run.stderr
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("report.txt", ".txt is not an image format matplotlib writes; end the name with .png"),
        ("report", "no suffix is not an image format"),
        ("missing/report.png", "there is no directory missing; create it first"),
        ("folder.png", "is not a regular file; name a file to write"),  # a directory
    ],
)
def test_a_plot_it_could_not_write_is_refused_before_replaying(
    tmp_path: Path, target: str, problem: str
) -> None:
    pytest.importorskip("matplotlib")
    (tmp_path / "folder.png").mkdir()

    run = replay(tmp_path, SAMPLE, "--plot", target)

    assert run.returncode == 2
    assert f"--plot {target}: {problem}" in run.stderr
    assert "Traceback" not in run.stderr and "replaying" not in run.stderr


def test_a_configuration_outside_sim_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "testnet.toml"
    config.write_text('environment = "testnet"\n')

    run = replay(tmp_path, SAMPLE, config=config)

    assert run.returncode == 2
    assert "simulator only" in run.stderr and "Traceback" not in run.stderr


def test_a_state_dir_with_a_journal_is_refused(tmp_path: Path) -> None:
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "journal.sqlite3").write_text("")

    run = replay(tmp_path, SAMPLE, "--state-dir", str(tmp_path / "kept"))

    assert run.returncode == 2
    assert "already holds a journal" in run.stderr


def test_a_state_dir_holding_anything_is_refused(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine\n")

    run = replay(tmp_path, SAMPLE, "--state-dir", str(tmp_path / "busy"))

    assert run.returncode == 2
    assert "is not empty; give a new or empty directory" in run.stderr
    assert [path.name for path in (tmp_path / "busy").iterdir()] == ["notes.txt"]


def test_a_state_dir_that_is_a_file_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    taken = tmp_path / "a-file"
    taken.write_text("kept\n")

    run = replay(tmp_path, SAMPLE, "--state-dir", str(taken))

    assert run.returncode == 2
    assert run.stderr.strip() == (
        f"error: --state-dir {taken}: cannot make it a directory (File exists); give a new one"
    )
    assert taken.read_text() == "kept\n"


def test_an_empty_state_dir_is_refused_not_taken_as_the_current_directory(
    tmp_path: Path,
) -> None:
    run = replay(tmp_path, SAMPLE, "--state-dir", "")

    assert run.returncode == 2
    assert run.stderr.strip() == (
        "error: --state-dir '' names no directory: give a new directory's path"
    )
    assert list(tmp_path.iterdir()) == []  # nothing written where it runs


# the history reader --------------------------------------------------------------------------


def test_records_come_in_time_order_ties_in_file_order(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "h.jsonl",
        [
            {"id": "late", "symbol": "BTCUSDT", "side": "sell", "ts": "2026-10-02T00:00:00Z"},
            {"ts": 1790812800000, "prices": {"BTCUSDT": "97000.5"}},  # 2026-10-01T00:00Z
            {"id": "tie", "symbol": "btcusdt", "side": "long", "ts": "2026-10-01T00:00:00Z"},
        ],
    )

    history = read_history(path, "voiceofchain")

    assert [record.line for record in history.records] == [2, 3, 1]
    point, tie = history.records[0], history.records[1]
    assert isinstance(point, PricePoint) and isinstance(tie, SignalRecord)
    assert point.ts == datetime(2026, 10, 1, tzinfo=UTC)
    assert point.prices == {"BTCUSDT": Decimal("97000.5")}
    assert tie.signal.symbol == "BTCUSDT" and tie.body == path.read_text().splitlines()[2].encode()
    assert history.first_prices() == {"BTCUSDT": (2, Decimal("97000.5"))}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"ts": "2026-10-01T00:00:00Z", "prices": {}}', "prices: must be an object of symbol"),
        ('{"ts": "2026-10-01T00:00:00Z", "prices": {"BTCUSDT": 0}}', "BTCUSDT: must be a positive"),
        ('{"ts": 1790812800000, "prices": {"BTC\\u0000": 1}}', "'BTC\\x00' is not a Bybit symbol"),
        ('{"ts": 1790812800000, "prices": {"\u017fOLUSDT": 1}}', "'\u017fOLUSDT' is not a Bybit"),
        ('{"ts": "yesterday", "prices": {"BTCUSDT": 1}}', "ts: must be an ISO-8601 string"),
        ('{"ts": "9999-12-31T23:59:59-05:00", "prices": {"BTCUSDT": 1}}', "out of range"),
        (
            '{"ts": 1790812800000, "prices": {"BTCUSDT": 1}, "id": "x"}',
            "only ts and prices, not id",
        ),
        ("[1, 2]", "not a JSON object"),
        (
            '{"id": "old", "symbol": "BTCUSDT", "side": "buy", "ts": "0001-01-01T00:00:00Z"}',
            "ts 0001-01-01T00:00:00+00:00 is outside the times a replay's clock runs",
        ),
        ('{"ts": "9999-12-31T00:00:00Z", "prices": {"BTCUSDT": 1}}', "is outside the times"),
    ],
)
def test_a_bad_line_names_file_line_and_problem(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text(line + "\n")

    with pytest.raises(HistoryError) as raised:
        read_history(path, "voiceofchain")

    assert str(raised.value).startswith(f"{path}:1: ")
    assert problem in str(raised.value)


def test_a_file_without_signals_is_refused(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "h.jsonl", [STOP_AND_TARGET[0]])

    with pytest.raises(HistoryError, match="holds no signal"):
        read_history(path, "voiceofchain")


@pytest.mark.parametrize("name", ["/dev/zero", "a directory"])
def test_a_device_or_directory_is_refused_before_it_is_read(tmp_path: Path, name: str) -> None:
    path = Path(name) if name.startswith("/") else tmp_path

    with pytest.raises(HistoryError, match="not a regular file"):
        read_history(path, "voiceofchain")


def test_what_a_plug_in_prints_does_not_break_the_json_report(tmp_path: Path) -> None:
    """Printed on stdout, it came before the report's one JSON line."""
    (tmp_path / "talker.py").write_text(
        "from strategies.follow import Follow\n\n\n"
        "class Talker(Follow):\n"
        "    def on_signal(self, signal, context):\n"
        "        print('hello from a plug-in')\n"
        "        return super().on_signal(signal, context)\n"
    )
    config = tmp_path / "talker.toml"
    config.write_text(
        '[keys.k]\nenvironment = "sim"\n[strategies.talker]\nplugin = "talker:Talker"\nkey = "k"\n'
    )

    run = replay(tmp_path, SAMPLE, "--json", config=config)

    assert "hello from a plug-in" in run.stderr
    assert [row["strategy"] for row in report_of(run)["strategies"]] == ["talker"]


def test_a_plot_write_that_fails_after_the_replay_exits_1_after_the_report(
    tmp_path: Path,
) -> None:
    pytest.importorskip("matplotlib")
    # The disk fills up between the check before the replay and the chart's write.
    program = (
        "import errno, matplotlib.figure\n"
        "def full(*args, **kwargs): raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "matplotlib.figure.Figure.savefig = full\n"
        "import sys; from bot.cli import main\n"
        f"sys.argv = ['bot', 'replay', {str(SAMPLE)!r}, '--plot', 'out.png', '--json', "
        f"'--config', {str(ROOT / 'config' / 'bot.toml')!r}]; main()"
    )

    run = run_program(program, tmp_path)

    assert run.returncode == 1
    assert json.loads(run.stdout)["signals"]  # the report is still printed
    assert "--plot out.png: cannot write the chart (No space left on device)" in run.stderr
    assert "Traceback" not in run.stderr
